//! What a model and a training step ask of a GPU's buffer limits, checked before anything is
//! allocated. In a browser an allocation past a WebGPU limit does not fail loudly, it reads back
//! zeros (DESIGN.md §5), so the web page refuses up front and says which limit and by how much.

use serde::Serialize;

use crate::model::LlamaConfig;

/// The limits of a device that matter here (WebGPU's names, as JSON too).
#[derive(Clone, Copy, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceLimits {
    /// Largest buffer a shader may bind as storage.
    pub max_storage_buffer_binding_size: u64,
    /// Largest buffer.
    pub max_buffer_size: u64,
    /// Workgroup memory per workgroup, bytes.
    pub max_compute_workgroup_storage_size: u32,
    /// Invocations per workgroup.
    pub max_compute_invocations_per_workgroup: u32,
}

impl DeviceLimits {
    /// The largest one buffer may be, and the limit that sets it.
    fn largest_buffer(&self) -> (u64, &'static str) {
        if self.max_storage_buffer_binding_size <= self.max_buffer_size {
            (
                self.max_storage_buffer_binding_size,
                "maxStorageBufferBindingSize",
            )
        } else {
            (self.max_buffer_size, "maxBufferSize")
        }
    }
}

/// One buffer a model or a step needs.
struct Need {
    what: String,
    bytes: u64,
    hint: &'static str,
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// The first need over the limit, as a sentence.
fn check(needs: &[Need], limits: &DeviceLimits) -> Result<(), String> {
    let (limit, name) = limits.largest_buffer();
    match needs.iter().find(|n| n.bytes > limit) {
        None => Ok(()),
        Some(n) => Err(format!(
            "{} needs {} in one buffer, but this device's {name} is {} ({} over). {}",
            n.what,
            mib(n.bytes),
            mib(limit),
            mib(n.bytes - limit),
            n.hint
        )),
    }
}

/// The model's largest resident buffers: the f32 embedding table and LM head, and its biggest
/// projection (packed 4-bit when quantized, f32 otherwise).
pub fn check_model(
    config: &LlamaConfig,
    quantized: bool,
    limits: &DeviceLimits,
) -> Result<(), String> {
    let (v, h, i) = (
        config.vocab_size as u64,
        config.hidden_size as u64,
        config.intermediate_size as u64,
    );
    let proj = if quantized { h * i / 2 } else { h * i * 4 };
    let needs = [
        Need {
            what: format!("The embedding table ({v} tokens x {h}, f32)"),
            bytes: v * h * 4,
            hint: "Pick a model with a smaller vocabulary or hidden size.",
        },
        Need {
            what: format!(
                "The MLP projection ({i} x {h}, {})",
                if quantized { "4-bit" } else { "f32" }
            ),
            bytes: proj,
            hint: "Load it quantized (NF4) or pick a smaller model.",
        },
    ];
    check(&needs, limits)
}

/// A training step's largest activations, for `batch` rows of `seq` tokens: a chunk of the
/// logits (the loss runs the LM head a chunk of positions at a time,
/// [`crate::model::head_chunk_rows`]; their softmax and gradient are the same size), a chunk of
/// the attention scores (attention runs a chunk of query rows at a time,
/// [`crate::model::attention::attention_chunk_rows`]), the `[s, s]` causal mask all layers share
/// and the MLP's `[b, s, intermediate]` activations, which nothing splits.
pub fn check_step(
    config: &LlamaConfig,
    batch: usize,
    seq: usize,
    limits: &DeviceLimits,
) -> Result<(), String> {
    use crate::model::attention::{ATTENTION_CHUNK_BYTES, attention_chunk_rows};
    let (b, s) = (batch as u64, seq as u64);
    let vocab = config.vocab_size as u64;
    let heads = config.num_attention_heads;
    let rows = (b * s).min(crate::model::head_chunk_rows(config.vocab_size) as u64);
    let query_rows = attention_chunk_rows([batch, heads, seq, seq], ATTENTION_CHUNK_BYTES) as u64;
    let inter = config.intermediate_size as u64;
    let needs = [
        Need {
            what: format!("A step's logits ({rows} positions x {vocab} vocabulary, f32)"),
            bytes: rows * vocab * 4,
            hint: "Pick a model with a smaller vocabulary.",
        },
        Need {
            what: format!(
                "A chunk of a step's attention scores ({b} x {heads} heads x {query_rows} x {s}, f32)"
            ),
            bytes: b * heads as u64 * query_rows * s * 4,
            hint: "Lower the batch size or the max length.",
        },
        Need {
            // Booleans are u32 on burn's wgpu backend (measured: a 4096² mask takes 64 MiB).
            what: format!("The causal mask ({s} x {s}, 4-byte booleans)"),
            bytes: s * s * 4,
            hint: "Lower the max length.",
        },
        Need {
            what: format!("A step's MLP activations ({b} x {s} x {inter}, f32)"),
            bytes: b * s * inter * 4,
            hint: "Lower the batch size or the max length.",
        },
    ];
    check(&needs, limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm2() -> LlamaConfig {
        LlamaConfig::from_json(
            r#"{"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                "hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9,
                "num_hidden_layers": 30, "num_key_value_heads": 3, "vocab_size": 49152,
                "rms_norm_eps": 1e-5, "max_position_embeddings": 8192}"#,
            std::path::Path::new("config.json"),
        )
        .unwrap()
    }

    /// WebGPU's default limits: 128 MiB bindings, 256 MiB buffers.
    const DEFAULT: DeviceLimits = DeviceLimits {
        max_storage_buffer_binding_size: 128 << 20,
        max_buffer_size: 256 << 20,
        max_compute_workgroup_storage_size: 16384,
        max_compute_invocations_per_workgroup: 256,
    };

    #[test]
    fn smollm2_fits_the_default_limits_at_small_steps() {
        let c = smollm2();
        check_model(&c, true, &DEFAULT).unwrap();
        check_step(&c, 1, 256, &DEFAULT).unwrap();
        // 4 x 512 x 49152 x 4 = 384 MiB of logits in one piece; the loss holds 32 MiB of them.
        check_step(&c, 4, 512, &DEFAULT).unwrap();
        // 4 x 9 x 2048 x 2048 x 4 = 576 MiB of attention scores in one piece; 18 chunks of
        // 114 rows, 32.1 MiB each.
        use crate::model::attention::{ATTENTION_CHUNK_BYTES, attention_chunk_rows};
        assert_eq!(
            attention_chunk_rows([4, 9, 2048, 2048], ATTENTION_CHUNK_BYTES),
            114
        );
        check_step(&c, 4, 2048, &DEFAULT).unwrap();
        // 8 x 4096 x 1536 x 4 = 192 MiB of MLP activations: over by 64 MiB.
        let err = check_step(&c, 8, 4096, &DEFAULT).unwrap_err();
        assert!(
            err.starts_with("A step's MLP activations (8 x 4096 x 1536, f32) needs 192.0 MiB"),
            "{err}"
        );
        assert!(
            err.contains("maxStorageBufferBindingSize is 128.0 MiB"),
            "{err}"
        );
        assert!(err.contains("64.0 MiB over"), "{err}");
        assert!(err.contains("Lower the batch size"), "{err}");
        // 6144² x 4 bytes = 144 MiB of mask: over by 16 MiB.
        let err = check_step(&c, 1, 6144, &DEFAULT).unwrap_err();
        assert!(
            err.starts_with("The causal mask (6144 x 6144, 4-byte booleans) needs 144.0 MiB"),
            "{err}"
        );
        assert!(err.contains("16.0 MiB over"), "{err}");
        // One query row of scores past the limit: 1 x 9 heads x 4M keys x 4 bytes = 144 MiB.
        let err = check_step(&c, 1, 1 << 22, &DEFAULT).unwrap_err();
        assert!(
            err.starts_with(
                "A chunk of a step's attention scores (1 x 9 heads x 1 x 4194304, f32)"
            ),
            "{err}"
        );
    }

    #[test]
    fn a_tiny_binding_limit_refuses_the_embedding() {
        let limits = DeviceLimits {
            max_storage_buffer_binding_size: 64 << 20,
            ..DEFAULT
        };
        let err = check_model(&smollm2(), true, &limits).unwrap_err();
        assert!(
            err.starts_with("The embedding table (49152 tokens x 576, f32) needs 108.0 MiB"),
            "{err}"
        );
    }
}
