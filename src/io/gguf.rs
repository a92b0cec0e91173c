//! GGUF files (llama.cpp's single-file model format, versions 2 and 3).
//!
//! Layout, all little-endian:
//!
//! ```text
//! magic "GGUF" | version u32 | tensor_count u64 | kv_count u64
//! kv_count × (key: string, value_type: u32, value)
//! tensor_count × (name: string, n_dims: u32, ne: n_dims × u64, ggml_type: u32, offset: u64)
//! padding to `general.alignment` (default 32)
//! tensor data: each tensor at data_start + offset
//! ```
//!
//! A string is a `u64` byte length then UTF-8 bytes (no terminator); an array value is
//! `elem_type: u32, len: u64, len × value`. `ne[0]` is the fastest-varying dimension, so
//! [`GgufTensorInfo::dims`] holds `ne` reversed: the row-major shape HF uses (`[out, in]` for a
//! Linear weight).
//!
//! Every malformed input (bad magic, truncation anywhere, bad UTF-8, unknown value or tensor
//! type, tensor data outside the file) is an [`IoError`] naming the file and the fault; the
//! parser never panics, and every count is checked against the bytes left before anything is
//! allocated for it.
//!
//! The LLaMA-specific parts (names -> HF names, Q/K un-permutation, metadata -> config,
//! tokenizer) are in [`llama`]; block layouts and decoders in [`blocks`]; metadata values in
//! [`value`]; a writer in [`mod@write`].

pub mod blocks;
pub mod llama;
pub mod value;
pub mod write;

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub use self::blocks::{DecodeError, GgmlType};
pub use self::llama::{
    GgufLlamaConfig, GgufTokenizer, RopeScaling, gguf_to_hf_name, hf_to_gguf_name, permute_qk,
    unpermute_qk,
};
pub use self::value::{GgufValue, GgufValueType};

use super::{IoError, os_err};

/// `"GGUF"` as the first four bytes.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// Tensor data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's `GGML_MAX_DIMS`.
pub const MAX_DIMS: usize = 4;
/// How deep arrays of arrays may nest (real files use 1).
const MAX_ARRAY_DEPTH: usize = 8;

/// Where one tensor lives and how it is stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GgufTensorInfo {
    /// GGUF name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Shape, slowest dimension first (`ne` reversed): `[out, in]` for a Linear weight.
    pub dims: Vec<usize>,
    /// Storage type.
    pub ggml_type: GgmlType,
    /// Byte offset from the start of the tensor data section.
    pub offset: u64,
}

impl GgufTensorInfo {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.dims.iter().product()
    }

    /// Bytes of stored data (checked at parse time to fit in the file).
    pub fn n_bytes(&self) -> u64 {
        self.ggml_type.bytes_for(self.numel() as u64).unwrap_or(0)
    }
}

/// Where tensor data is read from.
#[derive(Debug)]
enum Source {
    /// The whole file in memory.
    Bytes(Vec<u8>),
    /// An open file, read on demand (a 7B model need not fit in memory twice).
    File(Mutex<File>),
}

/// A parsed GGUF file: metadata and tensor infos, with tensor data read on demand.
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    version: u32,
    metadata: Vec<(String, GgufValue)>,
    tensors: Vec<GgufTensorInfo>,
    alignment: u64,
    data_start: u64,
    file_len: u64,
    source: Source,
}

