//! RMSNorm as transformers' `LlamaRMSNorm`: `y = w ⊙ x / √(mean(x²) + ε)` over the last axis,
//! computed in f32.

use burn::module::Module;
use burn::tensor::Tensor;

/// Root-mean-square normalization with a frozen per-channel gain.
#[derive(Module, Debug)]
pub struct RmsNorm {
    /// `[hidden]` gain `w` (frozen: a tensor, not a parameter).
    pub weight: Tensor<1>,
    /// `ε`, from `rms_norm_eps`.
    #[module(skip)]
    pub eps: f64,
}

impl RmsNorm {
    /// A norm with gain `weight` and epsilon `eps`.
    pub fn new(weight: Tensor<1>, eps: f64) -> Self {
        RmsNorm { weight, eps }
    }

    /// `y = w ⊙ x · rsqrt(mean(x²) + ε)`.
    ///
    /// # Shapes
    /// `x: [.., hidden]` -> `[.., hidden]`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let inv_rms = (x.clone().square().mean_dim(D - 1) + self.eps)
            .sqrt()
            .recip(); // [.., 1]
        x * inv_rms * self.weight.clone().unsqueeze::<D>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    #[test]
    fn matches_the_formula() {
        let device = crate::device::cpu_backend();
        let x = Tensor::<2>::from_data(
            TensorData::new(vec![1.0f32, 2.0, 3.0, -4.0], [2, 2]),
            &device,
        );
        let w = Tensor::<1>::from_data(TensorData::new(vec![0.5f32, 2.0], [2]), &device);
        let y = RmsNorm::new(w, 1e-5)
            .forward(x)
            .into_data()
            .try_to_vec::<f32>()
            .expect("f32");
        let r0 = (2.5f32 + 1e-5).sqrt();
        let r1 = (12.5f32 + 1e-5).sqrt();
        let want = [0.5 / r0, 4.0 / r0, 1.5 / r1, -8.0 / r1];
        for (a, b) in y.iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }
}
