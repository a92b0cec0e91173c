//! Quantized Side Tuning (QST; Zhang et al., "Quantized Side Tuning: Fast and Memory-Efficient
//! Tuning of Quantized Large Language Models", 2024, reference code
//! <https://github.com/YouAreSpecialToMe/QST>, `modeling_llama_qst.py` and `QSTConfig.py`).
//!
//! The 4-bit LLM only runs forward, without a graph; a small trainable *side network* reads its
//! hidden states and produces the representation the frozen LM head sees. No gradient ever
//! flows into the LLM, so backward costs what the side network costs, whatever the LLM's depth.
//!
//! # The function
//!
//! `H` = `hidden_size`, `I` = `intermediate_size`, `L` layers, reduction factor `rf`
//! ([`QstConfig::reduction`]), downsample rank `r` ([`QstConfig::r`]), side width `H' = H/rf`.
//! `h₀ = E[ids]` (the embeddings), `hᵢ` the output of LLM decoder layer `i` (`i = 1..L`).
//!
//! ```text
//! downᵢ(h) = LayerNorm(silu(h·Aᵢ)·Bᵢ)                  Aᵢ: H -> r, Bᵢ: r -> H', no biases
//! s₀       = down₀(h₀)
//! sᵢ       = sideᵢ((1 - σ(zᵢ)) ⊙ downᵢ(hᵢ) + σ(zᵢ) ⊙ sᵢ₋₁)    i = 1..L, zᵢ ∈ R^H'
//! u        = RMSNorm_side(s_L)·W_up + b_up                  W_up: H' -> H
//! x        = (1 - σ(g)) ⊙ u + σ(g) ⊙ norm(h_L)               g ∈ R^H, norm = the LLM's final norm
//! logits   = x·W_headᵀ                                       the LLM's frozen LM head
//! ```
//!
//! `sideᵢ` is a LLaMA decoder layer (pre-norm RMSNorm, grouped-query attention with RoPE,
//! SwiGLU MLP) of width `H'`, MLP width `⌊I/rf⌋`, the LLM's head counts, `head_dim = H'/heads`,
//! RoPE over that head_dim with the LLM's theta and rescaling, the LLM's `rms_norm_eps`, the
//! LLM's causal (and sliding-window) mask. LayerNorm: biased variance, `ε = 1e-5` (torch's
//! default). The LLM's final norm and LM head stay frozen.
//!
//! Initialisation (the reference builds its modules with torch's defaults and never calls
//! `post_init`): every Linear weight `U(-1/√fan_in, 1/√fan_in)` (torch's
//! `kaiming_uniform_(a=√5)`), the upsample bias likewise (torch's Linear bias default),
//! LayerNorm `w = 1, b = 0`, RMSNorm gains 1, `zᵢ = 0.5`, `g = 1`. Values come from rand's
//! `StdRng` seeded with the given seed, drawn in [`SideNetwork::named_params`] order on the host,
//! so a seed gives the same network on every device.
//!
//! # Parameters and names
//!
//! Every trainable tensor is a `Param<Tensor<2>>`, so the crate's AdamW over `Vec<Tensor<2>>`
//! (`train::optim`) applies unchanged. Linear weights are stored `[in, out]` (burn's `Linear`
//! layout: `y = x·W`, no transpose in the forward) — the transpose of PyTorch's `.weight`;
//! vectors (gains, biases, gates) are stored as `[1, n]`. Names (the safetensors keys of
//! [`WEIGHTS_FILE`]) follow the reference's module names, in this order:
//!
//! | name | shape |
//! | --- | --- |
//! | `downsample.0.adapter_A.weight` | `[H, r]` |
//! | `downsample.0.adapter_B.weight` | `[r, H']` |
//! | `downsample.0.post_layer_norm.weight`, `.bias` | `[1, H']` |
//! | then for `i = 0..L`: `downsample.{i+1}.*` as above | |
//! | `z.{i}` | `[1, H']` |
//! | `qst_layers.{i}.input_layernorm.weight` | `[1, H']` |
//! | `qst_layers.{i}.self_attn.q_proj.weight` | `[H', heads·d]` |
//! | `qst_layers.{i}.self_attn.k_proj.weight`, `v_proj` | `[H', kv·d]` |
//! | `qst_layers.{i}.self_attn.o_proj.weight` | `[heads·d, H']` |
//! | `qst_layers.{i}.post_attention_layernorm.weight` | `[1, H']` |
//! | `qst_layers.{i}.mlp.gate_proj.weight`, `up_proj` | `[H', I']` |
//! | `qst_layers.{i}.mlp.down_proj.weight` | `[I', H']` |
//! | `norm_qst.weight` | `[1, H']` |
//! | `upsample.weight` | `[H', H]` |
//! | `upsample.bias` | `[1, H]` |
//! | `lm_head_z` | `[1, H]` |
//!
//! (`qst_layers.{i}` and `z.{i}` belong to LLM layer `i`, 0-based, whose output is `h_{i+1}`;
//! `downsample.{i+1}` reads that output and `downsample.0` the embeddings.)
//!
//! # Where the reference code slips, and what this module does instead
//!
//! * **The first downsample is applied twice.** The reference computes
//!   `qst_hidden_states = downsample[0](embeddings)` and then, in the layer loop, mixes
//!   `downsample[idx](output of layer idx)` — so `downsample[0]` reads both the embeddings and
//!   layer 0's output, and `downsample[L-1]` is the last one used: `L` modules for `L + 1`
//!   inputs. The evident intent is one downsample per tapped hidden state (LST, the ladder
//!   side-tuning design QST builds on, gives the embeddings their own first downsample). Here:
//!   `L + 1` downsamples, `down₀` for `h₀` only and `downᵢ` for `hᵢ`. The pairing of side layer,
//!   gate and LLM layer output is the reference's (side layer `i` and `zᵢ` consume the output of
//!   LLM layer `i`), and `h_L` is tapped both by `down_L` and, normed, by the output gate, as in
//!   the reference.
//! * **Dropout never fires.** `AdapterLinear` builds `nn.Identity()` when `dropout > 0` and
//!   `nn.Dropout(p=dropout)` — i.e. `p = 0` — otherwise, so the configured `dropout=0.1` has
//!   no effect: the code behind the paper's numbers trains without dropout, and the method as
//!   specified for wgtune has none. This side network has no dropout (and [`QstConfig`] no dropout
//!   field); training is deterministic given the data.
//! * **An unused scaling.** `AdapterLinear` sets `self.scaling = r / alpha_r` and never applies
//!   it (it would be 1 anyway: the reference passes `alpha_r = r`). Not applied here.
//! * **`vocab_size + 1` in the loss reshape.** `shift_logits.view(-1, self.vocab_size + 1)`
//!   would fail (or mix tokens) for logits of width `vocab_size`; the intent is transformers'
//!   causal-LM loss, which is what [`loss_and_grads`] uses
//!   ([`crate::model::head_loss_and_grad`]: shift by one, `-100` ignored, a chunk of positions
//!   at a time).
//! * (Naming) the reference's `QSTConfig.r` is the *reduction factor* and `peft_hidden_size` the
//!   downsample rank; here they are [`QstConfig::reduction`] and [`QstConfig::r`].
//! * (Not a slip, but worth stating) the side layers copy the LLM's config, so they keep its
//!   head counts (GQA included), RoPE theta and rescaling, and norm epsilon; `head_dim` is
//!   recomputed as `H'/heads` even when the LLM's config names its own `head_dim`, and the MLP
//!   width is `⌊I/rf⌋` (the reference's `int(I / rf)`).
//!
//! # Memory
//!
//! [`llm_states`] (and the streaming [`logits`]) run every LLM layer on a `no_grad` copy and
//! detach its output, so the LLM records no graph and nothing of its internals (attention
//! probabilities, MLP activations, dequantized weights) outlives its layer. What backward keeps
//! is the side network's own graph: its activations at width `H'`, plus each `hᵢ` as the input
//! of `downᵢ`'s first product (needed for `∂L/∂Aᵢ = hᵢᵀ·δ`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use burn::module::{Module, Param};
use burn::tensor::activation::{sigmoid, silu};
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::io::{self, Checkpoint, IoError, OwnedTensor};
use crate::model::attention::{attend, causal_mask};
use crate::model::rope::apply_rotary;
use crate::model::{KvCache, LayerKv, Llama, LlamaConfig, RotaryEmbedding, head_loss_and_grad};

