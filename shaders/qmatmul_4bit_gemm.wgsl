// Tiled 4-bit GEMM for many rows on a GPU:  Y[m, n] = sum_k X[m, k] * W[n, k],
// W = dequant(packed) of shape [N, K] with K a multiple of 8 (a packed word never straddles two
// rows). X is [M, K] and Y is [M, N], both contiguous row-major f32. Layout and statistics of W:
// see common_4bit.wgsl (prepended).
//
// The shape of an f32 SGEMM whose B tiles are dequantized on their way into workgroup memory, so
// W is read once per BM rows as 0.5 byte per weight and no f32 copy of it exists (the
// dequantize-then-matmul path writes and rereads one, in a second dispatch).
// Workgroup 16 x 16; a workgroup computes a BM x BN tile of Y, BM = 16*TM rows, BN = 16*TN
// columns, and K advances in slices of BK = 16 staged in workgroup memory, k-major:
//   xs[k][m] = X[m0 + m, k0 + k]   and   ws[k][n] = W[n0 + n, k0 + k],  (BM + BN) * BK f32
// (8 KiB at TM = TN = 4, 16 KiB at 8: WebGPU's default limit). Every invocation stages a share of
// both: vec4s of X, and packed words of W, each decoded once (8 weights, one absmax).
// Invocation (x, y) owns rows m0 + 64i + 4y + a and columns n0 + 64j + 4x + b (a, b < 4), so a
// slice's reads of xs and ws are whole vec4 and neighbouring invocations read neighbouring ones.
// Grid: x = ceil(N / BN), y = ceil(M / BM).
//
// Bindings: 0 packed | 1 absmax_q | 2 scales | 3 tables | 4 x vec4<f32>[M*K/4] | 5 y f32[M*N]
//           6 params (uniform) u32[M, N, K, blocksize]

// Bindings 0-3 (the weight): declared in common_4bit.wgsl.
@group(0) @binding(4) var<storage, read_write> x: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;
@group(0) @binding(6) var<uniform> params: array<vec4<u32>, 2>;
// Launch parameter i (CubeCL's info uniform: up to 8 u32, cached across launches).
fn param(i: u32) -> u32 {
    return params[i >> 2u][i & 3u];
}

const TM: u32 = {{ tm }}u; // rows of Y per invocation, a multiple of 4
const TN: u32 = {{ tn }}u; // columns of Y per invocation, a multiple of 4
const BM: u32 = 16u * TM;
const BN: u32 = 16u * TN;
const BK: u32 = 16u; // two packed words of each row of W per slice

var<workgroup> xs: array<vec4<f32>, {{ xs_len }}>; // [BK][BM / 4]
var<workgroup> ws: array<vec4<f32>, {{ ws_len }}>; // [BK][BN / 4]

@compute @workgroup_size(16, 16, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let m_total = param(0u);
    let n_total = param(1u);
    // From a uniform buffer, so the loop around the barriers below is provably uniform.
    let k_total = param(2u);
    let blocksize = param(3u);
    let m0 = wid.y * BM;
    let n0 = wid.x * BN;
    let code = codebook();

    var acc: array<vec4<f32>, {{ acc_len }}>; // acc[r * TN/4 + j] = Y[row r, columns 64j + 4x ..]
    for (var k0 = 0u; k0 < k_total; k0 += BK) {
        // X[m0 + r, k0 + 4q .. + 4] for r < BM, q < 4, zero past K. Rows past M re-read the last
        // row; their sums are never written.
        for (var e = li; e < BM * 4u; e += 256u) {
            let r = e >> 2u;
            let q = e & 3u;
            var v = vec4(0.0);
            if k0 + 4u * q < k_total {
                v = x[(min(m0 + r, m_total - 1u) * k_total + k0) / 4u + q];
            }
            for (var c = 0u; c < 4u; c++) {
                xs[(4u * q + c) * (BM / 4u) + r / 4u][r & 3u] = v[c];
            }
        }
        // Word q of row n0 + r of W in this slice: weights k0 + 8q .. + 8, zero past K.
        for (var e = li; e < BN * 2u; e += 256u) {
            let r = e >> 1u;
            let q = e & 1u;
            var lo = vec4(0.0);
            var hi = vec4(0.0);
            if k0 + 8u * q < k_total {
                let w = (min(n0 + r, n_total - 1u) * k_total + k0) / 8u + q;
                let word = packed[w];
                let scale = block_absmax((w * 8u) / blocksize);
                lo = decode4(word, NIBBLES_LO, code) * scale;
                hi = decode4(word, NIBBLES_HI, code) * scale;
            }
            for (var c = 0u; c < 4u; c++) {
                ws[(8u * q + c) * (BN / 4u) + r / 4u][r & 3u] = lo[c];
                ws[(8u * q + 4u + c) * (BN / 4u) + r / 4u][r & 3u] = hi[c];
            }
        }
        workgroupBarrier();
        for (var k = 0u; k < BK; k++) {
            var b: array<vec4<f32>, {{ tn4 }}>;
            for (var j = 0u; j < TN / 4u; j++) {
                b[j] = ws[k * (BN / 4u) + 16u * j + lid.x];
            }
            for (var i = 0u; i < TM / 4u; i++) {
                let a = xs[k * (BM / 4u) + 16u * i + lid.y];
                for (var c = 0u; c < 4u; c++) {
                    let r = 4u * i + c;
                    for (var j = 0u; j < TN / 4u; j++) {
                        acc[r * (TN / 4u) + j] = fma(vec4(a[c]), b[j], acc[r * (TN / 4u) + j]);
                    }
                }
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < TM / 4u; i++) {
        for (var c = 0u; c < 4u; c++) {
            let m = m0 + 64u * i + 4u * lid.y + c;
            for (var j = 0u; j < TN / 4u; j++) {
                let v = acc[(4u * i + c) * (TN / 4u) + j];
                for (var d = 0u; d < 4u; d++) {
                    let n = n0 + 64u * j + 4u * lid.x + d;
                    if m < m_total && n < n_total {
                        y[m * n_total + n] = v[d];
                    }
                }
            }
        }
    }
}
