//! Training datasets: a JSONL file (one row per line) or a JSON array of rows, in one of five
//! formats, turned into tokenized [`Example`]s with loss labels.
//!
//! # Formats ([`DataFormat`])
//!
//! | format | a row | becomes |
//! | --- | --- | --- |
//! | `alpaca` | `{"instruction", "output", "input"?, "system"?}` | system? / user: instruction (+ `"\n\n"` + input when non-blank) / assistant: output |
//! | `sharegpt` | `{"conversations": [{"from", "value"}, ..]}`, `from` one of `human`, `gpt`, `system` (or `user`, `assistant`) | the turns, `human` as user and `gpt` as assistant (Vicuna's ShareGPT) |
//! | `messages` | `{"messages": [{"role", "content"}, ..]}`, `role` one of `system`, `user`, `assistant` | the turns (OpenAI / HF chat) |
//! | `text` | `{"text"}` | the text, tokenized with the tokenizer's special tokens |
//! | `tokenized` | `{"input_ids", "labels"?}` | as given: `labels` defaults to `input_ids`, `-100` masks |
//!
//! Other fields of a row are ignored. Without [`DatasetOptions::format`] the format is that of the
//! first row that reads without error, known by the field that marks it, in this order of
//! precedence: `conversations`, `messages`, `instruction`, `input_ids`, `text` (so an Alpaca row
//! that also carries a preformatted `text`, as `tatsu-lab/alpaca` does, is read as Alpaca).
//!
//! # Tokens and labels
//!
//! The three chat formats are rendered by the model's chat template
//! ([`ChatTemplate::render_with_spans`]) and the text is encoded *without* the tokenizer's special
//! tokens: the template writes them itself (transformers' `apply_chat_template` does the same).
//! A template that writes no bos gets none: SmolLM2's doesn't, and its sequences start with
//! `<|im_start|>` (which is also that model's bos id). The label of a token is its id when the
//! token overlaps an assistant span (an answer plus its end-of-turn token, e.g. `<|im_end|>`), and
//! [`IGNORE_INDEX`] elsewhere: every assistant turn of a dialogue is trained on, nothing of the
//! system or user turns or of the template's headers. With [`DatasetOptions::train_on_prompt`]
//! every token is a label. `text` rows train on every token; `tokenized` rows keep their labels.
//! Labels are not shifted: the token at `i` predicts `labels[i + 1]`.
//!
//! Every example is cut to its first [`DatasetOptions::max_len`] tokens.
//!
//! # Bad rows
//!
//! A row is bad when it is not valid JSON, is not an object, lacks a field or has one of the wrong
//! type, names an unknown role, has an empty answer, has another format than the file's, cannot
//! be rendered or encoded, or has no target token (a label after the first position) — usually
//! because truncation cut off every answer. A bad row stops loading with an error naming
//! `path:line` and the reason, or with [`DatasetOptions::skip_bad_rows`] is skipped and listed in
//! [`Dataset::bad_rows`]. Lines are 1-based; a JSON array element's line is the one it starts on.
//! Broken JSON *between* array elements (a missing comma, an unclosed element) is always an error:
//! the array cannot be read past it.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::batch::SplitMix64;
use super::jsonrows::for_each_row;
use super::template::{ChatTemplate, Message, assistant_token_mask};
use super::tokenizer::Tokenizer;
use crate::eval::Example;
use crate::model::IGNORE_INDEX;

/// The shape of a dataset's rows (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DataFormat {
    /// `{"instruction", "output", "input"?, "system"?}`.
    Alpaca,
    /// `{"conversations": [{"from", "value"}]}`.
    ShareGpt,
    /// `{"messages": [{"role", "content"}]}`.
    Messages,
    /// `{"text"}`.
    Text,
    /// `{"input_ids", "labels"?}`.
    Tokenized,
}

impl DataFormat {
    /// Every format, in the order detection tries their marker fields.
    pub const ALL: [DataFormat; 5] = [
        DataFormat::ShareGpt,
        DataFormat::Messages,
        DataFormat::Alpaca,
        DataFormat::Tokenized,
        DataFormat::Text,
    ];

    /// The name used on the command line (`--format`).
    pub fn name(self) -> &'static str {
        match self {
            DataFormat::Alpaca => "alpaca",
            DataFormat::ShareGpt => "sharegpt",
            DataFormat::Messages => "messages",
            DataFormat::Text => "text",
            DataFormat::Tokenized => "tokenized",
        }
    }

    /// The field that marks a row of this format.
    fn marker(self) -> &'static str {
        match self {
            DataFormat::Alpaca => "instruction",
            DataFormat::ShareGpt => "conversations",
            DataFormat::Messages => "messages",
            DataFormat::Text => "text",
            DataFormat::Tokenized => "input_ids",
        }
    }

    /// Whether rows of this format need a tokenizer (all but `tokenized`).
    pub fn needs_tokenizer(self) -> bool {
        self != DataFormat::Tokenized
    }

    /// The format a row's fields point to, `None` when it has no marker field.
    fn of_row(row: &Map<String, Value>) -> Option<DataFormat> {
        Self::ALL.into_iter().find(|f| row.contains_key(f.marker()))
    }
}

impl fmt::Display for DataFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A format name that is none of `alpaca`, `sharegpt`, `messages`, `text`, `tokenized`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown data format {0:?} (alpaca, sharegpt, messages, text, tokenized)")]
pub struct UnknownFormat(pub String);

impl FromStr for DataFormat {
    type Err = UnknownFormat;

    fn from_str(s: &str) -> Result<Self, UnknownFormat> {
        Self::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| UnknownFormat(s.to_string()))
    }
}

