#!/usr/bin/env python3
"""Benchmark: extract, write, aggregate and `run` on a generated log; prints throughput and peak RSS.

  bench/bench.py                      # 1 GiB repr log under /tmp/chatetl-bench (generated once)
  bench/bench.py --size 256M --format json --budget 128

Builds the release binary, generates the input with bench/gen_log.py when it is missing (seeded,
so the same size and format always give the same file), then runs each stage in a fresh process
and reports wall time, MB/s, rows/s and that process's peak RSS (from wait4's rusage).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATE = "2024-10-24"


def run_stage(binary, work, budget, args):
    env = dict(os.environ, CHATETL_MEMORY_BUDGET_MB=str(budget), CHATETL_CONFIG="/dev/null")
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
    return json.loads(out), wall, rusage.ru_maxrss / 1024  # KiB -> MiB


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="1G")
    ap.add_argument("--format", default="repr", choices=["repr", "json", "json-ascii"])
    ap.add_argument("--budget", type=int, default=512, help="memory_budget_mb")
    ap.add_argument("--work", default="/tmp/chatetl-bench")
    a = ap.parse_args()

    subprocess.run(["cargo", "build", "--release", "--locked", "-q"], cwd=REPO, check=True)
    binary = os.path.join(REPO, "target", "release", "chatetl")
    work = os.path.join(a.work, f"{a.size}-{a.format}")
    log = os.path.join(work, "in", "lobby", f"chat_{DATE}.log")
    if not os.path.exists(log):
        os.makedirs(os.path.dirname(log), exist_ok=True)
        subprocess.run(
            [sys.executable, os.path.join(REPO, "bench", "gen_log.py"), "--size", a.size,
             "--format", a.format, "--date", DATE, "-o", log],
            check=True,
        )
    size = os.path.getsize(log)
    print(f"input: {log} ({size / 1e6:.0f} MB), memory budget {a.budget} MiB, "
          f"{os.cpu_count()} CPUs")
    shutil.rmtree(os.path.join(work, "out"), ignore_errors=True)

    ex, t_ex, rss_ex = run_stage(binary, work, a.budget, ["extract", "--date", DATE])
    tot = ex["summary"]["totals"]
    wr, t_wr, rss_wr = run_stage(binary, work, a.budget, ["write", "--date", DATE])
    _, t_ag, rss_ag = run_stage(binary, work, a.budget, ["aggregate", "--date", DATE])
    shutil.rmtree(os.path.join(work, "out"), ignore_errors=True)
    _, t_run, rss_run = run_stage(binary, work, a.budget, ["run", "--date", DATE])

    rows = tot["staged"]
    print(f"lines {tot['lines']}, records {tot['records']}, rejected {tot['rejected']}, "
          f"senders {tot['senders']}, parquet files {wr['files']} ({wr['bytes'] / 1e6:.0f} MB)")
    print(f"{'stage':<24}{'wall s':>8}{'MB/s':>8}{'k rows/s':>10}{'peak RSS MiB':>14}")
    for name, t, rss in [("extract", t_ex, rss_ex), ("write", t_wr, rss_wr),
                         ("extract+write", t_ex + t_wr, max(rss_ex, rss_wr)),
                         ("aggregate", t_ag, rss_ag),
                         ("run (all four stages)", t_run, rss_run)]:
        print(f"{name:<24}{t:>8.1f}{size / 1e6 / t:>8.1f}{rows / 1e3 / t:>10.0f}{rss:>14.0f}")


if __name__ == "__main__":
    main()
