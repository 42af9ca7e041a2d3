//! Records across the boundary: host [`DataChangeRecord`]s to WIT change records and
//! origins, and back.
//!
//! Invariants: what the host read from Spanner stays the host's — column types and the
//! record's origin (partition token, commit timestamp, record sequence, transaction id,
//! tag and counts, capture type) are the input record's on every record a plugin returns or
//! is handed; the WIT record a plugin returns has no place for them. A plugin changes the
//! table name, mod type, mods and extra, which are checked before they can reach the
//! output: every row field a JSON object, `extra` a JSON object not shadowing the record's
//! fields.

use std::borrow::Cow;

use serde_json::{Map, Value};

use super::bindings::{
    ChangeRecordParam, ChangeRecordResult, ModType as WitModType, Origin, RowChangeParam,
    Timestamp as WitTimestamp,
};
use super::shape;
use crate::record::{DataChangeRecord, JsonObject, Mod, ModType};

/// A record between two plugins of a chain.
// Unboxed on purpose: a box would cost an allocation per record a plugin makes, on the hot
// path; stages live for one chain run.
#[allow(clippy::large_enum_variant)]
pub(super) enum Staged<'a> {
    /// A checked host record: the input record as it came, or what a plugin's patch made
    /// of it.
    Host {
        record: HostRecord<'a>,
        /// Its extra fields as the WIT's `extra` text.
        extra: Option<Cow<'a, str>>,
        /// The input record it came from: whose origin it has.
        origin: &'a DataChangeRecord,
    },
    /// A record the plugin in chain slot `by` returned whole (`replace` or `emit`), checked
    /// when it leaves the chain or is patched.
    Returned {
        record: ChangeRecordResult,
        by: usize,
        origin: &'a DataChangeRecord,
    },
}

/// A checked host record between two plugins. A patched one is boxed: the stage's records
/// stay small to move, and the box is the one the output takes.
pub(super) enum HostRecord<'a> {
    /// The input record, as it came.
    Input(&'a DataChangeRecord),
    /// What a plugin's patch made of it.
    Patched(Box<DataChangeRecord>),
}

impl std::ops::Deref for HostRecord<'_> {
    type Target = DataChangeRecord;

    fn deref(&self) -> &DataChangeRecord {
        match self {
            HostRecord::Input(record) => record,
            HostRecord::Patched(record) => record,
        }
    }
}

/// The extra fields of an input record as the WIT's `extra` text.
pub(super) fn extra_text(extra: Option<&Map<String, Value>>) -> Option<String> {
    extra
        .filter(|map| !map.is_empty())
        .map(|map| serde_json::to_string(map).expect("a JSON map serializes"))
}

impl<'a> Staged<'a> {
    /// An input record with its extra fields (as `extra` text).
    pub(super) fn input(record: &'a DataChangeRecord, extra: Option<&'a str>) -> Self {
        Staged::Host {
            record: HostRecord::Input(record),
            extra: extra.map(Cow::Borrowed),
            origin: record,
        }
    }

