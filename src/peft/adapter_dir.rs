//! PEFT LoRA adapter directories, both ways: `adapter_config.json` + `adapter_model.safetensors`
//! with keys `base_model.model.model.layers.{i}.{self_attn|mlp}.{proj}.lora_{A|B}.weight`
//! (`A: [r, in]`, `B: [out, r]`), what `PeftModel.save_pretrained` writes and
//! `PeftModel.from_pretrained` reads.
//!
//! Reading checks everything against the model before touching it: every key names a layer and
//! projection the model has, shapes agree with the projection and with `r`, each module has both
//! halves. Writing goes to temporary names renamed into place, so a directory never holds half
//! an adapter.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use burn::tensor::Tensor;
use serde_json::{Value, json};

use super::lora::{LoraConfig, TargetModule, adapter_from_values, adapters, module_key};
use crate::io::{self, Checkpoint, IoError, OwnedTensor};
use crate::model::Llama;

/// `adapter_config.json`.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// `adapter_model.safetensors`.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// Errors from reading or writing an adapter directory. Each names the file.
#[derive(Debug, thiserror::Error)]
pub enum AdapterError {
    /// Reading or writing a file failed.
    #[error(transparent)]
    Io(#[from] IoError),
    /// `adapter_config.json` is not a LoRA config this crate can apply.
    #[error("{path}: {reason}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The weights do not fit the model.
    #[error("{path}: {reason}")]
    Mismatch {
        /// The weights file.
        path: PathBuf,
        /// What does not fit.
        reason: String,
    },
    /// Reading an adapter back from the device failed.
    #[error("cannot read adapter {name} from the device: {reason}")]
    Readback {
        /// The tensor.
        name: String,
        /// What burn said.
        reason: String,
    },
}

/// An adapter directory read into memory: its config and `A`/`B` values per module prefix.
#[derive(Clone, Debug)]
pub struct AdapterFile {
    /// The directory.
    pub dir: PathBuf,
    /// r, α, dropout, targets, rsLoRA.
    pub config: LoraConfig,
    /// `base_model_name_or_path` as written.
    pub base_model: Option<String>,
    /// Per module prefix (`base_model.model.model.layers.0.self_attn.q_proj`): `(A, B)` values
    /// and shapes.
    pub modules: BTreeMap<String, AdapterWeights>,
}

/// One module's `A: [r, in]` and `B: [out, r]`.
#[derive(Clone, Debug)]
pub struct AdapterWeights {
    /// `lora_A.weight` values.
    pub a: Vec<f32>,
    /// `[r, in]`.
    pub a_shape: [usize; 2],
    /// `lora_B.weight` values.
    pub b: Vec<f32>,
    /// `[out, r]`.
    pub b_shape: [usize; 2],
}

impl AdapterFile {
    /// Reads `dir/adapter_config.json` and `dir/adapter_model.safetensors`.
    pub fn read(dir: &Path) -> Result<Self, AdapterError> {
        let config_path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&config_path).map_err(io::os_err(&config_path))?;
        let Parsed {
            config,
            base_model,
            layers,
            exclude,
        } = parse_config(&text, &config_path)?;
        let weights_path = dir.join(WEIGHTS_FILE);
        let ckpt = Checkpoint::open(&weights_path)?;
        let mut halves: BTreeMap<String, [Option<Half>; 2]> = BTreeMap::new();
        let names: Vec<String> = ckpt.names().map(str::to_string).collect();
        for name in names {
            let (prefix, half) = split_key(&name).ok_or_else(|| AdapterError::Mismatch {
                path: weights_path.clone(),
                reason: format!(
                    "tensor {name:?} is not a LoRA weight (expected \
                     base_model.model.model.layers.N.<module>.lora_A.weight / lora_B.weight)"
                ),
            })?;
            let (view, path) = ckpt.view(&name)?;
            let shape: [usize; 2] =
                view.shape()
                    .try_into()
                    .map_err(|_| AdapterError::Mismatch {
                        path: path.to_path_buf(),
                        reason: format!(
                            "tensor {name:?} has shape {:?}, expected 2-D",
                            view.shape()
                        ),
                    })?;
            let values = io::read_f32(&view, path, &name)?;
            halves.entry(prefix).or_default()[half] = Some((values, shape));
        }
        let mut modules = BTreeMap::new();
        for (prefix, [a, b]) in halves {
            let missing = |which: &str| AdapterError::Mismatch {
                path: weights_path.clone(),
                reason: format!("{prefix} has no {which}.weight"),
            };
            let (a, a_shape) = a.ok_or_else(|| missing("lora_A"))?;
            let (b, b_shape) = b.ok_or_else(|| missing("lora_B"))?;
            if a_shape[0] != b_shape[1] {
                return Err(AdapterError::Mismatch {
                    path: weights_path.clone(),
                    reason: format!(
                        "{prefix}: lora_A is {a_shape:?} and lora_B {b_shape:?}; their ranks differ"
                    ),
                });
            }
            if a_shape[0] != config.r {
                return Err(AdapterError::Mismatch {
                    path: weights_path.clone(),
                    reason: format!(
                        "{prefix}: rank {} but adapter_config.json says r = {} \
                         (rank_pattern is not supported)",
                        a_shape[0], config.r
                    ),
                });
            }
            modules.insert(
                prefix,
                AdapterWeights {
                    a,
                    a_shape,
                    b,
                    b_shape,
                },
            );
        }
        if modules.is_empty() {
            return Err(AdapterError::Mismatch {
                path: weights_path,
                reason: "no LoRA weights in the file".to_string(),
            });
        }
        // PEFT builds LoRA layers from the config and ignores weights it built none for: a
        // module the config does not cover would be applied here and dropped there.
        for prefix in modules.keys() {
            let mismatch = |reason: String| AdapterError::Mismatch {
                path: weights_path.clone(),
                reason: format!("{prefix}: {reason}"),
            };
            let (layer, target) = split_module(prefix).ok_or_else(|| {
                mismatch(format!(
                    "not a projection of a decoder layer ({})",
                    TargetModule::ALL.map(TargetModule::name).join(", ")
                ))
            })?;
            if !config.targets.contains(&target) {
                let listed: Vec<&str> = config.targets.iter().map(|t| t.name()).collect();
                return Err(mismatch(format!(
                    "{CONFIG_FILE}'s target_modules [{}] leave out {}, so PEFT would not load \
                     these weights",
                    listed.join(", "),
                    target.name()
                )));
            }
            // PEFT's module name for this prefix, which exclude_modules is matched against.
            let name = &prefix["base_model.model.".len()..];
            if let Some(x) = exclude
                .iter()
                .find(|x| name == x.as_str() || name.ends_with(&format!(".{x}")))
            {
                return Err(mismatch(format!(
                    "{CONFIG_FILE}'s exclude_modules name {x:?}, so PEFT would not load these \
                     weights"
                )));
            }
            if let Some(layers) = &layers
                && !layers.contains(&layer)
            {
                return Err(mismatch(format!(
                    "layer {layer} is not in {CONFIG_FILE}'s layers_to_transform {layers:?}, so \
                     PEFT would not load these weights"
                )));
            }
        }
        Ok(AdapterFile {
            dir: dir.to_path_buf(),
            config,
            base_model,
            modules,
        })
    }

