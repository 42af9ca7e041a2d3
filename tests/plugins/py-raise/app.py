"""py-raise: a Python test plugin whose exceptions escape (componentize-py traps on them).

A record whose first row has new value Name == "raise" raises ValueError out of `process`,
naming the record by its sequence (its origin, asked of the host); every other record is
kept. The host must put the exception's text, which Python prints to
stderr, in the dead letter.
"""

import json

from wit_world import exports
from wit_world.imports import batch as host_batch
from wit_world.imports.types import ChangeRecord, Outcome, Outcome_Keep, PluginInfo


class Processor(exports.Processor):
    def info(self) -> PluginInfo:
        return PluginInfo(name="py-raise", version="0.1.0")

    def init(self, config: str) -> None:
        pass

    def process(self, batch: list[ChangeRecord]) -> list[Outcome]:
        for index, record in enumerate(batch):
            values = json.loads(record.mods[0].new_values) if record.mods else {}
            if values.get("Name") == "raise":
                sequence = host_batch.origin_of(index).record_sequence
                raise ValueError(f"py-raise: refusing record {sequence}")
        return [Outcome_Keep() for _ in batch]
