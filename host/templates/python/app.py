"""{{name}}: a screamer plugin in Python (built with componentize-py).

Keeps the records of the configured tables (every table when none is named) and adds
`changed_columns`, the columns an INSERT or UPDATE writes, to each; a DELETE passes
unchanged. Configuration (optional): {"tables": ["Users"]}.
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports.types import (
    ChangeRecord,
    ModType,
    Outcome,
    Outcome_Drop,
    Outcome_Fail,
    Outcome_Keep,
    Outcome_Replace,
    PluginInfo,
)

NAME = "{{name}}"
VERSION = "0.1.0"

_tables: set[str] = set()


def _process(record: ChangeRecord) -> Outcome:
    if _tables and record.table_name not in _tables:
        return Outcome_Drop()
    if record.mod_type == ModType.DELETE:
        # A DELETE writes no columns (its old values are in old_values): pass it on.
        return Outcome_Keep()
    columns: set[str] = set()
    for row in record.mods:
        columns.update(json.loads(row.new_values or "{}"))
    extra = json.loads(record.extra) if record.extra else {}
    extra["changed_columns"] = sorted(columns)
    record.extra = json.dumps(extra)
    return Outcome_Replace(record)


class Processor(exports.Processor):
    def info(self) -> PluginInfo:
        return PluginInfo(name=NAME, version=VERSION)

    def init(self, config: str) -> None:
        """Raising Err refuses the configuration: screamer exits with its message."""
        global _tables
        settings = json.loads(config or "{}")
        unknown = set(settings) - {"tables"}
        if unknown:
            raise Err(f"unknown configuration field(s) {sorted(unknown)}")
        tables = settings.get("tables", [])
        if not isinstance(tables, list) or not all(isinstance(t, str) and t for t in tables):
            raise Err("`tables` must be a list of table names")
        _tables = set(tables)

    def process(self, batch: list[ChangeRecord]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for record in batch:
            try:
                outcomes.append(_process(record))
            except Exception as e:
                # Values this plugin cannot read: a dead letter says why; the stream goes on.
                outcomes.append(Outcome_Fail(f"{type(e).__name__}: {e}"))
        return outcomes
