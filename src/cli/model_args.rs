//! Arguments shared by the commands that load a model: `--quant`, `--double-quant`,
//! `--blocksize` ([`QuantArgs`], also used by `wgtune quantize`) and `--model`, `--device`
//! ([`ModelArgs`]), plus loading the model they describe.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::device::{self, DeviceChoice, Selected};
use crate::io::model_cache::default_model_path;
use crate::peft::qst::{self, SideNetwork};
use crate::peft::{AdapterFile, adapter_dir};
use crate::pretrained::Pretrained;
use crate::quant::{QuantConfig, QuantError, QuantFormat};

/// `--quant`: a 4-bit format, or `none` for float weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantMode {
    /// Linear weights quantized to this format.
    Bits4(QuantFormat),
    /// Float weights as stored.
    None,
}

impl FromStr for QuantMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(QuantMode::None),
            other => other
                .parse::<QuantFormat>()
                .map(QuantMode::Bits4)
                .map_err(|_| format!("unknown weight format {other:?} (nf4, fp4 or none)")),
        }
    }
}

impl std::fmt::Display for QuantMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QuantMode::Bits4(format) => format.fmt(f),
            QuantMode::None => f.write_str("none"),
        }
    }
}

/// How to quantize linear weights: `--quant nf4|fp4|none`, `--double-quant`, `--blocksize`.
#[derive(Clone, Debug, clap::Args)]
pub struct QuantArgs {
    /// 4-bit data type of the linear weights, or `none` to keep float weights.
    #[arg(long = "quant", default_value = "nf4")]
    pub quant: QuantMode,
    /// Quantize the block scales to 8 bits as well (QLoRA double quantization).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub double_quant: bool,
    /// Elements per scale block: a power of two from 32 to 4096.
    #[arg(long, default_value_t = 64)]
    pub blocksize: usize,
}

impl QuantArgs {
    /// The quantization these arguments ask for; `None` for `--quant none`.
    pub fn config(&self) -> Result<Option<QuantConfig>, QuantError> {
        match self.quant {
            QuantMode::None => Ok(None),
            QuantMode::Bits4(format) => {
                let cfg = QuantConfig {
                    format,
                    blocksize: self.blocksize,
                    double_quant: self.double_quant,
                };
                cfg.validate()?;
                Ok(Some(cfg))
            }
        }
    }
}

/// `--model`, the quantization flags and `--device`.
#[derive(Clone, Debug, clap::Args)]
pub struct ModelArgs {
    /// A GGUF file or a Hugging Face model directory (default: SmolLM2-135M-Instruct, fetched
    /// once into the cache; `$WGTUNE_MODEL` overrides).
    #[arg(long)]
    pub model: Option<PathBuf>,
    #[command(flatten)]
    pub quant: QuantArgs,
    /// Where to run: `auto` (a GPU through wgpu, else the CPU backend), `wgpu` or `cpu`.
    #[arg(long, default_value = "auto")]
    pub device: DeviceChoice,
    /// An adapter directory to apply on top of the model: PEFT LoRA (`adapter_config.json` +
    /// `adapter_model.safetensors`) or a QST side network (`qst_config.json` +
    /// `qst_model.safetensors`) as `wgtune train` writes them.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
}

impl ModelArgs {
    /// `--model`, else the default model.
    pub fn model_path(&self) -> Result<PathBuf> {
        match &self.model {
            Some(p) => Ok(p.clone()),
            None => Ok(default_model_path()?),
        }
    }

    /// Picks the device and loads the model onto it, reporting both on stderr.
    pub fn load(&self) -> Result<(Pretrained, Selected)> {
        let quant = self.quant.config()?;
        let path = self.model_path()?;
        let selected = device::select(self.device);
        eprintln!("device: {}", selected.description);
        let start = Instant::now();
        let adapter = self.adapter.as_deref().map(AdapterArg::read).transpose()?;
        let mut pretrained = Pretrained::load(&path, quant, &selected.device)
            .with_context(|| format!("loading {}", path.display()))?;
        match adapter {
            Some(AdapterArg::Qst(dir)) => {
                let side = SideNetwork::load(&dir, &pretrained.config, &selected.device)
                    .with_context(|| format!("loading side network {}", dir.display()))?;
                pretrained.model.side = Some(side);
                eprintln!("adapter: {} (QST side network)", dir.display());
            }
            Some(AdapterArg::Lora(file)) => {
                file.apply(&mut pretrained.model)
                    .with_context(|| format!("applying adapter {}", file.dir.display()))?;
                eprintln!("adapter: {}", file.dir.display());
            }
            None => {}
        }
        eprintln!(
            "model: {} ({} weights) loaded in {:.1} s",
            path.display(),
            self.quant.quant,
            start.elapsed().as_secs_f64()
        );
        Ok((pretrained, selected))
    }
}

/// An `--adapter` or `--init-adapter` directory, looked at before the model loads, so that a
/// wrong path or a broken adapter fails at once instead of after a load of minutes.
pub enum AdapterArg {
    /// A PEFT LoRA adapter, read in full (its weights are checked against the model later).
    Lora(AdapterFile),
    /// A QST side network (`qst_config.json`), read once the model's shape is known.
    Qst(PathBuf),
}

impl AdapterArg {
    /// Tells the two kinds apart by their config file and reads a LoRA adapter.
    pub fn read(dir: &Path) -> Result<Self> {
        if dir.join(qst::CONFIG_FILE).is_file() {
            return Ok(AdapterArg::Qst(dir.to_path_buf()));
        }
        if !dir.join(adapter_dir::CONFIG_FILE).is_file() {
            if !dir.is_dir() {
                bail!("{}: no such adapter directory", dir.display());
            }
            bail!(
                "{}: not an adapter directory (no {} of a PEFT LoRA adapter, no {} of a QST \
                 side network)",
                dir.display(),
                adapter_dir::CONFIG_FILE,
                qst::CONFIG_FILE
            );
        }
        Ok(AdapterArg::Lora(AdapterFile::read(dir)?))
    }
}
