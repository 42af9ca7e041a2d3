//! Records across the boundary: host [`DataChangeRecord`]s to WIT change records and back.
//!
//! Invariants: what the host read from Spanner stays the host's — column types and the
//! record's metadata (partition token, commit timestamp, record sequence, transaction id,
//! tag and counts, capture type) are the input record's on every record a plugin returns or
//! is handed, whatever a plugin put in them; a plugin changes only the table name, mod
//! type, mods and extra. Those are checked before they can reach the output: every row
//! field a JSON object, `extra` a JSON object or empty, not shadowing the record's fields.

use serde_json::{Map, Value};

use super::bindings::{
    ChangeRecordParam, ChangeRecordResult, ModType as WitModType, RowChangeParam,
    Timestamp as WitTimestamp,
};
use crate::record::{DataChangeRecord, JsonObject, Mod, ModType};

/// A record between two plugins of a chain.
// Unboxed on purpose: a box would cost an allocation per record a plugin makes, on the hot
// path; stages live for one chain run.
#[allow(clippy::large_enum_variant)]
pub(super) enum Staged<'a> {
    /// The input record as it came, with its extra fields as JSON text ("" for none).
    Input {
        record: &'a DataChangeRecord,
        extra: &'a str,
    },
    /// What the plugin in chain slot `by` made of the input record `origin`.
    Changed {
        record: ChangeRecordResult,
        by: usize,
        origin: &'a DataChangeRecord,
    },
}

/// The extra fields of an input record as the WIT's `extra` text.
pub(super) fn extra_text(extra: Option<&Map<String, Value>>) -> String {
    match extra {
        Some(map) if !map.is_empty() => serde_json::to_string(map).expect("a JSON map serializes"),
        _ => String::new(),
    }
}

impl Staged<'_> {
    /// Appends the record's row changes, borrowed, to `rows` (one buffer for a whole call,
    /// sliced by [`Staged::param`]).
    pub(super) fn push_rows<'b>(&'b self, rows: &mut Vec<RowChangeParam<'b>>) {
        match self {
            Staged::Input { record, .. } => {
                rows.extend(record.mods.iter().map(|m| RowChangeParam {
                    keys: m.keys.as_str(),
                    new_values: m.new_values.as_str(),
                    old_values: m.old_values.as_str(),
                }))
            }
            Staged::Changed { record, .. } => {
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
            Staged::Input { record, .. } => record.mods.len(),
            Staged::Changed { record, .. } => record.mods.len(),
        }
    }

    /// The record as the guest receives it, lowered straight from host memory; a changed
    /// record with its input record's metadata.
    pub(super) fn param<'b>(&'b self, rows: &'b [RowChangeParam<'b>]) -> ChangeRecordParam<'b> {
        match self {
            Staged::Input { record, extra } => ChangeRecordParam {
                table_name: &record.table_name,
                mod_type: match record.mod_type {
                    ModType::Insert => WitModType::Insert,
                    ModType::Update => WitModType::Update,
                    ModType::Delete => WitModType::Delete,
                },
                extra,
                ..metadata(record, rows)
            },
            Staged::Changed {
                record: r, origin, ..
            } => ChangeRecordParam {
                table_name: &r.table_name,
                mod_type: r.mod_type,
                mods: rows,
                extra: &r.extra,
                ..metadata(origin, rows)
            },
        }
    }
}

