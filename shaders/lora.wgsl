// LoRA matmul, one kernel for the forward and every backward product:
//   C[i, j] = alpha * sum_k A(i, k) * B(k, j),   A(i, k) = a[i*a_rs + k*a_cs],  B(k, j) = b[k*b_rs + j*b_cs]
// Strides select the transposes, so with U = X A^T and scale s:
//   forward U = X A^T, Y = s U B^T;  backward dU = s dY B, dB = s dY^T U, dA = dU^T X, dX = dU A.
// C is [MO, NO] contiguous row-major f32.
//
// Workgroup 16 x 16, each lane computes a TM x TN micro-tile of a (16*TM) x (16*TN) output tile;
// K advances in slices of 16 staged in workgroup memory (16*16*(TM+TN) f32 <= 8 KiB).
// Grid: x = ceil(NO / (16*TN)), y = ceil(MO / (16*TM)).
//
// Bindings: 0 a f32 | 1 b f32 | 2 c f32[MO*NO]
//           3 params (uniform) u32[MO, NO, K, a_rs, a_cs, b_rs, b_cs, bitcast<u32>(alpha)]

@group(0) @binding(0) var<storage, read_write> a: array<f32>;
@group(0) @binding(1) var<storage, read_write> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
@group(0) @binding(3) var<uniform> params: array<vec4<u32>, 2>;
// Launch parameter i (CubeCL's info uniform: up to 8 u32, cached across launches).
fn param(i: u32) -> u32 {
    return params[i >> 2u][i & 3u];
}

const TM: u32 = {{ tm }}u;
const TN: u32 = {{ tn }}u;
const BM: u32 = 16u * TM;
const BN: u32 = 16u * TN;
const BK: u32 = 16u;

var<workgroup> a_tile: array<f32, {{ a_tile_len }}>; // [BK][BM]
var<workgroup> b_tile: array<f32, {{ b_tile_len }}>; // [BK][BN]

@compute @workgroup_size(16, 16, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
        @builtin(local_invocation_index) li: u32) {
    let mo = param(0u);
    let no = param(1u);
    // From a uniform buffer, so the loop around the barriers below is provably uniform (WGSL's
    // uniformity analysis, which browsers' Tint enforces and naga does not).
    let kt = param(2u);
    let a_rs = param(3u);
    let a_cs = param(4u);
    let b_rs = param(5u);
    let b_cs = param(6u);
    let alpha = bitcast<f32>(param(7u));
    let row0 = wid.y * BM;
    let col0 = wid.x * BN;

    var acc: array<f32, {{ acc_len }}>;
    for (var k0 = 0u; k0 < kt; k0 += BK) {
        // Stage A(row0.., k0..) and B(k0.., col0..), zero outside the matrix.
        for (var e = li; e < BK * BM; e += 256u) {
            let kk = e / BM;
            let ii = e % BM;
            var v = 0.0;
            if row0 + ii < mo && k0 + kk < kt {
                v = a[(row0 + ii) * a_rs + (k0 + kk) * a_cs];
            }
            a_tile[kk * BM + ii] = v;
        }
        for (var e = li; e < BK * BN; e += 256u) {
            let kk = e / BN;
            let jj = e % BN;
            var v = 0.0;
            if col0 + jj < no && k0 + kk < kt {
                v = b[(k0 + kk) * b_rs + (col0 + jj) * b_cs];
            }
            b_tile[kk * BN + jj] = v;
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            for (var ti = 0u; ti < TM; ti++) {
                let av = a_tile[kk * BM + lid.y * TM + ti];
                for (var tj = 0u; tj < TN; tj++) {
                    acc[ti * TN + tj] += av * b_tile[kk * BN + lid.x * TN + tj];
                }
            }
        }
        workgroupBarrier();
    }
    for (var ti = 0u; ti < TM; ti++) {
        let i = row0 + lid.y * TM + ti;
        for (var tj = 0u; tj < TN; tj++) {
            let j = col0 + lid.x * TN + tj;
            if i < mo && j < no {
                c[i * no + j] = alpha * acc[ti * TN + tj];
            }
        }
    }
}