/// `qst_model.safetensors`: the side network's parameters, f32, names of
/// [`SideNetwork::named_params`].
pub const WEIGHTS_FILE: &str = "qst_model.safetensors";
/// `qst_config.json`: `{"method": "qst", "r", "reduction", ...}` and the LLM's shape.
pub const CONFIG_FILE: &str = "qst_config.json";
/// The `method` value of [`CONFIG_FILE`].
pub const METHOD: &str = "qst";
/// LayerNorm epsilon of the downsamples (torch's `nn.LayerNorm` default).
pub const LAYER_NORM_EPS: f64 = 1e-5;
/// Initial value of every layer gate `zᵢ` (the reference's `torch.full(.., 0.5)`).
pub const GATE_INIT: f32 = 0.5;
/// Initial value of the output gate `g` (the reference's `lm_head_z`).
pub const OUTPUT_GATE_INIT: f32 = 1.0;

/// Errors from building, reading or writing a side network. File errors name the file.
#[derive(Debug, thiserror::Error)]
pub enum QstError {
    /// `r` / `reduction` do not fit the model.
    #[error("invalid QST config: {0}")]
    Config(String),
    /// Reading or writing a file failed.
    #[error(transparent)]
    Io(#[from] IoError),
    /// A file that exists but does not fit (wrong method, another model, wrong shapes...).
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Reading a parameter back from the device failed.
    #[error("cannot read QST parameter {name} from the device: {reason}")]
    Readback {
        /// The parameter.
        name: String,
        /// What burn said.
        reason: String,
    },
}

/// The side network's hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QstConfig {
    /// Rank of the downsamples (`H -> r -> H/rf`; the reference's `peft_hidden_size`), 16.
    pub r: usize,
    /// Reduction factor `rf`: the side network is `H/rf` wide (the reference's `QSTConfig.r`), 16.
    pub reduction: usize,
}

impl Default for QstConfig {
    fn default() -> Self {
        QstConfig {
            r: 16,
            reduction: 16,
        }
    }
}

/// Every width of a side network for one LLM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SideDims {
    /// The LLM's `hidden_size` `H`.
    pub hidden: usize,
    /// The LLM's `intermediate_size` `I`.
    pub intermediate: usize,
    /// `H' = H / reduction`.
    pub side_hidden: usize,
    /// `I' = ⌊intermediate_size / reduction⌋`.
    pub side_intermediate: usize,
    /// Query heads (the LLM's).
    pub num_heads: usize,
    /// Key/value heads (the LLM's).
    pub num_kv_heads: usize,
    /// `H' / num_heads`.
    pub head_dim: usize,
    /// Downsample rank `r`.
    pub r: usize,
    /// Decoder layers `L` (the LLM's).
    pub num_layers: usize,
}

impl QstConfig {
    /// Checks `r` and `reduction` against the LLM and returns the side network's widths: `H`
    /// divisible by `reduction`, `H/reduction` by the head count, an even `head_dim`, a non-empty
    /// MLP.
    pub fn validate(&self, llm: &LlamaConfig) -> Result<SideDims, QstError> {
        let bad = |m: String| Err(QstError::Config(m));
        let (h, rf) = (llm.hidden_size, self.reduction);
        if self.r == 0 {
            return bad("rank r must be at least 1".into());
        }
        if self.r > h {
            return bad(format!(
                "rank r {} is above hidden_size {h}: the downsample H -> r -> H/reduction \
                 would widen instead",
                self.r
            ));
        }
        if rf == 0 {
            return bad("reduction must be at least 1".into());
        }
        if !h.is_multiple_of(rf) {
            return bad(format!(
                "hidden_size {h} is not divisible by the reduction factor {rf}"
            ));
        }
        let side = h / rf;
        let heads = llm.num_attention_heads;
        let kv = llm.num_kv_heads();
        if heads == 0 || kv == 0 || !heads.is_multiple_of(kv) {
            return bad(format!(
                "num_attention_heads {heads} is not a positive multiple of num_key_value_heads {kv}"
            ));
        }
        if !side.is_multiple_of(heads) {
            return bad(format!(
                "the side width hidden_size/reduction = {side} is not divisible by \
                 num_attention_heads {heads}"
            ));
        }
        let d = side / heads;
        if !d.is_multiple_of(2) {
            return bad(format!(
                "the side head_dim {side}/{heads} = {d} is not even (RoPE rotates halves)"
            ));
        }
        let inter = llm.intermediate_size / rf;
        if inter == 0 {
            return bad(format!(
                "intermediate_size {} / reduction {rf} leaves an empty side MLP",
                llm.intermediate_size
            ));
        }
        Ok(SideDims {
            hidden: h,
            intermediate: llm.intermediate_size,
            side_hidden: side,
            side_intermediate: inter,
            num_heads: heads,
            num_kv_heads: kv,
            head_dim: d,
            r: self.r,
            num_layers: llm.num_hidden_layers,
        })
    }
}

