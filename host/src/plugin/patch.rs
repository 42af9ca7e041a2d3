//! A plugin's `patch` outcome applied to the record it was handed: each field patch's
//! removals and settings spliced into its row field, the extra fields replaced when the
//! patch says so.
//!
//! Place in the flow: the chain, after a plugin's call, for each record whose outcome is a
//! patch; the patched record goes on to the next plugin as a host record.
//!
//! Invariants: the base record is a checked host record, and what a field patch sets is
//! checked (its nesting and keys by [`shape`], its syntax by a parse of that small object)
//! before it is spliced in, so the patched row fields are objects without a parse of their
//! whole text. A field patch naming a row the record lacks fails the record, naming it.
//! The work is linear in the record and the patch (sorting aside), whatever a plugin sends.

use super::bindings::{FieldPatch, RecordPatch, RowField};
use super::convert::{metadata_of, parse_extra};
use super::shape;
use crate::record::{DataChangeRecord, JsonObject, Mod};

/// What a patch made of a record: the record, and its extra fields as the text of a JSON
/// object, checked (none for none).
pub(super) struct Patched {
    pub record: DataChangeRecord,
    pub extra: Option<String>,
}

/// `patch` applied to `base`, whose extra fields are `base_extra`.
pub(super) fn apply(
    base: &DataChangeRecord,
    base_extra: Option<&str>,
    patch: RecordPatch,
) -> Result<Patched, String> {
    let fields = checked(patch.fields, base.mods.len())?;
    let mut mods: Vec<Mod> = Vec::with_capacity(base.mods.len());
    let mut rest = &fields[..];
    for (row, m) in base.mods.iter().enumerate() {
        let (mine, after) = rest.split_at(rest.partition_point(|f| f.row == row));
        rest = after;
        let field = |which: RowField, object: &JsonObject| {
            let mut patches = mine.iter().filter(|f| f.field == which);
            match patches.next() {
                None => object.clone(),
                Some(first) => patches.fold(first.apply_to(object), |o, f| f.apply_to(&o)),
            }
        };
        mods.push(Mod {
            keys: field(RowField::Keys, &m.keys),
            new_values: field(RowField::NewValues, &m.new_values),
            old_values: field(RowField::OldValues, &m.old_values),
        });
    }
    let extra = match patch.extra {
        Some(text) => parse_extra(&text)?.map(|_| text),
        None => base_extra.map(str::to_owned),
    };
    let record = DataChangeRecord {
        table_name: base.table_name.clone(),
        mod_type: base.mod_type,
        mods,
        ..metadata_of(base)
    };
    Ok(Patched { record, extra })
}

/// Field patches one row field may have: they apply one after the other, each a pass over
/// the field, so a plugin sending thousands for one field would cost the host thousands of
/// copies of it. One is all a plugin needs (the SDK makes one per row field).
const FIELD_PATCHES_PER_FIELD: usize = 4;

/// A field patch whose row is in range and whose settings are checked.
struct Checked {
    row: usize,
    field: RowField,
    remove: Vec<String>,
    set: JsonObject,
}

impl Checked {
    fn apply_to(&self, object: &JsonObject) -> JsonObject {
        object.edited(&self.remove, &self.set)
    }
}

/// The field patches with their rows checked against `rows` and their settings checked,
/// ordered by row and field (the patches of one row field keep their order), at most
/// [`FIELD_PATCHES_PER_FIELD`] per row field.
fn checked(fields: Vec<FieldPatch>, rows: usize) -> Result<Vec<Checked>, String> {
    let mut out = Vec::with_capacity(fields.len());
    for (i, f) in fields.into_iter().enumerate() {
        let row = f.row as usize;
        if row >= rows {
            return Err(format!(
                "patch fields[{i}] names row {row}; the record has {rows} row change{}",
                if rows == 1 { "" } else { "s" }
            ));
        }
        let at = || format!("patch fields[{i}] ({}).set", place(row, f.field));
        let set = match f.set.trim() {
            "" | "{}" => JsonObject::default(),
            _ => {
                shape::check(&f.set).map_err(|err| format!("{}: {err}", at()))?;
                JsonObject::from_text(f.set).map_err(|err| format!("{}: {err}", at()))?
            }
        };
        out.push(Checked {
            row,
            field: f.field,
            remove: f.remove,
            set,
        });
    }
    out.sort_by_key(|f| (f.row, f.field as u8));
    if let Some(many) = out.windows(FIELD_PATCHES_PER_FIELD + 1).find(|w| {
        (w[0].row, w[0].field)
            == (
                w[FIELD_PATCHES_PER_FIELD].row,
                w[FIELD_PATCHES_PER_FIELD].field,
            )
    }) {
        let (row, field) = (many[0].row, many[0].field);
        let count = out
            .iter()
            .filter(|f| (f.row, f.field) == (row, field))
            .count();
        return Err(format!(
            "patch has {count} field patches for {}; at most {FIELD_PATCHES_PER_FIELD} \
             (one field patch removes and sets any number of members)",
            place(row, field)
        ));
    }
    Ok(out)
}