impl GgufFile {
    /// Opens and parses the header of a GGUF file; tensor data stays on disk until read.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, IoError> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(os_err(&path))?;
        let file_len = file.metadata().map_err(os_err(&path))?.len();
        let mut reader = Reader {
            inner: BufReader::with_capacity(1 << 20, &file),
            pos: 0,
            len: file_len,
            path: &path,
        };
        let header = parse_header(&mut reader)?;
        Self::assemble(path, header, file_len, Source::File(Mutex::new(file)))
    }

    /// Parses a GGUF file held in memory; `path` only labels errors.
    pub fn from_bytes(path: impl Into<PathBuf>, bytes: Vec<u8>) -> Result<Self, IoError> {
        let path = path.into();
        let file_len = bytes.len() as u64;
        let mut reader = Reader {
            inner: bytes.as_slice(),
            pos: 0,
            len: file_len,
            path: &path,
        };
        let header = parse_header(&mut reader)?;
        Self::assemble(path, header, file_len, Source::Bytes(bytes))
    }

    fn assemble(path: PathBuf, h: Header, file_len: u64, source: Source) -> Result<Self, IoError> {
        let bad = |reason: String| IoError::NotGguf {
            path: path.clone(),
            reason,
        };
        let data_start = h.end.div_ceil(h.alignment).checked_mul(h.alignment);
        let data_start = data_start.ok_or_else(|| bad("data section offset overflows".into()))?;
        for t in &h.tensors {
            let end = t
                .offset
                .checked_add(t.n_bytes())
                .and_then(|e| e.checked_add(data_start));
            match end {
                Some(end) if end <= file_len => {}
                _ => {
                    return Err(bad(format!(
                        "tensor {:?} ({} {:?}, {} bytes at data offset {}) ends past the end of \
                         the file ({file_len} bytes, data starts at {data_start}): truncated file \
                         or bad offset",
                        t.name,
                        t.ggml_type.name(),
                        t.dims,
                        t.n_bytes(),
                        t.offset
                    )));
                }
            }
        }
        Ok(GgufFile {
            path,
            version: h.version,
            metadata: h.metadata,
            tensors: h.tensors,
            alignment: h.alignment,
            data_start,
            file_len,
            source,
        })
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Tensor data alignment (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Byte offset of the tensor data section in the file.
    pub fn data_start(&self) -> u64 {
        self.data_start
    }

    /// File size in bytes.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// All metadata in file order.
    pub fn metadata(&self) -> &[(String, GgufValue)] {
        &self.metadata
    }

    /// One metadata value.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// `general.architecture` (`"llama"`).
    pub fn architecture(&self) -> Result<&str, IoError> {
        let key = "general.architecture";
        self.get(key)
            .ok_or_else(|| self.meta_err(key, "missing"))?
            .as_str()
            .ok_or_else(|| self.meta_err(key, "not a string"))
    }

    /// All tensor infos in file order.
    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }

    /// One tensor info by GGUF name.
    pub fn tensor(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The stored bytes of one tensor, by GGUF name.
    pub fn tensor_bytes(&self, name: &str) -> Result<Vec<u8>, IoError> {
        let info = self.tensor(name).ok_or_else(|| self.missing(name))?;
        // invariant: assemble() checked data_start + offset + n_bytes <= file_len.
        let start = self.data_start + info.offset;
        let n = info.n_bytes() as usize;
        match &self.source {
            Source::Bytes(b) => Ok(b[start as usize..start as usize + n].to_vec()),
            Source::File(f) => {
                let mut file = f.lock().map_err(|_| IoError::NotGguf {
                    path: self.path.clone(),
                    reason: "file handle poisoned by a panic in another thread".into(),
                })?;
                let mut buf = vec![0u8; n];
                file.seek(SeekFrom::Start(start))
                    .and_then(|_| file.read_exact(&mut buf))
                    .map_err(os_err(&self.path))?;
                Ok(buf)
            }
        }
    }

    /// One tensor decoded to `f32` in stored (GGUF) element order, by GGUF name: row-major over
    /// [`GgufTensorInfo::dims`]. No un-permutation; see [`GgufFile::hf_tensor_f32`].
    pub fn tensor_f32(&self, name: &str) -> Result<Vec<f32>, IoError> {
        let info = self.tensor(name).ok_or_else(|| self.missing(name))?;
        if !info.ggml_type.is_decodable() {
            return Err(IoError::GgmlType {
                path: self.path.clone(),
                name: name.to_string(),
                type_id: info.ggml_type.0,
                type_name: info.ggml_type.name().to_string(),
            });
        }
        let bytes = self.tensor_bytes(name)?;
        blocks::dequantize(info.ggml_type, &bytes, info.numel()).map_err(|e| IoError::NotGguf {
            path: self.path.clone(),
            reason: format!("tensor {name:?}: {e}"),
        })
    }

    pub(crate) fn missing(&self, name: &str) -> IoError {
        IoError::MissingTensor {
            path: self.path.clone(),
            name: name.to_string(),
        }
    }

    pub(crate) fn meta_err(&self, key: &str, reason: impl Into<String>) -> IoError {
        IoError::GgufMetadata {
            path: self.path.clone(),
            key: key.to_string(),
            reason: reason.into(),
        }
    }
}

/// Everything before the tensor data.
struct Header {
    version: u32,
    metadata: Vec<(String, GgufValue)>,
    tensors: Vec<GgufTensorInfo>,
    alignment: u64,
    /// Byte offset just past the last tensor info.
    end: u64,
}

/// A bounds-checked little-endian reader that knows its position and the file length.
struct Reader<'p, R> {
    inner: R,
    pos: u64,
    len: u64,
    path: &'p Path,
}

