//! ggml tensor types and their decoders to `f32`.
//!
//! A ggml tensor of `n` elements is stored as `n / block_len` blocks of `block_bytes` bytes each,
//! in element order (`ne[0]` fastest). All scalars are little-endian; `d`, `m`, `dmin` are IEEE
//! half floats. Layouts decoded here (byte offsets within one block):
//!
//! | type | elems | bytes | layout | element `j` |
//! | --- | --- | --- | --- | --- |
//! | F32 / F16 / BF16 | 1 | 4 / 2 / 2 | the value | the value |
//! | Q8_0 | 32 | 34 | `d` f16, `qs[32]` i8 | `qs[j]·d` |
//! | Q4_0 | 32 | 18 | `d` f16, `qs[16]` u8 | `(nib_j − 8)·d` |
//! | Q4_1 | 32 | 20 | `d` f16, `m` f16, `qs[16]` u8 | `nib_j·d + m` |
//! | Q4_K | 256 | 144 | `d`, `dmin` f16, `scales[12]`, `qs[128]` | see [`dequant_q4_k`] |
//! | Q6_K | 256 | 210 | `ql[128]`, `qh[64]`, `scales[16]` i8, `d` f16 | see [`dequant_q6_k`] |
//!
//! In the 32-element formats `nib_j` is the low nibble of `qs[j]` for `j < 16` and the high nibble
//! of `qs[j − 16]` for `j ≥ 16`. Each decoder follows llama.cpp's `dequantize_row_*` in
//! `ggml/src/ggml-quants.c` operation for operation (same products, same order), so the `f32`
//! results are bit-identical to llama.cpp's reference CPU path.

use half::{bf16, f16};

/// Elements in a K-quant super-block (`QK_K` in ggml).
pub const QK_K: usize = 256;

/// A ggml tensor type: the `type` field of a GGUF tensor info.
///
/// Every type ggml has defined is known by name and block size (so files holding them parse and
/// their sizes are checked); only those listed in [`GgmlType::is_decodable`] decode to `f32`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GgmlType(pub u32);

/// (id, name, elements per block, bytes per block) for every ggml type id still defined.
const TYPES: &[(u32, &str, usize, usize)] = &[
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 18),
    (3, "Q4_1", 32, 20),
    (6, "Q5_0", 32, 22),
    (7, "Q5_1", 32, 24),
    (8, "Q8_0", 32, 34),
    (9, "Q8_1", 32, 36),
    (10, "Q2_K", QK_K, 84),
    (11, "Q3_K", QK_K, 110),
    (12, "Q4_K", QK_K, 144),
    (13, "Q5_K", QK_K, 176),
    (14, "Q6_K", QK_K, 210),
    (15, "Q8_K", QK_K, 292),
    (16, "IQ2_XXS", QK_K, 66),
    (17, "IQ2_XS", QK_K, 74),
    (18, "IQ3_XXS", QK_K, 98),
    (19, "IQ1_S", QK_K, 50),
    (20, "IQ4_NL", 32, 18),
    (21, "IQ3_S", QK_K, 110),
    (22, "IQ2_S", QK_K, 82),
    (23, "IQ4_XS", QK_K, 136),
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (29, "IQ1_M", QK_K, 56),
    (30, "BF16", 1, 2),
    (34, "TQ1_0", QK_K, 54),
    (35, "TQ2_0", QK_K, 66),
    (39, "MXFP4", 32, 17),
];

impl GgmlType {
    /// `GGML_TYPE_F32`.
    pub const F32: GgmlType = GgmlType(0);
    /// `GGML_TYPE_F16`.
    pub const F16: GgmlType = GgmlType(1);
    /// `GGML_TYPE_Q4_0`.
    pub const Q4_0: GgmlType = GgmlType(2);
    /// `GGML_TYPE_Q4_1`.
    pub const Q4_1: GgmlType = GgmlType(3);
    /// `GGML_TYPE_Q8_0`.
    pub const Q8_0: GgmlType = GgmlType(8);
    /// `GGML_TYPE_Q4_K`.
    pub const Q4_K: GgmlType = GgmlType(12);
    /// `GGML_TYPE_Q6_K`.
    pub const Q6_K: GgmlType = GgmlType(14);
    /// `GGML_TYPE_BF16`.
    pub const BF16: GgmlType = GgmlType(30);

