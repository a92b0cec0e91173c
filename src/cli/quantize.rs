//! `wgtune quantize IN OUT [--quant nf4|fp4] [--double-quant true|false] [--blocksize N]`
//!
//! Converts a float checkpoint to a bitsandbytes 4-bit one that transformers loads as is.
//! Every 2-D F32/F16/BF16 tensor named `*.weight` is quantized, except embeddings
//! (`embed_tokens`), norms (`norm` / `layernorm`) and `lm_head`, which transformers also leaves in
//! full precision; all other tensors are copied unchanged. Keys follow [`crate::io::bnb`].
//!
//! * IN a `.safetensors` file → OUT a `.safetensors` file.
//! * IN a model directory (`config.json` plus `model.safetensors` or a sharded index) → OUT a
//!   directory with one `model.safetensors`, `config.json` gaining a `quantization_config` block,
//!   and every other file (tokenizer, generation config...) copied.
//!
//! Output is built under a temporary name next to OUT and renamed into place at the end, so a
//! failure leaves nothing behind.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};

use super::model_args::QuantArgs;
use crate::io::bnb::write_entries;
use crate::io::safetensors::{INDEX_FILE, SINGLE_FILE, is_float};
use crate::io::{Checkpoint, OwnedTensor, pyjson, read_f32, write_safetensors};
use crate::quant::{QuantConfig, QuantizedTensor};

/// Arguments of `wgtune quantize`.
#[derive(Clone, Debug, clap::Args)]
pub struct QuantizeArgs {
    /// Input: a .safetensors file or a model directory. Without INPUT and OUTPUT, runs on a
    /// built-in example model written under the system's temporary directory.
    #[arg(requires = "output")]
    pub input: Option<PathBuf>,
    /// Output: a .safetensors file (for a file input) or a directory (for a directory input).
    pub output: Option<PathBuf>,
    /// `--quant nf4|fp4` (`none` is refused here), `--double-quant`, `--blocksize`.
    #[command(flatten)]
    pub quant: QuantArgs,
}

impl QuantizeArgs {
    /// The quantization settings these arguments ask for.
    pub fn config(&self) -> Result<QuantConfig> {
        match self.quant.config()? {
            Some(cfg) => Ok(cfg),
            None => bail!("--quant none: quantize writes 4-bit weights (nf4 or fp4)"),
        }
    }
}

/// Whether transformers would replace the Linear owning `name` with a 4-bit one.
pub fn should_quantize(name: &str, shape: &[usize]) -> bool {
    shape.len() == 2
        && name.ends_with(".weight")
        && !name.contains("embed_tokens")
        && !name.contains("norm")
        && !name.contains("lm_head")
}

/// Runs `wgtune quantize`.
pub fn run(args: QuantizeArgs) -> Result<()> {
    let cfg = args.config()?;
    match (&args.input, &args.output) {
        (Some(input), Some(output)) => quantize(input, output, cfg),
        _ => run_example(cfg),
    }
}

/// Quantizes the built-in example model (see [`super::example`]) and reports what it did.
fn run_example(cfg: QuantConfig) -> Result<()> {
    let root = std::env::temp_dir().join("wgtune-quantize-example");
    let (input, output) = (
        root.join("model"),
        root.join(format!("model-{}", cfg.format.name())),
    );
    eprintln!(
        "no paths given: quantizing the built-in example model (a random 2-layer LLaMA) in {}",
        root.display()
    );
    if output.exists() {
        std::fs::remove_dir_all(&output)
            .with_context(|| format!("{}: cannot replace", output.display()))?;
    }
    super::example::write_example_model(&input)?;
    quantize(&input, &output, cfg)?;
    // Reconstruction error of the quantized linears, read back from what was written.
    let (orig, quant) = (Checkpoint::open(&input)?, Checkpoint::open(&output)?);
    let (mut sq_err, mut sq_ref, mut count) = (0f64, 0f64, 0usize);
    for name in orig
        .names()
        .filter(|n| quant.view(&format!("{n}.absmax")).is_ok())
    {
        let (view, path) = orig.view(name)?;
        let reference = read_f32(&view, path, name)?;
        let prefix = name.strip_suffix(".weight").unwrap_or(name);
        let q = {
            let file = quant
                .file_of(name)
                .context("quantized tensor without a file")?;
            crate::io::bnb::read_quantized_from(&file.tensors()?, prefix, file.path())?
        };
        for (a, b) in q.dequantize().iter().zip(&reference) {
            sq_err += f64::from(a - b).powi(2);
            sq_ref += f64::from(*b).powi(2);
        }
        count += 1;
    }
    println!(
        "quantized {count} linear weights to {} (blocksize {}, double quant {}): relative RMS error {:.4}",
        cfg.format.name(),
        cfg.blocksize,
        cfg.double_quant,
        (sq_err / sq_ref.max(f64::MIN_POSITIVE)).sqrt()
    );
    println!("bnb 4-bit model written to {}", output.display());
    Ok(())
}

/// Quantizes `input` (file or model directory) into `output`, printing a one-line summary.
fn quantize(input: &Path, output: &Path, cfg: QuantConfig) -> Result<()> {
    write_quantized(input, output, cfg)?;
    println!(
        "{} ({}) -> {} ({})",
        input.display(),
        human_bytes(disk_size(input)),
        output.display(),
        human_bytes(disk_size(output))
    );
    Ok(())
}

