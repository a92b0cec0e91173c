//! The backend extension trait for the quantized and LoRA operations.

use burn::backend::{
    Backend, backend_extension,
    tensor::{FloatTensor, IntTensor},
};

pub use super::layout::{
    MatmulStrategy, QLayout, dequant_shape, lora_shape, qmatmul_shape, qmatmul_t_shape,
};

/// Quantized-weight and LoRA operations, implemented in WGSL for the wgpu runtime
/// ([`burn::backend::wgpu::CubeBackend`]), deferred by the fusion backend, and differentiated by
/// the hand-written backward of `Autodiff<B, C>`.
///
/// A 4-bit weight travels as four tensors (see `shaders/common_4bit.wgsl` for the layout):
/// `packed` (u32 words of nibbles), `absmax_q` (u32 words of u8 absmax codes; double quant only),
/// `scales` (f32 absmax, or nested absmax with double quant) and `tables` (codebook, nested map,
/// offset), with a [`QLayout`].
#[backend_extension(Cube, Fusion, Autodiff)]
pub trait QuantBackend: Backend {
    /// `Y = X * dequant(W)^T` over the last dimension of `x` (`[.., K]` -> `[.., N]`).
    #[fusion(dtype = x, shape = qmatmul_shape(x, layout))]
    fn qmatmul(
        x: FloatTensor<Self>,
        packed: IntTensor<Self>,
        absmax_q: IntTensor<Self>,
        scales: FloatTensor<Self>,
        tables: FloatTensor<Self>,
        layout: QLayout,
        strategy: MatmulStrategy,
    ) -> FloatTensor<Self>;

    /// `dX = dY * dequant(W)` over the last dimension of `dy` (`[.., N]` -> `[.., K]`).
    #[fusion(dtype = dy, shape = qmatmul_t_shape(dy, layout))]
    fn qmatmul_t(
        dy: FloatTensor<Self>,
        packed: IntTensor<Self>,
        absmax_q: IntTensor<Self>,
        scales: FloatTensor<Self>,
        tables: FloatTensor<Self>,
        layout: QLayout,
        strategy: MatmulStrategy,
    ) -> FloatTensor<Self>;

    /// `dequant(W)` as an f32 `[N, K]` tensor.
    #[fusion(dtype = scales, shape = dequant_shape(layout))]
    fn dequantize_4bit(
        packed: IntTensor<Self>,
        absmax_q: IntTensor<Self>,
        scales: FloatTensor<Self>,
        tables: FloatTensor<Self>,
        layout: QLayout,
    ) -> FloatTensor<Self>;

    /// `alpha * op(lhs) * op(rhs)` for 2-D operands, `op` a transpose when its flag is set: every
    /// product of the LoRA forward and backward.
    #[fusion(dtype = lhs, shape = lora_shape(lhs, rhs, trans_lhs, trans_rhs))]
    fn lora_matmul(
        lhs: FloatTensor<Self>,
        rhs: FloatTensor<Self>,
        trans_lhs: bool,
        trans_rhs: bool,
        alpha: f32,
    ) -> FloatTensor<Self>;
}
