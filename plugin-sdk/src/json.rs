//! A row field's JSON object read and edited member by member, without parsing the values
//! a plugin leaves alone.
//!
//! Row fields (`keys`, `new_values`, `old_values`) are the text of one JSON object. Parsing
//! one into a [`serde_json::Map`] builds every value (a 1 KB row of ten columns: a dozen
//! allocations) and writing it back re-encodes them all. [`members`] borrows instead: each
//! member is its name and its value's raw text, checked but not built; [`edit_members`]
//! copies the untouched members' text as it is and encodes only the replaced values. A
//! plugin that masks, hashes or drops a few columns does most of its work here.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::JsonError;

/// The members of a JSON object's text, in order: each name and its value's raw JSON text.
/// `""` and `null` are an object without members (what the host sends for an absent field).
pub fn members<'a>(
    text: &'a str,
    what: &str,
) -> Result<Vec<(Cow<'a, str>, &'a RawValue)>, JsonError> {
    if text.is_empty() || text.trim() == "null" {
        return Ok(Vec::new());
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let members = de
        .deserialize_map(MembersVisitor)
        .and_then(|m| de.end().map(|()| m))
        .map_err(|e| format!("{what} is not a JSON object: {e}"))?;
    Ok(members)
}

/// The raw JSON text of member `name` (the last, should the object repeat it, as a parsed
/// map would keep), or `None` when the object has none.
pub fn member<'a>(
    text: &'a str,
    name: &str,
    what: &str,
) -> Result<Option<&'a RawValue>, JsonError> {
    Ok(members(text, what)?
        .into_iter()
        .rev()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v))
}

/// The object's text with the value of each member for which `edit` returns `Some`
/// replaced by that value; the other members are copied as they are, in order. `Ok(None)`
/// when `edit` replaced nothing (the text can then be kept).
pub fn edit_members(
    text: &str,
    what: &str,
    mut edit: impl FnMut(&str, &RawValue) -> Option<Value>,
) -> Result<Option<String>, JsonError> {
    let members = members(text, what)?;
    let mut out = String::with_capacity(text.len() + 16);
    let mut changed = false;
    out.push('{');
    for (i, (name, value)) in members.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let edited = edit(&name, value);
        push_name(&mut out, name);
        out.push(':');
        match edited {
            Some(new) => {
                changed = true;
                // `to_string` of the serializer, not `Display`: no formatter in between.
                out.push_str(&serde_json::to_string(&new).expect("a Value always encodes"));
            }
            None => out.push_str(value.get()),
        }
    }
    out.push('}');
    Ok(changed.then_some(out))
}

/// `name` as a JSON string. A borrowed name had no escapes in the text (it could not be
/// borrowed otherwise), so it needs none now.
fn push_name(out: &mut String, name: Cow<'_, str>) {
    match name {
        Cow::Borrowed(plain) => {
            out.push('"');
            out.push_str(plain);
            out.push('"');
        }
        Cow::Owned(unescaped) => {
            out.push_str(&serde_json::to_string(&unescaped).expect("a string always encodes"))
        }
    }
}

struct MembersVisitor;

impl<'de> Visitor<'de> for MembersVisitor {
    type Value = Vec<(Cow<'de, str>, &'de RawValue)>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut members = Vec::with_capacity(map.size_hint().unwrap_or(8));
        while let Some((Name(name), value)) = map.next_entry::<Name<'de>, &'de RawValue>()? {
            members.push((name, value));
        }
        Ok(members)
    }
}

/// A member's name, borrowed from the text unless it has escapes.
struct Name<'a>(Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct NameVisitor;
        impl<'de> Visitor<'de> for NameVisitor {
            type Value = Name<'de>;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a member name")
            }

            fn visit_borrowed_str<E>(self, name: &'de str) -> Result<Self::Value, E> {
                Ok(Name(Cow::Borrowed(name)))
            }

            fn visit_str<E>(self, name: &str) -> Result<Self::Value, E> {
                Ok(Name(Cow::Owned(name.to_owned())))
            }
        }
        d.deserialize_str(NameVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_names_and_raw_values_in_order() {
        let text = r#"{"Id":"7","Tags":[1, 2],"Note":null,"Esc\"aped":{"a":1}}"#;
        let got: Vec<(String, &str)> = members(text, "v")
            .unwrap()
            .into_iter()
            .map(|(n, v)| (n.into_owned(), v.get()))
            .collect();
        assert_eq!(
            got,
            [
                ("Id".to_owned(), r#""7""#),
                ("Tags".to_owned(), "[1, 2]"),
                ("Note".to_owned(), "null"),
                ("Esc\"aped".to_owned(), r#"{"a":1}"#),
            ]
        );
        assert!(members("", "v").unwrap().is_empty());
        assert!(members("null", "v").unwrap().is_empty());
        assert_eq!(member(text, "Note", "v").unwrap().unwrap().get(), "null");
        assert!(member(text, "Nope", "v").unwrap().is_none());
    }

    #[test]
    fn what_is_not_one_object_is_an_error_naming_the_field() {
        for bad in ["[1]", "{\"a\":1} {}", "{\"a\":}", "\"x\""] {
            let err = members(bad, "new_values").unwrap_err();
            assert!(
                err.starts_with("new_values is not a JSON object"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn edits_replace_only_the_chosen_values_and_keep_the_rest_verbatim() {
        let text = r#"{"Email":"a@x.io","Name":"\u00c5sa","Esc\"aped":1.50}"#;
        let edited = edit_members(text, "v", |name, _| {
            (name == "Email" || name == "Esc\"aped").then(|| Value::from("[REDACTED]"))
        })
        .unwrap()
        .unwrap();
        assert_eq!(
            edited,
            r#"{"Email":"[REDACTED]","Name":"\u00c5sa","Esc\"aped":"[REDACTED]"}"#
        );
        assert_eq!(edit_members(text, "v", |_, _| None).unwrap(), None);
        assert_eq!(
            edit_members("", "v", |_, _| Some(Value::Null)).unwrap(),
            None
        );
    }
}
