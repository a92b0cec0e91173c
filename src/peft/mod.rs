//! Parameter-efficient fine-tuning on top of the frozen model: LoRA adapters ([`lora`]: targets,
//! config, PEFT's init), PEFT adapter directories ([`adapter_dir`]: read, apply, save), folding
//! an adapter into the base ([`merge`]), and Quantized Side Tuning's side network ([`qst`]).

pub mod adapter_dir;
pub mod lora;
pub mod merge;
pub mod qst;

pub use adapter_dir::{AdapterError, AdapterFile};
pub use lora::{
    LoraConfig, TargetModule, adapters, attach, check_rank, set_dropout_active, without_adapters,
};