/// How a parameter starts.
#[derive(Clone, Copy, Debug)]
enum Init {
    /// `U(-b, b)`.
    Uniform(f32),
    /// Every element this value.
    Const(f32),
}

/// Names, shapes and initialisers of every parameter, in [`SideNetwork::named_params`] order.
fn layout(d: &SideDims) -> Vec<(String, [usize; 2], Init)> {
    let (hd, side, inter, r) = (d.hidden, d.side_hidden, d.side_intermediate, d.r);
    let (q, kv) = (d.num_heads * d.head_dim, d.num_kv_heads * d.head_dim);
    let uni = |fan_in: usize| Init::Uniform(1.0 / (fan_in as f32).sqrt());
    let mut out = Vec::new();
    let down = |out: &mut Vec<_>, i: usize| {
        let p = format!("downsample.{i}");
        out.push((format!("{p}.adapter_A.weight"), [hd, r], uni(hd)));
        out.push((format!("{p}.adapter_B.weight"), [r, side], uni(r)));
        out.push((
            format!("{p}.post_layer_norm.weight"),
            [1, side],
            Init::Const(1.0),
        ));
        out.push((
            format!("{p}.post_layer_norm.bias"),
            [1, side],
            Init::Const(0.0),
        ));
    };
    down(&mut out, 0);
    for i in 0..d.num_layers {
        down(&mut out, i + 1);
        out.push((format!("z.{i}"), [1, side], Init::Const(GATE_INIT)));
        let p = format!("qst_layers.{i}");
        let entries = [
            ("input_layernorm.weight", [1, side], Init::Const(1.0)),
            ("self_attn.q_proj.weight", [side, q], uni(side)),
            ("self_attn.k_proj.weight", [side, kv], uni(side)),
            ("self_attn.v_proj.weight", [side, kv], uni(side)),
            ("self_attn.o_proj.weight", [q, side], uni(q)),
            (
                "post_attention_layernorm.weight",
                [1, side],
                Init::Const(1.0),
            ),
            ("mlp.gate_proj.weight", [side, inter], uni(side)),
            ("mlp.up_proj.weight", [side, inter], uni(side)),
            ("mlp.down_proj.weight", [inter, side], uni(inter)),
        ];
        for (name, shape, init) in entries {
            out.push((format!("{p}.{name}"), shape, init));
        }
    }
    out.push(("norm_qst.weight".into(), [1, side], Init::Const(1.0)));
    out.push(("upsample.weight".into(), [side, hd], uni(side)));
    out.push(("upsample.bias".into(), [1, hd], uni(side)));
    out.push(("lm_head_z".into(), [1, hd], Init::Const(OUTPUT_GATE_INIT)));
    out
}

/// `[b, s, in]·[in, out]` -> `[b, s, out]`.
fn linear(x: Tensor<3>, w: &Param<Tensor<2>>) -> Tensor<3> {
    let [b, s, k] = x.dims();
    let w = w.val();
    let out = w.dims()[1];
    x.reshape([b * s, k]).matmul(w).reshape([b, s, out])
}

/// `[1, n]` -> `[1, 1, n]`, broadcastable over `[b, s, n]`.
fn row(p: &Param<Tensor<2>>) -> Tensor<3> {
    p.val().unsqueeze::<3>()
}

/// transformers' `LlamaRMSNorm` with a trainable gain: `w ⊙ x / √(mean(x²) + ε)`.
fn rms_norm(x: Tensor<3>, w: &Param<Tensor<2>>, eps: f64) -> Tensor<3> {
    let inv = (x.clone().square().mean_dim(2) + eps).sqrt().recip(); // [b, s, 1]
    x * inv * row(w)
}

/// `(1 - σ(z)) ⊙ a + σ(z) ⊙ b`.
fn gate(z: &Param<Tensor<2>>, a: Tensor<3>, b: Tensor<3>) -> Tensor<3> {
    let g = sigmoid(row(z)); // [1, 1, n]
    a * g.clone().neg().add_scalar(1.0) + b * g
}

/// One downsample: `LayerNorm(silu(h·A)·B)` (the reference's `AdapterLinear` with
/// `add_layer_norm_after_adapter`, activation swish).
#[derive(Module, Debug)]
pub struct Downsample {
    /// `[H, r]` (`adapter_A`).
    pub a: Param<Tensor<2>>,
    /// `[r, H']` (`adapter_B`).
    pub b: Param<Tensor<2>>,
    /// `[1, H']` LayerNorm gain.
    pub ln_weight: Param<Tensor<2>>,
    /// `[1, H']` LayerNorm bias.
    pub ln_bias: Param<Tensor<2>>,
}

impl Downsample {
    /// # Shapes
    /// `h: [b, s, H]` -> `[b, s, H']`.
    pub fn forward(&self, h: Tensor<3>) -> Tensor<3> {
        let y = linear(silu(linear(h, &self.a)), &self.b); // [b, s, H']
        let mean = y.clone().mean_dim(2); // [b, s, 1]
        let centered = y - mean;
        let var = centered.clone().square().mean_dim(2); // [b, s, 1]
        centered * (var + LAYER_NORM_EPS).sqrt().recip() * row(&self.ln_weight) + row(&self.ln_bias)
    }
}

/// One side decoder layer: a LLaMA decoder layer `H'` wide with trainable float weights.
#[derive(Module, Debug)]
pub struct SideLayer {
    /// `[1, H']` pre-attention RMSNorm gain.
    pub input_norm: Param<Tensor<2>>,
    /// `[H', heads·d]`
    pub q: Param<Tensor<2>>,
    /// `[H', kv·d]`
    pub k: Param<Tensor<2>>,
    /// `[H', kv·d]`
    pub v: Param<Tensor<2>>,
    /// `[heads·d, H']`
    pub o: Param<Tensor<2>>,
    /// `[1, H']` pre-MLP RMSNorm gain.
    pub post_norm: Param<Tensor<2>>,
    /// `[H', I']`
    pub gate: Param<Tensor<2>>,
    /// `[H', I']`
    pub up: Param<Tensor<2>>,
    /// `[I', H']`
    pub down: Param<Tensor<2>>,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// `d`.
    pub head_dim: usize,
    /// RMSNorm `ε` (the LLM's).
    #[module(skip)]
    pub eps: f64,
}

