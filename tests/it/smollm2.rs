//! SmolLM2-135M-Instruct (the default model, Q4_1 GGUF) against transformers.
//!
//! Fixture: `../shared/fixtures/smollm2` (README.json: `text`, its mean next-token `loss`,
//! `greedy_prompt`; reference.safetensors: `input_ids` of the text, `logits_last8` of its last 8
//! positions, `greedy_ids` = the greedy prompt + the greedy continuation up to `<|im_end|>`), made
//! with transformers loading the same GGUF in float32. The model comes from
//! `default_model_path()`; the tests print a visible SKIPPED line only when it is not cached and
//! pip is absent.
//!
//! Tolerances: transformers dequantizes the same Q4_1/Q8_0 blocks to float32, so both sides
//! compute the same function in f32 and differ only by summation order over 30 layers. Observed
//! (cpu and llvmpipe): loss within 1e-4, logits within 1e-4 absolute on values of magnitude ~20.
//! Asserted: loss 1e-2 (the bound), logits 1e-3 (10x the observed f32 reordering noise,
//! still far below what a wrong weight, permutation or RoPE detail produces: >1e-1).

use crate::common;

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Int, Tensor, TensorData};
use safetensors::SafeTensors;
use wgtune::generate::{GenerateOptions, generate};
use wgtune::model::causal_lm_loss;
use wgtune::pretrained::Pretrained;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/fixtures/smollm2")
        .join(rel)
}

struct Reference {
    input_ids: Vec<i64>,
    logits_last8: Vec<f32>,
    greedy_ids: Vec<u32>,
    loss: f64,
    greedy_prompt: String,
}

fn reference() -> Reference {
    let bytes = std::fs::read(fixture("reference.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let i64s = |k: &str| -> Vec<i64> {
        st.tensor(k)
            .unwrap()
            .data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect()
    };
    let logits_last8 = st
        .tensor("logits_last8")
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let readme: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("README.json")).unwrap()).unwrap();
    Reference {
        input_ids: i64s("input_ids"),
        logits_last8,
        greedy_ids: i64s("greedy_ids").into_iter().map(|x| x as u32).collect(),
        loss: readme["loss"].as_f64().unwrap(),
        greedy_prompt: readme["greedy_prompt"].as_str().unwrap().to_string(),
    }
}

/// Mean loss of the README text and max |logits - reference| over its last 8 positions.
fn loss_and_logits(p: &Pretrained, r: &Reference, device: &Device) -> (f64, f32) {
    let s = r.input_ids.len();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(r.input_ids.clone(), [1, s]), device);
    let logits = p.model.forward(ids.clone(), None); // [1, s, v]
    let v = logits.dims()[2];
    let last8 = common::values(logits.clone().narrow(1, s - 8, 8).reshape([8 * v]));
    let max_diff = last8
        .iter()
        .zip(&r.logits_last8)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    let loss = f64::from(causal_lm_loss(logits, ids).into_scalar::<f32>());
    (loss, max_diff)
}

/// Greedy generation from the README prompt, checked token by token against transformers.
fn greedy(p: &Pretrained, r: &Reference) -> Vec<u32> {
    let tok = p.tokenizer().unwrap();
    let prompt = tok.encode(&r.greedy_prompt, false).unwrap();
    assert_eq!(
        prompt[..],
        r.greedy_ids[..prompt.len()],
        "prompt tokenization"
    );
    let im_end = tok
        .token_id("<|im_end|>")
        .expect("<|im_end|> in the vocabulary");
    let options = GenerateOptions {
        max_new_tokens: 12,
        stop_ids: vec![im_end],
        ..GenerateOptions::default()
    };
    let mut text = String::new();
    let out = generate(&p.model, tok, &prompt, &options, |piece| {
        text.push_str(piece)
    })
    .unwrap();
    println!(
        "greedy: {text:?} ({} tokens, prompt {:.1} tok/s, generation {:.1} tok/s)",
        out.ids.len(),
        out.prompt_tokens_per_s(),
        out.generation_tokens_per_s()
    );
    assert!(out.stopped, "generation should stop at <|im_end|>");
    assert_eq!(text, "The capital of France is Paris.");
    [prompt, out.ids].concat()
}

fn check_device(device: &Device, name: &str) {
    let Some(path) = common::default_model("") else {
        return;
    };
    let r = reference();
    let p = Pretrained::load(&path, None, device).unwrap();
    let (loss, max_diff) = loss_and_logits(&p, &r, device);
    println!(
        "{name}: loss {loss:.6} vs {:.6} (diff {:.2e}); logits_last8 max abs diff {max_diff:.2e}",
        r.loss,
        (loss - r.loss).abs()
    );
    assert!((loss - r.loss).abs() < 1e-2, "loss {loss} vs {}", r.loss);
    assert!(max_diff < 1e-3, "logits max abs diff {max_diff}");
    assert_eq!(greedy(&p, &r), r.greedy_ids, "greedy ids");
}

#[test]
fn cpu_float_weights_match_transformers() {
    check_device(&common::cpu(), "cpu");
}

#[test]
fn wgpu_float_weights_match_transformers() {
    check_device(&common::wgpu(), "wgpu");
}
