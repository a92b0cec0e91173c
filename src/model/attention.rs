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

/// `softmax(Q·Kᵀ/√d + M)·V` with the heads merged back: the part of attention after the
/// projections and RoPE, shared by the LLM's layers and the QST side layers. With `cache`, the
/// keys and values of earlier tokens are prepended and the new ones appended to it.
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
    let k = repeat_kv(k, h / kv); // [b, h, t, d]
    let v = repeat_kv(v, h / kv); // [b, h, t, d]

    let scores = q.matmul(k.swap_dims(2, 3)) * (d as f64).powf(-0.5); // [b, h, s, t]
    let scores = match mask {
        Some(m) => {
            let m = m.clone().unsqueeze::<4>().expand([b, h, s, t]); // [b, h, s, t]
            scores.mask_fill(m, f32::NEG_INFINITY)
        }
        None => scores,
    };
    softmax(scores, 3) // [b, h, s, t]
        .matmul(v) // [b, h, s, d]
        .swap_dims(1, 2) // [b, s, h, d]
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

    #[allow(deprecated)]
    fn cpu() -> Device {
        Device::ndarray()
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