impl<R: Read> Reader<'_, R> {
    fn err(&self, reason: String) -> IoError {
        IoError::NotGguf {
            path: self.path.to_path_buf(),
            reason,
        }
    }

    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    fn bytes<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N], IoError> {
        let mut b = [0u8; N];
        if self.remaining() < N as u64 {
            return Err(self.truncated(N as u64, what));
        }
        self.inner.read_exact(&mut b).map_err(os_err(self.path))?;
        self.pos += N as u64;
        Ok(b)
    }

    fn truncated(&self, need: u64, what: &dyn Fn() -> String) -> IoError {
        self.err(format!(
            "truncated: {} needs {need} bytes at offset {} but the file has {} bytes",
            what(),
            self.pos,
            self.len
        ))
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, IoError> {
        Ok(u32::from_le_bytes(self.bytes(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, IoError> {
        Ok(u64::from_le_bytes(self.bytes(what)?))
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, IoError> {
        let start = self.pos;
        let n = self.u64(what)?;
        if n > self.remaining() {
            return Err(self.err(format!(
                "truncated: {} at offset {start} is a string of {n} bytes, but only {} bytes \
                 remain in the file",
                what(),
                self.remaining()
            )));
        }
        let mut buf = vec![0u8; n as usize];
        self.inner.read_exact(&mut buf).map_err(os_err(self.path))?;
        self.pos += n;
        String::from_utf8(buf).map_err(|e| {
            self.err(format!(
                "{} at offset {start} is not valid UTF-8 ({e})",
                what()
            ))
        })
    }

    /// A count of items of at least `min_bytes` each, checked against what is left.
    fn count(&mut self, min_bytes: u64, what: &dyn Fn() -> String) -> Result<u64, IoError> {
        let n = self.u64(what)?;
        if n.saturating_mul(min_bytes) > self.remaining() {
            return Err(self.err(format!(
                "{} is {n}, but only {} bytes remain after offset {}: truncated or corrupt",
                what(),
                self.remaining(),
                self.pos
            )));
        }
        Ok(n)
    }

    fn value(
        &mut self,
        ty: GgufValueType,
        depth: usize,
        what: &dyn Fn() -> String,
    ) -> Result<GgufValue, IoError> {
        use GgufValueType as T;
        Ok(match ty {
            T::U8 => GgufValue::U8(u8::from_le_bytes(self.bytes(what)?)),
            T::I8 => GgufValue::I8(i8::from_le_bytes(self.bytes(what)?)),
            T::U16 => GgufValue::U16(u16::from_le_bytes(self.bytes(what)?)),
            T::I16 => GgufValue::I16(i16::from_le_bytes(self.bytes(what)?)),
            T::U32 => GgufValue::U32(u32::from_le_bytes(self.bytes(what)?)),
            T::I32 => GgufValue::I32(i32::from_le_bytes(self.bytes(what)?)),
            T::F32 => GgufValue::F32(f32::from_le_bytes(self.bytes(what)?)),
            T::Bool => GgufValue::Bool(u8::from_le_bytes(self.bytes(what)?) != 0),
            T::String => GgufValue::String(self.string(what)?),
            T::U64 => GgufValue::U64(u64::from_le_bytes(self.bytes(what)?)),
            T::I64 => GgufValue::I64(i64::from_le_bytes(self.bytes(what)?)),
            T::F64 => GgufValue::F64(f64::from_le_bytes(self.bytes(what)?)),
            T::Array => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.err(format!(
                        "{} nests arrays more than {MAX_ARRAY_DEPTH} deep",
                        what()
                    )));
                }
                let at = self.pos;
                let id = self.u32(&|| format!("{} (array element type)", what()))?;
                let elem = GgufValueType::from_id(id).ok_or_else(|| {
                    self.err(format!(
                        "{} at offset {at}: unknown array element type {id} (GGUF defines 0..=12)",
                        what()
                    ))
                })?;
                let n = self.count(elem.min_bytes(), &|| format!("{} (array length)", what()))?;
                let mut items = Vec::with_capacity(n as usize);
                for i in 0..n {
                    items.push(self.value(elem, depth + 1, &|| format!("{}[{i}]", what()))?);
                }
                GgufValue::Array(elem, items)
            }
        })
    }
}

fn parse_header<R: Read>(r: &mut Reader<'_, R>) -> Result<Header, IoError> {
    let magic: [u8; 4] = r.bytes(&|| "the magic".into())?;
    if magic != MAGIC {
        return Err(r.err(format!(
            "bad magic {magic:02x?} (expected \"GGUF\" = {MAGIC:02x?})"
        )));
    }
    let version = r.u32(&|| "the version".into())?;
    if !(2..=3).contains(&version) {
        return Err(r.err(format!(
            "unsupported GGUF version {version} (wgtune reads versions 2 and 3)"
        )));
    }
    // smallest tensor info: 8 (name len) + 4 (n_dims) + 4 (type) + 8 (offset)
    let n_tensors = r.count(24, &|| "the tensor count".into())?;
    // smallest kv: 8 (key len) + 4 (type) + 1 (value)
    let n_kv = r.count(13, &|| "the metadata count".into())?;

    let mut metadata: Vec<(String, GgufValue)> = Vec::with_capacity(n_kv as usize);
    let mut keys = HashSet::with_capacity(n_kv as usize);
    for i in 0..n_kv {
        let key = r.string(&|| format!("metadata key #{i}"))?;
        let at = r.pos;
        let id = r.u32(&|| format!("the type of metadata {key:?}"))?;
        let ty = GgufValueType::from_id(id).ok_or_else(|| {
            r.err(format!(
                "metadata {key:?} at offset {at}: unknown value type {id} (GGUF defines 0..=12)"
            ))
        })?;
        let value = r.value(ty, 0, &|| format!("metadata {key:?}"))?;
        if !keys.insert(key.clone()) {
            return Err(r.err(format!("duplicate metadata key {key:?}")));
        }
        metadata.push((key, value));
    }

    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, v)) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() => a,
            _ => {
                return Err(r.err(format!(
                    "general.alignment is {v:?}; it must be a power of two"
                )));
            }
        },
    };

    let mut tensors: Vec<GgufTensorInfo> = Vec::with_capacity(n_tensors as usize);
    let mut names = HashSet::with_capacity(n_tensors as usize);
    for i in 0..n_tensors {
        let name = r.string(&|| format!("tensor name #{i}"))?;
        let what = |field: &str| format!("{field} of tensor {name:?}");
        let n_dims = r.u32(&|| what("the dimension count"))? as usize;
        if n_dims > MAX_DIMS {
            return Err(r.err(format!(
                "tensor {name:?} has {n_dims} dimensions (ggml allows at most {MAX_DIMS})"
            )));
        }
        let mut ne = Vec::with_capacity(n_dims);
        for d in 0..n_dims {
            ne.push(r.u64(&|| what(&format!("ne[{d}]")))?);
        }
        let at = r.pos;
        let ggml_type = GgmlType(r.u32(&|| what("the ggml type"))?);
        let offset = r.u64(&|| what("the data offset"))?;
        if !ggml_type.is_known() {
            return Err(IoError::GgmlType {
                path: r.path.to_path_buf(),
                name,
                type_id: ggml_type.0,
                type_name: format!("unknown (type id at offset {at})"),
            });
        }
        let numel = ne.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
        let numel = numel
            .filter(|&n| usize::try_from(n).is_ok() && i64::try_from(n).is_ok())
            .ok_or_else(|| r.err(format!("tensor {name:?} shape {ne:?} overflows")))?;
        let block = ggml_type.block_len().unwrap_or(1) as u64;
        if ne.first().is_some_and(|&n0| !n0.is_multiple_of(block))
            || ggml_type.bytes_for(numel).is_none()
        {
            return Err(r.err(format!(
                "tensor {name:?}: ne[0] of shape {ne:?} is not a multiple of the {} block \
                 length {block}",
                ggml_type.name()
            )));
        }
        if !offset.is_multiple_of(alignment) {
            return Err(r.err(format!(
                "tensor {name:?}: data offset {offset} is not a multiple of the alignment \
                 {alignment}"
            )));
        }
        if !names.insert(name.clone()) {
            return Err(r.err(format!("duplicate tensor name {name:?}")));
        }
        tensors.push(GgufTensorInfo {
            name,
            dims: ne.iter().rev().map(|&d| d as usize).collect(),
            ggml_type,
            offset,
        });
    }
    Ok(Header {
        version,
        metadata,
        tensors,
        alignment,
        end: r.pos,
    })
}

