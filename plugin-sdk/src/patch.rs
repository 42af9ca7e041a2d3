//! Changes to a record in place: the `patch` outcome.
//!
//! A plugin that masks, hashes, adds or drops a few columns, or only adds extra fields, says
//! what it changed instead of returning the whole record: only the changes cross back to
//! the host, which splices them into the record it already holds. For a row of ten columns
//! with two changed, that is a few dozen bytes instead of two whole row fields to copy,
//! check and parse. [`Patch::apply`] does on a [`Record`] what the host does, for unit tests.
//!
//! ```
//! use screamer_plugin_sdk::{ModType, Outcome, Patch, Record, RowChange, RowField};
//! use serde_json::json;
//!
//! let mut patch = Patch::new();
//! patch.set(0, RowField::NewValues, "Email", &json!("[REDACTED]"));
//! patch.remove(0, RowField::OldValues, "Email");
//!
//! let mut record = Record::new("Users", ModType::Update).with_mod(RowChange::new(
//!     json!({"Id": "1"}),
//!     json!({"Email": "a@x.io", "Name": "Ann"}),
//!     json!({"Email": "b@x.io"}),
//! ));
//! patch.apply(&mut record).unwrap();
//! assert_eq!(record.mods[0].new_values, r#"{"Email":"[REDACTED]","Name":"Ann"}"#);
//! assert_eq!(record.mods[0].old_values, "{}");
//! let outcome: Outcome = patch.into_outcome(); // `Keep` when the patch is empty
//! ```

use serde_json::{Map, Value};

use crate::bindings::screamer::plugin::types::{MemberEdit, RecordPatch, RowField};
use crate::{JsonError, Outcome, Record, json};

/// Changes to one record: member edits of its row fields, and its extra fields replaced.
pub type Patch = RecordPatch;

impl Default for Patch {
    fn default() -> Self {
        Patch::new()
    }
}

impl Patch {
    /// A patch that changes nothing.
    pub fn new() -> Self {
        RecordPatch {
            edits: Vec::new(),
            extra: None,
        }
    }

    /// Sets member `name` of row change `row`'s `field` to `value` (adding it at the end
    /// when the field lacks it).
    pub fn set(&mut self, row: usize, field: RowField, name: &str, value: &Value) -> &mut Self {
        self.set_json(row, field, name, value.to_string())
    }

    /// Sets member `name` to a value given as its JSON text (say, a value read with
    /// [`json::members`], or one the plugin encoded itself). The host refuses text that is
    /// not one JSON value, failing the record.
    pub fn set_json(&mut self, row: usize, field: RowField, name: &str, json: String) -> &mut Self {
        self.edit(row, field, name, Some(json))
    }

    /// Removes member `name` of row change `row`'s `field` (nothing when it has none).
    pub fn remove(&mut self, row: usize, field: RowField, name: &str) -> &mut Self {
        self.edit(row, field, name, None)
    }

    /// Replaces the record's extra top-level output fields with `extra` (empty: none).
    pub fn set_extra(&mut self, extra: &Map<String, Value>) -> &mut Self {
        self.extra = Some(Value::Object(extra.clone()).to_string());
        self
    }

    /// Whether the patch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.edits.is_empty() && self.extra.is_none()
    }

    /// The outcome that passes the record on with these changes: [`Outcome::Keep`] when
    /// there are none.
    pub fn into_outcome(self) -> Outcome {
        match self.is_empty() {
            true => Outcome::Keep,
            false => Outcome::Patch(self),
        }
    }

    /// Applies the patch to `record` as the host does: edits in order (of two edits of one
    /// member the later wins), a member set keeps its place, a new one goes at the end.
    /// An edit naming a row the record lacks, or a value that is not JSON, is an error, as
    /// the host fails the record for it.
    pub fn apply(&self, record: &mut Record) -> Result<(), JsonError> {
        for (i, e) in self.edits.iter().enumerate() {
            let rows = record.mods.len();
            let row = record.mods.get_mut(e.row as usize).ok_or_else(|| {
                format!(
                    "patch edits[{i}] names row {}; the record has {rows}",
                    e.row
                )
            })?;
            let (text, what) = match e.field {
                RowField::Keys => (&mut row.keys, "keys"),
                RowField::NewValues => (&mut row.new_values, "new_values"),
                RowField::OldValues => (&mut row.old_values, "old_values"),
            };
            *text = edited(text, what, e)?;
        }
        if let Some(extra) = &self.extra {
            record.extra = Some(extra.clone()).filter(|e| e.trim() != "{}");
        }
        Ok(())
    }

    fn edit(
        &mut self,
        row: usize,
        field: RowField,
        name: &str,
        value: Option<String>,
    ) -> &mut Self {
        self.edits.push(MemberEdit {
            row: u32::try_from(row).expect("a record has fewer than 2^32 row changes"),
            field,
            name: name.to_owned(),
            value,
        });
        self
    }
}

