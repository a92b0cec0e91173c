//! Devices, comparisons and the default model, shared by the integration tests.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use burn::tensor::{Device, DeviceKind, Tensor};
use wgtune::io::model_cache::{default_model_path, pip_available};

/// The default model (SmolLM2-135M-Instruct GGUF), or `None` after a visible
/// `SKIPPED: pip not found (..){what}` line when it is not cached and pip is absent. Any other
/// failure to get it fails the test.
pub fn default_model(what: &str) -> Option<PathBuf> {
    match default_model_path() {
        Ok(p) => Some(p),
        Err(e) if !pip_available() => {
            // Direct to stderr: the test harness captures eprintln! but not this.
            let _ = writeln!(std::io::stderr(), "SKIPPED: pip not found ({e}){what}");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

/// `rel` inside the fixtures' tiny LLaMA (`../shared/fixtures/tiny-llama`).
pub fn tiny_llama(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/fixtures/tiny-llama")
        .join(rel)
}

/// The `wgtune` binary run with `args`, to completion.
pub fn wgtune<S: AsRef<OsStr>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wgtune"))
        .args(args)
        .output()
        .expect("run wgtune")
}

/// The wgpu device: Mesa's llvmpipe on a machine without a GPU (what CI has), a real adapter
/// elsewhere. `CUBECL_WGPU_DEFAULT_DEVICE=Cpu` pins llvmpipe on a machine with a GPU.
pub fn wgpu() -> Device {
    Device::wgpu(DeviceKind::DefaultDevice)
}

/// burn's CPU backend, where the reference implementation runs as the oracle.
pub fn cpu() -> Device {
    wgtune::device::cpu_backend()
}

/// Host copy of a tensor's values.
pub fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32 data")
}

/// max |a - b| / max |b|: the relative error of `a` against the reference `b`.
/// A NaN or infinite difference anywhere fails (`f32::max` alone would skip a NaN).
pub fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let err = wgtune::ops::check::rel_err(a, b);
    assert!(err.is_finite(), "non-finite difference");
    err
}

/// Deterministic pseudo-random values in [-1, 1) (xorshift), so failures reproduce.
pub fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    wgtune::ops::check::noise(n, seed)
}

pub fn tensor<const D: usize>(values: Vec<f32>, shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(burn::tensor::TensorData::new(values, shape), device)
}
