//! bitsandbytes' 4-bit checkpoint layout (what transformers writes for a pre-quantized model).
//!
//! For a Linear layer with prefix `P` and weight `W: [out, in]` (n = out·in elements):
//!
//! | key | dtype | shape | contents |
//! | --- | --- | --- | --- |
//! | `P.weight` | U8 | `[ceil(n/2), 1]` | packed codes ([`crate::quant::nf4`]) |
//! | `P.weight.absmax` | U8 (double quant) or F32 | `[ceil(n/blocksize)]` | block scales |
//! | `P.weight.quant_map` | F32 | `[16]` | the NF4/FP4 table |
//! | `P.weight.nested_absmax` | F32 | `[ceil(blocks/256)]` | double quant only |
//! | `P.weight.nested_quant_map` | F32 | `[256]` | double quant only |
//! | `P.weight.quant_state.bitsandbytes__nf4` (or `__fp4`) | U8 | `[len]` | UTF-8 JSON, below |
//!
//! The quant-state JSON is Python's `json.dumps` of `{"quant_type", "blocksize", "dtype", "shape"}`
//! plus, with double quantization, `"nested_blocksize", "nested_dtype", "nested_offset"`, in that
//! order, e.g. `{"quant_type": "nf4", "blocksize": 64, "dtype": "float32", "shape": [128, 384],
//! "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": 0.20897984504699707}`.
//! `dtype` is the dtype of the original weight.

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use super::IoError;
use super::pyjson::float_repr;
use super::safetensors::{OwnedTensor, read_f32, read_u8};
use crate::quant::{BlockStats, QuantFormat, QuantizedTensor};

/// The Python/torch name of a floating dtype (`"float32"`, `"float16"`, `"bfloat16"`).
pub fn torch_dtype_name(dtype: Dtype) -> &'static str {
    match dtype {
        Dtype::F16 => "float16",
        Dtype::BF16 => "bfloat16",
        _ => "float32",
    }
}

/// Suffix of the quant-state key: `quant_state.bitsandbytes__nf4` / `__fp4`.
pub fn quant_state_suffix(format: QuantFormat) -> String {
    format!("quant_state.bitsandbytes__{}", format.name())
}

/// The quant-state JSON text, byte-identical to bitsandbytes' `QuantState.as_dict(packed=True)`.
pub fn quant_state_json(q: &QuantizedTensor, dtype: Dtype) -> String {
    let shape: Vec<String> = q.shape().iter().map(usize::to_string).collect();
    let mut s = format!(
        "{{\"quant_type\": \"{}\", \"blocksize\": {}, \"dtype\": \"{}\", \"shape\": [{}]",
        q.format().name(),
        q.blocksize(),
        torch_dtype_name(dtype),
        shape.join(", ")
    );
    if let BlockStats::Double {
        offset,
        nested_blocksize,
        ..
    } = q.stats()
    {
        s.push_str(&format!(
            ", \"nested_blocksize\": {nested_blocksize}, \"nested_dtype\": \"float32\", \"nested_offset\": {}",
            float_repr(f64::from(*offset))
        ));
    }
    s.push('}');
    s
}

/// Adds the entries of Linear `prefix` holding `q` (originally of `dtype`) to `out`.
pub fn write_entries(
    prefix: &str,
    q: &QuantizedTensor,
    dtype: Dtype,
    out: &mut BTreeMap<String, OwnedTensor>,
) {
    let w = format!("{prefix}.weight");
    out.insert(
        w.clone(),
        OwnedTensor::u8(vec![q.packed().len(), 1], q.packed().to_vec()),
    );
    out.insert(
        format!("{w}.quant_map"),
        OwnedTensor::f32(vec![16], q.format().codebook()),
    );
    match q.stats() {
        BlockStats::Plain { absmax } => {
            out.insert(
                format!("{w}.absmax"),
                OwnedTensor::f32(vec![absmax.len()], absmax),
            );
        }
        BlockStats::Double {
            absmax_q,
            nested_absmax,
            nested_map,
            ..
        } => {
            out.insert(
                format!("{w}.absmax"),
                OwnedTensor::u8(vec![absmax_q.len()], absmax_q.clone()),
            );
            out.insert(
                format!("{w}.nested_absmax"),
                OwnedTensor::f32(vec![nested_absmax.len()], nested_absmax),
            );
            out.insert(
                format!("{w}.nested_quant_map"),
                OwnedTensor::f32(vec![nested_map.len()], nested_map),
            );
        }
    }
    let state = quant_state_json(q, dtype).into_bytes();
    out.insert(
        format!("{w}.{}", quant_state_suffix(q.format())),
        OwnedTensor::u8(vec![state.len()], state),
    );
}

