//! What a message system carries beside one record's payload: attributes (Pub/Sub) or
//! headers (Kafka, NATS) naming the record, and, with `mods=split`, the key that keeps one
//! row's changes in order at the destination.
//!
//! Place in the flow: the [pipeline](crate::pipeline) builds one [`Envelope`] per message
//! for destinations whose [`Layout`] asks for them, from the record as it leaves the chain
//! (so a plugin's replacement names itself); the destination maps them onto its protocol.

use crate::record::{DataChangeRecord, Mod};

/// How the pipeline lays out records for one destination.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Layout {
    /// One message per record, or per mod.
    pub mods: Mods,
    /// Each message carries an [`Envelope`] (message systems); NDJSON destinations do not
    /// need one.
    pub envelopes: bool,
    /// With `--ordering transactions`: a message per record, or per transaction.
    pub transactions: Transactions,
}

/// `transactions=records` (default) or `transactions=grouped`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Transactions {
    /// A message per record (or per mod).
    #[default]
    Records,
    /// With `--ordering transactions`, a message per transaction:
    /// `{"commit_timestamp", "server_transaction_id", "records": [...]}`, keyed by
    /// [`GROUP_KEY`] so that a partitioned system keeps them in order.
    Grouped,
}

impl Transactions {
    /// `records` or `grouped`, as URIs and the pipeline file spell it.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "records" => Some(Transactions::Records),
            "grouped" => Some(Transactions::Grouped),
            _ => None,
        }
    }
}

/// The key of every grouped transaction: one Kafka partition, one Pub/Sub ordering key, so
/// transactions stay in commit order.
pub const GROUP_KEY: &str = "transactions";

/// One message per record, or one per row change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Mods {
    /// A message is a whole record, all its mods together (the stdout line).
    #[default]
    Whole,
    /// A message per mod: a record whose `mods` holds that one row change, keyed by table
    /// and primary key.
    Split,
}

impl Mods {
    /// `whole` or `split`, as URIs and the pipeline file spell it.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "whole" => Some(Mods::Whole),
            "split" => Some(Mods::Split),
            _ => None,
        }
    }
}

/// The record fields every message carries as attributes or headers, by these names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes {
    /// The table the record changes.
    pub table_name: String,
    /// `INSERT`, `UPDATE` or `DELETE`.
    pub mod_type: &'static str,
    /// RFC 3339, as in the payload.
    pub commit_timestamp: String,
    /// The partition the record was read from.
    pub partition_token: String,
    /// The transaction's id.
    pub server_transaction_id: String,
    /// The record's sequence within its transaction and partition.
    pub record_sequence: String,
}

impl Attributes {
    /// The attributes of a record.
    pub fn of(record: &DataChangeRecord) -> Self {
        Attributes {
            table_name: record.table_name.clone(),
            mod_type: record.mod_type.as_str(),
            commit_timestamp: record.commit_timestamp.to_string(),
            partition_token: record.partition_token.to_string(),
            server_transaction_id: record.server_transaction_id.clone(),
            record_sequence: record.record_sequence.clone(),
        }
    }

    /// Name and value of each attribute.
    pub fn pairs(&self) -> [(&'static str, &str); 6] {
        [
            ("table_name", &self.table_name),
            ("mod_type", self.mod_type),
            ("commit_timestamp", &self.commit_timestamp),
            ("partition_token", &self.partition_token),
            ("server_transaction_id", &self.server_transaction_id),
            ("record_sequence", &self.record_sequence),
        ]
    }
}

/// Attributes and key of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The record's fields as attributes.
    pub attributes: Attributes,
    /// `TABLE/KEYS` (the mod's primary key as Spanner's JSON object) for a message of
    /// one mod; none for a whole record.
    pub key: Option<String>,
}

impl Envelope {
    /// The envelope of a whole record.
    pub fn of(record: &DataChangeRecord) -> Self {
        Envelope {
            attributes: Attributes::of(record),
            key: None,
        }
    }

    /// The envelope of `record` holding just `row` (`mods=split`).
    pub fn of_row(record: &DataChangeRecord, row: &Mod) -> Self {
        Envelope {
            attributes: Attributes::of(record),
            key: Some(row_key(&record.table_name, row)),
        }
    }
}

/// The envelope of a transaction's message: the attributes of its first record, and
/// [`GROUP_KEY`].
pub fn group_envelope(first: &Envelope) -> Envelope {
    Envelope {
        attributes: first.attributes.clone(),
        key: Some(GROUP_KEY.to_owned()),
    }
}

/// The key of one row's changes: equal for every change of the row, different for
/// different rows.
pub fn row_key(table: &str, row: &Mod) -> String {
    format!("{table}/{}", row.keys.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::JsonObject;

    #[test]
    fn a_row_key_is_the_table_and_the_primary_key_object() {
        let row = Mod {
            keys: JsonObject::from_text(r#"{"SingerId":"7"}"#.into()).unwrap(),
            ..Mod::default()
        };
        assert_eq!(row_key("Singers", &row), r#"Singers/{"SingerId":"7"}"#);
    }

    #[test]
    fn mods_are_whole_or_split() {
        assert_eq!(Mods::parse("split"), Some(Mods::Split));
        assert_eq!(Mods::parse("whole"), Some(Mods::Whole));
        assert_eq!(Mods::parse("Split"), None);
    }
}
