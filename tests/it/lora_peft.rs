//! LoRA against PEFT on the tiny LLaMA (`../shared/fixtures/tiny-llama`, see its README.json):
//! logits and every LoRA gradient of `adapter-init` on the NF4 model, and 10 AdamW steps from it.
//! The references are the exact QLoRA function in float32 (PEFT over dequantized NF4 weights).
//!
//! Tolerances (fixtures/README.md): logits 1e-3 absolute (the same 4-bit weights; products sum
//! in another order); gradients 1e-4 of each gradient's norm; the per-step loss 1e-3 and the
//! adapter after 10 steps 1e-3 of each tensor's norm (AdamW divides by `√v`, which amplifies
//! float noise on small gradients, so the trajectory gets the looser bound).
//! The WGSL path runs on the wgpu device (llvmpipe in CI); the CPU reference path as well.

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::{Device, Int, Tensor, TensorData};
use common::{cpu, values, wgpu};
use safetensors::SafeTensors;
use wgtune::model::{Llama, causal_lm_loss, load_hf_dir};
use wgtune::peft::AdapterFile;
use wgtune::quant::QuantConfig;
use wgtune::train::step::{DeviceBatch, micro_step, param_values, params_mut};
use wgtune::train::{AdamW, AdamWConfig};

/// Tensors by name: shape and raw bytes.
type Tensors = BTreeMap<String, (Vec<usize>, Vec<u8>)>;

fn read_all(path: &Path) -> Tensors {
    let bytes = std::fs::read(path).expect("read fixture");
    let st = SafeTensors::deserialize(&bytes).expect("parse fixture");
    st.tensors()
        .into_iter()
        .map(|(k, v)| (k, (v.shape().to_vec(), v.data().to_vec())))
        .collect()
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect()
}

fn i64s(b: &[u8]) -> Vec<i64> {
    b.chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect()
}

struct Batch {
    shape: [usize; 2],
    ids: Vec<i64>,
    labels: Vec<i64>,
}

fn batch() -> (Batch, Tensors) {
    let r = read_all(&common::tiny_llama("reference.safetensors"));
    let shape = [r["input_ids"].0[0], r["input_ids"].0[1]];
    let b = Batch {
        shape,
        ids: i64s(&r["input_ids"].1),
        labels: i64s(&r["labels"].1),
    };
    (b, r)
}

fn device_batch(b: &Batch, device: &Device) -> DeviceBatch {
    let t = |v: &[i64]| Tensor::<2, Int>::from_data(TensorData::new(v.to_vec(), b.shape), device);
    DeviceBatch {
        input_ids: t(&b.ids),
        labels: t(&b.labels),
    }
}

/// The NF4 model with `adapter-init` on `device` (an autodiff device).
fn model_with_adapter(device: &Device) -> Llama {
    let mut model = load_hf_dir(
        &common::tiny_llama("model-bnb-nf4"),
        Some(QuantConfig::default()),
        device,
    )
    .expect("load model");
    AdapterFile::read(&common::tiny_llama("adapter-init"))
        .expect("read adapter")
        .apply(&mut model)
        .expect("apply adapter");
    model
}

fn norm(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

fn rel_norm_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let d: Vec<f32> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    norm(&d) / norm(b).max(f32::MIN_POSITIVE)
}

fn logits_case(device: Device, name: &str) {
    let (b, r) = batch();
    let model = model_with_adapter(&device);
    let db = device_batch(&b, &device);
    let logits = model.forward(db.input_ids.clone(), None);
    let loss = values(causal_lm_loss(logits.clone(), db.labels))[0];
    let want = f32s(&r["lora_logits"].1);
    let got = values(logits);
    let err = got
        .iter()
        .zip(&want)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    let want_loss = f32s(&r["lora_loss"].1)[0];
    println!("{name}: max |logit diff| {err:.3e}, loss {loss} vs {want_loss}");
    assert!(err <= 1e-3, "{name}: logits off by {err}");
    assert!(
        (loss - want_loss).abs() <= 1e-3,
        "{name}: loss {loss} vs {want_loss}"
    );
}

