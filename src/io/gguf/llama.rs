//! LLaMA GGUF files in HF terms: tensor names, Q/K row order, config and tokenizer.
//!
//! llama.cpp's `convert_hf_to_gguf.py` renames HF tensors ([`gguf_to_hf_name`] undoes it) and,
//! for the `llama` architecture, permutes the rows of `q_proj` and `k_proj` so that its RoPE can
//! rotate adjacent pairs `(2i, 2i+1)` where HF rotates halves `(i, i + head_dim/2)`:
//! `permute(w) = w.reshape(n_h, 2, hd/2, in).swapaxes(1, 2).reshape(out, in)`.
//! [`unpermute_qk`] is its inverse, `w.reshape(n_h, hd/2, 2, in).swapaxes(1, 2)`, as in
//! transformers' `modeling_gguf_pytorch_utils.py` (`_reverse_permute_weights`), with
//! `n_h = num_attention_heads` for `q_proj` and `num_key_value_heads` for `k_proj`.

use super::{GgufFile, GgufValue};
use crate::io::IoError;

/// GGUF name -> HF name outside the layers.
const GLOBAL_NAMES: &[(&str, &str)] = &[
    ("token_embd", "model.embed_tokens"),
    ("output_norm", "model.norm"),
    ("output", "lm_head"),
];

