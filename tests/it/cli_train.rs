//! `wgtune train` end to end, running the built binary.
//!
//! * The PEFT fixture (`../shared/fixtures/tiny-llama`, README.json): 10 AdamW steps from
//!   `adapter-init` on the NF4 model, WGSL path on the wgpu device (llvmpipe in CI): every
//!   step's loss in `metrics.jsonl` within 1e-3 of PEFT's `adamw_losses`, the saved adapter
//!   within 1e-3 (relative to each tensor's norm) of `adapter-after-10-steps`.
//! * Ctrl-C mid-run writes a checkpoint and exits 130; `--resume` then finishes with the same
//!   adapter, byte for byte, and the same per-step losses as a run never interrupted (dropout,
//!   accumulation and length-grouped batches included).
//! * `--config` and flags, `train_config.toml`, `loss.png`, and bad input.
//! * SmolLM2 on its chat data for two steps, and the adapter used by `generate --adapter`.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use safetensors::SafeTensors;

fn ok(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "wgtune failed: {err}");
    err
}

fn f32_tensors(path: &Path) -> BTreeMap<String, Vec<f32>> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).expect("safetensors");
    st.tensors()
        .into_iter()
        .map(|(k, v)| {
            let vals = v
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            (k, vals)
        })
        .collect()
}

