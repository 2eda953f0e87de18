//! The Stripe event `id` of an ingest body: the top-level string `id` of a JSON object.
//!
//! serde_json is the definition ([`reference`]). It skips the values it does not need, but it
//! still walks strings eight bytes at a time, and on a 1 KiB event that walk was 6 % of the
//! server's CPU per request (BENCHMARKS.md, "The Stripe event id without the full parse").
//! [`scan`] answers the common case first: a body that is well-formed JSON by a grammar no
//! wider than serde_json's, with plain (escape-free) top-level keys and `id`. It finds string
//! ends with `memchr` (SIMD). Anything it is not sure of, it leaves to serde_json, so the answer
//! is always serde_json's; a property test holds the two to that.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};

/// The top-level string `id` of a JSON object body. `None` for anything else: not JSON, not an
/// object, no `id`, a non-string `id`, two `id` keys. Borrowed from the body when the scan
/// answers, so the common case copies the id once, into the key the caller makes of it.
pub(super) fn stripe_event_id(body: &[u8]) -> Option<Cow<'_, str>> {
    match scan(body) {
        Scan::Id(id) => Some(Cow::Borrowed(id)),
        Scan::NoId => None,
        Scan::Unsure => reference(body).map(Cow::Owned),
    }
}

/// What the fast scan concluded.
#[derive(Debug, PartialEq, Eq)]
enum Scan<'a> {
    /// A well-formed object with exactly one top-level `id`, a string without escapes.
    Id(&'a str),
    /// A well-formed object without a top-level `id`.
    NoId,
    /// Anything else (malformed, escaped keys, a second or non-string `id`, deep nesting):
    /// serde_json decides.
    Unsure,
}

/// Containers nested deeper than this inside one value send the body to serde_json.
const SCAN_DEPTH_MAX: u32 = 64;

fn scan(body: &[u8]) -> Scan<'_> {
    let mut s = Scanner { b: body, i: 0 };
    s.object().unwrap_or(Scan::Unsure)
}

/// A cursor over the body. Every method returns `None` when it is not sure, never a guess.
struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scanner<'a> {
    /// The whole body: one object, then only whitespace.
    fn object(&mut self) -> Option<Scan<'a>> {
        self.ws();
        self.eat(b'{')?;
        self.ws();
        let mut id = None;
        if self.peek()? == b'}' {
            self.i += 1;
        } else {
            loop {
                self.eat(b'"')?;
                let key = self.plain_string()?;
                std::str::from_utf8(key).ok()?;
                self.ws();
                self.eat(b':')?;
                self.ws();
                if key == b"id" {
                    if id.is_some() {
                        return None;
                    }
                    self.eat(b'"')?;
                    id = Some(std::str::from_utf8(self.plain_string()?).ok()?);
                } else {
                    self.value()?;
                }
                self.ws();
                match self.next()? {
                    b',' => self.ws(),
                    b'}' => break,
                    _ => return None,
                }
            }
        }
        self.ws();
        if self.i != self.b.len() {
            return None;
        }
        Some(id.map_or(Scan::NoId, Scan::Id))
    }

    /// Skips one value of any kind, nested containers included (iteratively, the nesting kept
    /// as one bit per level: 1 for an object).
    fn value(&mut self) -> Option<()> {
        let mut objects: u64 = 0;
        let mut depth = 0u32;
        loop {
            self.ws();
            match self.next()? {
                b'"' => self.string()?,
                open @ (b'{' | b'[') => {
                    if depth == SCAN_DEPTH_MAX {
                        return None;
                    }
                    let object = open == b'{';
                    objects = (objects << 1) | u64::from(object);
                    depth += 1;
                    self.ws();
                    if self.peek()? != if object { b'}' } else { b']' } {
                        if object {
                            self.key()?;
                        }
                        continue;
                    }
                    // An empty container: closed just below, as a finished value.
                }
                b't' => self.rest_of(b"rue")?,
                b'f' => self.rest_of(b"alse")?,
                b'n' => self.rest_of(b"ull")?,
                b'-' => self.number()?,
                b'0'..=b'9' => {
                    self.i -= 1;
                    self.number()?;
                }
                _ => return None,
            }
            // A value ended: close finished containers, or go on to the next element.
            loop {
                if depth == 0 {
                    return Some(());
                }
                self.ws();
                let object = objects & 1 == 1;
                match self.next()? {
                    b',' => {
                        if object {
                            self.ws();
                            self.key()?;
                        }
                        break;
                    }
                    b'}' if object => {}
                    b']' if !object => {}
                    _ => return None,
                }
                objects >>= 1;
                depth -= 1;
            }
        }
    }

    /// `"key"` then `:`, inside a skipped object.
    fn key(&mut self) -> Option<()> {
        self.eat(b'"')?;
        self.string()?;
        self.ws();
        self.eat(b':')
    }

    /// The rest of a string after its opening quote, escapes allowed (as serde_json allows
    /// them: one of `"\/bfnrt`, or `u` and four hex digits), control characters not.
    fn string(&mut self) -> Option<()> {
        loop {
            let run = self.run_to_quote_or_backslash()?;
            self.i += run;
            if self.next()? == b'"' {
                return Some(());
            }
            match self.next()? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                b'u' => {
                    let hex = self.b.get(self.i..self.i + 4)?;
                    if !hex.iter().all(u8::is_ascii_hexdigit) {
                        return None;
                    }
                    self.i += 4;
                }
                _ => return None,
            }
        }
    }

    /// The rest of a string without escapes, returned without its quotes.
    fn plain_string(&mut self) -> Option<&'a [u8]> {
        let run = self.run_to_quote_or_backslash()?;
        let start = self.i;
        self.i += run;
        (self.next()? == b'"').then(|| &self.b[start..start + run])
    }

    /// Length of the run of string bytes from here to the next `"` or `\`; `None` if there is
    /// none or the run holds a control character.
    fn run_to_quote_or_backslash(&self) -> Option<usize> {
        let rest = &self.b[self.i..];
        let run = memchr::memchr2(b'"', b'\\', rest)?;
        // The minimum of the run (vectorised) says whether any byte is below 0x20.
        let lowest = rest[..run].iter().copied().fold(u8::MAX, u8::min);
        (lowest >= 0x20).then_some(run)
    }

    /// A number by JSON's grammar: `-`, if any, already taken.
    fn number(&mut self) -> Option<()> {
        match self.next()? {
            b'0' => {}
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            self.some_digits()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            self.some_digits()?;
        }
        // A digit here would be a second leading zero ("01"): not JSON.
        match self.peek() {
            Some(b'0'..=b'9') => None,
            _ => Some(()),
        }
    }

    fn some_digits(&mut self) -> Option<()> {
        let start = self.i;
        self.digits();
        (self.i > start).then_some(())
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
    }

    fn rest_of(&mut self, word: &[u8]) -> Option<()> {
        let end = self.i + word.len();
        (self.b.get(self.i..end)? == word).then(|| self.i = end)
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\n' | b'\t' | b'\r')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.next()? == byte).then_some(())
    }

    fn next(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.i += 1;
        Some(byte)
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }
}