impl SideLayer {
    /// `x + attn(norm₁(x))`, then `+ mlp(norm₂(·))`; with `cache`, keys and values of earlier
    /// tokens are prepended and the new ones appended, as in [`crate::model::Attention`].
    ///
    /// # Shapes
    /// `x: [b, s, H']`, `cos`, `sin`: `[s, d]`, `mask`: `[s, t]` -> `[b, s, H']`.
    pub fn forward(
        &self,
        x: Tensor<3>,
        cos: &Tensor<2>,
        sin: &Tensor<2>,
        mask: Option<&Tensor<2, Bool>>,
        cache: Option<&mut Option<LayerKv>>,
    ) -> Tensor<3> {
        let attn = self.attention(
            rms_norm(x.clone(), &self.input_norm, self.eps),
            cos,
            sin,
            mask,
            cache,
        );
        let x = x + attn;
        let n = rms_norm(x.clone(), &self.post_norm, self.eps);
        let mlp = linear(
            silu(linear(n.clone(), &self.gate)) * linear(n, &self.up),
            &self.down,
        );
        x + mlp
    }

    fn attention(
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
        let q = apply_rotary(heads(linear(x.clone(), &self.q), h), cos, sin); // [b, h, s, d]
        let k = apply_rotary(heads(linear(x.clone(), &self.k), kv), cos, sin); // [b, kv, s, d]
        let v = heads(linear(x, &self.v), kv); // [b, kv, s, d]
        let out = attend(q, k, v, mask, cache); // [b, s, h·d]
        linear(out, &self.o)
    }
}

/// The QST side network (see the module doc for the function, names and init).
#[derive(Module, Debug)]
pub struct SideNetwork {
    /// `down₀..down_L` (`L + 1`; `down₀` reads the embeddings).
    pub downsample: Vec<Downsample>,
    /// `[1, H']` gates `z` of side layers `0..L`.
    pub z: Vec<Param<Tensor<2>>>,
    /// Side decoder layers `0..L`.
    pub layers: Vec<SideLayer>,
    /// `[1, H']` final side RMSNorm gain (`norm_qst`).
    pub norm: Param<Tensor<2>>,
    /// `[H', H]` upsample weight.
    pub up_weight: Param<Tensor<2>>,
    /// `[1, H]` upsample bias.
    pub up_bias: Param<Tensor<2>>,
    /// `[1, H]` output gate `g` (`lm_head_z`).
    pub output_gate: Param<Tensor<2>>,
    /// `r` and `reduction`.
    #[module(skip)]
    pub config: QstConfig,
    /// The widths.
    #[module(skip)]
    pub dims: SideDims,
    /// RoPE over the side head_dim.
    #[module(skip)]
    pub rope: RotaryEmbedding,
    /// RMSNorm `ε` (the LLM's).
    #[module(skip)]
    pub eps: f64,
}

impl SideNetwork {
    /// A freshly initialised side network for `llm` (see the module doc), on `device` (an
    /// autodiff device to train it). Deterministic in `seed`.
    pub fn init(
        llm: &LlamaConfig,
        cfg: &QstConfig,
        seed: u64,
        device: &Device,
    ) -> Result<Self, QstError> {
        let dims = cfg.validate(llm)?;
        let mut rng = StdRng::seed_from_u64(seed);
        let mut values = HashMap::new();
        for (name, shape, init) in layout(&dims) {
            let n = shape[0] * shape[1];
            let v: Vec<f32> = match init {
                Init::Uniform(b) => (0..n).map(|_| rng.random_range(-b..b)).collect(),
                Init::Const(c) => vec![c; n],
            };
            values.insert(name, (v, shape));
        }
        Self::assemble(llm, cfg, dims, values, device)
    }

    /// Builds the network from host values by name (every name of [`layout`], shapes checked by
    /// the caller).
    fn assemble(
        llm: &LlamaConfig,
        cfg: &QstConfig,
        dims: SideDims,
        mut values: HashMap<String, (Vec<f32>, [usize; 2])>,
        device: &Device,
    ) -> Result<Self, QstError> {
        let rope = RotaryEmbedding::new(
            dims.head_dim,
            llm.rope_theta(),
            llm.rope_scaling()
                .map_err(|e| QstError::Config(e.to_string()))?,
        );
        let mut take = |name: String| -> Param<Tensor<2>> {
            let (v, shape) = values
                .remove(&name)
                .unwrap_or_else(|| panic!("layout names {name}"));
            Param::from_tensor(Tensor::from_data(TensorData::new(v, shape), device))
        };
        let down = |take: &mut dyn FnMut(String) -> Param<Tensor<2>>, i: usize| Downsample {
            a: take(format!("downsample.{i}.adapter_A.weight")),
            b: take(format!("downsample.{i}.adapter_B.weight")),
            ln_weight: take(format!("downsample.{i}.post_layer_norm.weight")),
            ln_bias: take(format!("downsample.{i}.post_layer_norm.bias")),
        };
        let mut downsample = vec![down(&mut take, 0)];
        let mut z = Vec::new();
        let mut layers = Vec::new();
        for i in 0..dims.num_layers {
            downsample.push(down(&mut take, i + 1));
            z.push(take(format!("z.{i}")));
            let p = format!("qst_layers.{i}");
            layers.push(SideLayer {
                input_norm: take(format!("{p}.input_layernorm.weight")),
                q: take(format!("{p}.self_attn.q_proj.weight")),
                k: take(format!("{p}.self_attn.k_proj.weight")),
                v: take(format!("{p}.self_attn.v_proj.weight")),
                o: take(format!("{p}.self_attn.o_proj.weight")),
                post_norm: take(format!("{p}.post_attention_layernorm.weight")),
                gate: take(format!("{p}.mlp.gate_proj.weight")),
                up: take(format!("{p}.mlp.up_proj.weight")),
                down: take(format!("{p}.mlp.down_proj.weight")),
                num_heads: dims.num_heads,
                num_kv_heads: dims.num_kv_heads,
                head_dim: dims.head_dim,
                eps: llm.rms_norm_eps,
            });
        }
        Ok(SideNetwork {
            downsample,
            z,
            layers,
            norm: take("norm_qst.weight".into()),
            up_weight: take("upsample.weight".into()),
            up_bias: take("upsample.bias".into()),
            output_gate: take("lm_head_z".into()),
            config: *cfg,
            dims,
            rope,
            eps: llm.rms_norm_eps,
        })
    }

