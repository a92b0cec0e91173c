//! Unit tests of [`Tokenizer`](super::Tokenizer) on tiny GGUF vocabularies (byte-level BPE and
//! SentencePiece) and of its file loaders.

use super::gguf::{bytes_to_unicode, pre_tokenizer_split};
use super::*;
use crate::io::gguf::write::to_bytes;
use crate::io::gguf::{GgufValue, GgufValueType};

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|t| t.to_string()).collect()
}

/// A byte-level vocabulary: the 256 byte chars, then merged tokens.
pub(super) fn tiny_gpt2() -> GgufTokenizer {
    let mut tokens: Vec<String> = vec!["<|endoftext|>".into(), "<|im_start|>".into()];
    tokens.extend(bytes_to_unicode().iter().map(|c| c.to_string()));
    tokens.extend(s(&[
        "he", "ll", "hell", "hello", "Ġw", "Ġwor", "Ġworld", "or", "ld",
    ]));
    let mut types = vec![3, 3];
    types.resize(tokens.len(), 1);
    GgufTokenizer {
        model: "gpt2".into(),
        pre: Some("smollm".into()),
        tokens,
        token_types: Some(types),
        merges: s(&[
            "h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld",
        ]),
        bos_token_id: Some(1),
        eos_token_id: Some(0),
        ..Default::default()
    }
}

/// A SentencePiece vocabulary: unk, bos, eos, 256 byte-fallback tokens, pieces with scores.
pub(super) fn tiny_llama() -> GgufTokenizer {
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
    GgufTokenizer {
        model: "llama".into(),
        tokens,
        scores: Some(scores),
        token_types: Some(types),
        bos_token_id: Some(1),
        eos_token_id: Some(2),
        unknown_token_id: Some(0),
        ..Default::default()
    }
}

#[test]
fn gpt2_encodes_merges_specials_and_round_trips() {
    let tok = Tokenizer::from_gguf(&tiny_gpt2(), "tiny.gguf").unwrap();
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
    let v = GgufTokenizer {
        add_bos_token: Some(true),
        ..tiny_gpt2()
    };
    let tok = Tokenizer::from_gguf(&v, "tiny.gguf").unwrap();
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
    let v = GgufTokenizer {
        pre: Some("llama-bpe".into()),
        ..tiny_gpt2()
    };
    let tok = Tokenizer::from_gguf(&v, "tiny.gguf").unwrap();
    let offsets = tok.encode_with_offsets("123456", false).unwrap().offsets;
    assert_eq!(offsets.len(), 6);
    assert!(pre_tokenizer_split("smollm").is_none());
    assert!(pre_tokenizer_split("llama-bpe").is_some());
}

#[test]
fn llama_merges_byte_fallback_prefix_space() {
    let tok = Tokenizer::from_gguf(&tiny_llama(), "tiny.gguf").unwrap();
    let hello = tok.token_id("▁hello").unwrap();
    // bos by default, "▁" prepended, "é" (C3 A9) through byte fallback.
    let ids = tok.encode("hello é", true).unwrap();
    let sp = tok.token_id("▁").unwrap();
    assert_eq!(ids, vec![1, hello, sp, 3 + 0xC3, 3 + 0xA9]);
    assert_eq!(tok.decode(&ids, true).unwrap(), "hello é");
    assert_eq!(tok.encode("</s>", false).unwrap(), vec![2]);
}

#[test]
fn bad_metadata_names_the_file() {
    let v = GgufTokenizer {
        bos_token_id: Some(10_000),
        ..tiny_gpt2()
    };
    let e = Tokenizer::from_gguf(&v, "/models/x.gguf")
        .unwrap_err()
        .to_string();
    assert!(e.contains("/models/x.gguf") && e.contains("bos"), "{e}");
    let v = GgufTokenizer {
        model: "rwkv".into(),
        ..tiny_gpt2()
    };
    assert!(Tokenizer::from_gguf(&v, "x.gguf").is_err());
    // No merges: a gpt2 vocabulary cannot be built.
    let v = GgufTokenizer {
        merges: Vec::new(),
        ..tiny_gpt2()
    };
    let e = Tokenizer::from_gguf(&v, "x.gguf").unwrap_err().to_string();
    assert!(e.contains("merges"), "{e}");
}

