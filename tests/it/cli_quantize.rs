//! `wgtune quantize` end to end, running the built binary.
//!
//! Fixture: `../shared/fixtures/tiny-llama/model-f32` (input) and `model-bnb-nf4` (what
//! transformers + bitsandbytes 0.50.2 wrote for the same model).

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use safetensors::SafeTensors;

fn quantize(input: &Path, output: &Path, extra: &[&str]) -> Output {
    let mut args: Vec<&std::ffi::OsStr> =
        vec!["quantize".as_ref(), input.as_os_str(), output.as_os_str()];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    common::wgtune(&args)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Nothing but the listed names is left in `dir` (no temporaries).
fn assert_only(dir: &Path, names: &[&str]) {
    let mut got: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    got.sort();
    let mut want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn model_dir_matches_transformers_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("nf4");
    let out = quantize(&common::tiny_llama("model-f32"), &out_dir, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_only(tmp.path(), &["nf4"]);
    assert_only(
        &out_dir,
        &["config.json", "generation_config.json", "model.safetensors"],
    );

    let want_dir = common::tiny_llama("model-bnb-nf4");
    for file in ["config.json", "generation_config.json"] {
        assert_eq!(
            std::fs::read(out_dir.join(file)).unwrap(),
            std::fs::read(want_dir.join(file)).unwrap(),
            "{file}"
        );
    }
    let ours = std::fs::read(out_dir.join("model.safetensors")).unwrap();
    let theirs = std::fs::read(want_dir.join("model.safetensors")).unwrap();
    let (a, b) = (
        SafeTensors::deserialize(&ours).unwrap(),
        SafeTensors::deserialize(&theirs).unwrap(),
    );
    let mut ka: Vec<String> = a.names().into_iter().map(str::to_string).collect();
    let mut kb: Vec<String> = b.names().into_iter().map(str::to_string).collect();
    ka.sort();
    kb.sort();
    assert_eq!(ka, kb, "key sets");
    let mut differing = Vec::new();
    for key in &kb {
        let (x, y) = (a.tensor(key).unwrap(), b.tensor(key).unwrap());
        assert_eq!((x.dtype(), x.shape()), (y.dtype(), y.shape()), "{key}");
        if x.data() != y.data() {
            differing.push(key.clone());
        }
    }
    assert!(differing.is_empty(), "tensors differ: {differing:?}");
    println!("all {} tensors byte-identical", kb.len());
}

#[test]
fn single_file_with_options() {
    let tmp = tempfile::tempdir().unwrap();
    let out_file = tmp.path().join("fp4.safetensors");
    let input = common::tiny_llama("model-f32/model.safetensors");
    let out = quantize(
        &input,
        &out_file,
        &[
            "--quant",
            "fp4",
            "--double-quant",
            "false",
            "--blocksize",
            "128",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_only(tmp.path(), &["fp4.safetensors"]);
    let bytes = std::fs::read(&out_file).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let q = wgtune::io::bnb::read_quantized(&st, "model.layers.1.mlp.down_proj").unwrap();
    assert_eq!(
        (q.format(), q.blocksize(), q.shape()),
        (wgtune::quant::QuantFormat::Fp4, 128, &[128, 384][..])
    );
    let absmax = st
        .tensor("model.layers.1.mlp.down_proj.weight.absmax")
        .unwrap();
    assert_eq!(
        (absmax.dtype(), absmax.shape()),
        (safetensors::Dtype::F32, &[384][..])
    );
    assert!(
        st.tensor("model.layers.1.mlp.down_proj.weight.nested_absmax")
            .is_err()
    );
    let state = st
        .tensor("model.layers.1.mlp.down_proj.weight.quant_state.bitsandbytes__fp4")
        .unwrap();
    assert_eq!(
        state.data(),
        br#"{"quant_type": "fp4", "blocksize": 128, "dtype": "float32", "shape": [128, 384]}"#
    );
    // Untouched tensors are copied as they were.
    for key in [
        "lm_head.weight",
        "model.embed_tokens.weight",
        "model.norm.weight",
    ] {
        assert_eq!(
            st.tensor(key).unwrap().dtype(),
            safetensors::Dtype::F32,
            "{key}"
        );
    }
}

/// Each bad input gives exit status != 0, one `error:` line naming the file, and no output.
#[test]
fn bad_inputs_fail_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let garbage = dir.join("garbage.safetensors");
    std::fs::write(&garbage, b"this is not a safetensors file").unwrap();
    let truncated = dir.join("truncated.safetensors");
    let full = std::fs::read(common::tiny_llama("model-f32/model.safetensors")).unwrap();
    std::fs::write(&truncated, &full[..full.len() / 2]).unwrap();
    let ints = dir.join("ints.safetensors");
    let t = wgtune::io::OwnedTensor {
        dtype: safetensors::Dtype::I32,
        shape: vec![2, 2],
        data: vec![0; 16],
    };
    let map = [("x.weight".to_string(), t)].into_iter().collect();
    wgtune::io::write_safetensors(&map, &ints).unwrap();
    let good = common::tiny_llama("model-f32/model.safetensors");
    let missing = dir.join("missing.safetensors");
    let empty_dir = dir.join("empty_model");
    std::fs::create_dir(&empty_dir).unwrap();

    let mut cases: Vec<(PathBuf, PathBuf, Vec<&str>, &str)> = vec![
        (
            missing.clone(),
            dir.join("o1.safetensors"),
            vec![],
            "missing.safetensors",
        ),
        (
            garbage.clone(),
            dir.join("o2.safetensors"),
            vec![],
            "not a valid safetensors",
        ),
        (
            truncated.clone(),
            dir.join("o3.safetensors"),
            vec![],
            "truncated.safetensors",
        ),
        (
            good.clone(),
            dir.join("o4.safetensors"),
            vec!["--blocksize", "48"],
            "blocksize 48",
        ),
        (
            good.clone(),
            dir.join("o5.safetensors"),
            vec!["--quant", "int4"],
            "int4",
        ),
        (garbage.clone(), garbage.clone(), vec![], "same path"),
        (empty_dir.clone(), dir.join("o6"), vec![], "config.json"),
    ];
    // A directory that exists but takes no files: refused before any work, naming the output.
    if cfg!(target_os = "linux") {
        let here = "o7.safetensors: cannot write the output here";
        cases.push((good.clone(), "/proc/o7.safetensors".into(), vec![], here));
    }
    for (input, output, extra, needle) in &cases {
        let out = quantize(input, output, extra);
        let err = stderr(&out);
        assert!(!out.status.success(), "{input:?} should fail");
        assert!(
            err.contains(needle),
            "{input:?}: stderr {err:?} lacks {needle:?}"
        );
        assert!(!err.contains("panicked"), "{err}");
        if output != input {
            assert!(!output.exists(), "{output:?} left behind");
        }
    }
    // An unsupported dtype on a tensor we would quantize: ints are copied, not quantized, so this
    // succeeds; a float16 tensor is accepted too (covered by unit tests). Nothing else is left over.
    let out = quantize(&ints, &dir.join("o7.safetensors"), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_only(
        dir,
        &[
            "garbage.safetensors",
            "truncated.safetensors",
            "ints.safetensors",
            "empty_model",
            "o7.safetensors",
        ],
    );
}

#[test]
fn no_arguments_runs_the_built_in_example() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wgtune"))
        .arg("quantize")
        .env("TMPDIR", tmp.path())
        .output()
        .expect("run wgtune");
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("quantized 14 linear weights to nf4"),
        "{stdout}"
    );
    // NF4 on Gaussian blocks of 64 reconstructs to roughly 9% relative RMS error.
    let rms: f64 = stdout
        .split("relative RMS error ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .expect("an RMS error in the summary");
    assert!((0.05..0.15).contains(&rms), "relative RMS error {rms}");
    let dir = tmp.path().join("wgtune-quantize-example/model-nf4");
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    assert!(config.contains("\"quantization_config\""));
    assert!(dir.join("model.safetensors").exists());
}
