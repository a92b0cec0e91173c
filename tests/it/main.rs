//! The integration tests, as one test binary: each module was its own binary, and each cost
//! a link and a full monomorphization of burn (about 85 s of CPU apiece in a cold release
//! build), which made up most of CI's build time. `memory.rs` and `qst.rs` stay binaries of
//! their own: they measure device memory device-wide, so no test of another module may allocate
//! on the wgpu device meanwhile.

#[path = "../common/mod.rs"]
mod common;

mod adapter_config;
mod bnb_checkpoint;
mod cli_eval;
mod cli_merge;
mod cli_quantize;
mod cli_serve_web;
mod cli_train;
mod data_formats;
mod gguf;
mod kernels;
mod lora_peft;
mod model_files;
mod model_tiny_llama;
mod quant_fixtures;
mod shaders;
mod smollm2;
mod tokenizer;
