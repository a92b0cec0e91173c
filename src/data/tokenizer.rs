//! Text <-> token ids: a thin wrapper around Hugging Face's `tokenizers`, loaded either from a
//! `tokenizer.json` or rebuilt from the tokenizer metadata of a GGUF file.
//!
//! A GGUF file ships no `tokenizer.json`: llama.cpp stores the vocabulary under `tokenizer.ggml.*`.
//! [`Tokenizer::from_gguf_vocab`] rebuilds the pipeline that transformers builds for the same file
//! (`AutoTokenizer.from_pretrained(gguf_file=...)`, i.e. `GGUFGPTConverter` / `GGUFLlamaConverter`
//! in `transformers/integrations/ggml.py` on top of `GPT2Converter` / `LlamaConverter` in
//! `convert_slow_tokenizer.py`), so ids match that reference exactly:
//!
//! | `tokenizer.ggml.model` | model | pre-tokenizer | decoder |
//! | --- | --- | --- | --- |
//! | `gpt2` | byte-level BPE from `tokens` + `merges` | GPT-2 `ByteLevel` regex, or the split regex `tokenizer.ggml.pre` names (see [`pre_tokenizer_split`]) followed by a regex-free `ByteLevel` | `ByteLevel` |
//! | `llama` | SentencePiece BPE with byte fallback (`<0xNN>` tokens); merges from the file or derived from `scores` | `Metaspace("▁", prepend first/never)` | `ByteFallback, Fuse, Replace("▁"," ")`, `Strip(1 left)` if a prefix space is added |
//!
//! Control tokens (`token_type == 3`) become special added tokens, so `<|im_start|>` in text is one
//! id; the bos/eos/unk/pad tokens are registered as special as transformers does through its special
//! tokens map. `add_special_tokens = true` prepends bos (and appends eos) as the file's
//! `add_bos_token` / `add_eos_token` say (defaults: llama adds bos, gpt2 adds nothing), which is what
//! llama.cpp does. Chat text rendered by a template already holds its special tokens and is encoded
//! with `add_special_tokens = false`, as `apply_chat_template` does.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{BPE, Merges, Vocab};
use tokenizers::normalizers::replace::Replace;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    AddedToken, DecoderWrapper, PostProcessorWrapper, PreTokenizerWrapper, SplitDelimiterBehavior,
};

/// llama.cpp's `LLAMA_TOKEN_TYPE_CONTROL`.
const TOKEN_TYPE_CONTROL: i32 = 3;

/// Errors from loading a tokenizer or running it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // --- loading ---
    #[error("cannot read tokenizer {path}: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("tokenizer metadata of {path}: {reason}")]
    Gguf { path: PathBuf, reason: String },
    // --- running ---
    #[error("cannot encode text: {0}")]
    Encode(String),
    #[error("cannot decode ids: {0}")]
    Decode(String),
}

