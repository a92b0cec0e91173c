//! AdamW and global gradient-norm clipping, written to compute what PyTorch computes.
//!
//! `torch.optim.AdamW` (single-tensor path), per parameter `p` with gradient `g` at step `t ≥ 1`:
//! ```text
//! p ← p·(1 − lr·λ)
//! m ← m + (g − m)·(1 − β₁)                 (lerp)
//! v ← v·β₂ + g²·(1 − β₂)
//! p ← p − (lr / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε)
//! ```
//! Scalars are formed in f64 (as Python does) and applied in f32.
//!
//! `torch.nn.utils.clip_grad_norm_`, as transformers' `max_grad_norm` calls it: one norm over
//! every trainable gradient, `‖g‖ = √Σ‖gᵢ‖²`, then every gradient times `min(1, c/(‖g‖ + 10⁻⁶))`.
//!
//! All tensors here are plain (no autodiff): gradients as `Tensor::grad` returns them, parameter
//! values from `Param::val().inner()`.

use burn::tensor::Tensor;

/// AdamW hyper-parameters (the learning rate comes per step from the schedule).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    /// `β₁`
    pub beta1: f64,
    /// `β₂`
    pub beta2: f64,
    /// `ε`
    pub eps: f64,
    /// Decoupled weight decay `λ`.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

impl AdamWConfig {
    /// `Err` naming the first value (by its `wgtune train` setting) that `torch.optim.AdamW`
    /// refuses: a β outside `[0, 1)`, a negative ε or weight decay; or that cannot work here:
    /// a non-finite value, and ε = 0, which divides zero by zero where a gradient is still zero
    /// (every LoRA `A` at the first step, its `B` starting at zero).
    pub fn validate(&self) -> Result<(), String> {
        let checks = [
            (
                "adam-beta1",
                self.beta1,
                (0.0..1.0).contains(&self.beta1),
                "in [0, 1)",
            ),
            (
                "adam-beta2",
                self.beta2,
                (0.0..1.0).contains(&self.beta2),
                "in [0, 1)",
            ),
            (
                "adam-eps",
                self.eps,
                self.eps > 0.0 && self.eps.is_finite(),
                "positive",
            ),
            (
                "weight-decay",
                self.weight_decay,
                self.weight_decay >= 0.0 && self.weight_decay.is_finite(),
                "zero or positive",
            ),
        ];
        match checks.into_iter().find(|c| !c.2) {
            Some((name, value, _, want)) => Err(format!("{name} = {value}: must be {want}")),
            None => Ok(()),
        }
    }
}

/// AdamW state: the step count and both moments of every parameter (same order as the
/// parameters passed to [`AdamW::step`]).
#[derive(Clone, Debug)]
pub struct AdamW {
    /// Hyper-parameters.
    pub config: AdamWConfig,
    /// Updates done so far (`t` of the last update).
    pub step: u64,
    /// First moments `m`.
    pub m: Vec<Tensor<2>>,
    /// Second moments `v`.
    pub v: Vec<Tensor<2>>,
}

impl AdamW {
    /// Zero moments shaped like `params`.
    pub fn new(config: AdamWConfig, params: &[Tensor<2>]) -> Self {
        let zeros = |p: &Tensor<2>| Tensor::<2>::zeros(p.dims(), &p.device());
        AdamW {
            config,
            step: 0,
            m: params.iter().map(zeros).collect(),
            v: params.iter().map(zeros).collect(),
        }
    }

    /// One update of every parameter with its gradient at learning rate `lr`; returns the new
    /// values.
    pub fn step(&mut self, params: Vec<Tensor<2>>, grads: &[Tensor<2>], lr: f64) -> Vec<Tensor<2>> {
        assert_eq!(params.len(), grads.len(), "one gradient per parameter");
        assert_eq!(
            params.len(),
            self.m.len(),
            "optimizer built for these parameters"
        );
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let step_size = lr / (1.0 - c.beta1.powi(t));
        let bc2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        let decay = 1.0 - lr * c.weight_decay;
        params
            .into_iter()
            .zip(grads)
            .enumerate()
            .map(|(i, (p, g))| {
                let p = if c.weight_decay != 0.0 {
                    p.mul_scalar(decay as f32)
                } else {
                    p
                };
                let m = self.m[i].clone();
                let m = m.clone() + (g.clone() - m).mul_scalar((1.0 - c.beta1) as f32);
                let v = self.v[i].clone().mul_scalar(c.beta2 as f32)
                    + (g.clone() * g.clone()).mul_scalar((1.0 - c.beta2) as f32);
                let denom = v
                    .clone()
                    .sqrt()
                    .div_scalar(bc2_sqrt as f32)
                    .add_scalar(c.eps as f32);
                let p = p - (m.clone() / denom).mul_scalar(step_size as f32);
                self.m[i] = m;
                self.v[i] = v;
                p
            })
            .collect()
    }
}

