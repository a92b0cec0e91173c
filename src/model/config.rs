//! [`LlamaConfig`]: HF `config.json` of a `LlamaForCausalLM` / `MistralForCausalLM`, read as is.
//!
//! Missing keys take transformers' `LlamaConfig` defaults (named on each field). RoPE settings
//! come in two spellings, both accepted:
//! * transformers < 5: top-level `rope_theta` and `rope_scaling: {rope_type | type, factor, ...}`;
//! * transformers >= 5: `rope_parameters: {rope_theta, rope_type, factor, ...}`.

use std::path::Path;

use serde::Deserialize;

use super::LoadError;

fn default_vocab_size() -> usize {
    32000
}
fn default_hidden_size() -> usize {
    4096
}
fn default_intermediate_size() -> usize {
    11008
}
fn default_num_layers() -> usize {
    32
}
fn default_num_heads() -> usize {
    32
}
fn default_rms_norm_eps() -> f64 {
    1e-6
}
fn default_max_position_embeddings() -> usize {
    2048
}
fn default_hidden_act() -> String {
    "silu".to_string()
}

/// The RoPE theta transformers uses when the config names none.
pub const DEFAULT_ROPE_THETA: f64 = 10000.0;

/// The architectures (`architectures[..]`) this crate implements.
pub const SUPPORTED_ARCHITECTURES: [&str; 2] = ["LlamaForCausalLM", "MistralForCausalLM"];
/// The `model_type` values this crate implements.
pub const SUPPORTED_MODEL_TYPES: [&str; 2] = ["llama", "mistral"];

/// A `rope_scaling` or `rope_parameters` object, field by field as in the JSON.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct RopeParameters {
    /// `"default"`, `"linear"` or `"llama3"` (others are rejected).
    #[serde(default)]
    pub rope_type: Option<String>,
    /// Pre-4.45 spelling of `rope_type`.
    #[serde(default, rename = "type")]
    pub legacy_type: Option<String>,
    /// Base of the frequencies (transformers >= 5 puts it here).
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// Scaling factor (`linear`, `llama3`).
    #[serde(default)]
    pub factor: Option<f64>,
    /// `llama3`: wavelengths above `original_max_position_embeddings / low_freq_factor` are
    /// divided by `factor`.
    #[serde(default)]
    pub low_freq_factor: Option<f64>,
    /// `llama3`: wavelengths below `original_max_position_embeddings / high_freq_factor` are kept.
    #[serde(default)]
    pub high_freq_factor: Option<f64>,
    /// `llama3`: the pre-training context length.
    #[serde(default)]
    pub original_max_position_embeddings: Option<f64>,
}

impl RopeParameters {
    fn kind(&self) -> Option<&str> {
        self.rope_type.as_deref().or(self.legacy_type.as_deref())
    }
}

/// How the RoPE inverse frequencies are rescaled ([`super::rope`] has the formulas).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RopeScaling {
    /// `inv_freq_i = theta^(-2i/d)`.
    Default,
    /// `inv_freq_i / factor` (position interpolation).
    Linear {
        /// The divisor.
        factor: f64,
    },
    /// Llama 3.1's piecewise rescaling by wavelength.
    Llama3 {
        /// Divisor of the low frequencies.
        factor: f64,
        /// Lower edge of the smoothed band, in `original / wavelength` units.
        low_freq_factor: f64,
        /// Upper edge of the smoothed band.
        high_freq_factor: f64,
        /// The pre-training context length.
        original_max_position_embeddings: f64,
    },
}

