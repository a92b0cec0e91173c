//! `wgtune train`: LoRA / QLoRA fine-tuning from the command line.
//!
//! Settings come from defaults, then `--config FILE.toml`, then the flags given (see
//! [`crate::train::TrainConfig`]). The run writes into `--out`: the finished adapter at the top
//! (a PEFT directory), `checkpoints/step-N/`, `metrics.jsonl`, `loss.png` and
//! `train_config.toml`. Ctrl-C writes a checkpoint and exits; `--resume` continues from the
//! newest one. With no arguments at all, `wgtune train` runs the quickstart
//! ([`super::quickstart`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use indicatif::{ProgressBar, ProgressStyle};

use super::model_args::AdapterArg;
use crate::data::dataset::{DataError, DataFormat, DatasetOptions, load_dataset, split_eval};
use crate::data::template::ChatTemplate;
use crate::device::{self, DeviceChoice};
use crate::eval::Example;
use crate::io::model_cache::default_model_path;
use crate::model::Llama;
use crate::peft::qst::{QstConfig, SideNetwork};
use crate::peft::{self, LoraConfig, TargetModule};
use crate::pretrained::Pretrained;
use crate::quant::{QuantConfig, QuantFormat};
use crate::train::checkpoint::{self, TrainState};
use crate::train::metrics::{self, MetricsLine, peak_rss_bytes};
use crate::train::{
    AdamWConfig, Event, MAX_STEP_EXAMPLES, RunEnd, ScheduleKind, TrainConfig, TrainOptions,
    Trainer, plot,
};

/// `--resume` without a value: the newest checkpoint in `--out/checkpoints`.
const LATEST: &str = "latest";

