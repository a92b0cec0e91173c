//! `wgtune generate --prompt TEXT [--chat] [--max-new-tokens N] [--temperature T] [--top-k K]
//! [--top-p P] [--seed S] [--model PATH] [--quant ..] [--device ..]`
//!
//! Streams the continuation of the prompt to stdout as it is generated (flushed per piece);
//! everything else (loading, speed) goes to stderr. `--chat` wraps the prompt in the model's chat
//! template as one user message followed by the assistant header, and stops at the end of the
//! assistant's turn.

use std::io::Write as _;

use anyhow::{Context, Result};

use super::model_args::ModelArgs;
use crate::data::template::Message;
use crate::generate::{GenerateOptions, Generated, generate, reply_stop_ids};
use crate::pretrained::Pretrained;

/// Sampling flags shared by `generate` and `chat`.
#[derive(Clone, Debug, clap::Args)]
pub struct SamplingArgs {
    /// Most tokens to generate.
    #[arg(long, default_value_t = 128)]
    pub max_new_tokens: usize,
    /// Softmax temperature; 0 is greedy decoding.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Sample only among the K most likely tokens (0: no limit).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Sample only within the most likely tokens whose probabilities sum to P.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Seed of the sampling RNG.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl SamplingArgs {
    /// `Err` for a flag out of range; run before the model loads, so a typo costs no load.
    pub fn check(&self) -> Result<()> {
        anyhow::ensure!(
            self.max_new_tokens >= 1,
            "--max-new-tokens must be at least 1"
        );
        anyhow::ensure!(
            self.temperature >= 0.0 && self.temperature.is_finite(),
            "--temperature must be a finite number >= 0"
        );
        anyhow::ensure!(
            self.top_p > 0.0 && self.top_p <= 1.0,
            "--top-p must be in (0, 1]"
        );
        Ok(())
    }

    /// Generation options with these sampling flags and `stop_ids`.
    pub fn options(&self, stop_ids: Vec<u32>) -> Result<GenerateOptions> {
        self.check()?;
        Ok(GenerateOptions {
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            seed: self.seed,
            stop_ids,
        })
    }
}

/// Arguments of `wgtune generate`.
#[derive(Clone, Debug, clap::Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The text to continue (with `--chat`: the user's message).
    #[arg(long)]
    pub prompt: String,
    /// Wrap the prompt in the model's chat template and stop at the end of the reply.
    #[arg(long)]
    pub chat: bool,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// The ids that end a reply: eos, plus the template's end-of-turn token when `chat`.
pub fn stop_ids(pretrained: &Pretrained, chat: bool) -> Result<Vec<u32>> {
    let tokenizer = pretrained.tokenizer()?;
    Ok(if chat {
        reply_stop_ids(tokenizer, &pretrained.template)
    } else {
        tokenizer.eos_id().into_iter().collect()
    })
}

/// Generates after `prompt_ids`, streaming the text to stdout.
pub fn stream(
    pretrained: &Pretrained,
    prompt_ids: &[u32],
    options: &GenerateOptions,
) -> Result<Generated> {
    let tokenizer = pretrained.tokenizer()?;
    let mut stdout = std::io::stdout().lock();
    let mut write_err = None;
    let generated = generate(&pretrained.model, tokenizer, prompt_ids, options, |piece| {
        if write_err.is_none()
            && let Err(e) = stdout
                .write_all(piece.as_bytes())
                .and_then(|()| stdout.flush())
        {
            write_err = Some(e);
        }
    })?;
    if let Some(e) = write_err {
        return Err(e).context("writing to stdout");
    }
    Ok(generated)
}

/// One stderr line with the speed of a generation.
pub fn report(generated: &Generated) {
    eprintln!(
        "[{} prompt tokens at {:.1} tok/s, {} generated at {:.1} tok/s{}]",
        generated.prompt_tokens,
        generated.prompt_tokens_per_s(),
        generated.ids.len(),
        generated.generation_tokens_per_s(),
        if generated.stopped {
            ", stopped at a stop token"
        } else {
            ""
        }
    );
}

/// Runs `wgtune generate`.
pub fn run(args: GenerateArgs) -> Result<()> {
    args.sampling.check()?;
    let (pretrained, _) = args.model.load()?;
    let tokenizer = pretrained.tokenizer()?;
    let prompt_ids = if args.chat {
        let text = pretrained
            .template
            .render(&[Message::new("user", args.prompt.clone())], true)?;
        tokenizer.encode(&text, false)?
    } else {
        tokenizer.encode(&args.prompt, true)?
    };
    let options = args.sampling.options(stop_ids(&pretrained, args.chat)?)?;
    let generated = stream(&pretrained, &prompt_ids, &options)?;
    println!();
    report(&generated);
    Ok(())
}
