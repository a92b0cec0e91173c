//! Models from files held in memory (`ModelFiles`, how the browser demo loads picked files)
//! against the same files loaded from disk, and the errors for incomplete or corrupt sets.
//!
//! Fixture: `../shared/fixtures/tiny-llama` (model-f32 and the bnb NF4 checkpoint).

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::{Int, Tensor, TensorData};
use wgtune::pretrained::{ModelFiles, ModelFormat, Pretrained};
use wgtune::quant::QuantConfig;

fn files_of(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect()
}

fn logits(p: &Pretrained) -> Vec<f32> {
    let device = p.model.device();
    let ids = Tensor::<2, Int>::from_data(
        TensorData::new(vec![1i64, 17, 42, 255, 3, 99], [1, 6]),
        &device,
    );
    common::values(p.model.forward(ids, None))
}

/// Same files, same model: the in-memory load gives bit-identical logits, float and NF4.
#[test]
fn memory_load_equals_disk_load() {
    let device = common::cpu();
    for (dir, quant) in [
        ("model-f32", None),
        ("model-f32", Some(QuantConfig::default())),
        ("model-bnb-nf4", Some(QuantConfig::default())),
    ] {
        let path = common::tiny_llama(dir);
        let disk = Pretrained::load(&path, quant, &device).unwrap();
        let opened = ModelFiles::open(Path::new("picked"), files_of(&path)).unwrap();
        assert_eq!(opened.format(), ModelFormat::HfDir);
        assert_eq!(opened.config().num_hidden_layers, 2);
        let mut read = 0u64;
        let memory = opened.load(quant, &device, &mut |n| read += n).unwrap();
        assert!(read > 0, "progress was reported");
        assert_eq!(logits(&memory), logits(&disk), "{dir} with {quant:?}");
    }
}

/// A load a piece per step (how the browser tab loads, yielding between pieces) builds the
/// same model as a load in one call: embeddings, head, one piece per layer, final norm, with
/// the bytes read growing to the weights' size.
#[test]
fn stepwise_load_equals_one_shot_load() {
    let device = common::cpu();
    for dir in ["model-f32", "model-bnb-nf4"] {
        let quant = Some(QuantConfig::default());
        let path = common::tiny_llama(dir);
        let disk = Pretrained::load(&path, quant, &device).unwrap();
        let opened = ModelFiles::open(Path::new("picked"), files_of(&path)).unwrap();
        let mut loading = opened.start(quant, &device).unwrap();
        assert_eq!(
            loading.pieces(),
            (0, 5),
            "2 layers + embeddings, head, norm"
        );
        let total = loading.bytes().1;
        let mut last = 0;
        let mut steps = 0;
        loop {
            let done = loading.step().unwrap();
            steps += 1;
            let (built, pieces) = loading.pieces();
            assert_eq!(built, steps.min(pieces), "one piece per step");
            let (read, t) = loading.bytes();
            assert!(
                read >= last && read <= t && t == total,
                "{read}/{t} after {last}"
            );
            last = read;
            if done {
                break;
            }
        }
        assert_eq!(steps, 5, "{dir}");
        // Only headers (and the bnb quant_state JSON) are never read: 99.9% and 97.3% here.
        assert!(
            last as f64 >= 0.95 * total as f64,
            "{dir}: read {last} of {total} bytes"
        );
        let stepped = loading.finish().unwrap();
        assert_eq!(logits(&stepped), logits(&disk), "{dir}");
    }
}

/// A tensor missing from the file fails the step that needs it, naming file and tensor.
#[test]
fn a_missing_tensor_fails_its_step() {
    use wgtune::io::{OwnedTensor, serialize_safetensors};
    let path = common::tiny_llama("model-f32");
    let mut files = files_of(&path);
    let bytes = files.remove("model.safetensors").unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let kept: BTreeMap<String, OwnedTensor> = st
        .tensors()
        .into_iter()
        .filter(|(name, _)| name != "model.norm.weight")
        .map(|(name, view)| (name, OwnedTensor::from_view(&view)))
        .collect();
    let name = Path::new("model.safetensors");
    files.insert(
        "model.safetensors".into(),
        serialize_safetensors(&kept, name).unwrap(),
    );
    let device = common::cpu();
    let mut loading = ModelFiles::open(Path::new("picked"), files)
        .unwrap()
        .start(None, &device)
        .unwrap();
    for _ in 0..4 {
        assert!(
            !loading.step().unwrap(),
            "the first four pieces are all there"
        );
    }
    let e = loading.step().unwrap_err().to_string();
    assert!(
        e.contains("picked/model.safetensors") && e.contains("model.norm.weight"),
        "{e}"
    );
}

#[test]
fn incomplete_or_corrupt_sets_are_named() {
    let path = common::tiny_llama("model-f32");
    let err = |files: BTreeMap<String, Vec<u8>>| match ModelFiles::open(Path::new("picked"), files)
    {
        Ok(_) => panic!("opened"),
        Err(e) => e.to_string(),
    };

    let mut files = files_of(&path);
    files.remove("config.json");
    let e = err(files);
    assert!(
        e.starts_with("picked: no config.json among the files"),
        "{e}"
    );

    let mut files = files_of(&path);
    files.remove("model.safetensors");
    let e = err(files);
    assert!(e.contains("no *.safetensors"), "{e}");

    let mut files = files_of(&path);
    files.get_mut("model.safetensors").unwrap().truncate(1000);
    let e = err(files);
    assert!(
        e.starts_with("picked/model.safetensors: not a valid safetensors file"),
        "{e}"
    );

    let mut files = files_of(&path);
    files.insert("config.json".into(), b"{\"model_type\": ".to_vec());
    let e = err(files);
    assert!(e.contains("picked/config.json"), "{e}");

    // An unnamed set names files by their own names.
    let e = match ModelFiles::open(Path::new(""), BTreeMap::new()) {
        Ok(_) => panic!("opened"),
        Err(e) => e.to_string(),
    };
    assert!(e.starts_with("no config.json among the files"), "{e}");

    // A GGUF is known by its magic; a truncated one names the file.
    let files = BTreeMap::from([("m.bin".to_string(), b"GGUF\x03\x00\x00\x00".to_vec())]);
    let e = err(files);
    assert!(e.contains("picked/m.bin"), "{e}");
}
