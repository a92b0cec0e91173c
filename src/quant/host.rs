//! Fast host-side dequantization of a 2-D weight, for the CPU reference path: rows decoded in
//! parallel (rayon), straight into the transposed layout `Wᵀ: [in, out]` that `x·Wᵀ` wants as a
//! contiguous matrix. Same values as [`super::QuantizedTensor::dequantize`], bit for bit
//! (one product `code[q]·absmax[block]` per element).

use rayon::prelude::*;

use super::QuantizedTensor;
use super::nf4::nibble;

/// Rows of `W` decoded per task: 16 f32 = one 64-byte cache line of `Wᵀ` per column, so no two
/// tasks write the same line.
const ROWS: usize = 16;

/// `dequant(W)ᵀ` of a 2-D `W: [out, in]`, row-major `[in, out]`.
///
/// # Panics
/// If the tensor is not 2-D.
pub fn dequantize_transposed(q: &QuantizedTensor) -> Vec<f32> {
    let shape = q.shape();
    assert_eq!(shape.len(), 2, "a 2-D weight");
    let (out, inp) = (shape[0], shape[1]);
    let absmax = q.block_absmax();
    let table = q.format().codebook();
    let (packed, bs) = (q.packed(), q.blocksize());
    let mut wt = vec![0f32; out * inp];
    // Task t owns rows t·16 .. t·16+16 of W, i.e. columns of Wᵀ; it writes them through a raw
    // pointer because its columns interleave with other tasks' in memory.
    let ptr = SendPtr(wt.as_mut_ptr());
    (0..out.div_ceil(ROWS)).into_par_iter().for_each(|t| {
        let p = &ptr;
        let rows = t * ROWS..((t + 1) * ROWS).min(out);
        let mut buf = [0f32; ROWS];
        for i in 0..inp {
            for (j, o) in rows.clone().enumerate() {
                let k = o * inp + i;
                buf[j] = table[nibble(packed, k) as usize] * absmax[k / bs];
            }
            // SAFETY: `i·out + rows` lies inside `wt` and no other task writes these indices.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    buf.as_ptr(),
                    p.0.add(i * out + rows.start),
                    rows.len(),
                );
            }
        }
    });
    wt
}

/// `dequant(W)` of a 2-D `W`, row-major `[out, in]`, rows decoded in parallel.
pub fn dequantize_par(q: &QuantizedTensor) -> Vec<f32> {
    let shape = q.shape();
    let inp = shape.last().copied().unwrap_or(1).max(1);
    let absmax = q.block_absmax();
    let table = q.format().codebook();
    let (packed, bs) = (q.packed(), q.blocksize());
    let mut w = vec![0f32; q.numel()];
    w.par_chunks_mut(inp).enumerate().for_each(|(o, row)| {
        for (i, v) in row.iter_mut().enumerate() {
            let k = o * inp + i;
            *v = table[nibble(packed, k) as usize] * absmax[k / bs];
        }
    });
    w
}

struct SendPtr(*mut f32);
// SAFETY: tasks write disjoint indices (see `dequantize_transposed`).
unsafe impl Sync for SendPtr {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::linear::transpose;
    use crate::quant::QuantConfig;

    #[test]
    fn same_values_as_the_scalar_path() {
        let (out, inp) = (37, 96);
        let w: Vec<f32> = (0..out * inp)
            .map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0)
            .collect();
        let q = QuantizedTensor::quantize(&w, &[out, inp], QuantConfig::default()).unwrap();
        let d = q.dequantize();
        assert_eq!(dequantize_par(&q), d);
        assert_eq!(dequantize_transposed(&q), transpose(&d, out, inp));
    }
}
