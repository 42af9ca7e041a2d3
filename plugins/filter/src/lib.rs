//! Keeps only the records of chosen tables and mod types.
//!
//! Configuration (every field optional; an empty list means "any"):
//! ```json
//! {"tables": ["Orders", "Users"], "mod_types": ["INSERT", "UPDATE"], "exclude_tables": ["Audit"]}
//! ```
//! Decides on the record's routing fields only, so it never parses row values.

use screamer_plugin_sdk::{ModType, Outcome, Plugin, Record, export_plugin};

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub tables: Vec<String>,
    #[serde(default)]
    pub mod_types: Vec<String>,
    #[serde(default)]
    pub exclude_tables: Vec<String>,
}

pub struct Filter {
    tables: Vec<String>,
    mod_types: Vec<ModType>,
    exclude_tables: Vec<String>,
}

impl Plugin for Filter {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        let mod_types = config
            .mod_types
            .iter()
            .map(|m| ModType::parse(m).map_err(|e| format!("mod_types: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(Filter {
            tables: config.tables,
            mod_types,
            exclude_tables: config.exclude_tables,
        })
    }

    fn process(&mut self, record: Record) -> Outcome {
        if self.keeps(&record) {
            Outcome::Keep
        } else {
            Outcome::Drop
        }
    }
}

impl Filter {
    fn keeps(&self, r: &Record) -> bool {
        (self.tables.is_empty() || self.tables.contains(&r.table_name))
            && !self.exclude_tables.contains(&r.table_name)
            && (self.mod_types.is_empty() || self.mod_types.contains(&r.mod_type))
    }
}

export_plugin!(Filter);

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(json: &str) -> Result<Filter, String> {
        Filter::new(serde_json::from_str(json).unwrap())
    }

    #[test]
    fn keeps_chosen_tables_and_mod_types() {
        let mut f = filter(r#"{"tables": ["Orders"], "mod_types": ["insert", "UPDATE"]}"#).unwrap();
        let keep = |f: &mut Filter, t, m| matches!(f.process(Record::new(t, m)), Outcome::Keep);
        assert!(keep(&mut f, "Orders", ModType::Insert));
        assert!(keep(&mut f, "Orders", ModType::Update));
        assert!(!keep(&mut f, "Orders", ModType::Delete));
        assert!(!keep(&mut f, "Users", ModType::Insert));
    }

    #[test]
    fn excludes_tables_and_keeps_everything_by_default() {
        let mut f = filter(r#"{"exclude_tables": ["Audit"]}"#).unwrap();
        assert!(matches!(
            f.process(Record::new("Audit", ModType::Insert)),
            Outcome::Drop
        ));
        assert!(matches!(
            f.process(Record::new("Any", ModType::Delete)),
            Outcome::Keep
        ));
    }

    #[test]
    fn refuses_unknown_mod_types() {
        let err = filter(r#"{"mod_types": ["UPSERT"]}"#).err().unwrap();
        assert!(err.contains("UPSERT"), "{err}");
    }
}
