//! Generation speed and memory of SmolLM2-135M-Instruct, NF4 vs float weights, in one run.
//!
//! ```text
//! cargo run --release --example bench_generate [-- --device auto|wgpu|cpu] [--model PATH]
//!     [--prompt-tokens N] [--new-tokens N]
//! ```
//! For each of `--quant nf4` and `--quant none` it loads the model on the chosen device, processes
//! a prompt of N tokens in one forward pass, then generates greedily token by token with the KV
//! cache (no stop token). It prints prompt-processing and generation tokens/s and the peak memory:
//! on wgpu the largest `bytes_in_use` of burn's device pools seen during the run and the bytes
//! they reserve at the end; on the CPU backend the process's peak RSS (`VmHWM`, reset before
//! each load through `/proc/self/clear_refs`).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use wgtune::device::{DeviceChoice, select};
use wgtune::generate::{GenerateOptions, generate};
use wgtune::io::model_cache::default_model_path;
use wgtune::pretrained::Pretrained;
use wgtune::quant::QuantConfig;
use wgtune::train::metrics::peak_rss_bytes;

struct Args {
    device: DeviceChoice,
    model: Option<PathBuf>,
    prompt_tokens: usize,
    new_tokens: usize,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        device: DeviceChoice::Auto,
        model: None,
        prompt_tokens: 128,
        new_tokens: 32,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--device" => args.device = value()?.parse()?,
            "--model" => args.model = Some(PathBuf::from(value()?)),
            "--prompt-tokens" => args.prompt_tokens = value()?.parse()?,
            "--new-tokens" => args.new_tokens = value()?.parse()?,
            other => bail!(
                "unknown argument {other}; usage: bench_generate [--device auto|wgpu|cpu] \
                 [--model PATH] [--prompt-tokens N] [--new-tokens N]"
            ),
        }
    }
    Ok(args)
}

/// Resets `VmHWM` to the current RSS (Linux: writing 5 to `clear_refs`).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

struct Row {
    name: &'static str,
    prompt_tps: f64,
    gen_tps: f64,
    weights: Option<u64>,
    peak: Option<u64>,
    reserved: Option<u64>,
}

fn run_one(
    name: &'static str,
    quant: Option<QuantConfig>,
    path: &std::path::Path,
    device: &Device,
    args: &Args,
) -> Result<Row> {
    reset_peak_rss();
    let p = Pretrained::load(path, quant, device)?;
    let usage = || {
        device.sync().ok();
        device.memory_pool_usage()
    };
    let weights = usage().map(|u| u.bytes_in_use);
    let tok = p.tokenizer()?;
    // A prompt of exactly `prompt_tokens` tokens: a paragraph repeated, then cut.
    let paragraph = "The quick brown fox jumps over the lazy dog while the river runs to the sea. ";
    let mut ids = tok.encode(&paragraph.repeat(args.prompt_tokens / 8 + 1), true)?;
    ids.truncate(args.prompt_tokens);
    let options = GenerateOptions {
        max_new_tokens: args.new_tokens,
        ..GenerateOptions::default()
    };
    // Warm-up: the same prompt and length once untimed, so that every shape the timed run meets
    // (the prompt's rows, each length of the KV cache) has its kernels compiled and its matmul
    // tuned, and the allocator pools are filled.
    generate(&p.model, tok, &ids, &options, |_| {})?;
    let mut peak = usage().map(|u| u.bytes_in_use);
    let out = generate(&p.model, tok, &ids, &options, |_| {
        if let Some(u) = device.memory_pool_usage() {
            peak = Some(peak.unwrap_or(0).max(u.bytes_in_use));
        }
    })?;
    let end = usage();
    if let Some(u) = &end {
        peak = Some(peak.unwrap_or(0).max(u.bytes_in_use));
    }
    let (peak, reserved) = match end {
        Some(u) => (peak, Some(u.bytes_reserved)),
        None => (peak_rss_bytes(), None),
    };
    Ok(Row {
        name,
        prompt_tps: out.prompt_tokens_per_s(),
        gen_tps: out.generation_tokens_per_s(),
        weights,
        peak,
        reserved,
    })
}

fn mib(b: Option<u64>) -> String {
    b.map_or("-".to_string(), |b| {
        format!("{:.1}", b as f64 / (1024.0 * 1024.0))
    })
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let path = match &args.model {
        Some(p) => p.clone(),
        None => default_model_path()?,
    };
    let selected = select(args.device);
    println!("device: {}", selected.description);
    println!(
        "model: {} | prompt {} tokens, {} generated (greedy, KV cache)",
        path.display(),
        args.prompt_tokens,
        args.new_tokens
    );
    let mut rows = Vec::new();
    for (name, quant) in [("nf4", Some(QuantConfig::default())), ("none (f32)", None)] {
        rows.push(run_one(name, quant, &path, &selected.device, &args)?);
    }
    let memory_kind = if rows.iter().any(|r| r.reserved.is_some()) {
        "peak pool"
    } else {
        "peak RSS"
    };
    println!(
        "{:<11} | {:>10} | {:>10} | {:>12} | {:>14} | {:>13}",
        "weights",
        "prompt t/s",
        "gen t/s",
        "weights MiB",
        format!("{memory_kind} MiB").as_str(),
        "reserved MiB"
    );
    for r in &rows {
        println!(
            "{:<11} | {:>10.1} | {:>10.2} | {:>12} | {:>14} | {:>13}",
            r.name,
            r.prompt_tps,
            r.gen_tps,
            mib(r.weights),
            mib(r.peak),
            mib(r.reserved)
        );
    }
    if let [q, f] = &rows[..] {
        println!(
            "nf4 / f32: prompt {:.2}x, generation {:.2}x, peak memory {}",
            q.prompt_tps / f.prompt_tps,
            q.gen_tps / f.gen_tps,
            match (q.peak, f.peak) {
                (Some(a), Some(b)) => format!("{:.2}x", a as f64 / b as f64),
                _ => "-".to_string(),
            }
        );
    }
    Ok(())
}
