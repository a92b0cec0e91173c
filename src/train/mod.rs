//! Training LoRA adapters on the frozen model: the optimizer ([`optim`]), learning-rate
//! schedules ([`schedule`]), one micro-batch's loss and gradients with optional per-layer
//! activation checkpointing ([`step`]), the loop ([`trainer`]) with its checkpoints
//! ([`checkpoint`]), metrics ([`metrics`]), loss plot ([`plot`]) and settings ([`config`]).

pub mod checkpoint;
pub mod config;
pub mod metrics;
pub mod optim;
#[cfg(feature = "native")]
pub mod plot;
pub mod schedule;
pub mod step;
pub mod trainer;

pub use config::TrainConfig;
pub use optim::{AdamW, AdamWConfig, clip_global_norm};
pub use schedule::{Schedule, ScheduleKind};
pub use trainer::{
    Event, MAX_STEP_EXAMPLES, PendingStep, RunEnd, TrainError, TrainOptions, Trainer,
};
