//! safetensors checkpoints: one file, or a directory holding `model.safetensors` or shards listed
//! in `model.safetensors.index.json` (`{"weight_map": {tensor: shard file}}`).
//!
//! Floating tensors are read as `f32` (from F32, F16 or BF16, little-endian); other tensors can be
//! copied byte-for-byte through [`OwnedTensor`].

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView, View};

use super::{IoError, os_err};

/// The file name of a single-file checkpoint inside a model directory.
pub const SINGLE_FILE: &str = "model.safetensors";
/// The shard index of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// A tensor held in memory: dtype, shape and little-endian bytes. Implements [`View`] for writing.
#[derive(Clone, Debug, PartialEq)]
pub struct OwnedTensor {
    /// Element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// Raw little-endian bytes, `prod(shape) * dtype.size()` long.
    pub data: Vec<u8>,
}

impl OwnedTensor {
    /// An F32 tensor.
    pub fn f32(shape: Vec<usize>, values: &[f32]) -> Self {
        OwnedTensor {
            dtype: Dtype::F32,
            shape,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    /// A U8 tensor.
    pub fn u8(shape: Vec<usize>, bytes: Vec<u8>) -> Self {
        OwnedTensor {
            dtype: Dtype::U8,
            shape,
            data: bytes,
        }
    }

    /// A copy of a stored tensor.
    pub fn from_view(view: &TensorView<'_>) -> Self {
        OwnedTensor {
            dtype: view.dtype(),
            shape: view.shape().to_vec(),
            data: view.data().to_vec(),
        }
    }
}

impl View for &OwnedTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// One safetensors file read into memory.
#[derive(Debug)]
pub struct SafetensorsFile {
    path: PathBuf,
    bytes: Vec<u8>,
}

impl SafetensorsFile {
    /// Reads and validates `path`.
    pub fn open(path: &Path) -> Result<Self, IoError> {
        let bytes = std::fs::read(path).map_err(os_err(path))?;
        Self::from_bytes(path, bytes)
    }

    /// Validates a safetensors file held in memory; `path` names it in errors.
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self, IoError> {
        let file = SafetensorsFile {
            path: path.to_path_buf(),
            bytes,
        };
        file.tensors()?;
        Ok(file)
    }

    /// The parsed view.
    pub fn tensors(&self) -> Result<SafeTensors<'_>, IoError> {
        SafeTensors::deserialize(&self.bytes).map_err(|e| IoError::NotSafetensors {
            path: self.path.clone(),
            reason: e.to_string(),
        })
    }

    /// The file path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A checkpoint: one or more safetensors files, with a map from tensor name to file.
#[derive(Debug)]
pub struct Checkpoint {
    files: Vec<SafetensorsFile>,
    /// tensor name → index into `files`, sorted by name.
    names: BTreeMap<String, usize>,
}

impl Checkpoint {
    /// Opens a `.safetensors` file, or a model directory (`model.safetensors` or a sharded index).
    pub fn open(path: &Path) -> Result<Self, IoError> {
        let meta = std::fs::metadata(path).map_err(os_err(path))?;
        let paths = if meta.is_dir() {
            shard_paths(path)?
        } else {
            vec![path.to_path_buf()]
        };
        let files = paths
            .iter()
            .map(|p| SafetensorsFile::open(p))
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_files(files)
    }

    /// A checkpoint of already read files (shards in any order).
    pub fn from_files(files: Vec<SafetensorsFile>) -> Result<Self, IoError> {
        let mut names = BTreeMap::new();
        for (i, file) in files.iter().enumerate() {
            for name in file.tensors()?.names() {
                names.insert(name.to_string(), i);
            }
        }
        Ok(Checkpoint { files, names })
    }

    /// Bytes of its files (headers included).
    pub fn data_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes.len() as u64).sum()
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names.keys().map(String::as_str)
    }

    /// The file holding `name`.
    pub fn file_of(&self, name: &str) -> Option<&SafetensorsFile> {
        self.names.get(name).map(|&i| &self.files[i])
    }

    /// A view of tensor `name`.
    pub fn view(&self, name: &str) -> Result<(TensorView<'_>, &Path), IoError> {
        let file = self.file_of(name).ok_or_else(|| IoError::MissingTensor {
            path: self
                .files
                .first()
                .map(|f| f.path.clone())
                .unwrap_or_default(),
            name: name.to_string(),
        })?;
        let st = file.tensors()?;
        let view = st.tensor(name).map_err(|_| IoError::MissingTensor {
            path: file.path.clone(),
            name: name.to_string(),
        })?;
        Ok((view, &file.path))
    }
}

/// The shard files of a model directory, in first-use order of the index.
fn shard_paths(dir: &Path) -> Result<Vec<PathBuf>, IoError> {
    let single = dir.join(SINGLE_FILE);
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join(INDEX_FILE);
    if !index.is_file() {
        return Err(IoError::NoWeights(dir.to_path_buf()));
    }
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: HashMap<String, String>,
    }
    let text = std::fs::read_to_string(&index).map_err(os_err(&index))?;
    let parsed: Index = serde_json::from_str(&text).map_err(|e| IoError::Json {
        path: index.clone(),
        reason: e.to_string(),
    })?;
    let mut shards: Vec<&String> = parsed.weight_map.values().collect();
    shards.sort();
    shards.dedup();
    Ok(shards.into_iter().map(|s| dir.join(s)).collect())
}

/// Whether `dtype` is a floating type [`read_f32`] converts.
pub fn is_float(dtype: Dtype) -> bool {
    matches!(dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16)
}

/// A floating tensor's values as `f32` (F32, F16 or BF16; F16/BF16 widen exactly).
pub fn read_f32(view: &TensorView<'_>, path: &Path, name: &str) -> Result<Vec<f32>, IoError> {
    let data = view.data();
    let values = match view.dtype() {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => data
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        other => {
            return Err(IoError::Dtype {
                path: path.to_path_buf(),
                name: name.to_string(),
                expected: "F32, F16 or BF16".to_string(),
                got: format!("{other:?}"),
            });
        }
    };
    Ok(values)
}

/// A U8 tensor's bytes.
pub fn read_u8<'a>(view: &TensorView<'a>, path: &Path, name: &str) -> Result<&'a [u8], IoError> {
    if view.dtype() != Dtype::U8 {
        return Err(IoError::Dtype {
            path: path.to_path_buf(),
            name: name.to_string(),
            expected: "U8".to_string(),
            got: format!("{:?}", view.dtype()),
        });
    }
    Ok(view.data())
}

/// Serializes `tensors` with metadata `{"format": "pt"}` (what transformers writes) to `path`.
/// Tensors are laid out as safetensors orders them: by dtype alignment, then name.
pub fn write_safetensors(
    tensors: &BTreeMap<String, OwnedTensor>,
    path: &Path,
) -> Result<(), IoError> {
    let bytes = serialize_safetensors(tensors, path)?;
    std::fs::write(path, bytes).map_err(os_err(path))
}

/// The bytes [`write_safetensors`] writes (`path` names the file in errors).
pub fn serialize_safetensors(
    tensors: &BTreeMap<String, OwnedTensor>,
    path: &Path,
) -> Result<Vec<u8>, IoError> {
    let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    safetensors::tensor::serialize(tensors.iter(), Some(metadata)).map_err(|e| {
        IoError::NotSafetensors {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }
    })
}
