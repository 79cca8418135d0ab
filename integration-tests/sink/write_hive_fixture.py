#!/usr/bin/env python3
"""Writes a small Hive-partitioned Parquet table with pyarrow, the way Lakewire's sink lays it out,
for the metastore tests (integration-tests/tests/metastore.rs).

Usage: write_hive_fixture.py TABLE_DIR            the table below
       write_hive_fixture.py --evolved TABLE_DIR  one more partition, dt=2024-05-03/hr=00, of
                                                  ids 12-13 written with a schema evolved by an
                                                  optional field: note string = "n<id>"

Layout: TABLE_DIR/dt=YYYY-MM-DD/hr=HH/<topic>+<partition>+<start>+<end>.parquet, partition
columns not stored in the files. Three partitions, 12 rows (ids 0..11, offsets 100..111):
  dt=2024-05-01/hr=00: ids 0-3    dt=2024-05-01/hr=01: ids 4-6    dt=2024-05-02/hr=23: ids 7-11
Columns: _topic string, _partition int32, _offset int64, _timestamp timestamp[ms, UTC],
  id int64, venue string (null for odd ids), px decimal128(10,3) = id + 0.125,
  ts timestamp[us, UTC] = 2024-05-01T00:00:00Z + id hours, flag bool (id even), score float64,
  qty int32, day date32, tags list<string> = ["t<id>", "x"], attrs map<string, int64> =
  {"a": id, "b": 2*id}, leg struct<side: string, n: int32> = {side: "buy"/"sell", n: id}.
Also a leftover temporary file (leading "_" and "."), which readers must ignore.
Prints {"rows": 12, "partitions": [...]} as one JSON line.
"""

import datetime
import decimal
import json
import os
import sys

import pyarrow as pa
import pyarrow.parquet as pq

TOPIC = "trades"

SCHEMA = pa.schema(
    [
        ("_topic", pa.string()),
        ("_partition", pa.int32()),
        ("_offset", pa.int64()),
        ("_timestamp", pa.timestamp("ms", tz="UTC")),
        ("id", pa.int64()),
        ("venue", pa.string()),
        ("px", pa.decimal128(10, 3)),
        ("ts", pa.timestamp("us", tz="UTC")),
        ("flag", pa.bool_()),
        ("score", pa.float64()),
        ("qty", pa.int32()),
        ("day", pa.date32()),
        ("tags", pa.list_(pa.string())),
        ("attrs", pa.map_(pa.string(), pa.int64())),
        ("leg", pa.struct([("side", pa.string()), ("n", pa.int32())])),
    ]
)

PARTITIONS = [("2024-05-01", "00", range(0, 4)), ("2024-05-01", "01", range(4, 7)), ("2024-05-02", "23", range(7, 12))]


def row(i):
    t0 = datetime.datetime(2024, 5, 1, tzinfo=datetime.timezone.utc)
    return {
        "_topic": TOPIC,
        "_partition": 0,
        "_offset": 100 + i,
        "_timestamp": t0 + datetime.timedelta(hours=i),
        "id": i,
        "venue": None if i % 2 else f"V{i}",
        "px": decimal.Decimal(i) + decimal.Decimal("0.125"),
        "ts": t0 + datetime.timedelta(hours=i),
        "flag": i % 2 == 0,
        "score": i / 4,
        "qty": 10 * i,
        "day": (t0 + datetime.timedelta(days=i)).date(),
        "tags": [f"t{i}", "x"],
        "attrs": [("a", i), ("b", 2 * i)],
        "leg": {"side": "buy" if i % 2 == 0 else "sell", "n": i},
    }


def write_evolved(table_dir):
    schema = SCHEMA.append(pa.field("note", pa.string()))
    ids = range(12, 14)
    d = os.path.join(table_dir, "dt=2024-05-03", "hr=00")
    os.makedirs(d, exist_ok=True)
    batch = pa.Table.from_pylist([dict(row(i), note=f"n{i}") for i in ids], schema=schema)
    pq.write_table(batch, os.path.join(d, f"{TOPIC}+0+{100 + ids[0]}+{100 + ids[-1]}.parquet"))
    print(json.dumps({"rows": len(ids), "partitions": ["dt=2024-05-03/hr=00"]}))


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--evolved":
        return write_evolved(sys.argv[2])
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    table_dir = sys.argv[1]
    parts = []
    for dt, hr, ids in PARTITIONS:
        d = os.path.join(table_dir, f"dt={dt}", f"hr={hr}")
        os.makedirs(d, exist_ok=True)
        batch = pa.Table.from_pylist([row(i) for i in ids], schema=SCHEMA)
        start, end = 100 + ids[0], 100 + ids[-1]
        pq.write_table(batch, os.path.join(d, f"{TOPIC}+0+{start}+{end}.parquet"), compression="zstd")
        parts.append(f"dt={dt}/hr={hr}")
    # A write in progress: hidden names, never counted by Hive-style readers.
    leftover = pa.Table.from_pylist([row(99)], schema=SCHEMA)
    pq.write_table(leftover, os.path.join(table_dir, "dt=2024-05-01", "hr=00", "_trades+0+199+199.parquet.tmp"))
    pq.write_table(leftover, os.path.join(table_dir, "dt=2024-05-01", "hr=00", ".trades+0+200+200.parquet"))
    print(json.dumps({"rows": sum(len(p[2]) for p in PARTITIONS), "partitions": parts}))


if __name__ == "__main__":
    main()