    /// Appends the record's row changes, borrowed, to `rows` (one buffer for a whole call,
    /// sliced by [`Staged::param`]).
    pub(super) fn push_rows<'b>(&'b self, rows: &mut Vec<RowChangeParam<'b>>) {
        match self {
            Staged::Host { record, .. } => {
                rows.extend(record.mods.iter().map(|m| RowChangeParam {
                    keys: m.keys.as_str(),
                    new_values: m.new_values.as_str(),
                    old_values: m.old_values.as_str(),
                }))
            }
            Staged::Returned { record, .. } => {
                rows.extend(record.mods.iter().map(|m| RowChangeParam {
                    keys: &m.keys,
                    new_values: &m.new_values,
                    old_values: &m.old_values,
                }))
            }
        }
    }

    /// How many row changes [`Staged::push_rows`] appends.
    pub(super) fn row_count(&self) -> usize {
        match self {
            Staged::Host { record, .. } => record.mods.len(),
            Staged::Returned { record, .. } => record.mods.len(),
        }
    }

    /// The record as the guest receives it, lowered straight from host memory.
    pub(super) fn param<'b>(&'b self, rows: &'b [RowChangeParam<'b>]) -> ChangeRecordParam<'b> {
        match self {
            Staged::Host { record, extra, .. } => ChangeRecordParam {
                table_name: &record.table_name,
                mod_type: match record.mod_type {
                    ModType::Insert => WitModType::Insert,
                    ModType::Update => WitModType::Update,
                    ModType::Delete => WitModType::Delete,
                },
                mods: rows,
                extra: extra.as_deref(),
            },
            Staged::Returned { record, .. } => ChangeRecordParam {
                table_name: &record.table_name,
                mod_type: record.mod_type,
                mods: rows,
                extra: record.extra.as_deref(),
            },
        }
    }

    /// Whether a plugin's `record` is this one unchanged (what a map that changes nothing
    /// returns): then it goes on as it is, costing no conversion.
    pub(super) fn is_unchanged_by(&self, record: &ChangeRecordResult) -> bool {
        let mine = self.param(&[]); // the rows are compared one by one below
        mine.table_name == record.table_name
            && mine.mod_type == record.mod_type
            && mine.extra == record.extra.as_deref()
            && self.row_count() == record.mods.len()
            && record.mods.iter().enumerate().all(|(i, theirs)| {
                let (keys, new_values, old_values) = self.row(i);
                keys == theirs.keys
                    && new_values == theirs.new_values
                    && old_values == theirs.old_values
            })
    }

    /// Row change `i`'s keys, new values and old values.
    fn row(&self, i: usize) -> (&str, &str, &str) {
        match self {
            Staged::Host { record, .. } => {
                let m = &record.mods[i];
                (
                    m.keys.as_str(),
                    m.new_values.as_str(),
                    m.old_values.as_str(),
                )
            }
            Staged::Returned { record, .. } => {
                let m = &record.mods[i];
                (&m.keys, &m.new_values, &m.old_values)
            }
        }
    }

    /// The input record this one came from: whose origin it has.
    pub(super) fn origin(&self) -> &'a DataChangeRecord {
        match self {
            Staged::Host { origin, .. } | Staged::Returned { origin, .. } => origin,
        }
    }
}

/// What the host read about `record`, as the guest asks for it (`batch.origin-of`).
pub(super) fn origin(record: &DataChangeRecord) -> Origin {
    let nanos = record.commit_timestamp.unix_nanos();
    Origin {
        partition_token: record.partition_token.as_str().to_owned(),
        commit_timestamp: WitTimestamp {
            seconds: nanos.div_euclid(1_000_000_000) as i64,
            nanos: nanos.rem_euclid(1_000_000_000) as u32,
        },
        record_sequence: record.record_sequence.clone(),
        server_transaction_id: record.server_transaction_id.clone(),
        is_last_record_in_transaction_in_partition: record
            .is_last_record_in_transaction_in_partition,
        value_capture_type: record.value_capture_type.as_str().to_owned(),
        number_of_records_in_transaction: clamp(record.number_of_records_in_transaction),
        number_of_partitions_in_transaction: clamp(record.number_of_partitions_in_transaction),
        transaction_tag: record.transaction_tag.clone(),
        is_system_transaction: record.is_system_transaction,
    }
}

fn clamp(n: i64) -> u32 {
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}