#[test]
fn stream_decoder_holds_split_characters() {
    let tok = Tokenizer::from_gguf(&tiny_gpt2(), "tiny.gguf").unwrap();
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

    let tok = Tokenizer::from_gguf(&tiny_llama(), "tiny.gguf").unwrap();
    let ids = tok.encode("hello é hello", false).unwrap();
    let mut stream = tok.stream_decoder(true);
    let pieces: Vec<String> = ids.iter().map(|&id| stream.step(id).unwrap()).collect();
    assert_eq!(pieces.concat(), "hello é hello");
}

/// A `tokenizer.json` cut anywhere is an error naming the file, never a panic (the tokenizers
/// crate panics on a syntax error inside its decoder object, so the cuts go through that one
/// byte by byte).
#[test]
fn truncated_tokenizer_json_is_an_error() {
    // A real tokenizer.json: the tiny GPT-2 vocabulary as the tokenizers crate writes it.
    let tok = Tokenizer::from_gguf(&tiny_gpt2(), "tiny.gguf").unwrap();
    let json = tok.inner().to_string(false).unwrap().into_bytes();
    Tokenizer::from_bytes(std::path::Path::new("whole/tokenizer.json"), &json, None).unwrap();
    let decoder = json.windows(9).position(|w| w == b"\"decoder\"").unwrap();
    let cuts = (0..json.len())
        .step_by(json.len().div_ceil(200))
        .chain(decoder..decoder + 120);
    for cut in cuts {
        let r = std::panic::catch_unwind(|| {
            Tokenizer::from_bytes(
                std::path::Path::new("cut/tokenizer.json"),
                &json[..cut],
                None,
            )
        });
        let e = r
            .unwrap_or_else(|_| panic!("a cut at {cut} panicked"))
            .err()
            .unwrap_or_else(|| panic!("a cut at {cut} loaded"))
            .to_string();
        assert!(
            e.contains("cut/tokenizer.json") && e.contains("invalid JSON"),
            "{cut}: {e}"
        );
    }
}

#[test]
fn missing_tokenizer_json_names_the_file() {
    let e = Tokenizer::from_file("/nonexistent/tokenizer.json")
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/tokenizer.json"), "{e}");
}

/// `tokenizer.ggml.*` metadata of `gguf`, as llama.cpp writes it.
fn metadata(gguf: &GgufTokenizer) -> Vec<(String, GgufValue)> {
    let strings = |v: &[String]| {
        GgufValue::Array(
            GgufValueType::String,
            v.iter().map(|t| GgufValue::String(t.clone())).collect(),
        )
    };
    let mut meta = vec![
        (
            "tokenizer.ggml.model".into(),
            GgufValue::String(gguf.model.clone()),
        ),
        ("tokenizer.ggml.tokens".into(), strings(&gguf.tokens)),
        ("tokenizer.ggml.merges".into(), strings(&gguf.merges)),
    ];
    if let Some(pre) = &gguf.pre {
        meta.push(("tokenizer.ggml.pre".into(), GgufValue::String(pre.clone())));
    }
    if let Some(types) = &gguf.token_types {
        let types = types.iter().map(|&t| GgufValue::I32(t)).collect();
        meta.push((
            "tokenizer.ggml.token_type".into(),
            GgufValue::Array(GgufValueType::I32, types),
        ));
    }
    for (key, id) in [
        ("bos_token_id", gguf.bos_token_id),
        ("eos_token_id", gguf.eos_token_id),
    ] {
        if let Some(id) = id {
            meta.push((format!("tokenizer.ggml.{key}"), GgufValue::U32(id)));
        }
    }
    meta
}

#[test]
fn from_gguf_file_reads_the_metadata() {
    let v = tiny_gpt2();
    let file = GgufFile::from_bytes("tiny.gguf", to_bytes(3, &metadata(&v), &[], 32)).unwrap();
    assert_eq!(file.tokenizer().unwrap(), v);
    let tok = Tokenizer::from_gguf_file(&file).unwrap();
    let hello = tok.token_id("hello").unwrap();
    assert_eq!(tok.encode("hello", false).unwrap(), vec![hello]);
    assert_eq!((tok.bos_id(), tok.eos_id()), (Some(1), Some(0)));

    // Without tokenizer metadata the error names the file and the key.
    let meta = metadata(&v)[1..].to_vec();
    let file = GgufFile::from_bytes("bare.gguf", to_bytes(3, &meta, &[], 32)).unwrap();
    let e = Tokenizer::from_gguf_file(&file).unwrap_err().to_string();
    assert!(
        e.contains("bare.gguf") && e.contains("tokenizer.ggml.model"),
        "{e}"
    );
}
