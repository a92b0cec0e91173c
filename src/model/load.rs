//! Building a [`Llama`] from weights: one builder, three sources.
//!
//! * [`load_hf_dir`] on a float checkpoint (`config.json` + `model.safetensors` or a sharded
//!   index; F32/F16/BF16 widened to f32): the seven projections of every layer (`q_proj`,
//!   `k_proj`, `v_proj`, `o_proj`, `gate_proj`, `up_proj`, `down_proj`) are quantized on the host
//!   with the given [`QuantConfig`] (bitsandbytes-exact, [`crate::quant`]) or kept f32 (`None`).
//! * [`load_hf_dir`] on a bitsandbytes pre-quantized checkpoint (`quantization_config` in the
//!   config): the stored 4-bit weights are uploaded as they are, never re-quantized; with `None`
//!   they are dequantized to f32 instead.
//! * [`load_from_tensors`]: named f32 tensors from any decoder (the GGUF loader), HF names.
//!
//! Embeddings, norms and the LM head always stay f32. Every tensor's shape is checked against
//! the config; a mismatch or a missing tensor is an [`IoError`] naming the file and the tensor.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};

use super::LoadError;
use super::attention::Attention;
use super::config::LlamaConfig;
use super::linear::{FrozenWeight, QLinear};
use super::llama::{DecoderLayer, Llama};
use super::mlp::Mlp;
use super::norm::RmsNorm;
use super::rope::RotaryEmbedding;
use crate::io::{Checkpoint, IoError, bnb, read_f32};
use crate::ops::QWeight;
use crate::quant::{QuantConfig, QuantizedTensor};

/// The file name of the config inside a model directory.
pub const CONFIG_FILE: &str = "config.json";

/// Loads the model in directory `dir` onto `device` (see the module doc for what `quant` does).
pub fn load_hf_dir(
    dir: &Path,
    quant: Option<QuantConfig>,
    device: &Device,
) -> Result<Llama, LoadError> {
    load_hf_dir_with_progress(dir, quant, device, &mut |_| {})
}

/// [`load_hf_dir`], calling `progress(bytes)` with the stored size of each tensor once read.
pub fn load_hf_dir_with_progress(
    dir: &Path,
    quant: Option<QuantConfig>,
    device: &Device,
    progress: &mut dyn FnMut(u64),
) -> Result<Llama, LoadError> {
    let config = LlamaConfig::from_file(&dir.join(CONFIG_FILE))?;
    load_checkpoint(
        &config,
        Checkpoint::open(dir)?,
        dir,
        quant,
        device,
        progress,
    )
}

/// Builds the model of `config` from an opened checkpoint (files read from a directory or held
/// in memory); `dir` names the model in errors.
pub fn load_checkpoint(
    config: &LlamaConfig,
    ckpt: Checkpoint,
    dir: &Path,
    quant: Option<QuantConfig>,
    device: &Device,
    progress: &mut dyn FnMut(u64),
) -> Result<Llama, LoadError> {
    let mut source = CheckpointSource {
        bnb: config.is_bnb_quantized(),
        ckpt,
        dir: dir.to_path_buf(),
        progress,
    };
    build(config, &mut source, quant, device)
}

/// Builds the model from named f32 tensors: `get(name)` returns the row-major values and the
/// shape of the tensor with HF name `name` (`model.layers.0.self_attn.q_proj.weight`, ...), or
/// an error (e.g. [`IoError::MissingTensor`]). `origin` names the source in errors.
pub fn load_from_tensors(
    config: &LlamaConfig,
    origin: &Path,
    get: impl FnMut(&str) -> Result<(Vec<f32>, Vec<usize>), LoadError>,
    quant: Option<QuantConfig>,
    device: &Device,
) -> Result<Llama, LoadError> {
    let mut source = FnSource {
        get,
        origin: origin.to_path_buf(),
    };
    build(config, &mut source, quant, device)
}