    /// `s₀ = down₀(h₀)`.
    ///
    /// # Shapes
    /// `h0: [b, s, H]` -> `[b, s, H']`.
    pub fn start(&self, h0: Tensor<3>) -> Tensor<3> {
        self.downsample[0].forward(h0)
    }

    /// Side layer `i` (0-based) on `(1 - σ(zᵢ)) ⊙ down_{i+1}(h) + σ(zᵢ) ⊙ s`, where `h` is the
    /// output of LLM layer `i`.
    ///
    /// # Shapes
    /// `s: [b, s, H']`, `h: [b, s, H]`, `cos`, `sin`: `[s, d]` of [`Self::rope`], `mask`: `[s, t]`
    /// -> `[b, s, H']`.
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &self,
        i: usize,
        s: Tensor<3>,
        h: Tensor<3>,
        cos: &Tensor<2>,
        sin: &Tensor<2>,
        mask: Option<&Tensor<2, Bool>>,
        cache: Option<&mut Option<LayerKv>>,
    ) -> Tensor<3> {
        let mixed = gate(&self.z[i], self.downsample[i + 1].forward(h), s);
        self.layers[i].forward(mixed, cos, sin, mask, cache)
    }

    /// `x = (1 - σ(g)) ⊙ (RMSNorm(s_L)·W_up + b_up) + σ(g) ⊙ norm(h_L)`.
    ///
    /// # Shapes
    /// `s_last: [b, s, H']`, `final_normed: [b, s, H]` -> `[b, s, H]`.
    pub fn finish(&self, s_last: Tensor<3>, final_normed: Tensor<3>) -> Tensor<3> {
        let u =
            linear(rms_norm(s_last, &self.norm, self.eps), &self.up_weight) + row(&self.up_bias);
        gate(&self.output_gate, u, final_normed)
    }

    /// The mixed representation `x` the LM head reads, for tokens at positions `0..s`.
    /// `hidden` = `h₀..h_L` and `final_normed` = `norm(h_L)` as [`llm_states`] returns them;
    /// `mask` = the LLM's mask for `s` tokens (`Llama::positions(s).2`).
    ///
    /// # Shapes
    /// `hidden[i]: [b, s, H]` (`L + 1` of them), `final_normed: [b, s, H]`, `mask: [s, s]`
    /// -> `[b, s, H]`.
    pub fn forward(
        &self,
        hidden: &[Tensor<3>],
        final_normed: Tensor<3>,
        mask: Option<&Tensor<2, Bool>>,
    ) -> Tensor<3> {
        assert_eq!(
            hidden.len(),
            self.layers.len() + 1,
            "h₀..h_L: one hidden state per LLM layer plus the embeddings"
        );
        let [_, s, _] = hidden[0].dims();
        let (cos, sin) = self.rope.cos_sin(0, s, &hidden[0].device());
        let mut side = self.start(hidden[0].clone());
        for (i, h) in hidden[1..].iter().enumerate() {
            side = self.step(i, side, h.clone(), &cos, &sin, mask, None);
        }
        self.finish(side, final_normed)
    }

    /// Every trainable tensor by name, in the fixed order of the module doc's table (graph
    /// handles: `Param::val`).
    pub fn named_params(&self) -> Vec<(String, Tensor<2>)> {
        self.params()
            .into_iter()
            .map(|(n, p)| (n, p.val()))
            .collect()
    }

    /// Every trainable parameter by name, same order as [`Self::named_params`].
    pub fn params(&self) -> Vec<(String, &Param<Tensor<2>>)> {
        let mut out = Vec::new();
        push_down(&mut out, 0, &self.downsample[0]);
        for (i, layer) in self.layers.iter().enumerate() {
            push_down(&mut out, i + 1, &self.downsample[i + 1]);
            out.push((format!("z.{i}"), &self.z[i]));
            let p = format!("qst_layers.{i}");
            let named = [
                ("input_layernorm.weight", &layer.input_norm),
                ("self_attn.q_proj.weight", &layer.q),
                ("self_attn.k_proj.weight", &layer.k),
                ("self_attn.v_proj.weight", &layer.v),
                ("self_attn.o_proj.weight", &layer.o),
                ("post_attention_layernorm.weight", &layer.post_norm),
                ("mlp.gate_proj.weight", &layer.gate),
                ("mlp.up_proj.weight", &layer.up),
                ("mlp.down_proj.weight", &layer.down),
            ];
            out.extend(named.map(|(n, t)| (format!("{p}.{n}"), t)));
        }
        out.push(("norm_qst.weight".into(), &self.norm));
        out.push(("upsample.weight".into(), &self.up_weight));
        out.push(("upsample.bias".into(), &self.up_bias));
        out.push(("lm_head_z".into(), &self.output_gate));
        out
    }

    /// Every trainable parameter by name, mutably, same order as [`Self::named_params`] (assign
    /// `Param::from_tensor(new.autodiff())` after an optimizer step).
    pub fn params_mut(&mut self) -> Vec<(String, &mut Param<Tensor<2>>)> {
        let mut out = Vec::new();
        let SideNetwork {
            downsample,
            z,
            layers,
            norm,
            up_weight,
            up_bias,
            output_gate,
            ..
        } = self;
        let mut downs = downsample.iter_mut();
        push_down_mut(&mut out, 0, downs.next().expect("down₀"));
        for (i, (layer, zi)) in layers.iter_mut().zip(z.iter_mut()).enumerate() {
            push_down_mut(&mut out, i + 1, downs.next().expect("L + 1 downsamples"));
            out.push((format!("z.{i}"), zi));
            let p = format!("qst_layers.{i}");
            let SideLayer {
                input_norm,
                q,
                k,
                v,
                o,
                post_norm,
                gate,
                up,
                down,
                ..
            } = layer;
            let named = [
                ("input_layernorm.weight", input_norm),
                ("self_attn.q_proj.weight", q),
                ("self_attn.k_proj.weight", k),
                ("self_attn.v_proj.weight", v),
                ("self_attn.o_proj.weight", o),
                ("post_attention_layernorm.weight", post_norm),
                ("mlp.gate_proj.weight", gate),
                ("mlp.up_proj.weight", up),
                ("mlp.down_proj.weight", down),
            ];
            out.extend(named.map(|(n, t)| (format!("{p}.{n}"), t)));
        }
        out.push(("norm_qst.weight".into(), norm));
        out.push(("upsample.weight".into(), up_weight));
        out.push(("upsample.bias".into(), up_bias));
        out.push(("lm_head_z".into(), output_gate));
        out
    }

    /// Trainable scalars.
    pub fn num_trainable(&self) -> usize {
        self.named_params()
            .iter()
            .map(|(_, t)| t.dims().iter().product::<usize>())
            .sum()
    }

    /// The JSON of [`CONFIG_FILE`].
    pub fn config_json(&self) -> Value {
        let d = &self.dims;
        json!({
            "method": METHOD,
            "r": self.config.r,
            "reduction": self.config.reduction,
            "hidden_size": d.hidden,
            "intermediate_size": d.intermediate,
            "num_layers": d.num_layers,
            "num_attention_heads": d.num_heads,
            "num_key_value_heads": d.num_kv_heads,
            "side_hidden_size": d.side_hidden,
            "side_intermediate_size": d.side_intermediate,
            "side_head_dim": d.head_dim,
            "weight_layout": "linear weights [in, out] (y = x·W); vectors [1, n]",
        })
    }

    /// Writes [`WEIGHTS_FILE`] (f32, [`Self::named_params`] names) and [`CONFIG_FILE`] into
    /// `dir` (created if needed), each through a temporary name renamed into place.
    pub fn save(&self, dir: &Path) -> Result<(), QstError> {
        let mut tensors = BTreeMap::new();
        for (name, t) in self.named_params() {
            let shape = t.dims().to_vec();
            let values = t
                .inner()
                .try_into_vec_as::<f32>()
                .map_err(|e| QstError::Readback {
                    name: name.clone(),
                    reason: format!("{e:?}"),
                })?;
            tensors.insert(name, OwnedTensor::f32(shape, &values));
        }
        std::fs::create_dir_all(dir).map_err(io::os_err(dir))?;
        let weights = dir.join(WEIGHTS_FILE);
        let tmp = dir.join(format!("{WEIGHTS_FILE}.tmp"));
        io::write_safetensors(&tensors, &tmp)?;
        std::fs::rename(&tmp, &weights).map_err(io::os_err(&weights))?;
        let cfg = dir.join(CONFIG_FILE);
        let tmp = dir.join(format!("{CONFIG_FILE}.tmp"));
        let text =
            serde_json::to_string_pretty(&self.config_json()).expect("a JSON value serializes");
        std::fs::write(&tmp, text + "\n").map_err(io::os_err(&tmp))?;
        std::fs::rename(&tmp, &cfg).map_err(io::os_err(&cfg))?;
        Ok(())
    }

    /// Reads the config of a saved side network in `dir`, checked against `llm`.
    pub fn read_config(dir: &Path, llm: &LlamaConfig) -> Result<QstConfig, QstError> {
        let path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(io::os_err(&path))?;
        let bad = |reason: String| QstError::File {
            path: path.clone(),
            reason,
        };
        let v: Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        let method = v.get("method").and_then(Value::as_str);
        if method != Some(METHOD) {
            return Err(bad(format!(
                "method {method:?}, expected \"{METHOD}\" (not a QST side network)"
            )));
        }
        let int = |key: &str| -> Result<usize, QstError> {
            v.get(key)
                .and_then(Value::as_u64)
                .map(|x| x as usize)
                .ok_or_else(|| bad(format!("missing or invalid {key:?}")))
        };
        let cfg = QstConfig {
            r: int("r")?,
            reduction: int("reduction")?,
        };
        for (key, want) in [
            ("hidden_size", llm.hidden_size),
            ("num_layers", llm.num_hidden_layers),
        ] {
            let got = int(key)?;
            if got != want {
                return Err(bad(format!(
                    "saved for a model with {key} = {got}, but this model has {want} \
                     (a side network for another model?)"
                )));
            }
        }
        for (key, want) in [
            ("intermediate_size", llm.intermediate_size),
            ("num_attention_heads", llm.num_attention_heads),
            ("num_key_value_heads", llm.num_kv_heads()),
        ] {
            if let Some(got) = v.get(key).and_then(Value::as_u64)
                && got as usize != want
            {
                return Err(bad(format!(
                    "saved for a model with {key} = {got}, but this model has {want} \
                     (a side network for another model?)"
                )));
            }
        }
        cfg.validate(llm).map_err(|e| bad(e.to_string()))?;
        Ok(cfg)
    }

    /// Reads a side network saved by [`Self::save`] from `dir` for the LLM of `llm`, onto
    /// `device`. Every tensor of the layout must be there with its shape, and nothing else.
    pub fn load(dir: &Path, llm: &LlamaConfig, device: &Device) -> Result<Self, QstError> {
        let cfg = Self::read_config(dir, llm)?;
        let dims = cfg.validate(llm)?;
        let path = dir.join(WEIGHTS_FILE);
        let ckpt = Checkpoint::open(&path)?;
        let expected = layout(&dims);
        let known: HashMap<&str, [usize; 2]> =
            expected.iter().map(|(n, s, _)| (n.as_str(), *s)).collect();
        if let Some(extra) = ckpt.names().find(|n| !known.contains_key(n)) {
            return Err(QstError::File {
                path,
                reason: format!("tensor {extra:?} is not a parameter of this side network"),
            });
        }
        let mut values = HashMap::new();
        for (name, shape, _) in expected {
            let (view, file) = ckpt.view(&name)?;
            if view.shape() != shape {
                return Err(IoError::Shape {
                    path: file.to_path_buf(),
                    name,
                    expected: shape.to_vec(),
                    got: view.shape().to_vec(),
                }
                .into());
            }
            let v = io::read_f32(&view, file, &name)?;
            values.insert(name, (v, shape));
        }
        Self::assemble(llm, &cfg, dims, values, device)
    }
}

