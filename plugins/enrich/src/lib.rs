//! Adds derived top-level fields to every record:
//! - `changed_columns`: the sorted non-key columns whose value differs between old and new
//!   values in any row (for an INSERT, every new column; for a DELETE, every old column);
//! - `commit_unix_millis`: the commit timestamp as milliseconds since the Unix epoch;
//! - `source`, when configured: a constant naming where the record came from.
//!
//! Configuration: `{"source": "orders-db"}` (optional).

use std::collections::BTreeSet;

use screamer_plugin_sdk::{Outcome, Patch, Plugin, Record, export_plugin, origin};
use serde_json::{Map, Value};

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

    fn process(&mut self, record: Record) -> Outcome {
        match self.extra(&record) {
            // Only the extra fields cross back: the rows stay the host's.
            Ok(extra) => Patch::new().set_extra(&extra).clone().into_outcome(),
            Err(e) => Outcome::Fail(e),
        }
    }
}

impl Enrich {
    /// The record's extra fields with the derived ones added.
    fn extra(&self, record: &Record) -> Result<Map<String, Value>, String> {
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
        let mut extra = record.extra_map()?;
        extra.insert(
            "changed_columns".into(),
            changed.into_iter().map(Value::String).collect(),
        );
        extra.insert("commit_unix_millis".into(), millis.into());
        if let Some(source) = &self.0.source {
            extra.insert("source".into(), source.as_str().into());
        }
        Ok(extra)
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
        let Outcome::Patch(patch) = p.process(record.clone()) else {
            panic!("expected a patch")
        };
        let mut out = record;
        Patch::from(patch).apply(&mut out).unwrap();
        let extra = out.extra_map().unwrap();
        assert_eq!(extra["changed_columns"], json!(["Gone", "Name"]));
        assert_eq!(extra["commit_unix_millis"], json!(1_700_000_000_123_i64));
        assert_eq!(extra["source"], json!("db1"));
    }
}
