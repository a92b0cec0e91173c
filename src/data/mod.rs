//! Training data: tokenization ([`tokenizer`]: `tokenizer.json` or GGUF metadata), chat templates
//! ([`template`]: the model's own `chat_template` rendered with minijinja, or a preset) and the
//! assistant spans that become loss masks, and length-grouped, padded batches of examples
//! ([`batch`]).

pub mod batch;
pub mod template;
pub mod tokenizer;
