// Fused 4-bit matmul for software adapters:  Y[m, n] = sum_k X[m, k] * W[n, k],
// W = dequant(packed) of shape [N, K] with K a multiple of 8 (a packed word never straddles two
// rows). X is [M, K] and Y is [M, N], both contiguous row-major f32. Layout and statistics of W:
// see common_4bit.wgsl (prepended).
//
// A software adapter (llvmpipe, SwiftShader) runs a workgroup's invocations as the lanes of CPU
// vectors, so what costs is a load whose address differs per lane. Each invocation therefore
// owns a register tile, TN = 8 consecutive columns n x TM rows of X, and walks K one word at a
// time: the 2*TM vec4 of X it loads serve all TN columns, each packed word serves all TM rows,
// a column's absmax is loaded once per block, and codes are decoded by selects (`decode4`), not
// table reads. No workgroup memory, no barrier. (On a GPU the 32 x 8 workgroup of
// qmatmul_4bit.wgsl, which reads W coalesced, serves instead.)
// Grid: x * y = ceil(N / (WG * TN)) groups of WG invocations (2-D when large), z = ceil(M / TM).
//
// Bindings: 0 packed | 1 absmax_q | 2 scales | 3 tables | 4 x vec4<f32>[M*K/4] | 5 y f32[M*N]
//           6 params (uniform) u32[M, N, K, blocksize, groups_x]

// Bindings 0-3 (the weight): declared in common_4bit.wgsl.
@group(0) @binding(4) var<storage, read_write> x: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;
@group(0) @binding(6) var<uniform> params: array<vec4<u32>, 2>;
// Launch parameter i (CubeCL's info uniform: up to 8 u32, cached across launches).
fn param(i: u32) -> u32 {
    return params[i >> 2u][i & 3u];
}

const TM: u32 = {{ tm }}u; // rows of X per invocation
const TN: u32 = {{ tn }}u; // columns of Y (rows of W) per invocation
const WG: u32 = {{ wg }}u; // invocations per workgroup

@compute @workgroup_size({{ wg }}, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let m_total = param(0u);
    let n_total = param(1u);
    let k_total = param(2u);
    let blocksize = param(3u);
    let n0 = ((wid.y * param(4u) + wid.x) * WG + lid.x) * TN;
    let m0 = wid.z * TM;
    let words = k_total / 8u; // packed words per row of W
    let code = codebook();

    // First word of each column's row of W, and first vec4 of each row of X. Columns and rows
    // past the end re-read the last one; their sums are never written.
    var w_row: array<u32, {{ tn }}>;
    for (var c = 0u; c < TN; c++) {
        w_row[c] = min(n0 + c, n_total - 1u) * words;
    }
    var x_row: array<u32, {{ tm }}>;
    for (var r = 0u; r < TM; r++) {
        x_row[r] = min(m0 + r, m_total - 1u) * (k_total / 4u);
    }
    // The absmax of the block each column is in (blocks are reloaded when a word enters a new one).
    var block: array<u32, {{ tn }}>;
    var scale: array<f32, {{ tn }}>;
    for (var c = 0u; c < TN; c++) {
        block[c] = 0xffffffffu;
    }

    var acc: array<f32, {{ acc_len }}>; // acc[r * TN + c] = Y[m0 + r, n0 + c]
    for (var j = 0u; j < words; j++) {
        // X[m0 + r, 8j .. 8j + 8] as two vec4, for every row of the tile.
        var xs: array<vec4<f32>, {{ xs_len }}>;
        for (var r = 0u; r < TM; r++) {
            xs[2u * r] = x[x_row[r] + 2u * j];
            xs[2u * r + 1u] = x[x_row[r] + 2u * j + 1u];
        }
        for (var c = 0u; c < TN; c++) {
            let w = w_row[c] + j;
            let word = packed[w];
            let b = (w * 8u) / blocksize;
            if b != block[c] {
                block[c] = b;
                scale[c] = block_absmax(b);
            }
            let lo = decode4(word, NIBBLES_LO, code) * scale[c];
            let hi = decode4(word, NIBBLES_HI, code) * scale[c];
            for (var r = 0u; r < TM; r++) {
                acc[r * TN + c] += dot(xs[2u * r], lo) + dot(xs[2u * r + 1u], hi);
            }
        }
    }
    for (var r = 0u; r < TM; r++) {
        for (var c = 0u; c < TN; c++) {
            if m0 + r < m_total && n0 + c < n_total {
                y[(m0 + r) * n_total + n0 + c] = acc[r * TN + c];
            }
        }
    }
}
