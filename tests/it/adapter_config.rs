//! `adapter_config.json` as PEFT writes it, edited one field at a time: what PEFT would honour
//! differently from the weights file, or a field of the wrong JSON type, is refused with the
//! field's name; what changes nothing for LoRA weights still loads.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use wgtune::peft::AdapterFile;

use crate::common;

/// The fixture adapter (r 8, all seven projections of both layers) with `key` set to `value`.
fn edited(dir: &Path, key: &str, value: Value) -> PathBuf {
    let src = common::tiny_llama("adapter-after-10-steps");
    let out = dir.join(key);
    std::fs::create_dir_all(&out).unwrap();
    std::fs::copy(
        src.join("adapter_model.safetensors"),
        out.join("adapter_model.safetensors"),
    )
    .unwrap();
    let text = std::fs::read_to_string(src.join("adapter_config.json")).unwrap();
    let mut config: Value = serde_json::from_str(&text).unwrap();
    config[key] = value;
    std::fs::write(out.join("adapter_config.json"), config.to_string()).unwrap();
    out
}

#[test]
fn fields_peft_reads_differently_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let refused = |key: &str, value: Value, needles: &[&str]| {
        let dir = edited(tmp.path(), key, value.clone());
        let err = AdapterFile::read(&dir)
            .err()
            .unwrap_or_else(|| panic!("{key} = {value} was accepted"))
            .to_string();
        for needle in needles {
            assert!(
                err.contains(needle),
                "{key} = {value}: {needle:?} not in {err}"
            );
        }
    };
    // Wrong JSON types: an error naming the field, not PEFT's default in silence.
    refused(
        "lora_alpha",
        json!("16"),
        &["adapter_config.json", "lora_alpha", "a number"],
    );
    refused("use_rslora", json!("yes"), &["use_rslora", "true or false"]);
    refused("lora_dropout", json!([0.1]), &["lora_dropout"]);
    refused("bias", json!(0), &["bias", "a string"]);
    refused("use_dora", json!(1), &["use_dora"]);
    refused("rank_pattern", json!([]), &["rank_pattern", "an object"]);
    // The weights hold modules that PEFT, following the config, would build no layer for.
    refused(
        "target_modules",
        json!(["q_proj", "v_proj"]),
        &[
            "adapter_model.safetensors",
            "target_modules [q_proj, v_proj]",
            "leave out",
        ],
    );
    refused(
        "exclude_modules",
        json!(["up_proj"]),
        &["layers.0.mlp.up_proj", "exclude_modules", "\"up_proj\""],
    );
    refused(
        "exclude_modules",
        json!(["layers.1.self_attn.k_proj"]),
        &["layers.1.self_attn.k_proj", "exclude_modules"],
    );
    refused(
        "exclude_modules",
        json!(".*k_proj"),
        &["regular expression"],
    );
    refused(
        "layers_to_transform",
        json!(1),
        &["layer 0", "layers_to_transform"],
    );
    refused(
        "layers_to_transform",
        json!([0]),
        &["layer 1", "layers_to_transform"],
    );
    refused("layers_to_transform", json!("0"), &["layers_to_transform"]);
    // Parts of a PEFT adapter that are not LoRA.
    refused("modules_to_save", json!(["lm_head"]), &["modules_to_save"]);
    refused("alpha_pattern", json!({"q_proj": 4}), &["alpha_pattern"]);

    // What leaves the LoRA weights as they are loads, with the same numbers.
    let base = AdapterFile::read(&common::tiny_llama("adapter-after-10-steps")).unwrap();
    for (key, value) in [
        ("layers_to_transform", json!([0, 1])),
        ("exclude_modules", json!(["lm_head"])),
        ("exclude_modules", Value::Null),
        ("modules_to_save", json!([])),
        ("rank_pattern", json!({})),
        ("use_rslora", Value::Null),
        ("task_type", json!("CAUSAL_LM")),
    ] {
        let dir = edited(tmp.path(), key, value.clone());
        let file = AdapterFile::read(&dir).unwrap_or_else(|e| panic!("{key} = {value}: {e}"));
        assert_eq!(file.config, base.config, "{key} = {value}");
        assert_eq!(file.modules.len(), base.modules.len(), "{key} = {value}");
    }
}