    /// Puts these adapters on `model` (replacing any it has), after checking that every module
    /// exists and every shape fits. Layers or projections absent from the file get no adapter.
    pub fn apply(&self, model: &mut Llama) -> Result<(), AdapterError> {
        let path = self.dir.join(WEIGHTS_FILE);
        let mut placed = BTreeMap::new();
        for (i, layer) in model.layers.iter().enumerate() {
            for target in TargetModule::ALL {
                let key = module_key(i, target);
                if let Some(w) = self.modules.get(&key) {
                    let linear = target.linear(layer);
                    let (out, inp) = (linear.out_features(), linear.in_features());
                    if w.a_shape[1] != inp || w.b_shape[0] != out {
                        return Err(AdapterError::Mismatch {
                            path,
                            reason: format!(
                                "{key}: lora_A {:?} / lora_B {:?} do not fit the model's \
                                 [{out}, {inp}] projection (an adapter for another model?)",
                                w.a_shape, w.b_shape
                            ),
                        });
                    }
                    placed.insert(key, (i, target));
                }
            }
        }
        if let Some(extra) = self.modules.keys().find(|k| !placed.contains_key(*k)) {
            return Err(AdapterError::Mismatch {
                path,
                reason: format!(
                    "{extra}: the model ({} layers) has no such module",
                    model.layers.len()
                ),
            });
        }
        let device = model.device();
        for (key, (i, target)) in placed {
            let w = &self.modules[&key];
            target.linear_mut(&mut model.layers[i]).adapter = Some(adapter_from_values(
                &w.a,
                w.a_shape,
                &w.b,
                w.b_shape,
                &self.config,
                &device,
            ));
        }
        Ok(())
    }
}

