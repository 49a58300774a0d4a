#!/usr/bin/env python3
"""Benchmark: extract, write, aggregate and `run` on a generated log; prints throughput and peak RSS.

  bench/bench.py                      # 1 GiB repr log under /tmp/chatetl-bench (generated once)
  bench/bench.py --format json        # 1 GiB of JSON lines, with DuckDB as the reference
  bench/bench.py --size 256M --format json --budget 128
  bench/bench.py --format json --compression snappy   # DuckDB's own codec, like for like
  bench/bench.py --format json --hot-share 0.6        # one bot writes 60% of the lines

Builds the release binary, generates the input with bench/gen_log.py when it is missing (seeded,
so the same size, format and hot share always give the same file), then runs each stage in a fresh process
and reports wall time, MB/s, rows/s and that process's peak RSS (from wait4's rusage).

For JSON lines it also runs DuckDB on the same file in the same invocation (read_json, then
COPY ... (FORMAT parquet, PARTITION_BY (user)), in a fresh process of the test virtualenv's
Python, `--duckdb-python` or .venv-test/bin/python) and prints the throughput ratio
chatetl/DuckDB and how many records each one wrote, and then what 2x DuckDB would leave
chatetl in CPU time beside what the SHA-256 of the input alone takes (the manifest records it;
measured here with Python's hashlib, which uses OpenSSL and the CPU's SHA instructions).
"""

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATE = "2024-10-24"


def run_stage(binary, work, budget, args, compression=None):
    env = dict(os.environ, CHATETL_MEMORY_BUDGET_MB=str(budget), CHATETL_CONFIG="/dev/null")
    env.pop("CHATETL_COMPRESSION", None)
    if compression:
        env["CHATETL_COMPRESSION"] = compression
    cmd = [binary, "--input-root", "in", "--output-root", "out", "--tz", "Asia/Seoul", "--json"]
    cmd += args
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = p.stdout.read()
    err = p.stderr.read()
    _, status, rusage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - t0
    if p.returncode != 0:
        sys.exit(f"{' '.join(args)} exited {p.returncode}: {err.decode(errors='replace')}")
    cpu = rusage.ru_utime + rusage.ru_stime
    return json.loads(out), (wall, cpu), rusage.ru_maxrss / 1024  # KiB -> MiB


DUCKDB_SCRIPT = r"""
import sys, time, duckdb
log, out, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
con = duckdb.connect()
con.execute(f"SET threads = {threads}")
con.execute("SET enable_progress_bar = false")
con.execute(
    "COPY (SELECT * FROM read_json(?, format='newline_delimited', ignore_errors=true)) "
    "TO '" + out + "' (FORMAT parquet, PARTITION_BY (user))", [log])
n = con.execute("SELECT count(*) FROM read_parquet('" + out + "/**/*.parquet')").fetchone()[0]
print(n)
"""


def sha256_cpu_seconds(path):
    """CPU seconds (user + system) this process takes to SHA-256 the file, read in 1 MiB blocks."""
    t0 = os.times()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    t1 = os.times()
    return (t1.user - t0.user) + (t1.system - t0.system)