/// Errors from loading a dataset; each names the file (and the line).
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file cannot be read.
    #[error("cannot read dataset {path}: {cause}")]
    Io {
        /// The dataset.
        path: PathBuf,
        /// What the OS said (in the message, not also a `source()`).
        cause: std::io::Error,
    },
    /// A bad row (see the module doc), or JSON that breaks the array.
    #[error("{path}:{line}: {reason}")]
    Row {
        /// The dataset.
        path: PathBuf,
        /// 1-based line number (where the row starts).
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// Rows that must be tokenized, and no tokenizer.
    #[error("{path}: {format} rows need a tokenizer, and the model has none")]
    NoTokenizer {
        /// The dataset.
        path: PathBuf,
        /// The file's format.
        format: DataFormat,
    },
    /// Not one row gave an example.
    #[error("{path}: no usable example{}", bad_summary(.bad_rows))]
    Empty {
        /// The dataset.
        path: PathBuf,
        /// The rows skipped as bad.
        bad_rows: Vec<BadRow>,
    },
}

fn bad_summary(bad: &[BadRow]) -> String {
    match bad.first() {
        None => String::new(),
        Some(first) => format!(
            " ({} bad row{} skipped; the first, {first})",
            bad.len(),
            if bad.len() == 1 { "" } else { "s" }
        ),
    }
}

/// A row skipped as bad.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadRow {
    /// 1-based line number (where the row starts).
    pub line: usize,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for BadRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

/// How to read a dataset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatasetOptions {
    /// The rows' format; `None` detects it from the first good row.
    pub format: Option<DataFormat>,
    /// Each example is cut to its first `max_len` tokens.
    pub max_len: usize,
    /// Chat formats: train on every token, prompts and template included, not only the answers.
    pub train_on_prompt: bool,
    /// Skip bad rows (listed in [`Dataset::bad_rows`]) instead of stopping at the first one.
    pub skip_bad_rows: bool,
}

impl Default for DatasetOptions {
    /// Detected format, 2048 tokens, answers only, bad rows are errors.
    fn default() -> Self {
        Self {
            format: None,
            max_len: 2048,
            train_on_prompt: false,
            skip_bad_rows: false,
        }
    }
}

/// A loaded dataset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dataset {
    /// One per good row, in file order.
    pub examples: Vec<Example>,
    /// The rows' format (given or detected).
    pub format: DataFormat,
    /// Rows skipped (only with [`DatasetOptions::skip_bad_rows`]).
    pub bad_rows: Vec<BadRow>,
}

/// Reads the dataset at `path` (see the module doc). `tokenizer` may be `None` for `tokenized`
/// rows; `template` renders the chat formats.
pub fn load_dataset(
    path: &Path,
    tokenizer: Option<&Tokenizer>,
    template: &ChatTemplate,
    opts: &DatasetOptions,
) -> Result<Dataset, DataError> {
    let text = std::fs::read_to_string(path).map_err(|cause| DataError::Io {
        path: path.to_path_buf(),
        cause,
    })?;
    parse_dataset(path, &text, tokenizer, template, opts)
}

/// [`load_dataset`] on a file's contents (pasted or uploaded in a browser); `path` names it in
/// errors.
pub fn parse_dataset(
    path: &Path,
    text: &str,
    tokenizer: Option<&Tokenizer>,
    template: &ChatTemplate,
    opts: &DatasetOptions,
) -> Result<Dataset, DataError> {
    let mut loader = Loader::new(path, tokenizer, template, opts)?;
    for_each_row(path, text, |line, row| loader.row(line, row))?;
    let Loader {
        examples,
        bad_rows,
        format,
        ..
    } = loader;
    into_dataset(path, format, examples, bad_rows)
}

/// The dataset of the rows read, or [`DataError::Empty`] when none made an example.
fn into_dataset(
    path: &Path,
    format: Option<(DataFormat, Option<usize>)>,
    examples: Vec<Example>,
    bad_rows: Vec<BadRow>,
) -> Result<Dataset, DataError> {
    match format {
        Some((format, _)) if !examples.is_empty() => Ok(Dataset {
            examples,
            format,
            bad_rows,
        }),
        _ => Err(DataError::Empty {
            path: path.to_path_buf(),
            bad_rows,
        }),
    }
}

/// [`parse_dataset`] a slice of rows at a time, for a caller that must not block for the whole
/// file (a browser tab): [`DatasetReader::new`] reads the rows' JSON (the quick part) and each
/// [`DatasetReader::step`] renders and tokenizes the next rows (the slow part: about 100 µs a
/// chat row natively). The dataset, and every error, is what [`parse_dataset`] gives. The rows
/// are held parsed in memory meanwhile, so the native loader keeps streaming through
/// [`parse_dataset`].
pub struct DatasetReader {
    path: PathBuf,
    opts: DatasetOptions,
    rows: std::vec::IntoIter<(usize, Result<Value, String>)>,
    total: usize,
    /// Where the JSON stops being readable, reported once the rows before it are read.
    broken: Option<DataError>,
    format: Option<(DataFormat, Option<usize>)>,
    examples: Vec<Example>,
    bad_rows: Vec<BadRow>,
}

impl DatasetReader {
    /// Reads the JSON rows of `text` (`path` names it in errors). Errors come from the steps,
    /// in file order: a bad row from the step that reaches it, a broken array from the step
    /// after the last row before the break. Only a format given in `opts` that needs a
    /// tokenizer, without one, fails here.
    pub fn new(
        path: &Path,
        text: &str,
        tokenizer: Option<&Tokenizer>,
        template: &ChatTemplate,
        opts: &DatasetOptions,
    ) -> Result<Self, DataError> {
        let format = Loader::new(path, tokenizer, template, opts)?.format;
        let mut rows = Vec::new();
        // A broken array fails after the rows before the break, as in `parse_dataset`.
        let broken = for_each_row(path, text, |line, row| {
            rows.push((line, row));
            Ok(())
        })
        .err();
        Ok(Self {
            path: path.to_path_buf(),
            opts: opts.clone(),
            total: rows.len(),
            rows: rows.into_iter(),
            broken,
            format,
            examples: Vec::new(),
            bad_rows: Vec::new(),
        })
    }

