//! Row fields as JSON object text: [`JsonObject`], checked once where it enters the host,
//! then carried as text and edited member by member ([`JsonObject::edited`]) without being
//! parsed again.
//!
//! Invariants: a [`JsonObject`]'s text is one JSON object on one line, and a [`JsonValue`]'s
//! one JSON value on one line. Text becomes either by a parse ([`JsonObject::from_text`],
//! [`JsonValue::from_text`]), or by an edit: checked values spliced between the members of
//! checked text, under names the edit encodes, make one object again. Scanning the members
//! of a text never reads past its end, whatever the text.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// A JSON object kept as the text Spanner sent. Records flow through screamer (and across
/// the plugin boundary) without parsing and re-serializing their values; parse on demand
/// with [`JsonObject::to_map`], [`JsonObject::get`] or [`JsonObject::parse`].
#[derive(Clone)]
pub struct JsonObject(Box<RawValue>);

/// Text that is not a JSON object.
#[derive(Debug, thiserror::Error)]
#[error("not a JSON object: {0}")]
pub struct NotAnObject(String);

impl JsonObject {
    /// Checks that `text` is one JSON object (`null` counts as `{}`), kept on one line.
    pub fn from_text(text: String) -> Result<Self, NotAnObject> {
        let trimmed = text.trim_start();
        if trimmed == "null" {
            return Ok(Self::default());
        }
        if !trimmed.starts_with('{') {
            return Err(NotAnObject(text));
        }
        // NDJSON needs one line; Spanner's text is compact, anything else is re-encoded.
        let text = if text.contains('\n') {
            let v: Value = serde_json::from_str(&text).map_err(|e| NotAnObject(e.to_string()))?;
            v.to_string()
        } else {
            text
        };
        RawValue::from_string(text)
            .map(Self)
            .map_err(|e| NotAnObject(e.to_string()))
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// Whether the object has no members.
    pub fn is_empty(&self) -> bool {
        self.to_map().is_empty()
    }

    /// The object's members, parsed.
    pub fn to_map(&self) -> Map<String, Value> {
        self.parse().unwrap_or_default()
    }

    /// One member, parsed; `None` when absent.
    pub fn get(&self, key: &str) -> Option<Value> {
        self.to_map().remove(key)
    }

    /// The object parsed into any deserializable type.
    pub fn parse<T: DeserializeOwned>(&self) -> serde_json::Result<T> {
        serde_json::from_str(self.0.get())
    }
}

impl Default for JsonObject {
    fn default() -> Self {
        Self(RawValue::from_string("{}".to_owned()).expect("valid JSON"))
    }
}

impl PartialEq for JsonObject {
    /// Equal as JSON values, whatever the spacing or member order of the text.
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str() || self.to_map() == other.to_map()
    }
}

impl fmt::Debug for JsonObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Map<String, Value>> for JsonObject {
    fn from(map: Map<String, Value>) -> Self {
        Self::from_text(Value::Object(map).to_string()).expect("a map is an object")
    }
}

impl Serialize for JsonObject {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for JsonObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(d)?;
        Self::from_text(raw.get().to_owned()).map_err(D::Error::custom)
    }
}

/// The text of one JSON value, checked, on one line: what an edit may put in a
/// [`JsonObject`].
#[derive(Clone)]
pub struct JsonValue(Box<RawValue>);

/// Text that is not one JSON value.
#[derive(Debug, thiserror::Error)]
#[error("not a JSON value: {0}")]
pub struct NotAValue(String);

impl JsonValue {
    /// Checks that `text` is one JSON value; text over several lines is re-encoded on one.
    pub fn from_text(text: String) -> Result<Self, NotAValue> {
        if is_plain_string(&text) || matches!(text.as_str(), "null" | "true" | "false") {
            // What a masking or hashing plugin sends; plainly valid, no parse needed.
            return Ok(Self(valid_by_construction(text)));
        }
        let text = if text.contains('\n') {
            let v: Value = serde_json::from_str(&text).map_err(|e| NotAValue(e.to_string()))?;
            v.to_string()
        } else {
            text
        };
        RawValue::from_string(text)
            .map(Self)
            .map_err(|e| NotAValue(e.to_string()))
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        self.0.get()
    }
}

