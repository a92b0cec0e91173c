//! The value tables bitsandbytes quantizes against, and its nearest-code rules.
//!
//! * [`NF4`]: the 16 NormalFloat4 levels (quantiles of N(0, 1) scaled to [-1, 1], with an exact 0),
//!   bit-exact copies of bitsandbytes' `get_4bit_type("nf4")`.
//! * [`FP4`]: the 16 FP4 (e2m1, bias 3, scaled by 1/12) levels; bit 3 is the sign, so index 8 is a
//!   second (+0.0) zero.
//! * [`dynamic_map_signed`]: the 256-entry signed dynamic 8-bit map
//!   `bitsandbytes.functional.create_dynamic_map(signed=True)` used for double quantization.
//!
//! The 8-bit code of the double-quantized absmax is bitsandbytes' CPU lookup-table rule
//! ([`quantize_dynamic_cpu`]).
//!
//! The 4-bit nearest-code functions are the decision trees of bitsandbytes' CUDA kernels
//! (`dQuantizeNF4` / `dQuantizeFP4` in `csrc/kernels.cu`): `x` is compared with `f32` thresholds that
//! lie between neighbouring levels, with `>` so that a tie goes to the lower code, and a NaN (a block
//! whose absmax is 0 gives `0 * inf`) falls through every comparison to code 0.

use std::sync::OnceLock;

/// NF4 levels, index = 4-bit code. Bit patterns of bitsandbytes' float32 table:
/// -1, -0.6961928, -0.5250731, -0.3949175, -0.2844414, -0.1847734, -0.0910500, 0,
/// 0.0795803, 0.1609302, 0.2461123, 0.3379152, 0.4407098, 0.5626170, 0.7229568, 1.
pub static NF4: [f32; 16] = bits16([
    0xbf800000, 0xbf3239b1, 0xbf066b30, 0xbeca32a0, 0xbe91a24d, 0xbe3d353f, 0xbdba7871, 0x00000000,
    0x3da2faff, 0x3e24cae3, 0x3e7c04dd, 0x3ead033a, 0x3ee1a4b8, 0x3f1007ab, 0x3f3913b3, 0x3f800000,
]);

/// FP4 levels, index = 4-bit code (bit 3 = sign): 0, 1/192, 2/3, 1, 1/3, 1/2, 1/6, 1/4 and their
/// negatives (index 8 is +0.0, as in bitsandbytes' table).
pub static FP4: [f32; 16] = bits16([
    0x00000000, 0x3baaaaab, 0x3f2aaaab, 0x3f800000, 0x3eaaaaab, 0x3f000000, 0x3e2aaaab, 0x3e800000,
    0x00000000, 0xbbaaaaab, 0xbf2aaaab, 0xbf800000, 0xbeaaaaab, 0xbf000000, 0xbe2aaaab, 0xbe800000,
]);

const fn bits16(bits: [u32; 16]) -> [f32; 16] {
    let mut out = [0.0f32; 16];
    let mut i = 0;
    while i < 16 {
        out[i] = f32::from_bits(bits[i]);
        i += 1;
    }
    out
}

/// NF4 code of a value already scaled to [-1, 1] (bitsandbytes `dQuantizeNF4`).
pub fn nearest_nf4(x: f32) -> u8 {
    if x > 0.039_790_15 {
        if x > 0.389_312_54 {
            if x > 0.642_786_9 {
                if x > 0.861_478_4 { 0b1111 } else { 0b1110 }
            } else if x > 0.501_663_4 {
                0b1101
            } else {
                0b1100
            }
        } else if x > 0.203_521_25 {
            if x > 0.292_013_77 { 0b1011 } else { 0b1010 }
        } else if x > 0.120_255_25 {
            0b1001
        } else {
            0b1000
        }
    } else if x > -0.339_679_43 {
        if x > -0.137_911_73 {
            if x > -0.045_525_018 { 0b0111 } else { 0b0110 }
        } else if x > -0.234_607_4 {
            0b0101
        } else {
            0b0100
        }
    } else if x > -0.610_632_9 {
        if x > -0.459_995_27 { 0b0011 } else { 0b0010 }
    } else if x > -0.848_096_4 {
        0b0001
    } else {
        0b0000
    }
}

/// FP4 code of a value already scaled to [-1, 1]: sign bit from `x < 0`, magnitude by a binary
/// search over the midpoints of the positive levels (bitsandbytes `dQuantizeFP4`), except that a
/// magnitude below the smallest threshold maps like the bitsandbytes fixtures show: `x > 0` to
/// code 8 and `x <= 0` to code 0 (both decode to 0.0).
pub fn nearest_fp4(x: f32) -> u8 {
    let sign = if x < 0.0 { 0b1000 } else { 0 };
    let a = x.abs();
    let mag = if a > 0.291_666_67 {
        if a > 0.583_333 {
            if a > 0.833_333_3 { 0b0011 } else { 0b0010 }
        } else if a > 0.416_666_7 {
            0b0101
        } else {
            0b0100
        }
    } else if a > 0.085_937_5 {
        if a > 0.208_333_33 { 0b0111 } else { 0b0110 }
    } else if a > 0.002_604_17 {
        0b0001
    } else {
        // The two zeros (code 0 = +0, code 8 = "-0") are adjacent in bitsandbytes' sorted search:
        // a positive value below the first threshold lands on code 8, zero or negative on code 0.
        return if x > 0.0 { 0b1000 } else { 0b0000 };
    };
    sign + mag
}

