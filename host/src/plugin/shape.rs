//! The shape of the JSON a plugin returns, checked before it can reach an output line: how
//! deep it nests and whether an object names a key twice. Syntax is not this module's: the
//! parse into a [`JsonObject`](crate::JsonObject) that follows refuses broken text.
//!
//! Invariants: one pass over the text, no allocation for objects of up to [`INLINE_KEYS`]
//! keys, never reading past the end whatever the text. This runs on every row field a
//! plugin changes, so it is on the hot path of every replacing plugin (the plugin bench's
//! redact checks two 0.8 KB fields per record).

use crate::record::string_end;

/// How deep a plugin's JSON may nest. Its objects sit a few levels down the output line
/// (`mods`, a mod, `new_values`), and every reader of that line, `plugin run` included,
/// stops at 128 levels: well within.
pub(crate) const MAX_NESTING: usize = 64;

/// Top-level keys compared pairwise without allocating; a wider object sorts them.
const INLINE_KEYS: usize = 32;

/// Refuses JSON text nested deeper than [`MAX_NESTING`] (arrays and objects; brackets in
/// strings do not count), and an object that names a key twice at its top level (readers
/// would keep either value, and a row has each column once). A key with an escape in it is
/// compared after unescaping, by a parse.
pub(super) fn check(text: &str) -> Result<(), String> {
    check_at(text, 0)
}

/// [`check`] for text that goes `levels_above` levels down into an object (a member's new
/// value: one level), so that it counts against the whole's nesting.
pub(super) fn check_at(text: &str, levels_above: usize) -> Result<(), String> {
    let mut scan = Scan::of(text.as_bytes());
    let deepest = scan.deepest + levels_above;
    if deepest > MAX_NESTING {
        return Err(format!(
            "nested {deepest} levels deep; at most {MAX_NESTING} (every reader of the output \
             line must be able to parse it)"
        ));
    }
    let twice = match scan.escaped_key {
        true => first_key_twice(text),
        false => scan.keys.first_twice(text.as_bytes()),
    };
    match twice {
        Some(key) => Err(format!(
            "names {key:?} twice; each key once (readers would keep either value)"
        )),
        None => Ok(()),
    }
}

/// What one pass over the text found.
struct Scan {
    deepest: usize,
    keys: Keys,
    escaped_key: bool,
}

impl Scan {
    fn of(bytes: &[u8]) -> Scan {
        let mut scan = Scan {
            deepest: 0,
            keys: Keys::default(),
            escaped_key: false,
        };
        let mut depth = 0usize;
        // At depth 1 of an object, whether the next string is a key.
        let mut expect_key = false;
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'"' => {
                    let (end, escapes) = string_end(bytes, i + 1);
                    if depth == 1 && expect_key {
                        scan.escaped_key |= escapes;
                        scan.keys.push(bytes, i + 1, end);
                        expect_key = false;
                    }
                    i = end;
                }
                b'{' | b'[' => {
                    depth += 1;
                    scan.deepest = scan.deepest.max(depth);
                    expect_key = depth == 1 && bytes[i] == b'{';
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                b',' if depth == 1 => expect_key = true,
                _ => {}
            }
            i += 1;
        }
        scan
    }
}

/// A top-level key: its hash, then where it is in the text.
type Key = (u64, u32, u32);

/// The top-level keys seen. Keys are compared by hash first, so that a row of hundreds of
/// columns sorts numbers, not strings (200 columns named alike took longer to sort by their
/// text than to parse).
#[derive(Default)]
struct Keys {
    inline: [Key; INLINE_KEYS],
    len: usize,
    spilled: Vec<Key>,
}

impl Keys {
    fn push(&mut self, bytes: &[u8], start: usize, end: usize) {
        let end = end.max(start);
        // Row fields are far below 4 GiB: the host caps what a call returns.
        let key = (hash(&bytes[start..end]), start as u32, end as u32);
        if self.len < INLINE_KEYS {
            self.inline[self.len] = key;
        } else {
            self.spilled.push(key);
        }
        self.len += 1;
    }

    /// A key named twice, as written (it has no escapes): the first such in the text when
    /// the keys fit inline, else the one whose hash sorts first.
    fn first_twice(&mut self, bytes: &[u8]) -> Option<String> {
        let text = |&(_, s, e): &Key| &bytes[s as usize..e as usize];
        let same = |a: &Key, b: &Key| a.0 == b.0 && text(a) == text(b);
        let twice = if self.spilled.is_empty() {
            let keys = &self.inline[..self.len];
            keys.iter()
                .enumerate()
                .find(|&(n, a)| keys[..n].iter().any(|b| same(a, b)))
                .map(|(_, a)| a)
        } else {
            self.spilled.extend_from_slice(&self.inline);
            // By hash, then text: equal keys end up side by side even among other keys
            // whose hash collides with theirs.
            self.spilled
                .sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| text(a).cmp(text(b))));
            self.spilled
                .windows(2)
                .find(|w| same(&w[0], &w[1]))
                .map(|w| &w[0])
        };
        twice.map(|k| String::from_utf8_lossy(text(k)).into_owned())
    }
}