fn gguf_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Gguf {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The `tokenizer.ggml.*` metadata of a GGUF file, as plain data (filled by `io::gguf`).
///
/// Field <- GGUF key: `model` <- `tokenizer.ggml.model` (`"gpt2"` or `"llama"`), `pre` <-
/// `tokenizer.ggml.pre`, `tokens` <- `tokenizer.ggml.tokens`, `scores` <- `tokenizer.ggml.scores`,
/// `token_types` <- `tokenizer.ggml.token_type`, `merges` <- `tokenizer.ggml.merges` (`"a b"`),
/// `bos_id`/`eos_id`/`unk_id`/`pad_id` <- `tokenizer.ggml.{bos,eos,unknown,padding}_token_id`,
/// `add_bos`/`add_eos` <- `tokenizer.ggml.add_{bos,eos}_token`, `add_space_prefix` <-
/// `tokenizer.ggml.add_space_prefix`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GgufVocab {
    pub model: String,
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    pub scores: Option<Vec<f32>>,
    pub token_types: Option<Vec<i32>>,
    pub merges: Option<Vec<String>>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub unk_id: Option<u32>,
    pub pad_id: Option<u32>,
    pub add_bos: Option<bool>,
    pub add_eos: Option<bool>,
    /// Whether a SentencePiece (`llama`) tokenizer prepends `▁` to the text; transformers' default
    /// when the key is absent is `true` (for `gpt2`: `false`).
    pub add_space_prefix: Option<bool>,
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
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| Error::Load {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let config = path.with_file_name("tokenizer_config.json");
        let named = read_special_names(&config)?;
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

    /// Rebuilds the tokenizer that transformers builds from a GGUF file's metadata (see the module
    /// doc). `path` is the GGUF file, named in errors.
    pub fn from_gguf_vocab(vocab: &GgufVocab, path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let n = vocab.tokens.len();
        for (what, id) in [
            ("bos", vocab.bos_id),
            ("eos", vocab.eos_id),
            ("unknown", vocab.unk_id),
            ("padding", vocab.pad_id),
        ] {
            if let Some(id) = id.filter(|&id| id as usize >= n) {
                return Err(gguf_err(
                    path,
                    format!("{what} token id {id} >= {n} tokens"),
                ));
            }
        }
        if let Some(types) = &vocab.token_types
            && types.len() != n
        {
            return Err(gguf_err(
                path,
                format!("{} token types for {n} tokens", types.len()),
            ));
        }
        let inner = match vocab.model.as_str() {
            "gpt2" => gpt2_tokenizer(vocab, path)?,
            "llama" => llama_tokenizer(vocab, path)?,
            other => {
                return Err(gguf_err(
                    path,
                    format!("tokenizer.ggml.model {other:?} is not supported (gpt2, llama)"),
                ));
            }
        };
        Ok(Self {
            inner,
            bos_id: vocab.bos_id,
            eos_id: vocab.eos_id,
            pad_id: vocab.pad_id,
        })
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
fn read_special_names(path: &Path) -> Result<HashMap<String, String>, Error> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(HashMap::new());
    };
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

// ---------------------------------------------------------------------------------------------
// gpt2: byte-level BPE
// ---------------------------------------------------------------------------------------------

/// GPT-2's byte -> printable char table (`bytes_to_unicode` in GPT-2's `encoder.py`).
fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let c = if printable {
            u32::from(b)
        } else {
            next += 1;
            next - 1
        };
        // invariant: every value is below 0x144, a valid scalar value.
        table[b as usize] = char::from_u32(c).unwrap_or('\0');
    }
    table
}

/// The pre-tokenizer split regex `tokenizer.ggml.pre` names, where it differs from GPT-2's (which
/// `ByteLevel` applies itself). llama.cpp names a known tokenizer, not a model, so several names
/// share a regex; `smollm`, `gpt-2`, `default`, `starcoder`, ... use GPT-2's (`None`). The table is
/// transformers' `GGUF_PRE_TOKENIZER_SPLITS`.
pub fn pre_tokenizer_split(pre: &str) -> Option<&'static str> {
    const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN35: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const GPT4O: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    Some(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" | "dbrx" | "smaug-bpe" => LLAMA3,
        "tekken" => TEKKEN,
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => QWEN2,
        "qwen35" => QWEN35,
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => GPT4O,
        _ => return None,
    })
}

/// `(left, right)` pairs of `"left right"` merge strings.
fn parse_merges(merges: &[String], path: &Path) -> Result<Merges, Error> {
    merges
        .iter()
        .map(|m| match m.split_once(' ') {
            Some((a, b)) => Ok((a.to_string(), b.to_string())),
            None => Err(gguf_err(path, format!("merge {m:?} is not \"left right\""))),
        })
        .collect()
}