/// Where the builder reads tensors from.
trait WeightSource {
    /// Values and shape of float tensor `name`.
    fn float(&mut self, name: &str) -> Result<(Vec<f32>, Vec<usize>), LoadError>;

    /// The file to name in errors about `name`.
    fn origin(&self, name: &str) -> PathBuf;

    /// The frozen weight of Linear `prefix`, `[out, in]` = `shape`.
    fn linear(
        &mut self,
        prefix: &str,
        shape: [usize; 2],
        quant: Option<QuantConfig>,
        device: &Device,
    ) -> Result<FrozenWeight, LoadError> {
        float_linear(self, prefix, shape, quant, device)
    }
}

/// Values of `name`, checked to have shape `expected`.
fn checked<S: WeightSource + ?Sized>(
    src: &mut S,
    name: &str,
    expected: &[usize],
) -> Result<Vec<f32>, LoadError> {
    let (values, shape) = src.float(name)?;
    let numel: usize = shape.iter().product();
    let got = if numel == values.len() {
        shape
    } else {
        vec![values.len()]
    };
    if got != expected {
        return Err(IoError::Shape {
            path: src.origin(name),
            name: name.to_string(),
            expected: expected.to_vec(),
            got,
        }
        .into());
    }
    Ok(values)
}

/// A float Linear weight, quantized on the host when `quant` is set.
fn float_linear<S: WeightSource + ?Sized>(
    src: &mut S,
    prefix: &str,
    shape: [usize; 2],
    quant: Option<QuantConfig>,
    device: &Device,
) -> Result<FrozenWeight, LoadError> {
    let name = format!("{prefix}.weight");
    let values = checked(src, &name, &shape)?;
    match quant {
        None => Ok(FrozenWeight::float(&values, shape, device)),
        Some(cfg) => {
            let q = QuantizedTensor::quantize(&values, &shape, cfg).map_err(|source| {
                IoError::Quant {
                    path: src.origin(&name),
                    name: prefix.to_string(),
                    source,
                }
            })?;
            Ok(FrozenWeight::Quantized(QWeight::upload(&q, device)))
        }
    }
}

/// A safetensors checkpoint, optionally holding bitsandbytes 4-bit Linears.
struct CheckpointSource<'p> {
    ckpt: Checkpoint,
    dir: PathBuf,
    bnb: bool,
    progress: &'p mut dyn FnMut(u64),
}

impl WeightSource for CheckpointSource<'_> {
    fn float(&mut self, name: &str) -> Result<(Vec<f32>, Vec<usize>), LoadError> {
        let (view, path) = self.ckpt.view(name)?;
        let values = read_f32(&view, path, name)?;
        (self.progress)(view.data().len() as u64);
        Ok((values, view.shape().to_vec()))
    }

    fn origin(&self, name: &str) -> PathBuf {
        self.ckpt
            .file_of(name)
            .map_or_else(|| self.dir.clone(), |f| f.path().to_path_buf())
    }

    fn linear(
        &mut self,
        prefix: &str,
        shape: [usize; 2],
        quant: Option<QuantConfig>,
        device: &Device,
    ) -> Result<FrozenWeight, LoadError> {
        let name = format!("{prefix}.weight");
        let file = match self.ckpt.file_of(&name) {
            Some(file) if self.bnb => file,
            _ => return float_linear(self, prefix, shape, quant, device),
        };
        let st = file.tensors()?;
        if !bnb::is_quantized(&st, prefix) {
            // A module bitsandbytes skipped (`llm_int8_skip_modules`): stored in float.
            return float_linear(self, prefix, shape, quant, device);
        }
        let q = bnb::read_quantized_from(&st, prefix, file.path())?;
        (self.progress)(q.size_bytes() as u64);
        if q.shape() != shape {
            return Err(IoError::Shape {
                path: file.path().to_path_buf(),
                name,
                expected: shape.to_vec(),
                got: q.shape().to_vec(),
            }
            .into());
        }
        Ok(match quant {
            Some(_) => FrozenWeight::Quantized(QWeight::upload(&q, device)),
            None => FrozenWeight::float(&q.dequantize(), shape, device),
        })
    }
}

