//! Text <-> token ids: a thin wrapper around Hugging Face's `tokenizers`, loaded either from a
//! `tokenizer.json` ([`Tokenizer::from_file`]) or rebuilt from the tokenizer metadata of a GGUF
//! file ([`Tokenizer::from_gguf_file`], [`Tokenizer::from_gguf`]).
//!
//! A GGUF file ships no `tokenizer.json`; [`gguf`] rebuilds from its `tokenizer.ggml.*` metadata
//! (read by `io::gguf` into a [`GgufTokenizer`]) the pipeline that transformers builds for the same
//! file, so ids match that reference exactly. Chat text rendered by a template already holds its
//! special tokens and is encoded with `add_special_tokens = false`, as `apply_chat_template` does.

pub mod gguf;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::io::IoError;
use crate::io::gguf::{GgufFile, GgufTokenizer};

/// Errors from loading a tokenizer or running it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // --- loading ---
    #[error("cannot read tokenizer {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("tokenizer metadata of {path}: {reason}")]
    Gguf { path: PathBuf, reason: String },
    /// The GGUF file's tokenizer metadata is missing or ill-typed (names the file and key).
    #[error(transparent)]
    Io(#[from] IoError),
    // --- running ---
    #[error("cannot encode text: {0}")]
    Encode(String),
    #[error("cannot decode ids: {0}")]
    Decode(String),
}

/// Token ids with, per token, its byte range `(start, end)` in the encoded text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub offsets: Vec<(usize, usize)>,
}

/// A tokenizer with its special ids.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    pad_id: Option<u32>,
}

impl Tokenizer {
    /// Loads a Hugging Face `tokenizer.json`. The bos/eos/pad tokens live in
    /// `tokenizer_config.json` next to it; when that file is missing or silent, eos is guessed
    /// from common end tokens among the special tokens (`<|im_end|>`, `<|eot_id|>`, `</s>`, ...)
    /// and can be set with [`Tokenizer::with_special_ids`].
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let json = std::fs::read(path).map_err(|e| Error::Load {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let config_path = path.with_file_name("tokenizer_config.json");
        let config = std::fs::read(&config_path).ok();
        Self::from_bytes(path, &json, config.as_deref())
    }

    /// [`Tokenizer::from_file`] on the contents of `tokenizer.json` and, when there is one,
    /// `tokenizer_config.json` (a browser's picked files); `path` names `tokenizer.json` in
    /// errors, its sibling `tokenizer_config.json` the config's.
    pub fn from_bytes(path: &Path, json: &[u8], config: Option<&[u8]>) -> Result<Self, Error> {
        let load_err = |reason: String| Error::Load {
            path: path.to_path_buf(),
            reason,
        };
        // The syntax first: the tokenizers crate panics ("Helper") on a syntax error inside
        // its decoder and normalizer objects, as a truncated file has, instead of failing.
        serde_json::from_slice::<serde::de::IgnoredAny>(json)
            .map_err(|e| load_err(format!("invalid JSON: {e}")))?;
        let inner = tokenizers::Tokenizer::from_bytes(json).map_err(|e| load_err(e.to_string()))?;
        let named = match config {
            Some(bytes) => special_names(&path.with_file_name("tokenizer_config.json"), bytes)?,
            None => HashMap::new(),
        };
        let id_of = |name: Option<&String>| name.and_then(|n| inner.token_to_id(n));
        let mut bos_id = id_of(named.get("bos_token"));
        let mut eos_id = id_of(named.get("eos_token"));
        let pad_id = id_of(named.get("pad_token"));
        if named.is_empty() {
            let find = |names: &[&str]| names.iter().find_map(|n| inner.token_to_id(n));
            bos_id = find(&["<|begin_of_text|>", "<s>", "<bos>"]);
            eos_id = find(&[
                "<|im_end|>",
                "<|eot_id|>",
                "<end_of_turn>",
                "</s>",
                "<|endoftext|>",
            ]);
        }
        Ok(Self {
            inner,
            bos_id,
            eos_id,
            pad_id,
        })
    }

    /// Rebuilds the tokenizer that transformers builds from a GGUF file's tokenizer metadata (see
    /// [`gguf`]); bos/eos/pad are the file's `tokenizer.ggml.*_token_id`. `path` is the GGUF file,
    /// named in errors.
    pub fn from_gguf(tok: &GgufTokenizer, path: impl AsRef<Path>) -> Result<Self, Error> {
        Ok(Self {
            inner: gguf::build(tok, path.as_ref())?,
            bos_id: tok.bos_token_id,
            eos_id: tok.eos_token_id,
            pad_id: tok.padding_token_id,
        })
    }

    /// [`Tokenizer::from_gguf`] on the metadata of an opened GGUF file
    /// ([`GgufFile::tokenizer`]).
    pub fn from_gguf_file(file: &GgufFile) -> Result<Self, Error> {
        Self::from_gguf(&file.tokenizer()?, file.path())
    }

    /// Overrides the bos/eos ids (e.g. from `generation_config.json`).
    pub fn with_special_ids(mut self, bos_id: Option<u32>, eos_id: Option<u32>) -> Self {
        self.bos_id = bos_id;
        self.eos_id = eos_id;
        self
    }

    /// Token ids of `text`; `add_special_tokens` applies the post-processor (bos/eos).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, Error> {
        Ok(self.encode_with_offsets(text, add_special_tokens)?.ids)
    }

