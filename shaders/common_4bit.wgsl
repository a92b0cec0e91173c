// Shared helpers for the 4-bit kernels; prepended to each 4-bit shader by the Rust side.
//
// Packed layout (bitsandbytes): element i of the row-major flattened weight lives in byte i/2,
// even i in the HIGH nibble and odd i in the LOW nibble. Bytes are read four at a time as
// little-endian u32 words, so element i sits in word i/8 at bit 8*((i%8)/2) + 4*(1 - i%2).
//
// Statistics, one absmax per block of BLOCKSIZE consecutive elements (a multiple of 8, so the
// eight elements of one word always share a block):
//   plain:        absmax_b = scales[b]
//   double quant: absmax_b = tables[16 + q_b] * scales[b / NESTED] + tables[272]
//                 (q_b = byte b of absmax_q, tables[16..272] = the signed dynamic 8-bit map,
//                  scales = nested_absmax, tables[272] = offset = mean of the original absmax)
// Value: w_i = tables[nibble_i] * absmax_{i / BLOCKSIZE}, tables[0..16] = NF4 or FP4 codebook.

// The weight's bindings, the first four of every 4-bit shader (its own start at 4):
@group(0) @binding(0) var<storage, read_write> packed: array<u32>;
@group(0) @binding(1) var<storage, read_write> absmax_q: array<u32>;
@group(0) @binding(2) var<storage, read_write> scales: array<f32>;
@group(0) @binding(3) var<storage, read_write> tables: array<f32>;

const DOUBLE_QUANT: bool = {{ double_quant }};
const NESTED: u32 = {{ nested }}u;

fn nibble(word: u32, p: u32) -> u32 {
    return (word >> (8u * (p >> 1u) + 4u * (1u - (p & 1u)))) & 15u;
}

fn block_absmax(b: u32) -> f32 {
    if DOUBLE_QUANT {
        let q = (absmax_q[b >> 2u] >> (8u * (b & 3u))) & 255u;
        return tables[16u + q] * scales[b / NESTED] + tables[272u];
    }
    return scales[b];
}