/// One half of a module's adapter as read: values and shape.
type Half = (Vec<f32>, [usize; 2]);

/// `prefix.lora_A.weight` -> `(prefix, 0)`, `prefix.lora_B.weight` -> `(prefix, 1)`.
fn split_key(name: &str) -> Option<(String, usize)> {
    let (prefix, half) = if let Some(p) = name.strip_suffix(".lora_A.weight") {
        (p, 0)
    } else {
        (name.strip_suffix(".lora_B.weight")?, 1)
    };
    Some((prefix.to_string(), half))
}

/// `base_model.model.model.layers.{i}.{target path}` -> `(i, target)`.
fn split_module(prefix: &str) -> Option<(usize, TargetModule)> {
    let rest = prefix.strip_prefix("base_model.model.model.layers.")?;
    let (layer, path) = rest.split_once('.')?;
    let target = TargetModule::ALL.into_iter().find(|t| t.path() == path)?;
    Some((layer.parse().ok()?, target))
}

/// What `adapter_config.json` says that reading the weights needs.
struct Parsed {
    config: LoraConfig,
    base_model: Option<String>,
    /// `layers_to_transform`: the only layers PEFT puts adapters on (`None`: all).
    layers: Option<BTreeSet<usize>>,
    /// `exclude_modules`: names of modules PEFT puts no adapter on.
    exclude: Vec<String>,
}

/// The top-level fields of a JSON config, typed: absent or `null` is `None` (the reader's
/// default), another JSON type than the one wanted is an error naming the field and the file.
struct Fields<'a> {
    v: &'a Value,
    path: &'a Path,
}

impl<'a> Fields<'a> {
    fn get(
        &self,
        key: &str,
        kind: &str,
        accept: impl Fn(&Value) -> bool,
    ) -> Result<Option<&'a Value>, AdapterError> {
        match self.v.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(x) if accept(x) => Ok(Some(x)),
            Some(x) => Err(AdapterError::Config {
                path: self.path.to_path_buf(),
                reason: format!("{key} is {x}, expected {kind}"),
            }),
        }
    }

    fn string(&self, key: &str) -> Result<Option<&'a str>, AdapterError> {
        Ok(self
            .get(key, "a string", Value::is_string)?
            .and_then(Value::as_str))
    }

    fn boolean(&self, key: &str) -> Result<Option<bool>, AdapterError> {
        Ok(self
            .get(key, "true or false", Value::is_boolean)?
            .and_then(Value::as_bool))
    }

    fn number(&self, key: &str) -> Result<Option<f64>, AdapterError> {
        Ok(self
            .get(key, "a number", Value::is_number)?
            .and_then(Value::as_f64))
    }
}

