//! Grouped-query self-attention with a causal mask and an optional KV cache (transformers'
//! `LlamaAttention` with the eager kernel).
//!
//! `Q = rope(x·W_qᵀ)`, `K = rope(x·W_kᵀ)`, `V = x·W_vᵀ`, each query head `j` reading key/value
//! head `j / (h/kv)`; `O = softmax(Q·Kᵀ/√d + M)·V`, `y = O·W_oᵀ`, with `M` = -∞ where a query may
//! not see a key (after it, or — with Mistral's `sliding_window` w — `w` or more positions
//! before it). Softmax is computed in f32.

use burn::module::Module;
use burn::tensor::activation::softmax;
use burn::tensor::{Bool, Device, Tensor};

use super::linear::QLinear;
use super::rope::apply_rotary;

/// Cached keys and values of one layer, before the GQA repeat.
#[derive(Clone, Debug)]
pub struct LayerKv {
    /// `[b, kv, t, d]` keys (RoPE applied).
    pub k: Tensor<4>,
    /// `[b, kv, t, d]` values.
    pub v: Tensor<4>,
}

/// Keys and values of every layer for the tokens seen so far, and their count (the position of
/// the next token). Pass the same cache to successive [`super::Llama::forward`] calls to
/// generate token by token.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    /// One slot per decoder layer (`None` before the first call).
    pub layers: Vec<Option<LayerKv>>,
    /// One slot per side-network layer when the model carries a QST side network
    /// (`crate::peft::qst`), which has its own attention; empty otherwise.
    pub side_layers: Vec<Option<LayerKv>>,
    /// Tokens already in the cache: the position of the next token.
    pub offset: usize,
}

impl KvCache {
    /// An empty cache for `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        KvCache {
            layers: vec![None; num_layers],
            side_layers: Vec::new(),
            offset: 0,
        }
    }

    /// Tokens already cached.
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// Forgets everything (a new sequence).
    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(|l| *l = None);
        self.side_layers.clear();
        self.offset = 0;
    }
}

/// The mask `M` as booleans, `true` = masked: query `i` (position `offset + i`) may see key `j`
/// iff `j <= offset + i` and, with a window `w`, `offset + i - j < w`.
///
/// For `s = 3`, `offset = 1`, no window (`t = 4`):
///
/// | query \ key | 0 | 1 | 2 | 3 |
/// | --- | --- | --- | --- | --- |
/// | 0 (pos 1) | . | . | x | x |
/// | 1 (pos 2) | . | . | . | x |
/// | 2 (pos 3) | . | . | . | . |
///
/// # Shapes
/// `[s, offset + s]`.
pub fn causal_mask(
    s: usize,
    offset: usize,
    sliding_window: Option<usize>,
    device: &Device,
) -> Tensor<2, Bool> {
    let t = offset + s;
    // tril_mask(k) is true where j > i + k.
    let future = Tensor::<2, Bool>::tril_mask([s, t], offset as i64, device);
    match sliding_window {
        // triu_mask(k) is true where j < i + k; k = offset - w + 1 masks offset + i - j >= w.
        Some(w) if w < t => future.bool_or(Tensor::<2, Bool>::triu_mask(
            [s, t],
            offset as i64 - w as i64 + 1,
            device,
        )),
        _ => future,
    }
}

/// One self-attention block.
#[derive(Module, Debug)]
pub struct Attention {
    /// `[h·d, hidden]`
    pub q_proj: QLinear,
    /// `[kv·d, hidden]`
    pub k_proj: QLinear,
    /// `[kv·d, hidden]`
    pub v_proj: QLinear,
    /// `[hidden, h·d]`
    pub o_proj: QLinear,
    /// `h`
    pub num_heads: usize,
    /// `kv`
    pub num_kv_heads: usize,
    /// `d`
    pub head_dim: usize,
}

