// tag-table: a screamer plugin written in JavaScript (built with jco's QuickJS backend).
//
// Adds `table_tag` (the configured prefix and the record's table) to every record's extra
// fields; a record of the table named in `fail_table` fails, to show how a JavaScript plugin
// sends a record to the dead letters.
//
// Configuration: {"prefix": "cdc:", "fail_table": "Secrets"} (both optional).
//
// Build (scripts/lib.sh does this with pinned versions):
//   jco componentize app.js --wit ../../wit/plugin.wit --world-name plugin \
//       --backend quickjs --backend-qjs-disable-async -o tag_table.wasm

let prefix = "";
let failTable = null;

export const processor = {
  info() {
    return { name: "tag-table", version: "0.1.0" };
  },

  // Throwing refuses the configuration: the host exits with this message.
  init(config) {
    const c = JSON.parse(config);
    for (const key of ["prefix", "fail_table"]) {
      if (c[key] !== undefined && typeof c[key] !== "string") {
        throw `\`${key}\` must be a string`;
      }
    }
    prefix = c.prefix ?? "";
    failTable = c.fail_table ?? null;
  },

  // One outcome per record, in order: { tag: "keep" | "drop" | "patch" | "replace" | "emit" |
  // "fail" }. A patch that sets only `extra` sends nothing of the rows back to the host.
  process(batch) {
    return batch.map((record) => {
      if (record.tableName === failTable) {
        return { tag: "fail", val: `records of ${failTable} are refused by tag-table` };
      }
      const extra = record.extra ? JSON.parse(record.extra) : {};
      extra.table_tag = prefix + record.tableName;
      return { tag: "patch", val: { fields: [], extra: JSON.stringify(extra) } };
    });
  },
};
