#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use llguidance::toktrie::ApproximateTokEnv;
use serde_json::json;

use super::*;

/// A vocabulary of the 256 bytes plus a few special tokens; the last is EOS.
fn grammars() -> Grammars {
    Grammars::from_env(Arc::new(ApproximateTokEnv::single_byte())).unwrap()
}

const EOS: usize = 256 + 5;

/// Feed `text` byte by byte through the mask: `Ok` when every byte was allowed and
/// EOS was allowed at the end, else the offset where the grammar refused.
fn run(spec: &GrammarSpec, text: &str) -> Result<(), usize> {
    let compiled = grammars().compile(spec).unwrap();
    let mut c = compiled.start().unwrap();
    for (i, &b) in text.as_bytes().iter().enumerate() {
        let mut logits = vec![0.0f32; EOS + 1];
        c.mask(&mut logits).unwrap();
        if !logits[b as usize].is_finite() {
            return Err(i);
        }
        c.commit(u32::from(b), false).unwrap();
    }
    let mut logits = vec![0.0f32; EOS + 1];
    c.mask(&mut logits).unwrap();
    if logits[EOS].is_finite() {
        Ok(())
    } else {
        Err(text.len())
    }
}

fn check(spec: &GrammarSpec, accepts: &[&str], refuses: &[&str]) {
    for text in accepts {
        assert_eq!(run(spec, text), Ok(()), "should accept {text}");
    }
    // Refused at a byte, not merely unfinished.
    for text in refuses {
        let r = run(spec, text);
        assert!(
            matches!(r, Err(i) if i < text.len()),
            "should refuse {text}: {r:?}"
        );
    }
}

fn schema(s: serde_json::Value) -> GrammarSpec {
    GrammarSpec::JsonSchema {
        schema: s,
        strict: true,
    }
}

