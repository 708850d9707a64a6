//! A whole answer's top-level members, read once before anything is charged, and
//! the answer written back with the gateway's charged counts and cost in its
//! `usage`. Only `usage` is parsed further; the other members are copied as the
//! provider sent them (parsing the whole answer into a map and writing it back
//! was ~1 % of the gateway's CPU).
//!
//! An answer whose members cannot be read (not a JSON object, a key that is not
//! valid UTF-8 once unescaped) is refused as the provider's failure before the
//! reservation is settled, so a client never sees a provider's own `usage`, cost
//! or asset in place of what the gateway charged. A repeated key counts once, its
//! last value (as a map would keep it).

use std::borrow::Cow;
use std::collections::HashSet;

use bytes::Bytes;
use serde::Deserialize;
use serde::de::{MapAccess, Visitor};
use serde_json::value::RawValue;

/// The members a charge writes into `usage`; the provider's own values of them
/// are dropped.
const OURS: [&str; 5] = [
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cost",
    "asset",
];

/// A JSON object's members in order, each key once (its last value), values as
/// the raw text they were sent in.
pub(super) struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'a> Members<'a> {
    /// The members of `text`; `None` when it is not a JSON object.
    pub(super) fn of(text: &'a [u8]) -> Option<Members<'a>> {
        let Members(all) = serde_json::from_slice(text).ok()?;
        Some(Members(last_of_each(all)))
    }

    fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    /// The answer with `usage` holding the charged token counts, the cost and
    /// the asset (and the provider's other usage members); the answer as it is
    /// when it has no `usage`. `completion_tokens` is written where the
    /// provider's usage had it (an embeddings answer has none).
    pub(super) fn with_cost(
        &self,
        body: &Bytes,
        (prompt, completion): (u64, u64),
        cost: u128,
        asset: &str,
    ) -> Bytes {
        let Some(raw) = self.get("usage") else {
            return body.clone();
        };
        // A usage object the gateway cannot read member by member is replaced
        // by one holding only the gateway's figures.
        let theirs = Members::of(raw.get().as_bytes()).unwrap_or(Members(Vec::new()));
        let mut usage = Vec::with_capacity(raw.get().len() + 96);
        usage.push(b'{');
        for (k, v) in theirs.0.iter().filter(|(k, _)| !OURS.contains(&k.as_ref())) {
            push_member(&mut usage, k, v.get());
        }
        push_member(&mut usage, "prompt_tokens", &prompt.to_string());
        if theirs.get("completion_tokens").is_some() {
            push_member(&mut usage, "completion_tokens", &completion.to_string());
        }
        let total = prompt.saturating_add(completion).to_string();
        push_member(&mut usage, "total_tokens", &total);
        push_member(&mut usage, "cost", &format!("\"{cost}\""));
        push_member(&mut usage, "asset", &json_string(asset));
        usage.push(b'}');

        let mut out = Vec::with_capacity(body.len() + 96);
        out.push(b'{');
        for (k, v) in &self.0 {
            let value = if k == "usage" {
                // Only our own bytes: valid UTF-8 JSON.
                String::from_utf8_lossy(&usage)
            } else {
                Cow::Borrowed(v.get())
            };
            push_member(&mut out, k, &value);
        }
        out.push(b'}');
        Bytes::from(out)
    }
}

/// `"key":value` after a `,` unless it is the object's first member.
fn push_member(out: &mut Vec<u8>, key: &str, value: &str) {
    if out.last() != Some(&b'{') {
        out.push(b',');
    }
    out.extend_from_slice(json_string(key).as_bytes());
    out.push(b':');
    out.extend_from_slice(value.as_bytes());
}

fn json_string(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// Each key once, at its first place, with its last value.
fn last_of_each<'a>(all: Vec<(Cow<'a, str>, &'a RawValue)>) -> Vec<(Cow<'a, str>, &'a RawValue)> {
    let mut seen = HashSet::with_capacity(all.len());
    let repeated = all.iter().any(|(k, _)| !seen.insert(k.as_ref()));
    if !repeated {
        return all;
    }
    let mut out: Vec<(Cow<'a, str>, &'a RawValue)> = Vec::with_capacity(all.len());
    let mut at = std::collections::HashMap::with_capacity(all.len());
    for (k, v) in all {
        match at.get(k.as_ref()) {
            Some(&i) => {
                if let Some(slot) = out.get_mut(i) {
                    *slot = (k, v);
                }
            }
            None => {
                at.insert(k.to_string(), out.len());
                out.push((k, v));
            }
        }
    }
    out
}

/// A key, borrowed from the text unless it had escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> Visitor<'de> for Visit {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(Visit)
    }
}

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> Visitor<'de> for Visit {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
                let mut members = Vec::new();
                while let Some(Key(k)) = map.next_key::<Key<'de>>()? {
                    members.push((k, map.next_value::<&'de RawValue>()?));
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(Visit)
    }
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn cost(body: &[u8], tokens: (u64, u64)) -> serde_json::Value {
        let body = Bytes::copy_from_slice(body);
        let out = Members::of(&body)
            .unwrap()
            .with_cost(&body, tokens, 42, "TNZO");
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn the_cost_is_written_into_usage_and_the_rest_is_kept_byte_for_byte() {
        let body = br#"{"id":"c1","choices":[{"index":0,"message":{"role":"assistant","content":"h\u00e9 \"x\""}}],"usage":{"prompt_tokens":9,"completion_tokens":5,"total_tokens":14,"prompt_tokens_details":{"cached_tokens":2}},"tenzro":{"receipt":{"a":[1,2.50]}}}"#;
        let bytes = Bytes::copy_from_slice(body);
        let out = Members::of(&bytes)
            .unwrap()
            .with_cost(&bytes, (7, 3), 42, "TNZO");
        let (got, want): (serde_json::Value, serde_json::Value) = (
            serde_json::from_slice(&out).unwrap(),
            serde_json::from_slice(body).unwrap(),
        );
        assert_eq!(got["choices"], want["choices"]);
        assert_eq!(got["tenzro"], want["tenzro"]);
        assert_eq!(
            got["usage"],
            serde_json::json!({"prompt_tokens":7,"completion_tokens":3,"total_tokens":10,"cost":"42","asset":"TNZO","prompt_tokens_details":{"cached_tokens":2}})
        );
        let text = std::str::from_utf8(&out).unwrap();
        assert!(text.starts_with(r#"{"id":"c1","choices":[{"index":0,"message":{"role":"assistant","content":"h\u00e9 \"x\""}}],"usage":{"#), "{text}");
        assert!(
            text.ends_with(r#","tenzro":{"receipt":{"a":[1,2.50]}}}"#),
            "{text}"
        );
    }

    #[test]
    fn escaped_and_repeated_keys_count_once_with_their_last_value() {
        // Embeddings: no completion tokens, none added.
        let got = cost(br#"{"data":[],"us\u0061ge":{"prompt_tokens":4}}"#, (4, 0));
        assert_eq!(got["usage"]["total_tokens"], 4);
        assert!(got["usage"].get("completion_tokens").is_none());
        let got = cost(
            br#"{"usage":{"prompt_tokens":1},"usage":{"prompt_tokens":2,"completion_tokens":2,"cost":"0","cost":"1"}}"#,
            (5, 6),
        );
        assert_eq!(got.as_object().unwrap().len(), 1);
        assert_eq!(
            got["usage"],
            serde_json::json!({"prompt_tokens":5,"completion_tokens":6,"total_tokens":11,"cost":"42","asset":"TNZO"})
        );
    }

    #[test]
    fn a_usage_the_gateway_cannot_read_is_replaced_by_its_own_figures() {
        // A lone surrogate in a usage key: skipped by a peek, refused by a map.
        let got = cost(
            br#"{"id":"x","usage":{"prompt_tokens":9000000,"cost":"0","asset":"FAKE","\ud800":1}}"#,
            (3, 0),
        );
        assert_eq!(
            got["usage"],
            serde_json::json!({"prompt_tokens":3,"total_tokens":3,"cost":"42","asset":"TNZO"})
        );
        let got = cost(br#"{"usage":"lots"}"#, (1, 1));
        assert_eq!(got["usage"]["cost"], "42");
        // No usage: the answer as it is.
        assert_eq!(
            cost(br#"{"id":"x"}"#, (1, 1)),
            serde_json::json!({"id":"x"})
        );
    }

    #[test]
    fn an_answer_that_is_not_an_object_or_has_an_unreadable_key_has_no_members() {
        assert!(Members::of(b"[1]").is_none());
        assert!(Members::of(br#"{"usage":{}"#).is_none());
        assert!(Members::of(br#"{"\ud800":1,"usage":{"cost":"0"}}"#).is_none());
        assert!(Members::of(b"{} trailing").is_none());
    }
}
