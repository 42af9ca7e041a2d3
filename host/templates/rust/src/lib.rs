//! {{name}}: a screamer plugin.
//!
//! Keeps the records of the configured tables (every table when none is named) and adds
//! `changed_columns`, the columns an INSERT or UPDATE writes, to each; a DELETE passes
//! unchanged. Configuration (optional): `{"tables": ["Users"]}`.

use screamer_plugin_sdk::{ModType, Outcome, Plugin, Record, export_plugin};

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    tables: Vec<String>,
}

pub struct {{type}} {
    config: Config,
}

impl Plugin for {{type}} {
    type Config = Config;

    /// An `Err` refuses the configuration: screamer exits with this message at start-up.
    fn new(config: Config) -> Result<Self, String> {
        if config.tables.iter().any(String::is_empty) {
            return Err("`tables` must not hold an empty name".into());
        }
        Ok({{type}} { config })
    }

    fn process(&mut self, mut record: Record) -> Outcome {
        if !self.config.tables.is_empty() && !self.config.tables.contains(&record.table_name) {
            return Outcome::Drop;
        }
        if record.mod_type == ModType::Delete {
            // A DELETE writes no columns (its old values are in `old_values`): pass it on.
            return Outcome::Keep;
        }
        let mut columns = Vec::new();
        for row in &record.mods {
            match row.new_values_map() {
                Ok(values) => columns.extend(values.keys().cloned()),
                // Values this plugin cannot read: a dead letter says why; the stream goes on.
                Err(e) => return Outcome::Fail(format!("new values: {e}")),
            }
        }
        columns.sort();
        columns.dedup();
        match record.set_extra("changed_columns", columns) {
            Ok(()) => Outcome::Replace(record),
            Err(e) => Outcome::Fail(e),
        }
    }
}

export_plugin!({{type}});

#[cfg(test)]
mod tests {
    use super::*;
    use screamer_plugin_sdk::RowChange;
    use serde_json::json;

    fn users(mod_type: ModType, new_values: serde_json::Value) -> Record {
        Record::new("Users", mod_type).with_mod(RowChange::new(
            json!({"UserId": "1"}),
            new_values,
            json!({}),
        ))
    }

    #[test]
    fn tags_writes_and_passes_deletes() {
        let mut plugin = {{type}}::new(Config::default()).unwrap();
        let Outcome::Replace(out) = plugin.process(users(ModType::Insert, json!({"Name": "Ada"})))
        else {
            panic!("an insert is replaced");
        };
        assert_eq!(out.extra_map().unwrap()["changed_columns"], json!(["Name"]));
        assert_eq!(plugin.process(users(ModType::Delete, json!({}))), Outcome::Keep);
    }

    #[test]
    fn drops_other_tables() {
        let config = Config {
            tables: vec!["Orders".into()],
        };
        let mut plugin = {{type}}::new(config).unwrap();
        assert_eq!(plugin.process(users(ModType::Insert, json!({}))), Outcome::Drop);
    }
}