/// Arguments of `wgtune train`. Every setting is optional here: unset ones come from
/// `--config` or the defaults.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct TrainArgs {
    /// A TOML file of settings (keys are the flag names: `lora-r = 8`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Continue from the newest checkpoint in `--out/checkpoints` (or from the checkpoint
    /// directory given).
    #[arg(long, num_args = 0..=1, default_missing_value = LATEST)]
    pub resume: Option<PathBuf>,
    /// A GGUF file or Hugging Face directory (default: SmolLM2-135M-Instruct).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Training data: JSONL or a JSON array (Alpaca, ShareGPT, messages, text, input_ids).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Held-out data for the eval loss.
    #[arg(long)]
    pub eval_data: Option<PathBuf>,
    /// Hold out this fraction of --data for eval instead.
    #[arg(long)]
    pub eval_split: Option<f64>,
    /// Row format: alpaca, sharegpt, messages, text or tokenized (default: detected).
    #[arg(long)]
    pub format: Option<String>,
    /// Chat template: chatml, llama2, alpaca or vicuna (default: the model's own).
    #[arg(long)]
    pub template: Option<String>,
    /// Output directory (the adapter, checkpoints, metrics.jsonl, loss.png).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Examples are truncated to this many tokens.
    #[arg(long)]
    pub max_len: Option<usize>,
    /// Train on prompt tokens too, not only on the answers.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub train_on_prompt: Option<bool>,
    /// Report and skip bad rows instead of stopping.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub skip_bad_rows: Option<bool>,
    /// lora (adapters on the projections) or qst (Quantized Side Tuning).
    #[arg(long)]
    pub method: Option<String>,
    /// QST: downsample rank.
    #[arg(long)]
    pub qst_r: Option<usize>,
    /// QST: reduction factor of the side network's width.
    #[arg(long)]
    pub qst_reduction: Option<usize>,
    /// LoRA rank.
    #[arg(long)]
    pub lora_r: Option<usize>,
    /// LoRA alpha (scaling alpha/r).
    #[arg(long)]
    pub lora_alpha: Option<f32>,
    /// Dropout on the adapter input.
    #[arg(long)]
    pub lora_dropout: Option<f32>,
    /// Comma-separated projections (q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj)
    /// or all-linear.
    #[arg(long)]
    pub target_modules: Option<String>,
    /// rsLoRA scaling alpha/sqrt(r).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub rslora: Option<bool>,
    /// Start from this PEFT adapter directory.
    #[arg(long)]
    pub init_adapter: Option<PathBuf>,
    /// Peak learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// constant, linear or cosine.
    #[arg(long)]
    pub schedule: Option<ScheduleKind>,
    /// Warmup as a fraction of the steps.
    #[arg(long)]
    pub warmup_ratio: Option<f64>,
    /// Warmup steps (overrides --warmup-ratio).
    #[arg(long)]
    pub warmup_steps: Option<u64>,
    /// AdamW weight decay.
    #[arg(long)]
    pub weight_decay: Option<f64>,
    /// AdamW beta1.
    #[arg(long)]
    pub adam_beta1: Option<f64>,
    /// AdamW beta2.
    #[arg(long)]
    pub adam_beta2: Option<f64>,
    /// AdamW epsilon.
    #[arg(long)]
    pub adam_eps: Option<f64>,
    /// Clip the global gradient norm to this (0 disables).
    #[arg(long)]
    pub max_grad_norm: Option<f64>,
    /// Examples per micro-batch.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Micro-batches per optimizer step.
    #[arg(long)]
    pub grad_accum: Option<usize>,
    /// Optimizer steps (overrides --epochs).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Passes over the data.
    #[arg(long)]
    pub epochs: Option<u64>,
    /// Seed (adapter init, data order, eval split, dropout).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Eval every N steps (0: at the end).
    #[arg(long)]
    pub eval_every: Option<u64>,
    /// Checkpoint every N steps (0: at the end and on Ctrl-C).
    #[arg(long)]
    pub save_every: Option<u64>,
    /// Checkpoints to keep.
    #[arg(long)]
    pub save_total_limit: Option<usize>,
    /// Recompute each decoder layer in the backward to save memory (default true).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub activation_checkpointing: Option<bool>,
    /// auto, wgpu or cpu.
    #[arg(long)]
    pub device: Option<String>,
    /// Base weights: nf4, fp4 or none.
    #[arg(long)]
    pub quant: Option<String>,
    /// Double quantization of the 4-bit block scales.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub double_quant: Option<bool>,
    /// Elements per 4-bit block.
    #[arg(long)]
    pub blocksize: Option<usize>,
}

macro_rules! overlay {
    ($cfg:ident, $args:ident, opt: [$($o:ident),*], val: [$($v:ident),*]) => {
        $( if $args.$o.is_some() { $cfg.$o = $args.$o.clone(); } )*
        $( if let Some(x) = $args.$v.clone() { $cfg.$v = x; } )*
    };
}

impl TrainArgs {
    /// No argument at all: the quickstart.
    pub fn is_empty(&self) -> bool {
        format!("{self:?}") == format!("{:?}", TrainArgs::default())
    }

    /// Defaults, then `--config`, then the flags.
    pub fn settings(&self) -> Result<TrainConfig> {
        let mut cfg = match &self.config {
            Some(path) => TrainConfig::read(path)?,
            None => TrainConfig::default(),
        };
        let args = self;
        overlay!(cfg, args,
            opt: [model, data, eval_data, format, template, init_adapter, warmup_steps, steps],
            val: [eval_split, out, max_len, train_on_prompt, skip_bad_rows, method, qst_r,
                  qst_reduction, lora_r, lora_alpha,
                  lora_dropout, target_modules, rslora, lr, schedule, warmup_ratio, weight_decay,
                  adam_beta1, adam_beta2, adam_eps, max_grad_norm, batch_size, grad_accum, epochs,
                  seed, eval_every, save_every, save_total_limit, activation_checkpointing,
                  device, quant, double_quant, blocksize]);
        Ok(cfg)
    }
}

