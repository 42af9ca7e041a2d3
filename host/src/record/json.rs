//! Row fields as JSON object text: [`JsonObject`], checked once where it enters the host,
//! then carried as text and edited member by member ([`JsonObject::edited`]) without being
//! parsed again.
//!
//! Invariants: a [`JsonObject`]'s text is one JSON object on one line. Text becomes one by
//! a parse ([`JsonObject::from_text`]), or by an edit: members of a checked object spliced
//! between the members of a checked object make one object again. Scanning the members of
//! a text never reads past its end, whatever the text.

use std::borrow::Cow;
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

impl JsonObject {
    /// This object with the members named in `remove` removed, then the members of `set`
    /// set: a member set keeps its place, one the object lacks (or had removed) is added at
    /// its end, in `set`'s order. Names are compared unescaped. The members neither names
    /// are copied as they are, and nothing is parsed: values of a checked object spliced
    /// between the members of a checked object, under names as written, make one object.
    pub fn edited(&self, remove: &[String], set: &JsonObject) -> JsonObject {
        let setting: Vec<(Cow<'_, str>, Member<'_>)> =
            Members::of(set.as_str()).map(|m| (m.name(), m)).collect();
        let to_set = Lookup::of(&setting, |(name, _)| name);
        let to_remove = Lookup::of(remove, |name| name);
        let mut found = Found::with_len(setting.len());
        let text = self.as_str();
        let mut out = String::with_capacity(text.len() + set.as_str().len());
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
            let name = member.name();
            if to_remove.find(remove, |n| n, &name).is_some() {
                continue;
            }
            match to_set.find(&setting, |(n, _)| n, &name) {
                None => push_member(&mut out, member.quoted_name, member.value),
                Some(at) => {
                    found.set(at);
                    push_member(&mut out, member.quoted_name, setting[at].1.value);
                }
            }
        }
        for (at, (_, m)) in setting.iter().enumerate() {
            if !found.get(at) {
                push_member(&mut out, m.quoted_name, m.value);
            }
        }
        out.push('}');
        JsonObject(valid_by_construction(out))
    }
}

/// Lists with more names than this are sorted once for a binary search per member; fewer
/// are scanned.
const SCANNED_NAMES: usize = 8;

/// Finds a name in a list: a plugin may send many names, and the host must spend n log n
/// on them, not n².
struct Lookup {
    /// For a long list: its indices sorted by name.
    sorted: Option<Vec<usize>>,
}

impl Lookup {
    fn of<T, S: AsRef<str> + ?Sized>(list: &[T], name: impl Fn(&T) -> &S) -> Self {
        let sorted = (list.len() > SCANNED_NAMES).then(|| {
            let mut by_name: Vec<usize> = (0..list.len()).collect();
            by_name.sort_by(|&i, &j| name(&list[i]).as_ref().cmp(name(&list[j]).as_ref()));
            by_name
        });
        Lookup { sorted }
    }

    /// The index of an item of `list` named `wanted`.
    fn find<T, S: AsRef<str> + ?Sized>(
        &self,
        list: &[T],
        name: impl Fn(&T) -> &S,
        wanted: &str,
    ) -> Option<usize> {
        match &self.sorted {
            None => list.iter().position(|item| name(item).as_ref() == wanted),
            Some(by_name) => by_name
                .binary_search_by(|&i| name(&list[i]).as_ref().cmp(wanted))
                .ok()
                .map(|k| by_name[k]),
        }
    }
}

/// Which members of `set` were found in the object: a bit each, in a word for up to 64.
enum Found {
    Few(u64),
    Many(Vec<bool>),
}

impl Found {
    fn with_len(n: usize) -> Self {
        match n {
            0..=64 => Found::Few(0),
            n => Found::Many(vec![false; n]),
        }
    }

    fn set(&mut self, at: usize) {
        match self {
            Found::Few(bits) => *bits |= 1 << at,
            Found::Many(flags) => flags[at] = true,
        }
    }

