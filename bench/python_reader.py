"""Peer reader for the benchmark: the Python google-cloud-spanner client following a change
stream's partitions over [start, end], counting records and mods.

Usage: python_reader.py PROJECT INSTANCE DATABASE STREAM START END
(SPANNER_EMULATOR_HOST selects the emulator, as for every Google client). Prints one JSON
object: {"records": N, "mods": M, "seconds": S}.
"""

import datetime
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from google.cloud import spanner
from google.cloud.spanner_v1 import param_types


def parse(ts: str) -> datetime.datetime:
    # Python keeps microseconds: round the start down and the end up.
    base, _, frac = ts.rstrip("Z").partition(".")
    micros = int((frac + "000000")[:6]) if frac else 0
    dt = datetime.datetime.fromisoformat(base).replace(tzinfo=datetime.timezone.utc)
    return dt + datetime.timedelta(microseconds=micros)


def main() -> None:
    project, instance, database, stream, start, end = sys.argv[1:7]
    start_ts = parse(start)
    end_ts = parse(end) + datetime.timedelta(microseconds=1)
    db = spanner.Client(project=project).instance(instance).database(database)
    sql = (
        f"SELECT ChangeRecord FROM READ_{stream}(start_timestamp => @start, "
        "end_timestamp => @end, partition_token => @token, heartbeat_milliseconds => 1000)"
    )
    types = {
        "start": param_types.TIMESTAMP,
        "end": param_types.TIMESTAMP,
        "token": param_types.STRING,
    }
    lock = threading.Lock()
    counts = {"records": 0, "mods": 0}
    seen = set()
    pool = ThreadPoolExecutor(max_workers=64)
    pending = []

    def read(token, partition_start):
        records = mods = 0
        children = []
        with db.snapshot() as snap:
            rows = snap.execute_sql(
                sql,
                params={"start": partition_start, "end": end_ts, "token": token},
                param_types=types,
            )
            for row in rows:
                for change in row[0]:
                    data, _heartbeats, child_records = change[0], change[1], change[2]
                    for record in data:
                        records += 1
                        mods += len(record[6])
                    for child_record in child_records:
                        for child in child_record[2]:
                            children.append((child[0], child_record[0]))
        with lock:
            counts["records"] += records
            counts["mods"] += mods
            for token, child_start in children:
                if token not in seen:
                    seen.add(token)
                    pending.append(pool.submit(read, token, child_start))

    began = time.monotonic()
    with lock:
        pending.append(pool.submit(read, None, start_ts))
    while True:
        with lock:
            if all(f.done() for f in pending):
                break
            waiting = [f for f in pending if not f.done()]
        for f in waiting:
            f.result()
    seconds = time.monotonic() - began
    for f in pending:
        f.result()
    print(json.dumps({"records": counts["records"], "mods": counts["mods"], "seconds": seconds}))


if __name__ == "__main__":
    main()
