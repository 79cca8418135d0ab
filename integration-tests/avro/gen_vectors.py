#!/usr/bin/env python3
"""Writes Avro interop vectors with the Apache Avro reference implementation for Python (PyPI
`avro`), for Lakewire's decoder to check (integration-tests/tests/avro_interop.rs).

Every Avro type and logical type, each encoded by `avro.io.DatumWriter`, in all three framings:
raw, single-object (0xC3 0x01 + the CRC-64-AVRO fingerprint that `avro` computes) and Confluent
(0x00 + a 4-byte big-endian schema id; the test serves the schemas by id). The expected JSON is
computed here from the value, following the mapping in DESIGN.md.

Usage: gen_vectors.py OUT.json   (run-all runs it in integration-tests/.cache/venv)
"""

import base64
import datetime
import decimal
import io
import json
import math
import sys
import uuid
import warnings

import avro.io
import avro.schema

decimal.getcontext().prec = 100
warnings.simplefilter("ignore")  # avro warns about uuid on fixed, which it does not know

UTC = datetime.timezone.utc
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=UTC)
TS = datetime.datetime(2024, 11, 27, 6, 0, 0, 123456, tzinfo=UTC)


def b64(b):
    return base64.b64encode(b).decode("ascii")


def dec(d, scale):
    """A decimal as the string with exactly `scale` digits after the point."""
    return format(d.quantize(decimal.Decimal(1).scaleb(-scale)), "f") if scale else str(int(d))


def ms(dt):
    return (dt - EPOCH) // datetime.timedelta(milliseconds=1)


def us(dt):
    return (dt - EPOCH) // datetime.timedelta(microseconds=1)


LOCAL = TS.replace(tzinfo=None)
U = uuid.UUID("6ba7b810-9dad-11d1-80b4-00c04fd430c8")