impl fmt::Debug for JsonValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether `text` is a JSON string without escapes: a quote, then no quote, backslash or
/// control character, then a quote.
fn is_plain_string(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() >= 2
        && bytes[0] == b'"'
        && bytes[bytes.len() - 1] == b'"'
        && !bytes[1..bytes.len() - 1]
            .iter()
            .any(|&b| b == b'"' || b == b'\\' || b < 0x20)
}

/// `text` as a `RawValue` without the parse that checks it: for text that is valid JSON by
/// construction (the callers say why). Debug builds, the tests', parse it all the same.
fn valid_by_construction(text: String) -> Box<RawValue> {
    debug_assert!(
        serde_json::from_str::<serde::de::IgnoredAny>(&text).is_ok(),
        "not JSON: {text}"
    );
    // SAFETY: `RawValue` is `#[repr(transparent)]` over `str` (serde_json 1.x: its own
    // `RawValue::from_owned` is this transmute), so the two boxes have one layout; the
    // one invariant a `RawValue` has, valid JSON text, is the caller's to keep.
    unsafe { std::mem::transmute::<Box<str>, Box<RawValue>>(text.into_boxed_str()) }
}

/// One member of an object set to a value, or removed.
#[derive(Debug, Clone, Copy)]
pub struct MemberEdit<'a> {
    /// The member's name, unescaped.
    pub name: &'a str,
    /// Its new value; `None` removes it.
    pub value: Option<&'a JsonValue>,
}

impl JsonObject {
    /// This object with `edits` applied in order (of two edits of one member, the later
    /// wins): a member set keeps its place, a name the object lacks is added at its end, a
    /// member removed goes. The members no edit names are copied as they are, and nothing is
    /// parsed: the result is one object by construction.
    pub fn edited(&self, edits: &[MemberEdit<'_>]) -> JsonObject {
        let mut winners = Winners::of(edits);
        let text = self.as_str();
        let growth: usize = edits
            .iter()
            .map(|e| e.name.len() + e.value.map_or(0, |v| v.as_str().len()) + 8)
            .sum();
        let mut out = String::with_capacity(text.len() + growth);
        out.push('{');
        let push_member = |out: &mut String, name: &str, value: &str| {
            if out.len() > 1 {
                out.push(',');
            }
            out.push_str(name);
            out.push(':');
            out.push_str(value);
        };
        for member in Members::of(text) {
            let edit = match member.name_escaped {
                false => winners.winner(&member.quoted_name[1..member.quoted_name.len() - 1]),
                true => serde_json::from_str::<String>(member.quoted_name)
                    .ok()
                    .and_then(|name| winners.winner(&name)),
            };
            match edit {
                None => push_member(&mut out, member.quoted_name, member.value),
                Some(at) => {
                    winners.found(at);
                    if let Some(value) = edits[at].value {
                        push_member(&mut out, member.quoted_name, value.as_str());
                    }
                }
            }
        }
        for edit in winners.added() {
            let name = serde_json::to_string(edit.name).expect("a string encodes");
            let value = edit.value.expect("only values are added");
            push_member(&mut out, &name, value.as_str());
        }
        out.push('}');
        Self::spliced(out)
    }

    /// Text made by [`JsonObject::edited`]: one object by construction, so not parsed
    /// again (a parse would cost as much as the edit).
    fn spliced(text: String) -> JsonObject {
        JsonObject(valid_by_construction(text))
    }
}

/// Edits with more than this many are sorted by name once; fewer are scanned per member.
const SCANNED_EDITS: usize = 8;

/// Which edit of a list wins for a name (the last edit of it), and which winners found
/// their member in the object. A plugin may send many edits: past [`SCANNED_EDITS`] they
/// are sorted once, so that the host spends n log n on them, not n².
struct Winners<'e, 'v> {
    edits: &'e [MemberEdit<'v>],
    /// The winners' indices sorted by name, for many edits.
    sorted: Option<Vec<usize>>,
    /// By edit index: whether its member was in the object (a bit each, up to 64 edits).
    found: Found,
}

enum Found {
    Few(u64),
    Many(Vec<bool>),
}

