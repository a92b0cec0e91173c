// Dequantize rows r0..r0+R of a packed 4-bit weight W [N, K] (K a multiple of 8) to f32,
// transposed:
//   out[k * R + (n - r0)] = code[nibble_{n*K + k}] * absmax_{(n*K + k) / blocksize},
// i.e. dequant(W[r0..r0+R, :])^T as a row-major [K, R] matrix: the operand X * W^T wants, laid
// out as a dense model stores it, so burn's matmul needs no transposed operand (whose kernels
// ran up to 1.25x slower on a GPU). Layout and statistics: see common_4bit.wgsl.
//
// A workgroup covers a tile of TN rows x TK columns of W (32 x 64 as launched): WG = TN*TK/8
// packed words, since K is a multiple of 8 and so a word never straddles two rows. Invocation t
// decodes word t of the tile (row t / (TK/8), columns 8 * (t % (TK/8)) ..+8) into workgroup
// memory; after a barrier it stores elements t, t + WG, .., t + 7 * WG of the tile taken column
// by column, so that neighbouring invocations write neighbouring floats of one output row k (TN
// floats, coalesced). Tile rows are padded to TK + 1 floats so that those column reads fall in
// different memory banks.
// A 2-D grid covers more than 65535 tiles.
//
// Bindings: 0 packed u32[ceil(N*K/8)] | 1 absmax_q u32 (double quant) | 2 scales f32
//           3 tables f32[273] | 4 out f32[K * R]
//           5 params (uniform) u32[K, blocksize, r0, R, tiles_k, groups_x]
// The storage bindings are all read_write: CubeCL may place several tensors in one buffer, and
// WebGPU refuses a read-only binding of a buffer that another binding of the dispatch writes.

// Bindings 0-3 (the weight): declared in common_4bit.wgsl.
@group(0) @binding(4) var<storage, read_write> output: array<f32>;
@group(0) @binding(5) var<uniform> params: array<vec4<u32>, 2>;
// Launch parameter i (CubeCL's info uniform: up to 8 u32, cached across launches).
fn param(i: u32) -> u32 {
    return params[i >> 2u][i & 3u];
}

const TN: u32 = {{ tn }}u; // rows of W per tile
const TK: u32 = {{ tk }}u; // columns of W per tile (a multiple of 8)
const WG: u32 = {{ wg }}u; // TN * TK / 8: one packed word per invocation
const PAD: u32 = TK + 1u; // floats per tile row in workgroup memory
// W[tile row i, tile column j] sits in tile[i * PAD + j] (TN * PAD floats).
var<workgroup> tile: array<f32, {{ tile_len }}>;

@compute @workgroup_size({{ wg }}, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let k_len = param(0u);
    let rows = param(3u);
    let group = wid.y * param(5u) + wid.x;
    let tile_n = group / param(4u);
    let tile_k = group % param(4u);
    // Decode: one word, eight consecutive columns of one row.
    let i = lid / (TK / 8u);
    let j0 = (lid % (TK / 8u)) * 8u;
    let n = tile_n * TN + i; // row of the chunk
    let k = tile_k * TK + j0;
    if n < rows && k < k_len {
        let e = (param(2u) + n) * k_len + k; // element index in W
        let word = packed[e / 8u];
        let scale = block_absmax(e / param(1u));
        for (var p = 0u; p < 8u; p++) {
            tile[i * PAD + j0 + p] = tables[nibble(word, p)] * scale;
        }
    }
    workgroupBarrier();
    // Store: element q of the tile column by column, W[n, k] -> out[k * rows + n].
    for (var s = 0u; s < 8u; s++) {
        let q = s * WG + lid;
        let ti = q % TN;
        let tj = q / TN;
        let on = tile_n * TN + ti;
        let ok = tile_k * TK + tj;
        if on < rows && ok < k_len {
            output[ok * rows + on] = tile[ti * PAD + tj];
        }
    }
}
