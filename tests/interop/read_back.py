"""Reads chatetl's Hive dataset with real readers and prints what each one sees, as JSON.

Usage: read_back.py [--readers pyarrow,duckdb,spark] MESSAGES_DIR [MESSAGES_DIR ...]

The output is a list with one object per directory, in the order given, mapping every reader
(default: all) to the rows as [date, sender_id, source_file, source_line,
message] sorted, with sender_id read as a string (never inferred as a number, so "007" stays
"007") and null for the __HIVE_DEFAULT_PARTITION__ partition. The Rust integration test compares
each reader's rows with the records chatetl staged.
"""

import json
import os
import sys


def canonical(rows):
    out = [
        [str(d), s, f, int(l), m]
        for (d, s, f, l, m) in rows
    ]
    out.sort(key=lambda r: (r[0], r[1] is not None, r[1] or "", r[2], r[3]))
    return out


def read_pyarrow(path):
    import pyarrow as pa
    import pyarrow.dataset as ds

    part = ds.partitioning(
        pa.schema([("date", pa.string()), ("sender_id", pa.string())]), flavor="hive"
    )
    t = ds.dataset(path, format="parquet", partitioning=part).to_table(
        columns=["date", "sender_id", "source_file", "source_line", "message"]
    )
    cols = [t.column(c).to_pylist() for c in t.column_names]
    return canonical(zip(*cols))


def read_duckdb(path):
    import duckdb

    con = duckdb.connect()
    rows = con.execute(
        "SELECT date, sender_id, source_file, source_line, message FROM read_parquet(?, "
        "hive_partitioning = true, hive_types = {'date': VARCHAR, 'sender_id': VARCHAR})",
        [os.path.join(path, "**", "*.parquet")],
    ).fetchall()
    return canonical(rows)


_SPARK = []


def read_spark(path):
    # One session for every directory: starting Spark takes about 10 s, a read well under one.
    if not _SPARK:
        from pyspark.sql import SparkSession

        spark = (
            SparkSession.builder.master("local[1]")
            .appName("chatetl-interop")
            .config("spark.sql.sources.partitionColumnTypeInference.enabled", "false")
            .config("spark.ui.enabled", "false")
            .config("spark.driver.host", "127.0.0.1")
            .config("spark.sql.session.timeZone", "UTC")
            .getOrCreate()
        )
        spark.sparkContext.setLogLevel("ERROR")
        _SPARK.append(spark)
    df = _SPARK[0].read.parquet(path).select(
        "date", "sender_id", "source_file", "source_line", "message"
    )
    return canonical([tuple(r) for r in df.collect()])


READERS = {"pyarrow": read_pyarrow, "duckdb": read_duckdb, "spark": read_spark}


def main():
    args = sys.argv[1:]
    names = list(READERS)
    if args[:1] == ["--readers"] and len(args) >= 2:
        names = args[1].split(",")
        args = args[2:]
    if not args or args[0] == "--readers" or any(n not in READERS for n in names):
        sys.exit(__doc__)
    try:
        result = [{n: READERS[n](path) for n in names} for path in args]
    finally:
        if _SPARK:
            _SPARK[0].stop()
    json.dump(result, sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    main()
