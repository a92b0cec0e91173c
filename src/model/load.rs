//! Building a [`Llama`] from weights: one builder, three sources.
//!
//! * [`load_hf_dir`] on a float checkpoint (`config.json` + `model.safetensors` or a sharded
//!   index; F32/F16/BF16 widened to f32): the seven projections of every layer (`q_proj`,
//!   `k_proj`, `v_proj`, `o_proj`, `gate_proj`, `up_proj`, `down_proj`) are quantized on the host
//!   with the given [`QuantConfig`] (bitsandbytes-exact, [`crate::quant`]) or kept f32 (`None`).
//! * [`load_hf_dir`] on a bitsandbytes pre-quantized checkpoint (`quantization_config` in the
//!   config): the stored 4-bit weights are uploaded as they are, never re-quantized; with `None`
//!   they are dequantized to f32 instead.
//! * [`Builder::from_gguf`]: a GGUF file, its tensors dequantized to f32 on the host.
//! * [`load_from_tensors`]: named f32 tensors from any decoder, HF names.
//!
//! All of them go through one [`Builder`], which builds the model a piece (embeddings, head, a
//! decoder layer, final norm) per step, so a browser tab can yield to its event loop between
//! pieces.
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
use crate::io::gguf::GgufFile;
use crate::io::gguf::llama::hf_to_gguf_name;
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
    Builder::from_checkpoint(&config, Checkpoint::open(dir)?, dir, quant, device)?.run(progress)
}

/// Builds the model of `config` from named f32 tensors: `get(name)` returns the row-major
/// values and the shape of the tensor with HF name `name` (`model.layers.0.self_attn.q_proj.weight`,
/// ...), or an error (e.g. [`IoError::MissingTensor`]). `origin` names the source in errors.
pub fn load_from_tensors(
    config: &LlamaConfig,
    origin: &Path,
    get: impl FnMut(&str) -> Result<(Vec<f32>, Vec<usize>), LoadError>,
    quant: Option<QuantConfig>,
    device: &Device,
) -> Result<Llama, LoadError> {
    let source = FnSource {
        get,
        origin: origin.to_path_buf(),
    };
    Builder::new(config, Box::new(source), quant, device)?.run(&mut |_| {})
}

/// A model being built a piece at a time: the token embeddings, the LM head, each decoder layer,
/// the final norm. Each [`Builder::step`] reads, quantizes and uploads one piece, so a caller
/// that must not block for the whole load (a browser tab's event loop) can yield between
/// pieces and show progress; [`Builder::run`] does every step in one go.
pub struct Builder<'a> {
    config: LlamaConfig,
    src: Box<dyn WeightSource + 'a>,
    quant: Option<QuantConfig>,
    device: Device,
    /// Pieces done so far (0 = nothing read).
    done: usize,
    /// `embed_tokens` values, read by the first piece and uploaded by the second (only when
    /// untied: tied, the LM head is their transpose and holds them).
    embed: Option<Vec<f32>>,
    embed_tokens: Option<Tensor<2>>,
    lm_head_t: Option<Tensor<2>>,
    layers: Vec<DecoderLayer>,
    norm: Option<RmsNorm>,
}

impl<'a> Builder<'a> {
    /// A builder over an opened safetensors checkpoint (files read from a directory or held in
    /// memory); `dir` names the model in errors.
    pub fn from_checkpoint(
        config: &LlamaConfig,
        ckpt: Checkpoint,
        dir: &Path,
        quant: Option<QuantConfig>,
        device: &Device,
    ) -> Result<Self, LoadError> {
        let source = CheckpointSource {
            bnb: config.is_bnb_quantized(),
            ckpt,
            dir: dir.to_path_buf(),
            read: 0,
        };
        Self::new(config, Box::new(source), quant, device)
    }

    /// A builder over an opened GGUF file (tensors dequantized to f32 by [`GgufFile`]).
    pub fn from_gguf(
        config: &LlamaConfig,
        gguf: GgufFile,
        quant: Option<QuantConfig>,
        device: &Device,
    ) -> Result<Self, LoadError> {
        Self::new(
            config,
            Box::new(GgufSource { gguf, read: 0 }),
            quant,
            device,
        )
    }