/// Runs `wgtune train`.
pub fn run(args: TrainArgs) -> Result<()> {
    if args.is_empty() {
        return super::quickstart::run(&super::quickstart::QuickstartOptions::default());
    }
    let cfg = args.settings()?;
    let resume = args.resume.clone();
    let outcome = train(&cfg, resume.as_deref(), true)?;
    if let RunEnd::Stopped(step) = outcome.end {
        eprintln!(
            "stopped after step {step}; checkpoint in {}; continue with the same command plus --resume",
            checkpoint::checkpoints_dir(&cfg.out).display()
        );
        std::process::exit(130);
    }
    Ok(())
}

/// What [`train`] returns.
pub struct Outcome {
    /// How the run ended.
    pub end: RunEnd,
    /// The trained model (dropout off), on the training device.
    pub model: Llama,
}

/// Checks settings a user can get wrong, before anything slow happens.
fn validate(cfg: &TrainConfig) -> Result<()> {
    ensure!(
        cfg.data.is_some(),
        "--data is required (a JSONL or JSON file)"
    );
    ensure!(cfg.max_len >= 2, "--max-len must be at least 2");
    ensure!(cfg.batch_size >= 1, "--batch-size must be at least 1");
    ensure!(cfg.grad_accum >= 1, "--grad-accum must be at least 1");
    ensure!(
        cfg.batch_size
            .checked_mul(cfg.grad_accum)
            .is_some_and(|n| n <= MAX_STEP_EXAMPLES),
        "--batch-size {} x --grad-accum {}: an optimizer step takes at most {MAX_STEP_EXAMPLES} \
         examples",
        cfg.batch_size,
        cfg.grad_accum
    );
    ensure!(
        cfg.lr > 0.0 && cfg.lr.is_finite(),
        "--lr must be a positive number"
    );
    ensure!(
        (0.0..1.0).contains(&cfg.eval_split),
        "--eval-split must be in [0, 1)"
    );
    ensure!(
        (0.0..=1.0).contains(&cfg.warmup_ratio),
        "--warmup-ratio must be in [0, 1]"
    );
    ensure!(cfg.max_grad_norm >= 0.0, "--max-grad-norm must be >= 0");
    adamw_config(cfg)
        .validate()
        .map_err(|e| anyhow::anyhow!("--{e}"))?;
    ensure!(cfg.steps != Some(0), "--steps must be at least 1");
    ensure!(
        cfg.method == "lora" || cfg.method == "qst",
        "--method: unknown {:?} (lora or qst)",
        cfg.method
    );
    if let Some(f) = &cfg.format {
        f.parse::<DataFormat>()
            .map_err(|e| anyhow::anyhow!("--format: {e}"))?;
    }
    cfg.device
        .parse::<DeviceChoice>()
        .map_err(|e| anyhow::anyhow!("--device: {e}"))?;
    quant_config(cfg)?;
    lora_config(cfg)?;
    Ok(())
}

fn quant_config(cfg: &TrainConfig) -> Result<Option<QuantConfig>> {
    if cfg.quant == "none" {
        return Ok(None);
    }
    let format: QuantFormat = cfg
        .quant
        .parse()
        .map_err(|_| anyhow::anyhow!("--quant: unknown {:?} (nf4, fp4 or none)", cfg.quant))?;
    let q = QuantConfig {
        format,
        blocksize: cfg.blocksize,
        double_quant: cfg.double_quant,
    };
    q.validate()?;
    Ok(Some(q))
}

fn lora_config(cfg: &TrainConfig) -> Result<LoraConfig> {
    let targets = TargetModule::parse_list(&cfg.target_modules)
        .map_err(|e| anyhow::anyhow!("--target-modules: {e}"))?;
    let lora = LoraConfig {
        r: cfg.lora_r,
        alpha: cfg.lora_alpha,
        dropout: cfg.lora_dropout,
        targets,
        rslora: cfg.rslora,
    };
    lora.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(lora)
}

