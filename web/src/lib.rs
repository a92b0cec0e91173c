//! wgtune in a browser tab: the native crate's model, 4-bit WGSL kernels, LoRA and trainer,
//! driven from JavaScript on WebGPU.
//!
//! A page cannot block, so nothing here reads the GPU synchronously: the trainer's
//! [`Trainer::step_pending`] and [`Trainer::eval_sums`] leave their results on the device and
//! the async methods read them with `into_data_async`. The page calls [`Studio::train_step`]
//! once per update and yields to the event loop between calls, so it never freezes and Stop
//! takes effect after the current step.
//!
//! Every method that may fail rejects (or throws) with a sentence naming the file, row or
//! limit at fault.

mod log_console;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use burn::module::Module;
use burn::tensor::wgpu::{WgpuSetup, wgpu};
use burn::tensor::{Device, Transaction};
use js_sys::{Function, Uint8Array};
use serde::{Deserialize, Serialize};
use serde_json::json;
use wasm_bindgen::prelude::*;

use wgtune::data::dataset::{DatasetOptions, DatasetReader, split_eval};
use wgtune::data::template::{ChatTemplate, Message};
use wgtune::data::tokenizer::Tokenizer;
use wgtune::generate::sampling::{Sampler, SamplingOptions};
use wgtune::generate::{last_logits_tensor, reply_stop_ids, token_budget};
use wgtune::io::OwnedTensor;
use wgtune::limits::{self, DeviceLimits};
use wgtune::model::{Llama, LlamaConfig};
use wgtune::ops;
use wgtune::ops::dispatch::{self, AdapterClass};
use wgtune::ops::shaders::Shader;
use wgtune::peft::{self, LoraConfig, TargetModule};
use wgtune::pretrained::ModelFiles;
use wgtune::quant::{QuantConfig, QuantFormat};
use wgtune::train::step::param_values;
use wgtune::train::{AdamWConfig, ScheduleKind, TrainOptions, Trainer, metrics::mem_bytes};

#[cfg(target_arch = "wasm32")]
unsafe extern "C" {
    /// wasm-ld's static constructors (cubecl registers its kernels through `inventory`).
    fn __wasm_call_ctors();
}

/// Runs once when the module is instantiated.
#[wasm_bindgen(start)]
pub fn start() {
    // Called once here, wasm-ld stops wrapping every export with the constructors (which would
    // re-run them on each JS -> wasm call; DESIGN.md §5).
    #[cfg(target_arch = "wasm32")]
    unsafe {
        __wasm_call_ctors()
    };
    console_error_panic_hook::set_once();
    log_console::init();
}

/// Every WGSL specialization the kernels can launch in a browser, as JSON `[{"name", "code"}]`
/// (not the native subgroup kernels, which the browser build never resolves to).
///
/// The end-to-end test compiles each in the browser's own WebGPU implementation with its default
/// limits: Tint (Chromium) enforces WGSL's uniformity rules for barriers, which the native naga
/// check does not, so a kernel the page has not launched yet is still known to compile there.
#[wasm_bindgen(js_name = shaderSources)]
pub fn shader_sources() -> String {
    let list: Vec<_> = Shader::all()
        .into_iter()
        .filter(|s| !s.needs_subgroups())
        .map(|s| json!({ "name": format!("{s:?}"), "code": s.source() }))
        .collect();
    serde_json::Value::Array(list).to_string()
}

/// An error for JavaScript: a sentence.
fn js_err(e: impl std::fmt::Display) -> JsValue {
    JsValue::from_str(&e.to_string())
}

/// Milliseconds since the page's epoch.
fn now_ms() -> f64 {
    js_sys::Date::now()
}

/// What the page sets before training (JSON from the form).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub r: usize,
    pub alpha: f32,
    pub dropout: f32,
    pub lr: f64,
    pub steps: u64,
    pub max_len: usize,
    pub batch_size: usize,
    /// Share of rows held out for the eval loss; 0 evaluates on every row.
    pub eval_fraction: f64,
    pub seed: u64,
    /// `all-linear` or a comma list of projections (`q_proj,v_proj`).
    pub targets: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            r: 8,
            alpha: 16.0,
            dropout: 0.0,
            lr: 1e-3,
            steps: 30,
            max_len: 128,
            batch_size: 4,
            eval_fraction: 0.0,
            seed: 42,
            targets: "all-linear".to_string(),
        }
    }
}

