//! Change stream records, typed.
//!
//! Place in the flow: the decoder turns every row of a partition query into one or more
//! [`ChangeRecord`]s; data change records go on to the consumer (and, from there, to the
//! plugin chain and the sink), heartbeats and child partitions drive the partition
//! lifecycle. Both dialects decode into these same types, and a [`DataChangeRecord`]
//! serializes to the output JSON of the design's contract (the Go screamer's field names
//! plus `partition_token`), so GoogleSQL and PostgreSQL databases print the same shape.

use std::fmt;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

mod json;

pub(crate) use json::string_end;
pub use json::{JsonObject, NotAnObject};

use crate::partition::PartitionToken;
use crate::timestamp::Timestamp;

/// One item of a change stream partition query.
#[derive(Debug, Clone, PartialEq)]
pub enum ChangeRecord {
    /// Row changes of one transaction.
    Data(DataChangeRecord),
    /// The partition has no changes up to this time.
    Heartbeat(HeartbeatRecord),
    /// The partition ends here; these partitions continue it.
    ChildPartitions(ChildPartitionsRecord),
}

impl ChangeRecord {
    /// The time this record speaks for: a commit, a heartbeat, or the children's start.
    pub fn timestamp(&self) -> Timestamp {
        match self {
            ChangeRecord::Data(r) => r.commit_timestamp,
            ChangeRecord::Heartbeat(r) => r.timestamp,
            ChangeRecord::ChildPartitions(r) => r.start_timestamp,
        }
    }
}

/// The mods of one transaction for one table and mod type, in one partition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataChangeRecord {
    /// The partition this record was read from (not part of Spanner's record).
    #[serde(default)]
    pub partition_token: PartitionToken,
    /// When the transaction committed.
    pub commit_timestamp: Timestamp,
    /// Orders the records of one transaction within a partition.
    pub record_sequence: String,
    /// The transaction's id, unique with the commit timestamp.
    pub server_transaction_id: String,
    /// Whether the transaction has no more records in this partition.
    pub is_last_record_in_transaction_in_partition: bool,
    /// The table the mods change.
    pub table_name: String,
    /// Shared: every record a plugin makes of this one carries the same column types.
    pub column_types: std::sync::Arc<[ColumnType]>,
    /// The changed rows.
    pub mods: Vec<Mod>,
    /// What the mods do.
    pub mod_type: ModType,
    /// What the stream captures of each row.
    pub value_capture_type: ValueCaptureType,
    /// Records of the transaction across all partitions.
    pub number_of_records_in_transaction: i64,
    /// Partitions the transaction has records in.
    pub number_of_partitions_in_transaction: i64,
    /// The transaction's tag, if it had one.
    #[serde(default)]
    pub transaction_tag: String,
    /// Whether Spanner itself made the transaction (TTL deletes).
    #[serde(default)]
    pub is_system_transaction: bool,
    /// A row of the snapshot (`--snapshot`), not a change: written only when true, so change
    /// records keep the stream's shape.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub snapshot: bool,
}

impl DataChangeRecord {
    /// The top-level names an output line reserves: the record's own fields, the side
    /// output's name, and the partition metadata fields (`--partition-metadata`).
    pub const FIELDS: [&'static str; 21] = [
        "partition_token",
        "commit_timestamp",
        "record_sequence",
        "server_transaction_id",
        "is_last_record_in_transaction_in_partition",
        "table_name",
        "column_types",
        "mods",
        "mod_type",
        "value_capture_type",
        "number_of_records_in_transaction",
        "number_of_partitions_in_transaction",
        "transaction_tag",
        "is_system_transaction",
        "snapshot",
        // Not fields of the record, but of an output line: the side output's name and
        // the partition's metadata.
        "output",
        "start_timestamp",
        "watermark",
        "created_at",
        "scheduled_at",
        "running_at",
    ];
}

/// A column of the changed table as the change stream describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnType {
    /// The column's name.
    pub name: String,
    /// Its type.
    #[serde(rename = "type")]
    pub column_type: SpannerType,
    /// Whether it is part of the primary key.
    pub is_primary_key: bool,
    /// Its position in the table, from 1.
    pub ordinal_position: i64,
}

/// A column's Spanner type code, and the element type code of an array.
///
/// Spanner describes types as nested JSON (`{"code":"ARRAY","array_element_type":{"code":"STRING"}}`);
/// the output flattens the element to its code, as the Go screamer does.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpannerType {
    /// The type code (`INT64`, `STRING`, `ARRAY`...).
    pub code: String,
    /// For an array, its elements' type code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub array_element_type: Option<String>,
}

impl<'de> Deserialize<'de> for SpannerType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            code: String,
            #[serde(default)]
            array_element_type: Option<Value>,
        }
        let raw = Raw::deserialize(d)?;
        let array_element_type = match raw.array_element_type {
            None | Some(Value::Null) => None,
            Some(Value::String(code)) => Some(code),
            Some(Value::Object(o)) => match o.get("code") {
                Some(Value::String(code)) => Some(code.clone()),
                _ => return Err(D::Error::custom("array_element_type without a code")),
            },
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "array_element_type must be a type, found {other}"
                )));
            }
        };
        Ok(SpannerType {
            code: raw.code,
            array_element_type,
        })
    }
}