    fn entry(self) -> Option<&'static (u32, &'static str, usize, usize)> {
        TYPES.iter().find(|t| t.0 == self.0)
    }

    /// Whether ggml defines this type id (removed ids such as 4, 5 and 31..33 are unknown).
    pub fn is_known(self) -> bool {
        self.entry().is_some()
    }

    /// ggml's name (`"Q4_K"`), or `"unknown"`.
    pub fn name(self) -> &'static str {
        self.entry().map_or("unknown", |t| t.1)
    }

    /// Elements per block (1 for plain types); `None` for an unknown id.
    pub fn block_len(self) -> Option<usize> {
        self.entry().map(|t| t.2)
    }

    /// Bytes per block; `None` for an unknown id.
    pub fn block_bytes(self) -> Option<usize> {
        self.entry().map(|t| t.3)
    }

    /// Whether [`dequantize`] decodes this type.
    pub fn is_decodable(self) -> bool {
        matches!(
            self,
            Self::F32
                | Self::F16
                | Self::BF16
                | Self::Q8_0
                | Self::Q4_0
                | Self::Q4_1
                | Self::Q4_K
                | Self::Q6_K
        )
    }

    /// Bytes that `n` elements take, or `None` if the type is unknown, `n` is not a whole number
    /// of blocks, or the size overflows.
    pub fn bytes_for(self, n: u64) -> Option<u64> {
        let (_, _, len, bytes) = *self.entry()?;
        if !n.is_multiple_of(len as u64) {
            return None;
        }
        (n / len as u64).checked_mul(bytes as u64)
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (type {})", self.name(), self.0)
    }
}

/// Why a buffer could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The type has no decoder here.
    #[error(
        "ggml type {0} cannot be decoded (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K)"
    )]
    Unsupported(GgmlType),
    /// The element count is not a whole number of blocks.
    #[error("{n} elements is not a multiple of the {ty} block length {block}")]
    PartialBlock {
        /// The type.
        ty: GgmlType,
        /// Elements asked for.
        n: usize,
        /// Elements per block.
        block: usize,
    },
    /// The buffer length disagrees with the element count.
    #[error("{n} {ty} elements need {expected} bytes, got {got}")]
    Length {
        /// The type.
        ty: GgmlType,
        /// Elements asked for.
        n: usize,
        /// Bytes needed.
        expected: usize,
        /// Bytes given.
        got: usize,
    },
}

