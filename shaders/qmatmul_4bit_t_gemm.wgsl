// Tiled transposed 4-bit GEMM for many rows on a GPU (input gradient):
//   dX[m, k] = sum_n dY[m, n] * W[n, k],
// W = dequant(packed) of shape [N, K] with K a multiple of 8 (a packed word never straddles two
// rows); dY is [M, N], dX is [M, K], contiguous row-major f32. Layout and statistics of W: see
// common_4bit.wgsl; tiles, staging and the product: gemm_tile.wgsl (both prepended).
//
// As qmatmul_4bit_gemm.wgsl with the roles of N and K swapped: a workgroup computes a BM x BC
// tile of dX (columns k), and N advances in slices of 16 rows of W staged n-major:
//   xs[n][m] = dY[m0 + m, n0 + n]   and   ws[n][c] = W[n0 + n, c0 + c],  (BM + BC) * 16 f32
// Here a packed word holds 8 consecutive columns of one row, so each decoded word fills two
// whole vec4 of ws. dY's rows need not be whole vec4 (N is any size), so it is read as f32.
// Grid: x = ceil(K / BC), y = ceil(M / BM).
//
// Bindings: 0 packed | 1 absmax_q | 2 scales | 3 tables | 4 dy f32[M*N] | 5 y = dX f32[M*K]
//           6 params (uniform) u32[M, N, K, blocksize]

// Bindings 0-3 (the weight): declared in common_4bit.wgsl.
@group(0) @binding(4) var<storage, read_write> dy: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>; // dX, stored by store_tile
@group(0) @binding(6) var<uniform> params: array<vec4<u32>, 2>;
// Launch parameter i (CubeCL's info uniform: up to 8 u32, cached across launches).
fn param(i: u32) -> u32 {
    return params[i >> 2u][i & 3u];
}

@compute @workgroup_size(16, 16, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let m_total = param(0u);
    // From a uniform buffer, so the loop around the barriers below is provably uniform.
    let n_total = param(1u);
    let k_total = param(2u);
    let blocksize = param(3u);
    let m0 = wid.y * BM;
    let c0 = wid.x * BC;
    let words = k_total / 8u; // packed words per row of W
    let code = codebook();

    for (var n0 = 0u; n0 < n_total; n0 += SLICE) {
        // dY[m0 + 4g + i, n0 + s] for i < 4 (rows 4g.. of the tile), zero past N, as one whole
        // vec4 xs[s][g]: WGSL lets a write to one component of a vector access the whole vector,
        // so invocations sharing a vec4 would race. Rows past M re-read the last row; their sums
        // are never written.
        for (var e = li; e < (BM / 4u) * SLICE; e += 256u) {
            let g = e / SLICE;
            let s = e % SLICE;
            var v = vec4(0.0);
            if n0 + s < n_total {
                for (var i = 0u; i < 4u; i++) {
                    v[i] = dy[min(m0 + 4u * g + i, m_total - 1u) * n_total + n0 + s];
                }
            }
            xs[s * (BM / 4u) + g] = v;
        }
        // Word q of row n0 + s of W in this tile: columns c0 + 8q .. + 8, zero past N or K.
        for (var e = li; e < SLICE * (BC / 8u); e += 256u) {
            let s = e / (BC / 8u);
            let q = e % (BC / 8u);
            var lo = vec4(0.0);
            var hi = vec4(0.0);
            if n0 + s < n_total && c0 + 8u * q < k_total {
                let w = (n0 + s) * words + c0 / 8u + q;
                let word = packed[w];
                let scale = block_absmax((w * 8u) / blocksize);
                lo = decode4(word, NIBBLES_LO, code) * scale;
                hi = decode4(word, NIBBLES_HI, code) * scale;
            }
            ws[s * (BC / 4u) + 2u * q] = lo;
            ws[s * (BC / 4u) + 2u * q + 1u] = hi;
        }
        workgroupBarrier();
        accumulate_slice(lid);
        workgroupBarrier();
    }
    store_tile(m0, c0, m_total, k_total, lid);
}
