//! What a run reports: `metrics.jsonl` in the output directory (one object per optimizer step
//! and one per eval), and the memory figure they carry.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One optimizer step, as a `metrics.jsonl` line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// Optimizer steps done (1 for the first update).
    pub step: u64,
    /// Mean loss over the step's target tokens, before the update.
    pub loss: f64,
    /// Learning rate of the update.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Tokens (not padding) trained on so far.
    pub tokens: u64,
    /// Tokens per second of this step.
    pub tokens_per_s: f64,
    /// Seconds of training so far (across resumes).
    pub elapsed_s: f64,
    /// Device memory held (wgpu) or resident memory of the process (CPU), bytes.
    pub mem_bytes: u64,
}

/// One evaluation, as a `metrics.jsonl` line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalMetrics {
    /// Optimizer steps done when it ran.
    pub step: u64,
    /// Mean loss over every target token of the eval set.
    pub eval_loss: f64,
}

/// A line of `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MetricsLine {
    /// An optimizer step.
    Step(StepMetrics),
    /// An evaluation.
    Eval(EvalMetrics),
}

impl MetricsLine {
    /// The step the line belongs to.
    pub fn step(&self) -> u64 {
        match self {
            MetricsLine::Step(m) => m.step,
            MetricsLine::Eval(m) => m.step,
        }
    }
}

/// `metrics.jsonl`, appended one line at a time and flushed, so a killed run keeps every line
/// written before.
pub struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsLog {
    /// Opens `path` for a run that has done `done_steps` steps: lines of later steps (written
    /// after the checkpoint being resumed) are dropped; a new run (`0`) starts an empty file.
    pub fn open(path: &Path, done_steps: u64) -> std::io::Result<Self> {
        let keep: Vec<String> = if done_steps == 0 {
            Vec::new()
        } else {
            read_lines(path)
                .unwrap_or_default()
                .into_iter()
                .filter(|l| l.step() <= done_steps)
                .map(|l| serde_json::to_string(&l).expect("metrics serialize"))
                .collect()
        };
        let mut text = keep.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        std::fs::write(path, text)?;
        let file = std::fs::OpenOptions::new().append(true).open(path)?;
        Ok(MetricsLog {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Appends one line.
    pub fn write(&mut self, line: &MetricsLine) -> std::io::Result<()> {
        let text = serde_json::to_string(line).expect("metrics serialize");
        writeln!(self.file, "{text}")?;
        self.file.flush()
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Every parseable line of a `metrics.jsonl`.
pub fn read_lines(path: &Path) -> std::io::Result<Vec<MetricsLine>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// Memory in use for training on `device`: bytes the device's pools hold (wgpu), else the
/// process's resident set.
pub fn mem_bytes(device: &burn::tensor::Device) -> u64 {
    if crate::ops::OpsPath::for_device(device) == crate::ops::OpsPath::Kernel
        && let Some(usage) = device.clone().inner().memory_pool_usage()
    {
        return usage.bytes_reserved;
    }
    proc_status_bytes("VmRSS:").unwrap_or(0)
}

/// Peak resident set of this process (`VmHWM`), bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    proc_status_bytes("VmHWM:")
}

fn proc_status_bytes(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}
