#![expect(clippy::unwrap_used, reason = "tests")]

use candle_core::{Device, Tensor};

use super::*;

#[test]
fn unknown_architectures_are_named_with_the_supported_list() {
    let err = Family::from_model_type("mamba").unwrap_err();
    assert!(err.contains("`mamba`"), "{err}");
    assert!(
        err.contains("llama, qwen2, qwen3, mistral, gemma2, gemma3_text, phi3"),
        "{err}"
    );
    let err = Family::from_gguf_architecture("falcon").unwrap_err();
    assert!(err.contains("GGUF architecture `falcon`"), "{err}");
    assert!(err.contains("gemma3, phi3"), "{err}");
    assert_eq!(Family::from_model_type("gemma3_text"), Ok(Family::Gemma3));
    assert_eq!(Family::from_gguf_architecture("qwen3"), Ok(Family::Qwen3));
}

fn fields(json: serde_json::Value) -> HfArchFields {
    serde_json::from_value(json).unwrap()
}

#[test]
fn windowed_layers_follow_each_family() {
    let f = fields(serde_json::json!({"sliding_window": 8}));
    let arch = |family, f: &HfArchFields| Arch::from_hf(family, f, None, 64, 6).unwrap();
    assert_eq!(
        arch(Family::Gemma2, &f).windowed,
        [true, false, true, false, true, false]
    );
    assert_eq!(
        arch(Family::Gemma3, &f).windowed,
        [true, true, true, true, true, false]
    );
    assert_eq!(arch(Family::Mistral, &f).windowed, [true; 6]);
    // qwen families ignore `sliding_window` (their use_sliding_window is refused).
    assert_eq!(arch(Family::Qwen3, &f).window, None);
    let typed = fields(serde_json::json!({"sliding_window": 8, "layer_types":
        ["full_attention", "sliding_attention", "full_attention", "sliding_attention",
         "full_attention", "full_attention"]}));
    let a = arch(Family::Gemma3, &typed);
    assert_eq!(a.windowed, [false, true, false, true, false, false]);
    assert_eq!((a.layer_window(1), a.layer_window(2)), (Some(8), None));
    assert!(a.layer_local_rope(1) && !a.layer_local_rope(0));
    let short = fields(serde_json::json!({"sliding_window": 8, "layer_types": ["full_attention"]}));
    let err = Arch::from_hf(Family::Gemma3, &short, None, 64, 6).unwrap_err();
    assert!(err.contains("layer_types lists 1 layers"), "{err}");
}

#[test]
fn activations_are_checked_per_family() {
    let f = HfArchFields::default();
    let err = Arch::from_hf(Family::Llama, &f, Some("gelu"), 64, 2).unwrap_err();
    assert!(err.contains("silu only"), "{err}");
    let g = Arch::from_hf(Family::Gemma2, &f, Some("gelu_pytorch_tanh"), 64, 2).unwrap();
    assert_eq!(g.activation, Activation::GeluTanh);
    assert_eq!(g.embed_scale, Some(8.0));
    let err = Arch::from_hf(Family::Gemma2, &f, Some("relu"), 64, 2).unwrap_err();
    assert!(err.contains("gelu_pytorch_tanh or gelu"), "{err}");
}

/// Each row sees itself and the `window - 1` keys before it, never a later one.
#[test]
fn window_mask_and_span_agree() {
    let window = 3;
    let (rows, start) = (4, 2);
    let mask = window_mask(rows, start, window, &Device::Cpu)
        .unwrap()
        .unwrap();
    let mask: Vec<Vec<f32>> = mask.to_vec2().unwrap();
    for (r, row) in mask.iter().enumerate() {
        let p = start + r;
        let seen: Vec<usize> = (0..row.len()).filter(|&c| row[c] == 0.0).collect();
        assert_eq!(seen, ((p + 1 - window)..=p).collect::<Vec<_>>(), "row {r}");
    }
    // The span starts at the first row's first key; masks and keys narrow alike.
    assert_eq!(window_span(start + rows, rows, Some(window)), (0, 6));
    assert_eq!(window_span(10, 1, Some(window)), (7, 3));
    // Rows at 6..=9: the first one's window starts at 4.
    assert_eq!(window_span(10, 4, Some(window)), (4, 6));
    assert_eq!(window_span(2, 1, Some(window)), (0, 2));
    assert_eq!(window_span(10, 4, None), (0, 10));
    assert!(window_mask(1, 9, window, &Device::Cpu).unwrap().is_none());
    let k = Tensor::zeros((2, 10, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
    let m = Tensor::zeros((4, 10), candle_core::DType::F32, &Device::Cpu).unwrap();
    let (k, _, m) = clip_window(k.clone(), k, Some(&m), 4, Some(window)).unwrap();
    assert_eq!(
        (k.dim(1).unwrap(), m.unwrap().dims()),
        (6, &[4usize, 6][..])
    );
}