/// A model on the device with what talks to it.
struct Loaded {
    /// The base model (no adapters).
    base: Llama,
    config: LlamaConfig,
    tokenizer: Option<Tokenizer>,
    template: ChatTemplate,
    /// File name(s) the model came from, for the adapter's `base_model_name_or_path`.
    name: String,
}

/// A training run.
struct Run {
    trainer: Trainer,
    lora: LoraConfig,
}

/// A model on its way to the device.
struct Loading {
    loading: wgtune::pretrained::Loading,
    label: String,
    format: String,
    file_bytes: u64,
    quant: String,
    started: f64,
}

/// A dataset being read for a run.
struct Preparing {
    reader: DatasetReader,
    settings: Settings,
    lora: LoraConfig,
}

/// Rows [`Studio::prepare_step`] reads between looks at the clock.
const PREPARE_SLICE_ROWS: usize = 16;

/// About how long one [`Studio::prepare_step`] works before it returns, in milliseconds.
const PREPARE_SLICE_MS: f64 = 50.0;

#[derive(Default)]
struct Inner {
    files: BTreeMap<String, Vec<u8>>,
    loading: Option<Loading>,
    preparing: Option<Preparing>,
    model: Option<Loaded>,
    run: Option<Run>,
}

/// The page's handle: one WebGPU device, at most one model and one training run.
#[wasm_bindgen]
pub struct Studio {
    device: Device,
    limits: DeviceLimits,
    adapter: String,
    inner: Rc<RefCell<Inner>>,
}

#[wasm_bindgen]
impl Studio {
    /// Opens the WebGPU device (the adapter's own limits are requested, above WebGPU's
    /// defaults where it has them). Rejects when the browser has no WebGPU adapter.
    ///
    /// `kernels` (`gpu`, `software` or `llvmpipe`; none: the adapter's own) chooses the 4-bit
    /// kernels as on that class of adapter: every kernel runs on every adapter, so this only
    /// trades speed, and lets a page without a GPU run the kernels a GPU's page would
    /// (`?kernels=gpu`; the browser test does).
    ///
    /// `default_limits` requests WebGPU's default limits instead of the adapter's own: the
    /// least any browser gives (128 MiB storage bindings, 16 KiB of workgroup memory, 8 storage
    /// buffers a stage), to test that the page keeps within them (`?limits=default`).
    pub async fn create(kernels: Option<String>, default_limits: bool) -> Result<Studio, JsValue> {
        let forced = kernels
            .map(|k| k.parse::<AdapterClass>())
            .transpose()
            .map_err(|e| js_err(format!("the page's kernels= setting: {e}")))?;
        dispatch::force_adapter_class(forced);
        let (device, setup) = open_device(default_limits)
            .await
            .map_err(|e| js_err(format!("WebGPU could not start: {e}")))?;
        let info = setup.adapter.get_info();
        let l = setup.device.limits();
        let limits = DeviceLimits {
            max_storage_buffer_binding_size: l.max_storage_buffer_binding_size,
            max_buffer_size: l.max_buffer_size,
            max_compute_workgroup_storage_size: l.max_compute_workgroup_storage_size,
            max_compute_invocations_per_workgroup: l.max_compute_invocations_per_workgroup,
        };
        let adapter = [
            info.name.as_str(),
            info.vendor.to_string().as_str(),
            info.driver.as_str(),
        ]
        .iter()
        .filter(|s| !s.is_empty() && **s != "0")
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
        Ok(Studio {
            device: device.autodiff(),
            limits,
            adapter: if adapter.is_empty() {
                "WebGPU adapter".to_string()
            } else {
                adapter
            },
            inner: Rc::default(),
        })
    }

    /// `{"adapter", "limits": {..}, "kernels"}` as JSON; `kernels` names the class of adapter
    /// the 4-bit kernels are chosen for (`gpu` or `software`, or the class forced at creation).
    pub fn device_info(&self) -> String {
        let kernels = ops::adapter_class(&self.device).map(|c| c.name());
        json!({"adapter": self.adapter, "limits": self.limits, "kernels": kernels}).to_string()
    }

