//! The training loop: micro-batches in a seeded, length-grouped order, gradient accumulation,
//! clipping, AdamW under a schedule, evals, checkpoints, `metrics.jsonl`, and stopping cleanly
//! on request (Ctrl-C) with a checkpoint.
//!
//! The data position is `(epoch, batch in epoch)`; epoch `e`'s batch order is
//! `epoch_batches(lengths, batch_size, seed, e)`, so a resumed run sees the same batches.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::{Module, Param};
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::checkpoint::{self, CheckpointError, TrainState};
use super::metrics::{EvalMetrics, MetricsLine, MetricsLog, StepMetrics, mem_bytes};
use super::optim::{AdamW, AdamWConfig, clip_global_norm};
use super::schedule::{Schedule, ScheduleKind};
use super::step::{DeviceBatch, MicroResult, micro_step, mix_seed, param_values, params_mut};
use crate::data::batch::{collate, epoch_batches};
use crate::eval::Example;
use crate::model::Llama;
use crate::peft::qst::{self, QstError, SideNetwork};
use crate::peft::{self, AdapterError, LoraConfig};

/// The most examples one optimizer step may take (batch size x gradient accumulation).
pub const MAX_STEP_EXAMPLES: usize = 1 << 24;

/// How to train (the data and the model come separately).
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// AdamW β, ε, weight decay.
    pub adamw: AdamWConfig,
    /// Peak learning rate.
    pub lr: f64,
    /// Schedule after warmup.
    pub schedule: ScheduleKind,
    /// Warmup updates (see [`TrainOptions::warmup_ratio`]).
    pub warmup_steps: Option<u64>,
    /// Warmup as a fraction of the run when `warmup_steps` is `None`.
    pub warmup_ratio: f64,
    /// Global gradient-norm clip (`<= 0`: none).
    pub max_grad_norm: f64,
    /// Examples per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per update.
    pub grad_accum: usize,
    /// Updates; `None`: `epochs` passes over the data.
    pub steps: Option<u64>,
    /// Passes over the data when `steps` is `None`.
    pub epochs: u64,
    /// Seed of data order and dropout.
    pub seed: u64,
    /// Eval every N updates (0: at the end only).
    pub eval_every: u64,
    /// Checkpoint every N updates (0: at the end and when stopped only).
    pub save_every: u64,
    /// Checkpoints kept.
    pub save_total_limit: usize,
    /// Per-layer activation checkpointing.
    pub activation_checkpointing: bool,
    /// Id used to pad batches.
    pub pad_id: i64,
    /// Output directory for `metrics.jsonl` and checkpoints (`None`: nothing written).
    pub out: Option<PathBuf>,
    /// `base_model_name_or_path` for saved adapters.
    pub base_model: String,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            adamw: AdamWConfig::default(),
            lr: 2e-4,
            schedule: ScheduleKind::Cosine,
            warmup_steps: None,
            warmup_ratio: 0.03,
            max_grad_norm: 1.0,
            batch_size: 4,
            grad_accum: 1,
            steps: None,
            epochs: 1,
            seed: 42,
            eval_every: 0,
            save_every: 0,
            save_total_limit: 3,
            activation_checkpointing: true,
            pad_id: 0,
            out: None,
            base_model: String::new(),
        }
    }
}

/// Errors of a run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Checkpoint I/O.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// Adapter I/O.
    #[error(transparent)]
    Adapter(#[from] AdapterError),
    /// QST side network I/O.
    #[error(transparent)]
    Qst(#[from] QstError),
    /// `metrics.jsonl`.
    #[error("{path}: {cause}")]
    Metrics {
        /// The file.
        path: PathBuf,
        /// What the OS said (in the message, not also a `source()`).
        cause: std::io::Error,
    },
    /// Nothing to train on, or settings that cannot work.
    #[error("{0}")]
    Invalid(String),
    /// The loss stopped being a number.
    #[error(
        "step {step}: the loss is {loss} (diverged); lower --lr or set --max-grad-norm, \
         and resume from the last checkpoint"
    )]
    Diverged {
        /// The step.
        step: u64,
        /// The value.
        loss: f64,
    },
}