    fn get(&self, at: usize) -> bool {
        match self {
            Found::Few(bits) => bits & (1 << at) != 0,
            Found::Many(flags) => flags[at],
        }
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

impl<'a> Member<'a> {
    /// The name, unescaped.
    fn name(&self) -> Cow<'a, str> {
        match self.name_escaped {
            false => Cow::Borrowed(&self.quoted_name[1..self.quoted_name.len() - 1]),
            true => serde_json::from_str::<String>(self.quoted_name)
                .map_or(Cow::Borrowed(self.quoted_name), Cow::Owned),
        }
    }
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
// Inlined into the shape check's loop in another module: the string scan is its hot path.
#[inline]
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
#[inline]
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

    fn edited(object: &str, remove: &[&str], set: &str) -> String {
        let remove: Vec<String> = remove.iter().map(|n| n.to_string()).collect();
        let object = JsonObject::from_text(object.to_owned()).unwrap();
        let set = JsonObject::from_text(set.to_owned()).unwrap();
        let out = object.edited(&remove, &set);
        // One object whatever the edits: the parse the splice skips must succeed.
        let _: Map<String, Value> = serde_json::from_str(out.as_str()).unwrap();
        assert_eq!(out.0.get(), out.as_str(), "the raw value is the text");
        out.as_str().to_owned()
    }

    #[test]
    fn edits_set_remove_and_add_members_and_copy_the_rest_verbatim() {
        let text = r#"{"A":1.50,"B":"\u00c5","C":[1,{"D":"}"}],"E":{}}"#;
        assert_eq!(
            edited(text, &["E"], r#"{"B":"x","Z":null}"#),
            r#"{"A":1.50,"B":"x","C":[1,{"D":"}"}],"Z":null}"#
        );
        assert_eq!(
            edited(text, &["A"], "{}"),
            r#"{"B":"\u00c5","C":[1,{"D":"}"}],"E":{}}"#
        );
        assert_eq!(edited(text, &["Nope"], "{}"), text);
        assert_eq!(edited("{}", &["A"], "{}"), "{}");
        assert_eq!(edited("{}", &[], r#"{"A":"x"}"#), r#"{"A":"x"}"#);
        // Only top-level members: a nested "D" is not one.
        assert_eq!(
            edited(text, &[], r#"{"D":"x"}"#),
            format!("{}{}", &text[..text.len() - 1], r#","D":"x"}"#)
        );
    }

    #[test]
    fn removals_come_first_and_names_are_compared_unescaped() {
        // Removed, then set: set, at the end.
        assert_eq!(
            edited(r#"{"a":0,"b":1}"#, &["a"], r#"{"a":2}"#),
            r#"{"b":1,"a":2}"#
        );
        assert_eq!(
            edited(
                r#"{"q\"t":0,"\u0061":0,"b":0}"#,
                &["b"],
                r#"{"q\"t":1,"a":2}"#
            ),
            r#"{"q\"t":1,"\u0061":2}"#
        );
        assert_eq!(
            edited(r#"{"a":0}"#, &["\u{61}"], r#"{"\u0062":1}"#),
            r#"{"\u0062":1}"#
        );
    }

    #[test]
    fn spacing_between_members_and_values_is_understood() {
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
            edited(text, &[], "{ \"b\" : 1 }"),
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
    fn many_names_in_a_wide_object_each_land_once() {
        let object = |range: std::ops::Range<usize>, value: &str| {
            let members: Vec<String> = range.map(|c| format!(r#""C{c}":{value}"#)).collect();
            format!("{{{}}}", members.join(","))
        };
        let removed: Vec<String> = (0..100).map(|c| format!("C{c}")).collect();
        let removed: Vec<&str> = removed.iter().map(String::as_str).collect();
        let out = edited(&object(0..300, "1"), &removed, &object(200..600, "0"));
        let out: Map<String, Value> = serde_json::from_str(&out).unwrap();
        assert_eq!(out.len(), 500);
        assert_eq!(out.keys().next().map(String::as_str), Some("C100"));
        assert!(
            out.iter()
                .all(|(k, v)| (*v == 0) == (k.as_str() >= "C200" || k.len() == 2))
        );
        assert_eq!(
            out.keys().nth(200).map(String::as_str),
            Some("C300"),
            "added in the order of the set"
        );
    }
}
