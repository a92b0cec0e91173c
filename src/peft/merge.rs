//! Folding a LoRA adapter into its base model (`wgtune merge`): for every adapted projection
//! `W' = W + s·B·A` (`W: [out, in]`, `A: [r, in]`, `B: [out, r]`, `s` = `α/r`, or `α/√r` with
//! rsLoRA), every other tensor carried over, written as a complete Hugging Face model directory
//! that needs no adapter any more.
//!
//! Everything happens on the host, tensor by tensor, without building the model on a device:
//! * source: a Hugging Face directory (float, or a bitsandbytes 4-bit checkpoint, whose 4-bit
//!   projections are dequantized first: the exact weights a QLoRA adapter was trained against), or
//!   a GGUF file (decoded to f32 in HF layout, Q/K rows un-permuted);
//! * output (`--dtype`): `f32`, `f16`, `bf16` (every float tensor cast, round to nearest even as
//!   torch's `.to()`), or `nf4`: the seven projections of every layer quantized to bitsandbytes
//!   NF4 (blocksize 64, double quantization, QLoRA's defaults) in the key layout of
//!   [`crate::io::bnb`], embeddings, norms and LM head kept f32, and `config.json` carrying the
//!   `quantization_config` transformers writes for such a checkpoint: byte for byte what
//!   `wgtune quantize` makes of the `f32` merge.
//!
//! The directory holds `model.safetensors` (HF key names), `config.json` (`torch_dtype`, and
//! `dtype` when the source config spells it that way, set to the output dtype; a source
//! `quantization_config` dropped), the tokenizer and the rest of an HF source's side files
//! (`tokenizer.json`, `tokenizer_config.json`, `generation_config.json`, ...; other weight files
//! are not copied), or for a GGUF source `tokenizer.json` rebuilt from its vocabulary and a
//! `tokenizer_config.json` with its chat template and bos/eos/pad/unk tokens.
//!
//! Every input is checked before anything is written: the adapter against the model's shapes,
//! the output path (not the model itself, not an existing non-empty path). The directory is built
//! under a hidden temporary name next to `out` and renamed into place at the end, so a failed or
//! killed run never leaves a half-written `out`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use safetensors::tensor::Dtype;
use serde_json::Value;

use super::adapter_dir::{AdapterError, AdapterFile, AdapterWeights, WEIGHTS_FILE};
use super::lora::{TargetModule, module_key};
use crate::data::tokenizer::{self, Tokenizer};
use crate::io::bnb::quantization_config;
use crate::io::create_temp_sibling;
use crate::io::gguf::GgufFile;
use crate::io::safetensors::{SINGLE_FILE, is_float};
use crate::io::{self, Checkpoint, IoError, OwnedTensor, bnb, pyjson, read_f32};
use crate::model::{LlamaConfig, LoadError};
use crate::pretrained::{ModelFormat, PretrainedError};
use crate::quant::{QuantConfig, QuantizedTensor};

/// `config.json`.
const CONFIG_FILE: &str = "config.json";
/// `tokenizer.json`.
const TOKENIZER_FILE: &str = "tokenizer.json";
/// `tokenizer_config.json`.
const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";

/// The weight format of a merged model (`--dtype`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MergeDtype {
    /// float32 (lossless: exactly `W + s·B·A` in f32).
    #[default]
    F32,
    /// float16.
    F16,
    /// bfloat16.
    Bf16,
    /// bitsandbytes NF4 projections (blocksize 64, double quant), everything else float32.
    Nf4,
}

impl MergeDtype {
    /// The four, in `--help` order.
    pub const ALL: [MergeDtype; 4] = [
        MergeDtype::F32,
        MergeDtype::F16,
        MergeDtype::Bf16,
        MergeDtype::Nf4,
    ];

    /// The CLI name (`f32`, `f16`, `bf16`, `nf4`).
    pub fn name(self) -> &'static str {
        match self {
            MergeDtype::F32 => "f32",
            MergeDtype::F16 => "f16",
            MergeDtype::Bf16 => "bf16",
            MergeDtype::Nf4 => "nf4",
        }
    }

    /// The `torch_dtype` of `config.json` (for NF4: the dtype of the unquantized tensors and of
    /// the compute, float32).
    pub fn torch_dtype(self) -> &'static str {
        match self {
            MergeDtype::F16 => "float16",
            MergeDtype::Bf16 => "bfloat16",
            MergeDtype::F32 | MergeDtype::Nf4 => "float32",
        }
    }

    /// The safetensors dtype of the float tensors.
    fn float_dtype(self) -> Dtype {
        match self {
            MergeDtype::F16 => Dtype::F16,
            MergeDtype::Bf16 => Dtype::BF16,
            MergeDtype::F32 | MergeDtype::Nf4 => Dtype::F32,
        }
    }
}

