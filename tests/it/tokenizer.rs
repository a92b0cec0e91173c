//! Tokenizer and chat template against `../shared/fixtures/smollm2` (made by transformers loading
//! `SmolLM2-135M-Instruct.Q4_1.gguf`):
//! - `tokenizer.json` there is *not* a Hugging Face tokenizer file: it holds six strings and their
//!   ids from `AutoTokenizer.from_pretrained(gguf_file=...)` ("the six tokenizer encodings");
//! - `reference.safetensors` holds `input_ids` (i64 `[1, 22]`) of README.json's `text` and
//!   `greedy_ids` (i64 `[24]`): `greedy_prompt` + 12 generated tokens;
//! - README.json's `text` / `greedy_prompt` are plain ChatML *without* SmolLM2's default system
//!   message (its own template inserts one when the chat has none).
//!
//! The vocabulary itself exists only inside the GGUF, so the encoding tests open the default model
//! (`io::model_cache::default_model_path()`: `$WGTUNE_MODEL`, else the cache, else fetched once
//! with pip), read its `tokenizer.ggml.*` metadata with `io::gguf` and build the tokenizer with
//! `Tokenizer::from_gguf_file`; they skip with a visible SKIPPED line only when the model is not
//! cached and pip is absent. The template tests need no GGUF.

use crate::common;

use std::path::PathBuf;

use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use wgtune::data::template::{ChatTemplate, Message, assistant_token_mask};
use wgtune::data::tokenizer::Tokenizer;
use wgtune::io::gguf::{GgufFile, GgufTokenizer};

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

/// The default model's tokenizer and its `tokenizer.ggml.*` metadata.
fn smollm2_tokenizer() -> Option<(Tokenizer, GgufTokenizer)> {
    let file = GgufFile::open(common::default_model(
        "; the GGUF tokenizer is not checked",
    )?)
    .unwrap();
    let tok = Tokenizer::from_gguf_file(&file).unwrap();
    Some((tok, file.tokenizer().unwrap()))
}

// ----------------------------------------------------------------------------------------------
// Tests
// ----------------------------------------------------------------------------------------------

/// fixtures/smollm2/tokenizer.json (six encodings) and reference.safetensors (`input_ids`,
/// `greedy_ids`): the GGUF-built tokenizer reproduces transformers' ids exactly and decodes back.
#[test]
fn smollm2_gguf_tokenizer_reproduces_transformers() {
    let Some((tok, meta)) = smollm2_tokenizer() else {
        return;
    };
    assert_eq!(
        (meta.model.as_str(), meta.pre.as_deref()),
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
fn smollm2_from_file_matches_gguf_tokenizer() {
    let Some((tok, _)) = smollm2_tokenizer() else {
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
    let Some((tok, meta)) = smollm2_tokenizer() else {
        return;
    };
    assert_eq!(meta.chat_template.as_deref(), Some(SMOLLM2_TEMPLATE));
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
