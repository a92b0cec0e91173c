//! The built-in example model that `wgtune quantize` runs on when given no paths: a small
//! random LLaMA in Hugging Face layout (config.json + model.safetensors), written to disk so
//! the real loading and quantizing code runs on it.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};

use crate::io::{OwnedTensor, write_safetensors};

/// Hidden size, MLP width, layers, heads, kv heads, vocabulary of the example model.
const HIDDEN: usize = 256;
const INTERMEDIATE: usize = 688;
const LAYERS: usize = 2;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const VOCAB: usize = 1000;

/// Normal-ish values (sum of uniforms) with standard deviation `std`, from a fixed seed.
fn weights(n: usize, std: f32, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut uniform = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    // Sum of 4 uniforms on [-0.5, 0.5) has variance 4/12.
    let k = std / (4.0f32 / 12.0).sqrt();
    (0..n)
        .map(|_| (uniform() + uniform() + uniform() + uniform()) * k)
        .collect()
}

/// Writes the example model directory at `dir` (created if missing).
pub fn write_example_model(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let head_dim = HIDDEN / HEADS;
    let mut tensors = BTreeMap::new();
    let mut seed = 1;
    let mut add = |name: String, shape: Vec<usize>, std: f32, mean: f32| {
        seed += 1;
        let n = shape.iter().product();
        let values: Vec<f32> = weights(n, std, seed)
            .into_iter()
            .map(|v| v + mean)
            .collect();
        tensors.insert(name, OwnedTensor::f32(shape, &values));
    };
    add(
        "model.embed_tokens.weight".into(),
        vec![VOCAB, HIDDEN],
        0.02,
        0.0,
    );
    for i in 0..LAYERS {
        let p = format!("model.layers.{i}");
        for (proj, rows) in [
            ("q_proj", HEADS * head_dim),
            ("k_proj", KV_HEADS * head_dim),
            ("v_proj", KV_HEADS * head_dim),
            ("o_proj", HIDDEN),
        ] {
            let cols = if proj == "o_proj" {
                HEADS * head_dim
            } else {
                HIDDEN
            };
            add(
                format!("{p}.self_attn.{proj}.weight"),
                vec![rows, cols],
                0.02,
                0.0,
            );
        }
        add(
            format!("{p}.mlp.gate_proj.weight"),
            vec![INTERMEDIATE, HIDDEN],
            0.02,
            0.0,
        );
        add(
            format!("{p}.mlp.up_proj.weight"),
            vec![INTERMEDIATE, HIDDEN],
            0.02,
            0.0,
        );
        add(
            format!("{p}.mlp.down_proj.weight"),
            vec![HIDDEN, INTERMEDIATE],
            0.02,
            0.0,
        );
        add(
            format!("{p}.input_layernorm.weight"),
            vec![HIDDEN],
            0.1,
            1.0,
        );
        add(
            format!("{p}.post_attention_layernorm.weight"),
            vec![HIDDEN],
            0.1,
            1.0,
        );
    }
    add("model.norm.weight".into(), vec![HIDDEN], 0.1, 1.0);
    add("lm_head.weight".into(), vec![VOCAB, HIDDEN], 0.02, 0.0);
    write_safetensors(&tensors, &dir.join("model.safetensors"))?;

    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": head_dim,
        "vocab_size": VOCAB,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": false,
        "torch_dtype": "float32",
    });
    let text = serde_json::to_string_pretty(&config)? + "\n";
    let path = dir.join("config.json");
    std::fs::write(&path, text).with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(())
}