/// HF `config.json` of a LLaMA-family causal LM.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct LlamaConfig {
    /// E.g. `["LlamaForCausalLM"]`; absent means "trust `model_type`".
    #[serde(default)]
    pub architectures: Option<Vec<String>>,
    /// `"llama"` or `"mistral"`; absent means "trust `architectures`".
    #[serde(default)]
    pub model_type: Option<String>,
    /// Tokens in the vocabulary (HF default 32000).
    #[serde(default = "default_vocab_size")]
    pub vocab_size: usize,
    /// Width of the residual stream (HF default 4096).
    #[serde(default = "default_hidden_size")]
    pub hidden_size: usize,
    /// Width of the SwiGLU MLP (HF default 11008).
    #[serde(default = "default_intermediate_size")]
    pub intermediate_size: usize,
    /// Decoder layers (HF default 32).
    #[serde(default = "default_num_layers")]
    pub num_hidden_layers: usize,
    /// Query heads (HF default 32).
    #[serde(default = "default_num_heads")]
    pub num_attention_heads: usize,
    /// Key/value heads for GQA (HF default: `num_attention_heads`). Use [`Self::num_kv_heads`].
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Per-head width (HF default: `hidden_size / num_attention_heads`). Use [`Self::head_dim`].
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// RMSNorm epsilon (HF default 1e-6).
    #[serde(default = "default_rms_norm_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base, transformers < 5 spelling (HF default 10000). Use [`Self::rope_theta`].
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// RoPE rescaling, transformers < 5 spelling. Use [`Self::rope_scaling`].
    #[serde(default)]
    pub rope_scaling: Option<RopeParameters>,
    /// RoPE base and rescaling, transformers >= 5 spelling.
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,
    /// Longest sequence the model was configured for (HF default 2048).
    #[serde(default = "default_max_position_embeddings")]
    pub max_position_embeddings: usize,
    /// LM head shares the embedding matrix (HF default false).
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Biases on q/k/v/o (HF default false; must be false here).
    #[serde(default)]
    pub attention_bias: bool,
    /// Biases on gate/up/down (HF default false; must be false here).
    #[serde(default)]
    pub mlp_bias: bool,
    /// MLP activation (HF default `"silu"`; must be `silu` here).
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    /// Mistral's sliding attention window (absent or null: full causal attention).
    #[serde(default)]
    pub sliding_window: Option<usize>,
    /// Present in pre-quantized checkpoints (`quant_method: "bitsandbytes"`).
    #[serde(default)]
    pub quantization_config: Option<serde_json::Value>,
}

impl LlamaConfig {
    /// Reads and checks `config.json` at `path`.
    pub fn from_file(path: &Path) -> Result<Self, LoadError> {
        let text = std::fs::read_to_string(path).map_err(crate::io::os_err(path))?;
        Self::from_json(&text, path)
    }

