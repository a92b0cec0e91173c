//! LLaMA (and Mistral) in burn, computing exactly what transformers' `LlamaForCausalLM` computes.
//!
//! Read top to bottom:
//! * [`config`]: [`LlamaConfig`], read unchanged from HF `config.json`.
//! * [`linear`]: [`QLinear`], a frozen weight (4-bit through [`crate::ops::qmatmul`], or float)
//!   plus an optional LoRA adapter slot.
//! * [`norm`], [`rope`], [`attention`], [`mlp`]: the sub-layers.
//! * [`llama`]: the decoder stack and LM head, [`Llama::forward`].
//! * [`loss`]: transformers' causal-LM cross-entropy.
//! * [`load`]: from an HF directory (float, quantized on load, or bnb pre-quantized) or from
//!   already-decoded named tensors (the GGUF loader's entry).
//!
//! Letters in `# Shapes` sections: `b` batch, `s` new tokens, `t` cached + new tokens (keys),
//! `h` attention heads, `kv` key/value heads, `d` head_dim, `hidden` hidden_size, `v` vocab_size.

pub mod attention;
pub mod config;
pub mod linear;
pub mod llama;
pub mod load;
pub mod loss;
pub mod mlp;
pub mod norm;
pub mod rope;

use std::path::PathBuf;

pub use attention::{Attention, KvCache, LayerKv};
pub use config::{LlamaConfig, RopeParameters, RopeScaling};
pub use linear::{FrozenWeight, LoraAdapter, QLinear};
pub use llama::{DecoderLayer, Llama};
pub use load::{load_from_tensors, load_hf_dir, load_hf_dir_with_progress};
pub use loss::{
    HEAD_CHUNK_BYTES, IGNORE_INDEX, causal_lm_loss, causal_lm_loss_sum, head_chunk_rows,
    head_loss_and_grad, head_loss_sum, next_token_targets, token_loss_sum,
};
pub use mlp::Mlp;
pub use norm::RmsNorm;
pub use rope::RotaryEmbedding;

use crate::io::IoError;

/// Errors from reading a config or building a model from weights.
///
/// File-level problems (missing tensor, wrong shape or dtype, invalid 4-bit parts) are
/// [`IoError`] variants, which name the file and the tensor.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Reading a checkpoint or a tensor failed.
    #[error(transparent)]
    Io(#[from] IoError),
    /// `config.json` does not parse, or lacks a required key.
    #[error("{path}: invalid config: {reason}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What the parser said.
        reason: String,
    },
    /// `architectures` / `model_type` names a model this crate does not implement.
    #[error(
        "unsupported architecture {0} (wgtune loads LlamaForCausalLM and MistralForCausalLM, \
         model_type llama or mistral)"
    )]
    UnsupportedArchitecture(String),
    /// A config value this implementation does not handle (biases, activation, RoPE type, ...).
    #[error("unsupported config: {0}")]
    UnsupportedConfig(String),
}

/// Alias following the crate's `module::Error` convention.
pub type Error = LoadError;
