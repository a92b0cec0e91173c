//! One micro-batch's loss and adapter gradients, with or without activation checkpointing.
//!
//! The loss of a micro-batch is its summed next-token cross-entropy divided by `denom`, the
//! target count of the whole optimizer step (all micro-batches of a gradient-accumulation
//! group), so summing micro-batch gradients gives the gradient of one mean over every target
//! token of the step, as transformers does.
//!
//! **Activation checkpointing per decoder layer** (what QLoRA relies on for long sequences):
//! 1. a forward without a graph keeps only each layer's input `hᵢ` (`[b, s, hidden]`);
//! 2. the head's graph from `h_L`, a chunk of positions at a time, gives the loss and `∂L/∂h_L`;
//! 3. from the last layer down, layer `i` runs again from `hᵢ` with a graph, and the backward of
//!    `Σ layerᵢ(hᵢ) ⊙ ∂L/∂hᵢ₊₁` gives `∂L/∂hᵢ` and the gradients of layer `i`'s adapters.
//!
//! At any moment one layer's activations are alive instead of all of them, for one extra
//! forward. The device's generator is seeded per (step, micro-batch, layer) before each layer
//! runs, so dropout masks are the same in both forwards and a resumed run repeats them.

use burn::module::{Module, Param};
use burn::tensor::{Int, Tensor};

use crate::model::{DecoderLayer, Llama, head_loss_and_grad};
use crate::peft::TargetModule;
use crate::peft::lora::module_key;

/// Every trainable tensor of the model (adapter `A` and `B`), by PEFT name, in a fixed order
/// (layer, then [`TargetModule::ALL`], then A before B).
pub fn params_mut(model: &mut Llama) -> Vec<(String, &mut Param<Tensor<2>>)> {
    let mut out = Vec::new();
    for (i, layer) in model.layers.iter_mut().enumerate() {
        let DecoderLayer { self_attn, mlp, .. } = layer;
        let linears = [
            (TargetModule::Q, &mut self_attn.q_proj),
            (TargetModule::K, &mut self_attn.k_proj),
            (TargetModule::V, &mut self_attn.v_proj),
            (TargetModule::O, &mut self_attn.o_proj),
            (TargetModule::Gate, &mut mlp.gate_proj),
            (TargetModule::Up, &mut mlp.up_proj),
            (TargetModule::Down, &mut mlp.down_proj),
        ];
        for (target, linear) in linears {
            if let Some(ad) = linear.adapter.as_mut() {
                let key = module_key(i, target);
                out.push((format!("{key}.lora_A.weight"), &mut ad.a));
                out.push((format!("{key}.lora_B.weight"), &mut ad.b));
            }
        }
    }
    out
}

/// The current values of [`params_mut`]'s tensors (graph handles), same order.
pub fn param_values(model: &Llama) -> Vec<(String, Tensor<2>)> {
    crate::peft::adapters(model)
        .into_iter()
        .flat_map(|(key, ad)| {
            [
                (format!("{key}.lora_A.weight"), ad.a.val()),
                (format!("{key}.lora_B.weight"), ad.b.val()),
            ]
        })
        .collect()
}

/// A micro-batch on the device.
#[derive(Clone, Debug)]
pub struct DeviceBatch {
    /// `[b, s]` token ids.
    pub input_ids: Tensor<2, Int>,
    /// `[b, s]` labels (`-100` masked).
    pub labels: Tensor<2, Int>,
}

/// What one micro-batch produced.
pub struct MicroResult {
    /// Summed cross-entropy over the micro-batch's targets, `[1]`, still on the device (read it
    /// when needed: a browser can only read asynchronously).
    pub loss_sum: Tensor<1>,
    /// Gradient of `loss_sum / denom` for each parameter, in [`param_values`] order (plain
    /// tensors; zeros where a parameter got none).
    pub grads: Vec<Tensor<2>>,
}

