//! Changes to a record in place: the `patch` outcome.
//!
//! A plugin that masks, hashes, adds or drops a few columns, or only adds extra fields, says
//! what it changed instead of returning the whole record: only the changes cross back to
//! the host, which splices them into the record it already holds. For a row of ten columns
//! with two changed, that is one small object per changed row field instead of the record's
//! whole text to copy, check and parse. [`Patch::apply`] does on a [`Record`] what the host
//! does, for unit tests.
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

use std::fmt::Write as _;

use serde_json::{Map, Value};

use crate::bindings::screamer::plugin::types::{FieldPatch, RecordPatch, RowField};
use crate::{JsonError, Outcome, Record, json};

/// Changes to one record: members of its row fields set or removed, its extra fields
/// replaced. Calls apply in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Patch {
    fields: Vec<FieldPatch>,
    extra: Option<String>,
}

impl Patch {
    /// A patch that changes nothing.
    pub fn new() -> Self {
        Patch::default()
    }

    /// Sets member `name` of row change `row`'s `field` to `value`, where it stands, or at
    /// the field's end when the field lacks it.
    pub fn set(&mut self, row: usize, field: RowField, name: &str, value: &Value) -> &mut Self {
        let set = self.member_of_set(row, field, name);
        // `Value`'s `Display` is its compact JSON, written in place.
        write!(set, "{value}").expect("writing to a String");
        set.push('}');
        self
    }

    /// Sets member `name` to a value given as its JSON text (say, one read with
    /// [`json::members`], or encoded by the plugin itself). The host fails the record when
    /// the text is not one JSON value.
    pub fn set_json(&mut self, row: usize, field: RowField, name: &str, json: &str) -> &mut Self {
        let set = self.member_of_set(row, field, name);
        set.push_str(json);
        set.push('}');
        self
    }

    /// Removes member `name` of row change `row`'s `field` (nothing when it has none).
    pub fn remove(&mut self, row: usize, field: RowField, name: &str) -> &mut Self {
        let patch = self.field_for(row, field, name);
        patch.remove.push(name.to_owned());
        self
    }

    /// Replaces the record's extra top-level output fields with `extra` (empty: none).
    pub fn set_extra(&mut self, extra: &Map<String, Value>) -> &mut Self {
        self.extra = Some(Value::Object(extra.clone()).to_string());
        self
    }

    /// Whether the patch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty() && self.extra.is_none()
    }

    /// The outcome that passes the record on with these changes: [`Outcome::Keep`] when
    /// there are none.
    pub fn into_outcome(self) -> Outcome {
        match self.is_empty() {
            true => Outcome::Keep,
            false => Outcome::Patch(RecordPatch {
                fields: self.fields,
                extra: self.extra,
            }),
        }
    }

    /// Applies the patch to `record` as the host does. A row the record lacks, or a value
    /// that is not JSON, is an error, as the host fails the record for it.
    pub fn apply(&self, record: &mut Record) -> Result<(), JsonError> {
        apply(&self.fields, self.extra.as_deref(), record)
    }

    /// The `set` object of the field patch for `name`, open for its value: its closing
    /// brace gone, `"name":` written.
    fn member_of_set(&mut self, row: usize, field: RowField, name: &str) -> &mut String {
        let set = &mut self.field_for(row, field, name).set;
        // The host applies removals before settings: a name set again is set, whatever
        // was removed.
        set.pop();
        if set.len() > 1 {
            set.push(',');
        }
        if is_plain(name) {
            set.push('"');
            set.push_str(name);
            set.push('"');
        } else {
            set.push_str(&Value::from(name).to_string());
        }
        set.push(':');
        set
    }

    /// The one field patch of `row`'s `field` (made on first use), with `name` taken out
    /// of what it sets: a change of `name` comes after every earlier one. The host limits
    /// the field patches of one row field, and applies removals before settings.
    fn field_for(&mut self, row: usize, field: RowField, name: &str) -> &mut FieldPatch {
        let row = u32::try_from(row).expect("a record has fewer than 2^32 row changes");
        let at = match self
            .fields
            .iter()
            .rposition(|f| f.row == row && f.field == field)
        {
            Some(at) => at,
            None => {
                let mut set = String::with_capacity(64);
                set.push_str("{}");
                self.fields.push(FieldPatch {
                    row,
                    field,
                    remove: Vec::new(),
                    set,
                });
                self.fields.len() - 1
            }
        };
        let patch = &mut self.fields[at];
        if names(&patch.set, name) {
            patch.set = without(&patch.set, name);
        }
        patch
    }
}

/// Whether `name` needs no escape in a JSON string.
fn is_plain(name: &str) -> bool {
    !name.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20)
}

