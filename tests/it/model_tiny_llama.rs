//! The LLaMA model against transformers, on burn's CPU backend (reference ops) and on the wgpu
//! device (WGSL kernels; Mesa llvmpipe in CI).
//!
//! Fixture: `../shared/fixtures/tiny-llama` (see its README.json): `model-f32` (a random 2-layer
//! `LlamaForCausalLM`, GQA 4/2 heads), `model-bnb-nf4` (the same saved by bitsandbytes 0.50.2 as
//! NF4 with double quant, blocksize 64) and `reference.safetensors` (`input_ids`, `labels`, and
//! the f32 logits/loss of `model-f32` and of the exact NF4 function, both from transformers).

use crate::common;

use burn::tensor::{Device, Int, Tensor, TensorData};
use common::{cpu, values, wgpu};
use safetensors::SafeTensors;
use wgtune::io::IoError;
use wgtune::model::{self, Llama, LlamaConfig, LoadError, causal_lm_loss, load_hf_dir};
use wgtune::quant::QuantConfig;

/// Logits and loss of the f32 model: both sides compute the same f32 function.
const F32_TOL: f32 = 1e-4;
/// Logits of the NF4 model: the same 4-bit weights; the products differ in summation order.
const NF4_TOL: f32 = 1e-3;

/// `reference.safetensors`.
struct Reference {
    shape: [usize; 2],
    input_ids: Vec<i64>,
    labels: Vec<i64>,
    f32_logits: Vec<f32>,
    f32_loss: f32,
    nf4_logits: Vec<f32>,
    nf4_loss: f32,
}

fn reference() -> Reference {
    let bytes = std::fs::read(common::tiny_llama("reference.safetensors")).expect("read reference");
    let st = SafeTensors::deserialize(&bytes).expect("parse reference");
    let ints = |name: &str| -> Vec<i64> {
        let v = st.tensor(name).expect(name);
        v.data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect()
    };
    let floats = |name: &str| -> Vec<f32> {
        let v = st.tensor(name).expect(name);
        v.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
            .collect()
    };
    let dims = st.tensor("input_ids").expect("input_ids").shape().to_vec();
    Reference {
        shape: [dims[0], dims[1]],
        input_ids: ints("input_ids"),
        labels: ints("labels"),
        f32_logits: floats("f32_logits"),
        f32_loss: floats("f32_loss")[0],
        nf4_logits: floats("nf4_logits"),
        nf4_loss: floats("nf4_loss")[0],
    }
}

fn ints(v: &[i64], shape: [usize; 2], device: &Device) -> Tensor<2, Int> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), device)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let d = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(d.is_finite(), "non-finite difference");
    d
}

/// Logits and loss of `model` on the reference batch.
fn run(model: &Llama, r: &Reference, device: &Device) -> (Vec<f32>, f32) {
    let logits = model.forward(ints(&r.input_ids, r.shape, device), None);
    let loss = causal_lm_loss(logits.clone(), ints(&r.labels, r.shape, device));
    (values(logits), values(loss)[0])
}

/// Loads `dir` with `quant` on `device` and checks logits (and loss) against the reference.
fn check(
    what: &str,
    dir: &str,
    quant: Option<QuantConfig>,
    device: Device,
    (want_logits, want_loss): (&[f32], f32),
    tol: f32,
) {
    let r = reference();
    let model = load_hf_dir(&common::tiny_llama(dir), quant, &device).expect("load");
    let (logits, loss) = run(&model, &r, &device);
    let logit_err = max_abs_diff(&logits, want_logits);
    let loss_err = (loss - want_loss).abs();
    println!(
        "{what}: max |logit diff| {logit_err:.3e}, loss {loss} vs {want_loss} ({loss_err:.3e})"
    );
    assert!(logit_err <= tol, "{what}: logits off by {logit_err}");
    assert!(loss_err <= tol, "{what}: loss off by {loss_err}");
}

fn f32_case(device: Device, name: &str) {
    let r = reference();
    check(
        name,
        "model-f32",
        None,
        device,
        (&r.f32_logits, r.f32_loss),
        F32_TOL,
    );
}

fn nf4_on_load_case(device: Device, name: &str) {
    let r = reference();
    let quant = Some(QuantConfig::default());
    check(
        name,
        "model-f32",
        quant,
        device,
        (&r.nf4_logits, r.nf4_loss),
        NF4_TOL,
    );
}

fn bnb_case(device: Device, name: &str) {
    let r = reference();
    let quant = Some(QuantConfig::default());
    check(
        name,
        "model-bnb-nf4",
        quant,
        device,
        (&r.nf4_logits, r.nf4_loss),
        NF4_TOL,
    );
}

/// (a) `model-f32`, kept f32: transformers' f32 logits and loss within 1e-4.
#[test]
fn f32_model_matches_transformers_cpu() {
    f32_case(cpu(), "f32 / cpu");
}

/// (a) on the wgpu device.
#[test]
fn f32_model_matches_transformers_wgpu() {
    f32_case(wgpu(), "f32 / wgpu");
}

/// (b) `model-f32` quantized on load (NF4, double quant, blocksize 64): the NF4 logits within
/// 1e-3.
#[test]
fn nf4_quantized_on_load_matches_transformers_cpu() {
    nf4_on_load_case(cpu(), "nf4 on load / cpu");
}

/// (b) on the wgpu device.
#[test]
fn nf4_quantized_on_load_matches_transformers_wgpu() {
    nf4_on_load_case(wgpu(), "nf4 on load / wgpu");
}

/// (c) `model-bnb-nf4`, bitsandbytes' own bytes: the NF4 logits within 1e-3.
#[test]
fn bnb_checkpoint_matches_transformers_cpu() {
    bnb_case(cpu(), "bnb nf4 / cpu");
}