/// The keys and values of one changed row, each a JSON object exactly as Spanner gives it
/// (in GoogleSQL, INT64 values are strings; a JSON column is a string holding JSON).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Mod {
    /// The row's primary key, by column.
    #[serde(default)]
    pub keys: JsonObject,
    /// The watched columns after the change (what the value capture type includes).
    #[serde(default)]
    pub new_values: JsonObject,
    /// The changed columns before the change (empty unless the capture type keeps old values).
    #[serde(default)]
    pub old_values: JsonObject,
}

/// The kind of change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ModType {
    /// A row was inserted.
    Insert,
    /// A row was updated.
    Update,
    /// A row was deleted.
    Delete,
}

impl ModType {
    /// The name Spanner and the output JSON use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Insert => "INSERT",
            Self::Update => "UPDATE",
            Self::Delete => "DELETE",
        }
    }
}

/// What a change stream captures of each row; see Spanner's `value_capture_type` option.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ValueCaptureType {
    /// `OLD_AND_NEW_VALUES`: changed columns, before and after.
    OldAndNewValues,
    /// `NEW_VALUES`: changed columns, after.
    NewValues,
    /// `NEW_ROW`: every watched column, after.
    NewRow,
    /// `NEW_ROW_AND_OLD_VALUES`: every watched column after, changed columns before.
    NewRowAndOldValues,
    /// A capture type newer than this build; kept verbatim so output loses nothing.
    Other(String),
}

impl ValueCaptureType {
    /// The name Spanner and the output JSON use.
    pub fn as_str(&self) -> &str {
        match self {
            Self::OldAndNewValues => "OLD_AND_NEW_VALUES",
            Self::NewValues => "NEW_VALUES",
            Self::NewRow => "NEW_ROW",
            Self::NewRowAndOldValues => "NEW_ROW_AND_OLD_VALUES",
            Self::Other(s) => s,
        }
    }
}

impl From<&str> for ValueCaptureType {
    fn from(s: &str) -> Self {
        match s {
            "OLD_AND_NEW_VALUES" => Self::OldAndNewValues,
            "NEW_VALUES" => Self::NewValues,
            "NEW_ROW" => Self::NewRow,
            "NEW_ROW_AND_OLD_VALUES" => Self::NewRowAndOldValues,
            other => Self::Other(other.to_owned()),
        }
    }
}

impl fmt::Display for ValueCaptureType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ValueCaptureType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ValueCaptureType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Ok(Self::from(s.as_ref()))
    }
}

/// Says that the partition has no records up to `timestamp`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatRecord {
    /// No change before this time remains to be reported.
    pub timestamp: Timestamp,
}

/// Announces the partitions that continue this one from `start_timestamp`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChildPartitionsRecord {
    /// The children's start: the parent ends here.
    pub start_timestamp: Timestamp,
    /// Orders the record among the partition's records.
    pub record_sequence: String,
    /// The partitions that continue this one.
    pub child_partitions: Vec<ChildPartition>,
}

/// One child partition and all of its parents (more than one for a merge).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChildPartition {
    /// The child's token.
    pub token: PartitionToken,
    /// Every partition it continues (more than one at a merge).
    #[serde(default)]
    pub parent_partition_tokens: Vec<PartitionToken>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_change_record_round_trips_the_output_shape() {
        let json = serde_json::json!({
            "partition_token": "tok",
            "commit_timestamp": "2026-11-27T20:00:00.123Z",
            "record_sequence": "00000000",
            "server_transaction_id": "tx",
            "is_last_record_in_transaction_in_partition": true,
            "table_name": "Singers",
            "column_types": [
                {"name": "SingerId", "type": {"code": "INT64"}, "is_primary_key": true, "ordinal_position": 1},
                {"name": "Tags", "type": {"code": "ARRAY", "array_element_type": "STRING"}, "is_primary_key": false, "ordinal_position": 2}
            ],
            "mods": [{"keys": {"SingerId": "1"}, "new_values": {"Tags": ["a"]}, "old_values": {}}],
            "mod_type": "INSERT",
            "value_capture_type": "OLD_AND_NEW_VALUES",
            "number_of_records_in_transaction": 1,
            "number_of_partitions_in_transaction": 1,
            "transaction_tag": "",
            "is_system_transaction": false
        });
        let rec: DataChangeRecord = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(rec.mod_type, ModType::Insert);
        assert_eq!(
            rec.column_types[1]
                .column_type
                .array_element_type
                .as_deref(),
            Some("STRING")
        );
        assert_eq!(serde_json::to_value(&rec).unwrap(), json);
    }

    #[test]
    fn nested_array_element_types_flatten_to_their_code() {
        let t: SpannerType =
            serde_json::from_str(r#"{"code":"ARRAY","array_element_type":{"code":"TIMESTAMP"}}"#)
                .unwrap();
        assert_eq!(t.array_element_type.as_deref(), Some("TIMESTAMP"));
    }

    #[test]
    fn unknown_capture_types_are_kept() {
        let v: ValueCaptureType = serde_json::from_str("\"NEW_THING\"").unwrap();
        assert_eq!(serde_json::to_string(&v).unwrap(), "\"NEW_THING\"");
    }
}
