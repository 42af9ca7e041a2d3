// {{name}}: a screamer plugin in JavaScript (built with jco's QuickJS backend).
//
// Keeps the records of the configured tables (every table when none is named) and adds
// `changed_columns`, the columns an INSERT or UPDATE writes, to each; a DELETE passes
// unchanged. Configuration (optional): {"tables": ["Users"]}.

let tables = new Set();

function processRecord(record) {
  if (tables.size > 0 && !tables.has(record.tableName)) {
    return { tag: "drop" };
  }
  if (record.modType === "delete") {
    // A DELETE writes no columns (its old values are in oldValues): pass it on.
    return { tag: "keep" };
  }
  const columns = new Set();
  for (const row of record.mods) {
    for (const column of Object.keys(JSON.parse(row.newValues || "{}"))) {
      columns.add(column);
    }
  }
  const extra = record.extra ? JSON.parse(record.extra) : {};
  extra.changed_columns = [...columns].sort();
  return { tag: "replace", val: { ...record, extra: JSON.stringify(extra) } };
}

export const processor = {
  info() {
    return { name: "{{name}}", version: "0.1.0" };
  },

  // Throwing refuses the configuration: screamer exits with this message.
  init(config) {
    const settings = JSON.parse(config || "{}");
    const unknown = Object.keys(settings).filter((k) => k !== "tables");
    if (unknown.length > 0) {
      throw `unknown configuration field(s) ${unknown.join(", ")}`;
    }
    const names = settings.tables ?? [];
    if (!Array.isArray(names) || !names.every((t) => typeof t === "string" && t)) {
      throw "`tables` must be a list of table names";
    }
    tables = new Set(names);
  },

  // One outcome per record, in order: { tag: "keep" | "drop" | "replace" | "emit" | "fail" }.
  process(batch) {
    return batch.map((record, i) => {
      let outcome;
      try {
        outcome = processRecord(record);
      } catch (e) {
        // Values this plugin cannot read: a dead letter says why; the stream goes on.
        return { tag: "fail", val: String(e) };
      }
      const wrong = outcomeError(outcome, `outcome[${i}]`);
      return wrong ? { tag: "fail", val: wrong } : outcome;
    });
  },
};

// What `process` returns must have the world's types. A value of another type would fail
// the whole batch with a message naming no field; checked here, that record alone becomes
// a dead letter saying where: "outcome[3].replace.extra: expected string, got number".
const kind = (v) => (v === null ? "null" : Array.isArray(v) ? "array" : typeof v);
const expect = (v, type, path) =>
  kind(v) === type ? null : `${path}: expected ${type}, got ${kind(v)}`;
const optional = (v, type, path) => (v === undefined || v === null ? null : expect(v, type, path));
const first = (list, check) => list.map(check).find((e) => e) ?? null;

function outcomeError(o, path) {
  if (kind(o) !== "object") return `${path}: expected an outcome object, got ${kind(o)}`;
  switch (o.tag) {
    case "keep":
    case "drop":
      return null;
    case "patch":
      return patchError(o.val, `${path}.patch`);
    case "replace":
      return recordError(o.val, `${path}.replace`);
    case "emit":
      return (
        expect(o.val, "array", `${path}.emit`) ??
        first(o.val, (e, j) =>
          kind(e) !== "object"
            ? `${path}.emit[${j}]: expected an emission object, got ${kind(e)}`
            : optional(e.output, "string", `${path}.emit[${j}].output`) ??
              recordError(e.record, `${path}.emit[${j}].record`),
        )
      );
    case "fail":
      return expect(o.val, "string", `${path}.fail`);
    default:
      return `${path}.tag: expected "keep", "drop", "patch", "replace", "emit" or "fail", got ${JSON.stringify(o.tag)}`;
  }
}

function patchError(p, path) {
  if (kind(p) !== "object") return `${path}: expected a patch object, got ${kind(p)}`;
  return (
    expect(p.fields, "array", `${path}.fields`) ??
    first(p.fields, (f, i) => {
      const at = `${path}.fields[${i}]`;
      if (kind(f) !== "object") return `${at}: expected a field patch object, got ${kind(f)}`;
      if (!["keys", "new-values", "old-values"].includes(f.field)) {
        return `${at}.field: expected "keys", "new-values" or "old-values", got ${JSON.stringify(f.field)}`;
      }
      return (
        expect(f.row, "number", `${at}.row`) ??
        expect(f.remove, "array", `${at}.remove`) ??
        first(f.remove, (name, k) => expect(name, "string", `${at}.remove[${k}]`)) ??
        expect(f.set, "string", `${at}.set`)
      );
    }) ??
    optional(p.extra, "string", `${path}.extra`)
  );
}

function recordError(r, path) {
  if (kind(r) !== "object") return `${path}: expected a record object, got ${kind(r)}`;
  if (!["insert", "update", "delete"].includes(r.modType)) {
    return `${path}.modType: expected "insert", "update" or "delete", got ${JSON.stringify(r.modType)}`;
  }
  return (
    expect(r.tableName, "string", `${path}.tableName`) ??
    expect(r.mods, "array", `${path}.mods`) ??
    first(r.mods, (m, i) =>
      kind(m) !== "object"
        ? `${path}.mods[${i}]: expected a row object, got ${kind(m)}`
        : first(["keys", "newValues", "oldValues"], (f) =>
            expect(m[f], "string", `${path}.mods[${i}].${f}`),
          ),
    ) ??
    optional(r.extra, "string", `${path}.extra`)
  );
}
