//! From output records to the replica's writes: each mod becomes a row change (its values
//! as text, its version), and the changes of a batch are grouped into statements.
//!
//! Invariants: a record the replica cannot take (not a record, no primary key, a column
//! its `column_types` does not describe, a sequence that is not a number) is refused
//! whole, with the reason, before anything is written. Grouping never puts two changes
//! of one row in one statement (PostgreSQL refuses that for an upsert): the n-th change of
//! a row goes to the n-th round, and rounds run in order, so a row's changes apply in the
//! order they came.

use std::collections::HashMap;

use serde_json::value::RawValue;

use super::sql::{COMMIT_TIMESTAMP, Kind, POSITION, RECORD_SEQUENCE, Shape, SqlType, TOMBSTONES};
use crate::record::{ColumnType, DataChangeRecord, ModType};

/// The changes of one output record.
#[derive(Debug)]
pub(crate) struct RecordChanges {
    /// The replica table, as the record names it.
    pub(crate) table: String,
    /// Every column of the table, as the record describes them.
    pub(crate) columns: std::sync::Arc<[ColumnType]>,
    changes: Vec<Change>,
    /// The record's commit timestamp.
    pub(crate) commit_timestamp: crate::Timestamp,
    /// The record's transaction (`server_transaction_id`).
    pub(crate) transaction: String,
    /// A snapshot row: no transaction of the stream, so no position of the replica.
    pub(crate) snapshot: bool,
}

/// The last transaction a replica applied, in the order of `--ordering transactions`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Position {
    /// Nanoseconds since the epoch (PostgreSQL's timestamps keep microseconds only).
    pub(crate) commit_nanos: i64,
    pub(crate) transaction: String,
}

/// Columns with their replica types.
type Columns = Vec<(String, SqlType)>;
/// A value per column: its text, or NULL.
type Values = Vec<Option<String>>;

/// One row's change: its statement's shape and the values that go with it.
#[derive(Debug)]
struct Change {
    shape: Shape,
    /// One per column of the shape: the value's text (an array's or a JSON's is its JSON).
    values: Values,
    /// The key as a JSON object, as the change stream gives it (the tombstone's key).
    key: String,
    commit_timestamp: String,
    sequence: i64,
}

impl RecordChanges {
    /// The changes of the record in `line` (one output line).
    pub(crate) fn of_line(line: &[u8]) -> Result<Self, String> {
        let record: DataChangeRecord =
            serde_json::from_slice(line).map_err(|e| format!("not a change record: {e}"))?;
        Self::of(&record)
    }