    /// `(read, total)` rows.
    pub fn progress(&self) -> (usize, usize) {
        (self.total - self.rows.len(), self.total)
    }

    /// Tokenizes up to `max_rows` more rows with `tokenizer` and `template` (the ones given to
    /// [`DatasetReader::new`]); `Ok(true)` once every row is read.
    pub fn step(
        &mut self,
        tokenizer: Option<&Tokenizer>,
        template: &ChatTemplate,
        max_rows: usize,
    ) -> Result<bool, DataError> {
        let mut loader = Loader {
            path: &self.path,
            tokenizer,
            template,
            opts: &self.opts,
            format: self.format,
            examples: std::mem::take(&mut self.examples),
            bad_rows: std::mem::take(&mut self.bad_rows),
        };
        let mut result = Ok(());
        for (line, row) in self.rows.by_ref().take(max_rows) {
            result = loader.row(line, row);
            if result.is_err() {
                break;
            }
        }
        self.format = loader.format;
        self.examples = loader.examples;
        self.bad_rows = loader.bad_rows;
        result?;
        if self.rows.len() > 0 {
            return Ok(false);
        }
        match self.broken.take() {
            Some(e) => Err(e),
            None => Ok(true),
        }
    }

    /// Reads the rows left; the dataset ([`DataError::Empty`] when no row made an example).
    pub fn finish(
        mut self,
        tokenizer: Option<&Tokenizer>,
        template: &ChatTemplate,
    ) -> Result<Dataset, DataError> {
        self.step(tokenizer, template, usize::MAX)?;
        into_dataset(&self.path, self.format, self.examples, self.bad_rows)
    }
}

/// Splits off a deterministic random `fraction` of `examples` for evaluation: returns
/// `(train, eval)`, each in the original order. When `fraction > 0` and there are 2 or more
/// examples, eval gets `round(fraction · n)` of them clamped to `1..=n-1`; otherwise it is empty.
pub fn split_eval(
    examples: Vec<Example>,
    fraction: f64,
    seed: u64,
) -> (Vec<Example>, Vec<Example>) {
    let n = examples.len();
    if n < 2 || fraction.is_nan() || fraction <= 0.0 {
        return (examples, Vec::new());
    }
    let n_eval = ((fraction * n as f64).round() as usize).clamp(1, n - 1);
    let mut order: Vec<usize> = (0..n).collect();
    SplitMix64::new(seed).shuffle(&mut order);
    let mut is_eval = vec![false; n];
    for &i in &order[..n_eval] {
        is_eval[i] = true;
    }
    let (mut train, mut eval) = (Vec::with_capacity(n - n_eval), Vec::with_capacity(n_eval));
    for (ex, to_eval) in examples.into_iter().zip(is_eval) {
        if to_eval {
            eval.push(ex);
        } else {
            train.push(ex);
        }
    }
    (train, eval)
}

/// One row read from its JSON: what it turns into before tokenization.
#[derive(Debug, PartialEq)]
enum Row {
    Chat(Vec<Message>),
    Text(String),
    Tokenized {
        input_ids: Vec<i64>,
        labels: Option<Vec<i64>>,
    },
}

/// The state of one [`load_dataset`] call.
struct Loader<'a> {
    path: &'a Path,
    tokenizer: Option<&'a Tokenizer>,
    template: &'a ChatTemplate,
    opts: &'a DatasetOptions,
    /// The file's format and the line it was detected on (`None`: given in the options).
    format: Option<(DataFormat, Option<usize>)>,
    examples: Vec<Example>,
    bad_rows: Vec<BadRow>,
}

impl<'a> Loader<'a> {
    /// A loader with no rows read yet; a format given in `opts` is fixed (and checked) now.
    fn new(
        path: &'a Path,
        tokenizer: Option<&'a Tokenizer>,
        template: &'a ChatTemplate,
        opts: &'a DatasetOptions,
    ) -> Result<Self, DataError> {
        let mut loader = Loader {
            path,
            tokenizer,
            template,
            opts,
            format: None,
            examples: Vec::new(),
            bad_rows: Vec::new(),
        };
        if let Some(format) = opts.format {
            loader.set_format(format, None)?;
        }
        Ok(loader)
    }

    /// Handles one row: an example, a bad row (skipped or an error), or a fatal error.
    fn row(&mut self, line: usize, json: Result<Value, String>) -> Result<(), DataError> {
        let example = match json.and_then(|value| self.parse(value)) {
            Ok((format, row)) => {
                if self.format.is_none() {
                    self.set_format(format, Some(line))?;
                }
                self.example(row)
            }
            Err(reason) => Err(reason),
        };
        match example {
            Ok(example) => self.examples.push(example),
            Err(reason) if self.opts.skip_bad_rows => self.bad_rows.push(BadRow { line, reason }),
            Err(reason) => {
                return Err(DataError::Row {
                    path: self.path.to_path_buf(),
                    line,
                    reason,
                });
            }
        }
        Ok(())
    }

    /// Fixes the file's format; a format that needs a tokenizer, without one, is an error.
    fn set_format(&mut self, format: DataFormat, line: Option<usize>) -> Result<(), DataError> {
        if format.needs_tokenizer() && self.tokenizer.is_none() {
            return Err(DataError::NoTokenizer {
                path: self.path.to_path_buf(),
                format,
            });
        }
        self.format = Some((format, line));
        Ok(())
    }

