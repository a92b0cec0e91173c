//! Evaluation: the mean next-token loss of a model over tokenized examples (read by
//! [`crate::data::dataset`]), and its perplexity. As in transformers, the token at `i` predicts
//! `labels[i + 1]`; [`IGNORE_INDEX`] masks a position.
//!
//! The loss is one mean over every unmasked target token of the dataset,
//! `L = Σ_rows Σ_tokens -log p(y) / N`, accumulated per row as a sum (so rows of different
//! lengths weigh by their token counts, unlike a mean of per-batch means); perplexity is `exp(L)`.

use std::path::{Path, PathBuf};

use burn::tensor::{Int, Tensor, TensorData};

use crate::model::{IGNORE_INDEX, Llama};

/// Errors from scoring a dataset.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No row has a target token.
    #[error("{0}: no target tokens to evaluate (every label is masked or rows are too short)")]
    NoTargets(PathBuf),
    /// Reading a result back from the device failed.
    #[error("cannot read the loss from the device: {0}")]
    Readback(String),
}

/// One tokenized row: ids and per-position labels (same length).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    /// Token ids.
    pub input_ids: Vec<i64>,
    /// Targets, [`IGNORE_INDEX`] where masked; `labels[i + 1]` is predicted at `i`.
    pub labels: Vec<i64>,
}

impl Example {
    /// Target tokens that count: unmasked labels after the first position.
    pub fn target_count(&self) -> usize {
        self.labels
            .iter()
            .skip(1)
            .filter(|&&y| y != IGNORE_INDEX)
            .count()
    }
}

/// The loss of a dataset.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EvalResult {
    /// Mean next-token cross-entropy over every target token.
    pub loss: f64,
    /// `exp(loss)`.
    pub perplexity: f64,
    /// Target tokens counted.
    pub tokens: usize,
}

/// Summed next-token loss of one row, `Σ -log p(y)` as a `[1]` tensor still on the device
/// (read it synchronously, or asynchronously in a browser), and its target count; `None` for a
/// row without targets.
///
/// # Shapes
/// Runs the model on `[1, s]` ids.
pub fn row_loss_tensor(model: &Llama, ex: &Example) -> Option<(Tensor<1>, usize)> {
    let n = ex.target_count();
    let s = ex.input_ids.len();
    if n == 0 || s < 2 {
        return None;
    }
    let device = model.device();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ex.input_ids.clone(), [1, s]), &device); // [1, s]
    let labels = Tensor::<2, Int>::from_data(TensorData::new(ex.labels.clone(), [1, s]), &device); // [1, s]
    let (sum, _) = model.loss_sum(ids, labels);
    Some((sum, n))
}

/// Summed next-token loss of one row and its target count: `(Σ -log p(y), n)`, read back.
pub fn row_loss_sum(model: &Llama, ex: &Example) -> Result<(f64, usize), Error> {
    let Some((sum, n)) = row_loss_tensor(model, ex) else {
        return Ok((0.0, 0));
    };
    let sum = sum
        .try_into_vec_as::<f32>()
        .map_err(|e| Error::Readback(format!("{e:?}")))?;
    Ok((sum.first().copied().map_or(0.0, f64::from), n))
}

/// The mean loss over every target token of `rows`; `on_row(done, total)` reports progress.
pub fn evaluate(
    model: &Llama,
    rows: &[Example],
    path: &Path,
    mut on_row: impl FnMut(usize, usize),
) -> Result<EvalResult, Error> {
    let (mut sum, mut tokens) = (0f64, 0usize);
    for (i, ex) in rows.iter().enumerate() {
        let (s, n) = row_loss_sum(model, ex)?;
        sum += s;
        tokens += n;
        on_row(i + 1, rows.len());
    }
    if tokens == 0 {
        return Err(Error::NoTargets(path.to_path_buf()));
    }
    let loss = sum / tokens as f64;
    Ok(EvalResult {
        loss,
        perplexity: loss.exp(),
        tokens,
    })
}