fn grads_case(device: Device, checkpointing: bool, name: &str) {
    let (b, _) = batch();
    let want = read_all(&common::tiny_llama("lora_grads.safetensors"));
    let model = model_with_adapter(&device.clone().autodiff());
    let db = device_batch(&b, &device.autodiff());
    let targets = b
        .labels
        .chunks(b.shape[1])
        .map(|row| row.iter().skip(1).filter(|&&y| y != -100).count())
        .sum::<usize>();
    let out = micro_step(&model, &db, targets as f64, checkpointing, 0);
    let params = param_values(&model);
    assert_eq!(
        params.len(),
        want.len(),
        "{name}: one gradient per LoRA tensor"
    );
    let mut worst = 0f32;
    for ((pname, _), g) in params.iter().zip(out.grads) {
        let (shape, bytes) = want
            .get(&format!("grad.{pname}"))
            .unwrap_or_else(|| panic!("no reference gradient for {pname}"));
        assert_eq!(g.dims().to_vec(), *shape, "{pname}");
        let err = rel_norm_err(&values(g), &f32s(bytes));
        worst = worst.max(err);
        assert!(err <= 1e-4, "{name}: {pname}: relative error {err:.3e}");
    }
    println!("{name}: worst gradient error {worst:.3e} (relative to its norm)");
}

fn adamw_case(device: Device, checkpointing: bool, name: &str) {
    let (b, r) = batch();
    let want_losses = f32s(&r["adamw_losses"].1);
    let ad_device = device.autodiff();
    let mut model = model_with_adapter(&ad_device);
    let db = device_batch(&b, &ad_device);
    let targets = b
        .labels
        .chunks(b.shape[1])
        .map(|row| row.iter().skip(1).filter(|&&y| y != -100).count())
        .sum::<usize>() as f64;
    let init: Vec<Tensor<2>> = param_values(&model)
        .into_iter()
        .map(|(_, t)| t.inner())
        .collect();
    let mut opt = AdamW::new(AdamWConfig::default(), &init);
    let mut worst = 0f32;
    for (step, want) in want_losses.iter().enumerate() {
        let out = micro_step(&model, &db, targets, checkpointing, step as u64);
        let loss = (f64::from(out.loss_sum.into_scalar::<f32>()) / targets) as f32;
        worst = worst.max((loss - want).abs());
        assert!(
            (loss - want).abs() <= 1e-3,
            "{name}: step {step}: loss {loss} vs {want}"
        );
        let values_now: Vec<Tensor<2>> = param_values(&model)
            .into_iter()
            .map(|(_, t)| t.inner())
            .collect();
        let new = opt.step(values_now, &out.grads, 1e-3);
        for ((_, p), v) in params_mut(&mut model).into_iter().zip(new) {
            *p = burn::module::Param::from_tensor(v.autodiff());
        }
    }
    let after = read_all(&common::tiny_llama(
        "adapter-after-10-steps/adapter_model.safetensors",
    ));
    let mut worst_w = 0f32;
    for (pname, t) in param_values(&model) {
        let (_, bytes) = &after[&pname];
        let err = rel_norm_err(&values(t), &f32s(bytes));
        worst_w = worst_w.max(err);
        assert!(err <= 1e-3, "{name}: {pname} after 10 steps: {err:.3e}");
    }
    println!("{name}: worst loss diff {worst:.3e}, worst adapter error {worst_w:.3e}");
}

#[test]
fn lora_logits_wgpu() {
    logits_case(wgpu(), "wgpu");
}

#[test]
fn lora_logits_cpu() {
    logits_case(cpu(), "cpu");
}

#[test]
fn lora_grads_wgpu() {
    grads_case(wgpu(), false, "wgpu");
}

#[test]
fn lora_grads_wgpu_checkpointed() {
    grads_case(wgpu(), true, "wgpu, per-layer checkpointing");
}

#[test]
fn lora_grads_cpu() {
    grads_case(cpu(), false, "cpu");
}

#[test]
fn lora_grads_cpu_checkpointed() {
    grads_case(cpu(), true, "cpu, per-layer checkpointing");
}

#[test]
fn adamw_10_steps_wgpu() {
    adamw_case(wgpu(), true, "wgpu");
}

#[test]
fn adamw_10_steps_cpu() {
    adamw_case(cpu(), false, "cpu");
}
