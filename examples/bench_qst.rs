//! Quantized Side Tuning against QLoRA on SmolLM2-135M-Instruct (NF4 base), one run, same
//! device, same data and steps:
//!
//! * speed and memory: `--batch` rows of `--seq` random tokens per step (defaults 4 x 512);
//!   LoRA r 16 on all linear layers with per-layer activation checkpointing vs QST (r 16,
//!   reduction 16); mean step time after a warmup step; peak RSS (`VmHWM`) of the whole process
//!   and of the training alone (the mark reset after loading, through `/proc/self/clear_refs`);
//!   and, on wgpu, the largest `bytes_reserved` of the device pools;
//! * quality: `--quality-steps` steps (batch 8, cosine, peak lr `--lr` for LoRA and `--qst-lr`
//!   for QST, both 1e-3 by default) on the quickstart's date data, then the eval loss on its
//!   held-out rows.
//!
//! ```text
//! cargo run --release --example bench_qst [-- --device cpu|wgpu] [--seq N] [--batch N]
//!     [--steps N] [--quality-steps N] [--lr LR] [--qst-lr LR] [--methods lora,qst,qst-full]
//! ```
//! Methods: `lora`, `qst` (the side network checkpointed per layer, as the trainer runs it with
//! activation checkpointing on), `qst-full` (one graph over the whole side network: one
//! forward less, every side layer's attention maps alive at once) and `forward`: no training
//! at all, only the frozen LLM's forward and loss over the same rows (the evaluation path). Any
//! method that runs the LLM forward (QST does, once a step) pays at least this much time and
//! memory, so `forward` measures the floor under QST's step time and peak.
//! Each method runs in a child process of its own so that its peak memory is its own.

use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::tensor::{Int, Tensor, TensorData};
use wgtune::data::dataset::{DatasetOptions, load_dataset};
use wgtune::device::{DeviceChoice, select};
use wgtune::eval::Example;
use wgtune::io::model_cache::default_model_path;
use wgtune::model::Llama;
use wgtune::peft::qst::{QstConfig, SideNetwork};
use wgtune::peft::{self, LoraConfig};
use wgtune::pretrained::Pretrained;
use wgtune::quant::QuantConfig;
use wgtune::train::metrics::{mem_bytes, peak_rss_bytes};
use wgtune::train::{Event, ScheduleKind, TrainOptions, Trainer};

struct Args {
    device: String,
    seq: usize,
    batch: usize,
    steps: u64,
    quality_steps: u64,
    /// Peak learning rate of the quality run, per method.
    lr_lora: f64,
    lr_qst: f64,
    one: Option<String>,
    methods: Vec<String>,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        device: "cpu".into(),
        seq: 512,
        batch: 4,
        steps: 3,
        quality_steps: 20,
        lr_lora: 1e-3,
        lr_qst: 1e-3,
        one: None,
        methods: vec!["lora".into(), "qst".into()],
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut value = || it.next().with_context(|| format!("{k} needs a value"));
        match k.as_str() {
            "--device" => a.device = value()?,
            "--seq" => a.seq = value()?.parse()?,
            "--batch" => a.batch = value()?.parse()?,
            "--steps" => a.steps = value()?.parse()?,
            "--quality-steps" => a.quality_steps = value()?.parse()?,
            "--lr" => a.lr_lora = value()?.parse()?,
            "--qst-lr" => a.lr_qst = value()?.parse()?,
            "--one" => a.one = Some(value()?),
            "--methods" => a.methods = value()?.split(',').map(str::to_string).collect(),
            other => bail!("unknown argument {other}"),
        }
    }
    anyhow::ensure!(a.steps >= 2, "--steps must be at least 2 (one is warmup)");
    Ok(a)
}

/// The model with the method's trainable part attached, and the LoRA config saved adapters use.
fn prepare(pre: &mut Pretrained, method: &str) -> Result<LoraConfig> {
    let lora = LoraConfig {
        dropout: 0.0,
        ..LoraConfig::default()
    };
    match method {
        "lora" => peft::attach(&mut pre.model, &lora, 0),
        "forward" => {}
        "qst" | "qst-full" => {
            let device = pre.model.device();
            pre.model.side = Some(SideNetwork::init(
                &pre.config,
                &QstConfig::default(),
                0,
                &device,
            )?);
        }
        other => bail!("unknown method {other}"),
    }
    Ok(lora)
}

