//! Adds derived top-level fields to every record:
//! - `changed_columns`: the sorted non-key columns whose value differs between old and new
//!   values in any row (for an INSERT, every new column; for a DELETE, every old column);
//! - `commit_unix_millis`: the commit timestamp as milliseconds since the Unix epoch;
//! - `source`, when configured: a constant naming where the record came from.
//!
//! Configuration: `{"source": "orders-db"}` (optional).

use std::collections::BTreeSet;

use screamer_plugin_sdk::{Outcome, Plugin, Record, export_plugin, origin};
use serde_json::Value;

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub source: Option<String>,
}

pub struct Enrich(Config);

impl Plugin for Enrich {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        Ok(Enrich(config))
    }

    fn process(&mut self, mut record: Record) -> Outcome {
        match self.enrich(&mut record) {
            Ok(()) => Outcome::Replace(record),
            Err(e) => Outcome::Fail(e),
        }
    }
}

impl Enrich {
    fn enrich(&self, record: &mut Record) -> Result<(), String> {
        let mut changed = BTreeSet::new();
        for row in &record.mods {
            let new = row.new_values_map()?;
            let old = row.old_values_map()?;
            for (column, value) in &new {
                if old.get(column) != Some(value) {
                    changed.insert(column.clone());
                }
            }
            changed.extend(old.keys().filter(|c| !new.contains_key(*c)).cloned());
        }
        let ts = origin()
            .ok_or("enrich: no origin for the record")?
            .commit_timestamp;
        let millis = ts.seconds * 1000 + i64::from(ts.nanos / 1_000_000);
        record.set_extra(
            "changed_columns",
            changed.into_iter().map(Value::String).collect::<Vec<_>>(),
        )?;
        record.set_extra("commit_unix_millis", millis)?;
        if let Some(source) = &self.0.source {
            record.set_extra("source", source.as_str())?;
        }
        Ok(())
    }
}

export_plugin!(Enrich);

#[cfg(test)]
mod tests {
    use screamer_plugin_sdk::{ModType, Origin, RowChange, Timestamp};
    use serde_json::json;

    use super::*;

    #[test]
    fn derives_changed_columns_and_commit_millis() {
        let record = Record::new("Users", ModType::Update).with_mod(RowChange::new(
            json!({"Id": "1"}),
            json!({"Name": "Bo", "Age": "7"}),
            json!({"Name": "Al", "Age": "7", "Gone": true}),
        ));
        screamer_plugin_sdk::origin::set_for_tests(vec![Origin::at(Timestamp {
            seconds: 1_700_000_000,
            nanos: 123_456_789,
        })]);
        let mut p = Enrich::new(serde_json::from_str(r#"{"source": "db1"}"#).unwrap()).unwrap();
        let Outcome::Replace(out) = p.process(record) else {
            panic!("expected a replacement")
        };
        let extra = out.extra_map().unwrap();
        assert_eq!(extra["changed_columns"], json!(["Gone", "Name"]));
        assert_eq!(extra["commit_unix_millis"], json!(1_700_000_000_123_i64));
        assert_eq!(extra["source"], json!("db1"));
    }
}
