//! Quantized and LoRA operations on burn tensors.
//!
//! One extension trait ([`QuantBackend`]) with a WGSL implementation for wgpu (`cube.rs`), the
//! fusion backend's deferral (generated), and a hand-written autodiff backward (`autodiff.rs`);
//! plus a reference implementation in plain burn ops ([`mod@reference`]) for every other backend.
//! The functions here pick the path from the weight's device.

mod autodiff;
mod backend;
pub mod check;
mod cube;
pub mod dispatch;
mod layout;
pub mod reference;
pub mod shaders;
#[cfg(not(target_family = "wasm"))]
mod tune;
mod weight;

use burn::backend::{Dispatch, DispatchTensor};
use burn::tensor::Tensor;

pub use backend::QuantBackend;
pub use layout::{GemmTile, MatmulStrategy, QLayout};
pub use weight::{OpsPath, QWeight, TABLES_LEN};

/// `device` as the wgpu device the kernels run on; `None` where the reference path serves.
fn kernel_device(device: &burn::tensor::Device) -> Option<burn::cubecl::Device> {
    match device.clone().inner().as_dispatch() {
        burn::backend::DispatchDevice::Cube(cube @ burn::cubecl::Device::Wgpu(_)) => {
            Some(cube.clone())
        }
        _ => None,
    }
}

/// The kernel [`MatmulStrategy::Tuned`] chose on `device` for `rows` rows of `w`'s product
/// (`dY W` when `transposed`), once a product of that shape class ran there tuned; `None` before,
/// on other devices, and in the browser, which does not time kernels.
pub fn tuned_choice(
    device: &burn::tensor::Device,
    rows: usize,
    w: &QWeight,
    transposed: bool,
) -> Option<MatmulStrategy> {
    #[cfg(not(target_family = "wasm"))]
    if let Some(cube) = kernel_device(device) {
        return tune::tuned_choice(&cube, rows, &w.layout, transposed);
    }
    let _ = (device, rows, w, transposed);
    None
}

/// What `w`'s shape allows on `device` besides the group kernel and dequantize+matmul (see
/// [`dispatch::Fit`]): on a device without the kernel path, what its shape allows anywhere.
pub fn fit(device: &burn::tensor::Device, w: &QWeight) -> dispatch::Fit {
    match kernel_device(device) {
        Some(cube) => cube::fit(cube.client().properties(), &w.layout),
        None => dispatch::Fit {
            whole_words: w.layout.in_features.is_multiple_of(8),
            subgroup: false,
            subgroup_t: false,
        },
    }
}

/// The adapter class whose kernels serve `device` ([`dispatch::adapter_class`]); `None` for a
/// device without the kernel path.
pub fn adapter_class(device: &burn::tensor::Device) -> Option<dispatch::AdapterClass> {
    kernel_device(device).map(|cube| dispatch::adapter_class(&cube.client().properties().identity))
}

/// The weight's four tensors (packed, absmax_q, scales, tables) in dispatch form.
fn dispatch_parts(w: &QWeight) -> [DispatchTensor; 4] {
    [
        w.packed.clone().into_dispatch(),
        w.absmax_q.clone().into_dispatch(),
        w.scales.clone().into_dispatch(),
        w.tables.clone().into_dispatch(),
    ]
}

/// `Y = X * dequant(W)^T` over the last dimension of `x` (`[.., in] -> [.., out]`).
pub fn qmatmul<const D: usize>(x: Tensor<D>, w: &QWeight) -> Tensor<D> {
    qmatmul_with(x, w, MatmulStrategy::Auto)
}

/// [`qmatmul`] with an explicit kernel strategy (ignored on the reference path).
pub fn qmatmul_with<const D: usize>(
    x: Tensor<D>,
    w: &QWeight,
    strategy: MatmulStrategy,
) -> Tensor<D> {
    match w.path {
        OpsPath::Reference => reference::qmatmul(x, w),
        OpsPath::Kernel => {
            let [p, q, s, t] = dispatch_parts(w);
            let y = Dispatch::qmatmul(x.into_dispatch(), p, q, s, t, w.layout, strategy);
            Tensor::from_dispatch(y)
        }
    }
}

/// `dX = dY * dequant(W)` over the last dimension of `dy` (`[.., out] -> [.., in]`).
pub fn qmatmul_t<const D: usize>(dy: Tensor<D>, w: &QWeight) -> Tensor<D> {
    qmatmul_t_with(dy, w, MatmulStrategy::Auto)
}

/// [`qmatmul_t`] with an explicit kernel strategy (ignored on the reference path).
pub fn qmatmul_t_with<const D: usize>(
    dy: Tensor<D>,
    w: &QWeight,
    strategy: MatmulStrategy,
) -> Tensor<D> {
    match w.path {
        OpsPath::Reference => reference::qmatmul_t(dy, w),
        OpsPath::Kernel => {
            let [p, q, s, t] = dispatch_parts(w);
            let dx = Dispatch::qmatmul_t(dy.into_dispatch(), p, q, s, t, w.layout, strategy);
            Tensor::from_dispatch(dx)
        }
    }
}

/// `dequant(W)` as an f32 `[out, in]` tensor.
pub fn dequantize(w: &QWeight) -> Tensor<2> {
    match w.path {
        OpsPath::Reference => reference::dequantize(w),
        OpsPath::Kernel => {
            let [p, q, s, t] = dispatch_parts(w);
            Tensor::from_dispatch(Dispatch::dequantize_4bit(p, q, s, t, w.layout))
        }
    }
}

/// `alpha * op(lhs) * op(rhs)` for 2-D operands, on `path`.
pub fn lora_matmul(
    lhs: Tensor<2>,
    rhs: Tensor<2>,
    trans_lhs: bool,
    trans_rhs: bool,
    alpha: f32,
    path: OpsPath,
) -> Tensor<2> {
    match path {
        OpsPath::Reference => reference::lora_matmul(lhs, rhs, trans_lhs, trans_rhs, alpha),
        OpsPath::Kernel => Tensor::from_dispatch(Dispatch::lora_matmul(
            lhs.into_dispatch(),
            rhs.into_dispatch(),
            trans_lhs,
            trans_rhs,
            alpha,
        )),
    }
}

/// The LoRA update `scale * (X A^T) B^T` over the last dimension of `x`, with `A` `[r, in]`
/// and `B` `[out, r]` (PEFT's layout); the path follows `x`'s device.
pub fn lora<const D: usize>(x: Tensor<D>, a: Tensor<2>, b: Tensor<2>, scale: f32) -> Tensor<D> {
    let path = OpsPath::for_device(&x.device());
    let dims = x.dims();
    let k = dims[D - 1];
    let rows = dims.iter().product::<usize>() / k.max(1);
    let x2 = x.reshape([rows, k]);
    let u = lora_matmul(x2, a, false, true, 1.0, path);
    let y = lora_matmul(u, b.clone(), false, true, scale, path);
    let mut out = dims;
    out[D - 1] = b.dims()[0];
    y.reshape(out)
}