/// Loads the data of `cfg` with the model's tokenizer and template: (train, eval).
fn load_data(cfg: &TrainConfig, pre: &Pretrained) -> Result<(Vec<Example>, Vec<Example>)> {
    let preset;
    let template = match &cfg.template {
        Some(name) => {
            preset = ChatTemplate::preset(name)?.with_special_tokens(
                pre.tokenizer
                    .as_ref()
                    .map(|t| t.bos_token())
                    .unwrap_or_default(),
                pre.tokenizer
                    .as_ref()
                    .map(|t| t.eos_token())
                    .unwrap_or_default(),
            );
            &preset
        }
        None => &pre.template,
    };
    let opts =
        DatasetOptions {
            format: cfg.format.as_deref().map(str::parse).transpose().map_err(
                |e: crate::data::dataset::UnknownFormat| anyhow::anyhow!("--format: {e}"),
            )?,
            max_len: cfg.max_len,
            train_on_prompt: cfg.train_on_prompt,
            skip_bad_rows: cfg.skip_bad_rows,
        };
    let vocab = pre.config.vocab_size;
    let read = |path: &Path| -> Result<Vec<Example>> {
        let ds = load_dataset(path, pre.tokenizer.as_ref(), template, &opts)?;
        for bad in &ds.bad_rows {
            eprintln!("skipped {}:{}: {}", path.display(), bad.line, bad.reason);
        }
        for (i, ex) in ds.examples.iter().enumerate() {
            if let Some(&id) = ex
                .input_ids
                .iter()
                .find(|&&id| id < 0 || id as usize >= vocab)
            {
                bail!(
                    "{}: example {} has token id {id}, outside the model's vocabulary of {vocab}",
                    path.display(),
                    i + 1
                );
            }
        }
        eprintln!(
            "data: {} ({}, {} examples, {} target tokens{})",
            path.display(),
            ds.format,
            ds.examples.len(),
            ds.examples.iter().map(Example::target_count).sum::<usize>(),
            if ds.bad_rows.is_empty() {
                String::new()
            } else {
                format!(", {} bad rows skipped", ds.bad_rows.len())
            }
        );
        Ok(ds.examples)
    };
    let train = read(cfg.data.as_deref().expect("validated"))?;
    Ok(match &cfg.eval_data {
        Some(path) => (train, read(path)?),
        None if cfg.eval_split > 0.0 => split_eval(train, cfg.eval_split, cfg.seed),
        None => (train, Vec::new()),
    })
}

fn adamw_config(cfg: &TrainConfig) -> AdamWConfig {
    AdamWConfig {
        beta1: cfg.adam_beta1,
        beta2: cfg.adam_beta2,
        eps: cfg.adam_eps,
        weight_decay: cfg.weight_decay,
    }
}

