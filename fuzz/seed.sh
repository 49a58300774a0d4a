#!/usr/bin/env bash
# Seeds the parse_line fuzz corpus with one file per line of sample_logs/ and ../shared/corpus/
# (when present), so the fuzzer starts from real records: both quote styles, escapes, lone
# surrogates, consumer prefixes, Airflow task-log lines.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=fuzz/corpus/parse_line
mkdir -p "$dest"
python3 - "$dest" sample_logs ../shared/corpus <<'PY'
import gzip, hashlib, os, sys
dest, roots = sys.argv[1], sys.argv[2:]
n = 0
for root in roots:
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            data = gzip.open(p).read() if f.endswith(".gz") else open(p, "rb").read()
            for line in data.splitlines():
                if b"{" in line and len(line) < 4096:
                    name = hashlib.sha1(line).hexdigest()
                    with open(os.path.join(dest, name), "wb") as out:
                        out.write(line)
                    n += 1
print(f"seeded {n} lines into {dest}")
PY