/// What the loop reports while it runs.
#[derive(Clone, Debug)]
pub enum Event {
    /// An update finished.
    Step(StepMetrics),
    /// An eval finished.
    Eval(EvalMetrics),
    /// A checkpoint was written.
    Checkpoint(PathBuf),
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq)]
pub enum RunEnd {
    /// Every planned step done.
    Finished,
    /// Stopped on request after this many steps; a checkpoint holds the state.
    Stopped(u64),
}

/// A model with adapters, its data and optimizer, and where the run stands.
pub struct Trainer {
    model: Llama,
    lora: LoraConfig,
    train: Vec<Example>,
    eval: Vec<Example>,
    opts: TrainOptions,
    opt: AdamW,
    names: Vec<String>,
    state: TrainState,
    schedule: Schedule,
    /// The current epoch's batch order, `(epoch, batches)`.
    batches: Option<(u64, Vec<Vec<usize>>)>,
}

/// One optimizer step whose results are still on the device ([`Trainer::step_pending`]).
pub struct PendingStep {
    /// Optimizer steps done, this one included.
    pub step: u64,
    /// Summed cross-entropy over the step's targets before the update, `[1]`.
    pub loss_sum: Tensor<1>,
    /// Target tokens of the step (the loss is `loss_sum / targets`).
    pub targets: usize,
    /// Global gradient norm before clipping, `[1]`.
    pub grad_norm: Tensor<1>,
    /// Learning rate of the update.
    pub lr: f64,
    /// Tokens (not padding) in the step's batches.
    pub tokens: usize,
}

impl Trainer {
    /// A trainer for `model` (on an autodiff device), starting at step 0. What trains: the QST
    /// side network when `model.side` holds one, else the LoRA adapters attached to the model
    /// (described by `lora`, which is what saved adapters record).
    pub fn new(
        mut model: Llama,
        lora: LoraConfig,
        train: Vec<Example>,
        eval: Vec<Example>,
        opts: TrainOptions,
    ) -> Result<Self, TrainError> {
        if train.is_empty() {
            return Err(TrainError::Invalid("no training examples".to_string()));
        }
        opts.adamw.validate().map_err(TrainError::Invalid)?;
        // A step's micro-batches are collated before it runs, so its size is bounded.
        let per_step = opts.batch_size.checked_mul(opts.grad_accum);
        if per_step.is_none_or(|n| n == 0 || n > MAX_STEP_EXAMPLES) {
            return Err(TrainError::Invalid(format!(
                "batch size {} x gradient accumulation {}: an optimizer step takes 1 to \
                 {MAX_STEP_EXAMPLES} examples",
                opts.batch_size, opts.grad_accum
            )));
        }
        if !model.device().is_autodiff() {
            return Err(TrainError::Invalid(
                "the model must be loaded on an autodiff device to train".to_string(),
            ));
        }
        peft::set_dropout_active(&mut model, true);
        let params = trainable(&model);
        if params.is_empty() {
            return Err(TrainError::Invalid(
                "the model has no adapters to train".to_string(),
            ));
        }
        let names = params.iter().map(|(n, _)| n.clone()).collect();
        let values: Vec<Tensor<2>> = params.into_iter().map(|(_, t)| t.inner()).collect();
        let opt = AdamW::new(opts.adamw, &values);
        let per_epoch =
            (train.len().div_ceil(opts.batch_size.max(1))).div_ceil(opts.grad_accum.max(1)) as u64;
        let total = opts.steps.unwrap_or(per_epoch * opts.epochs.max(1)).max(1);
        let warmup = opts
            .warmup_steps
            .unwrap_or_else(|| (opts.warmup_ratio * total as f64).ceil() as u64);
        let schedule = Schedule {
            lr: opts.lr,
            kind: opts.schedule,
            warmup,
            total,
        };
        let state = TrainState {
            step: 0,
            total_steps: total,
            epoch: 0,
            batch_in_epoch: 0,
            tokens: 0,
            elapsed_s: 0.0,
            seed: opts.seed,
            train_examples: train.len(),
        };
        Ok(Trainer {
            model,
            lora,
            train,
            eval,
            opts,
            opt,
            names,
            state,
            schedule,
            batches: None,
        })
    }

    /// The model (adapters as trained so far).
    pub fn model(&self) -> &Llama {
        &self.model
    }

    /// The model, for generation after training (dropout off).
    pub fn into_model(self) -> Llama {
        let mut model = self.model;
        peft::set_dropout_active(&mut model, false);
        model
    }

