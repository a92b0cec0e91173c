//! LoRA on the decoder's linear layers: which projections ([`TargetModule`]), with what rank,
//! alpha, dropout and scaling ([`LoraConfig`]), and attaching freshly initialised adapters the way
//! PEFT does ([`attach`]).
//!
//! PEFT's init (`init_lora_weights=True`): `A ~ kaiming_uniform(a=√5)`, which for a `[r, in]`
//! matrix is `U(-1/√in, 1/√in)`, and `B = 0`, so a new adapter leaves the model unchanged.
//! Scaling `s = α/r`, or `α/√r` with rsLoRA.

use std::fmt;
use std::str::FromStr;

use burn::module::Param;
use burn::tensor::{Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::model::{DecoderLayer, Llama, LoraAdapter, QLinear};

/// A projection of a decoder layer that can carry an adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TargetModule {
    /// `self_attn.q_proj`
    Q,
    /// `self_attn.k_proj`
    K,
    /// `self_attn.v_proj`
    V,
    /// `self_attn.o_proj`
    O,
    /// `mlp.gate_proj`
    Gate,
    /// `mlp.up_proj`
    Up,
    /// `mlp.down_proj`
    Down,
}

impl TargetModule {
    /// All seven, in the order the layer computes them (and adapters are initialised).
    pub const ALL: [TargetModule; 7] = [
        TargetModule::Q,
        TargetModule::K,
        TargetModule::V,
        TargetModule::O,
        TargetModule::Gate,
        TargetModule::Up,
        TargetModule::Down,
    ];

    /// The module's own name, as in `target_modules` (`q_proj`, ...).
    pub fn name(self) -> &'static str {
        match self {
            TargetModule::Q => "q_proj",
            TargetModule::K => "k_proj",
            TargetModule::V => "v_proj",
            TargetModule::O => "o_proj",
            TargetModule::Gate => "gate_proj",
            TargetModule::Up => "up_proj",
            TargetModule::Down => "down_proj",
        }
    }

    /// Its path inside a decoder layer (`self_attn.q_proj`, `mlp.down_proj`).
    pub fn path(self) -> &'static str {
        match self {
            TargetModule::Q => "self_attn.q_proj",
            TargetModule::K => "self_attn.k_proj",
            TargetModule::V => "self_attn.v_proj",
            TargetModule::O => "self_attn.o_proj",
            TargetModule::Gate => "mlp.gate_proj",
            TargetModule::Up => "mlp.up_proj",
            TargetModule::Down => "mlp.down_proj",
        }
    }

    /// The layer's linear for this target.
    pub fn linear(self, layer: &DecoderLayer) -> &QLinear {
        match self {
            TargetModule::Q => &layer.self_attn.q_proj,
            TargetModule::K => &layer.self_attn.k_proj,
            TargetModule::V => &layer.self_attn.v_proj,
            TargetModule::O => &layer.self_attn.o_proj,
            TargetModule::Gate => &layer.mlp.gate_proj,
            TargetModule::Up => &layer.mlp.up_proj,
            TargetModule::Down => &layer.mlp.down_proj,
        }
    }

    /// The layer's linear for this target, mutably.
    pub fn linear_mut(self, layer: &mut DecoderLayer) -> &mut QLinear {
        match self {
            TargetModule::Q => &mut layer.self_attn.q_proj,
            TargetModule::K => &mut layer.self_attn.k_proj,
            TargetModule::V => &mut layer.self_attn.v_proj,
            TargetModule::O => &mut layer.self_attn.o_proj,
            TargetModule::Gate => &mut layer.mlp.gate_proj,
            TargetModule::Up => &mut layer.mlp.up_proj,
            TargetModule::Down => &mut layer.mlp.down_proj,
        }
    }

    /// Parses a `--target-modules` list: names separated by commas, or `all-linear` (`all`).
    pub fn parse_list(list: &str) -> Result<Vec<TargetModule>, String> {
        let mut out = Vec::new();
        for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if item == "all-linear" || item == "all" {
                out.extend(TargetModule::ALL);
            } else {
                out.push(item.parse()?);
            }
        }
        out.sort();
        out.dedup();
        if out.is_empty() {
            return Err("no target modules given".to_string());
        }
        Ok(out)
    }
}

impl FromStr for TargetModule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        TargetModule::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| {
                format!(
                    "unknown target module {s:?} (q_proj, k_proj, v_proj, o_proj, gate_proj, \
                     up_proj, down_proj or all-linear)"
                )
            })
    }
}

impl fmt::Display for TargetModule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The hyper-parameters of a LoRA adapter.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraConfig {
    /// Rank `r`.
    pub r: usize,
    /// `α` (`lora_alpha`).
    pub alpha: f32,
    /// Dropout on the adapter's input during training (`lora_dropout`).
    pub dropout: f32,
    /// The adapted projections, sorted.
    pub targets: Vec<TargetModule>,
    /// rsLoRA: scale by `α/√r` instead of `α/r`.
    pub rslora: bool,
}

impl Default for LoraConfig {
    fn default() -> Self {
        LoraConfig {
            r: 16,
            alpha: 32.0,
            dropout: 0.05,
            targets: TargetModule::ALL.to_vec(),
            rslora: false,
        }
    }
}

impl LoraConfig {
    /// `α/r`, or `α/√r` with rsLoRA.
    pub fn scale(&self) -> f32 {
        if self.rslora {
            self.alpha / (self.r as f32).sqrt()
        } else {
            self.alpha / self.r as f32
        }
    }

