"""Google's Python client reading a whole table at one timestamp, for the snapshot bench.

Usage: read_table.py projects/P/instances/I/databases/D TABLE RFC3339 COL1,COL2,...
Prints the number of rows read. SPANNER_EMULATOR_HOST selects the emulator.
"""
import datetime
import sys

from google.auth.credentials import AnonymousCredentials
from google.cloud import spanner


def main():
    name, table, at, columns = sys.argv[1:5]
    _, project, _, instance, _, database = name.split("/")
    client = spanner.Client(project=project, credentials=AnonymousCredentials())
    db = client.instance(instance).database(database)
    when = datetime.datetime.fromisoformat(at.replace("Z", "+00:00")[:26] + "+00:00")
    rows = 0
    with db.snapshot(read_timestamp=when) as snapshot:
        for _ in snapshot.read(table, columns.split(","), spanner.KeySet(all_=True)):
            rows += 1
    print(rows)


if __name__ == "__main__":
    main()
