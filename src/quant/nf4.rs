//! The 4-bit storage layout shared by NF4 and FP4 (bitsandbytes' format). Shaders, loaders and the
//! quantizer link here instead of restating it.
//!
//! # Layout
//!
//! * **Elements.** The weight `W: [out, in]` is flattened row-major to `n = out·in` values
//!   `w_k = W[k / in][k % in]`.
//! * **Blocks.** Element `k` belongs to block `k / blocksize` (`blocksize` a power of two in
//!   32..=4096, default 64); there are `ceil(n / blocksize)` blocks and the last may be partial.
//! * **Scale.** Each block has `absmax_b = max |w_k|` over its elements, stored as `f32`, or with
//!   double quantization as a `u8` code into the dynamic 8-bit map (see [`super::double`]).
//! * **Codes.** `q_k` is the 4-bit index of the level of the 16-value table
//!   ([`super::codebook::NF4`] or [`super::codebook::FP4`]) nearest to `w_k · (1 / absmax_b)`.
//! * **Packing.** Byte `j` holds `q_{2j}` in its HIGH nibble and `q_{2j+1}` in its LOW nibble, so
//!   `packed.len() = ceil(n / 2)`. When `n` is odd, the last low nibble is the code of `0.0`
//!   (bitsandbytes pads the last pair with a zero before quantizing: 7 for NF4, 0 for FP4).
//!   Read as a little-endian `u32`, word `t` holds elements `8t..8t+8` in nibble order
//!   `1, 0, 3, 2, 5, 4, 7, 6` from least significant up.
//! * **Dequantization.** `w_k ≈ table[q_k] · absmax_{k / blocksize}` in `f32`.

/// Packs 4-bit codes (each `< 16`) two per byte, first code in the high nibble. An odd count is
/// completed with `pad` in the last low nibble.
pub fn pack_nibbles(codes: &[u8], pad: u8) -> Vec<u8> {
    codes
        .chunks(2)
        .map(|pair| (pair[0] << 4) | pair.get(1).copied().unwrap_or(pad))
        .collect()
}

/// The 4-bit code of element `k` in `packed`.
#[inline]
pub fn nibble(packed: &[u8], k: usize) -> u8 {
    let byte = packed[k / 2];
    if k.is_multiple_of(2) {
        byte >> 4
    } else {
        byte & 0x0f
    }
}

/// Number of packed bytes for `numel` elements.
pub fn packed_len(numel: usize) -> usize {
    numel.div_ceil(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn high_nibble_first() {
        let p = pack_nibbles(&[1, 2, 3], 7);
        assert_eq!(p, vec![0x12, 0x37]);
        assert_eq!(
            (0..3).map(|k| nibble(&p, k)).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert_eq!(packed_len(3), 2);
    }
}
