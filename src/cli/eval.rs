//! `wgtune eval --data FILE [--model PATH] [--quant nf4|fp4|none] [--max-len N] [--json]`
//!
//! The mean next-token loss of the model over every target token of a JSONL dataset
//! ([`crate::eval`] describes the rows and the mean), its perplexity and the token count. With
//! `--json`, stdout holds exactly one JSON object `{"loss", "perplexity", "tokens"}`; progress and
//! logs always go to stderr.

use std::path::PathBuf;

use anyhow::{Result, bail};
use indicatif::{ProgressBar, ProgressStyle};

use super::model_args::ModelArgs;
use crate::eval::{evaluate, read_jsonl};

/// Arguments of `wgtune eval`.
#[derive(Clone, Debug, clap::Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// JSONL rows `{"text": ..}` or `{"input_ids": [..], "labels": [..]}` (labels optional,
    /// -100 masks a position).
    #[arg(long)]
    pub data: PathBuf,
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
    // Check the data before the (slower) model load when it needs no tokenizer.
    let pre_tokenized = read_jsonl(&args.data, None, args.max_len);
    let (pretrained, _) = args.model.load()?;
    let rows = match pre_tokenized {
        Ok(rows) => rows,
        Err(crate::eval::Error::NoTokenizer { .. }) => {
            read_jsonl(&args.data, pretrained.tokenizer.as_ref(), args.max_len)?
        }
        Err(e) => return Err(e.into()),
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
