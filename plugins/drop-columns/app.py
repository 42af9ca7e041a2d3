"""drop-columns: a screamer plugin written in Python (built with componentize-py).

Removes the configured columns from the new and old values of every row change, so wide
or sensitive columns never leave the pipeline. Key columns are left alone. It returns a
patch naming the members to remove: nothing else of the record crosses back to the host.

Configuration: {"columns": ["Bio", "Avatar"], "tables": ["Users"]}
("tables" is optional; without it every table is processed).

Build: componentize-py -d ../../wit -w plugin componentize app -o drop_columns.wasm
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import log
from wit_world.imports.types import (
    ChangeRecord,
    FieldPatch,
    Outcome,
    Outcome_Fail,
    Outcome_Keep,
    Outcome_Patch,
    PluginInfo,
    RecordPatch,
    RowField,
)

NAME = "drop-columns"
VERSION = "0.1.0"

_columns: list[str] = []
_tables: set[str] = set()


def _present(text: str) -> list[str]:
    """The configured columns the values have."""
    if not any(f'"{c}"' in text for c in _columns):
        return []
    values = json.loads(text) if text else {}
    return [c for c in _columns if c in values]


def _process(record: ChangeRecord) -> Outcome:
    if _tables and record.table_name not in _tables:
        return Outcome_Keep()
    fields = [
        FieldPatch(row=i, field=field, remove=present, set="{}")
        for i, row in enumerate(record.mods)
        for field, text in ((RowField.NEW_VALUES, row.new_values), (RowField.OLD_VALUES, row.old_values))
        if (present := _present(text))
    ]
    return Outcome_Patch(RecordPatch(fields=fields, extra=None)) if fields else Outcome_Keep()


class Processor(exports.Processor):
    def info(self) -> PluginInfo:
        return PluginInfo(name=NAME, version=VERSION)

    def init(self, config: str) -> None:
        global _columns, _tables
        try:
            settings = json.loads(config or "{}")
        except ValueError as e:
            raise Err(f"invalid configuration: {e}")
        columns = settings.get("columns")
        if not isinstance(columns, list) or not columns or not all(isinstance(c, str) for c in columns):
            raise Err("invalid configuration: `columns` must be a non-empty list of column names")
        unknown = set(settings) - {"columns", "tables"}
        if unknown:
            raise Err(f"invalid configuration: unknown field(s) {sorted(unknown)}")
        _columns = columns
        _tables = set(settings.get("tables") or [])
        log.log(log.Level.DEBUG, f"dropping columns {_columns}")

    def process(self, batch: list[ChangeRecord]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for record in batch:
            try:
                outcomes.append(_process(record))
            except Exception as e:  # one bad record must not fail its batch
                outcomes.append(Outcome_Fail(f"{type(e).__name__}: {e}"))
        return outcomes
