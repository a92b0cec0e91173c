//! Writing GGUF bytes: the inverse of the parser, for tests and for exporting adapters.

use super::{GgmlType, GgufValue};

/// One tensor to write: GGUF name, shape slowest-first (as [`super::GgufTensorInfo::dims`]),
/// storage type and the already-encoded bytes.
#[derive(Clone, Debug)]
pub struct GgufTensorData {
    /// GGUF name.
    pub name: String,
    /// Shape, slowest dimension first (written reversed as `ne`).
    pub dims: Vec<usize>,
    /// Storage type of `data`.
    pub ggml_type: GgmlType,
    /// Encoded bytes (`ggml_type.bytes_for(numel)` long).
    pub data: Vec<u8>,
}

impl GgufTensorData {
    /// An F32 tensor.
    pub fn f32(name: &str, dims: Vec<usize>, values: &[f32]) -> Self {
        GgufTensorData {
            name: name.to_string(),
            dims,
            ggml_type: GgmlType::F32,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend((s.len() as u64).to_le_bytes());
    out.extend(s.as_bytes());
}

fn put_value(out: &mut Vec<u8>, v: &GgufValue) {
    match v {
        GgufValue::U8(x) => out.extend(x.to_le_bytes()),
        GgufValue::I8(x) => out.extend(x.to_le_bytes()),
        GgufValue::U16(x) => out.extend(x.to_le_bytes()),
        GgufValue::I16(x) => out.extend(x.to_le_bytes()),
        GgufValue::U32(x) => out.extend(x.to_le_bytes()),
        GgufValue::I32(x) => out.extend(x.to_le_bytes()),
        GgufValue::F32(x) => out.extend(x.to_le_bytes()),
        GgufValue::Bool(x) => out.push(u8::from(*x)),
        GgufValue::String(s) => put_str(out, s),
        GgufValue::Array(ty, items) => {
            out.extend((*ty as u32).to_le_bytes());
            out.extend((items.len() as u64).to_le_bytes());
            items.iter().for_each(|i| put_value(out, i));
        }
        GgufValue::U64(x) => out.extend(x.to_le_bytes()),
        GgufValue::I64(x) => out.extend(x.to_le_bytes()),
        GgufValue::F64(x) => out.extend(x.to_le_bytes()),
    }
}

/// A complete GGUF file. Tensor data is laid out in order, each tensor starting on a multiple of
/// `alignment` (which should match `general.alignment` in `metadata` if that key is present).
/// Array elements must all have the array's element type; this is not checked.
pub fn to_bytes(
    version: u32,
    metadata: &[(String, GgufValue)],
    tensors: &[GgufTensorData],
    alignment: u64,
) -> Vec<u8> {
    let align = |n: u64| n.div_ceil(alignment) * alignment;
    let mut out = Vec::new();
    out.extend(super::MAGIC);
    out.extend(version.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((metadata.len() as u64).to_le_bytes());
    for (k, v) in metadata {
        put_str(&mut out, k);
        out.extend((v.value_type() as u32).to_le_bytes());
        put_value(&mut out, v);
    }
    let mut offset = 0u64;
    for t in tensors {
        put_str(&mut out, &t.name);
        out.extend((t.dims.len() as u32).to_le_bytes());
        t.dims
            .iter()
            .rev()
            .for_each(|&d| out.extend((d as u64).to_le_bytes()));
        out.extend(t.ggml_type.0.to_le_bytes());
        out.extend(offset.to_le_bytes());
        offset = align(offset + t.data.len() as u64);
    }
    out.resize(align(out.len() as u64) as usize, 0);
    for t in tensors {
        out.extend(&t.data);
        out.resize(align(out.len() as u64) as usize, 0);
    }
    out
}
