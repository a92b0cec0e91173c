//! Text generation with a KV cache: the prompt goes through the model in one forward pass, then
//! one token per step, each new token decoded and streamed as soon as it is complete text.
//!
//! [`generate`] stops after `max_new_tokens` or at the first of `stop_ids` (eos, the chat
//! template's end-of-turn token); the stop token is part of the returned ids but is not streamed.
//! [`sampling`] picks each token on the host from the last position's logits.

pub mod sampling;

use std::time::{Duration, Instant};

use burn::tensor::{Int, Tensor, TensorData};

use crate::data::tokenizer::{self, Tokenizer};
use crate::model::Llama;

pub use sampling::{Sampler, SamplingOptions, argmax};

/// Errors from generating.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Generation needs at least one prompt token to condition on.
    #[error("the prompt is empty (no tokens to start from)")]
    EmptyPrompt,
    /// The prompt alone fills the model's context.
    #[error("the prompt has {prompt} tokens, the model's context is {max} tokens")]
    PromptTooLong {
        /// Prompt tokens.
        prompt: usize,
        /// `max_position_embeddings`.
        max: usize,
    },
    /// Decoding a generated token failed.
    #[error(transparent)]
    Tokenizer(#[from] tokenizer::Error),
    /// Reading logits back from the device failed.
    #[error("cannot read logits from the device: {0}")]
    Readback(String),
}

/// What to generate and when to stop.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateOptions {
    /// Most tokens to generate (the stop token included).
    pub max_new_tokens: usize,
    /// Softmax temperature; 0 means greedy.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens (0: no limit).
    pub top_k: usize,
    /// Nucleus threshold (1: no limit).
    pub top_p: f32,
    /// Seed of the sampling RNG.
    pub seed: u64,
    /// Tokens that end generation (eos, end of turn).
    pub stop_ids: Vec<u32>,
}

impl Default for GenerateOptions {
    /// Greedy, 128 tokens, no stop ids.
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 128,
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
            stop_ids: Vec::new(),
        }
    }
}

impl GenerateOptions {
    /// The sampling part of these options.
    pub fn sampling(&self) -> SamplingOptions {
        SamplingOptions {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
        }
    }
}

/// The generated tokens and how fast they came.
#[derive(Clone, Debug, PartialEq)]
pub struct Generated {
    /// Generated ids (the stop token included when one ended generation).
    pub ids: Vec<u32>,
    /// Whether a stop id ended generation (rather than `max_new_tokens`).
    pub stopped: bool,
    /// Prompt tokens processed.
    pub prompt_tokens: usize,
    /// Time of the prompt's forward pass (up to the first token's logits on the host).
    pub prompt_time: Duration,
    /// Time of the one-token steps after the first token.
    pub generation_time: Duration,
}

impl Generated {
    /// Prompt processing speed in tokens/s.
    pub fn prompt_tokens_per_s(&self) -> f64 {
        rate(self.prompt_tokens, self.prompt_time)
    }

    /// Generation speed in tokens/s over the steps after the prompt pass (the first generated
    /// token comes out of the prompt pass and counts there).
    pub fn generation_tokens_per_s(&self) -> f64 {
        rate(self.ids.len().saturating_sub(1), self.generation_time)
    }
}

/// `n / time`, 0 when no time was measured (nothing ran) rather than `n / ε`.
fn rate(n: usize, time: Duration) -> f64 {
    if time.is_zero() {
        0.0
    } else {
        n as f64 / time.as_secs_f64()
    }
}

/// The ids that end an assistant reply: the tokenizer's eos and the template's end-of-turn
/// token (when the vocabulary has it).
pub fn reply_stop_ids(
    tokenizer: &Tokenizer,
    template: &crate::data::template::ChatTemplate,
) -> Vec<u32> {
    let mut ids: Vec<u32> = tokenizer.eos_id().into_iter().collect();
    ids.extend(tokenizer.token_id(template.end_of_turn()));
    ids.dedup();
    ids
}

/// Generates up to `options.max_new_tokens` tokens after `prompt_ids`, calling `on_token` with
/// each new piece of text (special tokens skipped) as soon as it decodes to complete characters.
pub fn generate(
    model: &Llama,
    tokenizer: &Tokenizer,
    prompt_ids: &[u32],
    options: &GenerateOptions,
    mut on_token: impl FnMut(&str),
) -> Result<Generated, Error> {
    let budget = token_budget(model, prompt_ids.len(), options.max_new_tokens)?;
    let mut sampler = Sampler::new(options.sampling(), options.seed);
    let mut decoder = tokenizer.stream_decoder(true);
    let mut cache = model.new_cache();
    let mut ids = Vec::new();
    let mut stopped = false;

    let start = Instant::now();
    let mut input = prompt_ids.to_vec();
    let mut prompt_time = Duration::ZERO;
    let mut steps_start = start;
    while ids.len() < budget {
        let logits = last_logits(model, &input, &mut cache)?;
        if ids.is_empty() {
            prompt_time = start.elapsed();
            steps_start = Instant::now();
        }
        let next = sampler.sample(&logits);
        ids.push(next);
        if options.stop_ids.contains(&next) {
            stopped = true;
            break;
        }
        let piece = decoder.step(next)?;
        if !piece.is_empty() {
            on_token(&piece);
        }
        input = vec![next];
    }
    let rest = decoder.flush()?;
    if !rest.is_empty() {
        on_token(&rest);
    }
    let generation_time = if ids.is_empty() {
        Duration::ZERO
    } else {
        steps_start.elapsed()
    };
    Ok(Generated {
        ids,
        stopped,
        prompt_tokens: prompt_ids.len(),
        prompt_time,
        generation_time,
    })
}

/// How many tokens may follow a prompt of `prompt_len` tokens: `max_new_tokens`, capped by the
/// model's context; an error for an empty prompt or one that fills the context.
pub fn token_budget(
    model: &Llama,
    prompt_len: usize,
    max_new_tokens: usize,
) -> Result<usize, Error> {
    if prompt_len == 0 {
        return Err(Error::EmptyPrompt);
    }
    let max = model.config.max_position_embeddings;
    if prompt_len >= max {
        return Err(Error::PromptTooLong {
            prompt: prompt_len,
            max,
        });
    }
    Ok(max_new_tokens.min(max - prompt_len))
}

/// Runs `input` through the model after what `cache` holds and returns the last position's
/// logits `[v]`, still on the device (a browser reads them asynchronously).
pub fn last_logits_tensor(
    model: &Llama,
    input: &[u32],
    cache: &mut crate::model::KvCache,
) -> Tensor<1> {
    let device = model.device();
    let s = input.len();
    let data: Vec<i64> = input.iter().map(|&id| i64::from(id)).collect();
    let input_ids = Tensor::<2, Int>::from_data(TensorData::new(data, [1, s]), &device); // [1, s]
    let logits = model.forward(input_ids, Some(cache)); // [1, s, v]
    let [_, _, v] = logits.dims();
    logits
        .narrow(1, s - 1, 1) // [1, 1, v]
        .reshape([v]) // [v]
}

/// [`last_logits_tensor`], read back to the host.
fn last_logits(
    model: &Llama,
    input: &[u32],
    cache: &mut crate::model::KvCache,
) -> Result<Vec<f32>, Error> {
    last_logits_tensor(model, input, cache)
        .try_into_vec_as::<f32>()
        .map_err(|e| Error::Readback(format!("{e:?}")))
}
