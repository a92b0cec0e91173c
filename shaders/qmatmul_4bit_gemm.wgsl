// Tiled 4-bit GEMM for many rows on a GPU:  Y[m, n] = sum_k X[m, k] * W[n, k],
// W = dequant(packed) of shape [N, K] with K a multiple of 8 (a packed word never straddles two
// rows). X is [M, K] and Y is [M, N], both contiguous row-major f32. Layout and statistics of W:
// see common_4bit.wgsl; tiles, staging and the product: gemm_tile.wgsl (both prepended).
//
// The shape of an f32 SGEMM whose B tiles are dequantized on their way into workgroup memory, so
// W is read once per BM rows as 0.5 byte per weight and no f32 copy of it exists (the
// dequantize-then-matmul path writes and rereads one, in a second dispatch).
// A workgroup computes a BM x BC tile of Y (columns n), and K advances in slices of 16 staged
// k-major: xs[k][m] = X[m0 + m, k0 + k] and ws[k][n] = W[n0 + n, k0 + k], (BM + BC) * 16 f32
// (8 KiB at TM = TC = 4, 16 KiB at 8: WebGPU's default limit). Invocations stage whole vec4s of
// both, four rows at a time: vec4s of X, and halves of packed words of W (each decoded once).
// Grid: x = ceil(N / BC), y = ceil(M / BM).
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

@compute @workgroup_size(16, 16, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let m_total = param(0u);
    let n_total = param(1u);
    // From a uniform buffer, so the loop around the barriers below is provably uniform.
    let k_total = param(2u);
    let blocksize = param(3u);
    let m0 = wid.y * BM;
    let n0 = wid.x * BC;
    let code = codebook();

    for (var k0 = 0u; k0 < k_total; k0 += SLICE) {
        // Each vec4 of xs and ws is written whole by one invocation: WGSL lets a write to one
        // component of a vector access the whole vector, so invocations sharing a vec4 would race.
        // X[m0 + 4g + i, k0 + 4q .. + 4] for i < 4 (rows 4g.. of the tile), zero past K, gives
        // xs[4q + c][g] = (X[.., k0 + 4q + c] of those four rows). Rows past M re-read the last
        // row; their sums are never written.
        for (var e = li; e < BM; e += 256u) {
            let g = e >> 2u;
            let q = e & 3u;
            var v: array<vec4<f32>, 4>;
            if k0 + 4u * q < k_total {
                for (var i = 0u; i < 4u; i++) {
                    v[i] = x[(min(m0 + 4u * g + i, m_total - 1u) * k_total + k0) / 4u + q];
                }
            } else {
                // Zeroed by a store, not left to the declaration: in Chromium's WebGPU (Tint's
                // translation, on SwiftShader) this var kept the previous slice's values.
                v = array<vec4<f32>, 4>();
            }
            for (var c = 0u; c < 4u; c++) {
                xs[(4u * q + c) * (BM / 4u) + g] = vec4(v[0][c], v[1][c], v[2][c], v[3][c]);
            }
        }
        // Half h (weights 4h .. + 4) of word q of rows n0 + 4g + i of W in this slice (weights
        // k0 + 8q .. + 8), zero past K, gives ws[8q + 4h + c][g]. Rows past N re-read the last.
        for (var e = li; e < BC; e += 256u) {
            let g = e >> 2u;
            let q = (e >> 1u) & 1u;
            let shifts = select(NIBBLES_LO, NIBBLES_HI, (e & 1u) == 1u);
            var d: array<vec4<f32>, 4>;
            if k0 + 8u * q < k_total {
                for (var i = 0u; i < 4u; i++) {
                    let w = (min(n0 + 4u * g + i, n_total - 1u) * k_total + k0) / 8u + q;
                    d[i] = decode4(packed[w], shifts, code) * block_absmax((w * 8u) / blocksize);
                }
            } else {
                d = array<vec4<f32>, 4>(); // as v above
            }
            let s0 = 8u * q + 4u * (e & 1u);
            for (var c = 0u; c < 4u; c++) {
                ws[(s0 + c) * (BC / 4u) + g] = vec4(d[0][c], d[1][c], d[2][c], d[3][c]);
            }
        }
        workgroupBarrier();
        accumulate_slice(lid);
        workgroupBarrier();
    }
    store_tile(m0, n0, m_total, n_total, lid);
}