/// A key's hash: eight bytes at a time, multiply and rotate (FxHash's step). Equal hashes
/// are compared by text, so collisions cost time, never a wrong answer.
fn hash(key: &[u8]) -> u64 {
    let mut h = key.len() as u64;
    for chunk in key.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(word)).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    h
}

/// The first key `text`'s top-level object names twice, keys unescaped (none for text that
/// is not an object).
fn first_key_twice(text: &str) -> Option<String> {
    struct FirstTwice(Option<String>);
    struct Visitor;
    impl<'de> serde::de::Visitor<'de> for Visitor {
        type Value = FirstTwice;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<FirstTwice, A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                map.next_value::<serde::de::IgnoredAny>()?;
                if !seen.insert(key.clone()) {
                    return Ok(FirstTwice(Some(key)));
                }
            }
            Ok(FirstTwice(None))
        }
    }
    impl<'de> serde::Deserialize<'de> for FirstTwice {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_map(Visitor)
        }
    }
    serde_json::from_str::<FirstTwice>(text)
        .ok()
        .and_then(|f| f.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn twice(text: &str) -> Option<String> {
        check(text).err()
    }

    #[test]
    fn a_key_named_twice_at_the_top_is_refused_however_it_is_spelled() {
        let err = twice(r#"{"Name":"a","Bio":{"Name":1},"Name":"b"}"#).unwrap();
        assert!(err.starts_with(r#"names "Name" twice"#), "{err}");
        let err = twice(r#"{"x":1,"\u0078":2}"#).unwrap();
        assert!(err.starts_with(r#"names "x" twice"#), "{err}");
        assert_eq!(twice(r#"{"a":"x\"y","b":[{"a":1}],"c":"{\"a\""}"#), None);
    }

    #[test]
    fn wide_objects_are_checked_past_the_inline_keys() {
        let wide = |last: &str| {
            let mut members: Vec<String> = (0..200).map(|c| format!(r#""C{c:03}":{c}"#)).collect();
            members.push(format!(r#""{last}":0"#));
            format!("{{{}}}", members.join(","))
        };
        assert_eq!(twice(&wide("Other")), None);
        let err = twice(&wide("C150")).unwrap();
        assert!(err.starts_with(r#"names "C150" twice"#), "{err}");
        // A key among the inline ones named again past them.
        let err = twice(&wide("C005")).unwrap();
        assert!(err.starts_with(r#"names "C005" twice"#), "{err}");
    }

    #[test]
    fn keys_whose_hashes_collide_are_still_told_apart() {
        // Forged hashes: every key the same, as if the hash collided for all of them.
        let text = b"xyx";
        let mut keys = Keys::default();
        for (n, at) in [0usize, 1, 2]
            .into_iter()
            .cycle()
            .take(INLINE_KEYS + 3)
            .enumerate()
        {
            let key = (7, at as u32, at as u32 + 1);
            if n < INLINE_KEYS {
                keys.inline[n] = key;
            } else {
                keys.spilled.push(key);
            }
            keys.len += 1;
        }
        assert!(keys.first_twice(text).is_some());
        let mut distinct = Keys::default();
        for at in [0u32, 1] {
            distinct.inline[at as usize] = (7, at, at + 1);
            distinct.len += 1;
        }
        assert_eq!(distinct.first_twice(text), None, "x and y differ");
        // Past the inline keys: x, y and x again, all three with one hash, so that sorting
        // by hash and position would put y between the two x.
        let mut text = b"x y x ".to_vec();
        let mut wide = Keys::default();
        for n in 0..INLINE_KEYS {
            let start = text.len();
            text.extend_from_slice(format!("k{n:02} ").as_bytes());
            wide.push(&text, start, start + 3);
        }
        for at in [0u32, 2, 4] {
            wide.spilled.push((7, at, at + 1));
            wide.len += 1;
        }
        assert_eq!(
            wide.first_twice(&text).as_deref(),
            Some("x"),
            "x twice, y between them with the same hash"
        );
    }

    #[test]
    fn long_strings_with_escapes_end_where_their_quote_is() {
        let long = "x".repeat(100);
        let text = format!(r#"{{"a":"{long}\"{long}\\","a":1}}"#);
        assert!(twice(&text).unwrap().starts_with(r#"names "a" twice"#));
        let text = format!(r#"{{"a":"{long}\"{{[","b":1}}"#);
        assert_eq!(twice(&text), None, "brackets inside a long string");
    }

    #[test]
    fn nesting_counts_brackets_outside_strings() {
        let deep = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        let err = twice(&format!(r#"{{"a":{}}}"#, deep(123))).unwrap();
        assert!(
            err.starts_with("nested 124 levels deep; at most 64"),
            "{err}"
        );
        assert_eq!(
            twice(&format!(r#"{{"a":{},"b":"[[[[{{{{"}}"#, deep(63))),
            None
        );
    }

    #[test]
    fn broken_text_is_left_to_the_parse_and_never_read_past_its_end() {
        for broken in [r#"{"a":"\"#, r#"{"a"#, r#"\"#, "\"", r#"{"a":"x\"#] {
            assert!(check(broken).is_ok(), "{broken:?}");
        }
    }
}
