// Shared by the tiled 4-bit GEMMs (qmatmul_4bit_gemm.wgsl, qmatmul_4bit_t_gemm.wgsl); prepended
// after common_4bit.wgsl by the Rust side. It holds what the two have in common once a slice is
// staged: the register-tiled product and the store of the output tile.
//
// A 16 x 16 workgroup computes a BM x BC tile of the output (BM = 16*TM rows, BC = 16*TC
// columns); the inner dimension advances in slices of SLICE, which the shader stages k-major:
//   xs[s][m] = left operand (X or dY) at row m0 + m,   ws[s][c] = W's value for column c0 + c.
// Invocation (x, y) owns rows m0 + 64i + 4y + a and columns c0 + 64j + 4x + b (a, b < 4), so a
// slice's reads of xs and ws are whole vec4 and neighbouring invocations read neighbouring ones.
// The output `y` (binding 5, f32, row-major with `cols` columns) is declared by the shader.

const TM: u32 = {{ tile }}u; // rows of the output per invocation, a multiple of 4
const TC: u32 = {{ tile }}u; // columns of the output per invocation, a multiple of 4
const BM: u32 = 16u * TM;
const BC: u32 = 16u * TC;
const SLICE: u32 = 16u; // of the inner dimension, staged at a time

var<workgroup> xs: array<vec4<f32>, {{ staged_len }}>; // [SLICE][BM / 4]
var<workgroup> ws: array<vec4<f32>, {{ staged_len }}>; // [SLICE][BC / 4]
// acc[r * TC/4 + j] = output[row r of the invocation's rows, columns 64j + 4x ..]
var<private> acc: array<vec4<f32>, {{ acc_len }}>;

// acc += the staged slice's product for invocation `lid`.
fn accumulate_slice(lid: vec3<u32>) {
    for (var s = 0u; s < SLICE; s++) {
        var b: array<vec4<f32>, {{ tile4 }}>;
        for (var j = 0u; j < TC / 4u; j++) {
            b[j] = ws[s * (BC / 4u) + 16u * j + lid.x];
        }
        for (var i = 0u; i < TM / 4u; i++) {
            let a = xs[s * (BM / 4u) + 16u * i + lid.y];
            for (var c = 0u; c < 4u; c++) {
                let r = 4u * i + c;
                for (var j = 0u; j < TC / 4u; j++) {
                    acc[r * (TC / 4u) + j] = fma(vec4(a[c]), b[j], acc[r * (TC / 4u) + j]);
                }
            }
        }
    }
}

// y[m0 + .., c0 + ..] = acc, within `rows` x `cols`.
fn store_tile(m0: u32, c0: u32, rows: u32, cols: u32, lid: vec3<u32>) {
    for (var i = 0u; i < TM / 4u; i++) {
        for (var c = 0u; c < 4u; c++) {
            let m = m0 + 64u * i + 4u * lid.y + c;
            for (var j = 0u; j < TC / 4u; j++) {
                let v = acc[(4u * i + c) * (TC / 4u) + j];
                for (var d = 0u; d < 4u; d++) {
                    let col = c0 + 64u * j + 4u * lid.x + d;
                    if m < rows && col < cols {
                        y[m * cols + col] = v[d];
                    }
                }
            }
        }
    }
}