impl Attention {
    /// Attention over `x`, whose first token sits at position `offset`; with `cache`, keys and
    /// values of earlier tokens are prepended and the new ones appended to it.
    ///
    /// # Shapes
    /// `x: [b, s, hidden]`, `cos`, `sin`: `[s, d]`, `mask`: `[s, t]` (`true` = masked; `None`
    /// only when nothing is masked) -> `[b, s, hidden]`.
    pub fn forward(
        &self,
        x: Tensor<3>,
        cos: &Tensor<2>,
        sin: &Tensor<2>,
        mask: Option<&Tensor<2, Bool>>,
        cache: Option<&mut Option<LayerKv>>,
    ) -> Tensor<3> {
        let [b, s, _] = x.dims();
        let (h, kv, d) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let heads = |y: Tensor<3>, n: usize| y.reshape([b, s, n, d]).swap_dims(1, 2); // [b, n, s, d]
        let q = apply_rotary(heads(self.q_proj.forward(x.clone()), h), cos, sin); // [b, h, s, d]
        let k = apply_rotary(heads(self.k_proj.forward(x.clone()), kv), cos, sin); // [b, kv, s, d]
        let v = heads(self.v_proj.forward(x), kv); // [b, kv, s, d]

        let out = attend(q, k, v, mask, cache); // [b, s, h·d]
        self.o_proj.forward(out)
    }
}

/// Bytes of one chunk of attention scores in [`attend`]: the `[b, h, rows, keys]` scores, their
/// softmax (and, when training, their gradients) are buffers of this size at most. At SmolLM2's
/// 9 heads, batch 4 x 512 tokens (37.7 MB of scores) is two chunks; one `[1, 9, 2048, 2048]`
/// prompt (151 MB, past WebGPU's default 128 MiB binding limit in one buffer) is five.
pub const ATTENTION_CHUNK_BYTES: usize = 32 << 20;

/// `softmax(Q·Kᵀ/√d + M)·V` with the heads merged back: the part of attention after the
/// projections and RoPE, shared by the LLM's layers and the QST side layers. With `cache`, the
/// keys and values of earlier tokens are prepended and the new ones appended to it.
///
/// The queries run in chunks of rows whose scores fit [`ATTENTION_CHUNK_BYTES`], so the whole
/// `[b, h, s, t]` score matrix never exists at once. `mask` is always a [`causal_mask`] (query
/// `i` sees no key after `t - s + i`), so a chunk of rows `r0..r1` only reads keys
/// `0..t - s + r1`: the keys after that are masked for every row of the chunk, and leaving
/// them out changes no value while it saves their share of the work (a quarter of it at two
/// chunks). `1/√d` scales `Q` (`[.., d]`) instead of the scores (`[.., t]`).
///
/// # Shapes
/// `q: [b, h, s, d]`, `k`, `v`: `[b, kv, s, d]`, `mask`: `[s, t]` (`true` = masked; `None` only
/// when nothing is masked) -> `[b, s, h·d]`.
pub fn attend(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Option<&Tensor<2, Bool>>,
    cache: Option<&mut Option<LayerKv>>,
) -> Tensor<3> {
    attend_in_chunks(q, k, v, mask, cache, ATTENTION_CHUNK_BYTES)
}

/// Query rows per chunk of [`attend`] for `[b, h, s, t]` scores: the rows split into as few
/// equal chunks as keep each within `budget` bytes (one row of `b·h·t` floats at the least; a
/// chunk may pass the budget by less than a row, since the chunks are equal).
pub fn attention_chunk_rows([b, h, s, t]: [usize; 4], budget: usize) -> usize {
    // u64: on wasm32 a usize overflows past 4 GiB of scores (4 x 9 heads x 8192², say).
    let row_bytes = b as u64 * h as u64 * t as u64 * 4;
    let chunks = (s as u64 * row_bytes).div_ceil(budget.max(1) as u64);
    let chunks = chunks.clamp(1, s.max(1) as u64) as usize;
    s.div_ceil(chunks).max(1)
}