/// Named tensors from a closure.
struct FnSource<F> {
    get: F,
    origin: PathBuf,
}

impl<F> WeightSource for FnSource<F>
where
    F: FnMut(&str) -> Result<(Vec<f32>, Vec<usize>), LoadError>,
{
    fn float(&mut self, name: &str) -> Result<(Vec<f32>, Vec<usize>), LoadError> {
        (self.get)(name)
    }

    fn origin(&self, _name: &str) -> PathBuf {
        self.origin.clone()
    }
}

/// The one builder behind every loader.
fn build<S: WeightSource>(
    config: &LlamaConfig,
    src: &mut S,
    quant: Option<QuantConfig>,
    device: &Device,
) -> Result<Llama, LoadError> {
    config.validate()?;
    let (hidden, inter, vocab) = (
        config.hidden_size,
        config.intermediate_size,
        config.vocab_size,
    );
    let (h, kv, d) = (
        config.num_attention_heads,
        config.num_kv_heads(),
        config.head_dim(),
    );
    let norm = |src: &mut S, name: &str| -> Result<RmsNorm, LoadError> {
        let values = checked(src, name, &[hidden])?;
        let weight = Tensor::from_data(TensorData::new(values, [hidden]), device);
        Ok(RmsNorm::new(weight, config.rms_norm_eps))
    };

    let embed = checked(src, "model.embed_tokens.weight", &[vocab, hidden])?;
    // The LM head is stored transposed, `[hidden, v]`, for a contiguous matmul.
    let head_t = |values: &[f32]| {
        Tensor::from_data(
            TensorData::new(
                super::linear::transpose(values, vocab, hidden),
                [hidden, vocab],
            ),
            device,
        )
    };
    let lm_head_t = if config.tie_word_embeddings {
        head_t(&embed)
    } else {
        head_t(&checked(src, "lm_head.weight", &[vocab, hidden])?)
    };
    let embed_tokens = Tensor::from_data(TensorData::new(embed, [vocab, hidden]), device);
    let mut layers = Vec::with_capacity(config.num_hidden_layers);
    for i in 0..config.num_hidden_layers {
        let p = format!("model.layers.{i}");
        let mut linear = |name: &str, shape: [usize; 2]| -> Result<QLinear, LoadError> {
            Ok(QLinear::new(src.linear(
                &format!("{p}.{name}"),
                shape,
                quant,
                device,
            )?))
        };
        let self_attn = Attention {
            q_proj: linear("self_attn.q_proj", [h * d, hidden])?,
            k_proj: linear("self_attn.k_proj", [kv * d, hidden])?,
            v_proj: linear("self_attn.v_proj", [kv * d, hidden])?,
            o_proj: linear("self_attn.o_proj", [hidden, h * d])?,
            num_heads: h,
            num_kv_heads: kv,
            head_dim: d,
        };
        let mlp = Mlp {
            gate_proj: linear("mlp.gate_proj", [inter, hidden])?,
            up_proj: linear("mlp.up_proj", [inter, hidden])?,
            down_proj: linear("mlp.down_proj", [hidden, inter])?,
        };
        layers.push(DecoderLayer {
            input_layernorm: norm(src, &format!("{p}.input_layernorm.weight"))?,
            self_attn,
            post_attention_layernorm: norm(src, &format!("{p}.post_attention_layernorm.weight"))?,
            mlp,
        });
    }
    let final_norm = norm(src, "model.norm.weight")?;
    Ok(Llama {
        embed_tokens,
        layers,
        norm: final_norm,
        lm_head_t,
        rope: RotaryEmbedding::new(d, config.rope_theta(), config.rope_scaling()?),
        config: config.clone(),
        side: None,
    })
}