/// Whether `prefix` (a Linear prefix `P`) has bnb 4-bit entries in `st`.
pub fn is_quantized(st: &SafeTensors<'_>, prefix: &str) -> bool {
    [QuantFormat::Nf4, QuantFormat::Fp4].iter().any(|f| {
        st.tensor(&format!("{prefix}.weight.{}", quant_state_suffix(*f)))
            .is_ok()
    })
}

/// Reads the 4-bit weight of Linear `prefix` from `st` (errors name the file as `<memory>`).
pub fn read_quantized(st: &SafeTensors<'_>, prefix: &str) -> Result<QuantizedTensor, IoError> {
    read_quantized_from(st, prefix, Path::new("<memory>"))
}

#[derive(serde::Deserialize)]
struct QuantStateJson {
    quant_type: String,
    blocksize: usize,
    shape: Vec<usize>,
    nested_blocksize: Option<usize>,
    nested_offset: Option<f64>,
}

/// Reads the 4-bit weight of Linear `prefix` from `st`, loaded from `path` (used in errors).
pub fn read_quantized_from(
    st: &SafeTensors<'_>,
    prefix: &str,
    path: &Path,
) -> Result<QuantizedTensor, IoError> {
    let w = format!("{prefix}.weight");
    let get = |name: String| -> Result<(TensorView<'_>, String), IoError> {
        st.tensor(&name)
            .map(|v| (v, name.clone()))
            .map_err(|_| IoError::MissingTensor {
                path: path.to_path_buf(),
                name,
            })
    };
    let (state_view, state_name) = [QuantFormat::Nf4, QuantFormat::Fp4]
        .iter()
        .find_map(|f| get(format!("{w}.{}", quant_state_suffix(*f))).ok())
        .ok_or_else(|| IoError::MissingTensor {
            path: path.to_path_buf(),
            name: format!("{w}.quant_state.bitsandbytes__nf4"),
        })?;
    let json_err = |reason: String| IoError::Json {
        path: path.to_path_buf(),
        reason: format!("{state_name}: {reason}"),
    };
    let text = std::str::from_utf8(read_u8(&state_view, path, &state_name)?)
        .map_err(|e| json_err(e.to_string()))?;
    let state: QuantStateJson = serde_json::from_str(text).map_err(|e| json_err(e.to_string()))?;
    let format: QuantFormat = state
        .quant_type
        .parse()
        .map_err(|e: crate::quant::QuantError| json_err(e.to_string()))?;

    let (packed_view, packed_name) = get(w.clone())?;
    let packed = read_u8(&packed_view, path, &packed_name)?.to_vec();
    let (absmax_view, absmax_name) = get(format!("{w}.absmax"))?;
    let stats = match (state.nested_blocksize, state.nested_offset) {
        (Some(nested_blocksize), Some(offset)) => {
            let absmax_q = read_u8(&absmax_view, path, &absmax_name)?.to_vec();
            let (v, n) = get(format!("{w}.nested_absmax"))?;
            let nested_absmax = read_f32(&v, path, &n)?;
            let (v, n) = get(format!("{w}.nested_quant_map"))?;
            let nested_map = read_f32(&v, path, &n)?;
            // The JSON holds the f32 offset widened to f64, so this cast is exact.
            BlockStats::Double {
                absmax_q,
                nested_absmax,
                nested_map,
                offset: offset as f32,
                nested_blocksize,
            }
        }
        _ => BlockStats::Plain {
            absmax: read_f32(&absmax_view, path, &absmax_name)?,
        },
    };
    QuantizedTensor::from_parts(format, state.shape, state.blocksize, packed, stats).map_err(
        |cause| IoError::Quant {
            path: path.to_path_buf(),
            name: prefix.to_string(),
            cause,
        },
    )
}

/// transformers' `BitsAndBytesConfig.to_dict()` for a 4-bit model with float32 compute.
pub fn quantization_config(cfg: crate::quant::QuantConfig) -> serde_json::Value {
    serde_json::json!({
        "_load_in_4bit": true,
        "_load_in_8bit": false,
        "bnb_4bit_compute_dtype": "float32",
        "bnb_4bit_quant_storage": "uint8",
        "bnb_4bit_quant_type": cfg.format.name(),
        "bnb_4bit_use_double_quant": cfg.double_quant,
        "llm_int8_enable_fp32_cpu_offload": false,
        "llm_int8_has_fp16_weight": false,
        "llm_int8_skip_modules": null,
        "llm_int8_threshold": 6.0,
        "load_in_4bit": true,
        "load_in_8bit": false,
        "quant_method": "bitsandbytes"
    })
}
