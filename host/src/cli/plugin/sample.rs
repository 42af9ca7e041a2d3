//! `screamer plugin sample`: records to start a plugin from.
//!
//! Place in the flow: the author's input, before `plugin run` or a fixture. It prints one
//! row's life (an INSERT, an UPDATE of one column, a DELETE) in a table the author names,
//! with the columns and Spanner types given, each record whole and exactly as screamer
//! prints a record read from a change stream in GoogleSQL (INT64 and NUMERIC values as
//! strings, BYTES as base64, OLD_AND_NEW_VALUES capture), so `plugin run` reads it back.

use serde_json::{Map, Value, json};

use super::input::InputLine;
use crate::cli::RunError;
use screamer::Timestamp;

#[derive(Debug, clap::Args)]
pub struct SampleArgs {
    /// The table the records change.
    #[arg(long, default_value = "Users")]
    table: String,
    /// The table's columns as NAME:TYPE, the first being the primary key; TYPE is a
    /// Spanner type (INT64, STRING, FLOAT64, BOOL, TIMESTAMP, DATE, NUMERIC, JSON, BYTES,
    /// ARRAY<...>).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "UserId:INT64,Name:STRING,Email:STRING,Score:FLOAT64,UpdatedAt:TIMESTAMP"
    )]
    columns: Vec<String>,
}

/// A column of the sample table.
struct Column {
    name: String,
    code: String,
    element: Option<String>,
}

const TYPES: [&str; 9] = [
    "INT64",
    "STRING",
    "FLOAT64",
    "BOOL",
    "TIMESTAMP",
    "DATE",
    "NUMERIC",
    "JSON",
    "BYTES",
];

impl Column {
    fn parse(spec: &str) -> Result<Self, RunError> {
        let bad = || {
            RunError::Input(format!(
                "--columns {spec:?}: expected NAME:TYPE with TYPE one of {} or ARRAY<TYPE>",
                TYPES.join(", ")
            ))
        };
        let (name, ty) = spec.split_once(':').ok_or_else(bad)?;
        let ty = ty.trim().to_ascii_uppercase();
        let (code, element) = match ty.strip_prefix("ARRAY<").and_then(|t| t.strip_suffix('>')) {
            Some(element) => ("ARRAY".to_owned(), Some(element.to_owned())),
            None => (ty, None),
        };
        let known = |t: &str| TYPES.contains(&t);
        let name = name.trim();
        if name.is_empty() || !known(element.as_deref().unwrap_or(&code)) {
            return Err(bad());
        }
        Ok(Column {
            name: name.to_owned(),
            code,
            element,
        })
    }

    /// The column's `n`th sample value, as the change stream writes it.
    fn value(&self, n: u32, at: &str) -> Value {
        match (&*self.code, &self.element) {
            ("ARRAY", Some(element)) => json!([scalar(element, &self.name, n, at)]),
            (code, _) => scalar(code, &self.name, n, at),
        }
    }
}

fn scalar(code: &str, column: &str, n: u32, at: &str) -> Value {
    match code {
        "INT64" => json!(n.to_string()),
        "FLOAT64" => json!(f64::from(n) * 1.5),
        "BOOL" => json!(n % 2 == 1),
        "TIMESTAMP" => json!(at),
        "DATE" => json!(&at[..10]),
        "NUMERIC" => json!(format!("{n}.25")),
        "JSON" => json!(json!({"n": n}).to_string()),
        "BYTES" => json!(["AQ==", "Ag==", "Aw=="][n as usize % 3]),
        _ if column.to_ascii_lowercase().contains("email") => json!(format!("user{n}@example.com")),
        _ => json!(format!("{column} {n}")),
    }
}

pub fn print(args: &SampleArgs) -> Result<(), RunError> {
    let columns = args
        .columns
        .iter()
        .map(|c| Column::parse(c))
        .collect::<Result<Vec<_>, _>>()?;
    if columns.len() < 2 {
        return Err(RunError::Input(
            "--columns: expected the key column and at least one more".to_owned(),
        ));
    }
    let now = Timestamp::now();
    for record in records(&args.table, &columns, now) {
        let line = InputLine::from_value(&record)
            .map_err(|e| RunError::Input(format!("sample record: {e}")))?;
        println!("{}", line.to_value());
    }
    Ok(())
}

