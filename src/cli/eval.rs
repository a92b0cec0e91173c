//! `wgtune eval --data FILE [--model PATH] [--format F] [--max-len N] [--json]`
//!
//! The mean next-token loss of the model over every target token of a dataset, its perplexity
//! and the token count ([`crate::eval`] describes the mean). The dataset is read as `wgtune train`
//! reads it ([`crate::data::dataset`]: five formats, chats rendered with the model's template and
//! only the answers scored), so the loss is the trainer's eval loss, and the browser demo's. With
//! `--json`, stdout holds exactly one JSON object `{"loss", "perplexity", "tokens"}`; progress and
//! logs always go to stderr.

use std::path::PathBuf;

use anyhow::{Result, bail};
use indicatif::{ProgressBar, ProgressStyle};

use super::model_args::ModelArgs;
use crate::data::dataset::{DataError, DataFormat, DatasetOptions, load_dataset};
use crate::data::template::ChatTemplate;
use crate::eval::evaluate;

/// Arguments of `wgtune eval`.
#[derive(Clone, Debug, clap::Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// JSONL or a JSON array of rows in any `wgtune train` format: alpaca, sharegpt, messages,
    /// `{"text": ..}` or `{"input_ids": [..], "labels": [..]}` (labels optional, -100 masks).
    #[arg(long)]
    pub data: PathBuf,
    /// The rows' format (default: detected from the first row).
    #[arg(long)]
    pub format: Option<DataFormat>,
    /// Truncate each row to its first N tokens.
    #[arg(long)]
    pub max_len: Option<usize>,
    /// Print one JSON object on stdout instead of a sentence.
    #[arg(long)]
    pub json: bool,
}

/// Runs `wgtune eval`.
pub fn run(args: EvalArgs) -> Result<()> {
    if args.max_len.is_some_and(|n| n < 2) {
        bail!("--max-len must be at least 2 (one token predicts the next)");
    }
    let opts = DatasetOptions {
        format: args.format,
        max_len: args.max_len.unwrap_or(usize::MAX),
        ..DatasetOptions::default()
    };
    // Check the data before the (slower) model load when it needs no tokenizer.
    let early = load_dataset(&args.data, None, &ChatTemplate::preset("chatml")?, &opts);
    if let Err(e) = &early
        && !matches!(e, DataError::NoTokenizer { .. })
    {
        return Err(early.unwrap_err().into());
    }
    let (pretrained, _) = args.model.load()?;
    let rows = match early {
        Ok(data) => data.examples,
        Err(_) => {
            load_dataset(
                &args.data,
                pretrained.tokenizer.as_ref(),
                &pretrained.template,
                &opts,
            )?
            .examples
        }
    };
    let bar = ProgressBar::new(rows.len() as u64);
    if let Ok(style) = ProgressStyle::with_template("evaluating {bar:30} {pos}/{len} rows {eta}") {
        bar.set_style(style);
    }
    let result = evaluate(&pretrained.model, &rows, &args.data, |done, _| {
        bar.set_position(done as u64)
    })?;
    bar.finish_and_clear();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "loss": result.loss,
                "perplexity": result.perplexity,
                "tokens": result.tokens,
            })
        );
    } else {
        println!(
            "loss {:.6}  perplexity {:.4}  over {} tokens in {} rows",
            result.loss,
            result.perplexity,
            result.tokens,
            rows.len()
        );
    }
    Ok(())
}