#[test]
fn json_object_is_any_object_in_our_style() {
    check(
        &GrammarSpec::JsonObject,
        &[r#"{"a": 1}"#, r#"{"a": [1, {"b": null}], "c": "x"}"#, "{}"],
        &[r#"[1]"#, r#"{"a":1}"#, "\"x\""],
    );
    // A prefix is fine until the end, where EOS is not allowed.
    let text = r#"{"a": 1"#;
    assert_eq!(run(&GrammarSpec::JsonObject, text), Err(text.len()));
}

/// What pydantic 2 emits for nested models, an enum, an optional field and a
/// bounded list (`model_json_schema()`).
fn pydantic_schema() -> serde_json::Value {
    json!({
        "$defs": {
            "Color": {"enum": ["red", "green"], "title": "Color", "type": "string"},
            "Item": {
                "properties": {
                    "name": {"title": "Name", "type": "string", "maxLength": 8},
                    "qty": {"title": "Qty", "type": "integer", "minimum": 1, "maximum": 9}
                },
                "required": ["name", "qty"],
                "title": "Item",
                "type": "object",
                "additionalProperties": false
            }
        },
        "properties": {
            "color": {"$ref": "#/$defs/Color"},
            "items": {
                "items": {"$ref": "#/$defs/Item"},
                "maxItems": 2, "minItems": 1,
                "title": "Items", "type": "array"
            },
            "note": {"anyOf": [{"type": "string"}, {"type": "null"}], "title": "Note"},
            "ok": {"title": "Ok", "type": "boolean"},
            "price": {"title": "Price", "type": "number"}
        },
        "required": ["color", "items", "note", "ok", "price"],
        "title": "Order",
        "type": "object",
        "additionalProperties": false
    })
}

#[test]
fn pydantic_schema_with_defs_refs_anyof_enums_and_bounds() {
    let spec = schema(pydantic_schema());
    check(
        &spec,
        &[
            r#"{"color": "red", "items": [{"name": "nut", "qty": 2}], "note": null, "ok": true, "price": 1.5}"#,
            r#"{"color": "green", "items": [{"name": "a", "qty": 1}, {"name": "b", "qty": 9}], "note": "hi", "ok": false, "price": -2}"#,
        ],
        &[
            // An enum value outside the list.
            r#"{"color": "blue""#,
            // Too few items, too many items.
            r#"{"color": "red", "items": [], "note": null, "ok": true, "price": 1}"#,
            r#"{"color": "red", "items": [{"name": "a", "qty": 1}, {"name": "a", "qty": 1}, {"#,
            // Out of the integer's bounds; a string over maxLength.
            r#"{"color": "red", "items": [{"name": "a", "qty": 10}"#,
            r#"{"color": "red", "items": [{"name": "abcdefghi""#,
            // A missing required key, an extra key.
            r#"{"color": "red", "items": [{"name": "a", "qty": 1}], "ok": true"#,
            r#"{"color": "red", "extra": 1"#,
        ],
    );
}

#[test]
fn strict_refuses_what_it_cannot_enforce_and_lenient_ignores_it() {
    let bad = json!({"type": "object", "if": {"type": "object"}});
    let g = grammars();
    let err = g.compile(&schema(bad.clone())).unwrap_err();
    assert!(matches!(err, GrammarError::Invalid(_)), "{err}");
    let lenient = GrammarSpec::JsonSchema {
        schema: bad,
        strict: false,
    };
    assert!(g.compile(&lenient).is_ok());
}

#[test]
fn invalid_and_oversize_grammars_are_the_callers_error() {
    let g = grammars();
    let invalid = |spec: GrammarSpec| {
        let err = g.compile(&spec).unwrap_err();
        assert!(matches!(err, GrammarError::Invalid(_)), "{err}");
        err.to_string()
    };
    invalid(schema(json!({"type": "no-such-type"})));
    invalid(schema(json!(["not", "an", "object"])));
    invalid(schema(json!({"$ref": "#/$defs/Missing"})));
    invalid(GrammarSpec::Lark("start: (".into()));
    invalid(GrammarSpec::Lark("  ".into()));
    let huge: serde_json::Map<String, serde_json::Value> = (0..5000)
        .map(|i| (format!("field_{i}"), json!({"type": "string"})))
        .collect();
    let msg = invalid(schema(json!({"type": "object", "properties": huge})));
    assert!(msg.contains("bytes"), "{msg}");
}

#[test]
fn lark_grammars() {
    check(
        &GrammarSpec::Lark(r#"start: "yes" | "no""#.into()),
        &["yes", "no"],
        &["maybe", "yes!"],
    );
    check(
        &GrammarSpec::Lark(r#"start: "n=" %json {"type": "integer", "minimum": 0}"#.into()),
        &["n=0", "n=42"],
        &["n=-1", "n=x"],
    );
}

#[test]
fn each_sequence_has_its_own_position() {
    let compiled = grammars()
        .compile(&GrammarSpec::Lark(r#"start: "ab""#.into()))
        .unwrap();
    let mut first = compiled.start().unwrap();
    let mut second = compiled.start().unwrap();
    first.commit(u32::from(b'a'), false).unwrap();
    let mut logits = vec![0.0f32; EOS + 1];
    second.mask(&mut logits).unwrap();
    assert!(logits[b'a' as usize].is_finite() && !logits[b'b' as usize].is_finite());
    let mut logits = vec![0.0f32; EOS + 1];
    first.mask(&mut logits).unwrap();
    assert!(logits[b'b' as usize].is_finite() && !logits[b'a' as usize].is_finite());
    assert!(!first.is_accepting());
    first.commit(u32::from(b'b'), false).unwrap();
    assert!(first.is_accepting());
}

#[test]
fn a_prepared_mask_is_the_same_mask_and_never_outlives_its_step() {
    let compiled = grammars()
        .compile(&GrammarSpec::Lark(r#"start: "ab""#.into()))
        .unwrap();
    let mut c = compiled.start().unwrap();
    // Prepared on another thread (as the engine does during the forward pass).
    std::thread::scope(|s| {
        s.spawn(|| {
            c.prepare();
            c.prepare();
        });
    });
    let mut logits = vec![0.0f32; EOS + 1];
    c.mask(&mut logits).unwrap();
    assert!(logits[b'a' as usize].is_finite() && !logits[b'b' as usize].is_finite());
    // A mask prepared for one step is not applied after the grammar moved on.
    c.prepare();
    c.commit(u32::from(b'a'), false).unwrap();
    let mut logits = vec![0.0f32; EOS + 1];
    c.mask(&mut logits).unwrap();
    assert!(logits[b'b' as usize].is_finite() && !logits[b'a' as usize].is_finite());
    // Unprepared, `mask` computes the same thing itself.
    let mut fresh = compiled.start().unwrap();
    fresh.commit(u32::from(b'a'), false).unwrap();
    let mut again = vec![0.0f32; EOS + 1];
    fresh.mask(&mut again).unwrap();
    assert_eq!(
        logits.iter().map(|l| l.is_finite()).collect::<Vec<_>>(),
        again.iter().map(|l| l.is_finite()).collect::<Vec<_>>()
    );
}

#[test]
fn tool_call_grammars_through_the_mask() {
    use crate::tools::{ToolDef, ToolMode, grammar};
    let tools = vec![
        ToolDef {
            name: "get_weather".into(),
            description: None,
            parameters: json!({"type": "object", "properties": {"city": {"type": "string"}},
                "required": ["city"], "additionalProperties": false}),
            strict: true,
        },
        ToolDef {
            name: "f".into(),
            description: None,
            parameters: json!({"type": "object", "properties": {}, "additionalProperties": false}),
            strict: true,
        },
    ];
    let call = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
    let other = "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>";
    let two = format!("{call}\n{other}");
    let required = grammar(&tools, &ToolMode::Required, true).unwrap();
    check(
        &required,
        &[call, other, &two],
        &[
            "Hello",
            "<tool_call>\n{\"name\": \"nope\"",
            "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": 1}",
        ],
    );
    // Parallel calls: at most one per listed function.
    let three = format!("{two}\n{call}");
    check(&required, &[], &[&three]);
    let single = grammar(&tools, &ToolMode::Required, false).unwrap();
    check(&single, &[call], &[&two]);
    let named = grammar(&tools, &ToolMode::Named("f".into()), true).unwrap();
    check(&named, &[other], &[call]);
    let auto = grammar(&tools, &ToolMode::Auto, true).unwrap();
    check(
        &auto,
        &[call, "It is sunny.", "Paris\nis <b>nice</b>"],
        &["<b>hi</b>"],
    );
    // Under `auto` the output is not empty.
    assert_eq!(run(&auto, ""), Err(0));
}

/// The default model's real vocabulary (skipped when `scripts/fetch-models` has
/// not run): special tokens are marked, and a JSON mask allows only tokens that
/// can start an object.
#[test]
fn the_default_models_vocabulary() {
    let dir = std::env::var_os("TENZRO_MODELS_DIR").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tenzro/models"),
        std::path::PathBuf::from,
    );
    let path = crate::llm::default_model_path(&dir);
    if !path.exists() {
        eprintln!("skipped: {} is missing", path.display());
        return;
    }
    let (content, _) = crate::gguf::read_content(&path).unwrap();
    let tok = crate::gguf::tokenizer_from_gguf(&content).unwrap();
    let bytes = token_bytes(&tok).unwrap();
    let eos = tok.token_to_id("<|im_end|>").unwrap();
    assert_eq!(bytes[eos as usize], b"\xFF<|im_end|>");
    let space_the = tok.encode(" the", false).unwrap().get_ids().to_vec();
    assert_eq!(space_the.len(), 1);
    assert_eq!(bytes[space_the[0] as usize], b" the");
    let g = Grammars::new(&tok, &[eos]).unwrap();
    let mut c = g
        .compile(&GrammarSpec::JsonObject)
        .unwrap()
        .start()
        .unwrap();
    let mut logits = vec![0.0f32; tok.get_vocab_size(true)];
    c.mask(&mut logits).unwrap();
    let allowed: Vec<usize> = (0..logits.len())
        .filter(|&i| logits[i].is_finite())
        .collect();
    assert!(!allowed.is_empty());
    assert!(
        allowed.iter().all(|&i| bytes[i].starts_with(b"{")),
        "{allowed:?}"
    );
    assert!(!logits[eos as usize].is_finite());
}
