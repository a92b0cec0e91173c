//! Rotary position embedding in transformers' rotate-half form (`LlamaRotaryEmbedding`,
//! `apply_rotary_pos_emb`; Su et al., "RoFormer", 2021).
//!
//! Inverse frequencies, `d` = head_dim, `i = 0..d/2` (`modeling_rope_utils.py`):
//! * default: `f_i = θ^(-2i/d)` (computed in f32 as torch does);
//! * linear: `f_i / factor`;
//! * llama3, with `L = original_max_position_embeddings`, wavelength `λ_i = 2π/f_i`:
//!   `λ_i < L/high_freq_factor` keeps `f_i`; `λ_i > L/low_freq_factor` uses `f_i/factor`; in
//!   between `(1-α)·f_i/factor + α·f_i` with `α = (L/λ_i - low_freq_factor)/(high_freq_factor -
//!   low_freq_factor)`.
//!
//! At position `p`: `φ = p·f` (f32), `cos = cos([φ, φ])`, `sin = sin([φ, φ])` (`[d]`), and
//! `rope(x) = x ⊙ cos + rotate_half(x) ⊙ sin` with `rotate_half([x₁, x₂]) = [-x₂, x₁]` (halves of
//! the last axis). The attention scaling of these three types is 1.

use burn::tensor::{Device, Tensor, TensorData};

use super::config::RopeScaling;

/// The rotary frequencies of one model.
#[derive(Clone, Debug, PartialEq)]
pub struct RotaryEmbedding {
    /// `[head_dim / 2]` inverse frequencies `f_i`.
    inv_freq: Vec<f32>,
}

impl RotaryEmbedding {
    /// Frequencies for `head_dim` (even), base `theta`, rescaled by `scaling`.
    pub fn new(head_dim: usize, theta: f64, scaling: RopeScaling) -> Self {
        let theta = theta as f32;
        let d = head_dim as f32;
        let default = (0..head_dim / 2).map(|i| 1.0 / theta.powf((2 * i) as f32 / d));
        let inv_freq = match scaling {
            RopeScaling::Default => default.collect(),
            RopeScaling::Linear { factor } => default.map(|f| f / factor as f32).collect(),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: old_len,
            } => {
                let low_freq_wavelen = old_len / low_freq_factor;
                let high_freq_wavelen = old_len / high_freq_factor;
                default
                    .map(|f| {
                        let f = f64::from(f);
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        let scaled = if wavelen > low_freq_wavelen {
                            f / factor
                        } else {
                            f
                        };
                        let medium = wavelen >= high_freq_wavelen && wavelen <= low_freq_wavelen;
                        if medium {
                            let smooth = (old_len / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            ((1.0 - smooth) * scaled / factor + smooth * scaled) as f32
                        } else {
                            scaled as f32
                        }
                    })
                    .collect()
            }
        };
        RotaryEmbedding { inv_freq }
    }

    /// The inverse frequencies `f_i`, `[head_dim / 2]`.
    pub fn inv_freq(&self) -> &[f32] {
        &self.inv_freq
    }

    /// `cos` and `sin` tables for positions `offset..offset + len`.
    ///
    /// # Shapes
    /// Both `[len, head_dim]`.
    pub fn cos_sin(&self, offset: usize, len: usize, device: &Device) -> (Tensor<2>, Tensor<2>) {
        let half = self.inv_freq.len();
        let d = 2 * half;
        let mut cos = vec![0f32; len * d];
        let mut sin = vec![0f32; len * d];
        for p in 0..len {
            let pos = (offset + p) as f32;
            for (i, f) in self.inv_freq.iter().enumerate() {
                let phi = f64::from(pos * f);
                let (s, c) = (phi.sin() as f32, phi.cos() as f32);
                for j in [i, i + half] {
                    cos[p * d + j] = c;
                    sin[p * d + j] = s;
                }
            }
        }
        (
            Tensor::from_data(TensorData::new(cos, [len, d]), device),
            Tensor::from_data(TensorData::new(sin, [len, d]), device),
        )
    }
}

/// `x ⊙ cos + rotate_half(x) ⊙ sin`.
///
/// # Shapes
/// `x: [b, heads, s, d]`, `cos`, `sin`: `[s, d]` -> `[b, heads, s, d]`.
pub fn apply_rotary(x: Tensor<4>, cos: &Tensor<2>, sin: &Tensor<2>) -> Tensor<4> {
    let d = x.dims()[3];
    let half = d / 2;
    let x1 = x.clone().narrow(3, 0, half); // [b, heads, s, d/2]
    let x2 = x.clone().narrow(3, half, half); // [b, heads, s, d/2]
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3); // [b, heads, s, d]
    x * cos.clone().unsqueeze::<4>() + rotated * sin.clone().unsqueeze::<4>()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The three llama3 bands for head_dim 8, θ 500000, factor 8, low 1, high 4 and a small
    /// L = 16 so that every band occurs; the medium value against the formula in f64.
    #[test]
    fn llama3_bands() {
        let base = RotaryEmbedding::new(8, 500000.0, RopeScaling::Default);
        let r = RotaryEmbedding::new(
            8,
            500000.0,
            RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 16.0,
            },
        );
        for (f, g) in base.inv_freq().iter().zip(r.inv_freq()) {
            let wavelen = 2.0 * std::f32::consts::PI / f;
            if wavelen < 4.0 {
                assert_eq!(f, g);
            } else if wavelen > 16.0 {
                assert!((f / 8.0 - g).abs() <= 1e-7 * f);
            } else {
                assert!(g < f && *g > f / 8.0);
            }
        }
        // f_0 = 1 (λ = 2π, medium band): α = (16/2π - 1)/3.
        let alpha = (16.0 / (2.0 * std::f64::consts::PI) - 1.0) / 3.0;
        let want = (1.0 - alpha) / 8.0 + alpha;
        assert!((f64::from(r.inv_freq()[0]) - want).abs() < 1e-6);
    }

    #[test]
    fn linear_divides() {
        let base = RotaryEmbedding::new(16, 10000.0, RopeScaling::Default);
        let r = RotaryEmbedding::new(16, 10000.0, RopeScaling::Linear { factor: 4.0 });
        for (f, g) in base.inv_freq().iter().zip(r.inv_freq()) {
            assert_eq!(f / 4.0, *g);
        }
    }
}
