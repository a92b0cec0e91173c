//! The decoder stack: `LlamaForCausalLM` of transformers
//! (<https://github.com/huggingface/transformers/blob/main/src/transformers/models/llama/modeling_llama.py>).
//!
//! `h₀ = E[ids]`; per layer `h ← h + attn(norm₁(h))`, `h ← h + mlp(norm₂(h))`; then
//! `logits = norm(h)·Wᵀ` with `W` = `lm_head.weight`, or `E` when `tie_word_embeddings`.

use burn::module::Module;
use burn::tensor::module::embedding;
use burn::tensor::{Bool, Device, Int, Tensor};

use super::attention::{Attention, KvCache, LayerKv, causal_mask};
use super::config::LlamaConfig;
use super::mlp::Mlp;
use super::norm::RmsNorm;
use super::rope::RotaryEmbedding;

/// One pre-norm decoder layer.
#[derive(Module, Debug)]
pub struct DecoderLayer {
    /// `norm₁`
    pub input_layernorm: RmsNorm,
    /// Grouped-query self-attention.
    pub self_attn: Attention,
    /// `norm₂`
    pub post_attention_layernorm: RmsNorm,
    /// SwiGLU MLP.
    pub mlp: Mlp,
}

impl DecoderLayer {
    /// `h + attn(norm₁(h))`, then `+ mlp(norm₂(·))`.
    ///
    /// # Shapes
    /// `x: [b, s, hidden]`, `cos`, `sin`: `[s, d]`, `mask`: `[s, t]` -> `[b, s, hidden]`.
    pub fn forward(
        &self,
        x: Tensor<3>,
        cos: &Tensor<2>,
        sin: &Tensor<2>,
        mask: Option<&Tensor<2, Bool>>,
        cache: Option<&mut Option<LayerKv>>,
    ) -> Tensor<3> {
        let attn = self.self_attn.forward(
            self.input_layernorm.forward(x.clone()),
            cos,
            sin,
            mask,
            cache,
        );
        let x = x + attn;
        let mlp = self
            .mlp
            .forward(self.post_attention_layernorm.forward(x.clone()));
        x + mlp
    }
}

/// A LLaMA-family causal language model with frozen base weights.
///
/// Trainable parameters are only the adapters attached to its [`super::QLinear`]s; embedding,
/// norms and LM head are plain (frozen) tensors.
#[derive(Module, Debug)]
pub struct Llama {
    /// `[v, hidden]` token embeddings `E` (`model.embed_tokens.weight`); `None` when they are
    /// tied to the LM head (`tie_word_embeddings`), whose transpose `lm_head_t` then holds them
    /// as its columns: one copy instead of two (113 MB of f32 at SmolLM2's 49k x 576).
    pub embed_tokens: Option<Tensor<2>>,
    /// `model.layers.*`
    pub layers: Vec<DecoderLayer>,
    /// Final norm (`model.norm`).
    pub norm: RmsNorm,
    /// `[hidden, v]` LM head, transposed: `lm_head.weight`ᵀ, or `embed_tokens`ᵀ when tied.
    pub lm_head_t: Tensor<2>,
    /// The config the model was built from.
    #[module(skip)]
    pub config: LlamaConfig,
    /// RoPE frequencies.
    #[module(skip)]
    pub rope: RotaryEmbedding,
    /// A Quantized Side Tuning side network: when present, [`Llama::forward`] mixes its output
    /// into the LM head's input (see [`crate::peft::qst`]).
    pub side: Option<crate::peft::qst::SideNetwork>,
}

impl Llama {
    /// Next-token logits for `input_ids`. Without a cache the tokens sit at positions `0..s`;
    /// with one they follow the cached tokens, and their keys/values are appended to it.
    ///
    /// # Shapes
    /// `input_ids: [b, s]` -> `[b, s, v]`.
    pub fn forward(&self, input_ids: Tensor<2, Int>, cache: Option<&mut KvCache>) -> Tensor<3> {
        let x = self.head_input(input_ids, cache);
        self.apply_head(x)
    }

