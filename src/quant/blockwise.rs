//! Blockwise absmax scaling and 4-bit coding (bitsandbytes `quantize_4bit` / `dequantize_4bit`).
//!
//! For block `b` covering elements `[b·B, min((b+1)·B, n))`:
//! `absmax_b = max |x_k|`, `s = 1 / absmax_b` (one f32 division; 0 when `absmax_b = 0`),
//! `q_k = code(x_k · s)` with the decision trees of [`super::codebook`]. The layout is described in [`super::nf4`].

use super::QuantFormat;
use super::codebook::{nearest_fp4, nearest_nf4};
use super::nf4::{nibble, pack_nibbles};

/// `max |x|` of every `blocksize` chunk of `data` (the last chunk may be shorter).
pub fn block_absmax(data: &[f32], blocksize: usize) -> Vec<f32> {
    data.chunks(blocksize)
        .map(|block| block.iter().fold(0.0f32, |m, &v| m.max(v.abs())))
        .collect()
}

/// The 4-bit code of a value already scaled into [-1, 1].
#[inline]
pub fn code_of(format: QuantFormat, scaled: f32) -> u8 {
    match format {
        QuantFormat::Nf4 => nearest_nf4(scaled),
        QuantFormat::Fp4 => nearest_fp4(scaled),
    }
}

/// Quantizes `data` to packed 4-bit codes and per-block `f32` absmax.
///
/// Returns `(packed, absmax)` with `packed.len() = ceil(n/2)` and `absmax.len() = ceil(n/B)`.
pub fn quantize_4bit(data: &[f32], blocksize: usize, format: QuantFormat) -> (Vec<u8>, Vec<f32>) {
    let absmax = block_absmax(data, blocksize);
    let mut codes = Vec::with_capacity(data.len());
    for (block, &amax) in data.chunks(blocksize).zip(&absmax) {
        let inv = reciprocal_scale(amax);
        codes.extend(block.iter().map(|&x| code_of(format, x * inv)));
    }
    (pack_nibbles(&codes, code_of(format, 0.0)), absmax)
}

/// `1 / absmax`, the factor bitsandbytes multiplies by; an all-zero block (absmax 0) scales by 0,
/// so its elements get the code of 0.0 (what the bitsandbytes fixtures show: NF4 code 7).
#[inline]
pub fn reciprocal_scale(absmax: f32) -> f32 {
    if absmax == 0.0 { 0.0 } else { 1.0 / absmax }
}

/// Dequantizes `numel` packed codes: `w_k = table[q_k] · absmax[k / blocksize]`.
pub fn dequantize_4bit(
    packed: &[u8],
    absmax: &[f32],
    numel: usize,
    blocksize: usize,
    format: QuantFormat,
) -> Vec<f32> {
    let table = format.codebook();
    (0..numel)
        .map(|k| table[nibble(packed, k) as usize] * absmax[k / blocksize])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_hits_levels_exactly() {
        let levels = QuantFormat::Nf4.codebook();
        let data: Vec<f32> = levels.iter().map(|v| v * 2.0).collect();
        let (packed, absmax) = quantize_4bit(&data, 64, QuantFormat::Nf4);
        assert_eq!(absmax, vec![2.0]);
        assert_eq!(
            dequantize_4bit(&packed, &absmax, 16, 64, QuantFormat::Nf4),
            data
        );
    }

    #[test]
    fn zero_block_and_odd_pad() {
        let (packed, absmax) = quantize_4bit(&[0.0; 3], 32, QuantFormat::Nf4);
        assert_eq!(absmax, vec![0.0]);
        assert_eq!(packed, vec![0x77, 0x77]);
    }
}
