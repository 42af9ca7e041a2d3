//! Record lines as authors give them to `plugin run` and in fixtures: whole, as screamer
//! prints them, or minimal (`table_name`, `mod_type`, `mods`; the rest defaulted).
//!
//! Place in the flow: the input edge of the author's commands. Every missing required field
//! is named at once; the defaults are documented in the README ("Plugins").

use serde_json::{Map, Value};

use screamer::DataChangeRecord;
use screamer::plugin::Input;

/// A record line; fields beyond the record's own are kept as its extra fields.
pub struct InputLine {
    pub record: DataChangeRecord,
    pub extra: Map<String, Value>,
}

/// The fields a record line must have; every other field of the record has a default.
const REQUIRED: [&str; 3] = ["table_name", "mod_type", "mods"];

/// What a minimal record line gets for the fields it leaves out.
fn default_field(name: &str) -> Option<Value> {
    Some(match name {
        "partition_token" => Value::from("plugin-run"),
        "commit_timestamp" => Value::from("1970-01-01T00:00:00Z"),
        "record_sequence" => Value::from("00000000"),
        "server_transaction_id" => Value::from(""),
        "is_last_record_in_transaction_in_partition" => Value::from(true),
        "column_types" => Value::Array(Vec::new()),
        "value_capture_type" => Value::from("OLD_AND_NEW_VALUES"),
        "number_of_records_in_transaction" | "number_of_partitions_in_transaction" => {
            Value::from(1)
        }
        "transaction_tag" => Value::from(""),
        "is_system_transaction" => Value::from(false),
        _ => return None,
    })
}

impl InputLine {
    /// A record line: whole as screamer prints it, or minimal; every missing required
    /// field is named at once.
    pub fn parse(line: &str) -> Result<Self, String> {
        let fields: Map<String, Value> =
            serde_json::from_str(line).map_err(|e| format!("not a JSON object: {e}"))?;
        Self::from_fields(fields, Some(line))
    }

    /// A record given as a JSON value (a fixture's).
    pub fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::Object(fields) => Self::from_fields(fields.clone(), None),
            other => Err(format!("expected a record (a JSON object), found {other}")),
        }
    }

    fn from_fields(mut fields: Map<String, Value>, text: Option<&str>) -> Result<Self, String> {
        let missing: Vec<&str> = REQUIRED
            .into_iter()
            .filter(|f| !fields.contains_key(*f))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "missing {}: a record needs at least table_name, mod_type and mods",
                missing.join(", ")
            ));
        }
        let mut defaulted = false;
        for name in DataChangeRecord::FIELDS {
            if !fields.contains_key(name)
                && let Some(value) = default_field(name)
            {
                fields.insert(name.to_owned(), value);
                defaulted = true;
            }
        }
        // Mods keep their JSON text (raw values), which serde reads from text only.
        let record: Result<DataChangeRecord, _> = match text {
            Some(line) if !defaulted => serde_json::from_str(line),
            _ => serde_json::from_str(&Value::Object(fields.clone()).to_string()),
        };
        let record = record.map_err(|e| format!("not a data change record: {e}"))?;
        fields.retain(|k, _| !DataChangeRecord::FIELDS.contains(&k.as_str()));
        Ok(InputLine {
            record,
            extra: fields,
        })
    }

    /// The line as the chain takes it.
    pub fn input(&self) -> Input<'_> {
        Input {
            record: &self.record,
            extra: Some(&self.extra).filter(|m| !m.is_empty()),
        }
    }

    /// The line as screamer writes it: the record's fields, then the extra ones.
    pub fn to_value(&self) -> Value {
        let mut value = serde_json::to_value(&self.record).expect("a record serializes");
        if let Value::Object(fields) = &mut value {
            fields.extend(self.extra.clone());
        }
        value
    }

    /// A minimal record's defaults, as [`InputLine::to_value`] writes them: what a
    /// readable rendering of a record may leave out.
    pub fn defaults() -> Map<String, Value> {
        let minimal = serde_json::json!({"table_name": "", "mod_type": "INSERT", "mods": []});
        let Ok(line) = Self::from_value(&minimal) else {
            unreachable!("the minimal record parses")
        };
        let Value::Object(mut fields) = line.to_value() else {
            unreachable!("a record is an object")
        };
        for required in REQUIRED {
            fields.remove(required);
        }
        fields
    }
}
