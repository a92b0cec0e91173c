//! bitsandbytes `quantize_4bit` / `dequantize_4bit` golden tests.
//!
//! Fixture: `../shared/fixtures/quant/` (made by bitsandbytes 0.50.2; `index.json` lists the 40
//! cases: NF4/FP4 × blocksize 64/128 × double quant on/off × 5 shapes). Packed 4-bit bytes, the
//! codebooks, the dynamic map, the double-quant `offset` / `nested_absmax` and the 8-bit absmax
//! codes (bnb's CPU lookup-table rule, `wgtune::quant::quantize_dynamic_cpu`) match exactly; f32
//! statistics and dequantized values within 1e-6 relative.

use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};
use wgtune::quant::{BlockStats, QuantConfig, QuantFormat, QuantizedTensor, dynamic_map_signed};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures/quant")
}

#[derive(serde::Deserialize)]
struct Case {
    file: String,
    quant_type: String,
    double_quant: bool,
    blocksize: usize,
    shape: Vec<usize>,
}

#[derive(serde::Deserialize)]
struct Index {
    cases: Vec<Case>,
}

fn f32s(st: &SafeTensors, name: &str) -> Vec<f32> {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(t.dtype(), Dtype::F32, "{name}");
    t.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn u8s(st: &SafeTensors, name: &str) -> Vec<u8> {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(t.dtype(), Dtype::U8, "{name}");
    t.data().to_vec()
}

/// Largest `|a-b|` and `|a-b| / max(|b|, tiny)` over two slices, asserting equal lengths.
fn max_errors(got: &[f32], want: &[f32]) -> (f64, f64) {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .fold((0.0, 0.0), |(abs, rel), (&g, &w)| {
            let d = (f64::from(g) - f64::from(w)).abs();
            (abs.max(d), rel.max(d / f64::from(w.abs()).max(1e-30)))
        })
}

fn first_mismatch(got: &[u8], want: &[u8]) -> Option<(usize, u8, u8)> {
    got.iter()
        .zip(want)
        .enumerate()
        .find(|(_, (g, w))| g != w)
        .map(|(i, (g, w))| (i, *g, *w))
}

#[test]
fn all_bitsandbytes_cases_match() {
    let index: Index =
        serde_json::from_str(&std::fs::read_to_string(fixture_dir().join("index.json")).unwrap())
            .unwrap();
    assert_eq!(index.cases.len(), 40);
    let (mut worst_deq, mut worst_stat) = ((0.0f64, 0.0f64), (0.0f64, 0.0f64));
    let (mut code_mismatches, mut codes_total) = (0usize, 0usize);
    let mut failures: Vec<String> = Vec::new();
    let mut check = |ok: bool, msg: String| {
        if !ok {
            failures.push(msg);
        }
    };
    for case in &index.cases {
        let bytes = std::fs::read(fixture_dir().join(&case.file)).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let cfg = QuantConfig {
            format: case.quant_type.parse().unwrap(),
            blocksize: case.blocksize,
            double_quant: case.double_quant,
        };
        let q = QuantizedTensor::quantize(&f32s(&st, "input"), &case.shape, cfg).unwrap();
        let f = &case.file;

        let want_packed = u8s(&st, "packed");
        check(
            q.packed().len() == want_packed.len(),
            format!("{f}: packed length"),
        );
        let bad = q
            .packed()
            .iter()
            .zip(&want_packed)
            .filter(|(a, b)| a != b)
            .count();
        let first = first_mismatch(q.packed(), &want_packed);
        check(
            bad == 0,
            format!("{f}: {bad} packed bytes differ, first (index, got, want) {first:?}"),
        );
        check(
            q.format().codebook().as_slice() == f32s(&st, "quant_map").as_slice(),
            format!("{f}: quant_map"),
        );

        match q.stats() {
            BlockStats::Plain { absmax } => {
                assert!(!case.double_quant);
                let e = max_errors(absmax, &f32s(&st, "absmax"));
                check(e.1 <= 1e-6, format!("{f}: absmax rel err {}", e.1));
                worst_stat = (worst_stat.0.max(e.0), worst_stat.1.max(e.1));
            }
            BlockStats::Double {
                absmax_q,
                nested_absmax,
                nested_map,
                offset,
                nested_blocksize,
            } => {
                assert!(case.double_quant);
                assert_eq!(*nested_blocksize, 256);
                check(
                    nested_map.as_slice() == f32s(&st, "nested_quant_map").as_slice(),
                    format!("{f}: map"),
                );
                let e_off = max_errors(&[*offset], &f32s(&st, "offset"));
                let e_nest = max_errors(nested_absmax, &f32s(&st, "nested_absmax"));
                check(
                    e_off.1 <= 1e-6 && e_nest.1 <= 1e-6,
                    format!("{f}: offset err {e_off:?}, nested_absmax err {e_nest:?}"),
                );
                worst_stat = (
                    worst_stat.0.max(e_off.0.max(e_nest.0)),
                    worst_stat.1.max(e_off.1.max(e_nest.1)),
                );
                let want_q = u8s(&st, "absmax_u8");
                check(
                    absmax_q.len() == want_q.len(),
                    format!("{f}: absmax_u8 length"),
                );
                let off: Vec<(usize, u8, u8)> = (0..want_q.len())
                    .filter(|&i| absmax_q[i] != want_q[i])
                    .map(|i| (i, absmax_q[i], want_q[i]))
                    .collect();
                check(
                    off.is_empty(),
                    format!("{f}: absmax_u8 differs at (index, got, want) {off:?}"),
                );
                code_mismatches += off.len();
                codes_total += want_q.len();
            }
        }

        // Decoding the fixture's own parts must reproduce bnb's dequantized tensor.
        let want_deq = f32s(&st, "dequantized");
        let stats = if case.double_quant {
            BlockStats::Double {
                absmax_q: u8s(&st, "absmax_u8"),
                nested_absmax: f32s(&st, "nested_absmax"),
                nested_map: f32s(&st, "nested_quant_map"),
                offset: f32s(&st, "offset")[0],
                nested_blocksize: 256,
            }
        } else {
            BlockStats::Plain {
                absmax: f32s(&st, "absmax"),
            }
        };
        let parts = QuantizedTensor::from_parts(
            cfg.format,
            case.shape.clone(),
            case.blocksize,
            want_packed,
            stats,
        )
        .unwrap_or_else(|e| panic!("{f}: {e}"));
        let e = max_errors(&parts.dequantize(), &want_deq);
        check(
            e.1 <= 1e-6,
            format!(
                "{f}: dequantize(fixture parts) max abs err {} rel err {}",
                e.0, e.1
            ),
        );
        worst_deq = (worst_deq.0.max(e.0), worst_deq.1.max(e.1));
        if case.double_quant {
            continue;
        }
        let e = max_errors(&q.dequantize(), &f32s(&st, "dequantized"));
        check(
            e.1 <= 1e-6,
            format!("{f}: dequantized max abs err {} rel err {}", e.0, e.1),
        );
        worst_deq = (worst_deq.0.max(e.0), worst_deq.1.max(e.1));
    }
    check(
        code_mismatches == 0,
        format!("{code_mismatches} of {codes_total} absmax_u8 differ"),
    );
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
    println!(
        "dequantized: max abs err {:.3e}, max rel err {:.3e}",
        worst_deq.0, worst_deq.1
    );
    println!(
        "f32 stats:   max abs err {:.3e}, max rel err {:.3e}",
        worst_stat.0, worst_stat.1
    );
    println!("absmax_u8:   {code_mismatches} of {codes_total} codes differ from bnb");
}

/// The stored `quant_map` / `nested_quant_map` are exactly our tables.
#[test]
fn tables_match_bitsandbytes() {
    for (file, format) in [
        ("nf4_dq1_bs64_33x70.safetensors", QuantFormat::Nf4),
        ("fp4_dq1_bs64_33x70.safetensors", QuantFormat::Fp4),
    ] {
        let bytes = std::fs::read(fixture_dir().join(file)).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(format.codebook()), bits(&f32s(&st, "quant_map")));
        assert_eq!(
            bits(dynamic_map_signed()),
            bits(&f32s(&st, "nested_quant_map"))
        );
    }
}