/// The signed dynamic 8-bit map, sorted ascending: `create_dynamic_map(signed=True,
/// max_exponent_bits=7, total_bits=8)`.
///
/// For `i` in 0..7, `k = 2^i + 1` boundaries `b = linspace(0.1, 1, k)` (float32, torch's CUDA
/// kernel, which nvcc contracts to fused multiply-adds: `fma(step, j, start)` for the first half,
/// `fma(-step, k-1-j, end)` for the rest), midpoints
/// `m = (b[j] + b[j+1]) / 2`, and the entries `±10^(i-6) * m` (float32 products); plus 0 and 1.
/// That is 2·127 + 2 = 256 values.
pub fn dynamic_map_signed() -> &'static [f32; 256] {
    static MAP: OnceLock<[f32; 256]> = OnceLock::new();
    MAP.get_or_init(build_dynamic_map)
}

fn build_dynamic_map() -> [f32; 256] {
    let mut data: Vec<f32> = Vec::with_capacity(256);
    for i in 0..7i32 {
        let k = (1usize << i) + 1;
        let b = linspace_f32(0.1, 1.0, k);
        let scale = 10f64.powi(i - 6) as f32;
        for w in b.windows(2) {
            let mean = (w[0] + w[1]) / 2.0;
            data.push(scale * mean);
            data.push(-scale * mean);
        }
    }
    data.push(0.0);
    data.push(1.0);
    data.sort_by(f32::total_cmp);
    let mut out = [0.0f32; 256];
    out.copy_from_slice(&data);
    out
}

/// `torch.linspace(start, end, steps, dtype=float32)` as computed on a CUDA device (the map in
/// bitsandbytes checkpoints is built there; the CPU kernel rounds `start + step*j` twice and differs
/// in the last bit of 20 entries).
fn linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    let step = (end - start) / (steps - 1) as f32;
    let half = steps / 2;
    (0..steps)
        .map(|j| {
            if j < half {
                step.mul_add(j as f32, start)
            } else {
                (-step).mul_add((steps - 1 - j) as f32, end)
            }
        })
        .collect()
}

/// Nearest entry of the sorted 256-entry `map` to `x` (a value in [-1, 1]), exactly as
/// bitsandbytes' CUDA `dQuantize<0>`: a 7-step binary search from pivot 127, then the midpoint of the
/// final bracket decides (`>` to go up, `<` to go down, so a tie stays on the pivot).
///
/// Double quantization does not use this: the fixtures come from bnb's CPU kernel, whose rule is
/// [`quantize_dynamic_cpu`].
pub fn nearest_dynamic(map: &[f32; 256], x: f32) -> u8 {
    let mut pivot = 127usize;
    let mut upper_pivot = 255usize;
    let mut lower_pivot = 0usize;
    let mut lower = -1.0f32;
    let mut upper = 1.0f32;
    let mut val = map[pivot];
    let mut step = 64usize;
    while step > 0 {
        if x > val {
            lower_pivot = pivot;
            lower = val;
            pivot += step;
        } else {
            upper_pivot = pivot;
            upper = val;
            pivot -= step;
        }
        val = map[pivot];
        step >>= 1;
    }
    if upper_pivot == 255 {
        upper = map[upper_pivot];
    }
    if lower_pivot == 0 {
        lower = map[lower_pivot];
    }
    let chosen = if x > val {
        if x > (upper + val) * 0.5 {
            upper_pivot
        } else {
            pivot
        }
    } else if x < (lower + val) * 0.5 {
        lower_pivot
    } else {
        pivot
    };
    // invariant: every pivot stays in 0..=255.
    chosen as u8
}

/// Number of bins of bitsandbytes' CPU quantization lookup table (`kLUTSize` in `csrc/cpu_ops.cpp`).
const CPU_LUT_SIZE: usize = 65536;

/// bitsandbytes' CPU lookup table for 8-bit blockwise quantization against a sorted 256-entry
/// `map` (`build_quantize_lut` in `csrc/cpu_ops.cpp`): bin `i` holds value
/// `v_i = -1 + (2·i) / 65535` (f32: exact product, one rounded division, one rounded sum) and the
/// code `c` is the number of midpoints `0.5 · (map[j] + map[j+1])` (f32) that are `< v_i`.
fn build_cpu_lut(map: &[f32; 256]) -> Vec<u8> {
    let mid: Vec<f32> = map.windows(2).map(|w| 0.5 * (w[0] + w[1])).collect();
    let denom = (CPU_LUT_SIZE - 1) as f32;
    let mut lut = Vec::with_capacity(CPU_LUT_SIZE);
    let mut code = 0usize;
    for i in 0..CPU_LUT_SIZE {
        let v = -1.0f32 + (2.0f32 * i as f32) / denom;
        while code < mid.len() && mid[code] < v {
            code += 1;
        }
        // invariant: code <= 255.
        lut.push(code as u8);
    }
    lut
}

