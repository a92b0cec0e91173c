//! The SwiGLU feed-forward block of LLaMA: `y = down(silu(gate(x)) ⊙ up(x))`, with
//! `silu(z) = z·σ(z)` (Shazeer, "GLU Variants Improve Transformer", 2020).

use burn::module::Module;
use burn::tensor::Tensor;
use burn::tensor::activation::silu;

use super::linear::QLinear;

/// `gate_proj`, `up_proj` (`[intermediate, hidden]`) and `down_proj` (`[hidden, intermediate]`).
#[derive(Module, Debug)]
pub struct Mlp {
    /// `[intermediate, hidden]`
    pub gate_proj: QLinear,
    /// `[intermediate, hidden]`
    pub up_proj: QLinear,
    /// `[hidden, intermediate]`
    pub down_proj: QLinear,
}

impl Mlp {
    /// `down(silu(gate(x)) ⊙ up(x))`.
    ///
    /// # Shapes
    /// `x: [b, s, hidden]` -> `[b, s, hidden]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let gate = silu(self.gate_proj.forward(x.clone())); // [b, s, intermediate]
        let up = self.up_proj.forward(x); // [b, s, intermediate]
        self.down_proj.forward(gate * up)
    }
}
