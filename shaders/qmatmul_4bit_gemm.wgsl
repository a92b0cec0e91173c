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
// (8 KiB at TM = TC = 4, 16 KiB at 8: WebGPU's default limit). Every invocation stages a share of
// both: vec4s of X, and packed words of W, each decoded once (8 weights, one absmax).
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
        for (var e = li; e < BC * 2u; e += 256u) {
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
                ws[(8u * q + c) * (BC / 4u) + r / 4u][r & 3u] = lo[c];
                ws[(8u * q + 4u + c) * (BC / 4u) + r / 4u][r & 3u] = hi[c];
            }
        }
        workgroupBarrier();
        accumulate_slice(lid);
        workgroupBarrier();
    }
    store_tile(m0, n0, m_total, n_total, lid);
}