    /// The row's format and content, or why it is bad.
    fn parse(&self, value: Value) -> Result<(DataFormat, Row), String> {
        let Value::Object(mut obj) = value else {
            return Err(format!("a row must be a JSON object, not {}", kind(&value)));
        };
        let seen = DataFormat::of_row(&obj);
        let format = match (self.format, seen) {
            (Some((format, _)), _) if obj.contains_key(format.marker()) => format,
            (Some((format, origin)), Some(other)) => {
                let origin = match origin {
                    Some(at) => format!("detected at line {at}"),
                    None => "as given".to_string(),
                };
                return Err(format!(
                    "a row in {other} format in a file of {format} rows ({origin})"
                ));
            }
            (Some((format, _)), None) => {
                return Err(format!(
                    "not a {format} row: missing field `{}`",
                    format.marker()
                ));
            }
            (None, Some(format)) => format,
            (None, None) => {
                return Err(
                    "unknown row format: a row needs one of the fields `instruction` \
                            (alpaca), `conversations` (sharegpt), `messages`, `text` or \
                            `input_ids` (tokenized)"
                        .to_string(),
                );
            }
        };
        let row = match format {
            DataFormat::Alpaca => Row::Chat(alpaca(&mut obj)?),
            DataFormat::ShareGpt => Row::Chat(turns(&mut obj, "conversations", "from", "value")?),
            DataFormat::Messages => Row::Chat(turns(&mut obj, "messages", "role", "content")?),
            DataFormat::Text => {
                let text: String = field(&mut obj, "text")?;
                if text.trim().is_empty() {
                    return Err("empty `text`".to_string());
                }
                Row::Text(text)
            }
            DataFormat::Tokenized => tokenized(&mut obj)?,
        };
        Ok((format, row))
    }

    /// Tokenizes and labels a parsed row, cut to `max_len`; bad when no target is left.
    fn example(&self, row: Row) -> Result<Example, String> {
        let mut ex = match row {
            Row::Chat(messages) => self.chat_example(&messages)?,
            Row::Text(text) => {
                let ids: Vec<i64> = self
                    .tokenizer()?
                    .encode(&text, true)
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .map(i64::from)
                    .collect();
                Example {
                    labels: ids.clone(),
                    input_ids: ids,
                }
            }
            Row::Tokenized { input_ids, labels } => Example {
                labels: labels.unwrap_or_else(|| input_ids.clone()),
                input_ids,
            },
        };
        let full_len = ex.input_ids.len();
        let had_targets = ex.target_count() > 0;
        ex.input_ids.truncate(self.opts.max_len);
        ex.labels.truncate(self.opts.max_len);
        if ex.target_count() == 0 {
            return Err(if had_targets {
                format!(
                    "over-long after truncation: {full_len} tokens, and the first {} (max_len) \
                     hold no target token",
                    self.opts.max_len
                )
            } else {
                "no target token: every label after the first token is masked".to_string()
            });
        }
        Ok(ex)
    }

    /// Renders a chat with the template and labels its assistant tokens.
    fn chat_example(&self, messages: &[Message]) -> Result<Example, String> {
        let tokenizer = self.tokenizer()?;
        let rendered = self
            .template
            .render_with_spans(messages)
            .map_err(|e| e.to_string())?;
        let encoded = tokenizer
            .encode_with_offsets(&rendered.text, false)
            .map_err(|e| e.to_string())?;
        let input_ids: Vec<i64> = encoded.ids.iter().map(|&id| i64::from(id)).collect();
        let labels = if self.opts.train_on_prompt {
            input_ids.clone()
        } else {
            let mask = assistant_token_mask(&encoded.offsets, &rendered.assistant_spans);
            input_ids
                .iter()
                .zip(mask)
                .map(|(&id, train)| if train { id } else { IGNORE_INDEX })
                .collect()
        };
        Ok(Example { input_ids, labels })
    }

    fn tokenizer(&self) -> Result<&Tokenizer, String> {
        // invariant: set_format refused formats that need a tokenizer when there is none.
        self.tokenizer
            .ok_or_else(|| "this row needs a tokenizer".to_string())
    }
}

/// `system?` / `user: instruction (+ "\n\n" + input)` / `assistant: output`.
fn alpaca(obj: &mut Map<String, Value>) -> Result<Vec<Message>, String> {
    let instruction: String = field(obj, "instruction")?;
    let output: String = field(obj, "output")?;
    let input: Option<String> = optional_field(obj, "input")?;
    let system: Option<String> = optional_field(obj, "system")?;
    if output.trim().is_empty() {
        return Err("empty answer: `output` is blank".to_string());
    }
    let mut user = instruction;
    if let Some(input) = input.filter(|i| !i.trim().is_empty()) {
        user.push_str("\n\n");
        user.push_str(&input);
    }
    let mut messages = Vec::with_capacity(3);
    if let Some(system) = system.filter(|s| !s.trim().is_empty()) {
        messages.push(Message::new("system", system));
    }
    messages.push(Message::new("user", user));
    messages.push(Message::new("assistant", output));
    Ok(messages)
}

