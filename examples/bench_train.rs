//! Training speed and memory of QLoRA on SmolLM2-135M-Instruct: seq 256, batch 1, LoRA r 16 on
//! every linear layer, per-layer activation checkpointing; NF4 base weights next to
//! `--quant none` (f32) in the same run, on each device asked for.
//!
//! ```text
//! cargo run --release --example bench_train [-- --devices cpu,wgpu] [--steps N] [--seq N]
//!     [--no-checkpointing] [--model PATH]
//! ```
//! Each (device, weights) case runs in a child process of its own, so its peak memory is its
//! own: the process's peak RSS (`VmHWM`) on the CPU backend, and on wgpu the largest
//! `bytes_reserved` of burn's device pools seen after a step (plus the peak RSS, which on
//! llvmpipe holds the "device" memory too). The first step (kernel compilation, allocation)
//! is a warmup and not timed; tokens/s is over the remaining steps. Ratios are against the f32
//! case on the same device.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use wgtune::device::{DeviceChoice, select};
use wgtune::eval::Example;
use wgtune::io::model_cache::default_model_path;
use wgtune::peft::{self, LoraConfig};
use wgtune::pretrained::Pretrained;
use wgtune::quant::QuantConfig;
use wgtune::train::metrics::{mem_bytes, peak_rss_bytes};
use wgtune::train::{ScheduleKind, TrainOptions, Trainer};

struct Args {
    devices: Vec<String>,
    steps: u64,
    seq: usize,
    checkpointing: bool,
    model: Option<PathBuf>,
    /// Child mode: run one case and print one JSON line.
    one: Option<(String, String)>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        devices: vec!["cpu".into(), "wgpu".into()],
        steps: 4,
        seq: 256,
        checkpointing: true,
        model: None,
        one: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--devices" => args.devices = value()?.split(',').map(str::to_string).collect(),
            "--steps" => args.steps = value()?.parse()?,
            "--seq" => args.seq = value()?.parse()?,
            "--no-checkpointing" => args.checkpointing = false,
            "--model" => args.model = Some(PathBuf::from(value()?)),
            "--one" => {
                let v = value()?;
                let (d, q) = v.split_once(':').context("--one DEVICE:QUANT")?;
                args.one = Some((d.to_string(), q.to_string()));
            }
            other => bail!(
                "unknown argument {other}; usage: bench_train [--devices cpu,wgpu] [--steps N] \
                 [--seq N] [--no-checkpointing] [--model PATH]"
            ),
        }
    }
    anyhow::ensure!(
        args.steps >= 2,
        "--steps must be at least 2 (one is warmup)"
    );
    Ok(args)
}

/// One case, in this process: prints `{"tok_s":..,"peak_rss":..,"peak_device":..,"step_s":..}`.
fn run_one(args: &Args, device: &str, quant: &str) -> Result<()> {
    let path = match &args.model {
        Some(p) => p.clone(),
        None => default_model_path()?,
    };
    let selected = select(device.parse::<DeviceChoice>()?);
    let dev = selected.device.clone().autodiff();
    let q = (quant == "nf4").then(QuantConfig::default);
    let mut pre = Pretrained::load(&path, q, &dev)?;
    let lora = LoraConfig {
        r: 16,
        alpha: 32.0,
        dropout: 0.0,
        ..LoraConfig::default()
    };
    peft::attach(&mut pre.model, &lora, 0);
    // Random token rows of exactly `seq` tokens, all trained on.
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    let rows: Vec<Example> = (0..args.steps)
        .map(|_| {
            let ids: Vec<i64> = (0..args.seq)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    (s % 49_000) as i64 + 100
                })
                .collect();
            Example {
                labels: ids.clone(),
                input_ids: ids,
            }
        })
        .collect();
    let opts = TrainOptions {
        lr: 1e-4,
        schedule: ScheduleKind::Constant,
        warmup_ratio: 0.0,
        batch_size: 1,
        steps: Some(args.steps),
        activation_checkpointing: args.checkpointing,
        ..TrainOptions::default()
    };
    let mut trainer = Trainer::new(pre.model, lora, rows, Vec::new(), opts)?;
    let mut step_start = Instant::now();
    let mut timed = Vec::new();
    let mut peak_device = 0u64;
    trainer.run(None, &mut |e| {
        if let wgtune::train::Event::Step(m) = e {
            let secs = step_start.elapsed().as_secs_f64();
            if m.step > 1 {
                timed.push(secs);
            }
            peak_device = peak_device.max(mem_bytes(&dev));
            step_start = Instant::now();
        }
    })?;
    let step_s = timed.iter().sum::<f64>() / timed.len() as f64;
    println!(
        "{}",
        serde_json::json!({
            "device": selected.description,
            "tok_s": args.seq as f64 / step_s,
            "step_s": step_s,
            "peak_rss": peak_rss_bytes().unwrap_or(0),
            "peak_device": peak_device,
        })
    );
    Ok(())
}

fn mib(b: u64) -> String {
    format!("{:.0} MiB", b as f64 / 1048576.0)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    if let Some((d, q)) = &args.one {
        return run_one(&args, d, q);
    }
    println!(
        "SmolLM2-135M LoRA r16 all-linear, seq {}, batch 1, activation checkpointing {}, {} timed steps",
        args.seq,
        if args.checkpointing { "on" } else { "off" },
        args.steps - 1
    );
    println!(
        "{:<6} {:<5} {:>9} {:>10} {:>12} {:>12} {:>14}",
        "device", "quant", "tok/s", "vs f32", "peak RSS", "peak device", "RSS vs f32"
    );
    let exe = std::env::current_exe()?;
    for device in &args.devices {
        let mut results = Vec::new();
        for quant in ["none", "nf4"] {
            let mut cmd = Command::new(&exe);
            cmd.arg("--one")
                .arg(format!("{device}:{quant}"))
                .arg("--steps")
                .arg(args.steps.to_string())
                .arg("--seq")
                .arg(args.seq.to_string());
            if !args.checkpointing {
                cmd.arg("--no-checkpointing");
            }
            if let Some(m) = &args.model {
                cmd.arg("--model").arg(m);
            }
            let out = cmd.output()?;
            if !out.status.success() {
                bail!(
                    "{device}/{quant} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let line = String::from_utf8_lossy(&out.stdout);
            let v: serde_json::Value =
                serde_json::from_str(line.trim().lines().last().unwrap_or(""))
                    .with_context(|| format!("{device}/{quant}: no result in {line:?}"))?;
            results.push((quant, v));
        }
        let base = results[0].1.clone();
        for (quant, v) in &results {
            let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
            let b = |k: &str| base[k].as_f64().unwrap_or(1.0);
            println!(
                "{:<6} {:<5} {:>9.1} {:>9.2}x {:>12} {:>12} {:>13.2}x",
                device,
                quant,
                f("tok_s"),
                f("tok_s") / b("tok_s"),
                mib(f("peak_rss") as u64),
                mib(f("peak_device") as u64),
                f("peak_rss") / b("peak_rss"),
            );
        }
        println!("       ({})", results[0].1["device"].as_str().unwrap_or(""));
    }
    Ok(())
}
