//! Training LoRA adapters on the frozen model: the optimizer ([`optim`]), learning-rate
//! schedules ([`schedule`]), one micro-batch's loss and gradients with optional per-layer
//! activation checkpointing ([`step`]).

pub mod optim;
pub mod schedule;
pub mod step;

pub use optim::{AdamW, AdamWConfig, clip_global_norm};
pub use schedule::{Schedule, ScheduleKind};
