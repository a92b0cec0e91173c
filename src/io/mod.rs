//! Reading and writing checkpoints: safetensors files and sharded directories
//! ([`safetensors`]), bitsandbytes' 4-bit key layout on top of them ([`bnb`]), and Python-exact
//! JSON text for the files transformers reads ([`pyjson`]);
//! GGUF files and their block decoders ([`gguf`]); the default model's cache ([`model_cache`]);
//! stored ZIP archives for downloads ([`zip`]).

pub mod bnb;
pub mod gguf;
pub mod model_cache;
pub mod pyjson;
pub mod safetensors;
pub mod zip;

use std::path::PathBuf;

pub use self::safetensors::{
    Checkpoint, OwnedTensor, SafetensorsFile, read_f32, serialize_safetensors, write_safetensors,
};

/// Errors from checkpoint I/O. Every variant names the file and, where there is one, the tensor.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// The OS refused a read, write or rename.
    #[error("{path}: {cause}")]
    Os {
        /// File or directory involved.
        path: PathBuf,
        /// Underlying error (in the message, so not also a `source()`: printing the chain
        /// would say it twice).
        cause: std::io::Error,
    },
    /// An output that cannot be written where it was asked for: its temporary sibling could
    /// not be created (a read-only or virtual directory, no space, no permission).
    #[error("{path}: cannot write the output here (creating {tmp}: {cause})")]
    NotWritable {
        /// The output asked for.
        path: PathBuf,
        /// The temporary name next to it.
        tmp: PathBuf,
        /// What the OS said (in the message, not also a `source()`).
        cause: std::io::Error,
    },
    /// The bytes are not a valid safetensors file (bad header, truncated data...).
    #[error("{path}: not a valid safetensors file: {reason}")]
    NotSafetensors {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// A JSON file (config, shard index, quant state) that does not parse or lacks a field.
    #[error("{path}: invalid JSON: {reason}")]
    Json {
        /// The file (for a quant state: the checkpoint file).
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A directory with neither `model.safetensors` nor `model.safetensors.index.json`.
    #[error("{0}: no model.safetensors or model.safetensors.index.json in this directory")]
    NoWeights(PathBuf),
    /// A tensor that is not there.
    #[error("{path}: tensor {name:?} not found")]
    MissingTensor {
        /// The checkpoint.
        path: PathBuf,
        /// The key.
        name: String,
    },
    /// A tensor whose dtype this operation does not handle.
    #[error("{path}: tensor {name:?} has dtype {got}, expected {expected}")]
    Dtype {
        /// The checkpoint.
        path: PathBuf,
        /// The key.
        name: String,
        /// What was needed.
        expected: String,
        /// What the file holds.
        got: String,
    },
    /// A tensor whose shape disagrees with its companions.
    #[error("{path}: tensor {name:?} has shape {got:?}, expected {expected:?}")]
    Shape {
        /// The checkpoint.
        path: PathBuf,
        /// The key.
        name: String,
        /// Expected shape.
        expected: Vec<usize>,
        /// Actual shape.
        got: Vec<usize>,
    },
    /// Stored 4-bit parts that do not form a valid quantized tensor.
    #[error("{path}: {name}: {cause}")]
    Quant {
        /// The checkpoint.
        path: PathBuf,
        /// The Linear prefix.
        name: String,
        /// Why (in the message, not also a `source()`).
        cause: crate::quant::QuantError,
    },
    /// Bytes that are not a valid GGUF file: bad magic or version, truncated header, metadata or
    /// tensor data, bad UTF-8, unknown value type, out-of-range offset...
    #[error("{path}: not a valid GGUF file: {reason}")]
    NotGguf {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the byte offset where there is one.
        reason: String,
    },
    /// A GGUF tensor stored in a ggml type that is unknown or that wgtune does not decode.
    #[error(
        "{path}: tensor {name:?} has ggml type {type_name} (id {type_id}), which wgtune cannot \
         decode (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K)"
    )]
    GgmlType {
        /// The file.
        path: PathBuf,
        /// The GGUF tensor name.
        name: String,
        /// The raw type id.
        type_id: u32,
        /// ggml's name for it, or "unknown".
        type_name: String,
    },
    /// A GGUF metadata key that is missing, of the wrong type, or out of range.
    #[error("{path}: GGUF metadata {key:?}: {reason}")]
    GgufMetadata {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The default model is not cached and could not be fetched.
    #[error("cannot get the default model: {0}")]
    DefaultModel(String),
}

/// Alias following the crate's `module::Error` convention.
pub type Error = IoError;

/// Wraps an OS error with its path.
pub(crate) fn os_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> IoError {
    let path = path.into();
    move |cause| IoError::Os { path, cause }
}

/// A temporary name next to `path` (`dir/.name.tmp-<pid>`), for writing an output completely
/// before renaming it into place. Errors when `path` has no file name or its directory does
/// not exist.
pub fn temp_sibling(path: &std::path::Path) -> Result<PathBuf, IoError> {
    let bad = |what: &str, p: &std::path::Path| IoError::Os {
        path: p.to_path_buf(),
        cause: std::io::Error::new(std::io::ErrorKind::NotFound, what.to_string()),
    };
    let name = path
        .file_name()
        .ok_or_else(|| bad("output needs a file name", path))?
        .to_string_lossy();
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    if !parent.is_dir() {
        return Err(bad("output directory does not exist", parent));
    }
    Ok(parent.join(format!(".{name}.tmp-{}", std::process::id())))
}

/// [`temp_sibling`], created at once (an empty file, or a directory with `dir`), so that an
/// output that cannot be written fails before the work that fills it, naming the output.
pub fn create_temp_sibling(path: &std::path::Path, dir: bool) -> Result<PathBuf, IoError> {
    let tmp = temp_sibling(path)?;
    let made = if dir {
        std::fs::create_dir(&tmp)
    } else {
        std::fs::File::create(&tmp).map(drop)
    };
    made.map_err(|cause| IoError::NotWritable {
        path: path.to_path_buf(),
        tmp: tmp.clone(),
        cause,
    })?;
    Ok(tmp)
}
