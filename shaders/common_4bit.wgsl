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

// Bit offsets of a word's elements 0..3 (`NIBBLES_LO`) or 4..7 (`NIBBLES_HI`), as `nibble` reads
// them, for `decode4`.
const NIBBLES_LO: vec4<u32> = vec4(4u, 0u, 12u, 8u);
const NIBBLES_HI: vec4<u32> = vec4(20u, 16u, 28u, 24u);

// The 16 code values, tables[0..16], as four vec4 for `decode4`.
fn codebook() -> array<vec4<f32>, 4> {
    return array(vec4(tables[0], tables[1], tables[2], tables[3]),
                 vec4(tables[4], tables[5], tables[6], tables[7]),
                 vec4(tables[8], tables[9], tables[10], tables[11]),
                 vec4(tables[12], tables[13], tables[14], tables[15]));
}

// The code values of four elements of `word` (`shifts`: NIBBLES_LO or NIBBLES_HI), by a tree of
// selects on the bits of each code v: c[v >> 2][v & 3]. A software adapter runs invocations as
// the lanes of CPU vectors, where a table read at an index that differs per lane is one scalar
// load per lane; the selects are a few vector instructions.
fn decode4(word: u32, shifts: vec4<u32>, c: array<vec4<f32>, 4>) -> vec4<f32> {
    let v = (vec4(word) >> shifts) & vec4(15u);
    let b0 = (v & vec4(1u)) != vec4(0u);
    let b1 = (v & vec4(2u)) != vec4(0u);
    let b2 = (v & vec4(4u)) != vec4(0u);
    let b3 = (v & vec4(8u)) != vec4(0u);
    // q_i = c[i][v & 3] for each quarter i of the codebook, then pick the quarter by bits 2, 3.
    let q0 = select(select(vec4(c[0].x), vec4(c[0].y), b0), select(vec4(c[0].z), vec4(c[0].w), b0), b1);
    let q1 = select(select(vec4(c[1].x), vec4(c[1].y), b0), select(vec4(c[1].z), vec4(c[1].w), b0), b1);
    let q2 = select(select(vec4(c[2].x), vec4(c[2].y), b0), select(vec4(c[2].z), vec4(c[2].w), b0), b1);
    let q3 = select(select(vec4(c[3].x), vec4(c[3].y), b0), select(vec4(c[3].z), vec4(c[3].w), b0), b1);
    return select(select(q0, q1, b2), select(q2, q3, b2), b3);
}