/// The whole run for `cfg` (`resume`: `Some("latest")` = newest checkpoint, `Some(dir)` = that
/// one).
/// `progress` draws a bar on stderr.
pub fn train(cfg: &TrainConfig, resume: Option<&Path>, progress: bool) -> Result<Outcome> {
    validate(cfg)?;
    let model_path = match &cfg.model {
        Some(p) => p.clone(),
        None => default_model_path()?,
    };
    let selected = device::select(cfg.device.parse().expect("validated"));
    eprintln!("device: {}", selected.description);
    let device = selected.device.clone().autodiff();
    // What can be checked without the model is checked before its (slow) load: the data files
    // open, the adapter to continue is one.
    for path in [&cfg.data, &cfg.eval_data].into_iter().flatten() {
        std::fs::File::open(path).map_err(|cause| DataError::Io {
            path: path.clone(),
            cause,
        })?;
    }
    let qst = cfg.method == "qst";
    let init = cfg
        .init_adapter
        .as_deref()
        .map(AdapterArg::read)
        .transpose()?;
    match (&init, qst) {
        (Some(AdapterArg::Lora(file)), true) => bail!(
            "{}: a LoRA adapter; --method qst continues a QST side network",
            file.dir.display()
        ),
        (Some(AdapterArg::Qst(dir)), false) => bail!(
            "{}: a QST side network; continue it with --method qst",
            dir.display()
        ),
        _ => {}
    }
    let started = Instant::now();
    let mut pre = Pretrained::load(&model_path, quant_config(cfg)?, &device)
        .with_context(|| format!("loading {}", model_path.display()))?;
    eprintln!(
        "model: {} ({} weights) loaded in {:.1} s",
        model_path.display(),
        cfg.quant,
        started.elapsed().as_secs_f64()
    );
    let (train_rows, eval_rows) = load_data(cfg, &pre)?;
    let mut lora = lora_config(cfg)?;
    match init {
        Some(AdapterArg::Qst(dir)) => {
            pre.model.side = Some(SideNetwork::load(&dir, &pre.config, &device)?);
            eprintln!("side network: continuing {}", dir.display());
        }
        None if qst => {
            let qcfg = QstConfig {
                r: cfg.qst_r,
                reduction: cfg.qst_reduction,
            };
            pre.model.side = Some(SideNetwork::init(&pre.config, &qcfg, cfg.seed, &device)?);
        }
        Some(AdapterArg::Lora(file)) => {
            file.apply(&mut pre.model)?;
            lora = file.config.clone();
            eprintln!(
                "adapter: continuing {} (r {}, alpha {}, {} modules)",
                file.dir.display(),
                lora.r,
                lora.alpha,
                file.modules.len()
            );
        }
        None => {
            peft::check_rank(&pre.model, &lora).map_err(anyhow::Error::msg)?;
            peft::attach(&mut pre.model, &lora, cfg.seed);
        }
    }
    std::fs::create_dir_all(&cfg.out).with_context(|| format!("creating {}", cfg.out.display()))?;
    cfg.write(&cfg.out.join("train_config.toml"))?;
    let pad_id = pre
        .tokenizer
        .as_ref()
        .and_then(|t| t.pad_id().or(t.eos_id()))
        .map_or(0, i64::from);
    let opts = TrainOptions {
        adamw: adamw_config(cfg),
        lr: cfg.lr,
        schedule: cfg.schedule,
        warmup_steps: cfg.warmup_steps,
        warmup_ratio: cfg.warmup_ratio,
        max_grad_norm: cfg.max_grad_norm,
        batch_size: cfg.batch_size,
        grad_accum: cfg.grad_accum,
        steps: cfg.steps,
        epochs: cfg.epochs,
        seed: cfg.seed,
        eval_every: cfg.eval_every,
        save_every: cfg.save_every,
        save_total_limit: cfg.save_total_limit,
        activation_checkpointing: cfg.activation_checkpointing,
        pad_id,
        out: Some(cfg.out.clone()),
        base_model: model_path.display().to_string(),
    };
    let trainable: usize = match &pre.model.side {
        Some(side) => side.num_trainable(),
        None => peft::adapters(&pre.model)
            .iter()
            .map(|(_, a)| {
                a.a.val().dims().iter().product::<usize>()
                    + a.b.val().dims().iter().product::<usize>()
            })
            .sum(),
    };
    let mut trainer = Trainer::new(pre.model, lora, train_rows, eval_rows, opts)?;
    if let Some(dir) = resume {
        let dir = if dir == Path::new(LATEST) && !dir.is_dir() {
            checkpoint::latest(&checkpoint::checkpoints_dir(&cfg.out))?
        } else {
            dir.to_path_buf()
        };
        trainer.resume(&dir)?;
        eprintln!(
            "resumed from {} (step {})",
            dir.display(),
            trainer.state().step
        );
    }
    let total = trainer.state().total_steps;
    eprintln!(
        "training ({}): {trainable} parameters, {total} steps, batch {} x {} accumulation",
        cfg.method, cfg.batch_size, cfg.grad_accum
    );
    let stop = install_stop_flag();
    let bar = progress_bar(total, trainer.state(), progress);
    let mut on_event = |e: &Event| match e {
        Event::Step(m) => {
            bar.set_position(m.step);
            bar.set_message(format!(
                "loss {:.4}  lr {:.2e}  {:.0} tok/s  mem {}",
                m.loss,
                m.lr,
                m.tokens_per_s,
                mib(m.mem_bytes)
            ));
        }
        Event::Eval(m) => bar.println(format!("step {}: eval loss {:.4}", m.step, m.eval_loss)),
        Event::Checkpoint(p) => bar.println(format!("checkpoint: {}", p.display())),
    };
    let end = trainer.run(Some(&stop), &mut on_event)?;
    bar.finish_and_clear();
    // metrics.jsonl holds the whole run (earlier sessions of a resumed one included).
    let (mut train_curve, mut eval_curve) = (Vec::new(), Vec::new());
    for line in metrics::read_lines(&cfg.out.join("metrics.jsonl")).unwrap_or_default() {
        match line {
            MetricsLine::Step(m) => train_curve.push((m.step as f64, m.loss)),
            MetricsLine::Eval(m) => eval_curve.push((m.step as f64, m.eval_loss)),
        }
    }
    let plot_path = cfg.out.join("loss.png");
    plot::write_loss_png(&plot_path, &train_curve, &eval_curve)
        .with_context(|| format!("writing {}", plot_path.display()))?;
    if end == RunEnd::Finished {
        trainer.save_adapter(&cfg.out)?;
        let kind = if qst {
            "QST side network"
        } else {
            "PEFT format"
        };
        summarize(&cfg.out, trainer.state(), &train_curve, kind);
    }
    Ok(Outcome {
        end,
        model: trainer.into_model(),
    })
}

