// The screamer:plugin@0.3.0 world as jco maps it to JavaScript (wit/plugin.wit is the
// source): records are objects with camelCase fields, enums are strings, variants are
// `{ tag, val }`, an option is the value or `undefined`, u32 a number, s64 a bigint.

export type ModType = "insert" | "update" | "delete";

export interface Timestamp {
  seconds: bigint;
  nanos: number;
}

/** One changed row; each field is the text of a JSON object (`{}` when empty). */
export interface RowChange {
  keys: string;
  newValues: string;
  oldValues: string;
}

export interface ChangeRecord {
  tableName: string;
  modType: ModType;
  mods: RowChange[];
  /** Top-level fields beside the record's own, as the text of a JSON object. */
  extra?: string;
}

/** Where a record came from (`originOf`), for the plugins that ask. */
export interface Origin {
  partitionToken: string;
  commitTimestamp: Timestamp;
  recordSequence: string;
  serverTransactionId: string;
  isLastRecordInTransactionInPartition: boolean;
  valueCaptureType: string;
  numberOfRecordsInTransaction: number;
  numberOfPartitionsInTransaction: number;
  transactionTag: string;
  isSystemTransaction: boolean;
}

/** One record a plugin emits: to the main output (`output` unset) or a side output. */
export interface Emission {
  output?: string;
  record: ChangeRecord;
}

/** Which field of a row change a patch changes. */
export type RowField = "keys" | "new-values" | "old-values";

/** Members of one row field removed, then set (`set`: the text of a JSON object). */
export interface FieldPatch {
  row: number;
  field: RowField;
  remove: string[];
  set: string;
}

/** Changes to a record in place: only they cross back to the host. */
export interface RecordPatch {
  fields: FieldPatch[];
  /** Replaces the record's extra fields (`"{}"` removes them); unset leaves them. */
  extra?: string;
}

/** What becomes of one input record. */
export type Outcome =
  | { tag: "keep" }
  | { tag: "drop" }
  | { tag: "patch"; val: RecordPatch }
  | { tag: "replace"; val: ChangeRecord }
  | { tag: "emit"; val: Emission[] }
  | { tag: "fail"; val: string };

export interface PluginInfo {
  name: string;
  version: string;
}

/** What the plugin exports as `processor`. */
export interface Processor {
  info(): PluginInfo;
  /** Throwing refuses the configuration. */
  init(config: string): void;
  /** One outcome per record, in order. */
  process(batch: ChangeRecord[]): Outcome[];
}

export type Level = "trace" | "debug" | "info" | "warn" | "error";
