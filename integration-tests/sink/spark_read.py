#!/usr/bin/env python3
"""Reads a table through a Hive Metastore with Spark SQL (Hive support) and prints one JSON line.

Usage:
  spark_read.py --metastore thrift://127.0.0.1:19083 --table db.table [--query SQL]...

The JSON object has:
  table         "db.table"
  rows          SELECT count(*) of the table
  partitions    the lines of SHOW PARTITIONS (e.g. "dt=2024-01-01/hr=05"), sorted; [] for an
                unpartitioned table
  columns       [{"name": ..., "type": <Spark SQL type, e.g. "decimal(10,3)">}] in table order
                (partition columns last, as Spark shows them)
  distinct_keys count of distinct (_topic, _partition, _offset), or null when the table lacks
                those columns
  queries       for each --query: its rows as JSON objects (decimals and timestamps as strings;
                timestamps in UTC)
  seconds       {"start": Spark session start-up, "read": the reads above}

Spark runs lean: local[1], 512 MiB driver, no UI, session time zone UTC. Needs pyspark (see
requirements-spark.txt) and Java 17+ (JAVA_HOME or java on PATH). Exit status 0 on success;
an error prints a message to stderr and exits 1.
"""

import argparse
import datetime
import decimal
import json
import shutil
import sys
import tempfile
import time


def to_json(value):
    if isinstance(value, (decimal.Decimal, datetime.date, datetime.datetime)):
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    raise TypeError(f"cannot put {type(value).__name__} into JSON")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--metastore", required=True, help="thrift://host:port of the Hive Metastore")
    ap.add_argument("--table", required=True, help="database.table")
    ap.add_argument("--query", action="append", default=[], help="an extra SQL query (repeatable)")
    args = ap.parse_args()
    if "." not in args.table:
        ap.error("--table must be database.table")

    t0 = time.monotonic()
    from pyspark.sql import SparkSession

    scratch = tempfile.mkdtemp(prefix="lakewire-spark-")
    spark = (
        SparkSession.builder.master("local[1]")
        .appName("lakewire-spark-read")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.memory", "512m")
        .config("spark.sql.shuffle.partitions", "1")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.warehouse.dir", f"file:{scratch}/warehouse")
        .config("spark.local.dir", scratch)
        .config("spark.hadoop.hive.metastore.uris", args.metastore)
        # Read Hive Parquet tables with Spark's own reader (the default), and let a failed
        # metastore call fail quickly instead of retrying for minutes.
        .config("spark.hadoop.hive.metastore.failure.retries", "1")
        .config("spark.hadoop.hive.metastore.client.socket.timeout", "30s")
        .config("spark.driver.extraJavaOptions", f"-Dderby.system.home={scratch}")
        .enableHiveSupport()
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    t1 = time.monotonic()
    try:
        table = args.table
        df = spark.table(table)
        columns = [{"name": f.name, "type": f.dataType.simpleString()} for f in df.schema.fields]
        names = {f.name for f in df.schema.fields}
        rows = df.count()
        try:
            partitions = sorted(r[0] for r in spark.sql(f"SHOW PARTITIONS {table}").collect())
        except Exception as e:  # an unpartitioned table: SHOW PARTITIONS is an error in Spark
            if "not partitioned" in str(e) or "NOT_PARTITIONED" in str(e):
                partitions = []
            else:
                raise
        distinct_keys = None
        if {"_topic", "_partition", "_offset"} <= names:
            distinct_keys = df.select("_topic", "_partition", "_offset").distinct().count()
        queries = [[r.asDict(recursive=True) for r in spark.sql(q).collect()] for q in args.query]
        out = {
            "table": table,
            "rows": rows,
            "partitions": partitions,
            "columns": columns,
            "distinct_keys": distinct_keys,
            "queries": queries,
            "seconds": {"start": round(t1 - t0, 2), "read": round(time.monotonic() - t1, 2)},
        }
        print(json.dumps(out, default=to_json), flush=True)
    finally:
        spark.stop()
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # noqa: BLE001 - one clear line for the calling test
        print(f"spark_read: error: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