/// `blk.N.<gguf>` -> `model.layers.N.<hf>`.
const LAYER_NAMES: &[(&str, &str)] = &[
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
    ("attn_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
];

/// Splits `stem.weight` / `stem.bias`.
fn split_suffix(name: &str) -> Option<(&str, &str)> {
    name.strip_suffix(".weight")
        .map(|s| (s, "weight"))
        .or_else(|| name.strip_suffix(".bias").map(|s| (s, "bias")))
}

/// The HF name of a GGUF tensor (`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight`),
/// or `None` for tensors HF has no counterpart of (e.g. `rope_freqs.weight`).
pub fn gguf_to_hf_name(gguf: &str) -> Option<String> {
    let (stem, suffix) = split_suffix(gguf)?;
    if let Some((_, hf)) = GLOBAL_NAMES.iter().find(|(g, _)| *g == stem) {
        return Some(format!("{hf}.{suffix}"));
    }
    let rest = stem.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (_, hf) = LAYER_NAMES.iter().find(|(g, _)| *g == part)?;
    Some(format!("model.layers.{layer}.{hf}.{suffix}"))
}

/// The GGUF name of an HF tensor: the inverse of [`gguf_to_hf_name`].
pub fn hf_to_gguf_name(hf: &str) -> Option<String> {
    let (stem, suffix) = split_suffix(hf)?;
    if let Some((g, _)) = GLOBAL_NAMES.iter().find(|(_, h)| *h == stem) {
        return Some(format!("{g}.{suffix}"));
    }
    let rest = stem.strip_prefix("model.layers.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (g, _) = LAYER_NAMES.iter().find(|(_, h)| *h == part)?;
    Some(format!("blk.{layer}.{g}.{suffix}"))
}

/// Moves row `src(r)` of a `[rows, cols]` row-major matrix to row `r`.
fn gather_rows(w: &[f32], cols: usize, src: impl Fn(usize) -> usize) -> Vec<f32> {
    let rows = w.len() / cols.max(1);
    let mut out = Vec::with_capacity(w.len());
    for r in 0..rows {
        let s = src(r);
        out.extend_from_slice(&w[s * cols..(s + 1) * cols]);
    }
    out
}

fn qk_shape_ok(w: &[f32], rows: usize, cols: usize, n_head: usize) -> bool {
    n_head > 0 && rows.is_multiple_of(2 * n_head) && rows.checked_mul(cols) == Some(w.len())
}

/// Undoes llama.cpp's Q/K row permutation of a `[rows, cols]` row-major weight (or, with
/// `cols = 1`, a bias): HF row `h·hd + c·hd/2 + j` = GGUF row `h·hd + 2j + c` for head `h`,
/// `j < hd/2`, `c ∈ {0, 1}`, `hd = rows / n_head`.
/// `None` if `rows` is not a multiple of `2·n_head` or `w.len() != rows·cols`.
///
/// # Shapes
/// `w`: `[rows, cols]` in GGUF row order -> `[rows, cols]` in HF row order.
pub fn unpermute_qk(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Option<Vec<f32>> {
    if !qk_shape_ok(w, rows, cols, n_head) {
        return None;
    }
    let hd = rows / n_head;
    let half = hd / 2;
    Some(gather_rows(w, cols, |r| {
        let (h, c, j) = (r / hd, (r % hd) / half, r % half);
        h * hd + 2 * j + c
    }))
}

/// llama.cpp's permutation (`permute` in `convert_hf_to_gguf.py`): the inverse of
/// [`unpermute_qk`], GGUF row `h·hd + 2j + c` = HF row `h·hd + c·hd/2 + j`.
///
/// # Shapes
/// `w`: `[rows, cols]` in HF row order -> `[rows, cols]` in GGUF row order.
pub fn permute_qk(w: &[f32], rows: usize, cols: usize, n_head: usize) -> Option<Vec<f32>> {
    if !qk_shape_ok(w, rows, cols, n_head) {
        return None;
    }
    let hd = rows / n_head;
    let half = hd / 2;
    Some(gather_rows(w, cols, |r| {
        let (h, j, c) = (r / hd, (r % hd) / 2, r % 2);
        h * hd + c * half + j
    }))
}

/// RoPE scaling as HF's `rope_scaling` dict.
#[derive(Clone, Debug, PartialEq)]
pub struct RopeScaling {
    /// `"linear"` or `"yarn"` (GGUF `{arch}.rope.scaling.type`).
    pub rope_type: String,
    /// `{arch}.rope.scaling.factor`.
    pub factor: f64,
    /// `{arch}.rope.scaling.original_context_length`, if present.
    pub original_max_position_embeddings: Option<usize>,
}

/// A LLaMA model's hyper-parameters from GGUF metadata, named as in HF's `config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufLlamaConfig {
    /// `general.architecture` (always `"llama"` here).
    pub architecture: String,
    /// `{arch}.vocab_size`, else the length of `tokenizer.ggml.tokens`, else `token_embd` rows.
    pub vocab_size: usize,
    /// `{arch}.embedding_length`.
    pub hidden_size: usize,
    /// `{arch}.feed_forward_length`.
    pub intermediate_size: usize,
    /// `{arch}.block_count`.
    pub num_hidden_layers: usize,
    /// `{arch}.attention.head_count`.
    pub num_attention_heads: usize,
    /// `{arch}.attention.head_count_kv` (default: `num_attention_heads`).
    pub num_key_value_heads: usize,
    /// `{arch}.attention.key_length` (default: `hidden_size / num_attention_heads`).
    pub head_dim: usize,
    /// `{arch}.attention.layer_norm_rms_epsilon`, the stored f32 widened exactly.
    pub rms_norm_eps: f64,
    /// `{arch}.rope.freq_base` (default 10000, llama.cpp's).
    pub rope_theta: f64,
    /// `{arch}.rope.scaling.*` when the type is not `"none"`.
    pub rope_scaling: Option<RopeScaling>,
    /// `{arch}.context_length`.
    pub max_position_embeddings: usize,
    /// True when the file has no `output.weight` (the head reuses `token_embd`).
    pub tie_word_embeddings: bool,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos_token_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos_token_id: Option<u32>,
    /// `tokenizer.ggml.padding_token_id`.
    pub pad_token_id: Option<u32>,
}

impl GgufLlamaConfig {
    /// The config in HF `config.json` shape (`LlamaForCausalLM`), for the model's config reader.
    pub fn to_hf_config_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_act": "silu",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": null,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "attention_bias": false,
            "mlp_bias": false,
        });
        if let Some(s) = &self.rope_scaling {
            v["rope_scaling"] = serde_json::json!({
                "rope_type": s.rope_type,
                "factor": s.factor,
            });
            if let Some(o) = s.original_max_position_embeddings {
                v["rope_scaling"]["original_max_position_embeddings"] = o.into();
            }
        }
        v
    }
}