impl<'e, 'v> Winners<'e, 'v> {
    fn of(edits: &'e [MemberEdit<'v>]) -> Self {
        let sorted = (edits.len() > SCANNED_EDITS).then(|| {
            let mut by_name: Vec<usize> = (0..edits.len()).collect();
            // By name, the later edit first: the first of each name is its winner.
            by_name.sort_by(|&i, &j| edits[i].name.cmp(edits[j].name).then(j.cmp(&i)));
            by_name.dedup_by(|later, first| edits[*later].name == edits[*first].name);
            by_name
        });
        let found = match edits.len() {
            0..=64 => Found::Few(0),
            n => Found::Many(vec![false; n]),
        };
        Winners {
            edits,
            sorted,
            found,
        }
    }

    /// The index of the edit that wins for `name`, if any edit names it.
    fn winner(&self, name: &str) -> Option<usize> {
        match &self.sorted {
            None => self.edits.iter().rposition(|e| e.name == name),
            Some(by_name) => by_name
                .binary_search_by(|&i| self.edits[i].name.cmp(name))
                .ok()
                .map(|k| by_name[k]),
        }
    }

    fn found(&mut self, at: usize) {
        match &mut self.found {
            Found::Few(bits) => *bits |= 1 << at,
            Found::Many(flags) => flags[at] = true,
        }
    }

    fn was_found(&self, at: usize) -> bool {
        match &self.found {
            Found::Few(bits) => bits & (1 << at) != 0,
            Found::Many(flags) => flags[at],
        }
    }

    /// The edits that add a member: winners with a value whose name the object lacked, in
    /// the order of the edits.
    fn added(&self) -> impl Iterator<Item = &'e MemberEdit<'v>> + '_ {
        self.edits.iter().enumerate().filter_map(move |(i, e)| {
            let adds = e.value.is_some() && !self.was_found(i) && self.winner(e.name) == Some(i);
            adds.then_some(e)
        })
    }
}

/// One member of an object's text.
#[derive(Debug, PartialEq)]
struct Member<'a> {
    /// The name with its quotes, as written.
    quoted_name: &'a str,
    /// Whether the name has an escape in it (compare it unescaped, then).
    name_escaped: bool,
    /// The value's text.
    value: &'a str,
}

/// The members of an object's text, in order. Text that is not an object ends them early.
struct Members<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Members<'a> {
    fn of(text: &'a str) -> Self {
        let bytes = text.as_bytes();
        let at = skip_space(bytes, 0);
        let at = if bytes.get(at) == Some(&b'{') {
            at + 1
        } else {
            bytes.len()
        };
        Members { text, at }
    }
}

impl<'a> Iterator for Members<'a> {
    type Item = Member<'a>;

    fn next(&mut self) -> Option<Member<'a>> {
        let bytes = self.text.as_bytes();
        let mut i = skip_space(bytes, self.at);
        if bytes.get(i) == Some(&b',') {
            i = skip_space(bytes, i + 1);
        }
        if bytes.get(i) != Some(&b'"') {
            self.at = bytes.len();
            return None;
        }
        let (name_end, name_escaped) = string_end(bytes, i + 1);
        let colon = skip_space(bytes, name_end + 1);
        if bytes.get(colon) != Some(&b':') {
            self.at = bytes.len();
            return None;
        }
        let start = skip_space(bytes, colon + 1);
        let end = value_end(bytes, start);
        self.at = end;
        Some(Member {
            quoted_name: self.text.get(i..=name_end)?,
            name_escaped,
            value: self.text.get(start..end)?,
        })
    }
}