# (name, schema, value as `avro` takes it, expected JSON)
CASES = [
    ("null", "null", None, None),
    ("boolean-true", "boolean", True, True),
    ("boolean-false", "boolean", False, False),
    ("int-max", "int", 2**31 - 1, 2**31 - 1),
    ("int-min", "int", -(2**31), -(2**31)),
    ("long-max", "long", 2**63 - 1, 2**63 - 1),
    ("long-min", "long", -(2**63), -(2**63)),
    ("float", "float", 1.5, 1.5),
    ("float-negative", "float", -0.25, -0.25),
    ("float-nan", "float", float("nan"), "NaN"),
    ("float-inf", "float", float("inf"), "Infinity"),
    ("double", "double", 1e300, 1e300),
    ("double-nan", "double", float("nan"), "NaN"),
    ("double-inf", "double", float("inf"), "Infinity"),
    ("double-neg-inf", "double", float("-inf"), "-Infinity"),
    ("string-empty", "string", "", ""),
    ("string-escapes", "string", 'q"b\\s/n\nt\tc\x01\x1f\x7f', 'q"b\\s/n\nt\tc\x01\x1f\x7f'),
    ("string-unicode", "string", "é€\u2028😀", "é€\u2028😀"),
    ("bytes", "bytes", b"\x00\xffab", b64(b"\x00\xffab")),
    ("bytes-empty", "bytes", b"", ""),
    ("fixed", {"type": "fixed", "name": "F4", "size": 4}, b"\x01\x02\x03\xfe", b64(b"\x01\x02\x03\xfe")),
    ("enum", {"type": "enum", "name": "Suit", "symbols": ["SPADES", "HEARTS"]}, "HEARTS", "HEARTS"),
    ("array", {"type": "array", "items": "int"}, [1, -2, 3], [1, -2, 3]),
    ("array-empty", {"type": "array", "items": "string"}, [], []),
    ("map", {"type": "map", "values": "long"}, {"a": 1, "b\"": -2}, {"a": 1, "b\"": -2}),
    (
        "map-of-arrays",
        {"type": "map", "values": {"type": "array", "items": "double"}},
        {"x": [0.5, 2.0]},
        {"x": [0.5, 2.0]},
    ),
    ("union-null", ["null", "string"], None, None),
    ("union-string", ["null", "string"], "x", "x"),
    (
        "union-record",
        ["int", "string", {"type": "record", "name": "P", "fields": [{"name": "x", "type": "int"}]}],
        {"x": 7},
        {"x": 7},
    ),
    (
        "record-nested",
        {
            "type": "record",
            "name": "Outer",
            "namespace": "ns",
            "fields": [
                {"name": "id", "type": "long"},
                {"name": "inner", "type": {"type": "record", "name": "Inner", "fields": [{"name": "s", "type": "string"}]}},
                {"name": "again", "type": ["null", "Inner"]},
            ],
        },
        {"id": 1, "inner": {"s": "a"}, "again": {"s": "b"}},
        {"id": 1, "inner": {"s": "a"}, "again": {"s": "b"}},
    ),
    (
        "record-recursive",
        {
            "type": "record",
            "name": "Node",
            "fields": [{"name": "v", "type": "int"}, {"name": "next", "type": ["null", "Node"]}],
        },
        {"v": 1, "next": {"v": 2, "next": None}},
        {"v": 1, "next": {"v": 2, "next": None}},
    ),
    (
        "decimal-bytes",
        {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2},
        decimal.Decimal("123.45"),
        "123.45",
    ),
    (
        "decimal-bytes-negative",
        {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 4},
        decimal.Decimal("-0.0100"),
        "-0.0100",
    ),
    (
        "decimal-bytes-zero",
        {"type": "bytes", "logicalType": "decimal", "precision": 5, "scale": 3},
        decimal.Decimal("0.000"),
        "0.000",
    ),
    (
        "decimal-bytes-scale0",
        {"type": "bytes", "logicalType": "decimal", "precision": 20},
        decimal.Decimal("-98765432109876543210"),
        "-98765432109876543210",
    ),
    (
        "decimal-bytes-big",
        {"type": "bytes", "logicalType": "decimal", "precision": 60, "scale": 10},
        decimal.Decimal("-12345678901234567890123456789012345678901234567.1234567890"),
        "-12345678901234567890123456789012345678901234567.1234567890",
    ),
    (
        "decimal-fixed",
        {"type": "fixed", "name": "D8", "size": 8, "logicalType": "decimal", "precision": 18, "scale": 4},
        decimal.Decimal("-12345.6789"),
        "-12345.6789",
    ),
    ("date", {"type": "int", "logicalType": "date"}, TS.date(), (TS.date() - EPOCH.date()).days),
    ("time-millis", {"type": "int", "logicalType": "time-millis"}, TS.time(), (6 * 3600) * 1000 + 123),
    ("time-micros", {"type": "long", "logicalType": "time-micros"}, TS.time(), (6 * 3600) * 1_000_000 + 123456),
    ("timestamp-millis", {"type": "long", "logicalType": "timestamp-millis"}, TS, ms(TS)),
    ("timestamp-micros", {"type": "long", "logicalType": "timestamp-micros"}, TS, us(TS)),
    ("local-timestamp-millis", {"type": "long", "logicalType": "local-timestamp-millis"}, ms(TS), ms(TS)),
    ("local-timestamp-micros", {"type": "long", "logicalType": "local-timestamp-micros"}, us(TS), us(TS)),
    ("uuid", {"type": "string", "logicalType": "uuid"}, str(U), str(U)),
    ("uuid-fixed", {"type": "fixed", "name": "U16", "size": 16, "logicalType": "uuid"}, U.bytes, str(U)),
    (
        "duration",
        {"type": "fixed", "name": "Dur", "size": 12, "logicalType": "duration"},
        b"\x01\x00\x00\x00\x02\x00\x00\x00\x03\x00\x00\x00",
        b64(b"\x01\x00\x00\x00\x02\x00\x00\x00\x03\x00\x00\x00"),
    ),
]


def encode(schema, value):
    out = io.BytesIO()
    avro.io.DatumWriter(schema).write(value, avro.io.BinaryEncoder(out))
    return out.getvalue()


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    vectors = []
    for i, (name, schema_json, value, expected) in enumerate(CASES):
        text = json.dumps(schema_json)
        schema = avro.schema.parse(text)
        datum = encode(schema, value)
        if isinstance(schema_json, dict) and schema_json.get("logicalType") == "decimal":
            # The mapping, computed: exactly `scale` digits after the point.
            assert expected == dec(value, schema_json.get("scale", 0)), name
        schema_id = 1000 + i
        framed = {
            "raw": datum,
            "single-object": b"\xc3\x01" + schema.fingerprint("CRC-64-AVRO") + datum,
            "confluent": b"\x00" + schema_id.to_bytes(4, "big") + datum,
        }
        for framing, payload in framed.items():
            vectors.append(
                {
                    "name": name,
                    "framing": framing,
                    "schema": text,
                    "schema_id": schema_id,
                    "payload_hex": payload.hex(),
                    "expected": expected,
                }
            )
    with open(sys.argv[1], "w", encoding="utf-8") as f:
        json.dump(
            {"generator": f"Python avro {avro.__version__}", "vectors": vectors},
            f,
            indent=1,
            ensure_ascii=False,
            allow_nan=False,
        )
        f.write("\n")
    print(f"gen_vectors: {len(vectors)} vectors ({len(CASES)} values x 3 framings) -> {sys.argv[1]}")


if __name__ == "__main__":
    main()
