// {{name}}: a screamer plugin in TypeScript (compiled with tsc, built with jco's QuickJS
// backend). The world's types are in plugin.d.ts: tsc checks every outcome against them.
//
// Keeps the records of the configured tables (every table when none is named) and adds
// `changed_columns`, the columns an INSERT or UPDATE writes, to each; a DELETE passes
// unchanged. Configuration (optional): {"tables": ["Users"]}.

import type { ChangeRecord, Outcome, PluginInfo, Processor } from "./plugin";

let tables = new Set<string>();

function processRecord(record: ChangeRecord): Outcome {
  if (tables.size > 0 && !tables.has(record.tableName)) {
    return { tag: "drop" };
  }
  if (record.modType === "delete") {
    // A DELETE writes no columns (its old values are in oldValues): pass it on.
    return { tag: "keep" };
  }
  const columns = new Set<string>();
  for (const row of record.mods) {
    for (const column of Object.keys(JSON.parse(row.newValues || "{}"))) {
      columns.add(column);
    }
  }
  const extra = record.extra ? JSON.parse(record.extra) : {};
  extra.changed_columns = [...columns].sort();
  return { tag: "replace", val: { ...record, extra: JSON.stringify(extra) } };
}

export const processor: Processor = {
  info(): PluginInfo {
    return { name: "{{name}}", version: "0.1.0" };
  },

  // Throwing refuses the configuration: screamer exits with this message.
  init(config: string): void {
    const settings = JSON.parse(config || "{}");
    const unknown = Object.keys(settings).filter((k) => k !== "tables");
    if (unknown.length > 0) {
      throw `unknown configuration field(s) ${unknown.join(", ")}`;
    }
    const names: unknown = settings.tables ?? [];
    if (!Array.isArray(names) || !names.every((t) => typeof t === "string" && t)) {
      throw "`tables` must be a list of table names";
    }
    tables = new Set(names);
  },

  // One outcome per record, in order.
  process(batch: ChangeRecord[]): Outcome[] {
    return batch.map((record) => {
      try {
        return processRecord(record);
      } catch (e) {
        // Values this plugin cannot read: a dead letter says why; the stream goes on.
        return { tag: "fail", val: String(e) };
      }
    });
  },
};