/// The global L2 norm of `grads`, `√Σ‖gᵢ‖²`, as a `[1]` tensor on their device.
///
/// # Panics
/// When `grads` is empty (a trainer always has at least one adapter tensor).
pub fn global_norm(grads: &[Tensor<2>]) -> Tensor<1> {
    grads
        .iter()
        .map(|g| (g.clone() * g.clone()).sum())
        .reduce(|a, b| a + b)
        .expect("at least one gradient")
        .sqrt()
}

/// Clips `grads` in place to global norm `max_norm` (PyTorch's rule, see the module doc) and
/// returns the norm before clipping, `[1]` on the device: nothing is read back, so a step runs
/// without waiting for the GPU. As in PyTorch the coefficient `min(1, c/(‖g‖ + 10⁻⁶))` is
/// applied on the device even when it is 1. `max_norm <= 0` disables clipping (the norm is still
/// measured, for the logs).
pub fn clip_global_norm(grads: &mut [Tensor<2>], max_norm: f64) -> Tensor<1> {
    let norm = global_norm(grads);
    if max_norm > 0.0 {
        let coef = norm
            .clone()
            .add_scalar(1e-6)
            .recip()
            .mul_scalar(max_norm as f32)
            .clamp_max(1.0)
            .unsqueeze::<2>(); // [1, 1]
        for g in grads.iter_mut() {
            *g = g.clone() * coef.clone();
        }
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    fn cpu() -> Device {
        crate::device::cpu_backend()
    }

    fn t(v: &[f32]) -> Tensor<2> {
        Tensor::from_data(TensorData::new(v.to_vec(), [1, v.len()]), &cpu())
    }

    /// Two steps against values worked out by hand from PyTorch's formulas.
    #[test]
    fn adamw_matches_torch_formula() {
        let cfg = AdamWConfig {
            weight_decay: 0.1,
            ..AdamWConfig::default()
        };
        let p = t(&[1.0, -2.0]);
        let mut opt = AdamW::new(cfg, std::slice::from_ref(&p));
        let g = t(&[0.5, 0.25]);
        let p1 = opt.step(vec![p], std::slice::from_ref(&g), 0.01);
        let got = p1[0].clone().into_data().try_to_vec::<f32>().unwrap();
        // Step 1: m̂ = g, v̂ = g², update = lr·g/(|g| + ε) = lr·sign(g).
        let want = [1.0 * (1.0 - 0.001) - 0.01, -2.0 * (1.0 - 0.001) - 0.01];
        for (a, b) in got.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{got:?} vs {want:?}");
        }
        // Step 2 with the same gradient: m̂ = g and v̂ = g² again.
        let p2 = opt.step(p1, std::slice::from_ref(&g), 0.01);
        let got2 = p2[0].clone().into_data().try_to_vec::<f32>().unwrap();
        for (a, (b, w)) in got2.iter().zip(got.iter().zip(want)) {
            let expect = b * (1.0 - 0.001) - 0.01;
            assert!((a - expect).abs() < 1e-5, "{a} vs {expect} (from {w})");
        }
    }

    #[test]
    fn clipping_is_global() {
        let mut g = vec![t(&[3.0]), t(&[4.0])];
        let norm = clip_global_norm(&mut g, 1.0).into_scalar::<f32>();
        assert!((norm - 5.0).abs() < 1e-6);
        let a = g[0].clone().into_scalar::<f32>();
        let b = g[1].clone().into_scalar::<f32>();
        assert!((a - 0.6).abs() < 1e-5 && (b - 0.8).abs() < 1e-5, "{a} {b}");
        // Below the limit and disabled: untouched.
        let mut g = vec![t(&[0.3]), t(&[0.4])];
        assert!((clip_global_norm(&mut g, 1.0).into_scalar::<f32>() - 0.5).abs() < 1e-6);
        assert!((g[0].clone().into_scalar::<f32>() - 0.3).abs() < 1e-7);
        let mut g = vec![t(&[30.0])];
        clip_global_norm(&mut g, 0.0);
        assert_eq!(g[0].clone().into_scalar::<f32>(), 30.0);
    }
}
