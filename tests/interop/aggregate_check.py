"""Independent aggregates of chatetl's Hive dataset, computed with DuckDB SQL, printed as JSON.

Usage: aggregate_check.py MESSAGES_DIR TZ DATE [DATE ...]

Prints {"messages": N,
        "senders": {sender_or_null_key: [messages, characters, rooms, first_us, last_us]},
        "rooms": {room: [messages, distinct_senders]},
        "hourly": [24 counts, hour of day in TZ]}
over the given dates, system messages excluded. The null sender is keyed "\\u0000null".
The Rust test compares this with chatetl's aggregate output.
"""

import json
import os
import sys
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import duckdb


def main():
    messages, tz, dates = sys.argv[1], ZoneInfo(sys.argv[2]), sys.argv[3:]
    globs = [os.path.join(messages, f"date={d}", "**", "*.parquet") for d in dates]
    con = duckdb.connect()
    files = "[" + ", ".join("'" + g.replace("'", "''") + "'" for g in globs) + "]"
    con.execute(
        f"CREATE VIEW m AS SELECT * FROM read_parquet({files}, hive_partitioning = true, "
        "hive_types = {'date': VARCHAR, 'sender_id': VARCHAR}) WHERE kind = 'message'"
    )
    senders = {}
    for sid, n, chars, rooms, first, last in con.execute(
        "SELECT sender_id, count(*), sum(length(message)), count(DISTINCT room), "
        "epoch_us(min(ts)), epoch_us(max(ts)) FROM m GROUP BY sender_id"
    ).fetchall():
        senders["\u0000null" if sid is None else sid] = [n, int(chars), rooms, first, last]
    rooms = {
        room: [n, s]
        for room, n, s in con.execute(
            "SELECT room, count(*), count(DISTINCT coalesce(sender_id, '\u0000null')) "
            "FROM m GROUP BY room"
        ).fetchall()
    }
    hourly = [0] * 24
    for (us,) in con.execute("SELECT epoch_us(ts) FROM m WHERE ts IS NOT NULL").fetchall():
        t = datetime.fromtimestamp(us / 1e6, tz=timezone.utc).astimezone(tz)
        hourly[t.hour] += 1
    total = con.execute("SELECT count(*) FROM m").fetchone()[0]
    print(json.dumps({"messages": total, "senders": senders, "rooms": rooms, "hourly": hourly}))


if __name__ == "__main__":
    main()
