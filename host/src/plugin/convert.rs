//! Records across the boundary: host [`DataChangeRecord`]s to WIT change records and back.
//!
//! Invariants: column types stay on the host (the original record's are re-attached on the
//! way back); whatever a plugin returns is checked before it can reach the output — every
//! row field a JSON object, `extra` a JSON object or empty, the timestamp representable.

use serde_json::{Map, Value};

use super::bindings::{ChangeRecord, ModType as WitModType, RowChange, Timestamp as WitTimestamp};
use crate::record::{DataChangeRecord, JsonObject, Mod, ModType, ValueCaptureType};
use crate::timestamp::Timestamp;

pub(super) fn to_wit(
    record: &DataChangeRecord,
    extra: Option<&Map<String, Value>>,
) -> ChangeRecord {
    let nanos = record.commit_timestamp.unix_nanos();
    ChangeRecord {
        partition_token: record.partition_token.to_string(),
        commit_timestamp: WitTimestamp {
            seconds: nanos.div_euclid(1_000_000_000) as i64,
            nanos: nanos.rem_euclid(1_000_000_000) as u32,
        },
        record_sequence: record.record_sequence.clone(),
        server_transaction_id: record.server_transaction_id.clone(),
        is_last_record_in_transaction_in_partition: record
            .is_last_record_in_transaction_in_partition,
        table_name: record.table_name.clone(),
        mod_type: match record.mod_type {
            ModType::Insert => WitModType::Insert,
            ModType::Update => WitModType::Update,
            ModType::Delete => WitModType::Delete,
        },
        mods: record
            .mods
            .iter()
            .map(|m| RowChange {
                keys: m.keys.as_str().to_owned(),
                new_values: m.new_values.as_str().to_owned(),
                old_values: m.old_values.as_str().to_owned(),
            })
            .collect(),
        value_capture_type: record.value_capture_type.as_str().to_owned(),
        number_of_records_in_transaction: clamp(record.number_of_records_in_transaction),
        number_of_partitions_in_transaction: clamp(record.number_of_partitions_in_transaction),
        transaction_tag: record.transaction_tag.clone(),
        is_system_transaction: record.is_system_transaction,
        extra: match extra {
            Some(map) if !map.is_empty() => Value::Object(map.clone()).to_string(),
            _ => String::new(),
        },
    }
}

fn clamp(n: i64) -> u32 {
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}

/// A plugin's record as a host record with `origin`'s column types, plus its extra fields.
/// Row fields whose text is the origin's are reused as they are; only changed ones are
/// validated (a JSON parse each).
pub(super) fn to_host(
    record: ChangeRecord,
    origin: &DataChangeRecord,
) -> Result<(DataChangeRecord, Option<Map<String, Value>>), String> {
    let ts = record.commit_timestamp;
    let commit_timestamp = (ts.nanos < 1_000_000_000)
        .then(|| {
            Timestamp::from_unix_nanos(
                i128::from(ts.seconds) * 1_000_000_000 + i128::from(ts.nanos),
            )
        })
        .flatten()
        .ok_or_else(|| {
            format!(
                "commit_timestamp {}s {}ns is out of range",
                ts.seconds, ts.nanos
            )
        })?;
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
    let extra = if record.extra.trim().is_empty() {
        None
    } else {
        let map: Map<String, Value> = serde_json::from_str(&record.extra)
            .map_err(|e| format!("extra is not a JSON object: {e}"))?;
        Some(map).filter(|m| !m.is_empty())
    };
    let host = DataChangeRecord {
        partition_token: record.partition_token.into(),
        commit_timestamp,
        record_sequence: record.record_sequence,
        server_transaction_id: record.server_transaction_id,
        is_last_record_in_transaction_in_partition: record
            .is_last_record_in_transaction_in_partition,
        table_name: record.table_name,
        column_types: origin.column_types.clone(),
        mods,
        mod_type: match record.mod_type {
            WitModType::Insert => ModType::Insert,
            WitModType::Update => ModType::Update,
            WitModType::Delete => ModType::Delete,
        },
        value_capture_type: ValueCaptureType::from(record.value_capture_type.as_str()),
        number_of_records_in_transaction: i64::from(record.number_of_records_in_transaction),
        number_of_partitions_in_transaction: i64::from(record.number_of_partitions_in_transaction),
        transaction_tag: record.transaction_tag,
        is_system_transaction: record.is_system_transaction,
    };
    Ok((host, extra))
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn round_trips_every_field() {
        let original = record();
        let wit = to_wit(&original, None);
        assert_eq!(wit.extra, "");
        let (back, extra) = to_host(wit, &original).unwrap();
        assert_eq!(back, original);
        assert_eq!(extra, None);
    }

    #[test]
    fn refuses_what_would_break_the_output() {
        let original = record();
        let mut wit = to_wit(&original, None);
        wit.mods[0].new_values = "[1, 2]".into();
        let err = to_host(wit, &original).unwrap_err();
        assert!(
            err.starts_with("mods[0].new_values: not a JSON object"),
            "{err}"
        );
        let mut wit = to_wit(&original, None);
        wit.extra = "nope".into();
        assert!(
            to_host(wit, &original)
                .unwrap_err()
                .starts_with("extra is not a JSON object")
        );
    }
}
