//! The reference implementation in plain burn tensor ops: the oracle of every kernel test, the
//! CPU path, and the fallback for runtimes without WGSL. Autodiff comes from burn.

use burn::tensor::{Int, Tensor, TensorData};

use super::weight::QWeight;

/// Bit offsets of the eight nibbles of a little-endian u32 word, in element order (element 2j
/// in the high nibble of byte j).
const NIBBLE_SHIFTS: [i32; 8] = [4, 0, 12, 8, 20, 16, 28, 24];

/// Split each word into its `fields` sub-fields of `bits` bits at `shifts`: `[n] -> [n * fields]`.
fn unpack(words: Tensor<1, Int>, shifts: &[i32], mask: i32) -> Tensor<1, Int> {
    let n = words.dims()[0];
    let parts: Vec<Tensor<1, Int>> = shifts
        .iter()
        .map(|&s| {
            words
                .clone()
                .bitwise_right_shift_scalar(s)
                .bitwise_and_scalar(mask)
        })
        .collect();
    Tensor::stack::<2>(parts, 1).reshape([n * shifts.len()])
}

/// Repeat each of `values` `times` times and keep the first `len`.
fn repeat_each(values: Tensor<1>, times: usize, len: usize) -> Tensor<1> {
    let n = values.dims()[0];
    values
        .reshape([n, 1])
        .expand([n, times])
        .reshape([n * times])
        .slice(0..len)
}

/// The f32 absmax of every block.
pub fn block_absmax(w: &QWeight) -> Tensor<1> {
    let l = &w.layout;
    let blocks = l.numel().div_ceil(l.blocksize);
    if !l.double_quant {
        return w.scales.clone();
    }
    let codes = unpack(w.absmax_q.clone(), &[0, 8, 16, 24], 255).slice(0..blocks);
    let map = w.tables.clone().slice(16..272);
    let offset = w.tables.clone().slice(272..273);
    let nested = repeat_each(w.scales.clone(), l.nested_blocksize, blocks);
    map.select(0, codes) * nested + offset
}

/// `dequant(W)` as `[out_features, in_features]`.
pub fn dequantize(w: &QWeight) -> Tensor<2> {
    if let Some(q) = &w.host {
        let l = &w.layout;
        return Tensor::from_data(
            TensorData::new(
                crate::quant::host::dequantize_par(q),
                [l.out_features, l.in_features],
            ),
            &w.packed.device(),
        );
    }
    let l = &w.layout;
    let numel = l.numel();
    let codes = unpack(w.packed.clone(), &NIBBLE_SHIFTS, 15).slice(0..numel);
    let values = w.tables.clone().slice(0..16).select(0, codes);
    let absmax = repeat_each(block_absmax(w), l.blocksize, numel);
    (values * absmax).reshape([l.out_features, l.in_features])
}

/// `Y = X * dequant(W)^T` over the last dimension.
pub fn qmatmul<const D: usize>(x: Tensor<D>, w: &QWeight) -> Tensor<D> {
    if let Some(q) = &w.host {
        // dequant(W)ᵀ `[in, out]` built on the host, contiguous, then one 2-D matmul.
        let l = &w.layout;
        let wt = crate::quant::host::dequantize_transposed(q);
        let wt = Tensor::<2>::from_data(
            TensorData::new(wt, [l.in_features, l.out_features]),
            &x.device(),
        );
        return matmul_last(x, wt);
    }
    let wt = dequantize(w).transpose().unsqueeze::<D>();
    x.matmul(wt)
}

/// `dX = dY * dequant(W)` over the last dimension.
pub fn qmatmul_t<const D: usize>(dy: Tensor<D>, w: &QWeight) -> Tensor<D> {
    if w.host.is_some() {
        return matmul_last(dy, dequantize(w));
    }
    dy.matmul(dequantize(w).unsqueeze::<D>())
}

/// `alpha * op(lhs) * op(rhs)`.
pub fn lora_matmul(
    lhs: Tensor<2>,
    rhs: Tensor<2>,
    trans_lhs: bool,
    trans_rhs: bool,
    alpha: f32,
) -> Tensor<2> {
    let lhs = if trans_lhs { lhs.transpose() } else { lhs };
    let rhs = if trans_rhs { rhs.transpose() } else { rhs };
    lhs.matmul(rhs) * alpha
}

/// `x·m` over the last dimension of `x` as one 2-D matmul (`[.., k]·[k, n] -> [.., n]`).
pub fn matmul_last<const D: usize>(x: Tensor<D>, m: Tensor<2>) -> Tensor<D> {
    let dims = x.dims();
    let [k, n] = m.dims();
    let rows = dims.iter().product::<usize>() / k.max(1);
    let mut out = dims;
    out[D - 1] = n;
    x.reshape([rows, k]).matmul(m).reshape(out)
}