    /// Where the run stands.
    pub fn state(&self) -> &TrainState {
        &self.state
    }

    /// Continues from checkpoint `dir`: adapter, optimizer moments, step, data position.
    pub fn resume(&mut self, dir: &Path) -> Result<(), TrainError> {
        let state = checkpoint::read_state(dir)?;
        if state.train_examples != self.train.len() || state.seed != self.opts.seed {
            return Err(CheckpointError::Invalid {
                path: dir.join(checkpoint::STATE_FILE),
                reason: format!(
                    "saved by a run with {} training examples and seed {}, this one has {} and \
                     seed {}; resume with the same data and settings",
                    state.train_examples,
                    state.seed,
                    self.train.len(),
                    self.opts.seed
                ),
            }
            .into());
        }
        if self.model.side.is_some() {
            let device = self.model.device();
            self.model.side = Some(SideNetwork::load(dir, &self.model.config, &device)?);
        } else {
            peft::AdapterFile::read(dir)?.apply(&mut self.model)?;
            peft::set_dropout_active(&mut self.model, true);
        }
        let params = trainable(&self.model);
        let names: Vec<String> = params.iter().map(|(n, _)| n.clone()).collect();
        if names != self.names {
            return Err(CheckpointError::Invalid {
                path: dir.to_path_buf(),
                reason: "the checkpoint's adapter covers other modules than this run's".to_string(),
            }
            .into());
        }
        let shapes: Vec<[usize; 2]> = params.iter().map(|(_, t)| t.dims()).collect();
        let device = self.model.device().inner();
        let (m, v) = checkpoint::read_moments(dir, &names, &shapes, &device)?;
        self.opt.m = m;
        self.opt.v = v;
        self.opt.step = state.step;
        self.schedule.total = state.total_steps;
        self.state = state;
        Ok(())
    }

    /// Summed loss and target count over the eval set, `[1]` each on the device, without
    /// reading them back (`None` without an eval set or targets).
    pub fn eval_sums(&self) -> Option<(Tensor<1>, Tensor<1>)> {
        let mut model = self.model.clone().no_grad();
        peft::set_dropout_active(&mut model, false);
        let device = model.device();
        let mut acc: Option<(Tensor<1>, Tensor<1>)> = None;
        for chunk in self.eval.chunks(self.opts.batch_size.max(1)) {
            let refs: Vec<&Example> = chunk.iter().collect();
            let b = collate(&refs, self.opts.pad_id);
            if b.targets == 0 || b.seq < 2 {
                continue;
            }
            let db = device_batch(&b.input_ids, &b.labels, [b.batch, b.seq], &device);
            let (s, n) = model.loss_sum(db.input_ids, db.labels);
            let (s, n) = (s.inner(), n.inner());
            acc = Some(match acc {
                None => (s, n),
                Some((a, c)) => (a + s, c + n),
            });
        }
        acc
    }

    /// Mean loss over every target token of the eval set (`None` without one).
    pub fn evaluate(&self) -> Option<f64> {
        let (sum, count) = self.eval_sums()?;
        let count = f64::from(count.into_scalar::<f32>());
        (count > 0.0).then(|| f64::from(sum.into_scalar::<f32>()) / count)
    }