/// `GGUFGPTConverter`: GPT-2's converter on the file's vocabulary and merges, the split regex the
/// file's `pre` names, and its control tokens as special tokens.
fn gpt2_tokenizer(vocab: &GgufVocab, path: &Path) -> Result<tokenizers::Tokenizer, Error> {
    let Some(merges) = &vocab.merges else {
        return Err(gguf_err(
            path,
            "a gpt2 tokenizer needs tokenizer.ggml.merges",
        ));
    };
    let merges = parse_merges(merges, path)?;
    let spelling = bytes_to_unicode();
    let alphabet: HashSet<char> = spelling.iter().copied().collect();
    let is_byte_level = |t: &str| t.chars().all(|c| alphabet.contains(&c));
    // llama.cpp writes tokens in GPT-2's byte-level spelling, but a token whose bytes are not
    // valid UTF-8 comes back raw; the merges name it in byte-level spelling, so respell it.
    let bpe_vocab: Vocab = vocab
        .tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let key = if is_byte_level(t) {
                t.clone()
            } else {
                t.bytes().map(|b| spelling[b as usize]).collect()
            };
            (key, i as u32)
        })
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(bpe_vocab, merges)
        .continuing_subword_prefix(String::new())
        .end_of_word_suffix(String::new())
        .fuse_unk(false)
        .build()
        .map_err(|e| gguf_err(path, format!("cannot build BPE: {e}")))?;
    let mut tok = tokenizers::Tokenizer::new(bpe);

    let add_prefix_space = vocab.add_space_prefix.unwrap_or(false);
    let pre: PreTokenizerWrapper = match vocab.pre.as_deref().and_then(pre_tokenizer_split) {
        Some(regex) => {
            let split = Split::new(
                SplitPattern::Regex(regex.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| gguf_err(path, format!("pre-tokenizer regex: {e}")))?;
            PreSequence::new(vec![
                split.into(),
                ByteLevel::new(add_prefix_space, true, false).into(),
            ])
            .into()
        }
        None => ByteLevel::new(add_prefix_space, true, true).into(),
    };
    tok.with_pre_tokenizer(Some(pre));
    tok.with_decoder(Some(ByteLevel::default()));

    // Control tokens as special; a token respelled above is a byte sequence llama.cpp mislabelled
    // and stays in the merges.
    let mut special: Vec<AddedToken> = Vec::new();
    if let Some(types) = &vocab.token_types {
        for (t, &kind) in vocab.tokens.iter().zip(types) {
            if kind == TOKEN_TYPE_CONTROL && is_byte_level(t) {
                special.push(AddedToken::from(t.clone(), true));
            }
        }
    }
    push_named_specials(vocab, &mut special);
    tok.add_special_tokens(&special);

    let processor = match special_template(vocab, false, path)? {
        Some(template) => template,
        None => tokenizers::processors::byte_level::ByteLevel::new(true, false, true).into(),
    };
    tok.with_post_processor(Some(processor));
    Ok(tok)
}

/// bos/eos/unk/pad as special tokens (transformers registers them through its special tokens
/// map), after the control tokens; duplicates are ignored by `tokenizers`.
fn push_named_specials(vocab: &GgufVocab, special: &mut Vec<AddedToken>) {
    for id in [vocab.unk_id, vocab.bos_id, vocab.eos_id, vocab.pad_id]
        .into_iter()
        .flatten()
    {
        if let Some(t) = vocab.tokens.get(id as usize)
            && !special.iter().any(|s| &s.content == t)
        {
            special.push(AddedToken::from(t.clone(), true));
        }
    }
}

/// The post-processor that adds bos and/or eos, `None` when the file asks for neither.
fn special_template(
    vocab: &GgufVocab,
    default_bos: bool,
    path: &Path,
) -> Result<Option<PostProcessorWrapper>, Error> {
    let token = |id: Option<u32>| id.and_then(|id| vocab.tokens.get(id as usize).map(|t| (t, id)));
    let bos = token(vocab.bos_id).filter(|_| vocab.add_bos.unwrap_or(default_bos));
    let eos = token(vocab.eos_id).filter(|_| vocab.add_eos.unwrap_or(false));
    if bos.is_none() && eos.is_none() {
        return Ok(None);
    }
    // Template pieces are written by name; `tokenizers` splits templates at spaces.
    let mut single = Vec::new();
    let mut pair = Vec::new();
    let mut specials = Vec::new();
    if let Some((t, id)) = bos {
        single.push(format!("{t}:0"));
        specials.push((t.clone(), id));
    }
    single.push("$A:0".to_string());
    if let Some((t, id)) = eos {
        single.push(format!("{t}:0"));
        if !specials.iter().any(|(s, _)| s == t) {
            specials.push((t.clone(), id));
        }
    }
    pair.extend(single.iter().cloned());
    if let Some((t, _)) = bos {
        pair.push(format!("{t}:1"));
    }
    pair.push("$B:1".to_string());
    if let Some((t, _)) = eos {
        pair.push(format!("{t}:1"));
    }
    let err = |e: String| gguf_err(path, format!("bos/eos post-processor: {e}"));
    let template = TemplateProcessing::builder()
        .try_single(single)
        .map_err(err)?
        .try_pair(pair)
        .map_err(err)?
        .special_tokens(specials)
        .build()
        .map_err(|e| gguf_err(path, format!("bos/eos post-processor: {e}")))?;
    Ok(Some(template.into()))
}