/// (c) on the wgpu device.
#[test]
fn bnb_checkpoint_matches_transformers_wgpu() {
    bnb_case(wgpu(), "bnb nf4 / wgpu");
}

/// Token-by-token generation with the KV cache gives the logits of the whole sequence at once
/// (4-bit model from `model-bnb-nf4`, so the one-row qmatmul path runs too).
fn kv_cache_case(device: Device, name: &str) {
    let r = reference();
    let model = load_hf_dir(
        &common::tiny_llama("model-bnb-nf4"),
        Some(QuantConfig::default()),
        &device,
    )
    .expect("load");
    let [b, s] = r.shape;
    let ids = ints(&r.input_ids, r.shape, &device);
    let full = values(model.forward(ids.clone(), None)); // [b, s, v]
    let v = full.len() / (b * s);
    let mut cache = model.new_cache();
    // A 5-token prompt, then one token at a time.
    let prompt = 5;
    let mut steps = vec![model.forward(ids.clone().narrow(1, 0, prompt), Some(&mut cache))];
    for i in prompt..s {
        steps.push(model.forward(ids.clone().narrow(1, i, 1), Some(&mut cache)));
    }
    assert_eq!(cache.offset(), s);
    let cached = values(Tensor::cat(steps, 1)); // [b, s, v]
    assert_eq!(cached.len(), b * s * v);
    let err = max_abs_diff(&cached, &full);
    println!("{name}: KV cache vs full forward max |diff| {err:.3e}");
    assert!(err <= F32_TOL, "{name}: cache off by {err}");
}

#[test]
fn kv_cache_matches_full_forward_cpu() {
    kv_cache_case(cpu(), "kv cache / cpu");
}

#[test]
fn kv_cache_matches_full_forward_wgpu() {
    kv_cache_case(wgpu(), "kv cache / wgpu");
}

/// `load_from_tensors` (the GGUF loader's entry) builds the same model from named tensors.
#[test]
fn load_from_tensors_matches_transformers() {
    let r = reference();
    let dir = common::tiny_llama("model-f32");
    let config = LlamaConfig::from_file(&dir.join("config.json")).expect("config");
    let ckpt = wgtune::io::Checkpoint::open(&dir).expect("open");
    let get = |name: &str| -> Result<(Vec<f32>, Vec<usize>), LoadError> {
        let (view, path) = ckpt.view(name)?;
        Ok((
            wgtune::io::read_f32(&view, path, name)?,
            view.shape().to_vec(),
        ))
    };
    let device = cpu();
    let model = model::load_from_tensors(&config, &dir, get, None, &device).expect("build");
    let (logits, loss) = run(&model, &r, &device);
    assert!(max_abs_diff(&logits, &r.f32_logits) <= F32_TOL);
    assert!((loss - r.f32_loss).abs() <= F32_TOL);
}

/// A directory holding `config` (edited from `model-f32`'s) and a link to its weights.
fn edited_model_dir(edit: impl FnOnce(&mut serde_json::Value)) -> tempfile::TempDir {
    let src = common::tiny_llama("model-f32");
    let text = std::fs::read_to_string(src.join("config.json")).expect("config");
    let mut json: serde_json::Value = serde_json::from_str(&text).expect("json");
    edit(&mut json);
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("config.json"), json.to_string()).expect("write");
    std::fs::copy(
        src.join("model.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .expect("copy");
    dir
}

#[test]
fn unsupported_architecture_is_named() {
    let dir = edited_model_dir(|c| {
        c["architectures"] = serde_json::json!(["Qwen2ForCausalLM"]);
        c["model_type"] = serde_json::json!("qwen2");
    });
    let err = load_hf_dir(dir.path(), None, &cpu()).expect_err("must fail");
    assert!(
        matches!(err, LoadError::UnsupportedArchitecture(_)),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("unsupported architecture Qwen2ForCausalLM"),
        "{err}"
    );
}

#[test]
fn shape_mismatch_names_file_and_tensor() {
    let dir = edited_model_dir(|c| c["intermediate_size"] = serde_json::json!(256));
    let err = load_hf_dir(dir.path(), Some(QuantConfig::default()), &cpu()).expect_err("fail");
    match &err {
        LoadError::Io(IoError::Shape {
            path,
            name,
            expected,
            got,
        }) => {
            assert_eq!(path, &dir.path().join("model.safetensors"));
            assert_eq!(name, "model.layers.0.mlp.gate_proj.weight");
            assert_eq!(
                (expected.as_slice(), got.as_slice()),
                (&[256, 128][..], &[384, 128][..])
            );
        }
        other => panic!("expected a shape error, got {other}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("model.safetensors") && msg.contains("gate_proj"),
        "{msg}"
    );
}

#[test]
fn missing_tensor_names_file_and_tensor() {
    let dir = edited_model_dir(|c| c["num_hidden_layers"] = serde_json::json!(3));
    let err = load_hf_dir(dir.path(), None, &cpu()).expect_err("fail");
    match &err {
        LoadError::Io(IoError::MissingTensor { path, name }) => {
            assert_eq!(path, &dir.path().join("model.safetensors"));
            assert!(name.starts_with("model.layers.2."), "{name}");
        }
        other => panic!("expected a missing-tensor error, got {other}"),
    }
}

#[test]
fn bias_in_config_is_refused() {
    let dir = edited_model_dir(|c| c["attention_bias"] = serde_json::json!(true));
    let err = load_hf_dir(dir.path(), None, &cpu()).expect_err("fail");
    assert!(matches!(err, LoadError::UnsupportedConfig(_)), "{err}");
}
