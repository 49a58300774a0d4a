"""Reads chatetl's Hive dataset with real readers and prints what each one sees, as JSON.

Usage: read_back.py MESSAGES_DIR [READER ...]   (readers: pyarrow duckdb spark; default all)

For every reader the output holds the rows as [date, sender_id, source_file, source_line,
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


def read_spark(path):
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
    df = spark.read.parquet(path).select(
        "date", "sender_id", "source_file", "source_line", "message"
    )
    rows = [tuple(r) for r in df.collect()]
    spark.stop()
    return canonical(rows)


READERS = {"pyarrow": read_pyarrow, "duckdb": read_duckdb, "spark": read_spark}


def main():
    path = sys.argv[1]
    names = sys.argv[2:] or list(READERS)
    result = {}
    for n in names:
        result[n] = READERS[n](path)
    json.dump(result, sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    main()
