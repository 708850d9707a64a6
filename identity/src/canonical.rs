//! Canonical JSON: the bytes a credential's proof signs.
//!
//! The rules, chosen so that one value has exactly one encoding:
//! - no whitespace anywhere;
//! - object members sorted by key, comparing the keys' UTF-8 bytes (recursively);
//! - strings escape `"` and `\`, write `\b \f \n \r \t` for those controls and
//!   `\u00XX` (lowercase hex) for the other characters below U+0020; everything
//!   else is written as itself in UTF-8;
//! - numbers must be integers (`i64` or `u64`) and are written in decimal. A float
//!   is refused: its text may not survive a parse and print unchanged, and a
//!   signature over it could then fail to verify for no visible reason;
//! - nesting deeper than [`MAX_DEPTH`] is refused.

use std::fmt::Write as _;

use serde_json::Value;

/// How deep arrays and objects may nest.
pub const MAX_DEPTH: usize = 64;

/// Why a value has no canonical form.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalError {
    /// A number that is not an integer.
    #[error("number {0} is not an integer; canonical JSON holds integers only")]
    Float(String),
    /// Arrays and objects nested too deep.
    #[error("nested deeper than {MAX_DEPTH}")]
    TooDeep,
}

/// The canonical text of `value` (see the module docs).
pub fn to_string(value: &Value) -> Result<String, CanonicalError> {
    let mut out = String::new();
    write_value(&mut out, value, 0)?;
    Ok(out)
}

fn write_value(out: &mut String, value: &Value, depth: usize) -> Result<(), CanonicalError> {
    if depth > MAX_DEPTH {
        return Err(CanonicalError::TooDeep);
    }
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                let _ = write!(out, "{i}");
            } else if let Some(u) = n.as_u64() {
                let _ = write!(out, "{u}");
            } else {
                return Err(CanonicalError::Float(n.to_string()));
            }
        }
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_value(out, item, depth + 1)?;
            }
            out.push(']');
        }
        Value::Object(members) => {
            let mut sorted: Vec<(&String, &Value)> = members.iter().collect();
            sorted.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (key, item)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_string(out, key);
                out.push(':');
                write_value(out, item, depth + 1)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c < ' ' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn check(value: Value, expect: &str) {
        assert_eq!(to_string(&value).unwrap(), expect);
    }

    #[test]
    fn encodings() {
        check(json!(null), "null");
        check(
            json!([true, false, -3, 18446744073709551615u64]),
            "[true,false,-3,18446744073709551615]",
        );
        check(
            json!({"b": 1, "a": {"d": [], "c": {}}}),
            r#"{"a":{"c":{},"d":[]},"b":1}"#,
        );
        check(json!({"é": 1, "z": 2, "Z": 3}), r#"{"Z":3,"z":2,"é":1}"#);
        check(
            json!("q\"\\\n\t\u{1}\u{7f}é"),
            "\"q\\\"\\\\\\n\\t\\u0001\u{7f}é\"",
        );
    }

    #[test]
    fn refuses_floats_and_depth() {
        assert_eq!(
            to_string(&json!({"x": 1.5})),
            Err(CanonicalError::Float("1.5".into()))
        );
        let mut deep = json!(0);
        for _ in 0..=MAX_DEPTH {
            deep = json!([deep]);
        }
        assert_eq!(to_string(&deep), Err(CanonicalError::TooDeep));
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<String>().prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(any::<String>(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// The canonical text is valid JSON for the same value, and canonical itself.
        #[test]
        fn parses_back_to_the_same_value(value in arb_json()) {
            let text = to_string(&value).unwrap();
            let back: Value = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(&back, &value);
            prop_assert_eq!(to_string(&back).unwrap(), text);
        }
    }
}