/// Downsample `i`'s four parameters by name.
fn push_down<'a>(out: &mut Vec<(String, &'a Param<Tensor<2>>)>, i: usize, d: &'a Downsample) {
    let p = format!("downsample.{i}");
    out.push((format!("{p}.adapter_A.weight"), &d.a));
    out.push((format!("{p}.adapter_B.weight"), &d.b));
    out.push((format!("{p}.post_layer_norm.weight"), &d.ln_weight));
    out.push((format!("{p}.post_layer_norm.bias"), &d.ln_bias));
}

/// [`push_down`], mutably.
fn push_down_mut<'a>(
    out: &mut Vec<(String, &'a mut Param<Tensor<2>>)>,
    i: usize,
    d: &'a mut Downsample,
) {
    let p = format!("downsample.{i}");
    let Downsample {
        a,
        b,
        ln_weight,
        ln_bias,
    } = d;
    out.push((format!("{p}.adapter_A.weight"), a));
    out.push((format!("{p}.adapter_B.weight"), b));
    out.push((format!("{p}.post_layer_norm.weight"), ln_weight));
    out.push((format!("{p}.post_layer_norm.bias"), ln_bias));
}

/// Runs the frozen LLM without recording a graph: `h₀ = E[ids]`, `h₁..h_L` (each decoder layer's
/// output, detached) and `norm(h_L)`. Each layer runs on a `no_grad` copy, so even adapters
/// attached to the model record nothing.
///
/// # Shapes
/// `ids: [b, s]` -> (`L + 1` × `[b, s, H]`, `[b, s, H]`).
pub fn llm_states(model: &Llama, ids: Tensor<2, Int>) -> (Vec<Tensor<3>>, Tensor<3>) {
    let [_, s] = ids.dims();
    let (cos, sin, mask) = model.positions(s);
    let mut hidden = Vec::with_capacity(model.layers.len() + 1);
    hidden.push(model.embed(ids).detach()); // [b, s, H]
    for layer in &model.layers {
        let frozen = layer.clone().no_grad();
        let x = hidden.last().expect("h₀").clone();
        hidden.push(frozen.forward(x, &cos, &sin, mask.as_ref(), None).detach());
    }
    let last = hidden.last().expect("h_L").clone();
    let normed = model.norm.forward(last).detach();
    (hidden, normed)
}

