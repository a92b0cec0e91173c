// Fused 4-bit matmul for Mesa's llvmpipe at many rows:  Y[m, n] = sum_k X[m, k] * W[n, k],
// W = dequant(packed) of shape [N, K]. X is [M, K] and Y is [M, N], contiguous row-major f32.
// Layout and statistics of W: see common_4bit.wgsl (prepended). Needs subgroups of exactly S
// lanes (the workgroup is one subgroup), K % (4 S) == 0 and a blocksize >= 4 S, so that a chunk
// of 4 S consecutive elements of a row of W is S/2 whole words inside one absmax block.
//
// llvmpipe runs a subgroup as the lanes of one CPU vector, and it loads from a storage buffer
// one lane at a time, whether or not the lanes share the address (Mesa 22-24): a load costs
// about as much as S FMAs per element, so the tile kernel, whose lanes all load the same X,
// spent its time there. Here each lane loads a different vec4 of X's row (the chunk's S vec4
// between them) and subgroupBroadcast hands each vec4 to every lane, a register shuffle.
//
// Each invocation (lane l) owns TN columns n = n0 + l + S c (c < TN) and TM rows, and walks K
// one chunk at a time: it decodes its columns' words of the chunk once (by selects, `decode4`),
// then for each row loads one vec4 of X and accumulates TN dot products of 4 S terms. The row
// and column loops are unrolled by the Rust side (`subgroup_decode`, `_rows`, `_store` in shaders.rs): a
// register array indexed by a loop counter llvmpipe keeps in memory, lane by lane.
// Grid: x * y = ceil(N / (S TN)) groups (2-D when large), z = ceil(M / TM).
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
const TN: u32 = {{ tn }}u; // columns of Y per invocation
const S: u32 = {{ lanes }}u; // lanes of the subgroup = invocations per workgroup

@compute @workgroup_size({{ lanes }}, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let m_total = param(0u);
    let n_total = param(1u);
    let k_total = param(2u);
    let blocksize = param(3u);
    let lane = lid.x;
    let n0 = (wid.y * param(4u) + wid.x) * S * TN + lane; // this lane's first column
    let m0 = wid.z * TM;
    let words = k_total / 8u; // packed words per row of W
    let k4 = k_total / 4u; // vec4 per row of X
    let code = codebook();

    // acc[r * TN + c] = Y[m0 + r, n0 + S c]; wd[S c + i] = W[n0 + S c, 4 (S j + i) ..][..4], the
    // chunk's elements 4i..4i+4 of column c. Rows and columns past the end re-read the last
    // one; their sums are never written.
    var acc: array<f32, {{ acc_len }}>;
    var wd: array<vec4<f32>, {{ wd_len }}>;
    for (var j = 0u; j < words; j += S / 2u) {
        // Column c: w = its first word in this chunk, s = the chunk's block absmax.
{{ decode }}
        // Row r: lane l loads X[m0 + r, 4 (S j' + l) ..][..4] (j' = the chunk), and x{i} is lane
        // i's vec4, so dot(x{i}, wd[S c + i]) is that vec4's share of Y[m0 + r, column c].
{{ rows }}
    }
{{ store }}
}