    /// Token ids of `text` and, per token, its byte range `(start, end)` in `text` (a bos/eos the
    /// post-processor adds has `(0, 0)`). With a chat template's assistant spans these give the
    /// loss mask.
    pub fn encode_with_offsets(
        &self,
        text: &str,
        add_special_tokens: bool,
    ) -> Result<Encoded, Error> {
        let encoding = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| Error::Encode(e.to_string()))?;
        Ok(Encoded {
            ids: encoding.get_ids().to_vec(),
            offsets: encoding.get_offsets().to_vec(),
        })
    }

    /// Text of `ids`; `skip_special` drops special tokens (`<|im_end|>`, bos, ...).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, Error> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| Error::Decode(e.to_string()))
    }

    /// A decoder that turns ids into text as they are generated.
    pub fn stream_decoder(&self, skip_special: bool) -> StreamDecoder<'_> {
        StreamDecoder {
            tokenizer: self,
            skip_special,
            ids: Vec::new(),
            prefix_len: 0,
            printed: 0,
        }
    }

    /// The id of a token string (vocabulary or added token), e.g. `token_id("<|im_end|>")`.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The token string of an id.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    pub fn pad_id(&self) -> Option<u32> {
        self.pad_id
    }

    /// The bos token's text (for a chat template's `bos_token`), `""` when there is none.
    pub fn bos_token(&self) -> String {
        self.bos_id
            .and_then(|id| self.inner.id_to_token(id))
            .unwrap_or_default()
    }

    /// The eos token's text (for a chat template's `eos_token`), `""` when there is none.
    pub fn eos_token(&self) -> String {
        self.eos_id
            .and_then(|id| self.inner.id_to_token(id))
            .unwrap_or_default()
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The wrapped `tokenizers` tokenizer (e.g. to save it as `tokenizer.json`).
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// Incremental decoding: [`StreamDecoder::step`] returns the text that one more token adds.
///
/// Decoding token by token goes wrong two ways: a character split across byte tokens (`🙂` is
/// three byte-level tokens) decodes to `�` until its last byte arrives, and decoders that strip
/// or join look at their neighbours (SentencePiece strips the leading space of the *first* token
/// only). So each step decodes a short window that starts a few tokens back, `ids[prefix..]`, and
/// returns what it adds beyond the already printed text of that window; while the window ends in
/// `�` nothing is returned (the bytes are held back), and [`StreamDecoder::flush`] returns whatever
/// is left at the end. The concatenation of all returned pieces equals `decode(all ids)`.
#[derive(Debug)]
pub struct StreamDecoder<'a> {
    tokenizer: &'a Tokenizer,
    skip_special: bool,
    /// Ids from the start of the window on.
    ids: Vec<u32>,
    /// How many of `ids` form the context that was fully printed before the last emission.
    prefix_len: usize,
    /// Bytes of `decode(ids)` already returned.
    printed: usize,
}

impl StreamDecoder<'_> {
    /// Feeds one id; returns the new text (empty while a character is incomplete).
    pub fn step(&mut self, id: u32) -> Result<String, Error> {
        self.ids.push(id);
        let text = self.tokenizer.decode(&self.ids, self.skip_special)?;
        if text.ends_with('\u{FFFD}') || text.len() <= self.printed {
            return Ok(String::new());
        }
        let new = match text.get(self.printed..) {
            Some(new) => new.to_string(),
            // invariant: the window's earlier text is a prefix of its later text for the decoders
            // built here; if a decoder ever breaks that, emit the whole window's tail rather than
            // panic.
            None => text.clone(),
        };
        // Slide the window: keep the last emitted tokens as context for the next ones.
        let keep_from = self.prefix_len;
        self.ids.drain(..keep_from);
        self.prefix_len = self.ids.len();
        self.printed = self.tokenizer.decode(&self.ids, self.skip_special)?.len();
        Ok(new)
    }

    /// Returns the text still held back (an incomplete character at the very end, as `�`).
    pub fn flush(&mut self) -> Result<String, Error> {
        let text = self.tokenizer.decode(&self.ids, self.skip_special)?;
        let rest = text.get(self.printed..).unwrap_or_default().to_string();
        self.ids.clear();
        self.prefix_len = 0;
        self.printed = 0;
        Ok(rest)
    }
}

/// Reads `bos_token`, `eos_token`, `pad_token`, `unk_token` from a `tokenizer_config.json`
/// (values are strings or `{"content": ...}`); an absent file gives an empty map.
fn special_names(path: &Path, bytes: &[u8]) -> Result<HashMap<String, String>, Error> {
    let text = String::from_utf8_lossy(bytes);
    let load_err = |reason: String| Error::Load {
        path: path.to_path_buf(),
        reason,
    };
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| load_err(e.to_string()))?;
    let mut out = HashMap::new();
    for key in ["bos_token", "eos_token", "pad_token", "unk_token"] {
        let name = match json.get(key) {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Object(o)) => o
                .get("content")
                .and_then(|c| c.as_str())
                .map(str::to_string),
            _ => None,
        };
        if let Some(name) = name {
            out.insert(key.to_string(), name);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