/// [`attend`] with scores of at most `budget` bytes a chunk (see [`attention_chunk_rows`]).
pub(crate) fn attend_in_chunks(
    q: Tensor<4>,
    k: Tensor<4>,
    v: Tensor<4>,
    mask: Option<&Tensor<2, Bool>>,
    cache: Option<&mut Option<LayerKv>>,
    budget: usize,
) -> Tensor<3> {
    let [b, h, s, d] = q.dims();
    let kv = k.dims()[1];
    let (k, v) = match cache {
        Some(slot) => {
            let (k, v) = match slot.take() {
                Some(prev) => (
                    Tensor::cat(vec![prev.k, k], 2), // [b, kv, t, d]
                    Tensor::cat(vec![prev.v, v], 2), // [b, kv, t, d]
                ),
                None => (k, v),
            };
            *slot = Some(LayerKv {
                k: k.clone(),
                v: v.clone(),
            });
            (k, v)
        }
        None => (k, v),
    };
    let t = k.dims()[2];
    let offset = t - s; // the position of the first query
    let k = repeat_kv(k, h / kv).swap_dims(2, 3); // [b, h, d, t]
    let v = repeat_kv(v, h / kv); // [b, h, t, d]
    let q = q * (d as f64).powf(-0.5); // [b, h, s, d]

    let rows = attention_chunk_rows([b, h, s, t], budget);
    let chunks = s.div_ceil(rows);
    let out: Vec<Tensor<4>> = (0..s)
        .step_by(rows)
        .map(|r0| {
            let r1 = (r0 + rows).min(s);
            // Keys past `offset + r1` are masked for every row of the chunk.
            let keys = if mask.is_some() { offset + r1 } else { t };
            let q = if chunks == 1 {
                q.clone()
            } else {
                q.clone().slice([0..b, 0..h, r0..r1, 0..d])
            };
            let (k, v) = if keys == t {
                (k.clone(), v.clone())
            } else {
                (
                    k.clone().slice([0..b, 0..h, 0..d, 0..keys]),
                    v.clone().slice([0..b, 0..h, 0..keys, 0..d]),
                )
            };
            let scores = q.matmul(k); // [b, h, r, keys]
            let scores = match mask {
                Some(m) => {
                    let m = m.clone().slice([r0..r1, 0..keys]); // [r, keys]
                    let m = m.unsqueeze::<4>().expand([b, h, r1 - r0, keys]);
                    scores.mask_fill(m, f32::NEG_INFINITY)
                }
                None => scores,
            };
            softmax(scores, 3).matmul(v) // [b, h, r, d]
        })
        .collect();
    let out = if out.len() == 1 {
        out.into_iter().next().expect("one chunk")
    } else {
        Tensor::cat(out, 2)
    }; // [b, h, s, d]
    out.swap_dims(1, 2) // [b, s, h, d]
        .reshape([b, s, h * d]) // [b, s, h·d]
}

