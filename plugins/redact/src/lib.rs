//! Redacts or hashes chosen columns in every row change (new and old values).
//!
//! Configuration:
//! ```json
//! {"columns": ["Email", "Phone"], "mode": "hash", "salt": "s3cret", "tables": ["Users"]}
//! ```
//! `mode` is `mask` (the value becomes `"[REDACTED]"`, the default), `null` or `hash`
//! (hex SHA-256 of the salt and the value's JSON text: equal values stay joinable).
//! `tables` limits the plugin to some tables (default: all). Key columns are left alone:
//! they identify the row downstream.
//!
//! Values are read only when a configured column name occurs in the text, so records
//! without sensitive columns pass at the cost of a substring search; then only the
//! redacted values are decoded, and only they go back to the host, as a patch
//! (`screamer_plugin_sdk::Patch`): the rest of the record never crosses back.

use screamer_plugin_sdk::{Outcome, Patch, Plugin, Record, RowField, json};
use serde_json::Value;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub columns: Vec<String>,
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub salt: String,
    #[serde(default)]
    pub tables: Vec<String>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Mask,
    Null,
    Hash,
}

pub struct Redact {
    config: Config,
    /// `"Column"` with its quotes: what must occur in the text for the column to be there.
    needles: Vec<String>,
}

impl Plugin for Redact {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        if config.columns.is_empty() {
            return Err("`columns` must name at least one column".into());
        }
        let needles = config
            .columns
            .iter()
            .map(|c| Value::String(c.clone()).to_string())
            .collect();
        Ok(Redact { config, needles })
    }

    fn process(&mut self, record: Record) -> Outcome {
        if !self.config.tables.is_empty() && !self.config.tables.contains(&record.table_name) {
            return Outcome::Keep;
        }
        let mut patch = Patch::new();
        for (row, change) in record.mods.iter().enumerate() {
            for (field, text) in [
                (RowField::NewValues, &change.new_values),
                (RowField::OldValues, &change.old_values),
            ] {
                if !self.may_have_columns(text) {
                    continue;
                }
                let members = match json::members(text, "values") {
                    Ok(members) => members,
                    Err(e) => return Outcome::Fail(e),
                };
                for (column, value) in members {
                    if self.redacts(&column) {
                        patch.set(row, field, &column, &self.redact_value(value));
                    }
                }
            }
        }
        patch.into_outcome()
    }
}

impl Redact {
    /// Whether a configured column may be in the object `text`: its quoted name occurs.
    pub fn may_have_columns(&self, text: &str) -> bool {
        self.needles.iter().any(|n| text.contains(n.as_str()))
    }

    /// Whether `column` is one to redact.
    pub fn redacts(&self, column: &str) -> bool {
        self.config.columns.iter().any(|c| c == column)
    }

    /// What `value` becomes.
    pub fn redact_value(&self, value: &RawValue) -> Value {
        match self.config.mode {
            Mode::Mask => Value::String("[REDACTED]".into()),
            Mode::Null => Value::Null,
            Mode::Hash => {
                // The value's canonical text, so that equal values hash alike however
                // their text was escaped.
                let canonical = serde_json::from_str::<Value>(value.get())
                    .map_or_else(|_| value.get().to_owned(), |v| v.to_string());
                let mut h = Sha256::new();
                h.update(self.config.salt.as_bytes());
                h.update(canonical.as_bytes());
                Value::String(hex(&h.finalize()))
            }
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

screamer_plugin_sdk::export_plugin!(Redact);

#[cfg(test)]
mod tests {
    use screamer_plugin_sdk::{ModType, RowChange};
    use serde_json::json;

    use super::*;

    fn redact(config: Value) -> Redact {
        Redact::new(serde_json::from_value(config).unwrap()).unwrap()
    }

    fn record() -> Record {
        Record::new("Users", ModType::Update).with_mod(RowChange::new(
            json!({"Id": "1"}),
            json!({"Email": "a@x.io", "Name": "Ann"}),
            json!({"Email": "b@x.io", "Name": "Ann"}),
        ))
    }

    /// The record `plugin` makes of `record()`, its patch applied as the host would.
    fn patched(plugin: &mut Redact) -> Record {
        let Outcome::Patch(patch) = plugin.process(record()) else {
            panic!("expected a patch")
        };
        let mut r = record();
        Patch::from(patch).apply(&mut r).unwrap();
        r
    }

    #[test]
    fn masks_new_and_old_values() {
        let r = patched(&mut redact(json!({"columns": ["Email"]})));
        let row = &r.mods[0];
        assert_eq!(
            row.new_value::<String>("Email").unwrap().unwrap(),
            "[REDACTED]"
        );
        assert_eq!(
            row.old_value::<String>("Email").unwrap().unwrap(),
            "[REDACTED]"
        );
        assert_eq!(row.new_value::<String>("Name").unwrap().unwrap(), "Ann");
        assert_eq!(row.keys, r#"{"Id":"1"}"#);
    }

    #[test]
    fn hashes_deterministically_with_the_salt() {
        let mut p = redact(json!({"columns": ["Email"], "mode": "hash", "salt": "s"}));
        let (a, b) = (patched(&mut p), patched(&mut p));
        let hash = a.mods[0].new_value::<String>("Email").unwrap().unwrap();
        assert_eq!(hash.len(), 64);
        assert_eq!(a.mods[0].new_values, b.mods[0].new_values);
        assert_ne!(a.mods[0].new_values, a.mods[0].old_values);
    }

    #[test]
    fn keeps_records_without_the_columns_or_of_other_tables() {
        let mut p = redact(json!({"columns": ["Ssn"]}));
        assert!(matches!(p.process(record()), Outcome::Keep));
        let mut p = redact(json!({"columns": ["Email"], "tables": ["Orders"]}));
        assert!(matches!(p.process(record()), Outcome::Keep));
    }

    #[test]
    fn refuses_an_empty_column_list() {
        assert!(Redact::new(serde_json::from_value(json!({"columns": []})).unwrap()).is_err());
    }
}
