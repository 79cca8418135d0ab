#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets into gateway/fuzz/corpus/<target>/, from the
tests: the Avro interop vectors (integration-tests/avro/vectors.json), the protocol examples of
docs/protocol.md, and the filters of gateway/src/filter/mod.rs's tests. Run it after changing any of
those and commit the seeds with `git add -f` (corpus/ is ignored so that what libFuzzer adds when
run by hand is not committed; `run` keeps what it finds in grown/<target>/, also ignored)."""

import hashlib
import json
import pathlib
import struct

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
SEEDS = HERE / "corpus"


def put(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = SEEDS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / hashlib.sha1(data).hexdigest()[:16]).write_bytes(data)


def long_(n):
    n = (n << 1) ^ (n >> 63)
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def bytes_(b):
    return long_(len(b)) + b


def str_(s):
    return bytes_(s.encode())


def decode():
    # Selector bytes as in fuzz_targets/decode.rs: 0 JSON, 1 Confluent, 2 single-object,
    # 3 + i raw with the i-th distinct vector schema (then order.avsc, then order.avsc resolved to order v2).
    vectors = json.loads((ROOT / "integration-tests/avro/vectors.json").read_text())["vectors"]
    texts = []
    for v in vectors:
        if v["schema"] not in texts:
            texts.append(v["schema"])
    for v in vectors:
        payload = bytes.fromhex(v["payload_hex"])
        sel = {"confluent": 1, "single-object": 2}.get(v["framing"])
        if sel is None:
            sel = 3 + texts.index(v["schema"])
        put("decode", bytes([sel]) + payload)
        if v["framing"] == "raw":
            put("decode", b"\x00" + json.dumps(v["expected"]).encode())
    # An order (schemas/order.avsc), for the order selector and the order -> order v2 one.
    order = (long_(7) + long_(1732690000000) + str_("Ana") + long_(1) + bytes_(b"\x30\x39")
             + str_("EUR") + long_(3) + struct.pack("<d", 9.5) + long_(1) + struct.pack("<f", 0.5)
             + b"\x01" + long_(0) + long_(1) + str_("a") + long_(0) + long_(1) + str_("k")
             + str_("v") + long_(0) + str_("Main St 1") + str_("Lisbon") + str_("1000")
             + str_("PT") + long_(1) + long_(20060))
    put("decode", bytes([3 + len(texts)]) + order)
    put("decode", bytes([3 + len(texts) + 1]) + order)
    put("decode", b'\x00{"id":7,"amount":1.5,"customer":{"name":"Ana"},"tags":["a"]}')


def protocol():
    frames = [
        '{"op":"subscribe","id":"s1","topic":"orders","from":"latest"}',
        '{"op":"subscribe","id":"s1","topic":"orders","from":"earliest"}',
        '{"op":"subscribe","id":"s2","topic":"orders","from":{"timestamp":1732690000000}}',
        '{"op":"subscribe","id":"s3","topic":"orders","from":{"offsets":{"0":43,"1":17}}}',
        '{"op":"subscribe","id":"s4","topic":"trades","filter":"value.amount > 100.0 && value.region == \'eu\'","fields":["value.id","key"]}',
        '{"op":"unsubscribe","id":"s1"}',
        '{"op":"ping"}',
        '{"op":"auth","token":"eyJhbGciOiJIUzI1NiJ9.e30.x"}',
        '{"op":"subscribe","id":"","topic":"orders"}',
        '{"op":"subscribe","id":"s1","topic":"orders","nope":1}',
        '{"op":"subscribe","id":"s1","topic":"orders","from":{"offsets":{"-1":3}}}',
        '{"op":"jump"}',
        "[1,2]",
    ]
    for f in frames:
        put("protocol", f)


def sse():
    for q in [
        "topic=orders",
        "topic=orders&from=earliest",
        "topic=orders&from=1732690000000&fields=value.id,key",
        "topic=orders&filter=value.qty > 10&token=abc",
        "topic=orders\n0:43,1:17",
        "topic=orders&from=latest\n 0:43 , 1:17 ",
        "topic=orders&bogus=1",
        "topic=orders\n0:-1",
    ]:
        put("sse", q)


def filter_():
    value = '{"id":7,"amount":150.5,"region":"eu","qty":12,"customer":{"name":"Ana","tier":"gold"},"tags":["a"]}'
    filters = [
        "value.amount > 100.0 && value.region == 'eu'",
        "value.amount > 200.0",
        "value.qty > 10",
        "key == 'k1' && partition == 1 && offset == 42",
        "timestamp > 1700000000000",
        "headers.source == 'web'",
        "value.region in ['eu', 'us']",
        "has(value.missing)",
        "value.missing > 1",
        "offset > 1 ? value.a : false",
        "value.tags.exists(t, t == 'a')",
        "value.customer.name.startsWith('A') && size(value.tags) == 1",
        "value.region.matches('^e.$')",
        "1 + 2",
    ]
    for f in filters:
        put("filter", f + "\0\0" + value)
    for fields in ["value.id", "value.customer.tier,value.id,key", "value.customer,value.customer.tier", "value.nope"]:
        put("filter", "\0" + fields + "\0" + value)
        put("filter", "value.qty > 10\0" + fields + "\0" + value)


decode()
protocol()
sse()
filter_()