/// The fields of `adapter_config.json` this crate uses; anything it cannot honour is an error.
/// A field left out or written as `null` takes PEFT's default; one of another JSON type than
/// PEFT's is an error, not a silent default.
fn parse_config(text: &str, path: &Path) -> Result<Parsed, AdapterError> {
    let bad = |reason: String| AdapterError::Config {
        path: path.to_path_buf(),
        reason,
    };
    let v: Value = serde_json::from_str(text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let f = Fields { v: &v, path };
    let peft_type = f.string("peft_type")?.unwrap_or("LORA");
    if peft_type != "LORA" {
        return Err(bad(format!(
            "peft_type {peft_type:?}; wgtune reads LORA adapters"
        )));
    }
    for flag in ["use_dora", "fan_in_fan_out"] {
        if f.boolean(flag)? == Some(true) {
            return Err(bad(format!("{flag} = true is not supported")));
        }
    }
    if let Some(bias) = f.string("bias")?
        && bias != "none"
    {
        return Err(bad(format!(
            "bias = {bias:?} is not supported (only \"none\")"
        )));
    }
    for pattern in ["rank_pattern", "alpha_pattern"] {
        if f.get(pattern, "an object", Value::is_object)?
            .and_then(Value::as_object)
            .is_some_and(|m| !m.is_empty())
        {
            return Err(bad(format!("{pattern} is not supported")));
        }
    }
    if f.get("modules_to_save", "a list of module names", Value::is_array)?
        .and_then(Value::as_array)
        .is_some_and(|m| !m.is_empty())
    {
        return Err(bad(
            "modules_to_save is not supported (full trained copies of modules besides LoRA)"
                .to_string(),
        ));
    }
    // PEFT leaves out a module whose name is one of these or ends in `.` and one of these; a
    // single string is a regular expression there, which wgtune does not evaluate.
    let names = |x: &Value| x.as_array().is_some_and(|a| a.iter().all(Value::is_string));
    let exclude: Vec<String> = match f.get("exclude_modules", "a list of module names", |x| {
        x.is_string() || names(x)
    })? {
        None => Vec::new(),
        Some(Value::String(s)) => {
            return Err(bad(format!(
                "exclude_modules as a regular expression ({s:?}) is not supported; use a list \
                 of module names"
            )));
        }
        Some(x) => x
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
    };
    let index = |x: &Value| x.as_u64().and_then(|i| usize::try_from(i).ok());
    let indices = |x: &Value| {
        index(x).is_some()
            || x.as_array()
                .is_some_and(|a| a.iter().all(|i| index(i).is_some()))
    };
    let layers = f
        .get(
            "layers_to_transform",
            "a layer index or a list of them",
            indices,
        )?
        .map(|x| match x.as_array() {
            Some(a) => a.iter().filter_map(index).collect(),
            None => index(x).into_iter().collect(),
        });
    let r = v
        .get("r")
        .and_then(Value::as_u64)
        .ok_or_else(|| bad("missing or invalid \"r\"".to_string()))? as usize;
    let alpha = f.number("lora_alpha")?.unwrap_or(8.0) as f32;
    let dropout = f.number("lora_dropout")?.unwrap_or(0.0) as f32;
    let rslora = f.boolean("use_rslora")?.unwrap_or(false);
    let targets = match v.get("target_modules") {
        Some(Value::Array(items)) => {
            let mut out = BTreeSet::new();
            for item in items {
                let name = item
                    .as_str()
                    .ok_or_else(|| bad(format!("target_modules entry {item} is not a string")))?;
                out.extend(TargetModule::parse_list(name).map_err(bad)?);
            }
            out.into_iter().collect()
        }
        Some(Value::String(s)) if s == "all-linear" => TargetModule::ALL.to_vec(),
        Some(Value::String(s)) => {
            return Err(bad(format!(
                "target_modules as a regular expression ({s:?}) is not supported; \
                 use a list of module names"
            )));
        }
        _ => return Err(bad("missing target_modules".to_string())),
    };
    let config = LoraConfig {
        r,
        alpha,
        dropout,
        targets,
        rslora,
    };
    config.validate().map_err(bad)?;
    let base_model = f.string("base_model_name_or_path")?.map(str::to_string);
    Ok(Parsed {
        config,
        base_model,
        layers,
        exclude,
    })
}

/// The `adapter_config.json` PEFT would write for `config`.
pub fn config_json(config: &LoraConfig, base_model: &str) -> Value {
    let targets: Vec<&str> = config.targets.iter().map(|t| t.name()).collect();
    json!({
        "alpha_pattern": {},
        "auto_mapping": null,
        "base_model_name_or_path": base_model,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "layers_pattern": null,
        "layers_to_transform": null,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "modules_to_save": null,
        "peft_type": "LORA",
        "r": config.r,
        "rank_pattern": {},
        "revision": null,
        "target_modules": targets,
        "task_type": "CAUSAL_LM",
        "use_dora": false,
        "use_rslora": config.rslora,
    })
}

/// The model's adapters as named f32 tensors (PEFT keys), read back from the device.
pub fn adapter_tensors(model: &Llama) -> Result<BTreeMap<String, OwnedTensor>, AdapterError> {
    let mut out = BTreeMap::new();
    for (prefix, ad) in adapters(model) {
        for (half, t) in [("lora_A", ad.a.val()), ("lora_B", ad.b.val())] {
            let name = format!("{prefix}.{half}.weight");
            out.insert(name.clone(), owned(t, &name)?);
        }
    }
    Ok(out)
}

/// A device tensor as an F32 [`OwnedTensor`].
pub fn owned(t: Tensor<2>, name: &str) -> Result<OwnedTensor, AdapterError> {
    let shape = t.dims().to_vec();
    let values = t
        .inner()
        .try_into_vec_as::<f32>()
        .map_err(|e| AdapterError::Readback {
            name: name.to_string(),
            reason: format!("{e:?}"),
        })?;
    Ok(OwnedTensor::f32(shape, &values))
}

/// The two files of a PEFT adapter directory, `(name, contents)`: the weights
/// (`adapter_model.safetensors`) and `adapter_config.json`. `dir` names them in errors.
pub fn adapter_files(
    tensors: &BTreeMap<String, OwnedTensor>,
    config: &LoraConfig,
    base_model: &str,
    dir: &Path,
) -> Result<[(&'static str, Vec<u8>); 2], AdapterError> {
    if tensors.is_empty() {
        return Err(AdapterError::Mismatch {
            path: dir.to_path_buf(),
            reason: "the model has no adapters to save".to_string(),
        });
    }
    let weights = io::serialize_safetensors(tensors, &dir.join(WEIGHTS_FILE))?;
    let text = serde_json::to_string_pretty(&config_json(config, base_model))
        .expect("a JSON value serializes");
    Ok([
        (WEIGHTS_FILE, weights),
        (CONFIG_FILE, (text + "\n").into_bytes()),
    ])
}

/// Writes the model's adapters as a PEFT directory `dir` (created if needed): weights and config
/// each go to a temporary name first and are renamed into place.
pub fn save(
    model: &Llama,
    config: &LoraConfig,
    base_model: &str,
    dir: &Path,
) -> Result<(), AdapterError> {
    let files = adapter_files(&adapter_tensors(model)?, config, base_model, dir)?;
    std::fs::create_dir_all(dir).map_err(io::os_err(dir))?;
    for (name, bytes) in files {
        let path = dir.join(name);
        let tmp = dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, bytes).map_err(io::os_err(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io::os_err(&path))?;
    }
    Ok(())
}