    /// Checks the values a user can get wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.r == 0 {
            return Err("LoRA rank r must be at least 1".to_string());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!(
                "LoRA dropout must be in [0, 1), got {}",
                self.dropout
            ));
        }
        if !self.alpha.is_finite() {
            return Err(format!("LoRA alpha must be finite, got {}", self.alpha));
        }
        if self.targets.is_empty() {
            return Err("no target modules".to_string());
        }
        Ok(())
    }
}

/// `Err` when `config.r` is above the smaller side of a projection it targets in `model`: `B·A`
/// could not have that rank, so the extra rows and columns would only cost memory (and an
/// absurd `r` would exhaust it). PEFT does not check this; an adapter it wrote still loads.
pub fn check_rank(model: &Llama, config: &LoraConfig) -> Result<(), String> {
    let Some(layer) = model.layers.first() else {
        return Ok(());
    };
    // The targeted projection with the smallest side bounds the rank.
    let tightest = config
        .targets
        .iter()
        .map(|&t| {
            let linear = t.linear(layer);
            (t, linear.out_features(), linear.in_features())
        })
        .min_by_key(|&(_, out, inp)| out.min(inp));
    if let Some((target, out, inp)) = tightest
        && config.r > out.min(inp)
    {
        return Err(format!(
            "LoRA rank r = {} is above {}, the smaller side of {} ([{out}, {inp}]): B·A cannot \
             have a higher rank",
            config.r,
            out.min(inp),
            target.name()
        ));
    }
    Ok(())
}

/// Attaches a new adapter with PEFT's init to every target of every layer, replacing any adapter
/// already there. `A` values come from a generator seeded with `seed`, drawn layer by layer in
/// [`TargetModule::ALL`] order, so the same seed gives the same adapter on every device.
pub fn attach(model: &mut Llama, config: &LoraConfig, seed: u64) {
    let device = model.device();
    let mut rng = StdRng::seed_from_u64(seed);
    for layer in &mut model.layers {
        for target in TargetModule::ALL {
            if !config.targets.contains(&target) {
                continue;
            }
            let linear = target.linear_mut(layer);
            let (out, inp, r) = (linear.out_features(), linear.in_features(), config.r);
            let bound = 1.0 / (inp as f32).sqrt();
            let a: Vec<f32> = (0..r * inp)
                .map(|_| rng.random_range(-bound..bound))
                .collect();
            let b = vec![0f32; out * r];
            linear.adapter = Some(adapter_from_values(
                &a,
                [r, inp],
                &b,
                [out, r],
                config,
                &device,
            ));
        }
    }
}

/// An adapter from host values (`A: [r, in]`, `B: [out, r]`).
pub fn adapter_from_values(
    a: &[f32],
    a_shape: [usize; 2],
    b: &[f32],
    b_shape: [usize; 2],
    config: &LoraConfig,
    device: &burn::tensor::Device,
) -> LoraAdapter {
    let tensor = |v: &[f32], shape: [usize; 2]| {
        Tensor::<2>::from_data(TensorData::new(v.to_vec(), shape), device)
    };
    LoraAdapter {
        a: Param::from_tensor(tensor(a, a_shape)),
        b: Param::from_tensor(tensor(b, b_shape)),
        scale: config.scale(),
        dropout: config.dropout,
        dropout_active: false,
    }
}

/// Turns adapter dropout on (training) or off (evaluation, generation) in every adapter.
pub fn set_dropout_active(model: &mut Llama, active: bool) {
    for layer in &mut model.layers {
        for target in TargetModule::ALL {
            if let Some(ad) = target.linear_mut(layer).adapter.as_mut() {
                ad.dropout_active = active;
            }
        }
    }
}

/// A copy of the model without its LoRA adapters: the base model, for comparing answers with
/// and without an adapter (the frozen weights are shared, not copied).
pub fn without_adapters(model: &Llama) -> Llama {
    let mut base = model.clone();
    for layer in &mut base.layers {
        for target in TargetModule::ALL {
            target.linear_mut(layer).adapter = None;
        }
    }
    base
}

/// Every adapter of the model with its PEFT module prefix
/// (`base_model.model.model.layers.{i}.{path}`), in layer then [`TargetModule::ALL`] order.
pub fn adapters(model: &Llama) -> Vec<(String, &LoraAdapter)> {
    let mut out = Vec::new();
    for (i, layer) in model.layers.iter().enumerate() {
        for target in TargetModule::ALL {
            if let Some(ad) = target.linear(layer).adapter.as_ref() {
                out.push((module_key(i, target), ad));
            }
        }
    }
    out
}

/// PEFT's module prefix of `target` in layer `layer`.
pub fn module_key(layer: usize, target: TargetModule) -> String {
    format!("base_model.model.model.layers.{layer}.{}", target.path())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!(
            TargetModule::parse_list("v_proj, q_proj").unwrap(),
            vec![TargetModule::Q, TargetModule::V]
        );
        assert_eq!(TargetModule::parse_list("all-linear").unwrap().len(), 7);
        assert!(
            TargetModule::parse_list("qq_proj")
                .unwrap_err()
                .contains("qq_proj")
        );
        assert!(TargetModule::parse_list("").is_err());
    }

    #[test]
    fn scaling() {
        let mut c = LoraConfig {
            r: 16,
            alpha: 32.0,
            ..LoraConfig::default()
        };
        assert_eq!(c.scale(), 2.0);
        c.rslora = true;
        assert_eq!(c.scale(), 8.0);
    }
}