def run_duckdb(python, log, work):
    out = os.path.join(work, "duckdb-out")
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.monotonic()
    p = subprocess.Popen([python, "-c", DUCKDB_SCRIPT, log, out, str(os.cpu_count())],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stdout = p.stdout.read()
    err = p.stderr.read()
    _, status, rusage = os.wait4(p.pid, 0)
    wall = time.monotonic() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"duckdb failed: {err.decode(errors='replace')}")
    shutil.rmtree(out, ignore_errors=True)
    return int(stdout.split()[-1]), (wall, rusage.ru_utime + rusage.ru_stime), rusage.ru_maxrss / 1024


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1G",
                    help="size of the generated log: 256M, 1G, 4G... (binary units: 1G is "
                         "1,073,741,824 bytes, about 1074 MB; MB/s counts 10^6 bytes)")
    ap.add_argument("--format", default="repr", choices=["repr", "json", "json-ascii"],
                    help="Python-repr lines, JSON lines, or JSON lines with every non-ASCII "
                         "character escaped; DuckDB runs on the JSON formats")
    ap.add_argument("--hot-share", type=float, default=0.0,
                    help="fraction of lines written by one extra sender (a day dominated by a "
                         "bot), as gen_log.py --hot-share; default 0")
    ap.add_argument("--budget", type=int, default=512, help="memory_budget_mb")
    ap.add_argument("--compression", default=None,
                    help="chatetl's Parquet codec (zstd, zstd:LEVEL, snappy, lz4, none); "
                         "default: chatetl's default, zstd")
    ap.add_argument("--work", default="/tmp/chatetl-bench",
                    help="where logs are generated (kept for the next run) and outputs written: "
                         "about 3.5 times --size of disk")
    test_venv = os.environ.get("CHATETL_TEST_VENV", os.path.join(REPO, ".venv-test"))
    ap.add_argument("--duckdb-python", default=os.environ.get(
        "CHATETL_TEST_PYTHON", os.path.join(test_venv, "bin", "python")),
        help="a Python with duckdb (default: the test virtualenv scripts/test makes, "
             "$CHATETL_TEST_VENV or .venv-test)")
    ap.add_argument("--no-build", action="store_true",
                    help="use the release binary as it is (target/release/chatetl, or under "
                         "$CARGO_TARGET_DIR), not rebuilt from the sources")
    a = ap.parse_args()

    if not a.no_build:
        subprocess.run(["cargo", "build", "--release", "--locked", "-q"], cwd=REPO, check=True)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
    binary = os.path.join(os.path.abspath(os.path.join(REPO, target)), "release", "chatetl")
    # The generator's version is in the name: a log made by an older generator is not reused.
    hot = f"-hot{a.hot_share:g}" if a.hot_share > 0 else ""
    work = os.path.join(a.work, f"{a.size}-{a.format}-g2{hot}")
    log = os.path.join(work, "in", "lobby", f"chat_{DATE}.log")
    if not os.path.exists(log):
        os.makedirs(os.path.dirname(log), exist_ok=True)
        subprocess.run(
            [sys.executable, os.path.join(REPO, "bench", "gen_log.py"), "--size", a.size,
             "--format", a.format, "--date", DATE, "--hot-share", str(a.hot_share), "-o", log],
            check=True,
        )
    size = os.path.getsize(log)
    print(f"input: {log} ({size / 1e6:.0f} MB), memory budget {a.budget} MiB, "
          f"{os.cpu_count()} CPUs, chatetl compression {a.compression or 'zstd (default)'}"
          f"{', DuckDB snappy (its default)' if a.format.startswith('json') else ''}")
    shutil.rmtree(os.path.join(work, "out"), ignore_errors=True)
    # Reading the whole input for its hash (printed for JSON lines, beside DuckDB's figures) also
    # warms the page cache, for every format, as the targets assume: the first stage to read it
    # (extract) otherwise pays for the disk when the log was generated long ago or other files
    # pushed it out, and DuckDB, which runs last, does not. The hash's CPU time counts reading the
    # file too, as extract's does; from disk that would be more than the hash costs.
    sha = sha256_cpu_seconds(log)

    def stage(*args):
        return run_stage(binary, work, a.budget, [*args, "--date", DATE], a.compression)

    ex, t_ex, rss_ex = stage("extract")
    tot = ex["summary"]["totals"]
    wr, t_wr, rss_wr = stage("write")
    _, t_ag, rss_ag = stage("aggregate")
    shutil.rmtree(os.path.join(work, "out"), ignore_errors=True)
    _, t_run, rss_run = stage("run", "--no-notify")

    rows = tot["staged"]
    t_exwr = (t_ex[0] + t_wr[0], t_ex[1] + t_wr[1])
    print(f"lines {tot['lines']}, records {tot['records']}, rejected {tot['rejected']}, "
          f"senders {tot['senders']}, parquet files {wr['files']} ({wr['bytes'] / 1e6:.0f} MB)")
    print(f"{'stage':<24}{'wall s':>8}{'MB/s':>8}{'k rows/s':>10}{'peak RSS MiB':>14}"
          f"{'CPU %':>7}{'CPU s':>7}")

    def row(name, t, rss, n=rows):
        wall, cpu = t
        print(f"{name:<24}{wall:>8.1f}{size / 1e6 / wall:>8.1f}{n / 1e3 / wall:>10.0f}"
              f"{rss:>14.0f}{100 * cpu / wall:>7.0f}{cpu:>7.1f}")

    row("extract", t_ex, rss_ex)
    row("write", t_wr, rss_wr)
    row("extract+write", t_exwr, max(rss_ex, rss_wr))
    row("aggregate", t_ag, rss_ag)
    row("run --no-notify", t_run, rss_run)
    if a.format.startswith("json"):
        if not os.path.exists(a.duckdb_python):
            print(f"DuckDB reference skipped: no {a.duckdb_python} (run scripts/test once)")
            return
        n_duck, t_duck, rss_duck = run_duckdb(a.duckdb_python, log, work)
        row("DuckDB read_json+COPY", t_duck, rss_duck, n_duck)
        print(f"ratio chatetl extract+write / DuckDB: {t_duck[0] / t_exwr[0]:.2f}x throughput; "
              f"run / DuckDB: {t_duck[0] / t_run[0]:.2f}x; records written: chatetl {rows}, "
              f"DuckDB {n_duck} ({n_duck - rows:+d})")
        print(f"by CPU time (user + system): chatetl extract+write / DuckDB "
              f"{t_duck[1] / t_exwr[1]:.2f}x")
        budget = t_duck[1] / 2
        print(f"2x DuckDB would leave chatetl {budget:.1f} CPU-s for extract+write (it took "
              f"{t_exwr[1]:.1f}); SHA-256 of the input alone (reading it included) takes "
              f"{sha:.1f} of them ({100 * sha / budget:.0f}%)")


if __name__ == "__main__":
    main()