/// The frozen LM head on the mixed representation: `x·W_headᵀ` (no norm: `x` already holds the
/// normed LLM state).
///
/// # Shapes
/// `x: [b, s, H]` -> `[b, s, v]`.
pub fn head(model: &Llama, x: Tensor<3>) -> Tensor<3> {
    let [b, s, hd] = x.dims();
    let v = model.lm_head_t.dims()[1];
    x.reshape([b * s, hd])
        .matmul(model.lm_head_t.clone())
        .reshape([b, s, v])
}

/// The frozen head's summed loss on `x` and `∂(loss / denom)/∂x`, a chunk of positions at a
/// time ([`head_loss_and_grad`]: the `[b, s, vocab]` logits never exist whole).
fn head_loss(
    model: &Llama,
    x: Tensor<3>,
    labels: Tensor<2, Int>,
    denom: f64,
) -> (Tensor<1>, Tensor<3>) {
    let vocab = model.lm_head_t.dims()[1];
    head_loss_and_grad(x, labels, denom, vocab, |xc| head(model, xc))
}

/// KV caches for [`logits`]: the LLM's layers in [`KvCache::layers`], the side network's in
/// [`KvCache::side_layers`].
pub type QstCache = KvCache;

/// The frozen LM head's input in the QST model (the mix of the side network's upsampled output
/// and the LLM's normed last state), running LLM layer `i` and side layer `i` in turn so that
/// each LLM hidden state lives only until the side network has read it. Without a cache the
/// tokens sit at positions `0..s`; with one they follow the cached tokens and are appended to it
/// (as [`Llama::forward`]). The LLM records no graph.
///
/// # Shapes
/// `ids: [b, s]` -> `[b, s, H]`.
pub fn head_input(
    model: &Llama,
    side: &SideNetwork,
    ids: Tensor<2, Int>,
    cache: Option<&mut QstCache>,
) -> Tensor<3> {
    let [_, s] = ids.dims();
    let device = model.device();
    let mut cache = cache;
    let offset = cache.as_ref().map_or(0, |c| c.offset);
    let (cos, sin) = model.rope.cos_sin(offset, s, &device);
    let (side_cos, side_sin) = side.rope.cos_sin(offset, s, &device);
    let window_bites = model.config.sliding_window.is_some_and(|w| w < offset + s);
    let mask = (s > 1 || window_bites)
        .then(|| causal_mask(s, offset, model.config.sliding_window, &device));
    if let Some(c) = cache.as_deref_mut() {
        let n = model.layers.len();
        if c.layers.len() < n {
            c.layers.resize(n, None);
        }
        if c.side_layers.len() < n {
            c.side_layers.resize(n, None);
        }
    }
    let mut h = model.embed(ids).detach(); // [b, s, H]
    let mut state = side.start(h.clone()); // [b, s, H']
    for (i, layer) in model.layers.iter().enumerate() {
        let frozen = layer.clone().no_grad();
        let (llm_slot, side_slot) = match cache.as_deref_mut() {
            Some(c) => (Some(&mut c.layers[i]), Some(&mut c.side_layers[i])),
            None => (None, None),
        };
        h = frozen
            .forward(h, &cos, &sin, mask.as_ref(), llm_slot)
            .detach();
        state = side.step(
            i,
            state,
            h.clone(),
            &side_cos,
            &side_sin,
            mask.as_ref(),
            side_slot,
        );
    }
    if let Some(c) = cache {
        c.offset += s;
    }
    let normed = model.norm.forward(h).detach();
    side.finish(state, normed)
}

/// Next-token logits of the QST model (LLM + side network + frozen head): [`head`] on
/// [`head_input`]. Caching as there.
///
/// # Shapes
/// `ids: [b, s]` -> `[b, s, v]`.
pub fn logits(
    model: &Llama,
    side: &SideNetwork,
    ids: Tensor<2, Int>,
    cache: Option<&mut QstCache>,
) -> Tensor<3> {
    head(model, head_input(model, side, ids, cache))
}

/// Loss and side-network gradients of one micro-batch on an autodiff device, as
/// `train::step::micro_step` computes them for LoRA: the loss is the summed next-token
/// cross-entropy divided by `denom` (the target count of the whole optimizer step). Returns the
/// summed cross-entropy (`[1]`, on the device) and the gradient of `sum / denom` for every parameter in
/// [`SideNetwork::named_params`] order (plain tensors; zeros where a parameter got none).
///
/// # Shapes
/// `ids`, `labels`: `[b, s]` (`-100` labels ignored).
pub fn loss_and_grads(
    model: &Llama,
    side: &SideNetwork,
    ids: Tensor<2, Int>,
    labels: Tensor<2, Int>,
    denom: f64,
) -> (Tensor<1>, Vec<Tensor<2>>) {
    let [_, s] = ids.dims();
    let (hidden, normed) = llm_states(model, ids);
    let (_, _, mask) = model.positions(s);
    let x = side.forward(&hidden, normed, mask.as_ref());
    drop(hidden);
    let (loss_sum, d) = head_loss(model, x.clone(), labels, denom);
    let grads = (x * d.autodiff()).sum().backward();
    let grads = side
        .named_params()
        .iter()
        .map(|(_, p)| {
            p.grad(&grads)
                .unwrap_or_else(|| Tensor::zeros(p.dims(), &p.device().inner()))
        })
        .collect();
    (loss_sum, grads)
}