/// A flag set by Ctrl-C (a second Ctrl-C exits at once).
fn install_stop_flag() -> Arc<AtomicBool> {
    static FLAG: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    FLAG.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        on_ctrl_c(flag.clone());
        flag
    })
    .clone()
}

#[cfg(not(target_arch = "wasm32"))]
fn on_ctrl_c(flag: Arc<AtomicBool>) {
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, std::sync::atomic::Ordering::SeqCst) {
            eprintln!("\nsecond Ctrl-C: exiting without a checkpoint");
            std::process::exit(130);
        }
        eprintln!("\nCtrl-C: finishing this step, then writing a checkpoint (again to abort)");
    });
}

/// No signals in a browser.
#[cfg(target_arch = "wasm32")]
fn on_ctrl_c(_: Arc<AtomicBool>) {}

fn progress_bar(total: u64, state: &TrainState, visible: bool) -> ProgressBar {
    let bar = if visible {
        ProgressBar::new(total)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "step {pos}/{len} [{bar:30}] {elapsed_precise} ETA {eta_precise}  {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_position(state.step);
    bar.reset_eta();
    bar
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// The closing lines: steps, tokens, speed, first and last loss, peak memory, where things are.
fn summarize(out: &Path, state: &TrainState, train_curve: &[(f64, f64)], kind: &str) {
    let losses: Vec<f64> = train_curve.iter().map(|&(_, loss)| loss).collect();
    if let (Some(first), Some(last)) = (losses.first(), losses.last()) {
        eprintln!(
            "done: {} steps, {} tokens in {:.0} s ({:.1} tok/s); loss {first:.4} -> {last:.4}; \
             peak RSS {}",
            state.step,
            state.tokens,
            state.elapsed_s,
            state.tokens as f64 / state.elapsed_s.max(1e-9),
            peak_rss_bytes().map_or("?".to_string(), mib)
        );
    }
    eprintln!(
        "adapter: {} ({kind}); metrics.jsonl, loss.png, train_config.toml beside it",
        out.display()
    );
}