/// LUT bin of a scaled value, bitsandbytes' `norm_to_lut_index`: `x` is clamped to [-1, 1] and
/// `(x + 1) · 0.5 · 65535 + 0.5` is truncated to `u16`. The library is built by GCC with
/// `-ffp-contract=fast` under `#pragma GCC target("avx2,fma")`, so the last multiply-add is one fused
/// multiply-add (`(x + 1) · 0.5` is exact).
#[inline]
fn cpu_lut_index(x: f32) -> usize {
    // NaN stays NaN, as in the C comparisons.
    let t = (x.clamp(-1.0, 1.0) + 1.0) * 0.5;
    // `as u16` truncates toward zero (and maps NaN to 0, like `cvttss2si` on x86).
    t.mul_add((CPU_LUT_SIZE - 1) as f32, 0.5) as u16 as usize
}

/// 8-bit code of `x` (a value already multiplied by `1 / absmax`) against the signed dynamic map
/// ([`dynamic_map_signed`]), exactly as bitsandbytes' CPU `quantize_blockwise` for float32
/// (`quantize_cpu_impl` in `csrc/cpu_ops.cpp`, bitsandbytes 0.50, commit f82277b8 "Improve CPU
/// performance on x64 and arm64", unchanged through 0.50.2.dev0): not the nearest entry, but a
/// 65536-bin lookup table over [-1, 1] (`build_cpu_lut` / `cpu_lut_index` below), so values within
/// about 1.5e-5 of a midpoint can land on the neighbouring code.
pub fn quantize_dynamic_cpu(x: f32) -> u8 {
    static LUT: OnceLock<Vec<u8>> = OnceLock::new();
    LUT.get_or_init(|| build_cpu_lut(dynamic_map_signed()))[cpu_lut_index(x)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nf4_tree_matches_table_levels() {
        for (code, &v) in NF4.iter().enumerate() {
            assert_eq!(nearest_nf4(v) as usize, code, "level {v}");
        }
        assert_eq!(nearest_nf4(f32::NAN), 0);
    }

    #[test]
    fn fp4_tree_matches_table_levels() {
        for (code, &v) in FP4.iter().enumerate().filter(|(c, _)| *c != 8) {
            assert_eq!(nearest_fp4(v) as usize, code, "level {v}");
        }
        assert_eq!(nearest_fp4(-1e-9), 0);
        assert_eq!(nearest_fp4(1e-9), 8);
    }

    #[test]
    fn dynamic_map_is_sorted_and_signed() {
        let m = dynamic_map_signed();
        assert!(m.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(m[255], 1.0);
        assert_eq!(m[127], 0.0);
        for (i, &v) in m.iter().enumerate() {
            assert_eq!(nearest_dynamic(m, v) as usize, i, "entry {v}");
        }
    }

    #[test]
    fn cpu_lut_rule() {
        let m = dynamic_map_signed();
        // Clamped ends, and NaN to bin 0 like the C++ cast.
        assert_eq!(quantize_dynamic_cpu(1.0), 255);
        assert_eq!(quantize_dynamic_cpu(7.0), 255);
        assert_eq!(quantize_dynamic_cpu(-1.0), 0);
        assert_eq!(quantize_dynamic_cpu(-7.0), 0);
        assert_eq!(quantize_dynamic_cpu(f32::NAN), 0);
        // Entries at least 2 LUT bins from both neighbours' midpoints decode to themselves.
        let bin = 2.0 / 65535.0;
        for i in 1..255 {
            let (lo, hi) = ((m[i - 1] + m[i]) / 2.0, (m[i] + m[i + 1]) / 2.0);
            if m[i] - lo > 2.0 * bin && hi - m[i] > 2.0 * bin {
                assert_eq!(quantize_dynamic_cpu(m[i]) as usize, i, "entry {}", m[i]);
            }
        }
        // 0.0 lands in bin 32768 (value 1/65535 > 0), above the map's 0 entry (127): the
        // tiny positive entries below 1.5e-5 are unreachable.
        assert!(quantize_dynamic_cpu(0.0) > 127);
        assert_eq!(quantize_dynamic_cpu(0.0), quantize_dynamic_cpu(1e-6));
        // Monotone over a fine sweep.
        let mut prev = 0u8;
        for k in 0..=400_000 {
            let c = quantize_dynamic_cpu(-1.0 + k as f32 * 5e-6);
            assert!(c >= prev);
            prev = c;
        }
    }
}
