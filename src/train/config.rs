//! Every setting of a training run, as `wgtune train` flags and as `train_config.toml` keys (the
//! same names: `--lora-r 8` is `lora-r = 8`). A run writes the settings it used to
//! `train_config.toml` in its output directory, and `--config FILE.toml` reads them back
//! (flags given on the command line win over the file).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::schedule::ScheduleKind;
use super::trainer::TrainOptions;

/// The settings of a training run. Defaults follow QLoRA / PEFT practice for small models.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
pub struct TrainConfig {
    /// A GGUF file or Hugging Face directory (unset: SmolLM2-135M-Instruct).
    pub model: Option<PathBuf>,
    /// Training data (JSON array or JSONL).
    pub data: Option<PathBuf>,
    /// Held-out data for eval loss.
    pub eval_data: Option<PathBuf>,
    /// Fraction of `data` held out for eval when `eval-data` is unset (0: none).
    pub eval_split: f64,
    /// `alpaca`, `sharegpt`, `messages`, `text` or `tokenized` (unset: detected).
    pub format: Option<String>,
    /// `chatml`, `llama2`, `alpaca` or `vicuna` (unset: the model's own template).
    pub template: Option<String>,
    /// Output directory: the final adapter, checkpoints, metrics, plot.
    pub out: PathBuf,
    /// Examples are cut to this many tokens.
    pub max_len: usize,
    /// Train on prompt tokens too, not only assistant answers.
    pub train_on_prompt: bool,
    /// Skip bad rows (reported) instead of stopping.
    pub skip_bad_rows: bool,
    /// `lora` (adapters on the LLM's projections) or `qst` (Quantized Side Tuning: a side
    /// network on the frozen LLM's hidden states).
    pub method: String,
    /// QST downsample rank.
    pub qst_r: usize,
    /// QST reduction factor (side width = hidden / reduction).
    pub qst_reduction: usize,
    /// LoRA rank.
    pub lora_r: usize,
    /// LoRA alpha.
    pub lora_alpha: f32,
    /// Dropout on the adapters' input.
    pub lora_dropout: f32,
    /// Comma-separated projections, or `all-linear`.
    pub target_modules: String,
    /// Scale by `alpha/sqrt(r)`.
    pub rslora: bool,
    /// Start from this PEFT adapter directory instead of a fresh adapter.
    pub init_adapter: Option<PathBuf>,
    /// Peak learning rate.
    pub lr: f64,
    /// `constant`, `linear` or `cosine`.
    pub schedule: ScheduleKind,
    /// Warmup as a fraction of the run (ignored when `warmup-steps` is set).
    pub warmup_ratio: f64,
    /// Warmup updates.
    pub warmup_steps: Option<u64>,
    /// AdamW decoupled weight decay.
    pub weight_decay: f64,
    /// AdamW β₁.
    pub adam_beta1: f64,
    /// AdamW β₂.
    pub adam_beta2: f64,
    /// AdamW ε.
    pub adam_eps: f64,
    /// Global gradient-norm clip (0 disables).
    pub max_grad_norm: f64,
    /// Examples per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Optimizer steps (overrides `epochs`).
    pub steps: Option<u64>,
    /// Passes over the training data (when `steps` is unset).
    pub epochs: u64,
    /// Seed of the adapter init, data order, splits and dropout.
    pub seed: u64,
    /// Eval every N steps (0: only at the end).
    pub eval_every: u64,
    /// Checkpoint every N steps (0: only at the end and on Ctrl-C).
    pub save_every: u64,
    /// Checkpoints kept (older ones are deleted).
    pub save_total_limit: usize,
    /// Recompute each decoder layer in the backward instead of storing its activations.
    pub activation_checkpointing: bool,
    /// `auto`, `wgpu` or `cpu`.
    pub device: String,
    /// `nf4`, `fp4` or `none`.
    pub quant: String,
    /// QLoRA double quantization of the block scales.
    pub double_quant: bool,
    /// Elements per quantization block.
    pub blocksize: usize,
}

impl Default for TrainConfig {
    /// The loop's settings default to [`TrainOptions::default`]'s (one source for both); the
    /// rest are the command line's own.
    fn default() -> Self {
        let o = TrainOptions::default();
        TrainConfig {
            model: None,
            data: None,
            eval_data: None,
            eval_split: 0.0,
            format: None,
            template: None,
            out: PathBuf::from("wgtune-out"),
            max_len: 512,
            train_on_prompt: false,
            skip_bad_rows: false,
            method: "lora".to_string(),
            qst_r: 16,
            qst_reduction: 16,
            lora_r: 16,
            lora_alpha: 32.0,
            lora_dropout: 0.05,
            target_modules: "all-linear".to_string(),
            rslora: false,
            init_adapter: None,
            lr: o.lr,
            schedule: o.schedule,
            warmup_ratio: o.warmup_ratio,
            warmup_steps: o.warmup_steps,
            weight_decay: o.adamw.weight_decay,
            adam_beta1: o.adamw.beta1,
            adam_beta2: o.adamw.beta2,
            adam_eps: o.adamw.eps,
            max_grad_norm: o.max_grad_norm,
            batch_size: o.batch_size,
            grad_accum: o.grad_accum,
            steps: o.steps,
            epochs: o.epochs,
            seed: o.seed,
            eval_every: o.eval_every,
            save_every: 100,
            save_total_limit: o.save_total_limit,
            activation_checkpointing: o.activation_checkpointing,
            device: "auto".to_string(),
            quant: "nf4".to_string(),
            double_quant: true,
            blocksize: 64,
        }
    }
}

/// Errors from reading or writing a config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read or written.
    #[error("{path}: {cause}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said (in the message, not also a `source()`).
        cause: std::io::Error,
    },
    /// The file is not valid TOML or has an unknown key or a wrongly typed value.
    #[error("{path}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser said (with line and column).
        reason: String,
    },
}

impl TrainConfig {
    /// Reads a TOML file of settings; keys not in it keep their defaults.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Io {
            path: path.to_path_buf(),
            cause,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    /// The settings as TOML text.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a config serializes")
    }

    /// Writes [`TrainConfig::to_toml`] to `path` (through a temporary name).
    pub fn write(&self, path: &Path) -> Result<(), ConfigError> {
        let io = |cause| ConfigError::Io {
            path: path.to_path_buf(),
            cause,
        };
        let tmp = path.with_extension("toml.tmp");
        let text = format!(
            "# Settings of a wgtune training run; `wgtune train --config {}` repeats it.\n{}",
            path.file_name()
                .map_or(String::new(), |n| n.to_string_lossy().into_owned()),
            self.to_toml()
        );
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_round_trip_and_errors() {
        let mut c = TrainConfig {
            lora_r: 8,
            steps: Some(10),
            schedule: ScheduleKind::Constant,
            ..TrainConfig::default()
        };
        c.model = Some(PathBuf::from("m.gguf"));
        let text = c.to_toml();
        assert!(text.contains("lora-r = 8"), "{text}");
        let back: TrainConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, c);
        let partial: TrainConfig = toml::from_str("lr = 0.001\nschedule = \"linear\"").unwrap();
        assert_eq!(partial.lr, 1e-3);
        assert_eq!(partial.batch_size, TrainConfig::default().batch_size);
        assert!(toml::from_str::<TrainConfig>("lora_r = 8").is_err());
        assert!(toml::from_str::<TrainConfig>("schedule = \"cos\"").is_err());
    }
}
