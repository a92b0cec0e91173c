//! Double quantization of the per-block absmax (QLoRA §3, bitsandbytes `compress_statistics=True`).
//!
//! With `a_i` the f32 absmax of 4-bit block `i` and `m` the signed dynamic map
//! ([`super::codebook::dynamic_map_signed`]):
//!
//! * `offset = mean(a)` in f32, summed exactly as torch does on an AVX2 CPU ([`torch_mean_f32`];
//!   this reproduces every `offset` in the bitsandbytes fixtures bit for bit);
//! * `c_i = a_i - offset` (f32), cut into nested blocks of [`NESTED_BLOCKSIZE`] = 256;
//! * `nested_absmax_j = max |c_i|` over nested block `j`, `q_i = lut(c_i · (1 / nested_absmax_j))`
//!   (bitsandbytes' 8-bit `quantize_blockwise` on the CPU: a 65536-bin lookup table, not the exact
//!   nearest entry, see [`quantize_dynamic_cpu`]; an all-zero nested block gets code 0);
//! * decoding: `a_i ≈ m[q_i] · nested_absmax_{i/256} + offset` (two f32 roundings, in that order).

use super::BlockStats;
use super::blockwise::block_absmax;
use super::codebook::{dynamic_map_signed, quantize_dynamic_cpu};

/// Block size of the nested 8-bit quantization, fixed by bitsandbytes.
pub const NESTED_BLOCKSIZE: usize = 256;

/// Compresses f32 absmax values into [`BlockStats::Double`].
pub fn compress(absmax: &[f32]) -> BlockStats {
    let offset = torch_mean_f32::<8>(absmax);
    let centered: Vec<f32> = absmax.iter().map(|&a| a - offset).collect();
    let map = dynamic_map_signed();
    let nested_absmax = block_absmax(&centered, NESTED_BLOCKSIZE);
    let mut absmax_q = Vec::with_capacity(centered.len());
    for (block, &amax) in centered.chunks(NESTED_BLOCKSIZE).zip(&nested_absmax) {
        if amax == 0.0 {
            // bnb's CPU kernel writes code 0 for an all-zero block.
            absmax_q.extend(std::iter::repeat_n(0u8, block.len()));
            continue;
        }
        let inv = 1.0 / amax;
        absmax_q.extend(block.iter().map(|&c| quantize_dynamic_cpu(c * inv)));
    }
    BlockStats::Double {
        absmax_q,
        nested_absmax,
        nested_map: map.to_vec(),
        offset,
        nested_blocksize: NESTED_BLOCKSIZE,
    }
}

/// Decodes double-quantized absmax: `a_i = nested_map[q_i] · nested_absmax[i / nested_blocksize] + offset`.
pub fn decompress(
    absmax_q: &[u8],
    nested_absmax: &[f32],
    nested_map: &[f32],
    offset: f32,
    nested_blocksize: usize,
) -> Vec<f32> {
    absmax_q
        .iter()
        .enumerate()
        .map(|(i, &q)| nested_map[q as usize] * nested_absmax[i / nested_blocksize] + offset)
        .collect()
}

/// `torch.Tensor.mean()` of a contiguous float32 vector on the CPU: torch's cascade sum
/// (`aten/src/ATen/native/cpu/SumKernel.cpp`) over `LANES`-float vectors with 4 interleaved
/// accumulators and a 4-level cascade, then one f32 division by `n`.
pub fn torch_mean_f32<const LANES: usize>(values: &[f32]) -> f32 {
    torch_sum_f32::<LANES>(values) / values.len() as f32
}

// Index loops on purpose: they mirror torch's C++ (`multi_row_sum` / `row_sum`) line by line.
#[allow(clippy::needless_range_loop)]
fn torch_sum_f32<const LANES: usize>(values: &[f32]) -> f32 {
    let n = values.len();
    if n < LANES {
        return values.iter().fold(0.0f32, |acc, &v| acc + v);
    }
    let num_vecs = n / LANES;
    // row_sum over `num_vecs` vectors: multi_row_sum with 4 rows (ILP), then the leftover vectors.
    const ILP: usize = 4;
    const LEVELS: usize = 4;
    let size_ilp = num_vecs / ILP;
    let ceil_log2 = |x: usize| {
        if x <= 1 {
            0
        } else {
            (usize::BITS - (x - 1).leading_zeros()) as usize
        }
    };
    let level_power = 4usize.max(ceil_log2(size_ilp) / LEVELS);
    let level_step = 1usize << level_power;
    let level_mask = level_step - 1;
    let load = |vec: usize, lane: usize| values[vec * LANES + lane];
    let mut acc = [[[0.0f32; LANES]; ILP]; LEVELS];
    let mut i = 0usize;
    while i + level_step <= size_ilp {
        for _ in 0..level_step {
            for (k, row) in acc[0].iter_mut().enumerate() {
                for (lane, a) in row.iter_mut().enumerate() {
                    *a += load(i * ILP + k, lane);
                }
            }
            i += 1;
        }
        for j in 1..LEVELS {
            for k in 0..ILP {
                for lane in 0..LANES {
                    acc[j][k][lane] += acc[j - 1][k][lane];
                    acc[j - 1][k][lane] = 0.0;
                }
            }
            if i & (level_mask << (j * level_power)) != 0 {
                break;
            }
        }
    }
    while i < size_ilp {
        for (k, row) in acc[0].iter_mut().enumerate() {
            for (lane, a) in row.iter_mut().enumerate() {
                *a += load(i * ILP + k, lane);
            }
        }
        i += 1;
    }
    for j in 1..LEVELS {
        for k in 0..ILP {
            for lane in 0..LANES {
                acc[0][k][lane] += acc[j][k][lane];
            }
        }
    }
    let mut partial = acc[0];
    for v in size_ilp * ILP..num_vecs {
        for lane in 0..LANES {
            partial[0][lane] += load(v, lane);
        }
    }
    for k in 1..ILP {
        for lane in 0..LANES {
            partial[0][lane] += partial[k][lane];
        }
    }
    let mut total = 0.0f32;
    for &v in &values[num_vecs * LANES..] {
        total += v;
    }
    for lane in 0..LANES {
        total += partial[0][lane];
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_is_close() {
        let absmax: Vec<f32> = (0..600)
            .map(|i| 0.5 + (i as f32 * 0.37).sin() * 0.1)
            .collect();
        let BlockStats::Double {
            absmax_q,
            nested_absmax,
            nested_map,
            offset,
            nested_blocksize,
        } = compress(&absmax)
        else {
            unreachable!()
        };
        assert_eq!(nested_absmax.len(), 3);
        let back = decompress(
            &absmax_q,
            &nested_absmax,
            &nested_map,
            offset,
            nested_blocksize,
        );
        for (a, b) in absmax.iter().zip(&back) {
            assert!((a - b).abs() < 2e-3, "{a} vs {b}");
        }
    }
}
