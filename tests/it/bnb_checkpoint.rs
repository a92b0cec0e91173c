//! The bitsandbytes 4-bit checkpoint layout, against a checkpoint saved by transformers.
//!
//! Fixture: `../shared/fixtures/tiny-llama/model-bnb-nf4` (transformers + bitsandbytes 0.50.2
//! saving `model-f32` loaded with NF4, double quant, blocksize 64) and `model-f32`.

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::SafeTensors;
use wgtune::io::bnb::{quant_state_json, read_quantized, read_quantized_from, write_entries};
use wgtune::io::{OwnedTensor, read_f32};
use wgtune::quant::{BlockStats, QuantConfig, QuantizedTensor};

const LINEARS: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

fn prefixes() -> Vec<String> {
    (0..2)
        .flat_map(|l| LINEARS.iter().map(move |m| format!("model.layers.{l}.{m}")))
        .collect()
}

/// Reading every Linear of the transformers checkpoint, and writing it back, reproduces each
/// stored tensor byte for byte (including the quant-state JSON text).
#[test]
fn read_then_write_round_trips_the_fixture() {
    let path = common::tiny_llama("model-bnb-nf4/model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    for prefix in prefixes() {
        let q = read_quantized_from(&st, &prefix, &path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(q.blocksize(), 64);
        assert!(matches!(
            q.stats(),
            BlockStats::Double {
                nested_blocksize: 256,
                ..
            }
        ));
        let mut out = BTreeMap::new();
        write_entries(&prefix, &q, safetensors::Dtype::F32, &mut out);
        assert_eq!(out.len(), 6, "{prefix}");
        for (key, tensor) in &out {
            let stored =
                OwnedTensor::from_view(&st.tensor(key).unwrap_or_else(|_| panic!("{key} missing")));
            assert_eq!(tensor, &stored, "{key}");
        }
    }
}

/// Quantizing the f32 weights gives the fixture's packed codes, nested statistics and quant-state
/// text exactly, and so do the 8-bit absmax codes and the dequantized weights.
#[test]
fn quantizing_f32_weights_matches_the_fixture() {
    let f32_bytes = std::fs::read(common::tiny_llama("model-f32/model.safetensors")).unwrap();
    let f32_st = SafeTensors::deserialize(&f32_bytes).unwrap();
    let bnb_bytes = std::fs::read(common::tiny_llama("model-bnb-nf4/model.safetensors")).unwrap();
    let bnb_st = SafeTensors::deserialize(&bnb_bytes).unwrap();
    let mut total_codes = 0usize;
    for prefix in prefixes() {
        let name = format!("{prefix}.weight");
        let view = f32_st.tensor(&name).unwrap();
        let w = read_f32(&view, Path::new("model-f32"), &name).unwrap();
        let ours = QuantizedTensor::quantize(&w, view.shape(), QuantConfig::default()).unwrap();
        let theirs = read_quantized(&bnb_st, &prefix).unwrap();
        assert_eq!(ours.shape(), theirs.shape());
        assert_eq!(ours.packed(), theirs.packed(), "{prefix}: packed");
        let state_key = format!("{name}.quant_state.bitsandbytes__nf4");
        let stored_json = bnb_st.tensor(&state_key).unwrap().data().to_vec();
        assert_eq!(
            quant_state_json(&ours, safetensors::Dtype::F32).into_bytes(),
            stored_json,
            "{prefix}"
        );
        let (
            BlockStats::Double {
                absmax_q: a,
                nested_absmax: na,
                offset: oa,
                ..
            },
            BlockStats::Double {
                absmax_q: b,
                nested_absmax: nb,
                offset: ob,
                ..
            },
        ) = (ours.stats(), theirs.stats())
        else {
            panic!("{prefix}: expected double quant");
        };
        assert_eq!((na, oa), (nb, ob), "{prefix}: nested_absmax / offset");
        let off: Vec<(usize, u8, u8)> = (0..a.len().min(b.len()))
            .filter(|&i| a[i] != b[i])
            .map(|i| (i, a[i], b[i]))
            .collect();
        assert!(
            a.len() == b.len() && off.is_empty(),
            "{prefix}: absmax codes differ at (index, ours, bnb) {off:?}"
        );
        total_codes += a.len();
        let (dq_ours, dq_theirs) = (ours.dequantize(), theirs.dequantize());
        assert_eq!(
            dq_ours.len(),
            dq_theirs.len(),
            "{prefix}: dequantized length"
        );
        let bad = dq_ours
            .iter()
            .zip(&dq_theirs)
            .filter(|(x, y)| x.to_bits() != y.to_bits())
            .count();
        assert_eq!(bad, 0, "{prefix}: dequantized values differ");
    }
    println!("absmax_u8: all {total_codes} codes byte-identical");
}

/// Missing pieces are reported with the key that is missing.
#[test]
fn missing_entries_name_the_key() {
    let bytes = std::fs::read(common::tiny_llama("model-bnb-nf4/model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let err = read_quantized(&st, "model.layers.9.self_attn.q_proj")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model.layers.9.self_attn.q_proj.weight.quant_state"),
        "{err}"
    );
}
