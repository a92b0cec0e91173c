//! Training data: tokenization ([`tokenizer`]: `tokenizer.json` or GGUF metadata), chat templates
//! ([`template`]: the model's own `chat_template` rendered with minijinja, or a preset) and the
//! assistant spans that become loss masks, datasets in five formats read into labelled examples
//! ([`dataset`]), and length-grouped, padded batches of them ([`batch`]).

pub mod batch;
pub mod dataset;
mod jsonrows;
pub mod template;
pub mod tokenizer;
