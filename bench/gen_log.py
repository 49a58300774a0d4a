#!/usr/bin/env python3
"""Deterministic chat-log generator for benchmarks.

Writes one day of realistic chat log of about SIZE bytes, seeded, as Python `str(dict)` lines
(what a Python Kafka consumer prints) or JSON lines (`json.dumps`, ensure_ascii either way).

  bench/gen_log.py --size 1G --format repr --date 2024-10-24 -o /tmp/in/lobby/chat_2024-10-24.log

500 senders with Zipf-like activity, 30 rooms, Hangul, emoji and punctuation including { } ' ";
0.5% of messages hold a lone-surrogate escape, 1% a control character, 0.2% of lines are
truncated (as when a writer crashed). With --hot-share F, one more sender, `relay-bot`, writes
a fraction F of the lines (a day dominated by one bot); drawn from a second seeded generator, so
that the lines are those written without it, in the same order, but for the sender (how many
lines fit in SIZE may differ slightly, as the sender's length changes a line's).

Times run through the whole day, whatever the size: the seconds grow line by line at the pace
that spreads the expected number of lines over 24 hours, and the microseconds are random within
the second, so lines of the same second are out of order, as when several producers log.
(Generator version 2; version 1 added 0-2 seconds a line and stopped the hour at 23, so that
past the first 80,000 lines the times went round hour 23 again and again.)
"""

import argparse
import json
import random
import sys

WORDS = (
    "안녕 하세요 회의 시작할까요 네 좋아요 점심 뭐 먹을까 오늘 내일 배포 확인 부탁드립니다 "
    "ok thanks lgtm deploy review the build is green see you soon meeting at 3 lunch coffee "
    "{json} 'quoted' \"double\" 😀 👍 🎉 ㅋㅋㅋ ㅎㅎ ... !? #tag @mention 100% a/b"
).split()


def parse_size(s):
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    s = s.strip().upper()
    if s[-1] in mult:
        return int(float(s[:-1]) * mult[s[-1]])
    return int(s)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="100M")
    ap.add_argument("--format", choices=["repr", "json", "json-ascii"], default="repr")
    ap.add_argument("--date", default="2024-10-24")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--hot-share", type=float, default=0.0,
                    help="fraction of lines written by one extra sender, relay-bot (default 0)")
    ap.add_argument("-o", "--output", required=True)
    a = ap.parse_args()
    rnd = random.Random(a.seed)
    hot = random.Random(a.seed + 1)
    target = parse_size(a.size)
    senders = [f"user{i:03d}" if i % 3 else f"사용자{i}" for i in range(500)]
    weights = [1.0 / (i + 1) ** 1.1 for i in range(500)]
    rooms = [f"room{i:02d}" for i in range(30)]
    # Pre-draw senders in bulk (random.choices is fast with cum_weights).
    cum = []
    acc = 0.0
    for w in weights:
        acc += w
        cum.append(acc)
    written = 0
    offset = 0
    # Seconds of the day reached, in microseconds, and the mean step between lines: the day's
    # 86,400 seconds over the lines that the size makes (about 158 bytes a line).
    day_us = 86_400 * 1_000_000
    step_us = max(1, day_us * 158 // max(target, 1))
    t_us = 0
    with open(a.output, "w", encoding="utf-8", newline="\n") as out:
        buf = []
        while written < target:
            batch = rnd.choices(senders, cum_weights=cum, k=1000)
            if a.hot_share > 0:
                batch = ["relay-bot" if hot.random() < a.hot_share else s for s in batch]
            for sender in batch:
                n = rnd.randint(1, 12)
                msg = " ".join(rnd.choice(WORDS) for _ in range(n))
                r = rnd.random()
                lone = r < 0.005
                ctrl = 0.005 <= r < 0.015
                t_us = min(t_us + rnd.randint(0, 2 * step_us), day_us - 1)
                sec = t_us // 1_000_000
                h, m, s = sec // 3600, sec // 60 % 60, sec % 60
                ts = f"{a.date} {h:02d}:{m:02d}:{s:02d}.{rnd.randint(0, 999999):06d}"
                rec = {"message": msg, "time": ts, "user": sender,
                       "chat_room": rooms[offset % 30], "offset": offset}
                offset += 1
                if a.format == "repr":
                    line = str(rec)
                    if lone:
                        line = line.replace("'message': '", "'message': '\\udce3", 1)
                    if ctrl:
                        line = line.replace("'message': '", "'message': '\\x1b[3~", 1)
                else:
                    line = json.dumps(rec, ensure_ascii=(a.format == "json-ascii"))
                    if lone:
                        line = line.replace('"message": "', '"message": "\\udce3', 1)
                    if ctrl:
                        line = line.replace('"message": "', '"message": "\\u0003', 1)
                if rnd.random() < 0.002:
                    line = line[: len(line) // 2]
                buf.append(line)
            chunk = "\n".join(buf) + "\n"
            buf.clear()
            out.write(chunk)
            written += len(chunk.encode("utf-8"))
    print(f"wrote {written} bytes, {offset} lines to {a.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