fn metrics(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .expect("metrics.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

fn step_losses(out: &Path) -> Vec<f64> {
    metrics(out)
        .iter()
        .filter(|m| m.get("loss").is_some())
        .map(|m| m["loss"].as_f64().unwrap())
        .collect()
}

/// The fixture batch as pre-tokenized JSONL rows.
fn fixture_rows(dir: &Path) -> PathBuf {
    let bytes = std::fs::read(common::tiny_llama("reference.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let ints = |k: &str| -> Vec<i64> {
        st.tensor(k)
            .unwrap()
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let (ids, labels) = (ints("input_ids"), ints("labels"));
    let s = st.tensor("input_ids").unwrap().shape()[1];
    let path = dir.join("rows.jsonl");
    let text: String = ids
        .chunks(s)
        .zip(labels.chunks(s))
        .map(|(i, l)| serde_json::json!({"input_ids": i, "labels": l}).to_string() + "\n")
        .collect();
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn matches_peft_adamw_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let rows = fixture_rows(tmp.path());
    let out = tmp.path().join("run");
    let model = common::tiny_llama("model-bnb-nf4");
    let init = common::tiny_llama("adapter-init");
    let err = ok(&common::wgtune(&[
        "train",
        "--model",
        model.to_str().unwrap(),
        "--data",
        rows.to_str().unwrap(),
        "--format",
        "tokenized",
        "--init-adapter",
        init.to_str().unwrap(),
        "--lr",
        "1e-3",
        "--schedule",
        "constant",
        "--warmup-steps",
        "0",
        "--weight-decay",
        "0",
        "--max-grad-norm",
        "0",
        "--batch-size",
        "2",
        "--steps",
        "10",
        "--device",
        "wgpu",
        "--out",
        out.to_str().unwrap(),
    ]));
    assert!(err.contains("wgpu"), "{err}");
    let reference = f32_tensors(&common::tiny_llama("reference.safetensors"));
    let want = &reference["adamw_losses"];
    let got = step_losses(&out);
    assert_eq!(got.len(), 10, "one metrics line per step");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - f64::from(*w)).abs() <= 1e-3,
            "step {}: loss {g} vs PEFT {w}",
            i + 1
        );
    }
    let after = f32_tensors(&common::tiny_llama(
        "adapter-after-10-steps/adapter_model.safetensors",
    ));
    let mine = f32_tensors(&out.join("adapter_model.safetensors"));
    assert_eq!(
        mine.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>()
    );
    for (k, w) in &after {
        let g = &mine[k];
        let diff: f32 = g
            .iter()
            .zip(w)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f32>()
            .sqrt();
        let norm: f32 = w.iter().map(|b| b * b).sum::<f32>().sqrt();
        assert!(diff / norm <= 1e-3, "{k}: relative error {}", diff / norm);
    }
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(cfg["peft_type"], "LORA");
    assert_eq!(cfg["r"], 8);
    assert_eq!(cfg["lora_alpha"], 16.0);
    // Every step line has the documented fields; the plot and the settings are there.
    for m in metrics(&out).iter().filter(|m| m.get("loss").is_some()) {
        for key in [
            "step",
            "loss",
            "lr",
            "grad_norm",
            "tokens",
            "tokens_per_s",
            "elapsed_s",
            "mem_bytes",
        ] {
            assert!(m.get(key).is_some(), "metrics line without {key}: {m}");
        }
    }
    let png = std::fs::read(out.join("loss.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let toml = std::fs::read_to_string(out.join("train_config.toml")).unwrap();
    assert!(
        toml.contains("steps = 10") && toml.contains("lr = 0.001"),
        "{toml}"
    );
    assert!(
        out.join("checkpoints/step-000010/optimizer.safetensors")
            .is_file()
    );
}

/// Pre-tokenized rows of several lengths for the tiny model (vocab 256).
fn random_rows(dir: &Path, n: usize) -> PathBuf {
    let mut s = 0x1234_5678_9abc_def1u64;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let text: String = (0..n)
        .map(|_| {
            let len = 6 + (next() % 20) as usize;
            let ids: Vec<i64> = (0..len).map(|_| (next() % 256) as i64).collect();
            let labels: Vec<i64> = ids
                .iter()
                .enumerate()
                .map(|(i, &t)| if i < 3 { -100 } else { t })
                .collect();
            serde_json::json!({"input_ids": ids, "labels": labels}).to_string() + "\n"
        })
        .collect();
    let path = dir.join("random.jsonl");
    std::fs::write(&path, text).unwrap();
    path
}

fn run_args<'a>(data: &'a str, out: &'a str, steps: &'a str) -> Vec<&'a str> {
    let model = Box::leak(
        common::tiny_llama("model-f32")
            .to_str()
            .unwrap()
            .to_string()
            .into_boxed_str(),
    );
    vec![
        "train",
        "--model",
        model,
        "--data",
        data,
        "--out",
        out,
        "--steps",
        steps,
        "--batch-size",
        "3",
        "--grad-accum",
        "2",
        "--lora-r",
        "4",
        "--lora-dropout",
        "0.1",
        "--lr",
        "5e-3",
        "--max-grad-norm",
        "0.5",
        "--save-every",
        "5",
        "--eval-split",
        "0.2",
        "--eval-every",
        "10",
        "--device",
        "cpu",
        "--seed",
        "7",
    ]
}

#[test]
fn ctrl_c_checkpoints_and_resume_is_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let data = random_rows(tmp.path(), 30);
    let data = data.to_str().unwrap();
    let full = tmp.path().join("full");
    ok(&common::wgtune(&run_args(
        data,
        full.to_str().unwrap(),
        "40",
    )));

    // The same run, interrupted with SIGINT after a few steps.
    let part = tmp.path().join("part");
    let mut child = Command::new(env!("CARGO_BIN_EXE_wgtune"))
        .args(run_args(data, part.to_str().unwrap(), "40"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wgtune");
    let start = Instant::now();
    loop {
        let lines = std::fs::read_to_string(part.join("metrics.jsonl"))
            .map(|t| t.lines().count())
            .unwrap_or(0);
        if lines >= 3 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(130), "interrupted run: {err}");
    assert!(err.contains("--resume"), "{err}");
    let stopped_at = step_losses(&part).len();
    assert!(stopped_at < 40, "stopped at {stopped_at}");
    assert!(
        part.join(format!(
            "checkpoints/step-{stopped_at:06}/adapter_model.safetensors"
        ))
        .is_file(),
        "no checkpoint at step {stopped_at}"
    );
    assert!(!part.join("adapter_model.safetensors").exists());

    let mut args = run_args(data, part.to_str().unwrap(), "40");
    args.push("--resume");
    let err = ok(&common::wgtune(&args));
    assert!(err.contains("resumed from"), "{err}");
    assert_eq!(step_losses(&part), step_losses(&full), "per-step losses");
    let a = std::fs::read(full.join("adapter_model.safetensors")).unwrap();
    let b = std::fs::read(part.join("adapter_model.safetensors")).unwrap();
    assert!(a == b, "resumed adapter differs from the uninterrupted one");
    // Eval lines at 0 (before training), 10, 20, 30, 40; only the last 3 checkpoints kept.
    let evals = metrics(&full)
        .iter()
        .filter(|m| m.get("eval_loss").is_some())
        .count();
    assert_eq!(evals, 5);
    let kept = std::fs::read_dir(full.join("checkpoints")).unwrap().count();
    assert_eq!(kept, 3);
}

#[test]
fn config_file_then_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let data = random_rows(tmp.path(), 6);
    let out = tmp.path().join("out");
    let cfg = tmp.path().join("run.toml");
    std::fs::write(
        &cfg,
        format!(
            "model = {:?}\ndata = {:?}\nout = {:?}\nsteps = 2\nlora-r = 4\ndevice = \"cpu\"\n\
             target-modules = \"q_proj,v_proj\"\n",
            common::tiny_llama("model-f32"),
            data,
            out
        ),
    )
    .unwrap();
    ok(&common::wgtune(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--lora-r",
        "2",
    ]));
    let used = std::fs::read_to_string(out.join("train_config.toml")).unwrap();
    assert!(
        used.contains("lora-r = 2") && used.contains("steps = 2"),
        "{used}"
    );
    let adapter: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(adapter["r"], 2);
    let mut targets: Vec<String> = adapter["target_modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    targets.sort();
    assert_eq!(targets, ["q_proj", "v_proj"]);
    assert_eq!(
        f32_tensors(&out.join("adapter_model.safetensors")).len(),
        2 * 2 * 2
    );
    // The written settings reproduce the run.
    let again = tmp.path().join("again");
    ok(&common::wgtune(&[
        "train",
        "--config",
        out.join("train_config.toml").to_str().unwrap(),
        "--out",
        again.to_str().unwrap(),
    ]));
    assert_eq!(step_losses(&again), step_losses(&out));
    // An unknown key names the file.
    std::fs::write(&cfg, "lora_r = 4\n").unwrap();
    let o = common::wgtune(&["train", "--config", cfg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("run.toml"), "{err}");
}

#[test]
fn bad_input_is_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::tiny_llama("model-f32");
    let model = model.to_str().unwrap();
    let out = tmp.path().join("out");
    let out = out.to_str().unwrap();
    let run = |data: &str, extra: &[&str]| {
        let mut args = vec![
            "train", "--model", model, "--data", data, "--out", out, "--steps", "1", "--device",
            "cpu",
        ];
        args.extend_from_slice(extra);
        common::wgtune(&args)
    };
    let fails = |o: Output, needle: &str| {
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!o.status.success(), "expected failure: {err}");
        assert!(err.contains(needle), "{needle:?} not in: {err}");
        assert!(!err.contains("panicked"), "{err}");
    };
    let missing = tmp.path().join("nope.jsonl");
    let o = run(missing.to_str().unwrap(), &[]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    // The OS's words once: an error that prints its cause must not also chain it.
    assert_eq!(err.matches("(os error 2)").count(), 1, "{err}");
    assert!(!err.contains("loaded in"), "the model loaded first: {err}");
    fails(o, "nope.jsonl");
    let bad = tmp.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"input_ids\": [1, 2, 3, 4]}\n{\"input_ids\": [1, 2,\n{\"input_ids\": [5, 6, 7]}\n",
    )
    .unwrap();
    fails(run(bad.to_str().unwrap(), &[]), "bad.jsonl:2");
    let o = run(bad.to_str().unwrap(), &["--skip-bad-rows"]);
    let err = ok(&o);
    assert!(
        err.contains("skipped") && err.contains("bad.jsonl:2"),
        "{err}"
    );
    fails(
        run(bad.to_str().unwrap(), &["--format", "parquet"]),
        "parquet",
    );
    // Sizes that could only exhaust memory are refused with the reason, not attempted.
    let good = tmp.path().join("good.jsonl");
    std::fs::write(&good, "{\"input_ids\": [1, 2, 3, 4]}\n").unwrap();
    let good = good.to_str().unwrap();
    let refused: [(&[&str], &str); 6] = [
        (
            &["--lora-r", "129"],
            "above 64, the smaller side of k_proj ([64, 128])",
        ),
        (
            &["--grad-accum", "18446744073709551615"],
            "at most 16777216 examples",
        ),
        (
            &["--method", "qst", "--qst-r", "100000000"],
            "rank r 100000000 is above hidden_size 128",
        ),
        // What torch.optim.AdamW refuses is refused before a step, not reported as divergence.
        (
            &["--adam-beta1", "1"],
            "--adam-beta1 = 1: must be in [0, 1)",
        ),
        (&["--adam-eps", "0"], "--adam-eps = 0: must be positive"),
        (&["--weight-decay=-0.1"], "--weight-decay = -0.1"),
    ];
    for (args, needle) in refused {
        fails(run(good, args), needle);
    }
    let oov = tmp.path().join("oov.jsonl");
    std::fs::write(&oov, "{\"input_ids\": [1, 2, 999]}\n").unwrap();
    fails(run(oov.to_str().unwrap(), &[]), "vocabulary");
    fails(
        run(bad.to_str().unwrap(), &["--target-modules", "qq_proj"]),
        "qq_proj",
    );
    // An adapter that cannot be used fails before the model loads (no "loaded in" line).
    let early = |o: Output, needle: &str| {
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!err.contains("loaded in"), "the model loaded first: {err}");
        fails(o, needle);
    };
    let nowhere = tmp.path().join("no-adapter");
    let nowhere = nowhere.to_str().unwrap();
    early(
        run(bad.to_str().unwrap(), &["--init-adapter", nowhere]),
        "no-adapter: no such adapter directory",
    );
    early(
        run(bad.to_str().unwrap(), &["--init-adapter", model]),
        "not an adapter directory",
    );
    let lora = common::tiny_llama("adapter-init");
    early(
        run(
            bad.to_str().unwrap(),
            &["--init-adapter", lora.to_str().unwrap(), "--method", "qst"],
        ),
        "a LoRA adapter; --method qst",
    );
    early(
        common::wgtune(&[
            "generate",
            "--model",
            model,
            "--adapter",
            nowhere,
            "--prompt",
            "a",
            "--device",
            "cpu",
        ]),
        "no such adapter directory",
    );
    for (flag, value, says) in [
        ("--max-new-tokens", "0", "at least 1"),
        ("--temperature", "NaN", "finite"),
        ("--top-p", "0", "(0, 1]"),
    ] {
        early(
            common::wgtune(&["generate", "--model", model, "--prompt", "a", flag, value]),
            says,
        );
    }
    let fresh = tmp.path().join("fresh");
    fails(
        common::wgtune(&[
            "train",
            "--data",
            bad.to_str().unwrap(),
            "--resume",
            "--out",
            fresh.to_str().unwrap(),
            "--model",
            model,
            "--skip-bad-rows",
            "--device",
            "cpu",
        ]),
        "no checkpoint",
    );
}