    /// One optimizer step (its micro-batches, clipping, AdamW) without reading anything back
    /// from the device: the loss and gradient norm come back as tensors, so a caller can read
    /// them synchronously (native) or asynchronously (a browser, where blocking is not allowed).
    pub fn step_pending(&mut self) -> Result<PendingStep, TrainError> {
        let device = self.model.device();
        // The step's micro-batches, and its target count (the loss's denominator).
        let mut micro = Vec::with_capacity(self.opts.grad_accum.max(1));
        for _ in 0..self.opts.grad_accum.max(1) {
            if self.state.batch_in_epoch >= self.batches_of(self.state.epoch).len() {
                self.state.epoch += 1;
                self.state.batch_in_epoch = 0;
            }
            let (epoch, at) = (self.state.epoch, self.state.batch_in_epoch);
            let idx = self.batches_of(epoch)[at].clone();
            let refs: Vec<&Example> = idx.iter().map(|&i| &self.train[i]).collect();
            let tokens: usize = refs.iter().map(|e| e.input_ids.len()).sum();
            micro.push((collate(&refs, self.opts.pad_id), tokens));
            self.state.batch_in_epoch += 1;
        }
        let denom: usize = micro.iter().map(|(b, _)| b.targets).sum();
        let tokens: usize = micro.iter().map(|(_, t)| t).sum();
        let mut loss_sum: Option<Tensor<1>> = None;
        let mut grads: Option<Vec<Tensor<2>>> = None;
        for (k, (b, _)) in micro.iter().enumerate() {
            if b.targets == 0 || b.seq < 2 {
                continue;
            }
            let db = device_batch(&b.input_ids, &b.labels, [b.batch, b.seq], &device);
            let seed = mix_seed(self.opts.seed, self.state.step, k as u64);
            let out = match &self.model.side {
                Some(side) => {
                    let run = if self.opts.activation_checkpointing {
                        qst::loss_and_grads_checkpointed
                    } else {
                        qst::loss_and_grads
                    };
                    let (loss_sum, grads) =
                        run(&self.model, side, db.input_ids, db.labels, denom as f64);
                    MicroResult { loss_sum, grads }
                }
                None => micro_step(
                    &self.model,
                    &db,
                    denom as f64,
                    self.opts.activation_checkpointing,
                    seed,
                ),
            };
            loss_sum = Some(match loss_sum {
                None => out.loss_sum,
                Some(acc) => acc + out.loss_sum,
            });
            grads = Some(match grads {
                None => out.grads,
                Some(acc) => acc.into_iter().zip(out.grads).map(|(a, g)| a + g).collect(),
            });
        }
        let (Some(loss_sum), Some(mut grads)) = (loss_sum, grads) else {
            return Err(TrainError::Invalid(format!(
                "step {}: no target tokens in the step's batches",
                self.state.step + 1
            )));
        };
        let grad_norm = clip_global_norm(&mut grads, self.opts.max_grad_norm);
        let lr = self.schedule.lr_at(self.state.step);
        let values: Vec<Tensor<2>> = trainable(&self.model)
            .into_iter()
            .map(|(_, t)| t.inner())
            .collect();
        let new = self.opt.step(values, &grads, lr);
        for ((_, p), v) in trainable_mut(&mut self.model).into_iter().zip(new) {
            *p = Param::from_tensor(v.autodiff());
        }
        self.state.step += 1;
        self.state.tokens += tokens as u64;
        Ok(PendingStep {
            step: self.state.step,
            loss_sum,
            targets: denom,
            grad_norm,
            lr,
            tokens,
        })
    }