/// Each key/value head repeated `n_rep` times in place (head `j` of the result is head
/// `j / n_rep` of the input), as transformers' `repeat_kv`.
///
/// # Shapes
/// `x: [b, kv, t, d]` -> `[b, kv·n_rep, t, d]`.
pub fn repeat_kv(x: Tensor<4>, n_rep: usize) -> Tensor<4> {
    if n_rep == 1 {
        return x;
    }
    let [b, kv, t, d] = x.dims();
    x.unsqueeze_dim::<5>(2) // [b, kv, 1, t, d]
        .repeat_dim(2, n_rep) // [b, kv, n_rep, t, d]
        .reshape([b, kv * n_rep, t, d]) // [b, kv·n_rep, t, d]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu() -> Device {
        crate::device::cpu_backend()
    }

    fn bools(m: Tensor<2, Bool>) -> Vec<bool> {
        m.into_data().try_to_vec::<bool>().expect("bool")
    }

    #[test]
    fn mask_with_offset_matches_the_table() {
        let m = bools(causal_mask(3, 1, None, &cpu()));
        #[rustfmt::skip]
        let want = [
            false, false, true, true,
            false, false, false, true,
            false, false, false, false,
        ];
        assert_eq!(m, want);
    }

    #[test]
    fn sliding_window_masks_far_keys() {
        // w = 2: query at position p sees keys p-1 and p.
        let m = bools(causal_mask(4, 0, Some(2), &cpu()));
        #[rustfmt::skip]
        let want = [
            false, true, true, true,
            false, false, true, true,
            true, false, false, true,
            true, true, false, false,
        ];
        assert_eq!(m, want);
    }

    /// Query chunks (down to one row each) with the keys past each chunk left out give the
    /// values and gradients of one chunk over every key: with a cache offset, GQA, a sliding
    /// window and a single cached token among the cases.
    #[test]
    fn attention_in_chunks_equals_one_chunk() {
        use burn::tensor::TensorData;
        let device = cpu().autodiff();
        let wave = |n: usize, f: f32| (0..n).map(|i| ((i as f32) * f).sin()).collect::<Vec<_>>();
        let t4 = |shape: [usize; 4], f: f32| {
            let n = shape.iter().product();
            Tensor::<4>::from_data(TensorData::new(wave(n, f), shape), &device).require_grad()
        };
        // (b, h, kv, s, offset, d, window)
        let cases = [
            (2, 4, 2, 7, 0, 3, None),
            (1, 3, 1, 5, 4, 2, None),
            (2, 2, 2, 9, 0, 4, Some(3)),
            (1, 2, 2, 6, 3, 2, Some(4)),
            (1, 2, 1, 1, 6, 2, None),
        ];
        for (b, h, kv, s, offset, d, window) in cases {
            let q = t4([b, h, s, d], 0.37);
            let k = t4([b, kv, s, d], 0.91);
            let v = t4([b, kv, s, d], 1.73);
            let (pk, pv) = (t4([b, kv, offset, d], 0.53), t4([b, kv, offset, d], 1.19));
            let w = Tensor::<3>::from_data(
                TensorData::new(wave(b * s * h * d, 2.3), [b, s, h * d]),
                &device,
            );
            let mask = (s > 1 || window.is_some()).then(|| causal_mask(s, offset, window, &device));
            let run = |budget: usize| {
                let mut slot = (offset > 0).then(|| LayerKv {
                    k: pk.clone(),
                    v: pv.clone(),
                });
                let cache = (offset > 0).then_some(&mut slot);
                let y = attend_in_chunks(
                    q.clone(),
                    k.clone(),
                    v.clone(),
                    mask.as_ref(),
                    cache,
                    budget,
                );
                let g = (y.clone() * w.clone()).sum().backward();
                let mut all = vec![y.inner().into_data()];
                for x in [&q, &k, &v, &pk, &pv] {
                    if x.dims()[2] > 0 {
                        all.push(x.grad(&g).expect("a gradient").into_data());
                    }
                }
                all.into_iter()
                    .map(|t| t.try_to_vec::<f32>().expect("f32"))
                    .collect::<Vec<_>>()
            };
            let row = b * h * (offset + s) * 4;
            let want = run(usize::MAX);
            for rows in [1, 2, 3] {
                let got = run(rows * row);
                for (which, (g, e)) in got.iter().zip(&want).enumerate() {
                    for (a, e) in g.iter().zip(e) {
                        assert!(
                            (a - e).abs() < 1e-5,
                            "{b}x{h}/{kv} s {s} offset {offset} window {window:?}, {rows} rows a chunk, output {which}: {a} vs {e}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn repeat_kv_interleaves_like_transformers() {
        let device = cpu();
        let x = Tensor::<1>::from_data([0.0f32, 1.0, 2.0, 3.0], &device).reshape([1, 2, 1, 2]);
        let y = repeat_kv(x, 2)
            .into_data()
            .try_to_vec::<f32>()
            .expect("f32");
        assert_eq!(y, [0.0, 1.0, 0.0, 1.0, 2.0, 3.0, 2.0, 3.0]);
    }
}
