//! GGUF tokenizer metadata -> a `tokenizers` pipeline.
//!
//! A GGUF file ships no `tokenizer.json`: llama.cpp stores the vocabulary under `tokenizer.ggml.*`,
//! which [`GgufFile::tokenizer`](crate::io::gguf::GgufFile::tokenizer) reads into a
//! [`GgufTokenizer`]. [`Tokenizer::from_gguf`](super::Tokenizer::from_gguf) rebuilds from it the
//! pipeline that transformers builds for the same file
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
//! llama.cpp does. A missing `add_space_prefix` means `true` for llama and `false` for gpt2, as in
//! transformers.

use std::collections::{HashMap, HashSet};
use std::path::Path;

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

use super::Error;
use crate::io::gguf::GgufTokenizer;

/// llama.cpp's `LLAMA_TOKEN_TYPE_CONTROL`.
const TOKEN_TYPE_CONTROL: i32 = 3;

fn gguf_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Gguf {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The `tokenizers` pipeline of `gguf` (see the module doc), after checking that its special ids
/// and token types fit its vocabulary. `path` is the GGUF file, named in errors.
pub(super) fn build(gguf: &GgufTokenizer, path: &Path) -> Result<tokenizers::Tokenizer, Error> {
    let n = gguf.tokens.len();
    for (what, id) in [
        ("bos", gguf.bos_token_id),
        ("eos", gguf.eos_token_id),
        ("unknown", gguf.unknown_token_id),
        ("padding", gguf.padding_token_id),
    ] {
        if let Some(id) = id.filter(|&id| id as usize >= n) {
            return Err(gguf_err(
                path,
                format!("{what} token id {id} >= {n} tokens"),
            ));
        }
    }
    if let Some(types) = &gguf.token_types
        && types.len() != n
    {
        return Err(gguf_err(
            path,
            format!("{} token types for {n} tokens", types.len()),
        ));
    }
    match gguf.model.as_str() {
        "gpt2" => gpt2_tokenizer(gguf, path),
        "llama" => llama_tokenizer(gguf, path),
        other => Err(gguf_err(
            path,
            format!("tokenizer.ggml.model {other:?} is not supported (gpt2, llama)"),
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// gpt2: byte-level BPE
// ---------------------------------------------------------------------------------------------

/// GPT-2's byte -> printable char table (`bytes_to_unicode` in GPT-2's `encoder.py`).
pub(crate) fn bytes_to_unicode() -> [char; 256] {
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
fn gpt2_tokenizer(gguf: &GgufTokenizer, path: &Path) -> Result<tokenizers::Tokenizer, Error> {
    if gguf.merges.is_empty() {
        return Err(gguf_err(
            path,
            "a gpt2 tokenizer needs tokenizer.ggml.merges",
        ));
    }
    let merges = parse_merges(&gguf.merges, path)?;
    let spelling = bytes_to_unicode();
    let alphabet: HashSet<char> = spelling.iter().copied().collect();
    let is_byte_level = |t: &str| t.chars().all(|c| alphabet.contains(&c));
    // llama.cpp writes tokens in GPT-2's byte-level spelling, but a token whose bytes are not
    // valid UTF-8 comes back raw; the merges name it in byte-level spelling, so respell it.
    let bpe_vocab: Vocab = gguf
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

    let add_prefix_space = gguf.add_space_prefix.unwrap_or(false);
    let pre: PreTokenizerWrapper = match gguf.pre.as_deref().and_then(pre_tokenizer_split) {
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
    if let Some(types) = &gguf.token_types {
        for (t, &kind) in gguf.tokens.iter().zip(types) {
            if kind == TOKEN_TYPE_CONTROL && is_byte_level(t) {
                special.push(AddedToken::from(t.clone(), true));
            }
        }
    }
    push_named_specials(gguf, &mut special);
    tok.add_special_tokens(&special);

    let processor = match special_template(gguf, false, path)? {
        Some(template) => template,
        None => tokenizers::processors::byte_level::ByteLevel::new(true, false, true).into(),
    };
    tok.with_post_processor(Some(processor));
    Ok(tok)
}

/// bos/eos/unk/pad as special tokens (transformers registers them through its special tokens
/// map), after the control tokens; duplicates are ignored by `tokenizers`.
fn push_named_specials(gguf: &GgufTokenizer, special: &mut Vec<AddedToken>) {
    for id in [
        gguf.unknown_token_id,
        gguf.bos_token_id,
        gguf.eos_token_id,
        gguf.padding_token_id,
    ]
    .into_iter()
    .flatten()
    {
        if let Some(t) = gguf.tokens.get(id as usize)
            && !special.iter().any(|s| &s.content == t)
        {
            special.push(AddedToken::from(t.clone(), true));
        }
    }
}

/// The post-processor that adds bos and/or eos, `None` when the file asks for neither.
fn special_template(
    gguf: &GgufTokenizer,
    default_bos: bool,
    path: &Path,
) -> Result<Option<PostProcessorWrapper>, Error> {
    let token = |id: Option<u32>| id.and_then(|id| gguf.tokens.get(id as usize).map(|t| (t, id)));
    let bos = token(gguf.bos_token_id).filter(|_| gguf.add_bos_token.unwrap_or(default_bos));
    let eos = token(gguf.eos_token_id).filter(|_| gguf.add_eos_token.unwrap_or(false));
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
fn llama_tokenizer(gguf: &GgufTokenizer, path: &Path) -> Result<tokenizers::Tokenizer, Error> {
    // Stored merges win; without them (`merges` empty) they are derived from the scores.
    let merges = match (gguf.merges.as_slice(), &gguf.scores) {
        ([_, ..], _) => parse_merges(&gguf.merges, path)?,
        ([], Some(scores)) if scores.len() == gguf.tokens.len() => {
            merges_from_scores(&gguf.tokens, scores)
        }
        ([], Some(scores)) => {
            return Err(gguf_err(
                path,
                format!("{} scores for {} tokens", scores.len(), gguf.tokens.len()),
            ));
        }
        ([], None) => {
            return Err(gguf_err(
                path,
                "a llama tokenizer needs tokenizer.ggml.scores or merges",
            ));
        }
    };
    let bpe_vocab: Vocab = gguf
        .tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let mut builder = BPE::builder()
        .vocab_and_merges(bpe_vocab, merges)
        .fuse_unk(true)
        .byte_fallback(true);
    if let Some(unk) = gguf
        .unknown_token_id
        .and_then(|id| gguf.tokens.get(id as usize))
    {
        builder = builder.unk_token(unk.clone());
    }
    let bpe = builder
        .build()
        .map_err(|e| gguf_err(path, format!("cannot build BPE: {e}")))?;
    let mut tok = tokenizers::Tokenizer::new(bpe);

    let mut special: Vec<AddedToken> = Vec::new();
    match &gguf.token_types {
        Some(types) => {
            for (t, &kind) in gguf.tokens.iter().zip(types) {
                if kind == TOKEN_TYPE_CONTROL {
                    special.push(AddedToken::from(t.clone(), true));
                }
            }
        }
        None => {
            for id in [gguf.unknown_token_id, gguf.bos_token_id, gguf.eos_token_id]
                .into_iter()
                .flatten()
            {
                if let Some(t) = gguf.tokens.get(id as usize) {
                    special.push(AddedToken::from(t.clone(), true));
                }
            }
        }
    }
    push_named_specials(gguf, &mut special);
    tok.add_special_tokens(&special);

    let add_prefix_space = gguf.add_space_prefix.unwrap_or(true);
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
    if let Some(processor) = special_template(gguf, true, path)? {
        tok.with_post_processor(Some(processor));
    }
    Ok(tok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::tokenizer::tests::tiny_llama;

    #[test]
    fn byte_table_is_gpt2() {
        let t = bytes_to_unicode();
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[b'a' as usize], 'a');
        assert_eq!(t.iter().collect::<HashSet<_>>().len(), 256);
    }

    #[test]
    fn derived_merges_follow_scores() {
        let v = tiny_llama();
        let merges = merges_from_scores(&v.tokens, v.scores.as_ref().unwrap());
        // "▁h" (score -3) merges before "ll" (-4).
        assert_eq!(merges[0], ("▁".to_string(), "h".to_string()));
        assert_eq!(merges[1], ("l".to_string(), "l".to_string()));
    }
}