/// The vocabulary and special tokens from `tokenizer.ggml.*` and `tokenizer.chat_template`.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct GgufTokenizer {
    /// `tokenizer.ggml.model`: `"gpt2"` (byte-level BPE) or `"llama"` (SentencePiece).
    pub model: String,
    /// `tokenizer.ggml.pre`: the pre-tokenizer name (`"smollm"`, `"llama-bpe"`...).
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`, by id.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.scores` (SentencePiece), by id.
    pub scores: Option<Vec<f32>>,
    /// `tokenizer.ggml.token_type` (1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused,
    /// 6 byte), by id.
    pub token_types: Option<Vec<i32>>,
    /// `tokenizer.ggml.merges` (BPE), `"a b"` each.
    pub merges: Vec<String>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos_token_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos_token_id: Option<u32>,
    /// `tokenizer.ggml.unknown_token_id`.
    pub unknown_token_id: Option<u32>,
    /// `tokenizer.ggml.padding_token_id`.
    pub padding_token_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`.
    pub add_bos_token: Option<bool>,
    /// `tokenizer.ggml.add_eos_token`.
    pub add_eos_token: Option<bool>,
    /// `tokenizer.ggml.add_space_prefix`.
    pub add_space_prefix: Option<bool>,
    /// `tokenizer.chat_template` (Jinja).
    pub chat_template: Option<String>,
}

impl GgufFile {
    /// A required non-negative integer.
    fn meta_usize(&self, key: &str) -> Result<usize, IoError> {
        self.meta_usize_opt(key)?
            .ok_or_else(|| self.meta_err(key, "missing"))
    }

    fn meta_usize_opt(&self, key: &str) -> Result<Option<usize>, IoError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| {
                    self.meta_err(key, format!("expected an unsigned integer, got {v:?}"))
                }),
        }
    }

    fn meta_f64_opt(&self, key: &str) -> Result<Option<f64>, IoError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.meta_err(key, format!("expected a number, got {v:?}"))),
        }
    }

    fn meta_u32_opt(&self, key: &str) -> Result<Option<u32>, IoError> {
        self.meta_usize_opt(key)?
            .map(|v| u32::try_from(v).map_err(|_| self.meta_err(key, format!("{v} exceeds u32"))))
            .transpose()
    }

    fn meta_bool_opt(&self, key: &str) -> Result<Option<bool>, IoError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.meta_err(key, format!("expected a bool, got {v:?}"))),
        }
    }

    fn meta_str_opt(&self, key: &str) -> Result<Option<&str>, IoError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.meta_err(key, format!("expected a string, got {v:?}"))),
        }
    }

    fn meta_array_opt(&self, key: &str) -> Result<Option<&[GgufValue]>, IoError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_array()
                .map(Some)
                .ok_or_else(|| self.meta_err(key, "expected an array")),
        }
    }

    /// The architecture, checked to be one this module reads (`llama`).
    fn llama_arch(&self) -> Result<&str, IoError> {
        let arch = self.architecture()?;
        if arch != "llama" {
            return Err(self.meta_err(
                "general.architecture",
                format!("unsupported architecture {arch:?} (wgtune reads \"llama\" GGUF files)"),
            ));
        }
        Ok(arch)
    }

    /// The model's hyper-parameters from `{arch}.*` and `tokenizer.ggml.*` metadata.
    /// Errors name the missing or ill-typed key, or an unsupported architecture.
    pub fn llama_config(&self) -> Result<GgufLlamaConfig, IoError> {
        let arch = self.llama_arch()?;
        let key = |k: &str| format!("{arch}.{k}");
        let hidden_size = self.meta_usize(&key("embedding_length"))?;
        let heads = self.meta_usize(&key("attention.head_count"))?;
        let kv_heads = self
            .meta_usize_opt(&key("attention.head_count_kv"))?
            .unwrap_or(heads);
        if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(self.meta_err(
                &key("attention.head_count_kv"),
                format!("{kv_heads} key/value heads do not divide {heads} heads"),
            ));
        }
        let head_dim = match self.meta_usize_opt(&key("attention.key_length"))? {
            Some(d) => d,
            None if hidden_size.is_multiple_of(heads) => hidden_size / heads,
            None => {
                return Err(self.meta_err(
                    &key("attention.head_count"),
                    format!("{heads} heads do not divide the hidden size {hidden_size}"),
                ));
            }
        };
        let vocab_size = match self.meta_usize_opt(&key("vocab_size"))? {
            Some(v) => v,
            None => match self.meta_array_opt("tokenizer.ggml.tokens")? {
                Some(t) => t.len(),
                None => self
                    .tensor("token_embd.weight")
                    .and_then(|t| t.dims.first().copied())
                    .ok_or_else(|| self.meta_err(&key("vocab_size"), "missing"))?,
            },
        };
        let rms_key = key("attention.layer_norm_rms_epsilon");
        let rms_norm_eps = self
            .meta_f64_opt(&rms_key)?
            .ok_or_else(|| self.meta_err(&rms_key, "missing"))?;
        let scaling_type = self.meta_str_opt(&key("rope.scaling.type"))?;
        let rope_scaling = match scaling_type {
            None | Some("none") => None,
            Some(t) => Some(RopeScaling {
                rope_type: t.to_string(),
                factor: self
                    .meta_f64_opt(&key("rope.scaling.factor"))?
                    .ok_or_else(|| self.meta_err(&key("rope.scaling.factor"), "missing"))?,
                original_max_position_embeddings: self
                    .meta_usize_opt(&key("rope.scaling.original_context_length"))?,
            }),
        };
        Ok(GgufLlamaConfig {
            architecture: arch.to_string(),
            vocab_size,
            hidden_size,
            intermediate_size: self.meta_usize(&key("feed_forward_length"))?,
            num_hidden_layers: self.meta_usize(&key("block_count"))?,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            rms_norm_eps,
            rope_theta: self
                .meta_f64_opt(&key("rope.freq_base"))?
                .unwrap_or(10000.0),
            rope_scaling,
            max_position_embeddings: self.meta_usize(&key("context_length"))?,
            tie_word_embeddings: self.tensor("output.weight").is_none(),
            bos_token_id: self.meta_u32_opt("tokenizer.ggml.bos_token_id")?,
            eos_token_id: self.meta_u32_opt("tokenizer.ggml.eos_token_id")?,
            pad_token_id: self.meta_u32_opt("tokenizer.ggml.padding_token_id")?,
        })
    }

    /// The tokenizer metadata. `tokenizer.ggml.model` and `tokenizer.ggml.tokens` are required.
    pub fn tokenizer(&self) -> Result<GgufTokenizer, IoError> {
        let strings = |key: &str| -> Result<Option<Vec<String>>, IoError> {
            self.meta_array_opt(key)?
                .map(|a| {
                    a.iter()
                        .enumerate()
                        .map(|(i, v)| {
                            v.as_str().map(str::to_string).ok_or_else(|| {
                                self.meta_err(key, format!("element {i} is not a string"))
                            })
                        })
                        .collect()
                })
                .transpose()
        };
        let numbers = |key: &str| -> Result<Option<Vec<f64>>, IoError> {
            self.meta_array_opt(key)?
                .map(|a| {
                    a.iter()
                        .enumerate()
                        .map(|(i, v)| {
                            v.as_f64().ok_or_else(|| {
                                self.meta_err(key, format!("element {i} is not a number"))
                            })
                        })
                        .collect()
                })
                .transpose()
        };
        let model_key = "tokenizer.ggml.model";
        let tokens_key = "tokenizer.ggml.tokens";
        Ok(GgufTokenizer {
            model: self
                .meta_str_opt(model_key)?
                .ok_or_else(|| self.meta_err(model_key, "missing"))?
                .to_string(),
            pre: self.meta_str_opt("tokenizer.ggml.pre")?.map(str::to_string),
            tokens: strings(tokens_key)?.ok_or_else(|| self.meta_err(tokens_key, "missing"))?,
            scores: numbers("tokenizer.ggml.scores")?
                .map(|v| v.into_iter().map(|x| x as f32).collect()),
            token_types: numbers("tokenizer.ggml.token_type")?
                .map(|v| v.into_iter().map(|x| x as i32).collect()),
            merges: strings("tokenizer.ggml.merges")?.unwrap_or_default(),
            bos_token_id: self.meta_u32_opt("tokenizer.ggml.bos_token_id")?,
            eos_token_id: self.meta_u32_opt("tokenizer.ggml.eos_token_id")?,
            unknown_token_id: self.meta_u32_opt("tokenizer.ggml.unknown_token_id")?,
            padding_token_id: self.meta_u32_opt("tokenizer.ggml.padding_token_id")?,
            add_bos_token: self.meta_bool_opt("tokenizer.ggml.add_bos_token")?,
            add_eos_token: self.meta_bool_opt("tokenizer.ggml.add_eos_token")?,
            add_space_prefix: self.meta_bool_opt("tokenizer.ggml.add_space_prefix")?,
            chat_template: self.chat_template()?.map(str::to_string),
        })
    }

    /// `tokenizer.chat_template`, if the file has one.
    pub fn chat_template(&self) -> Result<Option<&str>, IoError> {
        self.meta_str_opt("tokenizer.chat_template")
    }

    /// `(hf_name, gguf_name)` for every tensor with an HF counterpart, in file order.
    pub fn hf_tensor_names(&self) -> Vec<(String, String)> {
        self.tensors()
            .iter()
            .filter_map(|t| gguf_to_hf_name(&t.name).map(|hf| (hf, t.name.clone())))
            .collect()
    }

    /// One tensor by HF name, decoded to `f32` in HF layout: Q/K rows un-permuted for `llama`
    /// (with the heads from [`GgufFile::llama_config`]). A tied model has no `lm_head.weight`
    /// (see [`GgufLlamaConfig::tie_word_embeddings`]), as in an HF checkpoint.
    ///
    /// # Shapes
    /// returns `(dims, values)`: `dims` slowest first (`[out, in]` for a Linear weight), `values`
    /// row-major over `dims`.
    pub fn hf_tensor_f32(&self, hf_name: &str) -> Result<(Vec<usize>, Vec<f32>), IoError> {
        let gguf = hf_to_gguf_name(hf_name).ok_or_else(|| self.missing(hf_name))?;
        let info = self.tensor(&gguf).ok_or_else(|| self.missing(hf_name))?;
        let dims = info.dims.clone();
        let values = self.tensor_f32(&gguf)?;
        let is_q = hf_name.contains(".self_attn.q_proj.");
        if !is_q && !hf_name.contains(".self_attn.k_proj.") {
            return Ok((dims, values));
        }
        let cfg = self.llama_config()?;
        let n_head = if is_q {
            cfg.num_attention_heads
        } else {
            cfg.num_key_value_heads
        };
        let rows = dims.first().copied().unwrap_or(1);
        let cols = dims.iter().skip(1).product();
        let values = match unpermute_qk(&values, rows, cols, n_head) {
            Some(v) if rows == n_head * cfg.head_dim => v,
            _ => {
                return Err(IoError::Shape {
                    path: self.path().to_path_buf(),
                    name: gguf,
                    expected: [&[n_head * cfg.head_dim], dims.get(1..).unwrap_or(&[])].concat(),
                    got: dims,
                });
            }
        };
        Ok((dims, values))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for (g, h) in [
            ("token_embd.weight", "model.embed_tokens.weight"),
            ("output_norm.weight", "model.norm.weight"),
            ("output.weight", "lm_head.weight"),
            (
                "blk.0.attn_q.weight",
                "model.layers.0.self_attn.q_proj.weight",
            ),
            (
                "blk.29.attn_output.weight",
                "model.layers.29.self_attn.o_proj.weight",
            ),
            (
                "blk.7.ffn_down.weight",
                "model.layers.7.mlp.down_proj.weight",
            ),
            (
                "blk.7.attn_norm.weight",
                "model.layers.7.input_layernorm.weight",
            ),
            (
                "blk.7.ffn_norm.weight",
                "model.layers.7.post_attention_layernorm.weight",
            ),
            ("blk.1.attn_k.bias", "model.layers.1.self_attn.k_proj.bias"),
        ] {
            assert_eq!(gguf_to_hf_name(g).as_deref(), Some(h));
            assert_eq!(hf_to_gguf_name(h).as_deref(), Some(g));
        }
        assert_eq!(gguf_to_hf_name("rope_freqs.weight"), None);
        assert_eq!(gguf_to_hf_name("blk.x.attn_q.weight"), None);
    }

    #[test]
    fn unpermute_inverts_permute() {
        // 2 heads of head_dim 4, 3 columns: HF rows 0..8 hold r*10 + col.
        let hf: Vec<f32> = (0..8)
            .flat_map(|r| (0..3).map(move |c| (r * 10 + c) as f32))
            .collect();
        let g = permute_qk(&hf, 8, 3, 2).unwrap();
        // GGUF row order inside a head: HF rows 0, 2, 1, 3 (pairs (j, j + hd/2) adjacent).
        let rows: Vec<f32> = g.chunks(3).map(|r| r[0] / 10.0).collect();
        assert_eq!(rows, vec![0., 2., 1., 3., 4., 6., 5., 7.]);
        assert_eq!(unpermute_qk(&g, 8, 3, 2).unwrap(), hf);
        assert_eq!(unpermute_qk(&g, 8, 3, 3), None);
    }
}