/// Mixes a run seed with counters into a device seed (SplitMix64 finaliser).
pub fn mix_seed(seed: u64, a: u64, b: u64) -> u64 {
    let mut z = seed
        ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ b.wrapping_mul(0xBF58_476D_1CE4_E5B9).rotate_left(17);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Loss and gradients of one micro-batch on an autodiff device. `micro_seed` seeds layer `i`'s
/// dropout with `mix_seed(micro_seed, i, 0)`.
pub fn micro_step(
    model: &Llama,
    batch: &DeviceBatch,
    denom: f64,
    checkpointing: bool,
    micro_seed: u64,
) -> MicroResult {
    if checkpointing {
        layerwise(model, batch, denom, micro_seed)
    } else {
        whole(model, batch, denom, micro_seed)
    }
}

fn seed_layer(model: &Llama, micro_seed: u64, layer: usize) {
    model.device().seed(mix_seed(micro_seed, layer as u64, 0));
}

fn grads_of(params: &[(String, Tensor<2>)], grads: &burn::tensor::Gradients) -> Vec<Tensor<2>> {
    params
        .iter()
        .map(|(_, p)| {
            p.grad(grads)
                .unwrap_or_else(|| Tensor::zeros(p.dims(), &p.device().inner()))
        })
        .collect()
}

/// The head's summed loss and `∂(loss / denom)/∂h` from the last layer's output, a chunk of
/// positions at a time ([`head_loss_and_grad`]).
fn head_loss(
    model: &Llama,
    h: Tensor<3>,
    batch: &DeviceBatch,
    denom: f64,
) -> (Tensor<1>, Tensor<3>) {
    let vocab = model.lm_head_t.dims()[1];
    head_loss_and_grad(h, batch.labels.clone(), denom, vocab, |x| model.head(x))
}

/// One graph over the layers; the head in chunks, its gradient carried on by
/// `Σ h ⊙ ∂L/∂h`.
fn whole(model: &Llama, batch: &DeviceBatch, denom: f64, micro_seed: u64) -> MicroResult {
    let [_, s] = batch.input_ids.dims();
    let (cos, sin, mask) = model.positions(s);
    let mut h = model.embed(batch.input_ids.clone()); // [b, s, hidden]
    for (i, layer) in model.layers.iter().enumerate() {
        seed_layer(model, micro_seed, i);
        h = layer.forward(h, &cos, &sin, mask.as_ref(), None);
    }
    let (loss_sum, d) = head_loss(model, h.clone(), batch, denom);
    let grads = (h * d.autodiff()).sum().backward();
    let params = param_values(model);
    MicroResult {
        loss_sum,
        grads: grads_of(&params, &grads),
    }
}

/// Per-layer recomputation (see the module doc).
fn layerwise(model: &Llama, batch: &DeviceBatch, denom: f64, micro_seed: u64) -> MicroResult {
    let [_, s] = batch.input_ids.dims();
    let (cos, sin, mask) = model.positions(s);
    // 1. Forward without a graph, keeping each layer's input.
    let mut inputs = Vec::with_capacity(model.layers.len() + 1);
    inputs.push(model.embed(batch.input_ids.clone()).detach()); // [b, s, hidden]
    for (i, layer) in model.layers.iter().enumerate() {
        seed_layer(model, micro_seed, i);
        let frozen = layer.clone().no_grad();
        let x = inputs[i].clone();
        inputs.push(frozen.forward(x, &cos, &sin, mask.as_ref(), None).detach());
    }
    // 2. The head.
    let params = param_values(model);
    let mut grads: Vec<Option<Tensor<2>>> = vec![None; params.len()];
    let h_last = inputs.pop().expect("layer outputs");
    let (loss_sum, mut d) = head_loss(model, h_last, batch, denom); // d: [b, s, hidden]
    // 3. Each layer again, last to first.
    for (i, layer) in model.layers.iter().enumerate().rev() {
        seed_layer(model, micro_seed, i);
        let x = inputs.pop().expect("layer input");
        let x = if i > 0 { x.require_grad() } else { x };
        let y = layer.forward(x.clone(), &cos, &sin, mask.as_ref(), None);
        let g = (y * d.clone().autodiff()).sum().backward();
        // This layer's parameters, found by their name's prefix.
        let prefix = format!("base_model.model.model.layers.{i}.");
        for (j, (name, p)) in params.iter().enumerate() {
            if name.starts_with(&prefix) {
                grads[j] = p.grad(&g);
            }
        }
        if i > 0 {
            d = x.grad(&g).expect("a layer input has a gradient");
        }
    }
    MicroResult {
        loss_sum,
        grads: grads
            .into_iter()
            .zip(&params)
            .map(|(g, (_, p))| g.unwrap_or_else(|| Tensor::zeros(p.dims(), &p.device().inner())))
            .collect(),
    }
}
