"""Reads a sink table the way users do and prints one JSON object with what the tests assert.

    python check.py <root> <table>            # a local root: pyarrow and DuckDB
    python check.py s3://bucket/prefix <table> # S3 (S3_ENDPOINT, AWS_ACCESS_KEY_ID,
                                               # AWS_SECRET_ACCESS_KEY): pyarrow

Output keys: rows_pyarrow, rows_duckdb (local only), distinct (distinct (_partition, _offset)
pairs), types (column -> pyarrow type text), duckdb_types, partitions (sorted Hive partition
directories), files (visible .parquet files), hidden (files whose names start with '_' or '.',
which readers skip), sample (the row with the smallest id, else _offset, as text), evolved (rows where the
column "note" is not null, when it exists), and where the table has the Kafka key and headers
columns: sample_headers (the sample row's _headers as [name, value as UTF-8 or null]) and
keys_duckdb (DuckDB's row count per _key).
"""

import json
import os
import sys

# The AWS SDK inside pyarrow asks for checksums by default; S3Proxy answers 501 to that header.
os.environ.setdefault("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
os.environ.setdefault("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required")

import pyarrow as pa  # noqa: E402
import pyarrow.dataset as ds  # noqa: E402
import pyarrow.fs as pafs  # noqa: E402


def main():
    root, table = sys.argv[1], sys.argv[2]
    out = {}
    if root.startswith("s3://"):
        endpoint = os.environ["S3_ENDPOINT"]
        scheme, host = endpoint.split("://", 1)
        fs = pafs.S3FileSystem(
            access_key=os.environ["AWS_ACCESS_KEY_ID"],
            secret_key=os.environ["AWS_SECRET_ACCESS_KEY"],
            endpoint_override=host,
            scheme=scheme,
            region="us-east-1",
            force_virtual_addressing=False,
        )
        base = root[len("s3://"):].rstrip("/") + "/" + table
    else:
        fs = pafs.LocalFileSystem()
        base = os.path.join(root, table)
    try:
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True))
    except FileNotFoundError:
        infos = []
    files = [i.path for i in infos if i.type == pafs.FileType.File]
    name = lambda p: p.rsplit("/", 1)[-1]
    out["hidden"] = sorted(name(p) for p in files if name(p).startswith(("_", ".")))
    # What readers take: *.parquet not hidden (some S3 servers also list directory markers).
    visible = [p for p in files if not name(p).startswith(("_", ".")) and p.endswith(".parquet")]
    out["files"] = len(visible)
    out["partitions"] = sorted({p[len(base):].strip("/").rsplit("/", 1)[0] for p in visible})
    if not visible:
        out.update(rows_pyarrow=0, rows_duckdb=0, distinct=0, distinct_duckdb=0, types={})
        print(json.dumps(out))
        return
    # Files may differ in schema (a new optional field): the union of them, by name, plus the
    # Hive partition columns.
    unified = pa.unify_schemas(
        [ds.dataset(p, filesystem=fs, format="parquet").schema for p in visible]
    )
    hive = ds.partitioning(flavor="hive")
    probe = ds.dataset(visible, filesystem=fs, format="parquet", partitioning=hive,
                       partition_base_dir=base)
    extra = [f for f in probe.schema if f.name not in unified.names]
    dataset = ds.dataset(visible, filesystem=fs, format="parquet", partitioning=hive,
                         partition_base_dir=base, schema=pa.unify_schemas([unified, pa.schema(extra)]))
    t = dataset.to_table()
    out["rows_pyarrow"] = t.num_rows
    pairs = set(zip(t.column("_partition").to_pylist(), t.column("_offset").to_pylist()))
    out["distinct"] = len(pairs)
    out["types"] = {f.name: str(f.type) for f in t.schema}
    order = [("id", "ascending")] if "id" in t.column_names else []
    order += [("_offset", "ascending"), ("_partition", "ascending")]
    first = t.sort_by(order).slice(0, 1).to_pylist()[0]
    out["sample"] = {k: str(v) for k, v in first.items()}
    if "_headers" in first:
        out["sample_headers"] = [
            [h["key"], None if h["value"] is None else h["value"].decode("utf-8", "backslashreplace")]
            for h in first["_headers"]
        ]
    if "note" in t.column_names:
        out["evolved"] = t.filter(pa.compute.is_valid(t.column("note"))).num_rows
    if not root.startswith("s3://"):
        import duckdb

        con = duckdb.connect()
        glob = os.path.join(base, "**", "*.parquet")
        q = f"read_parquet('{glob}', hive_partitioning=true, union_by_name=true)"
        out["rows_duckdb"] = con.execute(f"select count(*) from {q}").fetchone()[0]
        out["distinct_duckdb"] = con.execute(
            f"select count(*) from (select distinct _partition, _offset from {q})"
        ).fetchone()[0]
        if "_key" in t.column_names:
            out["keys_duckdb"] = {
                str(k): n
                for k, n in con.execute(f"select _key, count(*) from {q} group by _key").fetchall()
            }
        out["duckdb_types"] = {
            r[0]: r[1] for r in con.execute(f"describe select * from {q}").fetchall()
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