/// `record`'s metadata as the guest receives it, with `rows` as its mods (the table, mod
/// type and extra are the caller's to set).
fn metadata<'b>(
    record: &'b DataChangeRecord,
    rows: &'b [RowChangeParam<'b>],
) -> ChangeRecordParam<'b> {
    let nanos = record.commit_timestamp.unix_nanos();
    ChangeRecordParam {
        partition_token: record.partition_token.as_str(),
        commit_timestamp: WitTimestamp {
            seconds: nanos.div_euclid(1_000_000_000) as i64,
            nanos: nanos.rem_euclid(1_000_000_000) as u32,
        },
        record_sequence: &record.record_sequence,
        server_transaction_id: &record.server_transaction_id,
        is_last_record_in_transaction_in_partition: record
            .is_last_record_in_transaction_in_partition,
        table_name: "",
        mod_type: WitModType::Insert,
        mods: rows,
        value_capture_type: record.value_capture_type.as_str(),
        number_of_records_in_transaction: clamp(record.number_of_records_in_transaction),
        number_of_partitions_in_transaction: clamp(record.number_of_partitions_in_transaction),
        transaction_tag: &record.transaction_tag,
        is_system_transaction: record.is_system_transaction,
        extra: "",
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
                _ => JsonObject::from_text(text).map_err(|e| format!("mods[{i}].{name}: {e}")),
            };
            Ok(Mod {
                keys: field(m.keys, "keys", before.map(|b| &b.keys))?,
                new_values: field(m.new_values, "new_values", before.map(|b| &b.new_values))?,
                old_values: field(m.old_values, "old_values", before.map(|b| &b.old_values))?,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let extra = parse_extra(&record.extra)?;
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
fn metadata_of(origin: &DataChangeRecord) -> DataChangeRecord {
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
    }
}

/// `extra` as a map: a JSON object (or empty) none of whose keys is a record field or
/// another name the output line reserves ([`DataChangeRecord::FIELDS`]).
fn parse_extra(text: &str) -> Result<Option<Map<String, Value>>, String> {
    if text.trim().is_empty() {
        return Ok(None);
    }
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
        serde_json::from_value(serde_json::json!({
            "partition_token": "tok", "commit_timestamp": "2026-11-27T20:00:00.123456789Z",
            "record_sequence": "00000001", "server_transaction_id": "tx",
            "is_last_record_in_transaction_in_partition": true, "table_name": "Users",
            "column_types": [{"name": "Id", "type": {"code": "INT64"}, "is_primary_key": true, "ordinal_position": 1}],
            "mods": [{"keys": {"Id": "1"}, "new_values": {"Name": "a"}, "old_values": {}}],
            "mod_type": "UPDATE", "value_capture_type": "OLD_AND_NEW_VALUES",
            "number_of_records_in_transaction": 2, "number_of_partitions_in_transaction": 1,
            "transaction_tag": "t", "is_system_transaction": false
        }))
        .unwrap()
    }

    /// What a plugin returning the record unchanged hands back.
    fn result(record: &DataChangeRecord, extra: &str) -> ChangeRecordResult {
        let staged = Staged::Input { record, extra };
        let mut rows = Vec::new();
        staged.push_rows(&mut rows);
        let p = staged.param(&rows);
        ChangeRecordResult {
            partition_token: p.partition_token.into(),
            commit_timestamp: p.commit_timestamp,
            record_sequence: p.record_sequence.into(),
            server_transaction_id: p.server_transaction_id.into(),
            is_last_record_in_transaction_in_partition: p
                .is_last_record_in_transaction_in_partition,
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
            value_capture_type: p.value_capture_type.into(),
            number_of_records_in_transaction: p.number_of_records_in_transaction,
            number_of_partitions_in_transaction: p.number_of_partitions_in_transaction,
            transaction_tag: p.transaction_tag.into(),
            is_system_transaction: p.is_system_transaction,
            extra: p.extra.into(),
        }
    }

    #[test]
    fn round_trips_every_field() {
        let original = record();
        let (back, extra) = to_host(result(&original, ""), &original).unwrap();
        assert_eq!(back, original);
        assert_eq!(extra, None);
    }

    #[test]
    fn metadata_stays_the_origins_and_the_plugins_own_fields_are_taken() {
        let original = record();
        let mut wit = result(&original, "");
        wit.partition_token = "forged".into();
        wit.commit_timestamp = WitTimestamp {
            seconds: 0,
            nanos: 2_000_000_000,
        };
        wit.record_sequence = "forged".into();
        wit.server_transaction_id = "forged".into();
        wit.is_last_record_in_transaction_in_partition = false;
        wit.value_capture_type = "NEW_ROW".into();
        wit.number_of_records_in_transaction = 99;
        wit.number_of_partitions_in_transaction = 99;
        wit.transaction_tag = "forged".into();
        wit.is_system_transaction = true;
        wit.table_name = "Renamed".into();
        wit.mod_type = WitModType::Delete;
        let (back, _) = to_host(wit, &original).unwrap();
        let expected = DataChangeRecord {
            table_name: "Renamed".into(),
            mod_type: ModType::Delete,
            ..original.clone()
        };
        assert_eq!(back, expected);

        // The next plugin of a chain is handed the origin's metadata too.
        let mut forged = result(&original, "");
        forged.record_sequence = "forged".into();
        forged.table_name = "Renamed".into();
        let staged = Staged::Changed {
            record: forged,
            by: 0,
            origin: &original,
        };
        let mut rows = Vec::new();
        staged.push_rows(&mut rows);
        let p = staged.param(&rows);
        assert_eq!(p.record_sequence, "00000001");
        assert_eq!(p.table_name, "Renamed");
    }

    #[test]
    fn refuses_what_would_break_the_output() {
        let original = record();
        let mut wit = result(&original, "");
        wit.mods[0].new_values = "[1, 2]".into();
        let err = to_host(wit, &original).unwrap_err();
        assert!(
            err.starts_with("mods[0].new_values: not a JSON object"),
            "{err}"
        );
        let wit = result(&original, "nope");
        assert!(
            to_host(wit, &original)
                .unwrap_err()
                .starts_with("extra is not a JSON object")
        );
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
            let err = to_host(result(&original, shadow), &original).unwrap_err();
            assert!(err.contains(what), "{err}");
        }
    }
}
