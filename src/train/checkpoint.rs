//! Checkpoints under `OUT/checkpoints/step-NNNNNN/`: the adapter (a PEFT directory, or a QST
//! side network), the AdamW
//! moments (`optimizer.safetensors`, keys `exp_avg.<param>` / `exp_avg_sq.<param>`) and
//! `trainer_state.json` (step, data position, seed, tokens, time). Everything a resumed run needs
//! to repeat, bit for bit, what the uninterrupted run would have done: dropout masks and data
//! order are functions of the seed and the position.
//!
//! A checkpoint is written into `.step-NNNNNN.tmp/` and renamed when complete, so a run killed at
//! any moment leaves either the old set of checkpoints or the new one; the oldest beyond the
//! limit are deleted afterwards.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::io::{self, Checkpoint, IoError};
use crate::peft::AdapterError;
use crate::peft::adapter_dir::owned;

/// The optimizer state file.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// The trainer state file.
pub const STATE_FILE: &str = "trainer_state.json";

/// Where a run stands; saved in every checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps done.
    pub step: u64,
    /// Steps the run is planned for.
    pub total_steps: u64,
    /// Epoch of the next micro-batch.
    pub epoch: u64,
    /// Index of the next micro-batch inside its epoch.
    pub batch_in_epoch: usize,
    /// Tokens trained on so far.
    pub tokens: u64,
    /// Seconds of training so far.
    pub elapsed_s: f64,
    /// The run's seed.
    pub seed: u64,
    /// Training examples the run was started with (a resume checks it).
    pub train_examples: usize,
}

/// Errors from writing or reading checkpoints.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A file operation failed.
    #[error(transparent)]
    Io(#[from] IoError),
    /// The adapter part.
    #[error(transparent)]
    Adapter(#[from] AdapterError),
    /// The QST side network part.
    #[error(transparent)]
    Qst(#[from] crate::peft::qst::QstError),
    /// `trainer_state.json` or the optimizer file is not what this run needs.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// `--resume` and no checkpoint.
    #[error("{0}: no checkpoint to resume from (expected step-* directories)")]
    NoCheckpoint(PathBuf),
}

/// `OUT/checkpoints`.
pub fn checkpoints_dir(out: &Path) -> PathBuf {
    out.join("checkpoints")
}

/// The name of the checkpoint after `step` steps.
pub fn step_dir_name(step: u64) -> String {
    format!("step-{step:06}")
}

/// Complete checkpoints under `dir`, oldest first.
pub fn list(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let step = name.strip_prefix("step-")?.parse().ok()?;
            e.path()
                .join(STATE_FILE)
                .is_file()
                .then(|| (step, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// The newest complete checkpoint under `dir`.
pub fn latest(dir: &Path) -> Result<PathBuf, CheckpointError> {
    list(dir)
        .pop()
        .map(|(_, p)| p)
        .ok_or_else(|| CheckpointError::NoCheckpoint(dir.to_path_buf()))
}

/// Writes the checkpoint of `state` (adapter via `save_adapter`, moments `m`/`v` keyed by
/// `names`) and keeps only the newest `keep` checkpoints. Returns its directory.
pub fn save(
    out: &Path,
    state: &TrainState,
    names: &[String],
    (m, v): (&[Tensor<2>], &[Tensor<2>]),
    keep: usize,
    save_adapter: impl FnOnce(&Path) -> Result<(), CheckpointError>,
) -> Result<PathBuf, CheckpointError> {
    let dir = checkpoints_dir(out);
    let name = step_dir_name(state.step);
    let tmp = dir.join(format!(".{name}.tmp"));
    let fin = dir.join(&name);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io::os_err(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io::os_err(&tmp))?;
    save_adapter(&tmp)?;
    let mut tensors = BTreeMap::new();
    for (i, n) in names.iter().enumerate() {
        let a = format!("exp_avg.{n}");
        let b = format!("exp_avg_sq.{n}");
        tensors.insert(a.clone(), owned(m[i].clone(), &a)?);
        tensors.insert(b.clone(), owned(v[i].clone(), &b)?);
    }
    io::write_safetensors(&tensors, &tmp.join(OPTIMIZER_FILE))?;
    let state_path = tmp.join(STATE_FILE);
    let text = serde_json::to_string_pretty(state).expect("state serializes");
    std::fs::write(&state_path, text + "\n").map_err(io::os_err(&state_path))?;
    if fin.exists() {
        std::fs::remove_dir_all(&fin).map_err(io::os_err(&fin))?;
    }
    std::fs::rename(&tmp, &fin).map_err(io::os_err(&fin))?;
    let all = list(&dir);
    for (_, old) in all.iter().take(all.len().saturating_sub(keep.max(1))) {
        std::fs::remove_dir_all(old).map_err(io::os_err(old))?;
    }
    Ok(fin)
}

/// Reads `trainer_state.json` of checkpoint `dir`.
pub fn read_state(dir: &Path) -> Result<TrainState, CheckpointError> {
    let path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&path).map_err(io::os_err(&path))?;
    serde_json::from_str(&text).map_err(|e| CheckpointError::Invalid {
        path,
        reason: format!("invalid trainer state: {e}"),
    })
}

/// Reads the AdamW moments of checkpoint `dir` for parameters `names` with `shapes`.
pub fn read_moments(
    dir: &Path,
    names: &[String],
    shapes: &[[usize; 2]],
    device: &Device,
) -> Result<(Vec<Tensor<2>>, Vec<Tensor<2>>), CheckpointError> {
    let path = dir.join(OPTIMIZER_FILE);
    let ckpt = Checkpoint::open(&path)?;
    let read = |key: String, shape: [usize; 2]| -> Result<Tensor<2>, CheckpointError> {
        let (view, p) = ckpt.view(&key)?;
        if view.shape() != shape {
            return Err(CheckpointError::Invalid {
                path: p.to_path_buf(),
                reason: format!(
                    "{key} has shape {:?}, the adapter needs {shape:?}",
                    view.shape()
                ),
            });
        }
        let values = io::read_f32(&view, p, &key)?;
        Ok(Tensor::from_data(TensorData::new(values, shape), device))
    };
    let mut m = Vec::with_capacity(names.len());
    let mut v = Vec::with_capacity(names.len());
    for (n, &shape) in names.iter().zip(shapes) {
        m.push(read(format!("exp_avg.{n}"), shape)?);
        v.push(read(format!("exp_avg_sq.{n}"), shape)?);
    }
    Ok((m, v))
}