    fn new(
        config: &LlamaConfig,
        src: Box<dyn WeightSource + 'a>,
        quant: Option<QuantConfig>,
        device: &Device,
    ) -> Result<Self, LoadError> {
        config.validate()?;
        Ok(Builder {
            config: config.clone(),
            src,
            quant,
            device: device.clone(),
            done: 0,
            embed: None,
            embed_tokens: None,
            lm_head_t: None,
            layers: Vec::with_capacity(config.num_hidden_layers),
            norm: None,
        })
    }

    /// How many pieces the model has: embeddings, head, one per layer, final norm.
    pub fn pieces(&self) -> usize {
        self.config.num_hidden_layers + 3
    }

    /// How many pieces are built.
    pub fn pieces_done(&self) -> usize {
        self.done
    }

    /// Stored bytes read from the source so far.
    pub fn bytes_read(&self) -> u64 {
        self.src.bytes_read()
    }

    /// Builds the next piece; `Ok(true)` once every piece is built.
    pub fn step(&mut self) -> Result<bool, LoadError> {
        let c = &self.config;
        let (hidden, vocab, layers) = (c.hidden_size, c.vocab_size, c.num_hidden_layers);
        let device = &self.device;
        match self.done {
            0 => {
                self.embed = Some(checked(
                    &mut *self.src,
                    "model.embed_tokens.weight",
                    &[vocab, hidden],
                )?)
            }
            1 => {
                let embed = self.embed.take().unwrap_or_default();
                // The LM head is stored transposed, `[hidden, v]`, for a contiguous matmul. Tied
                // embeddings are its columns and get no copy of their own (`Llama::embed`).
                let head = if c.tie_word_embeddings {
                    super::linear::transpose(&embed, vocab, hidden)
                } else {
                    let head = checked(&mut *self.src, "lm_head.weight", &[vocab, hidden])?;
                    self.embed_tokens = Some(Tensor::from_data(
                        TensorData::new(embed, [vocab, hidden]),
                        device,
                    ));
                    super::linear::transpose(&head, vocab, hidden)
                };
                self.lm_head_t = Some(Tensor::from_data(
                    TensorData::new(head, [hidden, vocab]),
                    device,
                ));
            }
            i if i < layers + 2 => {
                let layer = decoder_layer(c, &mut *self.src, i - 2, self.quant, device)?;
                self.layers.push(layer);
            }
            i if i == layers + 2 => {
                self.norm = Some(norm(c, &mut *self.src, "model.norm.weight", device)?);
            }
            _ => return Ok(true),
        }
        self.done += 1;
        Ok(self.done == self.pieces())
    }

    /// Builds the pieces left and returns the model.
    pub fn finish(mut self) -> Result<Llama, LoadError> {
        while !self.step()? {}
        let (Some(lm_head_t), Some(norm)) = (self.lm_head_t, self.norm) else {
            unreachable!("every piece is built once step() returns true")
        };
        let c = self.config;
        Ok(Llama {
            embed_tokens: self.embed_tokens,
            layers: self.layers,
            norm,
            lm_head_t,
            rope: RotaryEmbedding::new(c.head_dim(), c.rope_theta(), c.rope_scaling()?),
            config: c,
            side: None,
        })
    }

    /// Every step, calling `progress(bytes)` with the stored bytes each one read; the model.
    pub fn run(mut self, progress: &mut dyn FnMut(u64)) -> Result<Llama, LoadError> {
        let mut reported = 0;
        loop {
            let done = self.step()?;
            let read = self.bytes_read();
            progress(read - reported);
            reported = read;
            if done {
                return self.finish();
            }
        }
    }
}

/// Where the builder reads tensors from.
trait WeightSource {
    /// Values and shape of float tensor `name`.
    fn float(&mut self, name: &str) -> Result<(Vec<f32>, Vec<usize>), LoadError>;

    /// The file to name in errors about `name`.
    fn origin(&self, name: &str) -> PathBuf;