fn trainable(model: &Llama) -> usize {
    match &model.side {
        Some(side) => side.num_trainable(),
        None => peft::adapters(model)
            .iter()
            .map(|(_, a)| {
                a.a.val().dims().iter().product::<usize>()
                    + a.b.val().dims().iter().product::<usize>()
            })
            .sum(),
    }
}

fn run_one(a: &Args, method: &str) -> Result<()> {
    let path = default_model_path()?;
    let selected = select(a.device.parse::<DeviceChoice>()?);
    let device = selected.device.clone().autodiff();
    let load = || Pretrained::load(&path, Some(QuantConfig::default()), &device);

    // Speed and memory on fixed-length random rows.
    let mut pre = load()?;
    let lora = prepare(&mut pre, method)?;
    let params = trainable(&pre.model);
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let rows: Vec<Example> = (0..a.steps as usize * a.batch)
        .map(|_| {
            let ids: Vec<i64> = (0..a.seq)
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
        batch_size: a.batch,
        steps: Some(a.steps),
        activation_checkpointing: method != "qst-full",
        ..TrainOptions::default()
    };
    let forward = method == "forward";
    // `forward` has nothing to train: the frozen model's loss over the same batches instead.
    let (frozen, mut trainer) = if forward {
        (Some((pre.model.no_grad(), rows)), None)
    } else {
        let trainer = Trainer::new(pre.model, lora.clone(), rows, Vec::new(), opts)?;
        (None, Some(trainer))
    };
    // From here VmHWM is the training's own peak (Linux: "5" resets the mark to the current RSS).
    let load_peak = peak_rss_bytes().unwrap_or(0);
    let train_mark = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let mut start = Instant::now();
    let mut timed = Vec::new();
    let mut peak_device = 0u64;
    // After step `step` (1-based; the first is a warmup and not timed).
    let mut tick = |step: u64| {
        if step > 1 {
            timed.push(start.elapsed().as_secs_f64());
        }
        peak_device = peak_device.max(mem_bytes(&device));
        start = Instant::now();
    };
    if let Some((model, rows)) = &frozen {
        for (step, batch) in (1..).zip(rows.chunks(a.batch)) {
            let shape = [batch.len(), a.seq];
            let ids = |f: fn(&Example) -> &Vec<i64>| {
                let v: Vec<i64> = batch.iter().flat_map(|e| f(e).iter().copied()).collect();
                Tensor::<2, Int>::from_data(TensorData::new(v, shape), &device)
            };
            let (sum, _) = model.loss_sum(ids(|e| &e.input_ids), ids(|e| &e.labels));
            sum.into_scalar::<f32>();
            tick(step);
        }
    } else if let Some(trainer) = &mut trainer {
        trainer.run(None, &mut |e| {
            if let Event::Step(m) = e {
                tick(m.step);
            }
        })?;
    }
    let since_mark = peak_rss_bytes().unwrap_or(0);
    let peak_rss = load_peak.max(since_mark);
    let train_rss = if train_mark { since_mark } else { 0 };
    drop((trainer, frozen));
    let step_s = timed.iter().sum::<f64>() / timed.len() as f64;

    // Quality: the same data and steps for both methods. `forward` reports the base model's
    // loss (a fresh LoRA, B = 0, changes nothing) and trains nothing.
    let mut pre = load()?;
    let lora = prepare(&mut pre, if forward { "lora" } else { method })?;
    let data = |name: &str| -> Result<Vec<Example>> {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("data/quickstart")
            .join(name);
        Ok(load_dataset(
            &p,
            pre.tokenizer.as_ref(),
            &pre.template,
            &DatasetOptions::default(),
        )?
        .examples)
    };
    let (train, eval) = (data("train.jsonl")?, data("heldout.jsonl")?);
    let pad_id = pre
        .tokenizer
        .as_ref()
        .and_then(|t| t.eos_id())
        .map_or(0, i64::from);
    let opts = TrainOptions {
        lr: if method.starts_with("qst") {
            a.lr_qst
        } else {
            a.lr_lora
        },
        schedule: ScheduleKind::Cosine,
        warmup_ratio: 0.05,
        batch_size: 8,
        steps: Some(a.quality_steps),
        pad_id,
        ..TrainOptions::default()
    };
    let mut trainer = Trainer::new(pre.model, lora, train, eval, opts)?;
    let before = trainer.evaluate().unwrap_or(f64::NAN);
    let q_start = Instant::now();
    if !forward {
        trainer.run(None, &mut |_| {})?;
    }
    let quality_s = q_start.elapsed().as_secs_f64();
    let after = trainer.evaluate().unwrap_or(f64::NAN);
    println!(
        "{}",
        serde_json::json!({
            "device": selected.description,
            "params": params,
            "step_s": step_s,
            "tok_s": (a.seq * a.batch) as f64 / step_s,
            "peak_rss": peak_rss,
            "train_rss": train_rss,
            "peak_device": peak_device,
            "eval_before": before,
            "eval_after": after,
            "quality_s": quality_s,
        })
    );
    Ok(())
}

fn mib(b: f64) -> String {
    format!("{:.0} MiB", b / 1048576.0)
}

fn main() -> Result<()> {
    let a = parse_args()?;
    if let Some(m) = &a.one {
        return run_one(&a, m);
    }
    let exe = std::env::current_exe()?;
    let mut res = Vec::new();
    for method in &a.methods {
        let method = method.as_str();
        let out = Command::new(&exe)
            .args(["--one", method, "--device", &a.device])
            .args(["--seq", &a.seq.to_string(), "--batch", &a.batch.to_string()])
            .args(["--steps", &a.steps.to_string()])
            .args(["--quality-steps", &a.quality_steps.to_string()])
            .args([
                "--lr",
                &a.lr_lora.to_string(),
                "--qst-lr",
                &a.lr_qst.to_string(),
            ])
            .output()?;
        if !out.status.success() {
            bail!("{method} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value = serde_json::from_str(text.trim().lines().last().unwrap_or(""))
            .with_context(|| format!("{method}: no result in {text:?}"))?;
        res.push((method, v));
    }
    let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    println!(
        "SmolLM2-135M NF4, seq {} x batch {}, {} timed steps; quality: {} steps on the date set",
        a.seq,
        a.batch,
        a.steps - 1,
        a.quality_steps
    );
    println!("device: {}", res[0].1["device"].as_str().unwrap_or(""));
    println!(
        "{:<8} {:>10} {:>9} {:>9} {:>10} {:>10} {:>12} {:>11} {:>11}",
        "method",
        "params",
        "step s",
        "tok/s",
        "peak RSS",
        "train RSS",
        "peak device",
        "eval before",
        "eval after"
    );
    for (m, v) in &res {
        println!(
            "{:<8} {:>10} {:>9.2} {:>9.1} {:>10} {:>10} {:>12} {:>11.4} {:>11.4}",
            m,
            f(v, "params"),
            f(v, "step_s"),
            f(v, "tok_s"),
            mib(f(v, "peak_rss")),
            mib(f(v, "train_rss")),
            mib(f(v, "peak_device")),
            f(v, "eval_before"),
            f(v, "eval_after")
        );
    }
    // Every method against the first (LoRA by default); device memory where there is a pool.
    let (base_name, base) = (&res[0].0, &res[0].1);
    // `mem_bytes` is the device pools' reservation on wgpu, the RSS elsewhere.
    let on_wgpu = base["device"]
        .as_str()
        .is_some_and(|d| d.starts_with("wgpu"));
    for (m, v) in &res[1..] {
        let memory = if on_wgpu {
            format!(
                "{:.2}x less peak device memory",
                f(base, "peak_device") / f(v, "peak_device")
            )
        } else {
            format!(
                "{:.2}x less peak RSS ({:.2}x in training)",
                f(base, "peak_rss") / f(v, "peak_rss"),
                f(base, "train_rss") / f(v, "train_rss")
            )
        };
        println!(
            "{m} vs {base_name}: {:.2}x faster steps, {memory}, eval loss {:+.1}%",
            f(base, "step_s") / f(v, "step_s"),
            100.0 * (f(v, "eval_after") / f(base, "eval_after") - 1.0)
        );
    }
    Ok(())
}