#[test]
fn smollm2_chat_data_and_generate_with_the_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("dates.jsonl");
    let rows: String = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("data/quickstart/train.jsonl"),
    )
    .unwrap()
    .lines()
    .take(8)
    .map(|l| format!("{l}\n"))
    .collect();
    std::fs::write(&data, rows).unwrap();
    let out = tmp.path().join("out");
    let err = ok(&common::wgtune(&[
        "train",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--lora-r",
        "4",
        "--device",
        "cpu",
    ]));
    assert!(err.contains("alpaca, 8 examples"), "{err}");
    let losses = step_losses(&out);
    assert_eq!(losses.len(), 2);
    assert!(
        losses.iter().all(|l| l.is_finite() && *l > 0.0),
        "{losses:?}"
    );
    let o = common::wgtune(&[
        "generate",
        "--adapter",
        out.to_str().unwrap(),
        "--prompt",
        "Give this date as YYYY-MM-DD.\n\nMarch 5, 2021",
        "--chat",
        "--max-new-tokens",
        "4",
        "--device",
        "cpu",
    ]);
    let err = ok(&o);
    assert!(err.contains("adapter:"), "{err}");
}

#[test]
fn qst_trains_resumes_and_loads_as_an_adapter() {
    let tmp = tempfile::tempdir().unwrap();
    let data = random_rows(tmp.path(), 12);
    let data = data.to_str().unwrap();
    let model = common::tiny_llama("model-f32");
    let model = model.to_str().unwrap();
    let args = |out: &str| -> Vec<String> {
        [
            "train",
            "--method",
            "qst",
            "--qst-r",
            "8",
            "--qst-reduction",
            "4",
            "--model",
            model,
            "--data",
            data,
            "--out",
            out,
            "--steps",
            "12",
            "--batch-size",
            "4",
            "--lr",
            "3e-3",
            "--save-every",
            "4",
            "--device",
            "cpu",
        ]
        .map(str::to_string)
        .to_vec()
    };
    let run = |a: &[String]| {
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        ok(&common::wgtune(&refs))
    };
    let a = tmp.path().join("a");
    let err = run(&args(a.to_str().unwrap()));
    assert!(err.contains("training (qst)"), "{err}");
    assert!(a.join("qst_config.json").is_file() && a.join("qst_model.safetensors").is_file());
    assert!(!a.join("adapter_model.safetensors").exists());
    let losses = step_losses(&a);
    assert_eq!(losses.len(), 12);
    let (head, tail) = (
        losses[..3].iter().sum::<f64>(),
        losses[9..].iter().sum::<f64>(),
    );
    assert!(tail < head, "the side network does not learn: {losses:?}");

    // Resume from step 8 of a copy: the same final weights, byte for byte.
    let b = tmp.path().join("b");
    run(&args(b.to_str().unwrap()));
    std::fs::remove_dir_all(b.join("checkpoints/step-000012")).unwrap();
    std::fs::remove_file(b.join("qst_model.safetensors")).unwrap();
    let mut resume = args(b.to_str().unwrap());
    resume.push("--resume".to_string());
    let err = run(&resume);
    assert!(err.contains("step 8"), "{err}");
    assert_eq!(step_losses(&b), losses);
    assert!(
        std::fs::read(a.join("qst_model.safetensors")).unwrap()
            == std::fs::read(b.join("qst_model.safetensors")).unwrap()
    );

    // eval --adapter loads it; the tuned model fits its training rows better than the base.
    let eval = |extra: &[&str]| -> f64 {
        let mut v = vec![
            "eval", "--model", model, "--data", data, "--json", "--device", "cpu",
        ];
        v.extend_from_slice(extra);
        let o = common::wgtune(&v);
        ok(&o);
        let j: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).unwrap();
        j["loss"].as_f64().unwrap()
    };
    let base = eval(&[]);
    let tuned = eval(&["--adapter", a.to_str().unwrap()]);
    assert!(
        tuned < base,
        "eval loss {tuned} with the side network vs {base} without"
    );
}