    /// Runs every kernel on this device against exact products on the host (`ops::check`):
    /// resolves to the report as JSON, `{"adapter_class", "checks": [{"product", "strategy",
    /// "kernel", "shape", "error"}], "tolerance", "worst", "failures"}`.
    pub fn check_kernels(&self) -> js_sys::Promise {
        let device = self.device.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let report = ops::check::run(&device).await.map_err(js_err)?;
            let mut value = serde_json::to_value(&report).map_err(js_err)?;
            value["tolerance"] = json!(ops::check::TOLERANCE);
            value["worst"] = json!(report.worst());
            value["failures"] = json!(report.failures().len());
            Ok(JsValue::from_str(&value.to_string()))
        })
    }

    /// Adds one of the model's files (a `.gguf`, or `config.json`, `*.safetensors`,
    /// `tokenizer.json`, `tokenizer_config.json`).
    pub fn add_file(&self, name: &str, bytes: &Uint8Array) -> Result<(), JsValue> {
        let mut inner = self.inner.try_borrow_mut().map_err(|_| js_err(BUSY))?;
        inner.files.insert(name.to_string(), bytes.to_vec());
        Ok(())
    }

    /// Forgets added files, the model and the run.
    pub fn reset(&self) -> Result<(), JsValue> {
        let mut inner = self.inner.try_borrow_mut().map_err(|_| js_err(BUSY))?;
        *inner = Inner::default();
        Ok(())
    }

    /// Starts loading the added files onto the device, quantizing the projections with
    /// `quant` (`nf4`, `fp4` or `none`), after checking the model against the device's limits.
    /// `label` names the model on the page and in the adapter's `base_model_name_or_path`.
    /// Nothing is on the device yet: [`Studio::load_step`] puts it there a piece at a time.
    /// Returns `{"pieces", "total_bytes"}`.
    pub fn start_load(&self, label: &str, quant: &str) -> Result<String, JsValue> {
        let mut inner = self.inner.try_borrow_mut().map_err(|_| js_err(BUSY))?;
        let files = std::mem::take(&mut inner.files);
        if files.is_empty() {
            return Err(js_err("no model files were given"));
        }
        let file_bytes: u64 = files.values().map(|b| b.len() as u64).sum();
        let quant = match quant {
            "none" => None,
            name => Some(QuantConfig {
                format: name.parse::<QuantFormat>().map_err(js_err)?,
                ..QuantConfig::default()
            }),
        };
        inner.model = None;
        inner.run = None;
        inner.loading = None;
        // Errors name each file as the user picked it.
        let opened = ModelFiles::open(Path::new(""), files).map_err(js_err)?;
        limits::check_model(opened.config(), quant.is_some(), &self.limits).map_err(js_err)?;
        let format = format!("{:?}", opened.format());
        let loading = opened.start(quant, &self.device).map_err(js_err)?;
        let out = json!({"pieces": loading.pieces().1, "total_bytes": loading.bytes().1});
        inner.loading = Some(Loading {
            loading,
            label: label.to_string(),
            format,
            file_bytes,
            quant: quant.map_or("none".to_string(), |q| q.format.to_string()),
            started: now_ms(),
        });
        Ok(out.to_string())
    }

    /// Reads, quantizes and uploads the next piece of the model being loaded (embeddings, head,
    /// one decoder layer, final norm): each call is short, and the page yields between calls.
    /// Returns `{"pieces_done", "pieces", "bytes_read", "total_bytes"}`, plus `"model"` (the
    /// model's description) once the last piece is on the device. A failed piece ends the load.
    pub fn load_step(&self) -> Result<String, JsValue> {
        let mut inner = self.inner.try_borrow_mut().map_err(|_| js_err(BUSY))?;
        let Some(mut current) = inner.loading.take() else {
            return Err(js_err("no model is being loaded"));
        };
        let done = current.loading.step().map_err(js_err)?;
        let (pieces_done, pieces) = current.loading.pieces();
        let (bytes_read, total_bytes) = current.loading.bytes();
        let mut out = json!({
            "pieces_done": pieces_done,
            "pieces": pieces,
            "bytes_read": bytes_read,
            "total_bytes": total_bytes,
        });
        if !done {
            inner.loading = Some(current);
            return Ok(out.to_string());
        }
        let pre = current.loading.finish().map_err(js_err)?;
        let c = &pre.config;
        out["model"] = json!({
            "name": current.label,
            "format": current.format,
            "layers": c.num_hidden_layers,
            "hidden": c.hidden_size,
            "vocab": c.vocab_size,
            "heads": c.num_attention_heads,
            "context": c.max_position_embeddings,
            "params": param_count(c),
            "file_bytes": current.file_bytes,
            "quant": current.quant,
            "has_tokenizer": pre.tokenizer.is_some(),
            "device_bytes": mem_bytes(&self.device),
            "load_ms": now_ms() - current.started,
        });
        inner.model = Some(Loaded {
            base: pre.model,
            config: pre.config,
            tokenizer: pre.tokenizer,
            template: pre.template,
            name: current.label,
        });
        Ok(out.to_string())
    }

    /// Starts reading a dataset (JSONL or a JSON array, in any of the native `wgtune train`
    /// formats) for a run with `settings` (JSON of [`Settings`]); [`Studio::prepare_step`]
    /// tokenizes it a slice of rows at a time. Returns `{"rows"}` (rows of JSON read).
    pub fn start_prepare(&self, dataset: &str, settings: &str) -> Result<String, JsValue> {
        let s: Settings =
            serde_json::from_str(settings).map_err(|e| js_err(format!("settings: {e}")))?;
        if s.r == 0 || s.steps == 0 || s.batch_size == 0 || s.max_len < 2 {
            return Err(js_err(
                "r, steps and batch size must be at least 1, max length at least 2",
            ));
        }
        let mut inner = self.inner.try_borrow_mut().map_err(|_| js_err(BUSY))?;
        inner.run = None;
        inner.preparing = None;
        let model = inner
            .model
            .as_ref()
            .ok_or_else(|| js_err("load a model first"))?;
        let targets = TargetModule::parse_list(&s.targets).map_err(js_err)?;
        let lora = LoraConfig {
            r: s.r,
            alpha: s.alpha,
            dropout: s.dropout,
            targets,
            rslora: false,
        };
        lora.validate().map_err(js_err)?;
        let opts = DatasetOptions {
            max_len: s.max_len,
            ..DatasetOptions::default()
        };
        let reader = DatasetReader::new(
            Path::new("dataset"),
            dataset,
            model.tokenizer.as_ref(),
            &model.template,
            &opts,
        )
        .map_err(js_err)?;
        let out = json!({"rows": reader.progress().1});
        inner.preparing = Some(Preparing {
            reader,
            settings: s,
            lora,
        });
        Ok(out.to_string())
    }

    /// Renders and tokenizes the dataset's next rows (about 50 ms of work); the call after the
    /// last rows attaches a fresh LoRA adapter and readies the run. Returns
    /// `{"rows_read", "rows"}`, plus `"run"` once ready: `{"rows", "train_rows", "eval_rows",
    /// "format", "tokens", "longest", "total_steps", "trainable"}`. An error ends the reading.
    pub fn prepare_step(&self) -> Result<String, JsValue> {
        let mut guard = self.inner.try_borrow_mut().map_err(|_| js_err(BUSY))?;
        let inner = &mut *guard;
        let model = inner
            .model
            .as_ref()
            .ok_or_else(|| js_err("load a model first"))?;
        let Some(mut p) = inner.preparing.take() else {
            return Err(js_err("no dataset is being read"));
        };
        let started = now_ms();
        let before = p.reader.progress().0;
        let done = loop {
            let done = p
                .reader
                .step(
                    model.tokenizer.as_ref(),
                    &model.template,
                    PREPARE_SLICE_ROWS,
                )
                .map_err(js_err)?;
            if done || now_ms() - started >= PREPARE_SLICE_MS {
                break done;
            }
        };
        let (rows_read, rows) = p.reader.progress();
        let mut out = json!({"rows_read": rows_read, "rows": rows});
        // The run's setup gets a call of its own unless this one read nothing.
        if !done || rows_read > before {
            inner.preparing = Some(p);
            return Ok(out.to_string());
        }
        let Preparing {
            reader,
            settings: s,
            lora,
        } = p;
        let data = reader
            .finish(model.tokenizer.as_ref(), &model.template)
            .map_err(js_err)?;
        let longest = data
            .examples
            .iter()
            .map(|e| e.input_ids.len())
            .max()
            .unwrap_or(0);
        limits::check_step(&model.config, s.batch_size, longest, &self.limits).map_err(js_err)?;
        let tokens: usize = data.examples.iter().map(|e| e.input_ids.len()).sum();
        let rows = data.examples.len();
        let (train, eval) = if s.eval_fraction > 0.0 {
            split_eval(data.examples, s.eval_fraction, s.seed)
        } else {
            (data.examples.clone(), data.examples)
        };
        let mut llama = model.base.clone();
        peft::check_rank(&llama, &lora).map_err(js_err)?;
        peft::attach(&mut llama, &lora, s.seed);
        let pad_id = model
            .tokenizer
            .as_ref()
            .and_then(|t| t.pad_id().or(t.eos_id()))
            .map_or(0, i64::from);
        let opts = TrainOptions {
            adamw: AdamWConfig::default(),
            lr: s.lr,
            schedule: ScheduleKind::Constant,
            warmup_steps: Some(0),
            max_grad_norm: 1.0,
            batch_size: s.batch_size,
            grad_accum: 1,
            steps: Some(s.steps),
            seed: s.seed,
            pad_id,
            out: None,
            base_model: model.name.clone(),
            ..TrainOptions::default()
        };
        let (train_rows, eval_rows) = (train.len(), eval.len());
        let trainer = Trainer::new(llama, lora.clone(), train, eval, opts).map_err(js_err)?;
        let trainable: usize = param_values(trainer.model())
            .iter()
            .map(|(_, t)| t.dims().iter().product::<usize>())
            .sum();
        out["run"] = json!({
            "rows": rows,
            "train_rows": train_rows,
            "eval_rows": eval_rows,
            "format": data.format.name(),
            "tokens": tokens,
            "longest": longest,
            "total_steps": trainer.state().total_steps,
            "trainable": trainable,
        });
        inner.run = Some(Run { trainer, lora });
        Ok(out.to_string())
    }

    /// One optimizer step. Resolves to `{"step", "total_steps", "loss", "grad_norm", "lr",
    /// "tokens", "ms", "tokens_per_s", "mem_bytes", "done"}`.
    pub fn train_step(&self) -> js_sys::Promise {
        let inner = self.inner.clone();
        let device = self.device.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let started = now_ms();
            let (pending, total) = {
                let mut guard = inner.try_borrow_mut().map_err(|_| js_err(BUSY))?;
                let run = guard
                    .run
                    .as_mut()
                    .ok_or_else(|| js_err("prepare a run first"))?;
                let total = run.trainer.state().total_steps;
                if run.trainer.state().step >= total {
                    return Err(js_err("the run is finished; prepare a new one"));
                }
                (run.trainer.step_pending().map_err(js_err)?, total)
            };
            let data = Transaction::default()
                .register(pending.loss_sum)
                .register(pending.grad_norm)
                .execute_async()
                .await
                .map_err(|e| js_err(format!("reading the step's loss: {e:?}")))?;
            let loss = scalar(&data[0])? / pending.targets as f64;
            let grad_norm = scalar(&data[1])?;
            if !loss.is_finite() {
                return Err(js_err(format!(
                    "step {}: the loss is {loss}; lower the learning rate",
                    pending.step
                )));
            }
            let ms = now_ms() - started;
            Ok(JsValue::from_str(
                &json!({
                    "step": pending.step,
                    "total_steps": total,
                    "loss": loss,
                    "grad_norm": grad_norm,
                    "lr": pending.lr,
                    "tokens": pending.tokens,
                    "ms": ms,
                    "tokens_per_s": pending.tokens as f64 / (ms / 1000.0).max(1e-9),
                    "mem_bytes": mem_bytes(&device),
                    "done": pending.step >= total,
                })
                .to_string(),
            ))
        })
    }

    /// The mean loss over every target token of the eval rows, with the adapter as trained so
    /// far (dropout off). Resolves to `{"loss", "tokens", "ms"}`.
    pub fn evaluate(&self) -> js_sys::Promise {
        let inner = self.inner.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let started = now_ms();
            let sums = {
                let guard = inner.try_borrow().map_err(|_| js_err(BUSY))?;
                let run = guard
                    .run
                    .as_ref()
                    .ok_or_else(|| js_err("prepare a run first"))?;
                run.trainer.eval_sums()
            };
            let (sum, count) = sums.ok_or_else(|| js_err("no eval rows with targets"))?;
            let data = Transaction::default()
                .register(sum)
                .register(count)
                .execute_async()
                .await
                .map_err(|e| js_err(format!("reading the eval loss: {e:?}")))?;
            let (sum, count) = (scalar(&data[0])?, scalar(&data[1])?);
            Ok(JsValue::from_str(
                &json!({"loss": sum / count, "tokens": count, "ms": now_ms() - started})
                    .to_string(),
            ))
        })
    }

    /// Generates up to `max_new_tokens` after `prompt` (as a chat turn when `chat`, else as
    /// raw text to continue), greedy when `temperature` is 0, with the trained adapter or
    /// without it. `on_piece(text)` gets each decoded piece as it comes. Resolves to
    /// `{"text", "tokens", "tokens_per_s"}`.
    pub fn generate(
        &self,
        prompt: String,
        max_new_tokens: usize,
        temperature: f32,
        chat: bool,
        with_adapter: bool,
        on_piece: Function,
    ) -> js_sys::Promise {
        let inner = self.inner.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let (model, tokenizer, ids, stops) = {
                let guard = inner.try_borrow().map_err(|_| js_err(BUSY))?;
                let loaded = guard
                    .model
                    .as_ref()
                    .ok_or_else(|| js_err("load a model first"))?;
                let tokenizer = loaded
                    .tokenizer
                    .clone()
                    .ok_or_else(|| js_err("this model has no tokenizer, so it cannot chat"))?;
                let model = match (&guard.run, with_adapter) {
                    (Some(run), true) => {
                        let mut m = run.trainer.model().clone().no_grad();
                        peft::set_dropout_active(&mut m, false);
                        m
                    }
                    _ => loaded.base.clone().no_grad(),
                };
                let (text, add_special) = if chat {
                    let rendered = loaded
                        .template
                        .render(&[Message::new("user", prompt.as_str())], true)
                        .map_err(js_err)?;
                    (rendered, false)
                } else {
                    (prompt.clone(), true)
                };
                let ids = tokenizer.encode(&text, add_special).map_err(js_err)?;
                let stops = if chat {
                    reply_stop_ids(&tokenizer, &loaded.template)
                } else {
                    tokenizer.eos_id().into_iter().collect()
                };
                (model, tokenizer, ids, stops)
            };
            let budget = token_budget(&model, ids.len(), max_new_tokens).map_err(js_err)?;
            let options = SamplingOptions {
                temperature,
                ..SamplingOptions::default()
            };
            let mut sampler = Sampler::new(options, 0);
            let mut decoder = tokenizer.stream_decoder(true);
            let mut cache = model.new_cache();
            let mut input = ids;
            let mut text = String::new();
            let mut count = 0usize;
            let started = now_ms();
            while count < budget {
                let logits = last_logits_tensor(&model, &input, &mut cache)
                    .into_data_async()
                    .await
                    .map_err(|e| js_err(format!("reading logits: {e:?}")))?
                    .try_into_vec::<f32>()
                    .map_err(|e| js_err(format!("reading logits: {e:?}")))?;
                let next = sampler.sample(&logits);
                count += 1;
                if stops.contains(&next) {
                    break;
                }
                let piece = decoder.step(next).map_err(js_err)?;
                if !piece.is_empty() {
                    text.push_str(&piece);
                    let _ = on_piece.call1(&JsValue::NULL, &JsValue::from_str(&piece));
                }
                input = vec![next];
            }
            let rest = decoder.flush().map_err(js_err)?;
            if !rest.is_empty() {
                text.push_str(&rest);
                let _ = on_piece.call1(&JsValue::NULL, &JsValue::from_str(&rest));
            }
            let secs = (now_ms() - started) / 1000.0;
            Ok(JsValue::from_str(
                &json!({"text": text, "tokens": count, "tokens_per_s": count as f64 / secs.max(1e-9)})
                    .to_string(),
            ))
        })
    }

    /// The trained adapter as a PEFT directory in a ZIP archive (`adapter/adapter_config.json`,
    /// `adapter/adapter_model.safetensors`), which `wgtune --adapter` and PEFT load.
    pub fn adapter_zip(&self) -> js_sys::Promise {
        let inner = self.inner.clone();
        wasm_bindgen_futures::future_to_promise(async move {
            let (named, lora, base) = {
                let guard = inner.try_borrow().map_err(|_| js_err(BUSY))?;
                let run = guard
                    .run
                    .as_ref()
                    .ok_or_else(|| js_err("train an adapter first"))?;
                let base = guard
                    .model
                    .as_ref()
                    .map_or(String::new(), |m| m.name.clone());
                // PEFT names, as the native adapter writer uses them.
                let named = param_values(run.trainer.model());
                (named, run.lora.clone(), base)
            };
            let mut tensors = BTreeMap::new();
            for (name, t) in named {
                let shape = t.dims().to_vec();
                let values = t
                    .inner()
                    .into_data_async()
                    .await
                    .map_err(|e| js_err(format!("reading {name}: {e:?}")))?
                    .try_into_vec::<f32>()
                    .map_err(|e| js_err(format!("reading {name}: {e:?}")))?;
                tensors.insert(name, OwnedTensor::f32(shape, &values));
            }
            let dir = PathBuf::from("adapter");
            let files =
                peft::adapter_dir::adapter_files(&tensors, &lora, &base, &dir).map_err(js_err)?;
            let entries: Vec<(String, Vec<u8>)> = files
                .into_iter()
                .map(|(name, bytes)| (format!("adapter/{name}"), bytes))
                .collect();
            let zip = wgtune::io::zip::store(&entries).map_err(js_err)?;
            Ok(Uint8Array::from(zip.as_slice()).into())
        })
    }
}