/// Whether the object text `set` may name `name` already: its text occurs in quotes (a
/// value may match too; a name with escapes always may). Saying yes wrongly only costs a
/// parse of `set`.
fn names(set: &str, name: &str) -> bool {
    !is_plain(name)
        || set
            .match_indices(name)
            .any(|(at, _)| set[..at].ends_with('"') && set[at + name.len()..].starts_with('"'))
}

/// The object text `set` (which the patch wrote) without its member `name`.
fn without(set: &str, name: &str) -> String {
    let members = json::members(set, "set").expect("a patch writes objects");
    let kept: Vec<String> = members
        .iter()
        .filter(|(n, _)| n != name)
        .map(|(n, v)| format!("{}:{}", Value::from(n.as_ref()), v.get()))
        .collect();
    format!("{{{}}}", kept.join(","))
}

/// The patch of an [`Outcome::Patch`], say to [`Patch::apply`] it in a unit test.
impl From<RecordPatch> for Patch {
    fn from(p: RecordPatch) -> Self {
        Patch {
            fields: p.fields,
            extra: p.extra,
        }
    }
}

/// What the host does with a patch's field patches and extra.
fn apply(fields: &[FieldPatch], extra: Option<&str>, record: &mut Record) -> Result<(), JsonError> {
    for (i, f) in fields.iter().enumerate() {
        let rows = record.mods.len();
        let row = record.mods.get_mut(f.row as usize).ok_or_else(|| {
            let plural = if rows == 1 { "" } else { "s" };
            format!(
                "patch fields[{i}] names row {}; the record has {rows} row change{plural}",
                f.row
            )
        })?;
        let (text, what) = match f.field {
            RowField::Keys => (&mut row.keys, "keys"),
            RowField::NewValues => (&mut row.new_values, "new_values"),
            RowField::OldValues => (&mut row.old_values, "old_values"),
        };
        *text = edited(text, what, f)?;
    }
    if let Some(extra) = extra {
        record.extra = Some(extra.to_owned()).filter(|e| e.trim() != "{}");
    }
    Ok(())
}

/// The object `text` with one field patch applied: removals, then settings.
fn edited(text: &str, what: &str, f: &FieldPatch) -> Result<String, JsonError> {
    let mut members: Vec<(String, String)> = json::members(text, what)?
        .into_iter()
        .filter(|(name, _)| !f.remove.iter().any(|r| r == name))
        .map(|(name, value)| (name.into_owned(), value.get().to_owned()))
        .collect();
    for (name, value) in json::members(&f.set, &format!("{what} patch"))? {
        let value = value.get().to_owned();
        match members.iter_mut().find(|(n, _)| *n == name) {
            Some(member) => member.1 = value,
            None => members.push((name.into_owned(), value)),
        }
    }
    let object: Vec<String> = members
        .iter()
        .map(|(name, value)| format!("{}:{value}", Value::from(name.as_str())))
        .collect();
    Ok(format!("{{{}}}", object.join(",")))
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
    fn changes_apply_in_order_and_new_members_go_last() {
        let mut patch = Patch::new();
        patch
            .set(0, RowField::NewValues, "A", &json!(2))
            .set(0, RowField::NewValues, "C", &json!([1]))
            .remove(0, RowField::NewValues, "B")
            .set(0, RowField::NewValues, "A", &json!(3))
            .remove(0, RowField::NewValues, "C")
            .set_json(0, RowField::OldValues, "A", "1");
        let mut r = record();
        patch.apply(&mut r).unwrap();
        assert_eq!(r.mods[0].new_values, r#"{"A":3}"#);
        assert_eq!(r.mods[0].old_values, r#"{"A":1}"#);
        assert_eq!(r.mods[0].keys, r#"{"Id":"1"}"#);
        // One field patch per row field, whatever the changes.
        let Outcome::Patch(p) = patch.into_outcome() else {
            panic!()
        };
        let shapes: Vec<(RowField, &[String], &str)> = p
            .fields
            .iter()
            .map(|f| (f.field, &f.remove[..], f.set.as_str()))
            .collect();
        let removed = ["B".to_owned(), "C".to_owned()];
        assert_eq!(
            shapes,
            [
                (RowField::NewValues, &removed[..], r#"{"A":3}"#),
                (RowField::OldValues, &[][..], r#"{"A":1}"#),
            ]
        );
    }

    #[test]
    fn what_the_host_would_refuse_is_an_error() {
        let mut r = record();
        let mut patch = Patch::new();
        patch.remove(1, RowField::Keys, "Id");
        assert_eq!(
            patch.apply(&mut r).unwrap_err(),
            "patch fields[0] names row 1; the record has 1 row change"
        );
        let mut patch = Patch::new();
        patch.set_json(0, RowField::Keys, "Id", "{");
        assert!(
            patch
                .apply(&mut r)
                .unwrap_err()
                .starts_with("keys patch is not a JSON object")
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
