//! Tokenizer and chat template against `../shared/fixtures/smollm2` (made by transformers loading
//! `SmolLM2-135M-Instruct.Q4_1.gguf`):
//! - `tokenizer.json` there is *not* a Hugging Face tokenizer file: it holds six strings and their
//!   ids from `AutoTokenizer.from_pretrained(gguf_file=...)` ("the six tokenizer encodings");
//! - `reference.safetensors` holds `input_ids` (i64 `[1, 22]`) of README.json's `text` and
//!   `greedy_ids` (i64 `[24]`): `greedy_prompt` + 12 generated tokens;
//! - README.json's `text` / `greedy_prompt` are plain ChatML *without* SmolLM2's default system
//!   message (its own template inserts one when the chat has none).
//!
//! The vocabulary itself exists only inside the GGUF, so the encoding tests read its
//! `tokenizer.ggml.*` metadata with a minimal reader below and skip (with a note on stderr) when
//! no SmolLM2 GGUF is found in `$WGTUNE_MODEL` (a file or a folder) or under the model cache
//! (`$WGTUNE_CACHE`, default `$HOME/.cache/wgtune/`, where `io::model_cache` puts it). The
//! template tests need no GGUF.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use wgtune::data::template::{ChatTemplate, Message, assistant_token_mask};
use wgtune::data::tokenizer::{GgufVocab, Tokenizer};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures/smollm2");

/// SmolLM2-135M-Instruct's `tokenizer.chat_template` (GGUF metadata), verbatim.
const SMOLLM2_TEMPLATE: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
const SMOLLM2_SYSTEM: &str = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n";

fn fixtures() -> PathBuf {
    let local = PathBuf::from(FIXTURES);
    if local.exists() {
        local
    } else {
        PathBuf::from("/work/shared/fixtures/smollm2")
    }
}

