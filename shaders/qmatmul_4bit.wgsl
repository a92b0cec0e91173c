// Fused 4-bit matmul:  Y[m, n] = sum_k X[m, k] * W[n, k],  W = dequant(packed) of shape [N, K].
// X is [M, K] and Y is [M, N], both contiguous row-major f32. Layout and statistics of W: see
// common_4bit.wgsl (prepended). Built for small M (token generation, short batches) on a GPU;
// software adapters take qmatmul_4bit_tile.wgsl where K % 8 == 0.
//
// Workgroup 32 x 8: the 8 rows (y) each compute one output column n; the 32 lanes (x) of a row
// stride over the packed words of W's row n, decode each word once (8 weights, one absmax) and
// apply it to TM rows of X. Lane partial sums meet in workgroup memory (8*TM*32 f32 <= 8 KiB).
// Grid: x * y = ceil(N / 8) groups (2-D when large), z = ceil(M / TM).
//
// Bindings: 0 packed | 1 absmax_q | 2 scales | 3 tables | 4 x f32[M*K] | 5 y f32[M*N]
//           6 params (uniform) u32[M, N, K, blocksize, groups_x]

// Bindings 0-3 (the weight): declared in common_4bit.wgsl.
@group(0) @binding(4) var<storage, read_write> x: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;
@group(0) @binding(6) var<uniform> params: array<vec4<u32>, 2>;
// Launch parameter i (CubeCL's info uniform: up to 8 u32, cached across launches).
fn param(i: u32) -> u32 {
    return params[i >> 2u][i & 3u];
}

const TM: u32 = {{ tm }}u;
var<workgroup> partial: array<f32, {{ partial_len }}>;

@compute @workgroup_size(32, 8, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let m_total = param(0u);
    let n_total = param(1u);
    let k_total = param(2u);
    let blocksize = param(3u);
    let n = (wid.y * param(4u) + wid.x) * 8u + lid.y;
    let m0 = wid.z * TM;
    let m_count = min(TM, m_total - m0);

    var acc: array<f32, {{ tm }}>;
    if n < n_total {
        let start = n * k_total;
        let end = start + k_total;
        let w_end = (end + 7u) / 8u;
        for (var w = start / 8u + lid.x; w < w_end; w += 32u) {
            let word = packed[w];
            let scale = block_absmax((w * 8u) / blocksize);
            let base = w * 8u;
            if base >= start && base + 8u <= end {
                // The whole word lies in row n (always, when K % 8 == 0): two vec4 of weights.
                let lo = vec4(tables[nibble(word, 0u)], tables[nibble(word, 1u)],
                              tables[nibble(word, 2u)], tables[nibble(word, 3u)]) * scale;
                let hi = vec4(tables[nibble(word, 4u)], tables[nibble(word, 5u)],
                              tables[nibble(word, 6u)], tables[nibble(word, 7u)]) * scale;
                let k0 = base - start;
                for (var mm = 0u; mm < TM; mm++) {
                    // Rows past M re-read row M-1; their sums are never written.
                    let r = min(m0 + mm, m_total - 1u) * k_total + k0;
                    acc[mm] += dot(vec4(x[r], x[r + 1u], x[r + 2u], x[r + 3u]), lo)
                             + dot(vec4(x[r + 4u], x[r + 5u], x[r + 6u], x[r + 7u]), hi);
                }
            } else {
                // A word shared with the neighbouring row (K % 8 != 0): element by element.
                for (var p = 0u; p < 8u; p++) {
                    let i = base + p;
                    if i >= start && i < end {
                        let v = tables[nibble(word, p)] * scale;
                        let k = i - start;
                        for (var mm = 0u; mm < TM; mm++) {
                            acc[mm] += x[min(m0 + mm, m_total - 1u) * k_total + k] * v;
                        }
                    }
                }
            }
        }
    }
    for (var mm = 0u; mm < TM; mm++) {
        partial[(lid.y * TM + mm) * 32u + lid.x] = acc[mm];
    }
    workgroupBarrier();
    if n < n_total && lid.x < m_count {
        var sum = 0.0;
        for (var t = 0u; t < 32u; t++) {
            sum += partial[(lid.y * TM + lid.x) * 32u + t];
        }
        y[(m0 + lid.x) * n_total + n] = sum;
    }
}