/// The object `text` with one edit applied.
fn edited(text: &str, what: &str, edit: &MemberEdit) -> Result<String, JsonError> {
    let mut members: Vec<(String, String)> = json::members(text, what)?
        .into_iter()
        .map(|(name, value)| (name.into_owned(), value.get().to_owned()))
        .collect();
    let at = members.iter().position(|(name, _)| *name == edit.name);
    match (&edit.value, at) {
        (Some(value), at) => {
            serde_json::from_str::<serde::de::IgnoredAny>(value)
                .map_err(|e| format!("{what}.{}: not a JSON value: {e}", edit.name))?;
            match at {
                Some(at) => members[at].1 = value.clone(),
                None => members.push((edit.name.clone(), value.clone())),
            }
        }
        (None, Some(at)) => {
            members.remove(at);
        }
        (None, None) => {}
    }
    let mut out = String::from("{");
    for (i, (name, value)) in members.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&Value::from(name.as_str()).to_string());
        out.push(':');
        out.push_str(value);
    }
    out.push('}');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{ModType, RowChange};

    fn record() -> Record {
        Record::new("T", ModType::Update).with_mod(RowChange::new(
            json!({"Id": "1"}),
            json!({"A": 1, "B": "x"}),
            json!({}),
        ))
    }

    #[test]
    fn edits_apply_in_order_and_new_members_go_last() {
        let mut patch = Patch::new();
        patch
            .set(0, RowField::NewValues, "A", &json!(2))
            .set(0, RowField::NewValues, "C", &json!([1]))
            .remove(0, RowField::NewValues, "B")
            .set(0, RowField::NewValues, "A", &json!(3))
            .set_json(0, RowField::OldValues, "A", "1".into());
        let mut r = record();
        patch.apply(&mut r).unwrap();
        assert_eq!(r.mods[0].new_values, r#"{"A":3,"C":[1]}"#);
        assert_eq!(r.mods[0].old_values, r#"{"A":1}"#);
        assert_eq!(r.mods[0].keys, r#"{"Id":"1"}"#);
    }

    #[test]
    fn what_the_host_would_refuse_is_an_error() {
        let mut r = record();
        let mut patch = Patch::new();
        patch.remove(1, RowField::Keys, "Id");
        assert_eq!(
            patch.apply(&mut r).unwrap_err(),
            "patch edits[0] names row 1; the record has 1"
        );
        let mut patch = Patch::new();
        patch.set_json(0, RowField::Keys, "Id", "{".into());
        assert!(
            patch
                .apply(&mut r)
                .unwrap_err()
                .starts_with("keys.Id: not a JSON value")
        );
    }

    #[test]
    fn an_empty_patch_keeps_the_record_and_extra_replaces_the_extra_fields() {
        assert_eq!(Patch::new().into_outcome(), Outcome::Keep);
        let mut extra = Map::new();
        extra.insert("tag".into(), json!("eu"));
        let mut patch = Patch::default();
        patch.set_extra(&extra);
        let mut r = record();
        r.extra = Some(r#"{"old":1}"#.into());
        patch.apply(&mut r).unwrap();
        assert_eq!(r.extra.as_deref(), Some(r#"{"tag":"eu"}"#));
        assert!(matches!(patch.into_outcome(), Outcome::Patch(_)));
        let mut r = record();
        r.extra = Some(r#"{"old":1}"#.into());
        Patch::new().set_extra(&Map::new()).apply(&mut r).unwrap();
        assert_eq!(r.extra, None);
    }
}