/// `mods[row].field`, as errors name a row field.
fn place(row: usize, field: RowField) -> String {
    let field = match field {
        RowField::Keys => "keys",
        RowField::NewValues => "new_values",
        RowField::OldValues => "old_values",
    };
    format!("mods[{row}].{field}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> DataChangeRecord {
        crate::testing::users_update(serde_json::json!([
            {"keys": {"Id": "1"}, "new_values": {"Email": "a@x.io", "Name": "Ann"}, "old_values": {"Email": "b@x.io"}},
            {"keys": {"Id": "2"}, "new_values": {"Email": "c@x.io"}, "old_values": {}}
        ]))
    }

    fn field(row: u32, field: RowField, remove: &[&str], set: &str) -> FieldPatch {
        FieldPatch {
            row,
            field,
            remove: remove.iter().map(|n| n.to_string()).collect(),
            set: set.into(),
        }
    }

    fn patch(fields: Vec<FieldPatch>) -> RecordPatch {
        RecordPatch {
            fields,
            extra: None,
        }
    }

    #[test]
    fn patches_land_in_their_row_and_field_in_order_and_the_rest_is_the_base() {
        let base = record();
        let p = patch(vec![
            field(1, RowField::NewValues, &[], r#"{"Email":"[REDACTED]"}"#),
            field(0, RowField::OldValues, &["Email"], "{}"),
            field(0, RowField::NewValues, &[], r#"{"Email":1}"#),
            field(0, RowField::NewValues, &[], r#"{"Email":"[REDACTED]"}"#),
            field(0, RowField::Keys, &[], r#"{"Region":"eu"}"#),
        ]);
        let out = apply(&base, Some(r#"{"a":1}"#), p).unwrap();
        let mods = &out.record.mods;
        assert_eq!(
            mods[0].new_values.as_str(),
            r#"{"Email":"[REDACTED]","Name":"Ann"}"#
        );
        assert_eq!(mods[0].old_values.as_str(), "{}");
        assert_eq!(mods[0].keys.as_str(), r#"{"Id":"1","Region":"eu"}"#);
        assert_eq!(mods[1].new_values.as_str(), r#"{"Email":"[REDACTED]"}"#);
        assert_eq!(mods[1].keys, base.mods[1].keys);
        assert_eq!(out.extra.as_deref(), Some(r#"{"a":1}"#));
        let expected = DataChangeRecord {
            mods: out.record.mods.clone(),
            ..base.clone()
        };
        assert_eq!(
            out.record, expected,
            "metadata and column types are the base's"
        );
    }

    #[test]
    fn extra_is_replaced_only_when_the_patch_says_so() {
        let base = record();
        let with = |extra: Option<&str>| RecordPatch {
            fields: vec![],
            extra: extra.map(Into::into),
        };
        let kept = apply(&base, Some(r#"{"a":1}"#), with(None)).unwrap();
        assert_eq!(kept.extra.as_deref(), Some(r#"{"a":1}"#));
        let replaced = apply(&base, Some(r#"{"a":1}"#), with(Some(r#"{"b":2}"#))).unwrap();
        assert_eq!(replaced.extra.as_deref(), Some(r#"{"b":2}"#));
        let cleared = apply(&base, Some(r#"{"a":1}"#), with(Some("{}"))).unwrap();
        assert!(cleared.extra.is_none());
        let err = apply(&base, None, with(Some(r#"{"mods":1}"#)))
            .err()
            .unwrap();
        assert!(err.starts_with("extra sets \"mods\""), "{err}");
    }

    #[test]
    fn what_would_break_the_output_fails_the_record_naming_the_field_patch() {
        let base = record();
        let fails = |f: FieldPatch| apply(&base, None, patch(vec![f])).err().unwrap();
        assert_eq!(
            fails(field(2, RowField::Keys, &["Id"], "{}")),
            "patch fields[0] names row 2; the record has 2 row changes"
        );
        for bad in ["{\"a\":", r#"{"a":1} 2"#, "[1]", r#""x""#] {
            let err = fails(field(0, RowField::NewValues, &[], bad));
            assert!(
                err.starts_with("patch fields[0] (mods[0].new_values).set: not a JSON object"),
                "{bad}: {err}"
            );
        }
        let err = fails(field(1, RowField::OldValues, &[], r#"{"k":1,"k":2}"#));
        assert!(
            err.starts_with(r#"patch fields[0] (mods[1].old_values).set: names "k" twice"#),
            "{err}"
        );
        let many = (0..5)
            .map(|_| field(0, RowField::OldValues, &["A"], "{}"))
            .collect();
        assert_eq!(
            apply(&base, None, patch(many)).err().unwrap(),
            "patch has 5 field patches for mods[0].old_values; at most 4 (one field patch \
             removes and sets any number of members)"
        );
        let deep = format!(r#"{{"X":{}1{}}}"#, "[".repeat(64), "]".repeat(64));
        let err = fails(field(0, RowField::NewValues, &[], &deep));
        assert!(err.contains("nested 65 levels deep; at most 64"), "{err}");
        let fits = format!(r#"{{"X":{}1{}}}"#, "[".repeat(63), "]".repeat(63));
        let fine = field(0, RowField::NewValues, &[], &fits);
        assert!(apply(&base, None, patch(vec![fine])).is_ok());
    }

    #[test]
    fn settings_over_several_lines_are_put_on_one() {
        let base = record();
        let p = patch(vec![field(
            0,
            RowField::NewValues,
            &[],
            "{\"Name\":\n{\"a\": [1,\n2]}}",
        )]);
        let out = apply(&base, None, p).unwrap();
        assert_eq!(
            out.record.mods[0].new_values.as_str(),
            r#"{"Email":"a@x.io","Name":{"a":[1,2]}}"#
        );
    }
}