    /// What the LM head reads for `input_ids`, position by position: the last layer's output,
    /// or with a QST side network the mix of its output and the normed LLM state
    /// ([`crate::peft::qst::head_input`]). [`Llama::forward`] is [`Llama::apply_head`] on it;
    /// the loss runs the head on it in chunks of positions. Caching as [`Llama::forward`].
    ///
    /// # Shapes
    /// `input_ids: [b, s]` -> `[b, s, hidden]`.
    pub fn head_input(&self, input_ids: Tensor<2, Int>, cache: Option<&mut KvCache>) -> Tensor<3> {
        if let Some(side) = &self.side {
            return crate::peft::qst::head_input(self, side, input_ids, cache);
        }
        let mut cache = cache;
        let [_, s] = input_ids.dims();
        let device = self.device();
        let offset = cache.as_ref().map_or(0, |c| c.offset);
        let (cos, sin) = self.rope.cos_sin(offset, s, &device); // [s, d] each
        // A single new token sees every cached one unless a sliding window cuts in.
        let window_bites = self.config.sliding_window.is_some_and(|w| w < offset + s);
        let mask = (s > 1 || window_bites)
            .then(|| causal_mask(s, offset, self.config.sliding_window, &device)); // [s, t]

        if let Some(c) = cache.as_deref_mut()
            && c.layers.len() < self.layers.len()
        {
            c.layers.resize(self.layers.len(), None);
        }
        let mut h = self.embed(input_ids); // [b, s, hidden]
        for (i, layer) in self.layers.iter().enumerate() {
            let slot = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            h = layer.forward(h, &cos, &sin, mask.as_ref(), slot);
        }
        if let Some(c) = cache {
            c.offset += s;
        }
        h
    }

    /// The summed next-token loss of `labels` (`-100` ignored) for `input_ids` and its target
    /// count, without a cache: [`Llama::head_input`], then the head a chunk of positions at a
    /// time ([`crate::model::head_loss_sum`]), so the `[b, s, v]` logits never exist whole.
    ///
    /// # Shapes
    /// `input_ids`, `labels`: `[b, s]` -> `([1], [1])`.
    pub fn loss_sum(
        &self,
        input_ids: Tensor<2, Int>,
        labels: Tensor<2, Int>,
    ) -> (Tensor<1>, Tensor<1>) {
        let x = self.head_input(input_ids, None);
        let vocab = self.lm_head_t.dims()[1];
        crate::model::head_loss_sum(x, labels, vocab, |c| self.apply_head(c))
    }

    /// The LM head on [`Llama::head_input`]'s output: `norm(x)·W_headᵀ`, or `x·W_headᵀ` with a
    /// QST side network (whose mix already holds the normed state).
    ///
    /// # Shapes
    /// `x: [b, s, hidden]` -> `[b, s, v]`.
    pub fn apply_head(&self, x: Tensor<3>) -> Tensor<3> {
        match &self.side {
            Some(_) => crate::peft::qst::head(self, x),
            None => self.head(x),
        }
    }

    /// `E[ids]`, the input of the first layer.
    ///
    /// # Shapes
    /// `input_ids: [b, s]` -> `[b, s, hidden]`.
    pub fn embed(&self, input_ids: Tensor<2, Int>) -> Tensor<3> {
        match &self.embed_tokens {
            Some(e) => embedding(e.clone(), input_ids),
            None => {
                // Tied: `E = W_head`, so `E[ids]` are columns of `lm_head_t`.
                let [b, s] = input_ids.dims();
                let hidden = self.lm_head_t.dims()[0];
                self.lm_head_t
                    .clone()
                    .select(1, input_ids.reshape([b * s])) // [hidden, b·s]
                    .transpose() // [b·s, hidden]
                    .reshape([b, s, hidden])
            }
        }
    }

    /// The device the model's tensors live on.
    pub fn device(&self) -> Device {
        self.lm_head_t.device()
    }

    /// RoPE `cos`, `sin` (`[s, d]`) and the causal mask (`[s, s]`, `None` for one token) of `s`
    /// tokens at positions `0..s`: what every layer of an uncached forward takes.
    pub fn positions(&self, s: usize) -> (Tensor<2>, Tensor<2>, Option<Tensor<2, Bool>>) {
        let device = self.device();
        let (cos, sin) = self.rope.cos_sin(0, s, &device);
        let mask = (s > 1).then(|| causal_mask(s, 0, self.config.sliding_window, &device));
        (cos, sin, mask)
    }

    /// `norm(h)·W_headᵀ`: logits from the last layer's output.
    ///
    /// # Shapes
    /// `h: [b, s, hidden]` -> `[b, s, v]`.
    pub fn head(&self, h: Tensor<3>) -> Tensor<3> {
        let [b, s, _] = h.dims();
        let h = self.norm.forward(h); // [b, s, hidden]
        let [hidden, v] = self.lm_head_t.dims();
        h.reshape([b * s, hidden]) // [b·s, hidden]
            .matmul(self.lm_head_t.clone()) // [b·s, v]
            .reshape([b, s, v]) // [b, s, v]
    }

    /// An empty KV cache sized for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.layers.len())
    }
}
