//! A plugin's `patch` outcome applied to the record it was handed: the member edits spliced
//! into the record's row fields, its extra fields replaced when the patch says so.
//!
//! Place in the flow: the chain, after a plugin's call, for each record whose outcome is a
//! patch; the patched record goes on to the next plugin as a host record.
//!
//! Invariants: the base record is a checked host record, and every new value is checked
//! (its nesting and keys by [`shape`], its syntax by a parse of the value alone) before it is
//! spliced in, so the patched row fields are objects without a parse of their whole text.
//! An edit naming a row the record lacks fails the record, naming the edit. The work is
//! linear in the record and the edits (sorting aside), whatever a plugin sends.

use super::bindings::{MemberEdit as WitEdit, RecordPatch, RowField};
use super::convert::{metadata_of, parse_extra};
use super::shape;
use crate::record::{DataChangeRecord, JsonObject, JsonValue, MemberEdit, Mod};

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
    let edits = checked(patch.edits, base.mods.len())?;
    let mut mods: Vec<Mod> = Vec::with_capacity(base.mods.len());
    let mut rest = &edits[..];
    for (row, m) in base.mods.iter().enumerate() {
        let (mine, after) = rest.split_at(rest.partition_point(|e| e.row == row));
        rest = after;
        let field = |which: RowField, object: &JsonObject| {
            let edits: Vec<MemberEdit<'_>> = mine
                .iter()
                .filter(|e| e.field == which)
                .map(|e| e.edit())
                .collect();
            match edits.is_empty() {
                true => object.clone(),
                false => object.edited(&edits),
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

/// An edit whose row is in range and whose value is checked.
struct Checked {
    row: usize,
    field: RowField,
    name: String,
    value: Option<JsonValue>,
}

impl Checked {
    fn edit(&self) -> MemberEdit<'_> {
        MemberEdit {
            name: &self.name,
            value: self.value.as_ref(),
        }
    }
}

/// The edits with their rows checked against `rows` and their values checked, ordered by
/// row (edits of one row keep their order: a later edit of a member wins).
fn checked(edits: Vec<WitEdit>, rows: usize) -> Result<Vec<Checked>, String> {
    let mut out = Vec::with_capacity(edits.len());
    for (i, e) in edits.into_iter().enumerate() {
        let row = e.row as usize;
        if row >= rows {
            return Err(format!(
                "patch edits[{i}] names row {row}; the record has {rows} row change{}",
                if rows == 1 { "" } else { "s" }
            ));
        }
        let at = || format!("patch edits[{i}] ({}.{})", place(row, e.field), e.name);
        let value = match e.value {
            None => None,
            Some(text) => {
                // One level down: the value is a member of the row field's object.
                shape::check_at(&text, 1).map_err(|err| format!("{}: {err}", at()))?;
                let value =
                    JsonValue::from_text(text).map_err(|err| format!("{}: {err}", at()))?;
                Some(value)
            }
        };
        out.push(Checked {
            row,
            field: e.field,
            name: e.name,
            value,
        });
    }
    out.sort_by_key(|e| e.row);
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
        serde_json::from_value(serde_json::json!({
            "partition_token": "tok", "commit_timestamp": "2026-11-27T20:00:00.123456789Z",
            "record_sequence": "00000001", "server_transaction_id": "tx",
            "is_last_record_in_transaction_in_partition": true, "table_name": "Users",
            "column_types": [{"name": "Id", "type": {"code": "INT64"}, "is_primary_key": true, "ordinal_position": 1}],
            "mods": [
                {"keys": {"Id": "1"}, "new_values": {"Email": "a@x.io", "Name": "Ann"}, "old_values": {"Email": "b@x.io"}},
                {"keys": {"Id": "2"}, "new_values": {"Email": "c@x.io"}, "old_values": {}}
            ],
            "mod_type": "UPDATE", "value_capture_type": "OLD_AND_NEW_VALUES",
            "number_of_records_in_transaction": 2, "number_of_partitions_in_transaction": 1,
            "transaction_tag": "t", "is_system_transaction": false
        }))
        .unwrap()
    }

    fn edit(row: u32, field: RowField, name: &str, value: Option<&str>) -> WitEdit {
        WitEdit {
            row,
            field,
            name: name.into(),
            value: value.map(Into::into),
        }
    }

    fn patch(edits: Vec<WitEdit>) -> RecordPatch {
        RecordPatch { edits, extra: None }
    }

    #[test]
    fn edits_land_in_their_row_and_field_and_the_rest_is_the_base() {
        let base = record();
        let p = patch(vec![
            edit(1, RowField::NewValues, "Email", Some(r#""[REDACTED]""#)),
            edit(0, RowField::OldValues, "Email", None),
            edit(0, RowField::NewValues, "Email", Some("1")),
            edit(0, RowField::NewValues, "Email", Some(r#""[REDACTED]""#)),
            edit(0, RowField::Keys, "Region", Some(r#""eu""#)),
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
            edits: vec![],
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
    fn what_would_break_the_output_fails_the_record_naming_the_edit() {
        let base = record();
        let fails = |e: WitEdit| apply(&base, None, patch(vec![e])).err().unwrap();
        assert_eq!(
            fails(edit(2, RowField::Keys, "Id", Some("1"))),
            "patch edits[0] names row 2; the record has 2 row changes"
        );
        let err = fails(edit(0, RowField::NewValues, "Email", Some("{\"a\":")));
        assert!(
            err.starts_with("patch edits[0] (mods[0].new_values.Email): not a JSON value"),
            "{err}"
        );
        let err = fails(edit(0, RowField::NewValues, "Email", Some("1 2")));
        assert!(err.contains("not a JSON value"), "{err}");
        let err = fails(edit(1, RowField::OldValues, "X", Some(r#"{"k":1,"k":2}"#)));
        assert!(
            err.starts_with(r#"patch edits[0] (mods[1].old_values.X): names "k" twice"#),
            "{err}"
        );
        let deep = format!("{}1{}", "[".repeat(64), "]".repeat(64));
        let err = fails(edit(0, RowField::NewValues, "X", Some(&deep)));
        assert!(err.contains("nested 65 levels deep; at most 64"), "{err}");
        let fits = format!("{}1{}", "[".repeat(63), "]".repeat(63));
        assert!(
            apply(
                &base,
                None,
                patch(vec![edit(0, RowField::NewValues, "X", Some(&fits))])
            )
            .is_ok()
        );
    }

    #[test]
    fn a_value_over_several_lines_is_put_on_one() {
        let base = record();
        let p = patch(vec![edit(
            0,
            RowField::NewValues,
            "Name",
            Some("{\n\"a\": [1,\n2]}"),
        )]);
        let out = apply(&base, None, p).unwrap();
        assert_eq!(
            out.record.mods[0].new_values.as_str(),
            r#"{"Email":"a@x.io","Name":{"a":[1,2]}}"#
        );
    }
}
#[cfg(test)]
mod timing {
    use super::*;
    use crate::plugin::bindings::screamer::plugin::types::{ChangeRecordResult, RowChangeResult};
    #[test]
    #[ignore]
    fn time_it() {
        let row = |v: &str| serde_json::json!({
            "Email": "customer1@example.com",
            "FirstName": "Alexandra", "LastName": "Johnson-Whitfield",
            "Phone": "+1-555-0100-2233", "Street": "1234 Longwood Avenue, Apt 56",
            "City": "Springfield", "Country": "US",
            "Status": v, "UpdatedAt": "2026-11-27T20:00:00.123456Z",
        });
        let mut base = tests_record();
        base.mods.truncate(1);
        base.mods[0].new_values = JsonObject::from_text(row("active").to_string()).unwrap();
        base.mods[0].old_values = JsonObject::from_text(row("pending").to_string()).unwrap();
        let e = |f, n: &str| WitEdit { row: 0, field: f, name: n.into(), value: Some("\"[REDACTED]\"".into()) };
        let n = 200_000;
        let t = std::time::Instant::now();
        for _ in 0..n {
            let p = RecordPatch { edits: vec![e(RowField::NewValues, "Email"), e(RowField::NewValues, "Phone"), e(RowField::OldValues, "Email"), e(RowField::OldValues, "Phone")], extra: None };
            std::hint::black_box(apply(&base, None, p).unwrap());
        }
        eprintln!("patch apply: {:?}/record", t.elapsed() / n);
        let edits = vec![e(RowField::NewValues, "Email"), e(RowField::NewValues, "Phone"), e(RowField::OldValues, "Email"), e(RowField::OldValues, "Phone")];
        let t = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(checked(edits.clone(), 1).unwrap());
        }
        eprintln!("checked: {:?}/record", t.elapsed() / n);
        let c = checked(edits.clone(), 1).unwrap();
        let me: Vec<MemberEdit<'_>> = c[..2].iter().map(|e| e.edit()).collect();
        let t = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(base.mods[0].new_values.edited(&me));
        }
        eprintln!("edited (one field): {:?}", t.elapsed() / n);

        let t = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(JsonObject::from_text(base.mods[0].new_values.as_str().to_owned()).unwrap());
        }
        eprintln!("from_text (one field): {:?}", t.elapsed() / n);
        let redacted = |v: &str| { let mut r = row(v); r["Email"] = "[REDACTED]".into(); r["Phone"] = "[REDACTED]".into(); r.to_string() };
        let (nv, ov) = (redacted("active"), redacted("pending"));
        let t = std::time::Instant::now();
        for _ in 0..n {
            let r = ChangeRecordResult { table_name: "Users".into(), mod_type: crate::plugin::bindings::ModType::Update, mods: vec![RowChangeResult { keys: base.mods[0].keys.as_str().into(), new_values: nv.clone(), old_values: ov.clone() }], extra: None };
            std::hint::black_box(crate::plugin::convert::to_host(r, &base).unwrap());
        }
        eprintln!("replace to_host: {:?}/record", t.elapsed() / n);
        let t = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(base.clone());
        }
        eprintln!("clone: {:?}/record", t.elapsed() / n);
        let t = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(metadata_of(&base));
        }
        eprintln!("metadata_of: {:?}/record", t.elapsed() / n);
    }
    fn tests_record() -> DataChangeRecord {
        serde_json::from_value(serde_json::json!({
            "partition_token": "AUZoT0lCQ0lqbmE5RVhmOGRsM3RLU05adHBhcnRpdGlvbnRva2VuZXhhbXBsZQ", "commit_timestamp": "2026-11-27T20:00:00.123456789Z",
            "record_sequence": "00000001", "server_transaction_id": "MTY4NzE5NjI5ODU0NjQ2MTkxMQ==",
            "is_last_record_in_transaction_in_partition": true, "table_name": "Users",
            "column_types": [{"name": "Id", "type": {"code": "INT64"}, "is_primary_key": true, "ordinal_position": 1}],
            "mods": [{"keys": {"Id": "1"}, "new_values": {}, "old_values": {}}],
            "mod_type": "UPDATE", "value_capture_type": "OLD_AND_NEW_VALUES",
            "number_of_records_in_transaction": 2, "number_of_partitions_in_transaction": 1,
            "transaction_tag": "app=crm", "is_system_transaction": false
        })).unwrap()
    }
}