fn skip_space(bytes: &[u8], mut i: usize) -> usize {
    while matches!(bytes.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// Where the value starting at `start` ends (one past its last byte).
fn value_end(bytes: &[u8], start: usize) -> usize {
    match bytes.get(start) {
        Some(b'"') => (string_end(bytes, start + 1).0 + 1).min(bytes.len()),
        Some(b'{' | b'[') => {
            let mut depth = 0usize;
            let mut i = start;
            while i < bytes.len() {
                match bytes[i] {
                    b'"' => i = string_end(bytes, i + 1).0,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return i + 1;
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            bytes.len()
        }
        _ => {
            let mut i = start;
            while i < bytes.len()
                && !matches!(bytes[i], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
            {
                i += 1;
            }
            i
        }
    }
}

/// Where the string whose text starts at `start` ends (its closing quote, or the end of
/// the text when unterminated), and whether it has escapes. Strings are most of a row's
/// text: eight bytes at a time.
pub(crate) fn string_end(bytes: &[u8], start: usize) -> (usize, bool) {
    let mut escapes = false;
    let mut i = start;
    loop {
        i = next_quote_or_backslash(bytes, i);
        match bytes.get(i) {
            Some(b'"') => return (i, escapes),
            // An escape: skip it and the character it escapes.
            Some(_) => {
                escapes = true;
                i += 2;
            }
            None => return (bytes.len(), escapes),
        }
    }
}

/// The index of the first `"` or `\` at or after `i`, else the text's length: a word at a
/// time, with the classic test for a zero byte in a word (exact for the lowest match,
/// which is the one taken), then byte by byte for the tail.
fn next_quote_or_backslash(bytes: &[u8], mut i: usize) -> usize {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    let zero_bytes = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    while let Some(word) = bytes.get(i..i + 8) {
        let w = u64::from_le_bytes(word.try_into().expect("eight bytes"));
        let found =
            zero_bytes(w ^ (ONES * u64::from(b'"'))) | zero_bytes(w ^ (ONES * u64::from(b'\\')));
        if found != 0 {
            return i + (found.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < bytes.len() && bytes[i] != b'"' && bytes[i] != b'\\' {
        i += 1;
    }
    i.min(bytes.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_objects_keep_their_text_and_compare_as_values() {
        let a = JsonObject::from_text(r#"{"b": 1, "a": "x"}"#.to_owned()).unwrap();
        let b = JsonObject::from_text(r#"{"a":"x","b":1}"#.to_owned()).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.as_str(), r#"{"b": 1, "a": "x"}"#);
        assert_eq!(a.get("a"), Some(Value::from("x")));
        assert!(JsonObject::from_text("null".into()).unwrap().is_empty());
        assert!(JsonObject::from_text("[1]".into()).is_err());
        let multi_line = JsonObject::from_text("{\n\"a\": 1\n}".into()).unwrap();
        assert_eq!(multi_line.as_str(), r#"{"a":1}"#);
    }

    #[test]
    fn the_word_at_a_time_search_finds_what_a_byte_loop_finds() {
        let text = br#"abcdefgh"ijklmnopqrs\tuvwxyz0123456789"\"#;
        for start in 0..text.len() + 3 {
            for end in start.min(text.len())..=text.len() {
                let naive = (start..end)
                    .find(|&i| text[i] == b'"' || text[i] == b'\\')
                    .unwrap_or(end);
                assert_eq!(
                    next_quote_or_backslash(&text[..end], start),
                    naive.max(start.min(end)),
                    "{start}..{end}"
                );
            }
        }
    }

    fn value(text: &str) -> JsonValue {
        JsonValue::from_text(text.to_owned()).unwrap()
    }

    fn edited(object: &str, edits: &[(&str, Option<&JsonValue>)]) -> String {
        let edits: Vec<MemberEdit<'_>> = edits
            .iter()
            .map(|&(name, value)| MemberEdit { name, value })
            .collect();
        let object = JsonObject::from_text(object.to_owned()).unwrap();
        let out = object.edited(&edits);
        // One object whatever the edits: the parse the splice skips must succeed.
        let _: Map<String, Value> = serde_json::from_str(out.as_str()).unwrap();
        out.as_str().to_owned()
    }

    #[test]
    fn edits_set_remove_and_add_members_and_copy_the_rest_verbatim() {
        let (x, n) = (value(r#""x""#), value("null"));
        let text = r#"{"A":1.50,"B":"\u00c5","C":[1,{"D":"}"}],"E":{}}"#;
        assert_eq!(
            edited(text, &[("B", Some(&x)), ("E", None), ("Z", Some(&n))]),
            r#"{"A":1.50,"B":"x","C":[1,{"D":"}"}],"Z":null}"#
        );
        assert_eq!(
            edited(text, &[("A", None)]),
            r#"{"B":"\u00c5","C":[1,{"D":"}"}],"E":{}}"#
        );
        assert_eq!(edited(text, &[("Nope", None)]), text);
        assert_eq!(edited("{}", &[("A", None)]), "{}");
        assert_eq!(edited("{}", &[("A", Some(&x))]), r#"{"A":"x"}"#);
        // Only top-level members: a nested "D" is not one.
        assert_eq!(
            edited(text, &[("D", Some(&x))]),
            format!("{}{}", &text[..text.len() - 1], r#","D":"x"}"#)
        );
    }

    #[test]
    fn of_two_edits_of_a_member_the_later_wins_and_names_are_compared_unescaped() {
        let (one, two) = (value("1"), value("2"));
        assert_eq!(
            edited(
                r#"{"a":0}"#,
                &[("a", Some(&one)), ("a", None), ("a", Some(&two))]
            ),
            r#"{"a":2}"#
        );
        assert_eq!(
            edited(r#"{"a":0}"#, &[("a", Some(&one)), ("a", None)]),
            "{}"
        );
        assert_eq!(
            edited(
                r#"{"q\"t":0,"\u0061":0}"#,
                &[("q\"t", Some(&one)), ("a", Some(&two))]
            ),
            r#"{"q\"t":1,"\u0061":2}"#
        );
        // Added names are encoded, in the order of their edits.
        assert_eq!(
            edited("{}", &[("z\"", Some(&one)), ("b", Some(&two))]),
            r#"{"z\"":1,"b":2}"#
        );
    }

    #[test]
    fn spacing_between_members_and_values_is_understood() {
        let one = value("1");
        let text = " { \"a\" : [ 1 , 2 ] ,\t\"b\":true , \"c\" : \"s\" } ";
        let object = JsonObject::from_text(text.to_owned()).unwrap();
        let members: Vec<(&str, &str)> = Members::of(object.as_str())
            .map(|m| (m.quoted_name, m.value))
            .collect();
        assert_eq!(
            members,
            [
                (r#""a""#, "[ 1 , 2 ]"),
                (r#""b""#, "true"),
                (r#""c""#, r#""s""#)
            ]
        );
        assert_eq!(
            edited(text, &[("b", Some(&one))]),
            r#"{"a":[ 1 , 2 ],"b":1,"c":"s"}"#
        );
    }

    #[test]
    fn a_text_that_is_not_an_object_has_no_members_and_is_never_read_past_its_end() {
        for broken in [
            "",
            "[1]",
            "{",
            r#"{"a"#,
            r#"{"a":"#,
            r#"{"a":"x"#,
            r#"{"a":[1,"#,
            r#"{"a" 1}"#,
        ] {
            assert!(Members::of(broken).count() <= 1, "{broken:?}");
        }
    }

    #[test]
    fn many_edits_of_a_wide_object_each_land_once() {
        let wide = format!(
            "{{{}}}",
            (0..300)
                .map(|c| format!(r#""C{c}":{c}"#))
                .collect::<Vec<_>>()
                .join(",")
        );
        let v = value("0");
        let names: Vec<String> = (0..600).rev().map(|c| format!("C{c}")).collect();
        let edits: Vec<(&str, Option<&JsonValue>)> =
            names.iter().map(|n| (n.as_str(), Some(&v))).collect();
        let out: Map<String, Value> = serde_json::from_str(&edited(&wide, &edits)).unwrap();
        assert_eq!(out.len(), 600);
        assert!(out.values().all(|v| v == 0));
        assert_eq!(
            out.keys().nth(300).map(String::as_str),
            Some("C599"),
            "added in edit order"
        );
    }

    #[test]
    fn plain_strings_and_literals_are_taken_without_a_parse_and_nothing_else_is() {
        for plain in [r#""[REDACTED]""#, r#""""#, "null", "true", "false", "\"\u{e5}\""] {
            assert_eq!(value(plain).as_str(), plain);
            assert_eq!(value(plain).0.get(), plain, "the raw value is the text");
        }
        for broken in ["\"", r#""a"b""#, r#""a\""#, "\"a\u{1}\"", "nul", "True"] {
            assert!(JsonValue::from_text(broken.to_owned()).is_err(), "{broken:?}");
        }
        assert!(!is_plain_string(r#""a\"b""#));
    }
}