    fn of(record: &DataChangeRecord) -> Result<Self, String> {
        if [TOMBSTONES, POSITION, ""].contains(&record.table_name.as_str()) {
            return Err(format!(
                "table {:?}: not a name a replica table can have",
                record.table_name
            ));
        }
        let sequence: i64 = record.record_sequence.parse().map_err(|_| {
            format!(
                "record_sequence {:?} is not a number: the replica orders changes by it",
                record.record_sequence
            )
        })?;
        let key: Vec<&ColumnType> = key_columns(record.column_types.iter());
        if key.is_empty() {
            return Err(format!(
                "table {:?}: column_types name no primary key column",
                record.table_name
            ));
        }
        let kind = match record.mod_type {
            ModType::Delete => Kind::Delete,
            ModType::Insert | ModType::Update => Kind::Upsert,
        };
        let commit_timestamp = record.commit_timestamp.to_string();
        let changes = record
            .mods
            .iter()
            .map(|m| {
                let (columns, values) = columns(record, &key, kind, m)?;
                Ok(Change {
                    shape: Shape {
                        table: record.table_name.clone(),
                        kind,
                        key_len: key.len(),
                        columns,
                    },
                    values,
                    key: m.keys.as_str().to_owned(),
                    commit_timestamp: commit_timestamp.clone(),
                    sequence,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(RecordChanges {
            table: record.table_name.clone(),
            columns: record.column_types.clone(),
            changes,
            commit_timestamp: record.commit_timestamp,
            transaction: record.server_transaction_id.clone(),
            snapshot: record.snapshot,
        })
    }

    /// Where the record stands in the order of `--ordering transactions`: commit
    /// timestamp, then transaction.
    pub(crate) fn position(&self) -> Position {
        Position {
            commit_nanos: self.commit_timestamp.unix_nanos() as i64,
            transaction: self.transaction.clone(),
        }
    }

    /// How many rows the record changes.
    pub(crate) fn len(&self) -> usize {
        self.changes.len()
    }
}

/// The columns mod `m` of `record` writes, with their values: the key's (`key`, in key
/// order), then for an upsert the others it carries, by name.
fn columns(
    record: &DataChangeRecord,
    key: &[&ColumnType],
    kind: Kind,
    m: &crate::record::Mod,
) -> Result<(Columns, Values), String> {
    let table = &record.table_name;
    let keys = members(m.keys.as_str())?;
    let (mut columns, mut values) = (Vec::new(), Vec::new());
    for k in key {
        let value = keys
            .get(&k.name)
            .ok_or_else(|| format!("table {table:?}: a mod has no key column {:?}", k.name))?;
        columns.push((k.name.clone(), SqlType::of(&k.column_type)));
        values.push(text(value)?);
    }
    if kind == Kind::Delete {
        return Ok((columns, values));
    }
    let mut rest: Vec<(String, &RawValue)> = members(m.new_values.as_str())?
        .into_iter()
        .filter(|(name, _)| !keys.contains_key(name))
        .collect();
    rest.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, value) in rest {
        if name == COMMIT_TIMESTAMP || name == RECORD_SEQUENCE {
            return Err(format!(
                "table {table:?}: column {name:?} is the replica's own (the stale-write guard)"
            ));
        }
        let column = record.column_types.iter().find(|c| c.name == name);
        let column = column.ok_or_else(|| {
            format!("table {table:?}: column {name:?} is not in the record's column_types")
        })?;
        columns.push((name, SqlType::of(&column.column_type)));
        values.push(text(value)?);
    }
    Ok((columns, values))
}

/// The primary key's columns, in key order (their ordinal positions).
pub(crate) fn key_columns<'a>(
    columns: impl IntoIterator<Item = &'a ColumnType>,
) -> Vec<&'a ColumnType> {
    let mut key: Vec<&ColumnType> = columns.into_iter().filter(|c| c.is_primary_key).collect();
    key.sort_by_key(|c| c.ordinal_position);
    key
}

/// The members of a JSON object, each value as the text Spanner sent (numbers are never
/// parsed into floats and printed again: that may change their last digit).
fn members(object: &str) -> Result<HashMap<String, &RawValue>, String> {
    serde_json::from_str(object).map_err(|e| format!("a mod is not a JSON object of values: {e}"))
}

/// A value as the text its column's conversion reads: strings unquoted (INT64, NUMERIC,
/// BYTES, dates, timestamps, a JSON column's document, "NaN"), numbers, booleans, arrays
/// and objects as Spanner wrote them; `null` is NULL.
fn text(value: &RawValue) -> Result<Option<String>, String> {
    let json = value.get();
    match json.as_bytes().first() {
        Some(b'n') => Ok(None),
        Some(b'"') => serde_json::from_str(json)
            .map(Some)
            .map_err(|e| format!("a value is not a JSON string: {e}")),
        _ => Ok(Some(json.to_owned())),
    }
}

/// One statement's worth of changes: its shape and its parameters, column by column.
#[derive(Debug)]
pub(crate) struct Group {
    pub(crate) shape: Shape,
    pub(crate) columns: Vec<Vec<Option<String>>>,
    pub(crate) commit_timestamps: Vec<String>,
    pub(crate) sequences: Vec<i64>,
    pub(crate) keys: Vec<String>,
}

impl Group {
    fn new(shape: Shape) -> Self {
        Group {
            columns: vec![Vec::new(); shape.columns.len()],
            shape,
            commit_timestamps: Vec::new(),
            sequences: Vec::new(),
            keys: Vec::new(),
        }
    }

    fn push(&mut self, change: &Change) {
        for (column, value) in self.columns.iter_mut().zip(&change.values) {
            column.push(value.clone());
        }
        self.commit_timestamps.push(change.commit_timestamp.clone());
        self.sequences.push(change.sequence);
        self.keys.push(change.key.clone());
    }