/// The turns under `key` (`conversations` / `messages`), each `{role_key, content_key}`, with
/// ShareGPT's `human` / `gpt` mapped to `user` / `assistant`. Bad without an answer to train on or
/// with a blank one.
fn turns(
    obj: &mut Map<String, Value>,
    key: &str,
    role_key: &str,
    content_key: &str,
) -> Result<Vec<Message>, String> {
    let list: Vec<Value> = field(obj, key)?;
    let mut messages = Vec::with_capacity(list.len());
    for (i, turn) in list.into_iter().enumerate() {
        let at = |reason: String| format!("{key}[{i}]: {reason}");
        let Value::Object(mut turn) = turn else {
            return Err(at(format!(
                "a turn must be a JSON object, not {}",
                kind(&turn)
            )));
        };
        let role: String = field(&mut turn, role_key).map_err(at)?;
        let content: String = field(&mut turn, content_key).map_err(at)?;
        let sharegpt = key == "conversations";
        let role = match (role.as_str(), sharegpt) {
            ("system", _) => "system",
            ("user", _) | ("human", true) => "user",
            ("assistant", _) | ("gpt", true) => "assistant",
            _ => {
                let known = if sharegpt {
                    "human, gpt, system, user, assistant"
                } else {
                    "system, user, assistant"
                };
                return Err(at(format!("unknown role {role:?} ({known})")));
            }
        };
        if role == "assistant" && content.trim().is_empty() {
            return Err(at("empty answer: the assistant turn is blank".to_string()));
        }
        messages.push(Message::new(role, content));
    }
    if !messages.iter().any(|m| m.role == "assistant") {
        return Err(format!("no assistant turn in `{key}` to train on"));
    }
    Ok(messages)
}

/// `input_ids` (non-negative) and optional `labels` (same length, non-negative or `-100`).
fn tokenized(obj: &mut Map<String, Value>) -> Result<Row, String> {
    let input_ids: Vec<i64> = field(obj, "input_ids")?;
    let labels: Option<Vec<i64>> = optional_field(obj, "labels")?;
    if input_ids.is_empty() {
        return Err("empty `input_ids`".to_string());
    }
    if let Some(bad) = input_ids.iter().find(|&&id| id < 0) {
        return Err(format!("negative token id {bad} in `input_ids`"));
    }
    if let Some(labels) = &labels {
        if labels.len() != input_ids.len() {
            return Err(format!(
                "`labels` has {} entries, `input_ids` {}",
                labels.len(),
                input_ids.len()
            ));
        }
        if let Some(bad) = labels.iter().find(|&&y| y < 0 && y != IGNORE_INDEX) {
            return Err(format!(
                "label {bad} in `labels` (a label is a token id or {IGNORE_INDEX})"
            ));
        }
    }
    Ok(Row::Tokenized { input_ids, labels })
}

/// Takes `key` out of a row and converts it; a missing key or wrong type is the reason.
fn field<T: DeserializeOwned>(obj: &mut Map<String, Value>, key: &str) -> Result<T, String> {
    let value = obj
        .remove(key)
        .ok_or_else(|| format!("missing field `{key}`"))?;
    serde_json::from_value(value).map_err(|e| format!("field `{key}`: {e}"))
}

/// [`field`] for a key that may be absent or `null`.
fn optional_field<T: DeserializeOwned>(
    obj: &mut Map<String, Value>,
    key: &str,
) -> Result<Option<T>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => field(obj, key).map(Some),
    }
}

