//! The bytes of weights one decode step reads, per weight format, from a GGUF
//! file's tensor table: the input of the memory-bandwidth ceiling that
//! `benches/llama-cpp/compare.py` prints.
//!
//! A decode step reads every tensor once (the whole batch shares the read) except
//! the token embedding, of which it reads one row per token; when the file has no
//! `output.weight` the embedding doubles as the output head and is read whole.
//! KV-cache reads come on top and grow with the context; they are not counted.

use std::path::Path;

use candle_core::quantized::GgmlDType;

pub struct Format {
    pub format: String,
    /// Weight bytes one decode step reads.
    pub bytes_per_token: u64,
    /// Weight bytes held in memory in this format (ours: with the f32 embedding copy).
    pub resident_bytes: u64,
}

/// The file as shipped (what llama.cpp reads) and with Q4_1 re-quantised to
/// Q8_0 (what our engine reads after `Requantize::Q8_0`).
pub fn per_token(path: &Path) -> anyhow::Result<Vec<Format>> {
    let (content, _) = tenzro_models::gguf::read_content(path)?;
    let tied = !content.tensor_infos.contains_key("output.weight");
    let mut shipped = Vec::new();
    for (name, info) in &content.tensor_infos {
        let elems = info.shape.elem_count() as u64;
        let read_whole = name != "token_embd.weight" || tied;
        shipped.push((info.ggml_dtype, elems, read_whole));
    }
    let types: std::collections::BTreeSet<String> =
        shipped.iter().map(|(d, _, _)| format!("{d:?}")).collect();
    let as_shipped = total(&shipped, |d| d);
    let q8 = total(&shipped, |d| {
        if d == GgmlDType::Q4_1 {
            GgmlDType::Q8_0
        } else {
            d
        }
    });
    // Our engine also keeps the embedding as f32 for the row lookup.
    let embd_f32 = content
        .tensor_infos
        .get("token_embd.weight")
        .map_or(0, |i| i.shape.elem_count() as u64 * 4);
    let names = types.into_iter().collect::<Vec<_>>().join("+");
    Ok(vec![
        Format {
            format: format!("as shipped ({names})"),
            bytes_per_token: as_shipped.0,
            resident_bytes: as_shipped.1,
        },
        Format {
            format: "Q4_1 as Q8_0 (ours)".into(),
            bytes_per_token: q8.0,
            resident_bytes: q8.1 + embd_f32,
        },
    ])
}

/// (bytes read per step, bytes resident) with each tensor stored as `as_type(dtype)`.
fn total(
    tensors: &[(GgmlDType, u64, bool)],
    as_type: impl Fn(GgmlDType) -> GgmlDType,
) -> (u64, u64) {
    let mut read = 0;
    let mut resident = 0;
    for &(dtype, elems, read_whole) in tensors {
        let dtype = as_type(dtype);
        let bytes = elems / dtype.block_size() as u64 * dtype.type_size() as u64;
        resident += bytes;
        if read_whole {
            read += bytes;
        }
    }
    (read, resident)
}