/// One row inserted, one of its columns updated, then the row deleted: three
/// transactions, a second apart, before `now`.
fn records(table: &str, columns: &[Column], now: Timestamp) -> Vec<Value> {
    let (key, rest) = columns.split_first().expect("two columns or more");
    let column_types: Vec<Value> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut ty = json!({"code": c.code});
            if let Some(element) = &c.element {
                ty["array_element_type"] = json!(element);
            }
            json!({"name": c.name, "type": ty, "is_primary_key": i == 0, "ordinal_position": i + 1})
        })
        .collect();
    // Whole seconds, as a commit timestamp reads most easily.
    let second = now.unix_nanos() - now.unix_nanos().rem_euclid(1_000_000_000);
    let at = |ago: i128| {
        Timestamp::from_unix_nanos(second - ago * 1_000_000_000)
            .expect("seconds before now are representable")
            .to_string()
    };
    let values = |n: u32, at: &str, cols: &[Column]| -> Map<String, Value> {
        cols.iter()
            .map(|c| (c.name.clone(), c.value(n, at)))
            .collect()
    };
    let keys = json!({key.name.clone(): key.value(1, "")});
    let (inserted, updated, deleted) = (at(3), at(2), at(1));
    let changed = &rest[..1];
    // What the row holds when it is deleted: as inserted, with the update's column.
    let mut current = values(1, &inserted, rest);
    current.extend(values(2, &updated, changed));
    let mods = [
        (
            "INSERT",
            &inserted,
            json!({"keys": keys, "new_values": values(1, &inserted, rest), "old_values": {}}),
        ),
        (
            "UPDATE",
            &updated,
            json!({"keys": keys, "new_values": values(2, &updated, changed), "old_values": values(1, &inserted, changed)}),
        ),
        (
            "DELETE",
            &deleted,
            json!({"keys": keys, "new_values": {}, "old_values": current}),
        ),
    ];
    mods.into_iter()
        .enumerate()
        .map(|(i, (mod_type, at, row))| {
            json!({
                "partition_token": "sample",
                "commit_timestamp": at,
                "record_sequence": "00000000",
                "server_transaction_id": format!("sample-transaction-{}", i + 1),
                "is_last_record_in_transaction_in_partition": true,
                "table_name": table,
                "column_types": column_types,
                "mods": [row],
                "mod_type": mod_type,
                "value_capture_type": "OLD_AND_NEW_VALUES",
                "number_of_records_in_transaction": 1,
                "number_of_partitions_in_transaction": 1,
                "transaction_tag": "",
                "is_system_transaction": false,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_s_life_in_three_records_that_parse_back() {
        let columns: Vec<Column> = ["Id:INT64", "Name:STRING", "Tags:ARRAY<STRING>"]
            .iter()
            .map(|c| Column::parse(c).unwrap())
            .collect();
        let records = records(
            "Singers",
            &columns,
            Timestamp::from_unix_nanos(1_800_000_000_000_000_000).unwrap(),
        );
        let kinds: Vec<&str> = records
            .iter()
            .map(|r| r["mod_type"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["INSERT", "UPDATE", "DELETE"]);
        for r in &records {
            let line = InputLine::from_value(r).unwrap();
            assert_eq!(line.record.table_name, "Singers");
            assert!(line.extra.is_empty());
        }
        assert_eq!(records[0]["mods"][0]["keys"], json!({"Id": "1"}));
        assert_eq!(
            records[1]["mods"][0]["new_values"],
            json!({"Name": "Name 2"})
        );
        assert_eq!(
            records[1]["mods"][0]["old_values"],
            json!({"Name": "Name 1"})
        );
        assert_eq!(records[2]["mods"][0]["new_values"], json!({}));
        assert_eq!(
            records[2]["mods"][0]["old_values"],
            json!({"Name": "Name 2", "Tags": ["Tags 1"]})
        );
        assert_eq!(
            records[0]["column_types"][2]["type"],
            json!({"code": "ARRAY", "array_element_type": "STRING"})
        );
    }

    #[test]
    fn a_column_without_a_known_type_is_refused() {
        for bad in ["Id", "Id:INT", ":STRING", "Tags:ARRAY<MAP>"] {
            assert!(Column::parse(bad).is_err(), "{bad}");
        }
    }
}