/// "a string", "an array", ... for messages about a value of the wrong kind.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::tokenizer::gguf::bytes_to_unicode;
    use crate::io::gguf::GgufTokenizer;

    /// A byte-level BPE with one token per byte (its one merge, two spaces, occurs in no test
    /// text) whose special tokens are ChatML's: `<|im_start|>` = 0, `<|im_end|>` = 1 (eos).
    fn byte_tokenizer() -> Tokenizer {
        let mut tokens = vec!["<|im_start|>".to_string(), "<|im_end|>".to_string()];
        tokens.extend(bytes_to_unicode().iter().map(char::to_string));
        tokens.push("ĠĠ".to_string());
        let mut types = vec![3, 3];
        types.resize(tokens.len(), 1);
        let gguf = GgufTokenizer {
            model: "gpt2".into(),
            tokens,
            merges: vec!["Ġ Ġ".to_string()],
            token_types: Some(types),
            eos_token_id: Some(1),
            ..Default::default()
        };
        Tokenizer::from_gguf(&gguf, "bytes.gguf").unwrap()
    }

    struct Fixture {
        dir: tempfile::TempDir,
        tok: Tokenizer,
        template: ChatTemplate,
    }

    impl Fixture {
        fn new() -> Self {
            Self {
                dir: tempfile::tempdir().unwrap(),
                tok: byte_tokenizer(),
                template: ChatTemplate::preset("chatml").unwrap(),
            }
        }

        fn load(&self, body: &str, opts: &DatasetOptions) -> Result<Dataset, DataError> {
            let path = self.dir.path().join("data.jsonl");
            std::fs::write(&path, body).unwrap();
            load_dataset(&path, Some(&self.tok), &self.template, opts)
        }

        /// Text of the labelled tokens, one string per run of unmasked labels.
        fn trained(&self, ex: &Example) -> Vec<String> {
            let mut runs: Vec<Vec<u32>> = Vec::new();
            let mut prev = false;
            for &y in &ex.labels {
                let on = y != IGNORE_INDEX;
                if on && !prev {
                    runs.push(Vec::new());
                }
                if let (true, Some(run)) = (on, runs.last_mut()) {
                    run.push(y as u32);
                }
                prev = on;
            }
            runs.iter()
                .map(|r| self.tok.decode(r, false).unwrap())
                .collect()
        }
    }

    fn opts() -> DatasetOptions {
        DatasetOptions::default()
    }

    fn skipping() -> DatasetOptions {
        DatasetOptions {
            skip_bad_rows: true,
            ..opts()
        }
    }

    fn row_err(r: Result<Dataset, DataError>) -> (usize, String) {
        match r {
            Err(DataError::Row { line, reason, .. }) => (line, reason),
            other => panic!("expected a row error, got {other:?}"),
        }
    }

    #[test]
    fn format_names() {
        for f in DataFormat::ALL {
            assert_eq!(f.to_string().parse::<DataFormat>(), Ok(f));
        }
        assert_eq!("sharegpt".parse(), Ok(DataFormat::ShareGpt));
        let err = "json".parse::<DataFormat>().unwrap_err();
        assert!(err.to_string().contains("\"json\""), "{err}");
    }

    #[test]
    fn detects_each_format_and_masks_prompts() {
        let fx = Fixture::new();
        let cases = [
            (
                r#"{"instruction": "Add", "input": "1 2", "output": "3", "system": "Be brief."}"#,
                DataFormat::Alpaca,
                "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nAdd\n\n1 2<|im_end|>\n<|im_start|>assistant\n3<|im_end|>\n",
            ),
            (
                r#"{"id": 7, "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}"#,
                DataFormat::ShareGpt,
                "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n",
            ),
            (
                r#"{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}"#,
                DataFormat::Messages,
                "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n",
            ),
        ];
        for (row, format, text) in cases {
            let ds = fx.load(row, &opts()).unwrap();
            assert_eq!(ds.format, format);
            let ex = &ds.examples[0];
            let ids: Vec<u32> = ex.input_ids.iter().map(|&i| i as u32).collect();
            assert_eq!(fx.tok.decode(&ids, false).unwrap(), text);
            let answer = if format == DataFormat::Alpaca {
                "3"
            } else {
                "Hello"
            };
            assert_eq!(fx.trained(ex), [format!("{answer}<|im_end|>")]);
        }

        let ds = fx.load(r#"{"text": "ab"}"#, &opts()).unwrap();
        assert_eq!(ds.format, DataFormat::Text);
        assert_eq!(ds.examples[0].input_ids, ds.examples[0].labels);
        assert_eq!(ds.examples[0].input_ids.len(), 2);

        let ds = fx
            .load(
                r#"{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}"#,
                &opts(),
            )
            .unwrap();
        assert_eq!(ds.format, DataFormat::Tokenized);
        assert_eq!(
            ds.examples,
            [Example {
                input_ids: vec![5, 6, 7],
                labels: vec![-100, 6, 7]
            }]
        );
    }

    #[test]
    fn alpaca_with_text_column_is_alpaca_unless_told() {
        let fx = Fixture::new();
        let row = r#"{"instruction": "Q", "input": "", "output": "A", "text": "Q: A"}"#;
        let ds = fx.load(row, &opts()).unwrap();
        assert_eq!(ds.format, DataFormat::Alpaca);
        assert_eq!(fx.trained(&ds.examples[0]), ["A<|im_end|>"]);
        let told = DatasetOptions {
            format: Some(DataFormat::Text),
            ..opts()
        };
        let ds = fx.load(row, &told).unwrap();
        assert_eq!(ds.format, DataFormat::Text);
        assert_eq!(ds.examples[0].input_ids.len(), "Q: A".len());
    }

    #[test]
    fn every_assistant_turn_is_trained_and_train_on_prompt_trains_all() {
        let fx = Fixture::new();
        let row = r#"{"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "u1"}, {"role": "assistant", "content": "a1"}, {"role": "user", "content": "u2"}, {"role": "assistant", "content": "a2"}]}"#;
        let ds = fx.load(row, &opts()).unwrap();
        assert_eq!(
            fx.trained(&ds.examples[0]),
            ["a1<|im_end|>", "a2<|im_end|>"]
        );
        let all = DatasetOptions {
            train_on_prompt: true,
            ..opts()
        };
        let ex = &fx.load(row, &all).unwrap().examples[0];
        assert_eq!(ex.labels, ex.input_ids);
    }

    #[test]
    fn truncation_and_over_long_rows() {
        let fx = Fixture::new();
        let short = DatasetOptions {
            max_len: 4,
            ..opts()
        };
        let ex = &fx.load(r#"{"text": "abcdefgh"}"#, &short).unwrap().examples[0];
        assert_eq!(ex.input_ids, ex.labels);
        assert_eq!(ex.input_ids.len(), 4);
        // "<|im_start|>user\nhello<|im_end|>\n" is 13 tokens, "<|im_start|>assistant\n" 11 more: the
        // answer starts at position 24.
        let chat = r#"{"messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "hi"}]}"#;
        let cut = |max_len| DatasetOptions { max_len, ..opts() };
        let ex = &fx.load(chat, &cut(25)).unwrap().examples[0];
        assert_eq!(
            (ex.input_ids.len(), fx.trained(ex)),
            (25, vec!["h".to_string()])
        );
        let (line, reason) = row_err(fx.load(&format!("\n{chat}"), &cut(24)));
        assert_eq!(line, 2);
        assert!(reason.starts_with("over-long after truncation"), "{reason}");
    }

    #[test]
    fn bad_rows_stop_or_are_skipped_with_their_lines() {
        let fx = Fixture::new();
        let body = [
            r#"{"instruction": "a", "output": "b"}"#,
            r#"{"instruction": "a", "output": 3}"#,
            "",
            r#"{"instruction": "a", "output": "  "}"#,
            r#"not json"#,
            r#"{"conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": "y"}]}"#,
            r#"[1]"#,
            r#"{"instruction": "c", "input": "d", "output": "e"}"#,
        ]
        .join("\n");
        let (line, reason) = row_err(fx.load(&body, &opts()));
        assert_eq!(line, 2);
        assert_eq!(
            reason,
            "field `output`: invalid type: integer `3`, expected a string"
        );

        let ds = fx.load(&body, &skipping()).unwrap();
        assert_eq!(ds.format, DataFormat::Alpaca);
        assert_eq!(ds.examples.len(), 2);
        let lines: Vec<usize> = ds.bad_rows.iter().map(|b| b.line).collect();
        assert_eq!(lines, [2, 4, 5, 6, 7]);
        let reasons: Vec<&str> = ds.bad_rows.iter().map(|b| b.reason.as_str()).collect();
        assert_eq!(reasons[1], "empty answer: `output` is blank");
        assert!(
            reasons[2].starts_with("invalid JSON: expected ident (column 2)"),
            "{}",
            reasons[2]
        );
        assert_eq!(
            reasons[3],
            "a row in sharegpt format in a file of alpaca rows (detected at line 1)"
        );
        assert_eq!(reasons[4], "a row must be a JSON object, not an array");
    }

    #[test]
    fn the_first_good_row_sets_the_format() {
        let fx = Fixture::new();
        let body = "{\"instruction\": \"a\"}\n{\"text\": \"xy\"}\n{\"instruction\": \"a\", \"output\": \"b\"}\n";
        let ds = fx.load(body, &skipping()).unwrap();
        assert_eq!(ds.format, DataFormat::Text);
        assert_eq!(ds.bad_rows[0].reason, "missing field `output`");
        assert_eq!(
            ds.bad_rows[1].reason,
            "a row in alpaca format in a file of text rows (detected at line 2)"
        );
    }

    #[test]
    fn chat_rows_bad_roles_and_answers() {
        let fx = Fixture::new();
        let bad = [
            (
                r#"{"conversations": [{"from": "bing", "value": "x"}]}"#,
                r#"conversations[0]: unknown role "bing" (human, gpt, system, user, assistant)"#,
            ),
            (
                r#"{"messages": [{"role": "human", "content": "x"}]}"#,
                r#"messages[0]: unknown role "human" (system, user, assistant)"#,
            ),
            (
                r#"{"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": ""}]}"#,
                "messages[1]: empty answer: the assistant turn is blank",
            ),
            (
                r#"{"messages": [{"role": "user", "content": "x"}]}"#,
                "no assistant turn in `messages` to train on",
            ),
            (
                r#"{"messages": [{"role": "user"}]}"#,
                "messages[0]: missing field `content`",
            ),
            (
                r#"{"conversations": "hi"}"#,
                "field `conversations`: invalid type: string \"hi\", expected a sequence",
            ),
            (r#"{"foo": 1}"#, "unknown row format"),
        ];
        for (row, want) in bad {
            let (line, reason) = row_err(fx.load(row, &opts()));
            assert_eq!(line, 1);
            assert!(reason.starts_with(want), "{row}: {reason}");
        }
    }

    #[test]
    fn tokenized_rows_are_checked() {
        let fx = Fixture::new();
        let told = DatasetOptions {
            format: Some(DataFormat::Tokenized),
            ..opts()
        };
        let bad = [
            (
                r#"{"input_ids": [1, -2]}"#,
                "negative token id -2 in `input_ids`",
            ),
            (
                r#"{"input_ids": [1, 2], "labels": [1]}"#,
                "`labels` has 1 entries, `input_ids` 2",
            ),
            (
                r#"{"input_ids": [1, 2], "labels": [1, -1]}"#,
                "label -1 in `labels` (a label is a token id or -100)",
            ),
            (
                r#"{"input_ids": [1, 2], "labels": [1, -100]}"#,
                "no target token: every label after the first token is masked",
            ),
            (r#"{"input_ids": []}"#, "empty `input_ids`"),
            (
                r#"{"text": "x"}"#,
                "a row in text format in a file of tokenized rows (as given)",
            ),
            (
                r#"{"ids": [1]}"#,
                "not a tokenized row: missing field `input_ids`",
            ),
        ];
        for (row, want) in bad {
            assert_eq!(row_err(fx.load(row, &told)), (1, want.to_string()), "{row}");
        }
        // No tokenizer needed.
        let path = fx.dir.path().join("ids.jsonl");
        std::fs::write(&path, "{\"input_ids\": [1, 2]}\n").unwrap();
        let ds = load_dataset(&path, None, &fx.template, &opts()).unwrap();
        assert_eq!(ds.examples[0].labels, [1, 2]);
    }

    #[test]
    fn json_array_rows_report_the_line_they_start_on() {
        let fx = Fixture::new();
        let body = "\u{FEFF}  [\n  {\"text\": \"ab\"},\n  {\n    \"text\": 5\n  },\n  {\"text\": \"cd\"}, \"x\"\n]\n";
        let (line, reason) = row_err(fx.load(body, &opts()));
        assert_eq!(
            (line, reason.as_str()),
            (
                3,
                "field `text`: invalid type: integer `5`, expected a string"
            )
        );
        let ds = fx.load(body, &skipping()).unwrap();
        assert_eq!(ds.examples.len(), 2);
        let bad: Vec<(usize, &str)> = ds
            .bad_rows
            .iter()
            .map(|b| (b.line, b.reason.as_str()))
            .collect();
        assert_eq!(
            bad,
            [
                (
                    3,
                    "field `text`: invalid type: integer `5`, expected a string"
                ),
                (6, "a row must be a JSON object, not a string")
            ]
        );

        // Broken JSON inside the array is fatal even when skipping, at the element's line.
        let broken = "[\n{\"text\": \"ab\"},\n{\"text\":\n \"cd\" \"ef\"},\n{\"text\": \"gh\"}]";
        let (line, reason) = row_err(fx.load(broken, &skipping()));
        assert_eq!(line, 3);
        assert!(reason.contains("(line 4, column 7)"), "{reason}");
        let (line, reason) =
            row_err(fx.load("[{\"text\": \"ab\"}\n{\"text\": \"cd\"}]", &skipping()));
        assert_eq!(
            (line, reason.as_str()),
            (2, "expected `,` or `]` after an array element")
        );
        let (line, reason) = row_err(fx.load("[{\"text\": \"ab\"},\n]", &skipping()));
        assert_eq!(line, 2);
        assert!(
            reason.starts_with("invalid JSON in the array: expected value"),
            "{reason}"
        );
        let (line, _) = row_err(fx.load("[{\"text\": \"ab\"}]\n\n{}", &skipping()));
        assert_eq!(line, 3);
        assert!(matches!(
            fx.load("[ ]", &opts()),
            Err(DataError::Empty { .. })
        ));
    }

    #[test]
    fn file_level_errors_name_the_file() {
        let fx = Fixture::new();
        let missing = fx.dir.path().join("nope.jsonl");
        let err = load_dataset(&missing, Some(&fx.tok), &fx.template, &opts()).unwrap_err();
        assert!(matches!(err, DataError::Io { .. }));
        assert!(err.to_string().contains("nope.jsonl"), "{err}");

        let err = fx
            .load("{\"text\": \"a\"}\n{\"foo\": 1}\n", &skipping())
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("data.jsonl: no usable example (2 bad rows skipped; the first, line 1: no target token"), "{msg}");
        assert!(
            fx.load("\n\n", &opts())
                .unwrap_err()
                .to_string()
                .ends_with("data.jsonl: no usable example")
        );

        let path = fx.dir.path().join("t.jsonl");
        std::fs::write(&path, "{\"text\": \"ab\"}\n").unwrap();
        let err = load_dataset(&path, None, &fx.template, &opts()).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("t.jsonl: text rows need a tokenizer, and the model has none"),
            "{err}"
        );
    }

    fn numbered(n: i64) -> Vec<Example> {
        (0..n)
            .map(|i| Example {
                input_ids: vec![i],
                labels: vec![i],
            })
            .collect()
    }

    /// Read a slice of rows at a time, a dataset is exactly what [`parse_dataset`] reads in one
    /// go: the same examples, format and skipped rows, or the same error, whatever the slice.
    #[test]
    fn reader_in_slices_equals_parse_dataset() {
        let f = Fixture::new();
        let alpaca = |i: usize| format!(r#"{{"instruction": "q{i}", "output": "a{i}"}}"#);
        let good: Vec<String> = (0..7).map(alpaca).collect();
        let with_bad = {
            let mut rows = good.clone();
            rows.insert(3, r#"{"text": 5}"#.to_string());
            rows.insert(5, "not json".to_string());
            rows
        };
        let mixed = {
            let mut rows = good.clone();
            rows.push(r#"{"text": "a text row"}"#.to_string());
            rows
        };
        let bodies = [
            good.join("\n"),
            format!("[\n{}\n]", good.join(",\n")),
            with_bad.join("\n"),
            mixed.join("\n"),
            "\n\n".to_string(),
            "[1, 2".to_string(),
        ];
        let skip = DatasetOptions {
            skip_bad_rows: true,
            ..DatasetOptions::default()
        };
        let given = DatasetOptions {
            format: Some(DataFormat::Alpaca),
            ..DatasetOptions::default()
        };
        let path = Path::new("pasted");
        let show = |r: Result<Dataset, DataError>| format!("{r:?}");
        for body in &bodies {
            for opts in [&DatasetOptions::default(), &skip, &given] {
                let whole = show(parse_dataset(path, body, Some(&f.tok), &f.template, opts));
                for slice in [1, 2, 3, 100] {
                    let sliced = DatasetReader::new(path, body, Some(&f.tok), &f.template, opts)
                        .and_then(|mut r| {
                            let mut steps = 0;
                            while !r.step(Some(&f.tok), &f.template, slice)? {
                                steps += 1;
                                let (read, total) = r.progress();
                                assert_eq!(read, (steps * slice).min(total), "{body:?}");
                            }
                            r.finish(Some(&f.tok), &f.template)
                        });
                    assert_eq!(show(sliced), whole, "{body:?}, {opts:?}, slice {slice}");
                }
            }
        }
        // The cases above cover success, skipped rows and each kind of failure.
        let kinds = |opts: &DatasetOptions| -> Vec<String> {
            bodies
                .iter()
                .map(|b| show(parse_dataset(path, b, Some(&f.tok), &f.template, opts)))
                .map(|r| r.split([' ', '(']).take(2).collect::<Vec<_>>().join(" "))
                .collect()
        };
        assert_eq!(
            kinds(&DatasetOptions::default()),
            [
                "Ok Dataset",
                "Ok Dataset",
                "Err Row",
                "Err Row",
                "Err Empty",
                "Err Row"
            ]
        );
        let skipped = show(parse_dataset(
            path,
            &bodies[2],
            Some(&f.tok),
            &f.template,
            &skip,
        ));
        assert!(skipped.contains("bad_rows: [BadRow { line: 4"), "{skipped}");
    }

    #[test]
    fn split_eval_is_deterministic_and_keeps_order() {
        let (train, eval) = split_eval(numbered(100), 0.1, 5);
        assert_eq!((train.len(), eval.len()), (90, 10));
        assert_eq!(
            (train.clone(), eval.clone()),
            split_eval(numbered(100), 0.1, 5)
        );
        assert_ne!(eval, split_eval(numbered(100), 0.1, 6).1);
        let mut all: Vec<i64> = train.iter().chain(&eval).map(|e| e.input_ids[0]).collect();
        assert!(eval.windows(2).all(|w| w[0].input_ids < w[1].input_ids));
        all.sort_unstable();
        assert_eq!(all, (0..100).collect::<Vec<_>>());

        assert_eq!(split_eval(numbered(10), 0.01, 1).1.len(), 1);
        assert_eq!(split_eval(numbered(10), 1.0, 1).0.len(), 1);
        assert_eq!(split_eval(numbered(10), 0.0, 1).1.len(), 0);
        assert_eq!(split_eval(numbered(10), f64::NAN, 1).1.len(), 0);
        assert_eq!(split_eval(numbered(1), 0.5, 1).1.len(), 0);
    }
}