/// burn's WebGPU device and the handles behind it: acquired by burn (the adapter's limits), or
/// with `default_limits` from a setup of ours registered with burn.
async fn open_device(default_limits: bool) -> Result<(Device, WgpuSetup), String> {
    if !default_limits {
        return Device::wgpu_options()
            .init_with_setup_async()
            .await
            .map_err(|e| e.to_string());
    }
    let setup = setup_with_default_limits().await?;
    let device = Device::wgpu_options()
        .setup(setup.clone())
        .init()
        .map_err(|e| e.to_string())?;
    Ok((device, setup))
}

/// The browser's WebGPU adapter with a device at WebGPU's default limits (what burn's own
/// acquisition requests otherwise: the adapter's features, and its limits).
async fn setup_with_default_limits() -> Result<WgpuSetup, String> {
    let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::BROWSER_WEBGPU,
        ..wgpu::InstanceDescriptor::new_without_display_handle()
    });
    let adapter = instance
        .request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let (device, queue) = adapter
        .request_device(&wgpu::DeviceDescriptor {
            label: None,
            required_features: adapter
                .features()
                .difference(wgpu::Features::MAPPABLE_PRIMARY_BUFFERS),
            required_limits: wgpu::Limits::default(),
            memory_hints: wgpu::MemoryHints::MemoryUsage,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    Ok(WgpuSetup {
        instance,
        adapter,
        device,
        queue,
        backend: wgpu::Backend::BrowserWebGpu,
    })
}

const BUSY: &str = "another operation is still running; wait for it to finish";

/// The one value of a `[1]` tensor read back.
fn scalar(data: &burn::tensor::TensorData) -> Result<f64, JsValue> {
    data.clone()
        .try_into_vec::<f32>()
        .map_err(|e| js_err(format!("{e:?}")))?
        .first()
        .copied()
        .map(f64::from)
        .ok_or_else(|| js_err("empty read-back"))
}

/// Weights of the model (embedding, head when untied, layers), for display.
fn param_count(c: &LlamaConfig) -> u64 {
    let (h, i, v, l) = (
        c.hidden_size as u64,
        c.intermediate_size as u64,
        c.vocab_size as u64,
        c.num_hidden_layers as u64,
    );
    let kv = (c.num_kv_heads() * c.head_dim()) as u64;
    let q = (c.num_attention_heads * c.head_dim()) as u64;
    let layer = h * q + 2 * h * kv + q * h + 3 * h * i + 2 * h;
    let head = if c.tie_word_embeddings { 0 } else { v * h };
    v * h + head + l * layer + h
}
