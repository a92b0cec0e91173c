//! The quickstart, `wgtune train` with no arguments: fine-tune the default model
//! (SmolLM2-135M-Instruct, NF4) on the project's date-normalization set (`data/quickstart`,
//! built into the binary), then print the held-out exact-match score before and after, side
//! by side.
//!
//! The skill: "March 5, 2021" / "Fri, 5 Mar 2021" / "2021, March 5" ... -> `2021-03-05`. The base
//! model gets about 7% of the held-out rows right. Scoring: the first line of the greedy answer,
//! trimmed, must equal the expected date.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use burn::module::Module;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;

use burn::tensor::{Int, Tensor, TensorData};

use crate::data::template::{ChatTemplate, Message};
use crate::data::tokenizer::Tokenizer;
use crate::device::{self, DeviceChoice};
use crate::generate::{GenerateOptions, generate, reply_stop_ids};
use crate::io::model_cache::default_model_path;
use crate::model::Llama;
use crate::pretrained::Pretrained;
use crate::quant::QuantConfig;
use crate::train::{ScheduleKind, TrainConfig};

/// The training rows (Alpaca JSONL).
pub const TRAIN_JSONL: &str = include_str!("../../data/quickstart/train.jsonl");
/// The held-out rows (Alpaca JSONL), never trained on.
pub const HELDOUT_JSONL: &str = include_str!("../../data/quickstart/heldout.jsonl");

/// Settings of the quickstart.
#[derive(Clone, Debug)]
pub struct QuickstartOptions {
    /// Output directory.
    pub out: PathBuf,
    /// Optimizer steps.
    pub steps: u64,
    /// Held-out rows scored (at most 60).
    pub score_rows: usize,
    /// `auto`, `wgpu` or `cpu`.
    pub device: String,
    /// Examples per step.
    pub batch_size: usize,
}

impl Default for QuickstartOptions {
    fn default() -> Self {
        QuickstartOptions {
            out: PathBuf::from("wgtune-quickstart"),
            steps: 30,
            score_rows: 60,
            device: "auto".to_string(),
            batch_size: 8,
        }
    }
}

/// One held-out row.
#[derive(Clone, Debug, Deserialize)]
pub struct Row {
    /// The instruction.
    pub instruction: String,
    /// The date to convert.
    pub input: String,
    /// The expected ISO date.
    pub output: String,
}

impl Row {
    /// The user message the model sees.
    pub fn prompt(&self) -> String {
        format!("{}\n\n{}", self.instruction, self.input)
    }
}

/// The held-out rows.
pub fn heldout() -> Vec<Row> {
    HELDOUT_JSONL
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("the built-in held-out set parses"))
        .collect()
}

/// Exact match of the answer's first line, trimmed.
pub fn is_correct(answer: &str, expected: &str) -> bool {
    answer.lines().next().unwrap_or("").trim() == expected.trim()
}

/// Whether greedy decoding would answer each row exactly, decided in batched forward passes
/// (teacher forcing) instead of token-by-token generation: greedy output starts with the
/// expected answer iff at every answer position the argmax is the expected token given the
/// expected prefix, and its first line ends there iff the argmax after the answer is a stop
/// token or starts a new line. (A greedy answer spelling the same text with other tokens counts
/// as wrong here, so the score can only be lower than by generation.)
pub fn exact_match(
    model: &Llama,
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    rows: &[Row],
) -> Result<Vec<bool>> {
    let stop = reply_stop_ids(tokenizer, template);
    let device = model.device();
    let mut out = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(8) {
        // Prompt + expected answer, and where the answer starts.
        let mut seqs = Vec::new();
        for row in chunk {
            let prompt = template.render(&[Message::new("user", row.prompt())], true)?;
            let p = tokenizer.encode(&prompt, false)?;
            let full = tokenizer.encode(&format!("{prompt}{}", row.output), false)?;
            let (ids, start) = if full.starts_with(&p) {
                (full, p.len())
            } else {
                let mut ids = p.clone();
                ids.extend(tokenizer.encode(&row.output, false)?);
                (ids, p.len())
            };
            seqs.push((ids, start));
        }
        let s = seqs.iter().map(|(ids, _)| ids.len()).max().unwrap_or(1);
        let pad = stop.first().copied().unwrap_or(0);
        let flat: Vec<i64> = seqs
            .iter()
            .flat_map(|(ids, _)| {
                let mut row: Vec<i64> = ids.iter().map(|&t| i64::from(t)).collect();
                row.resize(s, i64::from(pad));
                row
            })
            .collect();
        let ids = Tensor::<2, Int>::from_data(TensorData::new(flat, [chunk.len(), s]), &device);
        let argmax = model.forward(ids, None).argmax(2); // [b, s, 1]
        let pred: Vec<i64> = argmax
            .inner()
            .into_data()
            .convert::<i64>()
            .try_into_vec::<i64>()
            .map_err(|e| anyhow::anyhow!("reading predictions: {e:?}"))?;
        for (b, (ids, start)) in seqs.iter().enumerate() {
            let at = |i: usize| pred[b * s + i] as u32;
            let answer_ok = (*start..ids.len()).all(|i| at(i - 1) == ids[i]);
            let next = at(ids.len() - 1);
            let ends = stop.contains(&next)
                || tokenizer
                    .decode(&[next], false)
                    .is_ok_and(|t| t.starts_with('\n'));
            out.push(answer_ok && ends);
        }
    }
    Ok(out)
}

