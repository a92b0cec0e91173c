//! Evaluation: the mean next-token loss of a model over a JSONL dataset, and its perplexity.
//!
//! Rows are either text, `{"text": "..."}` (tokenized with special tokens as the tokenizer adds
//! them; every token is a target), or pre-tokenized, `{"input_ids": [..], "labels": [..]}`
//! (`labels` optional, defaulting to `input_ids`; [`IGNORE_INDEX`] masks a position). As in
//! transformers, the token at `i` predicts `labels[i + 1]`.
//!
//! The loss is one mean over every unmasked target token of the dataset,
//! `L = Σ_rows Σ_tokens -log p(y) / N`, accumulated per row as a sum (so rows of different
//! lengths weigh by their token counts, unlike a mean of per-batch means); perplexity is `exp(L)`.

use std::path::{Path, PathBuf};

use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, Tensor, TensorData};
use serde::Deserialize;

use crate::data::tokenizer::{self, Tokenizer};
use crate::model::{IGNORE_INDEX, Llama};

/// Errors from reading an evaluation dataset or scoring it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file cannot be read.
    #[error("{path}: {source}")]
    Io {
        /// The dataset.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A line is not a JSON object of a known row shape.
    #[error("{path}:{line}: {reason}")]
    Row {
        /// The dataset.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A text row and no tokenizer to encode it.
    #[error("{path}:{line}: a \"text\" row needs a tokenizer, and the model has none")]
    NoTokenizer {
        /// The dataset.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
    },
    /// Encoding a text row failed.
    #[error("{path}:{line}: {source}")]
    Tokenizer {
        /// The dataset.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The tokenizer's error (boxed: it is large and rare).
        source: Box<tokenizer::Error>,
    },
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

/// What a JSONL line may hold.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Row {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    input_ids: Option<Vec<i64>>,
    #[serde(default)]
    labels: Option<Vec<i64>>,
}

/// Reads a JSONL dataset; `max_len` truncates each row to its first `max_len` tokens. Blank lines
/// are skipped; any other line that is not a valid row is an error naming `path:line`.
pub fn read_jsonl(
    path: &Path,
    tokenizer: Option<&Tokenizer>,
    max_len: Option<usize>,
) -> Result<Vec<Example>, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let mut ex = parse_row(line, path, i + 1, tokenizer)?;
        if let Some(n) = max_len {
            ex.input_ids.truncate(n);
            ex.labels.truncate(n);
        }
        rows.push(ex);
    }
    Ok(rows)
}

fn parse_row(
    line: &str,
    path: &Path,
    line_no: usize,
    tokenizer: Option<&Tokenizer>,
) -> Result<Example, Error> {
    let row_err = |reason: String| Error::Row {
        path: path.to_path_buf(),
        line: line_no,
        reason,
    };
    let row: Row =
        serde_json::from_str(line).map_err(|e| row_err(format!("invalid JSON row: {e}")))?;
    match (row.text, row.input_ids) {
        (Some(_), Some(_)) => Err(row_err(
            "a row has either \"text\" or \"input_ids\", not both".to_string(),
        )),
        (None, None) => Err(row_err(
            "missing field: a row needs \"text\" or \"input_ids\"".to_string(),
        )),
        (Some(text), None) => {
            if row.labels.is_some() {
                return Err(row_err(
                    "\"labels\" goes with \"input_ids\", not with \"text\"".to_string(),
                ));
            }
            let tok = tokenizer.ok_or_else(|| Error::NoTokenizer {
                path: path.to_path_buf(),
                line: line_no,
            })?;
            let ids: Vec<i64> = tok
                .encode(&text, true)
                .map_err(|source| Error::Tokenizer {
                    path: path.to_path_buf(),
                    line: line_no,
                    source: Box::new(source),
                })?
                .into_iter()
                .map(i64::from)
                .collect();
            Ok(Example {
                labels: ids.clone(),
                input_ids: ids,
            })
        }
        (None, Some(input_ids)) => {
            if let Some(&bad) = input_ids.iter().find(|&&id| id < 0) {
                return Err(row_err(format!("negative token id {bad} in \"input_ids\"")));
            }
            let labels = row.labels.unwrap_or_else(|| input_ids.clone());
            if labels.len() != input_ids.len() {
                return Err(row_err(format!(
                    "\"labels\" has {} entries, \"input_ids\" {}",
                    labels.len(),
                    input_ids.len()
                )));
            }
            Ok(Example { input_ids, labels })
        }
    }
}

/// Summed next-token loss of one row and its target count: `(Σ -log p(y), n)`.
///
/// # Shapes
/// Runs the model on `[1, s]` ids; returns host scalars.
pub fn row_loss_sum(model: &Llama, ex: &Example) -> Result<(f64, usize), Error> {
    let n = ex.target_count();
    let s = ex.input_ids.len();
    if n == 0 || s < 2 {
        return Ok((0.0, 0));
    }
    let device = model.embed_tokens.device();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ex.input_ids.clone(), [1, s]), &device); // [1, s]
    let targets: Vec<i64> = ex.labels[1..]
        .iter()
        .map(|&y| if y == IGNORE_INDEX { 0 } else { y })
        .collect();
    let keep: Vec<f32> = ex.labels[1..]
        .iter()
        .map(|&y| if y == IGNORE_INDEX { 0.0 } else { 1.0 })
        .collect();
    let targets = Tensor::<3, Int>::from_data(TensorData::new(targets, [1, s - 1, 1]), &device); // [1, s-1, 1]
    let keep = Tensor::<2>::from_data(TensorData::new(keep, [1, s - 1]), &device); // [1, s-1]
    let logits = model.forward(ids, None).narrow(1, 0, s - 1); // [1, s-1, v]
    let log_p = log_softmax(logits, 2)
        .gather(2, targets) // [1, s-1, 1]
        .squeeze_dim::<2>(2); // [1, s-1]
    let sum = (log_p * keep)
        .sum()
        .neg()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> Result<Example, Error> {
        parse_row(line, Path::new("d.jsonl"), 3, None)
    }

    #[test]
    fn rows_and_errors() {
        let ex = parse(r#"{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}"#).unwrap();
        assert_eq!(ex.target_count(), 2);
        let ex = parse(r#"{"input_ids": [5, 6, 7]}"#).unwrap();
        assert_eq!(ex.labels, vec![5, 6, 7]);
        for (line, needle) in [
            ("{not json", "d.jsonl:3: invalid JSON"),
            (r#"{"labels": [1]}"#, "d.jsonl:3: missing field"),
            (r#"{"input_ids": [1, 2], "labels": [1]}"#, "1 entries"),
            (r#"{"text": "hi"}"#, "needs a tokenizer"),
            (r#"{"input_ids": [1], "extra": 1}"#, "unknown field"),
        ] {
            let err = parse(line).unwrap_err().to_string();
            assert!(err.contains(needle), "{line}: {err}");
        }
    }
}
