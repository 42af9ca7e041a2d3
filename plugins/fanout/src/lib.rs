//! Routes a copy of chosen records to a named side output (an audit trail, say) while the
//! record itself continues down the chain.
//!
//! Configuration (all optional):
//! ```json
//! {"output": "audit", "tables": ["Payments"], "mod_types": ["DELETE"], "only_copy": false}
//! ```
//! `only_copy: true` sends matching records to the side output alone (routing instead of
//! copying).

use screamer_plugin_sdk::{Emission, ModType, Outcome, Plugin, Record, export_plugin};

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_output")]
    pub output: String,
    #[serde(default)]
    pub tables: Vec<String>,
    #[serde(default)]
    pub mod_types: Vec<String>,
    #[serde(default)]
    pub only_copy: bool,
}

fn default_output() -> String {
    "audit".into()
}

pub struct Fanout {
    config: Config,
    mod_types: Vec<ModType>,
}

impl Plugin for Fanout {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        if config.output.is_empty() {
            return Err("`output` must name a side output".into());
        }
        let mod_types = config
            .mod_types
            .iter()
            .map(|m| ModType::parse(m).map_err(|e| format!("mod_types: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(Fanout { config, mod_types })
    }

    fn process(&mut self, record: Record) -> Outcome {
        let matches = (self.config.tables.is_empty()
            || self.config.tables.contains(&record.table_name))
            && (self.mod_types.is_empty() || self.mod_types.contains(&record.mod_type));
        if !matches {
            return Outcome::Keep;
        }
        let copy = Emission::to(&self.config.output, record.clone());
        if self.config.only_copy {
            Outcome::Emit(vec![copy])
        } else {
            Outcome::Emit(vec![Emission::main(record), copy])
        }
    }
}

export_plugin!(Fanout);

#[cfg(test)]
mod tests {
    use super::*;

    fn fanout(json: &str) -> Fanout {
        Fanout::new(serde_json::from_str(json).unwrap()).unwrap()
    }

    #[test]
    fn copies_matching_records_to_the_side_output() {
        let mut p = fanout(r#"{"tables": ["Payments"]}"#);
        let Outcome::Emit(out) = p.process(Record::new("Payments", ModType::Insert)) else {
            panic!("expected emissions")
        };
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].output, None);
        assert_eq!(out[1].output.as_deref(), Some("audit"));
        assert!(matches!(
            p.process(Record::new("Users", ModType::Insert)),
            Outcome::Keep
        ));
    }

    #[test]
    fn routes_only_when_asked() {
        let mut p = fanout(r#"{"output": "deletes", "mod_types": ["DELETE"], "only_copy": true}"#);
        let Outcome::Emit(out) = p.process(Record::new("T", ModType::Delete)) else {
            panic!()
        };
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].output.as_deref(), Some("deletes"));
    }
}
