// Transposed fused 4-bit matmul for Mesa's llvmpipe (input gradient):
//   dX[m, k] = sum_n dY[m, n] * W[n, k],
// W = dequant(packed) of shape [N, K] with K % 8 == 0; dY is [M, N], dX is [M, K], contiguous
// row-major f32. Layout and statistics of W: see common_4bit.wgsl (prepended). Needs subgroups
// of exactly S lanes (the workgroup is one subgroup) and N % (4 S) == 0.
//
// As qmatmul_4bit_subgroup.wgsl: llvmpipe loads from a storage buffer one lane at a time, so
// each lane loads a different vec4 of a row of dY (a chunk of 4 S values of n between them) and
// subgroupBroadcast hands lane i's vec4 to every lane, a register shuffle.
//
// Each invocation (lane l) owns TW word columns w = w0 + l + S t (t < TW; 8 columns k each) and
// TM rows, and walks N one chunk at a time: for each n of the chunk it decodes its words of row
// n of W (by selects, `decode4`) and adds dY[m0 + r, n] times them to TM x TW x 8 sums. The rows,
// the chunk's lanes and their four values of n are unrolled by the Rust side (`subgroup_t_load`,
// `_lanes`, `_store` in shaders.rs): llvmpipe keeps a register array indexed by a loop counter in
// memory, lane by lane, and reading a vec4's component by a loop counter cost 1.5x.
// Grid: x * y = ceil(K / (8 S TW)) groups (2-D when large), z = ceil(M / TM).
//
// Bindings: 0 packed | 1 absmax_q | 2 scales | 3 tables | 4 dy vec4<f32>[M*N/4]
//           5 dx vec4<f32>[M*K/4] | 6 params (uniform) u32[M, N, K, blocksize, groups_x]

// Bindings 0-3 (the weight): declared in common_4bit.wgsl.
@group(0) @binding(4) var<storage, read_write> dy: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> dx: array<vec4<f32>>;
@group(0) @binding(6) var<uniform> params: array<vec4<u32>, 2>;
// Launch parameter i (CubeCL's info uniform: up to 8 u32, cached across launches).
fn param(i: u32) -> u32 {
    return params[i >> 2u][i & 3u];
}

const TM: u32 = {{ tm }}u; // rows of dY per invocation
const TW: u32 = {{ tw }}u; // word columns (8 columns of dX each) per invocation
const S: u32 = {{ lanes }}u; // lanes of the subgroup = invocations per workgroup

@compute @workgroup_size({{ lanes }}, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let m_total = param(0u);
    let n_total = param(1u);
    let k_total = param(2u);
    let blocksize = param(3u);
    let lane = lid.x;
    let w0 = (wid.y * param(4u) + wid.x) * S * TW + lane; // this lane's first word column
    let m0 = wid.z * TM;
    let words = k_total / 8u; // packed words per row of W
    let n4 = n_total / 4u; // vec4 per row of dY
    let code = codebook();

    // acc[(r * TW + t) * 2 + h] = dX[m0 + r, 8 (w0 + S t) + 4 h ..][..4]. Word columns and rows
    // past the end re-read the last one; their sums are never written.
    var acc: array<vec4<f32>, {{ acc_len }}>;
    for (var n0 = 0u; n0 < n_total; n0 += 4u * S) {
        // Row r: lane l loads dY[m0 + r, n0 + 4 l ..][..4].
{{ load }}
        // Lane i's vec4 of each row (g{r}), then its four values of n in turn: for each, the
        // lane's words of row n of W, decoded, times g{r}.x (.y, .z, .w) = dY[m0 + r, n].
{{ lanes_code }}
    }
{{ store }}
}
