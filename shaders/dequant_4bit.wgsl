// Dequantize a run of a packed 4-bit weight to f32:
//   out[i - 8*first_word] = code[nibble_i] * absmax_{i / blocksize},  i from 8*first_word on,
// i.e. `numel` elements starting at word `first_word` (whole rows of W, to keep each output
// buffer under the device's binding limit). Layout and statistics: see common_4bit.wgsl.
// One invocation per packed u32 word (8 elements); a 2-D grid covers more than 65535 groups.
//
// Bindings: 0 packed u32[ceil(n/8)] | 1 absmax_q u32 (double quant) | 2 scales f32
//           3 tables f32[273] | 4 out f32[numel]
//           5 params u32[numel, blocksize, words, groups_x, first_word]

@group(0) @binding(0) var<storage, read_write> packed: array<u32>;
@group(0) @binding(1) var<storage, read_write> absmax_q: array<u32>;
@group(0) @binding(2) var<storage, read_write> scales: array<f32>;
@group(0) @binding(3) var<storage, read_write> tables: array<f32>;
@group(0) @binding(4) var<storage, read_write> output: array<f32>;
@group(0) @binding(5) var<storage, read_write> params: array<u32>;

const WG: u32 = {{ wg }}u;

@compute @workgroup_size({{ wg }}, 1, 1)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let local = (wid.y * params[3] + wid.x) * WG + lid;
    if local >= params[2] {
        return;
    }
    let numel = params[0];
    let w = params[4] + local;
    let word = packed[w];
    let scale = block_absmax((w * 8u) / params[1]);
    for (var p = 0u; p < 8u; p++) {
        let i = local * 8u + p;
        if i < numel {
            output[i] = tables[nibble(word, p)] * scale;
        }
    }
}