impl FromStr for MergeDtype {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        MergeDtype::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| format!("unknown dtype {s:?} (f32, f16, bf16 or nf4)"))
    }
}

impl fmt::Display for MergeDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Errors from [`merge`]. Each names the file (or directory) at fault.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    /// Reading or writing a checkpoint or file failed.
    #[error(transparent)]
    Io(#[from] IoError),
    /// The adapter directory is missing or invalid.
    #[error(transparent)]
    Adapter(#[from] AdapterError),
    /// The model's config is invalid or unsupported.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The model path is not a model.
    #[error(transparent)]
    Model(#[from] PretrainedError),
    /// The GGUF tokenizer cannot be rebuilt.
    #[error(transparent)]
    Tokenizer(#[from] tokenizer::Error),
    /// The adapter does not fit the model (another model's adapter).
    #[error("{path}: {reason}")]
    Mismatch {
        /// The adapter's weights file.
        path: PathBuf,
        /// What does not fit.
        reason: String,
    },
    /// The output path cannot be used.
    #[error("{path}: {reason}")]
    Output {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Where the merged model's tokenizer came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenizerSource {
    /// `tokenizer.json` copied from the HF source directory.
    Copied,
    /// Rebuilt from the GGUF file's vocabulary.
    FromGguf,
    /// The source has none (an HF directory without `tokenizer.json`).
    None,
}

/// What [`merge`] wrote.
#[derive(Clone, Debug)]
pub struct MergeReport {
    /// The model directory written.
    pub out: PathBuf,
    /// The source's format.
    pub format: ModelFormat,
    /// The weight format written.
    pub dtype: MergeDtype,
    /// How many projections got `s·B·A` added.
    pub merged: usize,
    /// Model tensors written (a 4-bit projection counts once, not once per bnb key).
    pub tensors: usize,
    /// The file names inside `out`, sorted.
    pub files: Vec<String>,
    /// Where the tokenizer came from.
    pub tokenizer: TokenizerSource,
    /// Bytes of `model.safetensors`.
    pub weight_bytes: u64,
}

/// Progress of [`merge_with_progress`], reported once the inputs have been checked.
#[derive(Clone, Copy, Debug)]
pub enum MergeProgress<'a> {
    /// Tensors are about to be read and merged, `total` of them.
    Start {
        /// Number of tensors.
        total: usize,
    },
    /// Tensor `name` is done.
    Tensor {
        /// HF name.
        name: &'a str,
    },
    /// Writing file `file` of the output.
    Writing {
        /// File name.
        file: &'a str,
    },
}

/// Merges the LoRA adapter in directory `adapter` into the model at `model` (a GGUF file or an HF
/// directory) and writes the result to the new directory `out` (see the module doc).
pub fn merge(
    model: &Path,
    adapter: &Path,
    out: &Path,
    dtype: MergeDtype,
) -> Result<MergeReport, MergeError> {
    merge_with_progress(model, adapter, out, dtype, &mut |_| {})
}

/// [`merge`], reporting progress to `progress`.
pub fn merge_with_progress(
    model: &Path,
    adapter: &Path,
    out: &Path,
    dtype: MergeDtype,
    progress: &mut dyn FnMut(MergeProgress<'_>),
) -> Result<MergeReport, MergeError> {
    // --- check every input before writing anything ---
    let format = ModelFormat::detect(model)?;
    check_output(model, out)?;
    let source = Source::open(model, format)?;
    let adapter = AdapterFile::read(adapter)?;
    let plan = Plan::new(&source, &adapter)?;
    // --- build the directory under a temporary name ---
    let tmp = create_temp_sibling(out, true)?;
    let result = write_dir(&source, &adapter, &plan, dtype, &tmp, progress).and_then(|report| {
        if out.exists() {
            // An empty directory (checked above) the user made for us.
            std::fs::remove_dir(out).map_err(io::os_err(out))?;
        }
        std::fs::rename(&tmp, out).map_err(io::os_err(out))?;
        Ok(report)
    });
    match result {
        Ok((merged, tensors, tokenizer, weight_bytes)) => {
            let mut files: Vec<String> = std::fs::read_dir(out)
                .map_err(io::os_err(out))?
                .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                .collect();
            files.sort();
            Ok(MergeReport {
                out: out.to_path_buf(),
                format,
                dtype,
                merged,
                tensors,
                files,
                tokenizer,
                weight_bytes,
            })
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

/// Refuses to write into the model's own directory (or below it), or over an existing file or
/// non-empty directory (the adapter's, say).
fn check_output(model: &Path, out: &Path) -> Result<(), MergeError> {
    let refuse = |reason: &str| {
        Err(MergeError::Output {
            path: out.to_path_buf(),
            reason: reason.to_string(),
        })
    };
    let Some(out_canon) = canonical_new(out) else {
        return refuse("its parent directory does not exist");
    };
    if model.is_dir()
        && let Ok(model) = model.canonicalize()
        && out_canon.starts_with(&model)
    {
        return refuse("the model's own directory (or inside it); give a new directory");
    }
    if out.exists() {
        let empty_dir = out.is_dir()
            && std::fs::read_dir(out)
                .map(|mut d| d.next().is_none())
                .unwrap_or(false);
        if !empty_dir {
            return refuse("already exists (give a new directory name)");
        }
    }
    Ok(())
}

/// The canonical form of `path`, which may not exist yet (then its parent must).
fn canonical_new(path: &Path) -> Option<PathBuf> {
    path.canonicalize().ok().or_else(|| {
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Some(parent.canonicalize().ok()?.join(path.file_name()?))
    })
}

/// The model being merged into.
enum Source {
    /// A Hugging Face directory.
    Hf {
        dir: PathBuf,
        ckpt: Checkpoint,
        config: LlamaConfig,
        /// `config.json` as read.
        config_json: Value,
    },
    /// A GGUF file.
    Gguf {
        file: Box<GgufFile>,
        config: LlamaConfig,
        /// The equivalent HF `config.json`.
        config_json: Value,
    },
}

impl Source {
    fn open(path: &Path, format: ModelFormat) -> Result<Self, MergeError> {
        match format {
            ModelFormat::HfDir => {
                let config_path = path.join(CONFIG_FILE);
                let text =
                    std::fs::read_to_string(&config_path).map_err(io::os_err(&config_path))?;
                let config = LlamaConfig::from_json(&text, &config_path)?;
                config.validate()?;
                let config_json: Value =
                    serde_json::from_str(&text).map_err(|e| LoadError::Config {
                        path: config_path.clone(),
                        reason: e.to_string(),
                    })?;
                if !config_json.is_object() {
                    return Err(LoadError::Config {
                        path: config_path,
                        reason: "expected a JSON object".to_string(),
                    }
                    .into());
                }
                Ok(Source::Hf {
                    dir: path.to_path_buf(),
                    ckpt: Checkpoint::open(path)?,
                    config,
                    config_json,
                })
            }
            ModelFormat::Gguf => {
                let file = GgufFile::open(path)?;
                let config_json = file.llama_config()?.to_hf_config_json();
                let config = LlamaConfig::from_json(&config_json.to_string(), path)?;
                config.validate()?;
                Ok(Source::Gguf {
                    file: Box::new(file),
                    config,
                    config_json,
                })
            }
        }
    }

    fn config(&self) -> &LlamaConfig {
        match self {
            Source::Hf { config, .. } | Source::Gguf { config, .. } => config,
        }
    }

    /// The file to name in errors about tensor `name`.
    fn origin(&self, name: &str) -> PathBuf {
        match self {
            Source::Hf { dir, ckpt, .. } => ckpt
                .file_of(name)
                .map_or_else(|| dir.clone(), |f| f.path().to_path_buf()),
            Source::Gguf { file, .. } => file.path().to_path_buf(),
        }
    }

    /// Whether the Linear `prefix` is stored as bitsandbytes 4-bit.
    fn is_bnb(&self, prefix: &str) -> Result<bool, MergeError> {
        let Source::Hf { ckpt, .. } = self else {
            return Ok(false);
        };
        match ckpt.file_of(&format!("{prefix}.weight")) {
            Some(file) => Ok(bnb::is_quantized(&file.tensors()?, prefix)),
            None => Ok(false),
        }
    }

    /// Values of tensor `name` in HF layout, checked to have shape `expected` (a bnb 4-bit
    /// Linear weight is dequantized).
    fn read(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>, MergeError> {
        let (values, shape) = match self {
            Source::Hf { ckpt, .. } => {
                let prefix = name.strip_suffix(".weight").unwrap_or(name);
                let file = ckpt.file_of(name);
                match file {
                    Some(file) if self.is_bnb(prefix)? => {
                        let q = bnb::read_quantized_from(&file.tensors()?, prefix, file.path())?;
                        (q.dequantize(), q.shape().to_vec())
                    }
                    _ => {
                        let (view, path) = ckpt.view(name)?;
                        (read_f32(&view, path, name)?, view.shape().to_vec())
                    }
                }
            }
            Source::Gguf { file, .. } => {
                let (dims, values) = file.hf_tensor_f32(name)?;
                (values, dims)
            }
        };
        if shape != expected || values.len() != expected.iter().product::<usize>() {
            return Err(IoError::Shape {
                path: self.origin(name),
                name: name.to_string(),
                expected: expected.to_vec(),
                got: shape,
            }
            .into());
        }
        Ok(values)
    }
}

/// One model tensor to write.
struct Entry {
    /// HF name.
    name: String,
    /// Row-major shape.
    shape: Vec<usize>,
    /// For a projection: its Linear prefix (`model.layers.0.self_attn.q_proj`) and the adapter
    /// module key, when the adapter has one for it.
    linear: Option<(String, Option<String>)>,
}

/// The tensors of the merged model and the source tensors carried over as they are.
struct Plan {
    entries: Vec<Entry>,
    /// HF-source tensors that are not model tensors (nor a 4-bit Linear's companions).
    extra: Vec<String>,
    merged: usize,
}

impl Plan {
    /// Every tensor the model needs, with shapes from the config, and the adapter checked to
    /// name only modules the model has, with shapes that fit them.
    fn new(source: &Source, adapter: &AdapterFile) -> Result<Self, MergeError> {
        let c = source.config();
        let (hidden, inter, vocab) = (c.hidden_size, c.intermediate_size, c.vocab_size);
        let (h, kv, d) = (c.num_attention_heads, c.num_kv_heads(), c.head_dim());
        let weights = adapter.dir.join(WEIGHTS_FILE);
        let mut entries = vec![Entry {
            name: "model.embed_tokens.weight".to_string(),
            shape: vec![vocab, hidden],
            linear: None,
        }];
        let mut placed = BTreeSet::new();
        for i in 0..c.num_hidden_layers {
            let p = format!("model.layers.{i}");
            for norm in ["input_layernorm", "post_attention_layernorm"] {
                entries.push(Entry {
                    name: format!("{p}.{norm}.weight"),
                    shape: vec![hidden],
                    linear: None,
                });
            }
            for target in TargetModule::ALL {
                let shape = match target {
                    TargetModule::Q => [h * d, hidden],
                    TargetModule::K | TargetModule::V => [kv * d, hidden],
                    TargetModule::O => [hidden, h * d],
                    TargetModule::Gate | TargetModule::Up => [inter, hidden],
                    TargetModule::Down => [hidden, inter],
                };
                let key = module_key(i, target);
                let module = match adapter.modules.get(&key) {
                    Some(w) => {
                        check_fit(&key, w, shape, &weights)?;
                        placed.insert(key.clone());
                        Some(key)
                    }
                    None => None,
                };
                let prefix = format!("{p}.{}", target.path());
                entries.push(Entry {
                    name: format!("{prefix}.weight"),
                    shape: shape.to_vec(),
                    linear: Some((prefix, module)),
                });
            }
        }
        if let Some(extra) = adapter.modules.keys().find(|k| !placed.contains(*k)) {
            return Err(MergeError::Mismatch {
                path: weights,
                reason: format!(
                    "{extra}: the model ({} layers) has no such module (an adapter for another \
                     model?)",
                    c.num_hidden_layers
                ),
            });
        }
        entries.push(Entry {
            name: "model.norm.weight".to_string(),
            shape: vec![hidden],
            linear: None,
        });
        if !c.tie_word_embeddings {
            entries.push(Entry {
                name: "lm_head.weight".to_string(),
                shape: vec![vocab, hidden],
                linear: None,
            });
        }

        let mut extra = Vec::new();
        if let Source::Hf { ckpt, .. } = source {
            let model_names: BTreeSet<&str> = entries.iter().map(|e| e.name.as_str()).collect();
            let mut bnb_prefixes = Vec::new();
            for e in &entries {
                if let Some((prefix, _)) = &e.linear
                    && source.is_bnb(prefix)?
                {
                    bnb_prefixes.push(format!("{prefix}.weight."));
                }
            }
            extra = ckpt
                .names()
                .filter(|n| !model_names.contains(n))
                .filter(|n| !bnb_prefixes.iter().any(|p| n.starts_with(p.as_str())))
                .map(str::to_string)
                .collect();
        }
        Ok(Plan {
            entries,
            extra,
            merged: placed.len(),
        })
    }
}

/// Checks that module `key`'s `A: [r, in]` and `B: [out, r]` fit a `[out, in]` projection.
fn check_fit(
    key: &str,
    w: &AdapterWeights,
    [out, inp]: [usize; 2],
    weights: &Path,
) -> Result<(), MergeError> {
    if w.a_shape[1] != inp || w.b_shape[0] != out {
        return Err(MergeError::Mismatch {
            path: weights.to_path_buf(),
            reason: format!(
                "{key}: lora_A {:?} / lora_B {:?} do not fit the model's [{out}, {inp}] \
                 projection (an adapter for another model?)",
                w.a_shape, w.b_shape
            ),
        });
    }
    Ok(())
}

/// Writes the merged model into the (new, empty) directory `dir`; returns the number of merged
/// projections, of model tensors, the tokenizer's source and the weights' size.
fn write_dir(
    source: &Source,
    adapter: &AdapterFile,
    plan: &Plan,
    dtype: MergeDtype,
    dir: &Path,
    progress: &mut dyn FnMut(MergeProgress<'_>),
) -> Result<(usize, usize, TokenizerSource, u64), MergeError> {
    let scale = adapter.config.scale();
    let quant = QuantConfig::default();
    progress(MergeProgress::Start {
        total: plan.entries.len() + plan.extra.len(),
    });
    let mut tensors: BTreeMap<String, OwnedTensor> = BTreeMap::new();
    for entry in &plan.entries {
        let mut values = source.read(&entry.name, &entry.shape)?;
        match &entry.linear {
            Some((prefix, module)) => {
                if let Some(w) = module.as_ref().map(|m| &adapter.modules[m]) {
                    add_delta(&mut values, &w.a, &w.b, w.a_shape[0], w.a_shape[1], scale);
                }
                if dtype == MergeDtype::Nf4 {
                    let q = QuantizedTensor::quantize(&values, &entry.shape, quant).map_err(
                        |source_err| IoError::Quant {
                            path: source.origin(&entry.name),
                            name: prefix.clone(),
                            cause: source_err,
                        },
                    )?;
                    bnb::write_entries(prefix, &q, Dtype::F32, &mut tensors);
                } else {
                    tensors.insert(
                        entry.name.clone(),
                        encode(&values, &entry.shape, dtype.float_dtype()),
                    );
                }
            }
            None => {
                tensors.insert(
                    entry.name.clone(),
                    encode(&values, &entry.shape, dtype.float_dtype()),
                );
            }
        }
        progress(MergeProgress::Tensor { name: &entry.name });
    }
    if let Source::Hf { ckpt, .. } = source {
        for name in &plan.extra {
            let (view, path) = ckpt.view(name)?;
            let tensor = if is_float(view.dtype()) {
                encode(
                    &read_f32(&view, path, name)?,
                    view.shape(),
                    dtype.float_dtype(),
                )
            } else {
                OwnedTensor::from_view(&view)
            };
            tensors.insert(name.clone(), tensor);
            progress(MergeProgress::Tensor { name });
        }
    }

    progress(MergeProgress::Writing { file: SINGLE_FILE });
    let weights = dir.join(SINGLE_FILE);
    write_weights(&tensors, &weights)?;
    drop(tensors);
    let weight_bytes = std::fs::metadata(&weights)
        .map_err(io::os_err(&weights))?
        .len();

    progress(MergeProgress::Writing { file: CONFIG_FILE });
    let mut config = match source {
        Source::Hf { config_json, .. } | Source::Gguf { config_json, .. } => config_json.clone(),
    };
    if let Some(obj) = config.as_object_mut() {
        obj.remove("quantization_config");
        if obj.contains_key("dtype") {
            obj.insert("dtype".to_string(), dtype.torch_dtype().into());
        }
        obj.insert("torch_dtype".to_string(), dtype.torch_dtype().into());
        if dtype == MergeDtype::Nf4 {
            obj.insert(
                "quantization_config".to_string(),
                quantization_config(quant),
            );
        }
    }
    let config_path = dir.join(CONFIG_FILE);
    write_text(&config_path, &(pyjson::to_pretty(&config) + "\n"))?;
    // The weights went through a private (0600) temporary file: give them the permissions any
    // new file gets, as config.json did.
    let perms = std::fs::metadata(&config_path)
        .map_err(io::os_err(&config_path))?
        .permissions();
    std::fs::set_permissions(&weights, perms).map_err(io::os_err(&weights))?;

    let tokenizer = match source {
        Source::Hf { dir: src, .. } => {
            copy_side_files(src, dir, progress)?;
            if dir.join(TOKENIZER_FILE).is_file() {
                TokenizerSource::Copied
            } else {
                TokenizerSource::None
            }
        }
        Source::Gguf { file, config, .. } => {
            progress(MergeProgress::Writing {
                file: TOKENIZER_FILE,
            });
            write_gguf_tokenizer(file, config, dir)?;
            TokenizerSource::FromGguf
        }
    };
    Ok((plan.merged, plan.entries.len(), tokenizer, weight_bytes))
}

/// `w += s·B·A` for row-major `w: [out, in]`, `a: [r, in]`, `b: [out, r]`: each row's delta
/// `Σₖ B[o,k]·A[k,:]` is summed in f32, then scaled and added (PEFT's
/// `W + (B @ A) * scaling`), rows split over the CPU's threads.
fn add_delta(w: &mut [f32], a: &[f32], b: &[f32], r: usize, inp: usize, scale: f32) {
    let out = w.len() / inp.max(1);
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(out.div_ceil(64))
        .max(1);
    let rows_per = out.div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        for (chunk_i, chunk) in w.chunks_mut(rows_per * inp).enumerate() {
            scope.spawn(move || {
                let mut delta = vec![0f32; inp];
                for (j, row) in chunk.chunks_mut(inp).enumerate() {
                    let o = chunk_i * rows_per + j;
                    delta.fill(0.0);
                    for (k, &bk) in b[o * r..(o + 1) * r].iter().enumerate() {
                        for (dv, &av) in delta.iter_mut().zip(&a[k * inp..(k + 1) * inp]) {
                            *dv += bk * av;
                        }
                    }
                    for (x, dv) in row.iter_mut().zip(&delta) {
                        *x += dv * scale;
                    }
                }
            });
        }
    });
}

/// f32 values as a tensor of `dtype` (F32, F16 or BF16; narrowing rounds to nearest even).
fn encode(values: &[f32], shape: &[usize], dtype: Dtype) -> OwnedTensor {
    let data = match dtype {
        Dtype::F16 => values
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect(),
        Dtype::BF16 => values
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect(),
        _ => return OwnedTensor::f32(shape.to_vec(), values),
    };
    OwnedTensor {
        dtype,
        shape: shape.to_vec(),
        data,
    }
}

/// [`io::write_safetensors`]'s layout and metadata, streamed to the file instead of built in
/// memory first (a merged model is as large as the model).
fn write_weights(tensors: &BTreeMap<String, OwnedTensor>, path: &Path) -> Result<(), MergeError> {
    let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    safetensors::tensor::serialize_to_file(tensors.iter(), Some(metadata), path).map_err(|e| {
        MergeError::Output {
            path: path.to_path_buf(),
            reason: format!("cannot write: {e}"),
        }
    })
}

fn write_text(path: &Path, text: &str) -> Result<(), MergeError> {
    std::fs::write(path, text).map_err(|e| io::os_err(path)(e).into())
}

/// Whether `name` is a weight file (or index) of some format: not carried into the merged model,
/// whose only weights are the new `model.safetensors`.
fn is_weight_file(name: &str) -> bool {
    const EXTENSIONS: [&str; 9] = [
        ".safetensors",
        ".bin",
        ".pt",
        ".pth",
        ".ckpt",
        ".h5",
        ".msgpack",
        ".gguf",
        ".onnx",
    ];
    EXTENSIONS.iter().any(|e| name.ends_with(e)) || name.ends_with(".index.json")
}

/// Copies the regular files of the HF source `src` except `config.json`, weights, an
/// `adapter_config.json` and hidden files: the tokenizer, `generation_config.json`, a chat
/// template, a README...
fn copy_side_files(
    src: &Path,
    dir: &Path,
    progress: &mut dyn FnMut(MergeProgress<'_>),
) -> Result<(), MergeError> {
    for entry in std::fs::read_dir(src).map_err(io::os_err(src))? {
        let entry = entry.map_err(io::os_err(src))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // An adapter_config.json would make transformers take the directory for an adapter.
        if name == CONFIG_FILE
            || name == super::adapter_dir::CONFIG_FILE
            || name.starts_with('.')
            || is_weight_file(&name)
            || !entry.path().is_file()
        {
            continue;
        }
        progress(MergeProgress::Writing { file: &name });
        // Contents only: a read-only source file gives a normal, writable copy.
        let bytes = std::fs::read(entry.path()).map_err(io::os_err(entry.path()))?;
        let to = dir.join(&name);
        std::fs::write(&to, bytes).map_err(io::os_err(&to))?;
    }
    Ok(())
}

/// `tokenizer.json` rebuilt from the GGUF vocabulary (the pipeline transformers builds for the
/// file) and a `tokenizer_config.json` with its special tokens and chat template.
fn write_gguf_tokenizer(
    file: &GgufFile,
    config: &LlamaConfig,
    dir: &Path,
) -> Result<(), MergeError> {
    let meta = file.tokenizer()?;
    let tokenizer = Tokenizer::from_gguf(&meta, file.path())?;
    let path = dir.join(TOKENIZER_FILE);
    tokenizer
        .inner()
        .save(&path, true)
        .map_err(|e| MergeError::Output {
            path: path.clone(),
            reason: format!("cannot write: {e}"),
        })?;
    let mut tc = serde_json::Map::new();
    let token = |id: Option<u32>| id.and_then(|id| tokenizer.id_to_token(id));
    for (key, id) in [
        ("bos_token", meta.bos_token_id),
        ("eos_token", meta.eos_token_id),
        ("pad_token", meta.padding_token_id),
        ("unk_token", meta.unknown_token_id),
    ] {
        if let Some(t) = token(id) {
            tc.insert(key.to_string(), t.into());
        }
    }
    if let Some(t) = &meta.chat_template {
        tc.insert("chat_template".to_string(), t.clone().into());
    }
    tc.insert("clean_up_tokenization_spaces".to_string(), false.into());
    tc.insert(
        "model_max_length".to_string(),
        config.max_position_embeddings.into(),
    );
    tc.insert(
        "tokenizer_class".to_string(),
        "PreTrainedTokenizerFast".into(),
    );
    write_text(
        &dir.join(TOKENIZER_CONFIG_FILE),
        &(pyjson::to_pretty(&Value::Object(tc)) + "\n"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_matches_naive_product() {
        let (out, inp, r) = (130, 7, 3);
        let a: Vec<f32> = (0..r * inp).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..out * r).map(|i| (i as f32 * 0.11).cos()).collect();
        let w0: Vec<f32> = (0..out * inp).map(|i| i as f32 * 1e-3).collect();
        let mut w = w0.clone();
        add_delta(&mut w, &a, &b, r, inp, 0.5);
        for o in 0..out {
            for i in 0..inp {
                let d: f32 = (0..r).map(|k| b[o * r + k] * a[k * inp + i]).sum();
                let want = w0[o * inp + i] + 0.5 * d;
                assert!((w[o * inp + i] - want).abs() < 1e-5, "[{o}, {i}]");
            }
        }
    }

    #[test]
    fn dtype_names_round_trip() {
        for d in MergeDtype::ALL {
            assert_eq!(d.name().parse::<MergeDtype>(), Ok(d));
        }
        assert!("f8".parse::<MergeDtype>().unwrap_err().contains("f8"));
    }

    #[test]
    fn narrowing_rounds_to_nearest() {
        let t = encode(&[1.0, -2.5], &[2], Dtype::BF16);
        assert_eq!(t.dtype, Dtype::BF16);
        assert_eq!(t.data, [0x80, 0x3f, 0x20, 0xc0]);
        let t = encode(&[1.0], &[1], Dtype::F16);
        assert_eq!(t.data, [0x00, 0x3c]);
    }
}
