// Transposed fused 4-bit matmul (input gradient):  dX[m, k] = sum_n dY[m, n] * W[n, k],
// W = dequant(packed) of shape [N, K]; dY is [M, N], dX is [M, K], contiguous row-major f32.
// Layout and statistics of W: see common_4bit.wgsl (prepended). For a GPU; software adapters
// take qmatmul_4bit_t_tile.wgsl where K % 8 == 0.
//
// Workgroup 64 x 4: the 64 lanes (x) own 64 consecutive columns k (neighbouring nibbles, so
// reads of a row of W are contiguous); the 4 rows (y) split the sum over n. Each lane applies a
// decoded weight to TM rows of dY; partial sums meet in workgroup memory (4*TM*64 f32 <= 8 KiB).
// Grid: x * y = ceil(K / 64) groups (2-D when large), z = ceil(M / TM).
//
// Bindings: 0 packed | 1 absmax_q | 2 scales | 3 tables | 4 dy f32[M*N] | 5 dx f32[M*K]
//           6 params (uniform) u32[M, N, K, blocksize, groups_x]

// Bindings 0-3 (the weight): declared in common_4bit.wgsl.
@group(0) @binding(4) var<storage, read_write> dy: array<f32>;
@group(0) @binding(5) var<storage, read_write> dx: array<f32>;
@group(0) @binding(6) var<uniform> params: array<vec4<u32>, 2>;
// Launch parameter i (CubeCL's info uniform: up to 8 u32, cached across launches).
fn param(i: u32) -> u32 {
    return params[i >> 2u][i & 3u];
}

const TM: u32 = {{ tm }}u;
var<workgroup> partial: array<f32, {{ partial_len }}>;

@compute @workgroup_size(64, 4, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let m_total = param(0u);
    let n_total = param(1u);
    let k_total = param(2u);
    let blocksize = param(3u);
    let k = (wid.y * param(4u) + wid.x) * 64u + lid.x;
    let m0 = wid.z * TM;
    let m_count = min(TM, m_total - m0);

    var acc: array<f32, {{ tm }}>;
    if k < k_total {
        for (var n = lid.y; n < n_total; n += 4u) {
            let i = n * k_total + k;
            let v = tables[nibble(packed[i >> 3u], i & 7u)] * block_absmax(i / blocksize);
            for (var mm = 0u; mm < TM; mm++) {
                // Rows past M re-read row M-1; their sums are never written.
                acc[mm] += dy[min(m0 + mm, m_total - 1u) * n_total + n] * v;
            }
        }
    }
    for (var mm = 0u; mm < TM; mm++) {
        partial[(lid.y * TM + mm) * 64u + lid.x] = acc[mm];
    }
    workgroupBarrier();
    if k < k_total && lid.y == 0u {
        for (var mm = 0u; mm < m_count; mm++) {
            var sum = 0.0;
            for (var t = 0u; t < 4u; t++) {
                sum += partial[(t * TM + mm) * 64u + lid.x];
            }
            dx[(m0 + mm) * k_total + k] = sum;
        }
    }
}