    /// How many changes the statement carries.
    pub(crate) fn len(&self) -> usize {
        self.keys.len()
    }
}

/// The statements that apply `records`' changes, in the order they must run (see the
/// module docs).
pub(crate) fn groups<'a>(records: impl IntoIterator<Item = &'a RecordChanges>) -> Vec<Group> {
    // Per round, the index in `rounds[r]` of each shape's group.
    let mut rounds: Vec<(HashMap<&Shape, usize>, Vec<Group>)> = Vec::new();
    let mut seen: HashMap<(&str, &str), usize> = HashMap::new();
    for change in records.into_iter().flat_map(|r| &r.changes) {
        let count = seen.entry((&change.shape.table, &change.key)).or_default();
        let round = *count;
        *count += 1;
        if rounds.len() == round {
            rounds.push(Default::default());
        }
        let (index, groups) = &mut rounds[round];
        let i = *index.entry(&change.shape).or_insert_with(|| {
            groups.push(Group::new(change.shape.clone()));
            groups.len() - 1
        });
        groups[i].push(change);
    }
    rounds.into_iter().flat_map(|(_, groups)| groups).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(mod_type: &str, mods: &str, seq: &str) -> Vec<u8> {
        format!(
            r#"{{"partition_token":"p","commit_timestamp":"2026-12-07T10:00:00.000001Z","record_sequence":"{seq}","server_transaction_id":"t","is_last_record_in_transaction_in_partition":true,"table_name":"Items","column_types":[{{"name":"Id","type":{{"code":"INT64"}},"is_primary_key":true,"ordinal_position":1}},{{"name":"Seq","type":{{"code":"INT64"}},"is_primary_key":false,"ordinal_position":2}},{{"name":"Tags","type":{{"code":"ARRAY","array_element_type":{{"code":"STRING"}}}},"is_primary_key":false,"ordinal_position":3}}],"mods":{mods},"mod_type":"{mod_type}","value_capture_type":"NEW_VALUES","number_of_records_in_transaction":1,"number_of_partitions_in_transaction":1}}"#
        )
        .into_bytes()
    }

    #[test]
    fn mods_become_changes_with_values_as_text_and_the_key_first() {
        let r = RecordChanges::of_line(&line(
            "UPDATE",
            r#"[{"keys":{"Id":"7"},"new_values":{"Tags":["a",null],"Seq":"3"},"old_values":{}}]"#,
            "00000002",
        ))
        .unwrap();
        let c = &r.changes[0];
        let names: Vec<&str> = c.shape.columns.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["Id", "Seq", "Tags"]);
        assert_eq!(
            c.values,
            [
                Some("7".into()),
                Some("3".into()),
                Some(r#"["a",null]"#.into())
            ]
        );
        assert_eq!(c.key, r#"{"Id":"7"}"#);
        assert_eq!(c.sequence, 2);
        assert_eq!(c.commit_timestamp, "2026-12-07T10:00:00.000001Z");
    }

    #[test]
    fn records_the_replica_cannot_take_say_why() {
        let e = |l: Vec<u8>| RecordChanges::of_line(&l).unwrap_err();
        assert!(e(b"{}".to_vec()).starts_with("not a change record"));
        let unknown = line(
            "INSERT",
            r#"[{"keys":{"Id":"1"},"new_values":{"Other":"x"}}]"#,
            "0",
        );
        assert_eq!(
            e(unknown),
            "table \"Items\": column \"Other\" is not in the record's column_types"
        );
        let no_key = line("DELETE", r#"[{"keys":{},"new_values":{}}]"#, "0");
        assert_eq!(e(no_key), "table \"Items\": a mod has no key column \"Id\"");
        let sequence = line("DELETE", r#"[{"keys":{"Id":"1"}}]"#, "x1");
        assert!(e(sequence).starts_with("record_sequence \"x1\" is not a number"));
        let guard = line(
            "INSERT",
            r#"[{"keys":{"Id":"1"},"new_values":{"_screamer_commit_timestamp":"2000-01-01T00:00:00Z"}}]"#,
            "0",
        );
        assert!(e(guard).ends_with("is the replica's own (the stale-write guard)"));
        let tombstones = String::from_utf8(line("DELETE", r#"[{"keys":{"Id":"1"}}]"#, "0"))
            .unwrap()
            .replace(
                r#""table_name":"Items""#,
                r#""table_name":"_screamer_tombstones""#,
            );
        assert_eq!(
            e(tombstones.into_bytes()),
            "table \"_screamer_tombstones\": not a name a replica table can have"
        );
    }

    #[test]
    fn a_row_changed_twice_in_a_batch_goes_to_two_statements_in_order() {
        let records: Vec<RecordChanges> = [
            line("INSERT", r#"[{"keys":{"Id":"1"},"new_values":{"Seq":"1"}},{"keys":{"Id":"2"},"new_values":{"Seq":"1"}}]"#, "0"),
            line("UPDATE", r#"[{"keys":{"Id":"1"},"new_values":{"Seq":"2"}}]"#, "1"),
            line("DELETE", r#"[{"keys":{"Id":"2"}}]"#, "2"),
            line("UPDATE", r#"[{"keys":{"Id":"3"},"new_values":{"Seq":"5"}}]"#, "3"),
        ]
        .iter()
        .map(|l| RecordChanges::of_line(l).unwrap())
        .collect();
        let groups = groups(&records);
        let summary: Vec<(Kind, Vec<String>)> = groups
            .iter()
            .map(|g| {
                (
                    g.shape.kind,
                    g.columns[0].iter().flatten().cloned().collect(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (Kind::Upsert, vec!["1".into(), "2".into(), "3".into()]),
                (Kind::Upsert, vec!["1".into()]),
                (Kind::Delete, vec!["2".into()]),
            ]
        );
        assert_eq!(groups[1].columns[1], [Some("2".to_owned())]);
    }
}