/// A plugin's record as a host record: its table name, mod type, mods and extra fields,
/// with `origin`'s column types and metadata. Row fields whose text is the origin's are
/// reused as they are; only changed ones are validated (a JSON parse each). Extra fields may
/// not shadow the record's own fields or the side-output tag: the output line must parse
/// back as the record it claims to be.
pub(super) fn to_host(
    record: ChangeRecordResult,
    origin: &DataChangeRecord,
) -> Result<(DataChangeRecord, Option<Map<String, Value>>), String> {
    let mods = record
        .mods
        .into_iter()
        .enumerate()
        .map(|(i, m)| {
            let before = origin.mods.get(i);
            let field = |text: String, name: &str, same: Option<&JsonObject>| match same {
                Some(o) if o.as_str() == text => Ok(o.clone()),
                _ => {
                    shape::check(&text).map_err(|e| format!("mods[{i}].{name}: {e}"))?;
                    JsonObject::from_text(text).map_err(|e| format!("mods[{i}].{name}: {e}"))
                }
            };
            Ok(Mod {
                keys: field(m.keys, "keys", before.map(|b| &b.keys))?,
                new_values: field(m.new_values, "new_values", before.map(|b| &b.new_values))?,
                old_values: field(m.old_values, "old_values", before.map(|b| &b.old_values))?,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let extra = record
        .extra
        .as_deref()
        .map(parse_extra)
        .transpose()?
        .flatten();
    let host = DataChangeRecord {
        table_name: record.table_name,
        mods,
        mod_type: match record.mod_type {
            WitModType::Insert => ModType::Insert,
            WitModType::Update => ModType::Update,
            WitModType::Delete => ModType::Delete,
        },
        ..metadata_of(origin)
    };
    Ok((host, extra))
}

/// A record with `origin`'s column types and metadata, and nothing else.
pub(super) fn metadata_of(origin: &DataChangeRecord) -> DataChangeRecord {
    DataChangeRecord {
        partition_token: origin.partition_token.clone(),
        commit_timestamp: origin.commit_timestamp,
        record_sequence: origin.record_sequence.clone(),
        server_transaction_id: origin.server_transaction_id.clone(),
        is_last_record_in_transaction_in_partition: origin
            .is_last_record_in_transaction_in_partition,
        table_name: String::new(),
        column_types: origin.column_types.clone(),
        mods: Vec::new(),
        mod_type: origin.mod_type,
        value_capture_type: origin.value_capture_type.clone(),
        number_of_records_in_transaction: origin.number_of_records_in_transaction,
        number_of_partitions_in_transaction: origin.number_of_partitions_in_transaction,
        transaction_tag: origin.transaction_tag.clone(),
        is_system_transaction: origin.is_system_transaction,
        snapshot: origin.snapshot,
    }
}

/// `extra` as a map (none when empty): a JSON object none of whose keys is a record field or
/// another name the output line reserves ([`DataChangeRecord::FIELDS`]).
pub(super) fn parse_extra(text: &str) -> Result<Option<Map<String, Value>>, String> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    shape::check(text).map_err(|e| format!("extra: {e}"))?;
    let map: Map<String, Value> =
        serde_json::from_str(text).map_err(|e| format!("extra is not a JSON object: {e}"))?;
    if let Some(key) = map
        .keys()
        .find(|k| DataChangeRecord::FIELDS.contains(&k.as_str()))
    {
        let what = match key.as_str() {
            "output" | "start_timestamp" | "watermark" | "created_at" | "scheduled_at"
            | "running_at" => "a name the host's output line reserves",
            _ => "a field of the record itself",
        };
        return Err(format!(
            "extra sets {key:?}, {what}: change the record's field, or name the extra field \
             differently"
        ));
    }
    Ok(Some(map).filter(|m| !m.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::bindings::screamer::plugin::types::RowChangeResult;

    fn record() -> DataChangeRecord {
        crate::testing::users_update(serde_json::json!([
            {"keys": {"Id": "1"}, "new_values": {"Name": "a"}, "old_values": {}}
        ]))
    }

    /// What a plugin returning the record unchanged hands back.
    fn result(record: &DataChangeRecord, extra: Option<&str>) -> ChangeRecordResult {
        let staged = Staged::input(record, extra);
        let mut rows = Vec::new();
        staged.push_rows(&mut rows);
        let p = staged.param(&rows);
        ChangeRecordResult {
            table_name: p.table_name.into(),
            mod_type: p.mod_type,
            mods: p
                .mods
                .iter()
                .map(|m| RowChangeResult {
                    keys: m.keys.into(),
                    new_values: m.new_values.into(),
                    old_values: m.old_values.into(),
                })
                .collect(),
            extra: p.extra.map(Into::into),
        }
    }

    #[test]
    fn round_trips_every_field() {
        let original = record();
        let (back, extra) = to_host(result(&original, None), &original).unwrap();
        assert_eq!(back, original);
        assert_eq!(extra, None);
        let (_, extra) = to_host(result(&original, Some(r#"{"a":1}"#)), &original).unwrap();
        assert_eq!(extra.unwrap()["a"], 1);
    }

    #[test]
    fn the_origin_is_what_the_host_read() {
        let original = record();
        let o = origin(&original);
        assert_eq!(o.partition_token, "tok");
        assert_eq!(o.commit_timestamp.seconds, 1_795_809_600);
        assert_eq!(o.commit_timestamp.nanos, 123_456_789);
        assert_eq!(o.record_sequence, "00000001");
        assert_eq!(o.server_transaction_id, "tx");
        assert!(o.is_last_record_in_transaction_in_partition);
        assert_eq!(o.value_capture_type, "OLD_AND_NEW_VALUES");
        assert_eq!(o.number_of_records_in_transaction, 2);
        assert_eq!(o.number_of_partitions_in_transaction, 1);
        assert_eq!(o.transaction_tag, "t");
        assert!(!o.is_system_transaction);

        // A changed record keeps its input's origin, and its own fields are taken.
        let mut changed = result(&original, None);
        changed.table_name = "Renamed".into();
        changed.mod_type = WitModType::Delete;
        let staged = Staged::Returned {
            record: changed,
            by: 0,
            origin: &original,
        };
        assert!(std::ptr::eq(staged.origin(), &original));
        let Staged::Returned { record, .. } = staged else {
            unreachable!()
        };
        let (back, _) = to_host(record, &original).unwrap();
        let expected = DataChangeRecord {
            table_name: "Renamed".into(),
            mod_type: ModType::Delete,
            ..original.clone()
        };
        assert_eq!(back, expected);
    }

    #[test]
    fn a_replacement_is_unchanged_only_when_every_field_is() {
        let original = record();
        let input = Staged::input(&original, None);
        assert!(input.is_unchanged_by(&result(&original, None)));
        let mut changes: Vec<fn(&mut ChangeRecordResult)> = vec![
            |r| r.table_name = "Other".into(),
            |r| r.mod_type = WitModType::Delete,
            |r| r.extra = Some(r#"{"a":1}"#.into()),
            |r| r.mods[0].keys = r#"{"Id":"2"}"#.into(),
            |r| r.mods[0].new_values = "{}".into(),
            |r| r.mods[0].old_values = r#"{"Name":"b"}"#.into(),
            |r| r.mods.clear(),
        ];
        changes.push(|r| {
            let row = r.mods[0].clone();
            r.mods.push(row);
        });
        for change in changes {
            let mut changed = result(&original, None);
            change(&mut changed);
            assert!(!input.is_unchanged_by(&changed));
            // A record a plugin changed is compared the same way.
            let staged = Staged::Returned {
                record: changed.clone(),
                by: 0,
                origin: &original,
            };
            assert!(staged.is_unchanged_by(&changed));
            assert!(!staged.is_unchanged_by(&result(&original, None)));
        }
    }

    #[test]
    fn refuses_what_would_break_the_output() {
        let original = record();
        let mut wit = result(&original, None);
        wit.mods[0].new_values = "[1, 2]".into();
        let err = to_host(wit, &original).unwrap_err();
        assert!(
            err.starts_with("mods[0].new_values: not a JSON object"),
            "{err}"
        );
        let wit = result(&original, Some("nope"));
        assert!(
            to_host(wit, &original)
                .unwrap_err()
                .starts_with("extra is not a JSON object")
        );
        let mut wit = result(&original, None);
        wit.mods[0].new_values = r#"{"Name":"a","Name":"b"}"#.into();
        let err = to_host(wit, &original).unwrap_err();
        assert!(
            err.starts_with(r#"mods[0].new_values: names "Name" twice"#),
            "{err}"
        );
        let err = to_host(result(&original, Some(r#"{"x":1,"x":2}"#)), &original).unwrap_err();
        assert!(err.starts_with(r#"extra: names "x" twice"#), "{err}");
        let deep = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        let err = to_host(
            result(&original, Some(&format!(r#"{{"x":{}}}"#, deep(80)))),
            &original,
        )
        .unwrap_err();
        assert!(err.starts_with("extra: nested 81 levels deep"), "{err}");
        for (shadow, what) in [
            (r#"{"table_name":"Shadow"}"#, "a field of the record itself"),
            (r#"{"mods":[]}"#, "a field of the record itself"),
            (
                r#"{"output":"x"}"#,
                "a name the host's output line reserves",
            ),
            (
                r#"{"watermark":"x"}"#,
                "a name the host's output line reserves",
            ),
        ] {
            let err = to_host(result(&original, Some(shadow)), &original).unwrap_err();
            assert!(err.contains(what), "{err}");
        }
    }
}