    /// Stored bytes read so far (0 where the source cannot tell).
    fn bytes_read(&self) -> u64 {
        0
    }

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
            let q = QuantizedTensor::quantize(&values, &shape, cfg).map_err(|cause| {
                IoError::Quant {
                    path: src.origin(&name),
                    name: prefix.to_string(),
                    cause,
                }
            })?;
            Ok(FrozenWeight::Quantized(QWeight::upload(&q, device)))
        }
    }
}

/// A safetensors checkpoint, optionally holding bitsandbytes 4-bit Linears.
struct CheckpointSource {
    ckpt: Checkpoint,
    dir: PathBuf,
    bnb: bool,
    read: u64,
}

impl WeightSource for CheckpointSource {
    fn float(&mut self, name: &str) -> Result<(Vec<f32>, Vec<usize>), LoadError> {
        let (view, path) = self.ckpt.view(name)?;
        let values = read_f32(&view, path, name)?;
        self.read += view.data().len() as u64;
        Ok((values, view.shape().to_vec()))
    }

    fn bytes_read(&self) -> u64 {
        self.read
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
        self.read += q.size_bytes() as u64;
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

/// A GGUF file, its tensors dequantized to f32 and named as in transformers.
struct GgufSource {
    gguf: GgufFile,
    read: u64,
}

impl WeightSource for GgufSource {
    fn float(&mut self, name: &str) -> Result<(Vec<f32>, Vec<usize>), LoadError> {
        let (dims, values) = self.gguf.hf_tensor_f32(name)?;
        if let Some(info) = hf_to_gguf_name(name).and_then(|g| self.gguf.tensor(&g)) {
            self.read += info.n_bytes();
        }
        Ok((values, dims))
    }

    fn origin(&self, _name: &str) -> PathBuf {
        self.gguf.path().to_path_buf()
    }

    fn bytes_read(&self) -> u64 {
        self.read
    }
}

/// RMSNorm `name`, `[hidden]`.
fn norm(
    config: &LlamaConfig,
    src: &mut dyn WeightSource,
    name: &str,
    device: &Device,
) -> Result<RmsNorm, LoadError> {
    let values = checked(src, name, &[config.hidden_size])?;
    let weight = Tensor::from_data(TensorData::new(values, [config.hidden_size]), device);
    Ok(RmsNorm::new(weight, config.rms_norm_eps))
}

/// Decoder layer `i`: its seven projections (quantized with `quant`) and two norms.
fn decoder_layer(
    config: &LlamaConfig,
    src: &mut dyn WeightSource,
    i: usize,
    quant: Option<QuantConfig>,
    device: &Device,
) -> Result<DecoderLayer, LoadError> {
    let (hidden, inter) = (config.hidden_size, config.intermediate_size);
    let (h, kv, d) = (
        config.num_attention_heads,
        config.num_kv_heads(),
        config.head_dim(),
    );
    let p = format!("model.layers.{i}");
    let linear = |src: &mut dyn WeightSource, name: &str, shape: [usize; 2]| {
        src.linear(&format!("{p}.{name}"), shape, quant, device)
            .map(QLinear::new)
    };
    let self_attn = Attention {
        q_proj: linear(src, "self_attn.q_proj", [h * d, hidden])?,
        k_proj: linear(src, "self_attn.k_proj", [kv * d, hidden])?,
        v_proj: linear(src, "self_attn.v_proj", [kv * d, hidden])?,
        o_proj: linear(src, "self_attn.o_proj", [hidden, h * d])?,
        num_heads: h,
        num_kv_heads: kv,
        head_dim: d,
    };
    let mlp = Mlp {
        gate_proj: linear(src, "mlp.gate_proj", [inter, hidden])?,
        up_proj: linear(src, "mlp.up_proj", [inter, hidden])?,
        down_proj: linear(src, "mlp.down_proj", [hidden, inter])?,
    };
    Ok(DecoderLayer {
        input_layernorm: norm(config, src, &format!("{p}.input_layernorm.weight"), device)?,
        self_attn,
        post_attention_layernorm: norm(
            config,
            src,
            &format!("{p}.post_attention_layernorm.weight"),
            device,
        )?,
        mlp,
    })
}
