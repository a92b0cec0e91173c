// Transposed fused 4-bit matmul for software adapters (input gradient):
//   dX[m, k] = sum_n dY[m, n] * W[n, k],
// W = dequant(packed) of shape [N, K] with K a multiple of 8 (a packed word never straddles two
// rows); dY is [M, N], dX is [M, K], contiguous row-major f32. Layout and statistics of W: see
// common_4bit.wgsl (prepended).
//
// As qmatmul_4bit_tile.wgsl, for adapters that run invocations as the lanes of CPU vectors: each
// invocation owns a register tile, TW packed words of a row of W (8 * TW consecutive columns k)
// x TM rows of dY, and walks N one row of W at a time: the TM values of dY it loads serve all
// 8 * TW columns, each packed word serves all TM rows, codes are decoded by selects (`decode4`).
// No workgroup memory, no barrier. (On a GPU qmatmul_4bit_t.wgsl serves instead.)
// Grid: x * y = ceil(K / (8 * TW * WG)) groups of WG invocations (2-D when large),
// z = ceil(M / TM).
//
// Bindings: 0 packed | 1 absmax_q | 2 scales | 3 tables | 4 dy f32[M*N] | 5 dx vec4<f32>[M*K/4]
//           6 params (uniform) u32[M, N, K, blocksize, groups_x]

// Bindings 0-3 (the weight): declared in common_4bit.wgsl.
@group(0) @binding(4) var<storage, read_write> dy: array<f32>;
@group(0) @binding(5) var<storage, read_write> dx: array<vec4<f32>>;
@group(0) @binding(6) var<uniform> params: array<vec4<u32>, 2>;
// Launch parameter i (CubeCL's info uniform: up to 8 u32, cached across launches).
fn param(i: u32) -> u32 {
    return params[i >> 2u][i & 3u];
}

const TM: u32 = {{ tm }}u; // rows of dY per invocation
const TW: u32 = {{ tw }}u; // packed words (8 columns of dX each) per invocation
const WG: u32 = {{ wg }}u; // invocations per workgroup

@compute @workgroup_size({{ wg }}, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let m_total = param(0u);
    let n_total = param(1u);
    let k_total = param(2u);
    let blocksize = param(3u);
    let words = k_total / 8u; // packed words per row of W
    let w0 = ((wid.y * param(4u) + wid.x) * WG + lid.x) * TW; // first word column
    let m0 = wid.z * TM;
    let code = codebook();

    // Word columns and rows of dY past the end re-read the last one; their sums are never written.
    var col: array<u32, {{ tw }}>;
    for (var t = 0u; t < TW; t++) {
        col[t] = min(w0 + t, words - 1u);
    }
    var dy_row: array<u32, {{ tm }}>;
    for (var r = 0u; r < TM; r++) {
        dy_row[r] = min(m0 + r, m_total - 1u) * n_total;
    }

    // acc[(r * TW + t) * 2 + h] = dX[m0 + r, 8 * (w0 + t) + 4h .. + 4]
    var acc: array<vec4<f32>, {{ acc_len }}>;
    for (var n = 0u; n < n_total; n++) {
        var g: array<f32, {{ tm }}>;
        for (var r = 0u; r < TM; r++) {
            g[r] = dy[dy_row[r] + n];
        }
        for (var t = 0u; t < TW; t++) {
            let w = n * words + col[t];
            let word = packed[w];
            let scale = block_absmax((w * 8u) / blocksize);
            let lo = decode4(word, NIBBLES_LO, code) * scale;
            let hi = decode4(word, NIBBLES_HI, code) * scale;
            for (var r = 0u; r < TM; r++) {
                acc[(r * TW + t) * 2u] += g[r] * lo;
                acc[(r * TW + t) * 2u + 1u] += g[r] * hi;
            }
        }
    }
    for (var r = 0u; r < TM; r++) {
        for (var t = 0u; t < TW; t++) {
            if m0 + r < m_total && w0 + t < words {
                let o = ((m0 + r) * k_total + 8u * (w0 + t)) / 4u;
                dx[o] = acc[(r * TW + t) * 2u];
                dx[o + 1u] = acc[(r * TW + t) * 2u + 1u];
            }
        }
    }
}