/// [`loss_and_grads`] with the side network checkpointed per layer, as LoRA's per-layer
/// activation checkpointing does for the LLM: a forward without a graph keeps only the side
/// states `s₀..s_L` (width `H'`, small); the head's graph from `s_L` gives the loss and
/// `∂L/∂s_L`; then each side layer runs again from its saved input and the backward of
/// `Σ stepᵢ(sᵢ, hᵢ₊₁) ⊙ ∂L/∂sᵢ₊₁` gives its parameters' gradients and `∂L/∂sᵢ`. Only one side
/// layer's attention maps (`[b, heads, s, s]`, which the width reduction does not shrink) are
/// alive at a time. Same values as [`loss_and_grads`] up to float summation order.
pub fn loss_and_grads_checkpointed(
    model: &Llama,
    side: &SideNetwork,
    ids: Tensor<2, Int>,
    labels: Tensor<2, Int>,
    denom: f64,
) -> (Tensor<1>, Vec<Tensor<2>>) {
    let [_, s] = ids.dims();
    let (hidden, normed) = llm_states(model, ids);
    let (_, _, mask) = model.positions(s);
    let (cos, sin) = side.rope.cos_sin(0, s, &hidden[0].device());
    let params = side.named_params();
    let mut grads: Vec<Option<Tensor<2>>> = vec![None; params.len()];
    let mut collect = |g: &burn::tensor::Gradients| {
        for (slot, (_, p)) in grads.iter_mut().zip(&params) {
            if let Some(d) = p.grad(g) {
                *slot = Some(match slot.take() {
                    Some(acc) => acc + d,
                    None => d,
                });
            }
        }
    };
    // 1. Side states without a graph.
    let frozen = side.clone().no_grad();
    let mut states = Vec::with_capacity(hidden.len());
    states.push(frozen.start(hidden[0].clone()).detach()); // [b, s, H']
    for (i, h) in hidden[1..].iter().enumerate() {
        let prev = states[i].clone();
        states.push(
            frozen
                .step(i, prev, h.clone(), &cos, &sin, mask.as_ref(), None)
                .detach(),
        );
    }
    // 2. The head from s_L.
    let s_last = states.pop().expect("s_L").require_grad();
    let x = side.finish(s_last.clone(), normed);
    let (loss_sum, dx) = head_loss(model, x.clone(), labels, denom);
    let g = (x * dx.autodiff()).sum().backward();
    collect(&g);
    let mut d = s_last.grad(&g).expect("s_L has a gradient"); // [b, s, H']
    // 3. Side layers, last to first, then the first downsample.
    for i in (0..side.layers.len()).rev() {
        let s_in = states.pop().expect("side layer input").require_grad();
        let y = side.step(
            i,
            s_in.clone(),
            hidden[i + 1].clone(),
            &cos,
            &sin,
            mask.as_ref(),
            None,
        );
        let g = (y * d.clone().autodiff()).sum().backward();
        collect(&g);
        d = s_in.grad(&g).expect("a side state has a gradient");
    }
    let g = (side.start(hidden[0].clone()) * d.autodiff())
        .sum()
        .backward();
    collect(&g);
    let grads = grads
        .into_iter()
        .zip(&params)
        .map(|(g, (_, p))| g.unwrap_or_else(|| Tensor::zeros(p.dims(), &p.device().inner())))
        .collect();
    (loss_sum, grads)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llm(hidden: usize, heads: usize, kv: usize, layers: usize) -> LlamaConfig {
        let text = format!(
            r#"{{"hidden_size": {hidden}, "intermediate_size": {}, "num_attention_heads": {heads},
                "num_key_value_heads": {kv}, "num_hidden_layers": {layers}, "vocab_size": 32}}"#,
            hidden * 3
        );
        LlamaConfig::from_json(&text, Path::new("config.json")).expect("config")
    }

    fn cpu() -> Device {
        crate::device::cpu_backend()
    }

    #[test]
    fn validate_checks_divisibility() {
        let c = llm(128, 4, 2, 2);
        let d = QstConfig { r: 8, reduction: 4 }
            .validate(&c)
            .expect("valid");
        assert_eq!(
            (d.side_hidden, d.head_dim, d.side_intermediate),
            (32, 8, 96)
        );
        let err = |cfg: QstConfig| cfg.validate(&c).expect_err("invalid").to_string();
        assert!(err(QstConfig { r: 8, reduction: 3 }).contains("not divisible by the reduction"));
        // 128/16 = 8 wide, 4 heads: head_dim 2 is fine; 128/32 = 4 wide: head_dim 1 is odd.
        assert!(
            QstConfig {
                r: 8,
                reduction: 16
            }
            .validate(&c)
            .is_ok()
        );
        assert!(
            err(QstConfig {
                r: 8,
                reduction: 32
            })
            .contains("not even")
        );
        assert!(
            err(QstConfig {
                r: 8,
                reduction: 64
            })
            .contains("num_attention_heads")
        );
        assert!(err(QstConfig { r: 0, reduction: 4 }).contains("rank"));
        assert!(err(QstConfig { r: 8, reduction: 0 }).contains("reduction"));
    }

    #[test]
    fn names_follow_the_layout_and_init_is_deterministic() {
        let c = llm(64, 4, 2, 3);
        let cfg = QstConfig { r: 4, reduction: 2 };
        let dims = cfg.validate(&c).expect("valid");
        let mut a = SideNetwork::init(&c, &cfg, 7, &cpu()).expect("init");
        let b = SideNetwork::init(&c, &cfg, 7, &cpu()).expect("init");
        let names: Vec<String> = layout(&dims).into_iter().map(|(n, _, _)| n).collect();
        let got: Vec<String> = a.named_params().into_iter().map(|(n, _)| n).collect();
        assert_eq!(got, names);
        let got_mut: Vec<String> = a.params_mut().into_iter().map(|(n, _)| n).collect();
        assert_eq!(got_mut, names);
        assert_eq!(names.len(), 4 * (3 + 1) + 3 * 10 + 4);
        for ((n, x), (_, y)) in a.named_params().into_iter().zip(b.named_params()) {
            let (x, y) = (x.into_data(), y.into_data());
            assert_eq!(x, y, "{n}");
        }
        for (name, shape, _) in layout(&dims) {
            let t = a
                .named_params()
                .into_iter()
                .find(|(n, _)| *n == name)
                .expect("present")
                .1;
            assert_eq!(t.dims(), shape, "{name}");
        }
        // The side network has as many trainable scalars as the table says.
        assert_eq!(a.num_trainable(), a.num_params());
    }
}
