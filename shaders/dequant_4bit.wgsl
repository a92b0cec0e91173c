// Dequantize a run of a packed 4-bit weight to f32:
//   out[i - 8*first_word] = code[nibble_i] * absmax_{i / blocksize},  i from 8*first_word on,
// i.e. `numel` elements starting at word `first_word` (whole rows of W, to keep each output
// buffer under the device's binding limit). Layout and statistics: see common_4bit.wgsl.
//
// A workgroup covers WG consecutive packed words (8*WG elements); a 2-D grid covers more than
// 65535 groups. Invocation t decodes word t of the group into workgroup memory (two vec4, one
// read of the word and of its absmax); after a barrier it stores elements t, t+WG, .., t+7*WG of
// the group, so that neighbouring invocations write neighbouring floats (coalesced on GPUs; a
// word per invocation written directly would scatter each store over 8*32 floats).
//
// Bindings: 0 packed u32[ceil(n/8)] | 1 absmax_q u32 (double quant) | 2 scales f32
//           3 tables f32[273] | 4 out f32[numel]
//           5 params (uniform) u32[numel, blocksize, words, groups_x, first_word]
// The storage bindings are all read_write: CubeCL may place several tensors in one buffer, and
// WebGPU refuses a read-only binding of a buffer that another binding of the dispatch writes.

// Bindings 0-3 (the weight): declared in common_4bit.wgsl.
@group(0) @binding(4) var<storage, read_write> output: array<f32>;
@group(0) @binding(5) var<uniform> params: array<vec4<u32>, 2>;
// Launch parameter i (CubeCL's info uniform: up to 8 u32, cached across launches).
fn param(i: u32) -> u32 {
    return params[i >> 2u][i & 3u];
}

const WG: u32 = {{ wg }}u;
// Element 8*t + p of the group sits in tile[2*t + p/4][p%4] (8 KiB at WG = 256).
var<workgroup> tile: array<vec4<f32>, {{ tile_len }}>;

@compute @workgroup_size({{ wg }}, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let group = wid.y * param(3u) + wid.x;
    let local = group * WG + lid;
    if local < param(2u) {
        let w = param(4u) + local;
        let word = packed[w];
        let scale = block_absmax((w * 8u) / param(1u));
        tile[2u * lid] = vec4(tables[nibble(word, 0u)], tables[nibble(word, 1u)],
                              tables[nibble(word, 2u)], tables[nibble(word, 3u)]) * scale;
        tile[2u * lid + 1u] = vec4(tables[nibble(word, 4u)], tables[nibble(word, 5u)],
                                   tables[nibble(word, 6u)], tables[nibble(word, 7u)]) * scale;
    }
    workgroupBarrier();
    let numel = param(0u);
    let base = group * WG * 8u;
    for (var j = 0u; j < 8u; j++) {
        let e = j * WG + lid;
        if base + e < numel {
            output[base + e] = tile[e >> 2u][e & 3u];
        }
    }
}