#[cfg(test)]
mod tests {
    use super::write::{GgufTensorData, to_bytes};
    use super::*;

    fn tiny() -> Vec<u8> {
        let meta = vec![
            (
                "general.architecture".to_string(),
                GgufValue::String("llama".into()),
            ),
            (
                "a.nested".to_string(),
                GgufValue::Array(
                    GgufValueType::Array,
                    vec![
                        GgufValue::Array(GgufValueType::I16, vec![GgufValue::I16(-3)]),
                        GgufValue::Array(GgufValueType::Bool, vec![]),
                    ],
                ),
            ),
            ("a.f64".to_string(), GgufValue::F64(0.25)),
        ];
        let vals: Vec<f32> = (0..6).map(|i| i as f32).collect();
        let t = GgufTensorData::f32("w", vec![2, 3], &vals);
        to_bytes(3, &meta, &[t], DEFAULT_ALIGNMENT)
    }

    #[test]
    fn roundtrip_through_writer() {
        let f = GgufFile::from_bytes("tiny.gguf", tiny()).unwrap();
        assert_eq!(f.version(), 3);
        assert_eq!(f.architecture().unwrap(), "llama");
        assert_eq!(f.get("a.f64"), Some(&GgufValue::F64(0.25)));
        let nested = f.get("a.nested").unwrap().as_array().unwrap();
        assert_eq!(nested[0].as_array().unwrap()[0].as_i64(), Some(-3));
        assert_eq!(f.tensors()[0].dims, vec![2, 3]);
        assert_eq!(f.data_start() % 32, 0);
        assert_eq!(f.tensor_f32("w").unwrap(), vec![0., 1., 2., 3., 4., 5.]);
    }

    #[test]
    fn every_truncation_fails_cleanly() {
        let bytes = tiny();
        let full = GgufFile::from_bytes("t.gguf", bytes.clone()).unwrap();
        let data_end = full.data_start() + 6 * 4; // trailing padding after it is optional
        for cut in 0..data_end as usize {
            let r = GgufFile::from_bytes("t.gguf", bytes[..cut].to_vec());
            let e = r.expect_err(&format!("cut at {cut} parsed"));
            assert!(e.to_string().starts_with("t.gguf: "), "{e}");
        }
    }

    #[test]
    fn huge_counts_do_not_allocate() {
        let mut b = tiny();
        b[8..16].copy_from_slice(&u64::MAX.to_le_bytes()); // tensor count
        let e = GgufFile::from_bytes("t.gguf", b).unwrap_err().to_string();
        assert!(e.contains("tensor count"), "{e}");
    }
}