// ---------------------------------------------------------------------------------------------
// llama: SentencePiece BPE with byte fallback
// ---------------------------------------------------------------------------------------------

/// Merges of a SentencePiece vocabulary without stored merges, as `GGUFTokenizerSkeleton` derives
/// them: every split of every token into two vocabulary tokens, ordered by the merged token's
/// score (highest first), ties by the pieces' scores.
fn merges_from_scores(tokens: &[String], scores: &[f32]) -> Merges {
    // Python's `{t: scores[i]}`: the last score wins, the first position orders the iteration.
    let mut score: HashMap<&str, f32> = HashMap::with_capacity(tokens.len());
    let mut order: Vec<&str> = Vec::with_capacity(tokens.len());
    for (t, &s) in tokens.iter().zip(scores) {
        if score.insert(t.as_str(), s).is_none() {
            order.push(t.as_str());
        }
    }
    let mut merges: Vec<(&str, &str, f32)> = Vec::new();
    for &merged in &order {
        let mut local: Vec<(&str, &str, f32)> = merged
            .char_indices()
            .skip(1)
            .filter_map(|(i, _)| {
                let (l, r) = merged.split_at(i);
                (score.contains_key(l) && score.contains_key(r)).then(|| (l, r, score[merged]))
            })
            .collect();
        local.sort_by(|a, b| {
            (score[b.0], score[b.1])
                .partial_cmp(&(score[a.0], score[a.1]))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        merges.extend(local);
    }
    merges.sort_by(|a, b| b.2.total_cmp(&a.2));
    merges
        .into_iter()
        .map(|(l, r, _)| (l.to_string(), r.to_string()))
        .collect()
}

/// `GGUFLlamaConverter` (non-legacy `LlamaConverter`): BPE with byte fallback over the
/// SentencePiece vocabulary, `Metaspace` pre-tokenizer, no normalizer.
fn llama_tokenizer(vocab: &GgufVocab, path: &Path) -> Result<tokenizers::Tokenizer, Error> {
    let merges = match (&vocab.merges, &vocab.scores) {
        (Some(m), _) => parse_merges(m, path)?,
        (None, Some(scores)) if scores.len() == vocab.tokens.len() => {
            merges_from_scores(&vocab.tokens, scores)
        }
        (None, Some(scores)) => {
            return Err(gguf_err(
                path,
                format!("{} scores for {} tokens", scores.len(), vocab.tokens.len()),
            ));
        }
        (None, None) => {
            return Err(gguf_err(
                path,
                "a llama tokenizer needs tokenizer.ggml.scores or merges",
            ));
        }
    };
    let bpe_vocab: Vocab = vocab
        .tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let mut builder = BPE::builder()
        .vocab_and_merges(bpe_vocab, merges)
        .fuse_unk(true)
        .byte_fallback(true);
    if let Some(unk) = vocab.unk_id.and_then(|id| vocab.tokens.get(id as usize)) {
        builder = builder.unk_token(unk.clone());
    }
    let bpe = builder
        .build()
        .map_err(|e| gguf_err(path, format!("cannot build BPE: {e}")))?;
    let mut tok = tokenizers::Tokenizer::new(bpe);

    let mut special: Vec<AddedToken> = Vec::new();
    match &vocab.token_types {
        Some(types) => {
            for (t, &kind) in vocab.tokens.iter().zip(types) {
                if kind == TOKEN_TYPE_CONTROL {
                    special.push(AddedToken::from(t.clone(), true));
                }
            }
        }
        None => {
            for id in [vocab.unk_id, vocab.bos_id, vocab.eos_id]
                .into_iter()
                .flatten()
            {
                if let Some(t) = vocab.tokens.get(id as usize) {
                    special.push(AddedToken::from(t.clone(), true));
                }
            }
        }
    }
    push_named_specials(vocab, &mut special);
    tok.add_special_tokens(&special);

    let add_prefix_space = vocab.add_space_prefix.unwrap_or(true);
    let scheme = if add_prefix_space {
        PrependScheme::First
    } else {
        PrependScheme::Never
    };
    tok.with_pre_tokenizer(Some(Metaspace::new('▁', scheme, false)));
    let replace = Replace::new("▁", " ").map_err(|e| gguf_err(path, e.to_string()))?;
    let mut decoders: Vec<DecoderWrapper> = vec![
        ByteFallback::new().into(),
        Fuse::new().into(),
        replace.into(),
    ];
    if add_prefix_space {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    tok.with_decoder(Some(DecoderSequence::new(decoders)));
    if let Some(processor) = special_template(vocab, true, path)? {
        tok.with_post_processor(Some(processor));
    }
    Ok(tok)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|t| t.to_string()).collect()
    }

    /// A byte-level vocabulary: the 256 byte chars, then merged tokens.
    fn tiny_gpt2() -> GgufVocab {
        let mut tokens: Vec<String> = vec!["<|endoftext|>".into(), "<|im_start|>".into()];
        tokens.extend(bytes_to_unicode().iter().map(|c| c.to_string()));
        tokens.extend(s(&[
            "he", "ll", "hell", "hello", "Ġw", "Ġwor", "Ġworld", "or", "ld",
        ]));
        let mut types = vec![3, 3];
        types.resize(tokens.len(), 1);
        GgufVocab {
            model: "gpt2".into(),
            pre: Some("smollm".into()),
            tokens,
            token_types: Some(types),
            merges: Some(s(&[
                "h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld",
            ])),
            bos_id: Some(1),
            eos_id: Some(0),
            ..Default::default()
        }
    }

    #[test]
    fn byte_table_is_gpt2() {
        let t = bytes_to_unicode();
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[b'a' as usize], 'a');
        assert_eq!(t.iter().collect::<HashSet<_>>().len(), 256);
    }

    #[test]
    fn gpt2_encodes_merges_specials_and_round_trips() {
        let tok = Tokenizer::from_gguf_vocab(&tiny_gpt2(), "tiny.gguf").unwrap();
        let hello = tok.token_id("hello").unwrap();
        let world = tok.token_id("Ġworld").unwrap();
        assert_eq!(tok.encode("hello world", true).unwrap(), vec![hello, world]);
        let ids = tok.encode("<|im_start|>hello world!", false).unwrap();
        assert_eq!(ids[..3], [1, hello, world]);
        assert_eq!(tok.decode(&ids, false).unwrap(), "<|im_start|>hello world!");
        assert_eq!(tok.decode(&ids, true).unwrap(), "hello world!");
        assert_eq!(tok.vocab_size(), 2 + 256 + 9);
    }

    #[test]
    fn gpt2_add_bos_prepends() {
        let v = GgufVocab {
            add_bos: Some(true),
            ..tiny_gpt2()
        };
        let tok = Tokenizer::from_gguf_vocab(&v, "tiny.gguf").unwrap();
        assert_eq!(
            tok.encode("hello", true).unwrap(),
            vec![1, tok.token_id("hello").unwrap()]
        );
        assert_eq!(
            tok.encode("hello", false).unwrap(),
            vec![tok.token_id("hello").unwrap()]
        );
    }

    #[test]
    fn llama3_split_differs_from_gpt2() {
        // GPT-2 keeps "123456" whole; Llama-3's regex cuts digits in threes.
        let v = GgufVocab {
            pre: Some("llama-bpe".into()),
            ..tiny_gpt2()
        };
        let tok = Tokenizer::from_gguf_vocab(&v, "tiny.gguf").unwrap();
        let offsets = tok.encode_with_offsets("123456", false).unwrap().offsets;
        assert_eq!(offsets.len(), 6);
        assert!(pre_tokenizer_split("smollm").is_none());
        assert!(pre_tokenizer_split("llama-bpe").is_some());
    }

    /// A SentencePiece vocabulary: unk, bos, eos, 256 byte-fallback tokens, pieces with scores.
    fn tiny_llama() -> GgufVocab {
        let mut tokens = s(&["<unk>", "<s>", "</s>"]);
        let mut types = vec![2, 3, 3];
        let mut scores = vec![0.0, 0.0, 0.0];
        for b in 0..=255u8 {
            tokens.push(format!("<0x{b:02X}>"));
            types.push(6);
            scores.push(0.0);
        }
        for (t, sc) in [
            ("▁", -1.0),
            ("h", -2.0),
            ("e", -2.0),
            ("l", -2.0),
            ("o", -2.0),
        ] {
            tokens.push(t.into());
            types.push(1);
            scores.push(sc);
        }
        for (t, sc) in [
            ("▁h", -3.0),
            ("ll", -4.0),
            ("▁he", -5.0),
            ("▁hell", -6.0),
            ("▁hello", -7.0),
        ] {
            tokens.push(t.into());
            types.push(1);
            scores.push(sc);
        }
        GgufVocab {
            model: "llama".into(),
            tokens,
            scores: Some(scores),
            token_types: Some(types),
            bos_id: Some(1),
            eos_id: Some(2),
            unk_id: Some(0),
            ..Default::default()
        }
    }

    #[test]
    fn llama_merges_byte_fallback_prefix_space() {
        let tok = Tokenizer::from_gguf_vocab(&tiny_llama(), "tiny.gguf").unwrap();
        let hello = tok.token_id("▁hello").unwrap();
        // bos by default, "▁" prepended, "é" (C3 A9) through byte fallback.
        let ids = tok.encode("hello é", true).unwrap();
        let sp = tok.token_id("▁").unwrap();
        assert_eq!(ids, vec![1, hello, sp, 3 + 0xC3, 3 + 0xA9]);
        assert_eq!(tok.decode(&ids, true).unwrap(), "hello é");
        assert_eq!(tok.encode("</s>", false).unwrap(), vec![2]);
    }

    #[test]
    fn derived_merges_follow_scores() {
        let v = tiny_llama();
        let merges = merges_from_scores(&v.tokens, v.scores.as_ref().unwrap());
        // "▁h" (score -3) merges before "ll" (-4).
        assert_eq!(merges[0], ("▁".to_string(), "h".to_string()));
        assert_eq!(merges[1], ("l".to_string(), "l".to_string()));
    }

    #[test]
    fn stream_decoder_holds_split_characters() {
        let tok = Tokenizer::from_gguf_vocab(&tiny_gpt2(), "tiny.gguf").unwrap();
        let text = "hello 🙂 world é";
        let ids = tok.encode(text, false).unwrap();
        let mut stream = tok.stream_decoder(false);
        let mut out = String::new();
        for &id in &ids {
            let piece = stream.step(id).unwrap();
            assert!(!piece.contains('\u{FFFD}'), "{piece:?}");
            out.push_str(&piece);
        }
        out.push_str(&stream.flush().unwrap());
        assert_eq!(out, text);

        let tok = Tokenizer::from_gguf_vocab(&tiny_llama(), "tiny.gguf").unwrap();
        let ids = tok.encode("hello é hello", false).unwrap();
        let mut stream = tok.stream_decoder(true);
        let pieces: Vec<String> = ids.iter().map(|&id| stream.step(id).unwrap()).collect();
        assert_eq!(pieces.concat(), "hello é hello");
    }

    #[test]
    fn bad_metadata_names_the_file() {
        let v = GgufVocab {
            bos_id: Some(10_000),
            ..tiny_gpt2()
        };
        let e = Tokenizer::from_gguf_vocab(&v, "/models/x.gguf")
            .unwrap_err()
            .to_string();
        assert!(e.contains("/models/x.gguf") && e.contains("bos"), "{e}");
        let v = GgufVocab {
            model: "rwkv".into(),
            ..tiny_gpt2()
        };
        assert!(Tokenizer::from_gguf_vocab(&v, "x.gguf").is_err());
        let e = Tokenizer::from_file("/nonexistent/tokenizer.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/tokenizer.json"), "{e}");
    }
}