/// Decodes `n` elements of type `ty` from `bytes` (exactly `ty.bytes_for(n)` long) to `f32`.
pub fn dequantize(ty: GgmlType, bytes: &[u8], n: usize) -> Result<Vec<f32>, DecodeError> {
    if !ty.is_decodable() {
        return Err(DecodeError::Unsupported(ty));
    }
    // invariant: every decodable type is in TYPES.
    let (block, block_bytes) = (ty.block_len().unwrap_or(1), ty.block_bytes().unwrap_or(1));
    if !n.is_multiple_of(block) {
        return Err(DecodeError::PartialBlock { ty, n, block });
    }
    let expected = (n / block) * block_bytes;
    if bytes.len() != expected {
        return Err(DecodeError::Length {
            ty,
            n,
            expected,
            got: bytes.len(),
        });
    }
    let mut out = Vec::with_capacity(n);
    let blocks = bytes.chunks_exact(block_bytes);
    match ty {
        GgmlType::F32 => out.extend(blocks.map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
        GgmlType::F16 => out.extend(blocks.map(|b| half_at(b, 0))),
        GgmlType::BF16 => {
            out.extend(blocks.map(|b| bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()))
        }
        GgmlType::Q8_0 => blocks.for_each(|b| dequant_q8_0(b, &mut out)),
        GgmlType::Q4_0 => blocks.for_each(|b| dequant_q4_0(b, &mut out)),
        GgmlType::Q4_1 => blocks.for_each(|b| dequant_q4_1(b, &mut out)),
        GgmlType::Q4_K => blocks.for_each(|b| dequant_q4_k(b, &mut out)),
        GgmlType::Q6_K => blocks.for_each(|b| dequant_q6_k(b, &mut out)),
        _ => return Err(DecodeError::Unsupported(ty)),
    }
    Ok(out)
}

/// The f16 at byte `at` of `b` as f32 (exact).
fn half_at(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// One Q8_0 block (34 bytes): `y[j] = qs[j]·d`.
pub fn dequant_q8_0(b: &[u8], out: &mut Vec<f32>) {
    let d = half_at(b, 0);
    out.extend(b[2..34].iter().map(|&q| f32::from(q as i8) * d));
}

/// One Q4_0 block (18 bytes): `y[j] = (nib_j − 8)·d`.
pub fn dequant_q4_0(b: &[u8], out: &mut Vec<f32>) {
    let d = half_at(b, 0);
    let qs = &b[2..18];
    out.extend(qs.iter().map(|&q| ((q & 0x0F) as i32 - 8) as f32 * d));
    out.extend(qs.iter().map(|&q| ((q >> 4) as i32 - 8) as f32 * d));
}

/// One Q4_1 block (20 bytes): `y[j] = nib_j·d + m`.
pub fn dequant_q4_1(b: &[u8], out: &mut Vec<f32>) {
    let (d, m) = (half_at(b, 0), half_at(b, 2));
    let qs = &b[4..20];
    out.extend(qs.iter().map(|&q| f32::from(q & 0x0F) * d + m));
    out.extend(qs.iter().map(|&q| f32::from(q >> 4) * d + m));
}

/// The 6-bit scale and min of sub-block `j` (0..8) from Q4_K's packed `scales[12]`
/// (llama.cpp's `get_scale_min_k4`): sub-blocks 0..4 hold them in the low 6 bits of bytes
/// `j` and `j+4`; sub-blocks 4..8 take their low 4 bits from byte `j+4` and their top 2 bits
/// from the top bits of bytes `j−4` (scale) and `j` (min).
pub fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// One Q4_K super-block (144 bytes: `d` f16, `dmin` f16, `scales[12]`, `qs[128]`).
///
/// Eight sub-blocks of 32; sub-block `s` has scale `d·sc_s` and min `dmin·m_s`
/// ([`scale_min_k4`]). Each group of 64 elements reads 32 bytes of `qs`: their low nibbles
/// are sub-block `2g`, their high nibbles sub-block `2g+1`; `y = (d·sc)·nib − dmin·m`.
pub fn dequant_q4_k(b: &[u8], out: &mut Vec<f32>) {
    let (d, min) = (half_at(b, 0), half_at(b, 2));
    let scales = &b[4..16];
    for (g, q) in b[16..144].chunks_exact(32).enumerate() {
        let (sc, m) = scale_min_k4(2 * g, scales);
        let (d1, m1) = (d * f32::from(sc), min * f32::from(m));
        let (sc, m) = scale_min_k4(2 * g + 1, scales);
        let (d2, m2) = (d * f32::from(sc), min * f32::from(m));
        out.extend(q.iter().map(|&v| d1 * f32::from(v & 0xF) - m1));
        out.extend(q.iter().map(|&v| d2 * f32::from(v >> 4) - m2));
    }
}

/// One Q6_K super-block (210 bytes: `ql[128]`, `qh[64]`, `scales[16]` i8, `d` f16).
///
/// Two halves of 128 elements, each reading 64 bytes of `ql`, 32 of `qh` and 8 scales. Within a
/// half, for `l` in 0..32, the 6-bit codes are
/// `q1 = ql[l] & 15 | (qh[l] & 3) << 4` (element `l`),
/// `q2 = ql[l+32] & 15 | (qh[l] >> 2 & 3) << 4` (element `l+32`),
/// `q3 = ql[l] >> 4 | (qh[l] >> 4 & 3) << 4` (element `l+64`),
/// `q4 = ql[l+32] >> 4 | (qh[l] >> 6) << 4` (element `l+96`);
/// element `e` of the half is `d·scales[e/16]·(q − 32)`.
pub fn dequant_q6_k(b: &[u8], out: &mut Vec<f32>) {
    let d = half_at(b, 208);
    for half in 0..2 {
        let ql = &b[64 * half..64 * half + 64];
        let qh = &b[128 + 32 * half..128 + 32 * half + 32];
        let sc = &b[192 + 8 * half..192 + 8 * half + 8];
        let mut y = [0f32; 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8 - 32;
            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
            y[l] = d * f32::from(sc[is] as i8) * f32::from(q1);
            y[l + 32] = d * f32::from(sc[is + 2] as i8) * f32::from(q2);
            y[l + 64] = d * f32::from(sc[is + 4] as i8) * f32::from(q3);
            y[l + 96] = d * f32::from(sc[is + 6] as i8) * f32::from(q4);
        }
        out.extend_from_slice(&y);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(v: f32) -> [u8; 2] {
        f16::from_f32(v).to_bits().to_le_bytes()
    }

    #[test]
    fn type_table_is_consistent() {
        for ty in [
            GgmlType::F32,
            GgmlType::F16,
            GgmlType::BF16,
            GgmlType::Q8_0,
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q4_K,
            GgmlType::Q6_K,
        ] {
            assert!(ty.is_known() && ty.is_decodable(), "{ty}");
        }
        assert!(!GgmlType(4).is_known());
        assert_eq!(GgmlType(4).name(), "unknown");
        assert_eq!(GgmlType::Q4_K.bytes_for(512), Some(288));
        assert_eq!(GgmlType::Q4_0.bytes_for(33), None);
        assert_eq!(GgmlType::Q8_0.bytes_for(u64::MAX - 31), None);
        let mut ids: Vec<u32> = TYPES.iter().map(|t| t.0).collect();
        ids.dedup();
        assert_eq!(ids.len(), TYPES.len());
    }

    #[test]
    fn q4_0_nibble_order() {
        let mut b = h(0.5).to_vec();
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let y = dequantize(GgmlType::Q4_0, &b, 32).unwrap();
        for j in 0..16 {
            assert_eq!(y[j], (j as f32 - 8.0) * 0.5);
            assert_eq!(y[j + 16], (7.0 - j as f32) * 0.5);
        }
    }

    #[test]
    fn q4_k_scale_unpacking() {
        // sub-block 5: low 4 bits of scale in scales[9] & 15, top 2 in scales[1] >> 6.
        let mut s = [0u8; 12];
        s[9] = 0x3A; // scale low = 0xA, min low = 0x3
        s[1] = 0b1100_0000; // scale high = 3
        s[5] = 0b0100_0000; // min high = 1
        assert_eq!(scale_min_k4(5, &s), (0x3A, 0x13));
    }

    #[test]
    fn length_errors() {
        assert!(matches!(
            dequantize(GgmlType::Q8_0, &[0; 33], 32),
            Err(DecodeError::Length { .. })
        ));
        assert!(matches!(
            dequantize(GgmlType::Q8_0, &[0; 34], 31),
            Err(DecodeError::PartialBlock { .. })
        ));
        assert!(matches!(
            dequantize(GgmlType(13), &[0; 176], 256),
            Err(DecodeError::Unsupported(_))
        ));
    }
}