/// Writes the quantized form of `input` to `output`, atomically.
fn write_quantized(input: &Path, output: &Path, cfg: QuantConfig) -> Result<()> {
    let meta = std::fs::metadata(input)
        .with_context(|| format!("{}: cannot read input", input.display()))?;
    if same_path(input, output) {
        bail!("{}: input and output are the same path", output.display());
    }
    if meta.is_dir() {
        quantize_dir(input, output, cfg)
    } else {
        if output.is_dir() {
            bail!(
                "{}: output is a directory but the input is a single file",
                output.display()
            );
        }
        let tmp = crate::io::create_temp_sibling(output, false)?;
        let result = quantize_file(input, &tmp, cfg).and_then(|()| {
            std::fs::rename(&tmp, output)
                .with_context(|| format!("{}: cannot move output into place", output.display()))
        });
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

/// Quantizes the checkpoint at `input` (file or directory) into the single file `out`.
fn quantize_file(input: &Path, out: &Path, cfg: QuantConfig) -> Result<()> {
    let ckpt = Checkpoint::open(input)?;
    let names: Vec<String> = ckpt.names().map(str::to_string).collect();
    let bar = ProgressBar::new(names.len() as u64);
    if let Ok(style) = ProgressStyle::with_template("quantizing {bar:30} {pos}/{len} {wide_msg}") {
        bar.set_style(style);
    }
    let mut tensors: BTreeMap<String, OwnedTensor> = BTreeMap::new();
    for name in &names {
        bar.set_message(name.clone());
        let (view, path) = ckpt.view(name)?;
        if is_float(view.dtype()) && should_quantize(name, view.shape()) {
            let values = read_f32(&view, path, name)?;
            let q = QuantizedTensor::quantize(&values, view.shape(), cfg)
                .with_context(|| format!("{}: tensor {name:?}", path.display()))?;
            let prefix = name.strip_suffix(".weight").unwrap_or(name);
            write_entries(prefix, &q, view.dtype(), &mut tensors);
        } else {
            tensors.insert(name.clone(), OwnedTensor::from_view(&view));
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    write_safetensors(&tensors, out)?;
    Ok(())
}

/// Quantizes a model directory into a new directory `output`.
fn quantize_dir(input: &Path, output: &Path, cfg: QuantConfig) -> Result<()> {
    if output.exists() {
        let empty_dir = output.is_dir()
            && std::fs::read_dir(output)
                .map(|mut d| d.next().is_none())
                .unwrap_or(false);
        if !empty_dir {
            bail!(
                "{}: output already exists (give a new directory name)",
                output.display()
            );
        }
    }
    let config_path = input.join("config.json");
    let config_text = std::fs::read_to_string(&config_path)
        .with_context(|| format!("{}: cannot read model config", config_path.display()))?;
    let mut config: serde_json::Value = serde_json::from_str(&config_text)
        .with_context(|| format!("{}: invalid JSON", config_path.display()))?;
    let Some(obj) = config.as_object_mut() else {
        bail!("{}: expected a JSON object", config_path.display());
    };
    if obj.contains_key("quantization_config") {
        bail!(
            "{}: model is already quantized (config has quantization_config)",
            config_path.display()
        );
    }
    obj.insert(
        "quantization_config".to_string(),
        crate::io::bnb::quantization_config(cfg),
    );

    let tmp = crate::io::create_temp_sibling(output, true)?;
    let result = (|| -> Result<()> {
        quantize_file(input, &tmp.join(SINGLE_FILE), cfg)?;
        let text = pyjson::to_pretty(&config) + "\n";
        std::fs::write(tmp.join("config.json"), text)
            .with_context(|| format!("{}: cannot write", tmp.display()))?;
        copy_side_files(input, &tmp)?;
        if output.exists() {
            std::fs::remove_dir(output)
                .with_context(|| format!("{}: cannot replace", output.display()))?;
        }
        std::fs::rename(&tmp, output)
            .with_context(|| format!("{}: cannot move output into place", output.display()))
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// Copies every regular file of `input` except weights, the shard index and `config.json`.
fn copy_side_files(input: &Path, out: &Path) -> Result<()> {
    for entry in
        std::fs::read_dir(input).with_context(|| format!("{}: cannot list", input.display()))?
    {
        let entry = entry.with_context(|| format!("{}: cannot list", input.display()))?;
        let name = entry.file_name();
        let name_str = name.to_string_lossy();
        let skip = name_str.ends_with(".safetensors")
            || name_str == INDEX_FILE
            || name_str == "config.json";
        if skip || !entry.path().is_file() {
            continue;
        }
        std::fs::copy(entry.path(), out.join(&name))
            .with_context(|| format!("{}: cannot copy", entry.path().display()))?;
    }
    Ok(())
}

/// Whether `a` and `b` name the same file or directory (`b` may not exist yet).
fn same_path(a: &Path, b: &Path) -> bool {
    let canon = |p: &Path| -> Option<PathBuf> {
        p.canonicalize().ok().or_else(|| {
            let parent = p
                .parent()
                .filter(|x| !x.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            Some(parent.canonicalize().ok()?.join(p.file_name()?))
        })
    };
    matches!((canon(a), canon(b)), (Some(x), Some(y)) if x == y)
}

/// Bytes of a file, or of the regular files directly inside a directory.
fn disk_size(path: &Path) -> u64 {
    if path.is_dir() {
        std::fs::read_dir(path)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok()?.metadata().ok())
                    .filter(|m| m.is_file())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    } else {
        std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
    }
}

fn human_bytes(n: u64) -> String {
    let mb = n as f64 / (1024.0 * 1024.0);
    if mb >= 1.0 {
        format!("{mb:.1} MiB")
    } else {
        format!("{:.1} KiB", n as f64 / 1024.0)
    }
}