fn readme() -> Value {
    let text = std::fs::read_to_string(fixtures().join("README.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// `(text, ids)` of the six encodings.
fn six_encodings() -> Vec<(String, Vec<u32>)> {
    let text = std::fs::read_to_string(fixtures().join("tokenizer.json")).unwrap();
    let json: Value = serde_json::from_str(&text).unwrap();
    let encodings = json["encodings"].as_array().unwrap();
    assert_eq!(encodings.len(), 6);
    encodings
        .iter()
        .map(|e| {
            let ids = e["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i.as_u64().unwrap() as u32);
            (e["text"].as_str().unwrap().to_string(), ids.collect())
        })
        .collect()
}

/// An i64 tensor of reference.safetensors as u32 ids.
fn reference_ids(name: &str) -> Vec<u32> {
    let bytes = std::fs::read(fixtures().join("reference.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor(name).unwrap();
    assert_eq!(t.dtype(), Dtype::I64, "{name}");
    t.data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32)
        .collect()
}

fn fixture_chat() -> (Vec<Message>, String, String) {
    let readme = readme();
    let messages = vec![
        Message::new("user", "Name three primary colors."),
        Message::new("assistant", "Red, blue and yellow."),
    ];
    let text = readme["text"].as_str().unwrap().to_string();
    let prompt = readme["greedy_prompt"].as_str().unwrap().to_string();
    (messages, text, prompt)
}

// ----------------------------------------------------------------------------------------------
// Minimal GGUF metadata reader (tokenizer keys only; the real parser lives in src/io/gguf.rs).
// ----------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Meta {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Meta>),
}

fn read_u32(r: &mut impl Read) -> u32 {
    let mut b = [0; 4];
    r.read_exact(&mut b).unwrap();
    u32::from_le_bytes(b)
}

fn read_u64(r: &mut impl Read) -> u64 {
    let mut b = [0; 8];
    r.read_exact(&mut b).unwrap();
    u64::from_le_bytes(b)
}

fn read_str(r: &mut impl Read) -> String {
    let n = read_u64(r) as usize;
    let mut b = vec![0; n];
    r.read_exact(&mut b).unwrap();
    String::from_utf8(b).unwrap()
}

fn read_value(r: &mut impl Read, ty: u32) -> Meta {
    let mut b8 = [0u8; 8];
    let mut fixed = |n: usize, r: &mut dyn Read| {
        r.read_exact(&mut b8[..n]).unwrap();
        b8
    };
    match ty {
        0 => Meta::Int(fixed(1, r)[0] as i64),
        1 => Meta::Int(fixed(1, r)[0] as i8 as i64),
        2 => Meta::Int(u16::from_le_bytes(fixed(2, r)[..2].try_into().unwrap()) as i64),
        3 => Meta::Int(i16::from_le_bytes(fixed(2, r)[..2].try_into().unwrap()) as i64),
        4 => Meta::Int(u32::from_le_bytes(fixed(4, r)[..4].try_into().unwrap()) as i64),
        5 => Meta::Int(i32::from_le_bytes(fixed(4, r)[..4].try_into().unwrap()) as i64),
        6 => Meta::Float(f32::from_le_bytes(fixed(4, r)[..4].try_into().unwrap()) as f64),
        7 => Meta::Bool(fixed(1, r)[0] != 0),
        8 => Meta::Str(read_str(r)),
        9 => {
            let item = read_u32(r);
            let n = read_u64(r) as usize;
            Meta::Array((0..n).map(|_| read_value(r, item)).collect())
        }
        10 | 11 => Meta::Int(i64::from_le_bytes(fixed(8, r))),
        12 => Meta::Float(f64::from_le_bytes(fixed(8, r))),
        other => panic!("GGUF value type {other}"),
    }
}

fn read_gguf_metadata(path: &Path) -> Vec<(String, Meta)> {
    let mut f = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    f.seek(SeekFrom::Start(0)).unwrap();
    let mut magic = [0; 4];
    f.read_exact(&mut magic).unwrap();
    assert_eq!(&magic, b"GGUF");
    assert_eq!(read_u32(&mut f), 3);
    let _n_tensors = read_u64(&mut f);
    let n_kv = read_u64(&mut f);
    (0..n_kv)
        .map(|_| {
            let key = read_str(&mut f);
            let ty = read_u32(&mut f);
            (key, read_value(&mut f, ty))
        })
        .collect()
}

/// A `GgufVocab` (and the chat template) from a GGUF's metadata, as `io::gguf` fills it.
fn gguf_vocab(path: &Path) -> (GgufVocab, Option<String>) {
    let meta = read_gguf_metadata(path);
    let get = |k: &str| {
        meta.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    let string = |k: &str| match get(k) {
        Some(Meta::Str(s)) => Some(s),
        _ => None,
    };
    let id = |k: &str| match get(k) {
        Some(Meta::Int(i)) => Some(i as u32),
        _ => None,
    };
    let flag = |k: &str| match get(k) {
        Some(Meta::Bool(b)) => Some(b),
        _ => None,
    };
    let array = |k: &str| match get(k) {
        Some(Meta::Array(a)) => Some(a),
        _ => None,
    };
    let strings = |k: &str| {
        array(k).map(|a| {
            a.into_iter()
                .map(|m| match m {
                    Meta::Str(s) => s,
                    other => panic!("{k}: {other:?}"),
                })
                .collect::<Vec<_>>()
        })
    };
    let vocab = GgufVocab {
        model: string("tokenizer.ggml.model").unwrap(),
        pre: string("tokenizer.ggml.pre"),
        tokens: strings("tokenizer.ggml.tokens").unwrap(),
        scores: array("tokenizer.ggml.scores").map(|a| {
            a.into_iter()
                .map(|m| {
                    if let Meta::Float(x) = m {
                        x as f32
                    } else {
                        0.0
                    }
                })
                .collect()
        }),
        token_types: array("tokenizer.ggml.token_type").map(|a| {
            a.into_iter()
                .map(|m| if let Meta::Int(x) = m { x as i32 } else { 0 })
                .collect()
        }),
        merges: strings("tokenizer.ggml.merges"),
        bos_id: id("tokenizer.ggml.bos_token_id"),
        eos_id: id("tokenizer.ggml.eos_token_id"),
        unk_id: id("tokenizer.ggml.unknown_token_id"),
        pad_id: id("tokenizer.ggml.padding_token_id"),
        add_bos: flag("tokenizer.ggml.add_bos_token"),
        add_eos: flag("tokenizer.ggml.add_eos_token"),
        add_space_prefix: flag("tokenizer.ggml.add_space_prefix"),
    };
    (vocab, string("tokenizer.chat_template"))
}

fn find_gguf(dir: &Path, depth: usize) -> Option<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    let is_smollm = |p: &Path| {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        name.ends_with(".gguf") && name.contains("smollm2")
    };
    entries
        .iter()
        .find(|p| p.is_file() && is_smollm(p))
        .cloned()
        .or_else(|| {
            (depth > 0)
                .then(|| {
                    entries
                        .iter()
                        .filter(|p| p.is_dir())
                        .find_map(|d| find_gguf(d, depth - 1))
                })
                .flatten()
        })
}

/// The SmolLM2 GGUF, if one is on this machine.
fn smollm2_gguf() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("WGTUNE_MODEL").map(PathBuf::from) {
        if p.is_file() && p.extension().is_some_and(|e| e == "gguf") {
            return Some(p);
        }
        if let Some(found) = find_gguf(&p, 3) {
            return Some(found);
        }
    }
    if let Some(cache) = std::env::var_os("WGTUNE_CACHE").filter(|c| !c.is_empty()) {
        return find_gguf(Path::new(&cache), 4);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from)?;
    find_gguf(&home.join(".cache/wgtune"), 4)
}

fn smollm2_tokenizer() -> Option<(Tokenizer, GgufVocab, Option<String>, PathBuf)> {
    let Some(path) = smollm2_gguf() else {
        eprintln!(
            "SKIPPED: no SmolLM2 GGUF in $WGTUNE_MODEL or the wgtune cache; the six fixture \
             encodings are not checked"
        );
        return None;
    };
    let (vocab, template) = gguf_vocab(&path);
    let tok = Tokenizer::from_gguf_vocab(&vocab, &path).unwrap();
    Some((tok, vocab, template, path))
}

// ----------------------------------------------------------------------------------------------
// Tests
// ----------------------------------------------------------------------------------------------

/// fixtures/smollm2/tokenizer.json (six encodings) and reference.safetensors (`input_ids`,
/// `greedy_ids`): the GGUF-built tokenizer reproduces transformers' ids exactly and decodes back.
#[test]
fn smollm2_gguf_vocab_reproduces_transformers() {
    let Some((tok, vocab, _, _)) = smollm2_tokenizer() else {
        return;
    };
    assert_eq!(
        (vocab.model.as_str(), vocab.pre.as_deref()),
        ("gpt2", Some("smollm"))
    );
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!((tok.bos_id(), tok.eos_id()), (Some(1), Some(2)));
    assert_eq!(tok.token_id("<|im_end|>"), Some(2));

    for (text, ids) in six_encodings() {
        // transformers' `tokenizer(text)` with add_special_tokens=True: this GGUF adds no bos.
        assert_eq!(tok.encode(&text, true).unwrap(), ids, "{text:?}");
        assert_eq!(tok.encode(&text, false).unwrap(), ids, "{text:?}");
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
    }

    let (_, text, prompt) = fixture_chat();
    let input_ids = reference_ids("input_ids");
    assert_eq!(tok.encode(&text, false).unwrap(), input_ids);
    assert_eq!(tok.decode(&input_ids, false).unwrap(), text);
    let greedy = reference_ids("greedy_ids");
    let prompt_ids = tok.encode(&prompt, false).unwrap();
    assert_eq!(greedy[..prompt_ids.len()], prompt_ids[..]);
    // "12 greedy tokens" is the budget: generation stopped at <|im_end|> after 8.
    assert!(greedy.len() <= prompt_ids.len() + 12);
    assert_eq!(greedy.last(), tok.eos_id().as_ref());
    assert_eq!(
        tok.decode(&greedy, false).unwrap(),
        readme()["greedy_text"].as_str().unwrap()
    );
}

/// The converter proven without relying on a second loader: the GGUF tokenizer saved as a
/// `tokenizer.json` (+ `tokenizer_config.json`) and read back with `from_file` gives the same ids
/// for the six strings and the chat text.
#[test]
fn smollm2_from_file_matches_gguf_vocab() {
    let Some((tok, _, _, _)) = smollm2_tokenizer() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokenizer.json");
    tok.inner().save(&file, false).unwrap();
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        r#"{"bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>"}, "pad_token": "<|im_end|>"}"#,
    )
    .unwrap();
    let loaded = Tokenizer::from_file(&file).unwrap();
    assert_eq!(
        (loaded.bos_id(), loaded.eos_id(), loaded.pad_id()),
        (Some(1), Some(2), Some(2))
    );
    let (_, text, _) = fixture_chat();
    for (s, ids) in six_encodings()
        .into_iter()
        .chain([(text.clone(), reference_ids("input_ids"))])
    {
        assert_eq!(loaded.encode(&s, false).unwrap(), ids, "{s:?}");
    }
}

/// Streaming decode of the fixture strings (emoji and CJK are split across byte tokens) emits
/// no replacement characters and concatenates to the full decode.
#[test]
fn smollm2_stream_decoding() {
    let Some((tok, ..)) = smollm2_tokenizer() else {
        return;
    };
    for (text, ids) in six_encodings() {
        let mut stream = tok.stream_decoder(false);
        let mut out = String::new();
        for &id in &ids {
            let piece = stream.step(id).unwrap();
            assert!(!piece.contains('\u{FFFD}'), "{text:?}: {piece:?}");
            out.push_str(&piece);
        }
        out.push_str(&stream.flush().unwrap());
        assert_eq!(out, text);
    }
}

/// README.json `text` / `greedy_prompt`: plain ChatML reproduces them exactly; SmolLM2's own
/// template gives the same text after its default system message.
#[test]
fn smollm2_chat_template_renders_fixture_text() {
    let (messages, text, prompt) = fixture_chat();
    let chatml = ChatTemplate::preset("chatml").unwrap();
    assert_eq!(chatml.render(&messages, false).unwrap(), text);
    let user_turn = &text[..text.find("<|im_start|>assistant").unwrap()];
    assert_eq!(chatml.render(&messages[..1], false).unwrap(), user_turn);
    let question = [Message::new("user", "What is the capital of France?")];
    assert_eq!(chatml.render(&question, true).unwrap(), prompt);

    let own = ChatTemplate::new(SMOLLM2_TEMPLATE)
        .unwrap()
        .with_special_tokens("<|im_start|>", "<|im_end|>");
    assert_eq!(own.end_of_turn(), "<|im_end|>");
    assert_eq!(
        own.render(&messages, false).unwrap(),
        format!("{SMOLLM2_SYSTEM}{text}")
    );
    assert_eq!(
        own.render(&question, true).unwrap(),
        format!("{SMOLLM2_SYSTEM}{prompt}")
    );
    let mut with_system = vec![Message::new("system", "Be terse.")];
    with_system.extend(messages.clone());
    let rendered = own.render(&with_system, false).unwrap();
    assert_eq!(
        rendered,
        format!("<|im_start|>system\nBe terse.<|im_end|>\n{text}")
    );

    for template in [&chatml, &own] {
        let r = template.render_with_spans(&messages).unwrap();
        assert_eq!(r.assistant_spans.len(), 1);
        assert_eq!(
            &r.text[r.assistant_spans[0].clone()],
            "Red, blue and yellow.<|im_end|>"
        );
    }
}

/// The template in the GGUF is the one above; its rendering tokenized with offsets gives a loss
/// mask covering exactly the answer and `<|im_end|>`.
#[test]
fn smollm2_gguf_template_and_loss_mask() {
    let Some((tok, _, template, _)) = smollm2_tokenizer() else {
        return;
    };
    assert_eq!(template.as_deref(), Some(SMOLLM2_TEMPLATE));
    let (messages, _, _) = fixture_chat();
    let own = ChatTemplate::new(SMOLLM2_TEMPLATE)
        .unwrap()
        .with_special_tokens(tok.bos_token(), tok.eos_token());
    let r = own.render_with_spans(&messages).unwrap();
    let encoded = tok.encode_with_offsets(&r.text, false).unwrap();
    let mask = assistant_token_mask(&encoded.offsets, &r.assistant_spans);
    let trained: Vec<u32> = encoded
        .ids
        .iter()
        .zip(&mask)
        .filter(|(_, m)| **m)
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(
        tok.decode(&trained, false).unwrap(),
        "Red, blue and yellow.<|im_end|>"
    );
    assert_eq!(*trained.last().unwrap(), 2);
}
