"""drop-columns: a screamer plugin written in Python (built with componentize-py).

Removes the configured columns from the new and old values of every row change, so wide
or sensitive columns never leave the pipeline. Key columns are left alone.

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
    Outcome,
    Outcome_Fail,
    Outcome_Keep,
    Outcome_Replace,
    PluginInfo,
)

NAME = "drop-columns"
VERSION = "0.1.0"

_columns: list[str] = []
_tables: set[str] = set()


def _strip(text: str) -> str | None:
    """The values without the configured columns, or None when none of them is there."""
    if not any(f'"{c}"' in text for c in _columns):
        return None
    values = json.loads(text) if text else {}
    removed = [c for c in _columns if c in values]
    for c in removed:
        del values[c]
    return json.dumps(values, separators=(",", ":")) if removed else None


def _process(record: ChangeRecord) -> Outcome:
    if _tables and record.table_name not in _tables:
        return Outcome_Keep()
    changed = False
    for row in record.mods:
        for field in ("new_values", "old_values"):
            stripped = _strip(getattr(row, field))
            if stripped is not None:
                setattr(row, field, stripped)
                changed = True
    return Outcome_Replace(record) if changed else Outcome_Keep()


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