    /// Parses and checks config JSON text; `path` names it in errors.
    pub fn from_json(text: &str, path: &Path) -> Result<Self, LoadError> {
        let config: LlamaConfig = serde_json::from_str(text).map_err(|e| LoadError::Config {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Key/value heads: `num_key_value_heads`, else `num_attention_heads`.
    pub fn num_kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Per-head width: `head_dim`, else `hidden_size / num_attention_heads`.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// RoPE base: `rope_parameters.rope_theta`, else `rope_theta`, else 10000.
    pub fn rope_theta(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .and_then(|p| p.rope_theta)
            .or(self.rope_theta)
            .unwrap_or(DEFAULT_ROPE_THETA)
    }

    /// Whether the checkpoint is bitsandbytes pre-quantized.
    pub fn is_bnb_quantized(&self) -> bool {
        self.quantization_config
            .as_ref()
            .and_then(|q| q.get("quant_method"))
            .and_then(|m| m.as_str())
            == Some("bitsandbytes")
    }

    /// The RoPE rescaling: `rope_scaling` if set, else the type inside `rope_parameters`.
    pub fn rope_scaling(&self) -> Result<RopeScaling, LoadError> {
        let params = match (&self.rope_scaling, &self.rope_parameters) {
            (Some(p), _) => p,
            (None, Some(p)) => p,
            (None, None) => return Ok(RopeScaling::Default),
        };
        let need = |v: Option<f64>, key: &str, kind: &str| {
            v.ok_or_else(|| {
                LoadError::UnsupportedConfig(format!("rope type {kind:?} needs {key:?}"))
            })
        };
        match params.kind().unwrap_or("default") {
            "default" => Ok(RopeScaling::Default),
            "linear" => Ok(RopeScaling::Linear {
                factor: need(params.factor, "factor", "linear")?,
            }),
            "llama3" => Ok(RopeScaling::Llama3 {
                factor: need(params.factor, "factor", "llama3")?,
                low_freq_factor: need(params.low_freq_factor, "low_freq_factor", "llama3")?,
                high_freq_factor: need(params.high_freq_factor, "high_freq_factor", "llama3")?,
                original_max_position_embeddings: need(
                    params.original_max_position_embeddings,
                    "original_max_position_embeddings",
                    "llama3",
                )?,
            }),
            other => Err(LoadError::UnsupportedConfig(format!(
                "rope type {other:?} (supported: default, linear, llama3)"
            ))),
        }
    }

    /// Checks the architecture and every setting [`super::Llama`] relies on.
    pub fn validate(&self) -> Result<(), LoadError> {
        if let Some(archs) = &self.architectures
            && let Some(bad) = archs
                .iter()
                .find(|a| !SUPPORTED_ARCHITECTURES.contains(&a.as_str()))
        {
            return Err(LoadError::UnsupportedArchitecture(bad.clone()));
        }
        if let Some(mt) = &self.model_type
            && !SUPPORTED_MODEL_TYPES.contains(&mt.as_str())
        {
            return Err(LoadError::UnsupportedArchitecture(format!(
                "{mt} (model_type)"
            )));
        }
        let unsupported = |msg: String| Err(LoadError::UnsupportedConfig(msg));
        if self.attention_bias {
            return unsupported("attention_bias = true".into());
        }
        if self.mlp_bias {
            return unsupported("mlp_bias = true".into());
        }
        if self.hidden_act != "silu" {
            return unsupported(format!("hidden_act {:?} (only silu)", self.hidden_act));
        }
        let (h, kv, d) = (
            self.num_attention_heads,
            self.num_kv_heads(),
            self.head_dim(),
        );
        if h == 0 || kv == 0 || h % kv != 0 {
            return unsupported(format!(
                "num_attention_heads {h} is not a positive multiple of num_key_value_heads {kv}"
            ));
        }
        if d == 0 || d % 2 != 0 {
            return unsupported(format!("head_dim {d} is not a positive even number"));
        }
        if self.hidden_size == 0 || self.vocab_size == 0 || self.intermediate_size == 0 {
            return unsupported("hidden_size, vocab_size and intermediate_size must be > 0".into());
        }
        if self.rms_norm_eps.is_nan() || self.rms_norm_eps <= 0.0 {
            return unsupported(format!("rms_norm_eps {} must be > 0", self.rms_norm_eps));
        }
        if self.sliding_window == Some(0) {
            return unsupported("sliding_window 0".into());
        }
        self.rope_scaling()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<LlamaConfig, LoadError> {
        LlamaConfig::from_json(text, Path::new("config.json"))
    }

    #[test]
    fn defaults_follow_transformers() {
        let c = parse(r#"{"hidden_size": 64, "num_attention_heads": 8}"#).expect("parse");
        assert_eq!(c.num_kv_heads(), 8);
        assert_eq!(c.head_dim(), 8);
        assert_eq!(c.rope_theta(), 10000.0);
        assert_eq!(c.rms_norm_eps, 1e-6);
        assert_eq!(c.rope_scaling().expect("rope"), RopeScaling::Default);
        assert!(!c.tie_word_embeddings);
    }

    #[test]
    fn rope_spellings() {
        let old =
            parse(r#"{"rope_theta": 500000.0, "rope_scaling": {"type": "linear", "factor": 2.0}}"#)
                .expect("parse");
        assert_eq!(old.rope_theta(), 500000.0);
        assert_eq!(
            old.rope_scaling().expect("rope"),
            RopeScaling::Linear { factor: 2.0 }
        );
        let new = parse(
            r#"{"rope_parameters": {"rope_theta": 500000.0, "rope_type": "llama3", "factor": 8.0,
                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}}"#,
        )
        .expect("parse");
        assert_eq!(new.rope_theta(), 500000.0);
        assert!(matches!(
            new.rope_scaling().expect("rope"),
            RopeScaling::Llama3 { factor: 8.0, .. }
        ));
        assert!(matches!(
            parse(r#"{"rope_scaling": {"rope_type": "yarn", "factor": 2.0}}"#),
            Err(LoadError::UnsupportedConfig(_))
        ));
        assert!(matches!(
            parse(r#"{"rope_scaling": {"rope_type": "llama3", "factor": 2.0}}"#),
            Err(LoadError::UnsupportedConfig(_))
        ));
    }

    #[test]
    fn rejects_what_the_model_does_not_implement() {
        let err = parse(r#"{"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"}"#)
            .expect_err("qwen2");
        assert!(
            err.to_string()
                .contains("unsupported architecture Qwen2ForCausalLM")
        );
        assert!(matches!(
            parse(r#"{"model_type": "gpt2"}"#),
            Err(LoadError::UnsupportedArchitecture(_))
        ));
        assert!(
            parse(r#"{"architectures": ["MistralForCausalLM"], "model_type": "mistral"}"#).is_ok()
        );
        assert!(matches!(
            parse(r#"{"attention_bias": true}"#),
            Err(LoadError::UnsupportedConfig(_))
        ));
        assert!(matches!(
            parse(r#"{"mlp_bias": true}"#),
            Err(LoadError::UnsupportedConfig(_))
        ));
        assert!(matches!(
            parse(r#"{"num_attention_heads": 6, "num_key_value_heads": 4}"#),
            Err(LoadError::UnsupportedConfig(_))
        ));
        assert!(matches!(parse("{"), Err(LoadError::Config { .. })));
    }
}
