//! wgtune: QLoRA fine-tuning of LLaMA-family models with 4-bit frozen weights on any GPU,
//! through hand-written WGSL kernels inside burn's autograd.
//!
//! Data flows one way: [`io`] loads files, [`quant`] packs weights into 4-bit blocks, [`ops`]
//! runs the quantized and LoRA products on the device (WGSL on wgpu, plain burn ops elsewhere).

#[cfg(feature = "native")]
pub mod cli;
pub mod data;
pub mod device;
pub mod eval;
pub mod generate;
pub mod io;
pub mod limits;
pub mod model;
pub mod ops;
pub mod peft;
pub mod pretrained;
pub mod quant;
pub mod train;
