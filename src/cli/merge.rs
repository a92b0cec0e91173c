//! `wgtune merge --model PATH --adapter DIR --out DIR [--dtype f32|f16|bf16|nf4]`
//!
//! Folds a PEFT LoRA adapter into its base model and writes a complete Hugging Face model
//! directory (weights, `config.json`, tokenizer) that loads without the adapter, in wgtune and
//! in transformers ([`crate::peft::merge`] has the details). Progress goes to stderr, a one-line
//! summary to stdout.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressStyle};

use crate::peft::merge::{MergeDtype, MergeProgress, TokenizerSource, merge_with_progress};

/// Arguments of `wgtune merge`.
#[derive(Clone, Debug, clap::Args)]
pub struct MergeArgs {
    /// The base model: a GGUF file or a Hugging Face model directory (float, or a bitsandbytes
    /// 4-bit checkpoint, dequantized before merging).
    #[arg(long)]
    pub model: PathBuf,
    /// The PEFT LoRA adapter directory (`adapter_config.json` + `adapter_model.safetensors`).
    #[arg(long)]
    pub adapter: PathBuf,
    /// The model directory to write (must not exist yet, or be empty).
    #[arg(long)]
    pub out: PathBuf,
    /// Weights of the merged model: f32, f16, bf16, or nf4 (bitsandbytes 4-bit, as transformers
    /// saves a pre-quantized model).
    #[arg(long, default_value = "f32")]
    pub dtype: MergeDtype,
}

/// Runs `wgtune merge`.
pub fn run(args: MergeArgs) -> Result<()> {
    let start = Instant::now();
    // indicatif draws only when stderr is a terminal, so piped stderr holds errors alone.
    let bar = ProgressBar::new(0);
    if let Ok(style) = ProgressStyle::with_template("merging {bar:30} {pos}/{len} {wide_msg}") {
        bar.set_style(style);
    }
    let report = merge_with_progress(
        &args.model,
        &args.adapter,
        &args.out,
        args.dtype,
        &mut |p| match p {
            MergeProgress::Start { total } => bar.set_length(total as u64),
            MergeProgress::Tensor { name } => {
                bar.set_message(name.to_string());
                bar.inc(1);
            }
            MergeProgress::Writing { file } => bar.set_message(format!("writing {file}")),
        },
    );
    bar.finish_and_clear();
    // The error's own line names the file; its source chain would only repeat the OS message.
    let report = report.map_err(|e| anyhow::anyhow!("{e}"))?;
    if report.tokenizer == TokenizerSource::None {
        eprintln!(
            "note: {} has no tokenizer.json, so neither has the merged model",
            args.model.display()
        );
    }
    println!(
        "merged {} adapted projections of {} into {} -> {} ({}, {} tensors, {:.1} MiB) in {:.1} s",
        report.merged,
        args.adapter.display(),
        args.model.display(),
        report.out.display(),
        report.dtype,
        report.tensors,
        report.weight_bytes as f64 / (1024.0 * 1024.0),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
