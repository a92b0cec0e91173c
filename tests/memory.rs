//! A backward pass through a quantized linear holds no dequantized weight.
//!
//! Its own test binary: device memory is measured device-wide, so no other test may allocate on
//! the wgpu device meanwhile.

mod common;

use common::{rand_vec, tensor, wgpu};
use wgtune::ops::{self, OpsPath, QWeight};
use wgtune::quant::{QuantConfig, QuantizedTensor};

/// Device bytes in use after a forward pass that records the graph for backward.
fn retained_by_forward(w: &QWeight, device: &burn::tensor::Device, m: usize) -> u64 {
    let k = w.layout().in_features;
    let usage = || {
        device.sync().expect("sync");
        device
            .memory_pool_usage()
            .expect("wgpu reports memory")
            .bytes_in_use
    };
    let x = tensor(rand_vec(m * k, 17), [m, k], device).require_grad();
    let before = usage();
    let y = ops::qmatmul(x.clone(), w);
    let loss = y.sum();
    let after = usage();
    let grads = loss.backward();
    assert!(x.grad(&grads).is_some());
    after.saturating_sub(before)
}

#[test]
fn backward_through_quantized_linear_holds_no_dequantized_weight() {
    let device = wgpu().autodiff();
    let (n, k) = (1024, 1024);
    let f32_weight = (n * k * 4) as u64;
    let q = QuantizedTensor::quantize(&rand_vec(n * k, 18), &[n, k], QuantConfig::default())
        .expect("quantize");
    let w = QWeight::upload(&q, &device);
    assert!(
        (w.size_bytes() as u64) < f32_weight / 6,
        "NF4 is ~1/7 of f32"
    );
    for m in [8usize, 256] {
        let ours = retained_by_forward(&w, &device, m);
        assert!(
            ours < f32_weight,
            "M={m}: forward retained {ours} bytes, not under the f32 weight ({f32_weight})"
        );
        // The same function through plain burn ops keeps the dequantized copy for backward:
        // the measurement can tell the two apart.
        let reference = w.clone().with_path(OpsPath::Reference);
        let theirs = retained_by_forward(&reference, &device, m);
        println!(
            "M={m}: forward retains {ours} bytes (kernel) vs {theirs} (reference); f32 weight {f32_weight}"
        );
        assert!(
            theirs >= f32_weight * 9 / 10,
            "M={m}: the reference path should retain a dequantized copy ({theirs} bytes)"
        );
    }
}