    /// Epoch `epoch`'s batches (index lists into the training set), computed once per epoch.
    fn batches_of(&mut self, epoch: u64) -> &[Vec<usize>] {
        if self.batches.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let lengths: Vec<usize> = self.train.iter().map(|e| e.input_ids.len()).collect();
            let order = epoch_batches(&lengths, self.opts.batch_size, self.opts.seed, epoch);
            self.batches = Some((epoch, order));
        }
        &self.batches.as_ref().expect("just set").1
    }

    /// Runs until every planned step is done or `stop` is set (checked between updates; a
    /// checkpoint is then written). `on_event` sees every step, eval and checkpoint.
    pub fn run(
        &mut self,
        stop: Option<&AtomicBool>,
        on_event: &mut dyn FnMut(&Event),
    ) -> Result<RunEnd, TrainError> {
        let mut log = match &self.opts.out {
            Some(out) => {
                let path = out.join("metrics.jsonl");
                Some(
                    MetricsLog::open(&path, self.state.step)
                        .map_err(|cause| TrainError::Metrics { path, cause })?,
                )
            }
            None => None,
        };
        let mut emit = |event: Event, log: &mut Option<MetricsLog>| -> Result<(), TrainError> {
            let line = match &event {
                Event::Step(m) => Some(MetricsLine::Step(m.clone())),
                Event::Eval(m) => Some(MetricsLine::Eval(m.clone())),
                Event::Checkpoint(_) => None,
            };
            if let (Some(log), Some(line)) = (log.as_mut(), line) {
                log.write(&line).map_err(|cause| TrainError::Metrics {
                    path: log.path().to_path_buf(),
                    cause,
                })?;
            }
            on_event(&event);
            Ok(())
        };
        let device = self.model.device();
        // The eval loss before any update, as the curve's starting point.
        if self.state.step == 0
            && let Some(eval_loss) = self.evaluate()
        {
            emit(Event::Eval(EvalMetrics { step: 0, eval_loss }), &mut log)?;
        }
        while self.state.step < self.state.total_steps {
            if stop.is_some_and(|s| s.load(Ordering::SeqCst)) {
                let path = self.save_checkpoint()?;
                emit(Event::Checkpoint(path), &mut log)?;
                return Ok(RunEnd::Stopped(self.state.step));
            }
            let started = Instant::now();
            let pending = self.step_pending()?;
            let loss = f64::from(pending.loss_sum.into_scalar::<f32>()) / pending.targets as f64;
            if !loss.is_finite() {
                return Err(TrainError::Diverged {
                    step: self.state.step,
                    loss,
                });
            }
            let (lr, step_tokens) = (pending.lr, pending.tokens);
            let grad_norm = f64::from(pending.grad_norm.into_scalar::<f32>());
            let secs = started.elapsed().as_secs_f64();
            self.state.elapsed_s += secs;
            let metrics = StepMetrics {
                step: self.state.step,
                loss,
                lr,
                grad_norm,
                tokens: self.state.tokens,
                tokens_per_s: step_tokens as f64 / secs.max(1e-9),
                elapsed_s: self.state.elapsed_s,
                mem_bytes: mem_bytes(&device),
            };
            emit(Event::Step(metrics), &mut log)?;
            let last = self.state.step == self.state.total_steps;
            let eval_now = if self.opts.eval_every > 0 {
                self.state.step.is_multiple_of(self.opts.eval_every) || last
            } else {
                last
            };
            if eval_now && let Some(eval_loss) = self.evaluate() {
                emit(
                    Event::Eval(EvalMetrics {
                        step: self.state.step,
                        eval_loss,
                    }),
                    &mut log,
                )?;
            }
            let save_now = last
                || (self.opts.save_every > 0
                    && self.state.step.is_multiple_of(self.opts.save_every));
            if save_now && self.opts.out.is_some() {
                let path = self.save_checkpoint()?;
                emit(Event::Checkpoint(path), &mut log)?;
            }
        }
        Ok(RunEnd::Finished)
    }

    /// Writes a checkpoint of the current state under `out/checkpoints` (no-op without `out`).
    pub fn save_checkpoint(&self) -> Result<PathBuf, TrainError> {
        let Some(out) = &self.opts.out else {
            return Err(TrainError::Invalid("no output directory".to_string()));
        };
        let model = &self.model;
        let (lora, base) = (&self.lora, &self.opts.base_model);
        Ok(checkpoint::save(
            out,
            &self.state,
            &self.names,
            (&self.opt.m, &self.opt.v),
            self.opts.save_total_limit,
            |dir| save_trainable(model, lora, base, dir),
        )?)
    }

    /// Writes the adapter as a PEFT directory.
    pub fn save_adapter(&self, dir: &Path) -> Result<(), TrainError> {
        Ok(save_trainable(
            &self.model,
            &self.lora,
            &self.opts.base_model,
            dir,
        )?)
    }
}

/// The trained tensors by name: the side network's, or the LoRA adapters'.
fn trainable(model: &Llama) -> Vec<(String, Tensor<2>)> {
    match &model.side {
        Some(side) => side.named_params(),
        None => param_values(model),
    }
}

/// [`trainable`], as parameters to replace.
fn trainable_mut(model: &mut Llama) -> Vec<(String, &mut Param<Tensor<2>>)> {
    match model.side {
        Some(ref mut side) => side.params_mut(),
        None => params_mut(model),
    }
}

/// Saves what trains into `dir`: a QST directory or a PEFT adapter directory.
fn save_trainable(
    model: &Llama,
    lora: &LoraConfig,
    base: &str,
    dir: &Path,
) -> Result<(), CheckpointError> {
    match &model.side {
        Some(side) => Ok(side.save(dir)?),
        None => Ok(peft::adapter_dir::save(model, lora, base, dir)?),
    }
}

/// Host ids/labels -> a [`DeviceBatch`].
fn device_batch(ids: &[i64], labels: &[i64], shape: [usize; 2], device: &Device) -> DeviceBatch {
    let t = |v: &[i64]| Tensor::<2, Int>::from_data(TensorData::new(v.to_vec(), shape), device);
    DeviceBatch {
        input_ids: t(ids),
        labels: t(labels),
    }
}