/// Greedy answers of `model` to `rows` (chat template, stop at end of turn), with a bar.
pub fn answers(
    model: &Llama,
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    rows: &[Row],
    label: &str,
) -> Result<Vec<String>> {
    let stop = reply_stop_ids(tokenizer, template);
    let opts = GenerateOptions {
        max_new_tokens: 16,
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        seed: 0,
        stop_ids: stop,
    };
    let bar = ProgressBar::new(rows.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg} {pos}/{len} [{bar:30}] {per_sec} ETA {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(label.to_string());
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let text = template.render(&[Message::new("user", row.prompt())], true)?;
        let ids = tokenizer.encode(&text, false)?;
        let g = generate(model, tokenizer, &ids, &opts, |_| {})?;
        out.push(tokenizer.decode(&g.ids, true)?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(out)
}

/// Runs the quickstart.
pub fn run(opts: &QuickstartOptions) -> Result<()> {
    eprintln!(
        "wgtune quickstart: teach SmolLM2-135M-Instruct to write dates as YYYY-MM-DD with QLoRA \
         (NF4 base, LoRA r 16 on all linear layers), then score {} held-out dates before and after.",
        opts.score_rows
    );
    let data = opts.out.join("data");
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    let train_path = data.join("train.jsonl");
    let heldout_path = data.join("heldout.jsonl");
    write(&train_path, TRAIN_JSONL)?;
    write(&heldout_path, HELDOUT_JSONL)?;
    let rows: Vec<Row> = heldout().into_iter().take(opts.score_rows).collect();

    // Before: the base model (the fresh adapter is zero, so this is also step 0).
    let model_path = default_model_path()?;
    let selected = device::select(opts.device.parse::<DeviceChoice>()?);
    let base = Pretrained::load(&model_path, Some(QuantConfig::default()), &selected.device)
        .with_context(|| format!("loading {}", model_path.display()))?;
    let tokenizer = base.tokenizer()?.clone();
    let shown = &rows[..rows.len().min(SHOWN)];
    let start = Instant::now();
    let before = Scores {
        correct: exact_match(&base.model, &tokenizer, &base.template, &rows)?,
        shown: answers(&base.model, &tokenizer, &base.template, shown, "base model")?,
    };
    eprintln!(
        "scored the base model in {:.0} s",
        start.elapsed().as_secs_f64()
    );
    let template = base.template;
    drop(base.model);

    let cfg = TrainConfig {
        data: Some(train_path),
        eval_data: Some(heldout_path),
        out: opts.out.clone(),
        steps: Some(opts.steps),
        lr: 1e-3,
        schedule: ScheduleKind::Cosine,
        warmup_ratio: 0.05,
        batch_size: opts.batch_size,
        max_len: 128,
        eval_every: 10,
        save_every: 10,
        device: opts.device.clone(),
        ..TrainConfig::default()
    };
    let outcome = super::train::train(&cfg, None, true)?;
    if let crate::train::RunEnd::Stopped(step) = outcome.end {
        eprintln!(
            "stopped after step {step}; the checkpoint is in {}",
            opts.out.display()
        );
        std::process::exit(130);
    }
    let model = outcome.model.no_grad();
    let after = Scores {
        correct: exact_match(&model, &tokenizer, &template, &rows)?,
        shown: answers(&model, &tokenizer, &template, shown, "tuned model")?,
    };
    report(&rows, &before, &after, &opts.out);
    Ok(())
}

/// Rows shown with their generated answers.
const SHOWN: usize = 6;

/// A model's results on the held-out rows.
struct Scores {
    /// Exact match per row.
    correct: Vec<bool>,
    /// Generated answers of the first [`SHOWN`] rows.
    shown: Vec<String>,
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Prints a few rows and both scores side by side.
fn report(rows: &[Row], before: &Scores, after: &Scores, out: &Path) {
    let first = |s: &str| s.lines().next().unwrap_or("").trim().to_string();
    let clip = |s: String, n: usize| {
        if s.chars().count() > n {
            format!("{}...", s.chars().take(n - 3).collect::<String>())
        } else {
            s
        }
    };
    println!();
    println!(
        "{:<26} {:<12} {:<28} {:<28}",
        "held-out input", "expected", "before", "after"
    );
    for (i, row) in rows.iter().enumerate().take(before.shown.len()) {
        println!(
            "{:<26} {:<12} {:<28} {:<28}",
            clip(row.input.clone(), 26),
            row.output,
            clip(first(&before.shown[i]), 28),
            clip(first(&after.shown[i]), 28)
        );
    }
    let n = rows.len();
    let count = |s: &Scores| s.correct.iter().filter(|&&c| c).count();
    let (b, a) = (count(before), count(after));
    println!();
    println!(
        "exact match on {n} held-out dates:  before {b}/{n} ({:.0}%)   after {a}/{n} ({:.0}%)",
        100.0 * b as f64 / n as f64,
        100.0 * a as f64 / n as f64
    );
    println!(
        "adapter: {}   try it: wgtune chat --adapter {}",
        out.display(),
        out.display()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_data_and_scoring() {
        let rows = heldout();
        assert_eq!(rows.len(), 60);
        assert!(TRAIN_JSONL.lines().count() >= 300);
        assert!(is_correct("2021-03-05\nmore", "2021-03-05"));
        assert!(is_correct("  2021-03-05 ", "2021-03-05"));
        assert!(!is_correct("The date is 2021-03-05", "2021-03-05"));
    }
}