/// serde_json's answer, the definition: the body is deserialised as a map whose values other
/// than `id` are skipped without being built. serde_json bounds nesting depth (128), so hostile
/// bodies cannot exhaust the stack.
fn reference(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<EventId>(body).ok()?.0
}

/// Deserialises only a JSON object, keeping its top-level `id` if that is a string.
struct EventId(Option<String>);

impl<'de> serde::Deserialize<'de> for EventId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(EventIdVisitor)
    }
}

struct EventIdVisitor;

impl<'de> Visitor<'de> for EventIdVisitor {
    type Value = EventId;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<EventId, A::Error> {
        let mut id: Option<IdValue> = None;
        while let Some(IsIdKey(is_id)) = map.next_key()? {
            if !is_id {
                map.next_value::<IgnoredAny>()?;
            } else if id.is_some() {
                return Err(de::Error::duplicate_field("id"));
            } else {
                id = Some(map.next_value()?);
            }
        }
        Ok(EventId(id.and_then(|IdValue(id)| id)))
    }
}

/// A map key, remembered only as "is it `id`" so that keys are never allocated.
struct IsIdKey(bool);

impl<'de> serde::Deserialize<'de> for IsIdKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = IsIdKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<IsIdKey, E> {
                Ok(IsIdKey(key == "id"))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// The value under `id`: `Some` only for a string; any other JSON value is skipped.
struct IdValue(Option<String>);

impl<'de> serde::Deserialize<'de> for IdValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ValueVisitor;
        impl<'de> Visitor<'de> for ValueVisitor {
            type Value = IdValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E: de::Error>(self, id: &str) -> Result<IdValue, E> {
                Ok(IdValue(Some(id.to_owned())))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<IdValue, E> {
                Ok(IdValue(None))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<IdValue, E> {
                Ok(IdValue(None))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<IdValue, E> {
                Ok(IdValue(None))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<IdValue, E> {
                Ok(IdValue(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<IdValue, E> {
                Ok(IdValue(None))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<IdValue, A::Error> {
                IgnoredAny.visit_seq(seq).map(|_| IdValue(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<IdValue, A::Error> {
                IgnoredAny.visit_map(map).map(|_| IdValue(None))
            }
        }
        deserializer.deserialize_any(ValueVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_scan_answers_well_formed_events_itself() {
        let event = br#"{"object":"event","type":"x.y","data":{"object":{"id":"ch_1","n":[1,-2.5e+3,0,true,false,null,{}],"s":"a\"b\\c\/\u00e9\n"}},"id":"evt_1","livemode":false}"#;
        assert_eq!(scan(event), Scan::Id("evt_1"));
        assert_eq!(scan(b" {} "), Scan::NoId);
        assert_eq!(
            scan(br#"{"data": {"id": "evt_1"}, "list": [[], {}]}"#),
            Scan::NoId
        );
    }

    #[test]
    fn the_scan_leaves_what_it_is_not_sure_of_to_serde_json() {
        for body in [
            &br#"{"i\u0064": "evt_1"}"#[..],
            br#"{"id": "evt_\u0031"}"#,
            br#"{"id": 7}"#,
            br#"{"id": "evt_1", "id": "evt_2"}"#,
            br#"{"id": "evt_1"} trailing"#,
            br#"{"a": 01}"#,
            br#"{"a": 1.}"#,
            br#"{"a": [1,]}"#,
            br#"{"a": 1,}"#,
            b"{\"a\": \"tab\there\"}",
            b"{\"\xff\": 1}",
            b"[]",
            b"",
        ] {
            assert_eq!(
                scan(body),
                Scan::Unsure,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let mut deep = br#"{"a":"#.to_vec();
        deep.extend([b'['; 65]);
        deep.extend([b']'; 65]);
        deep.push(b'}');
        assert_eq!(scan(&deep), Scan::Unsure);
        assert_eq!(stripe_event_id(&deep), None, "serde_json skips it: no id");
    }

    #[test]
    fn answers_match_serde_json_on_the_edge_cases() {
        for (body, id) in [
            (&br#"{"i\u0064": "evt_1"}"#[..], Some("evt_1")),
            (
                br#" {"a": [1, {"id": 2}], "id": "evt_\u0031"} "#,
                Some("evt_1"),
            ),
            (br#"{"id": 7}"#, None),
            (br#"{"id": "evt_1", "id": "evt_2"}"#, None),
            (b"{\"id\": \"evt\xff\"}", None),
            (b"{\"a\": \"\xff\", \"id\": \"evt_1\"}", Some("evt_1")),
        ] {
            assert_eq!(stripe_event_id(body).as_deref(), id);
            assert_eq!(reference(body).as_deref(), id);
        }
    }

    /// JSON-like text: mostly well-formed, with the near misses a scanner gets wrong
    /// (escapes, control characters, odd numbers, trailing commas, escaped `id` keys).
    fn json_text() -> impl Strategy<Value = String> {
        let ws = prop::sample::select(vec!["", "", " ", "\n", "\t ", "\r\n"]);
        let string = prop::collection::vec(
            prop::sample::select(vec![
                "a", "Z", "0", " ", "é", "\\\"", "\\\\", "\\/", "\\n", "\\u00e9", "\\u12G4", "\\x",
                "\t", "\u{1}", "\"", "id",
            ]),
            0..6,
        )
        .prop_map(|parts| format!("\"{}\"", parts.concat()));
        let number = prop::sample::select(vec![
            "0", "-0", "7", "-12", "3.25", "1e9", "-2.5E-3", "1e+2", "01", "1.", "-", ".5", "1e",
        ])
        .prop_map(str::to_owned);
        let literal = prop::sample::select(vec!["true", "false", "null", "nul", "tru"])
            .prop_map(str::to_owned);
        let leaf = prop_oneof![string.clone(), number, literal];
        let value = leaf.prop_recursive(4, 24, 4, move |inner| {
            let key = prop::sample::select(vec!["\"id\"", "\"i\\u0064\"", "\"a\"", "\"\"", "id"]);
            prop_oneof![
                (
                    prop::collection::vec(inner.clone(), 0..4),
                    ws.clone(),
                    any::<bool>()
                )
                    .prop_map(|(items, ws, trailing)| {
                        let comma = if trailing && !items.is_empty() {
                            ","
                        } else {
                            ""
                        };
                        format!("[{ws}{}{comma}]", items.join(&format!(",{ws}")))
                    }),
                prop::collection::vec((key, inner), 0..4).prop_map(|members| {
                    let body: Vec<String> = members
                        .into_iter()
                        .map(|(k, v)| format!("{k}: {v}"))
                        .collect();
                    format!("{{{}}}", body.join(", "))
                }),
            ]
        });
        let member = (
            prop::sample::select(vec![
                "\"id\"",
                "\"id\"",
                "\"i\\u0064\"",
                "\"data\"",
                "\"x\"",
            ]),
            prop_oneof![
                3 => "\"evt_[a-z0-9]{0,6}\"",
                1 => value.clone(),
            ],
        );
        (
            prop::collection::vec(member, 0..4),
            prop::sample::select(vec!["", " ", "\n", " x", ","]),
        )
            .prop_map(|(members, tail)| {
                let body: Vec<String> = members
                    .into_iter()
                    .map(|(k, v)| format!("{k}:{v}"))
                    .collect();
                format!("{{{}}}{tail}", body.join(","))
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn the_answer_is_always_serde_jsons(text in json_text()) {
            let body = text.as_bytes();
            prop_assert_eq!(stripe_event_id(body).map(Cow::into_owned), reference(body));
        }

        #[test]
        fn the_answer_is_serde_jsons_after_any_one_byte_change(
            text in json_text(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            how in 0..3u8,
        ) {
            let mut body = text.into_bytes();
            let i = at.index(body.len() + 1);
            match how {
                0 => body.insert(i, byte),
                1 if i < body.len() => { body.remove(i); }
                _ if i < body.len() => body[i] = byte,
                _ => body.push(byte),
            }
            prop_assert_eq!(stripe_event_id(&body).map(Cow::into_owned), reference(&body));
        }
    }
}
