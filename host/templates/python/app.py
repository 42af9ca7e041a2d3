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
    Emission,
    FieldPatch,
    ModType,
    Outcome,
    Outcome_Drop,
    Outcome_Emit,
    Outcome_Fail,
    Outcome_Keep,
    Outcome_Patch,
    Outcome_Replace,
    PluginInfo,
    RecordPatch,
    RowChange,
    RowField,
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
        for i, record in enumerate(batch):
            try:
                outcome = _process(record)
            except Exception as e:
                # Values this plugin cannot read: a dead letter says why; the stream goes on.
                outcomes.append(Outcome_Fail(f"{type(e).__name__}: {e}"))
                continue
            wrong = _wrong_type(outcome, f"outcome[{i}]")
            outcomes.append(Outcome_Fail(wrong) if wrong else outcome)
        return outcomes


# What `process` returns must have the world's types. A value of another type would fail
# the whole batch with a message naming no field; checked here, that record alone becomes
# a dead letter saying where: "outcome[3].replace.extra: expected str, got int".
def _expect(value: object, kind: type, path: str) -> str | None:
    if isinstance(value, kind):
        return None
    return f"{path}: expected {kind.__name__}, got {type(value).__name__}"


def _first(errors) -> str | None:
    return next((e for e in errors if e), None)


def _record_error(r: object, path: str) -> str | None:
    if not isinstance(r, ChangeRecord):
        return _expect(r, ChangeRecord, path)
    return _first(
        [
            _expect(r.table_name, str, f"{path}.table_name"),
            _expect(r.mod_type, ModType, f"{path}.mod_type"),
            _expect(r.mods, list, f"{path}.mods"),
            None if r.extra is None else _expect(r.extra, str, f"{path}.extra"),
        ]
        + [
            _expect(m, RowChange, f"{path}.mods[{j}]")
            or _first(
                _expect(getattr(m, f), str, f"{path}.mods[{j}].{f}")
                for f in ("keys", "new_values", "old_values")
            )
            for j, m in enumerate(r.mods if isinstance(r.mods, list) else [])
        ]
    )


def _patch_error(p: object, path: str) -> str | None:
    if not isinstance(p, RecordPatch):
        return _expect(p, RecordPatch, path)
    if not isinstance(p.fields, list):
        return _expect(p.fields, list, f"{path}.fields")
    return _first(
        [
            _expect(f, FieldPatch, f"{path}.fields[{j}]")
            or _first(
                [
                    _expect(f.row, int, f"{path}.fields[{j}].row"),
                    _expect(f.field, RowField, f"{path}.fields[{j}].field"),
                    _expect(f.remove, list, f"{path}.fields[{j}].remove"),
                    _expect(f.set, str, f"{path}.fields[{j}].set"),
                ]
                + [
                    _expect(name, str, f"{path}.fields[{j}].remove[{k}]")
                    for k, name in enumerate(f.remove if isinstance(f.remove, list) else [])
                ]
            )
            for j, f in enumerate(p.fields)
        ]
        + [None if p.extra is None else _expect(p.extra, str, f"{path}.extra")]
    )


def _wrong_type(o: object, path: str) -> str | None:
    if isinstance(o, (Outcome_Keep, Outcome_Drop)):
        return None
    if isinstance(o, Outcome_Patch):
        return _patch_error(o.value, f"{path}.patch")
    if isinstance(o, Outcome_Replace):
        return _record_error(o.value, f"{path}.replace")
    if isinstance(o, Outcome_Fail):
        return _expect(o.value, str, f"{path}.fail")
    if isinstance(o, Outcome_Emit):
        if not isinstance(o.value, list):
            return _expect(o.value, list, f"{path}.emit")
        return _first(
            _expect(e, Emission, f"{path}.emit[{j}]")
            or (None if e.output is None else _expect(e.output, str, f"{path}.emit[{j}].output"))
            or _record_error(e.record, f"{path}.emit[{j}].record")
            for j, e in enumerate(o.value)
        )
    return f"{path}: expected an Outcome, got {type(o).__name__}"

