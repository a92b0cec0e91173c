//! The WGSL kernels, run for real on the wgpu device (llvmpipe in CI), against the reference
//! implementation on burn's CPU backend, over ragged shapes.
//!
//! Tolerances: forward 1e-4 and gradients 1e-3, relative to the largest reference value. Both
//! sides compute the same f32 products; only the summation order differs (tiles vs ndarray's
//! matmul), which for K <= 1000 stays orders of magnitude below these bounds, while any indexing,
//! nibble-order or statistics mistake moves values by O(1).

use crate::common;

use burn::tensor::Tensor;
use common::{cpu, rand_vec, rel_err, tensor, values, wgpu};
use wgtune::ops::{self, MatmulStrategy, OpsPath, QWeight, dispatch};
use wgtune::quant::{QuantConfig, QuantFormat, QuantizedTensor};

const FWD_TOL: f32 = 1e-4;
const GRAD_TOL: f32 = 1e-3;

/// (N, K, blocksize): K and N off every tile and block multiple, odd element counts included;
/// the subgroup kernels (4, 8 or 16 lanes) need whole chunks of 64 or less: of K for X Wᵀ at
/// K = 192, of N for dY W at N = 64 (where K = 200 is off their 16 to 64 columns of dX).
const SHAPES: [(usize, usize, usize); 5] = [
    (33, 70, 64),
    (70, 200, 128),
    (7, 1000, 64),
    (37, 192, 64),
    (64, 200, 128),
];

/// Every kernel path, each forced whatever the adapter (the tiled kernel and the GEMM need
/// K % 8 == 0: at K = 70 they hand over to the group kernel and to dequantize+matmul; the
/// subgroup kernels run where the adapter has subgroups and the shape whole chunks, and are the
/// adapter's fused kernel elsewhere): the page's check list (`ops::check::STRATEGIES`), plus the
/// timed choice among them and the adapter's fused kernel.
fn strategies() -> Vec<MatmulStrategy> {
    let mut all = ops::check::STRATEGIES.to_vec();
    all.extend([MatmulStrategy::Tuned, MatmulStrategy::Fused]);
    all
}

fn configs() -> Vec<QuantConfig> {
    let mut out = Vec::new();
    for format in [QuantFormat::Nf4, QuantFormat::Fp4] {
        for double_quant in [false, true] {
            out.push(QuantConfig {
                format,
                blocksize: 64,
                double_quant,
            });
        }
    }
    out
}

fn quantized(n: usize, k: usize, cfg: QuantConfig, seed: u64) -> QuantizedTensor {
    QuantizedTensor::quantize(&rand_vec(n * k, seed), &[n, k], cfg).expect("quantize")
}

#[test]
fn dequantize_matches_reference_and_host() {
    for cfg in configs() {
        for &(n, k, bs) in &SHAPES {
            let cfg = QuantConfig {
                blocksize: bs,
                ..cfg
            };
            let q = quantized(n, k, cfg, 1);
            let host = q.dequantize();
            let gpu = values(ops::dequantize(&QWeight::upload(&q, &wgpu())));
            let reference = values(ops::dequantize(&QWeight::upload(&q, &cpu())));
            assert!(
                rel_err(&gpu, &host) <= 1e-6,
                "{cfg:?} {n}x{k}: kernel vs host"
            );
            assert!(
                rel_err(&reference, &host) <= 1e-6,
                "{cfg:?} {n}x{k}: reference vs host"
            );
        }
    }
}

#[test]
fn qmatmul_forward_matches_reference() {
    for cfg in configs() {
        for &(n, k, bs) in &SHAPES {
            let q = quantized(
                n,
                k,
                QuantConfig {
                    blocksize: bs,
                    ..cfg
                },
                2,
            );
            let (wg, wc) = (QWeight::upload(&q, &wgpu()), QWeight::upload(&q, &cpu()));
            assert_eq!(wg.path(), OpsPath::Kernel);
            assert_eq!(wc.path(), OpsPath::Reference);
            for m in [1usize, 7, 64, 300] {
                let x = rand_vec(m * k, 3 + m as u64);
                let expect = values(ops::qmatmul(tensor(x.clone(), [m, k], &cpu()), &wc));
                for strategy in strategies() {
                    let got = values(ops::qmatmul_with(
                        tensor(x.clone(), [m, k], &wgpu()),
                        &wg,
                        strategy,
                    ));
                    let err = rel_err(&got, &expect);
                    assert!(
                        err <= FWD_TOL,
                        "{cfg:?} M={m} N={n} K={k} {strategy:?}: {err}"
                    );
                }
            }
        }
    }
}

/// The timed choice runs one of the kernels the shape allows, the same one for every product of
/// its shape class, with that kernel's exact output; a software adapter's `Auto` (llvmpipe, or
/// SwiftShader in CI's second run) times nothing.
#[test]
fn tuned_strategy_runs_the_kernel_it_timed_fastest() {
    let device = wgpu();
    // Shapes no other test uses, so no tuning ran for their classes: K = 136 holds whole
    // packed words (five candidates), K = 100 does not (two).
    for (n, k) in [(40usize, 136usize), (40, 100)] {
        let q = quantized(n, k, QuantConfig::default(), 20);
        let wg = QWeight::upload(&q, &device);
        for transposed in [false, true] {
            let allowed = dispatch::tune_candidates(ops::fit(&device, &wg), transposed);
            let inner = if transposed { n } else { k };
            let run = |m: usize, strategy| {
                let x = tensor(rand_vec(m * inner, 21 + m as u64), [m, inner], &device);
                values(if transposed {
                    ops::qmatmul_t_with(x, &wg, strategy)
                } else {
                    ops::qmatmul_with(x, &wg, strategy)
                })
            };
            let _ = run(20, MatmulStrategy::Auto);
            assert_eq!(
                ops::tuned_choice(&device, 20, &wg, transposed),
                None,
                "a software adapter's Auto keeps the measured rule"
            );
            let first = run(20, MatmulStrategy::Tuned);
            let chosen = ops::tuned_choice(&device, 20, &wg, transposed)
                .expect("a tuned product leaves its choice");
            assert!(
                allowed.contains(&chosen),
                "{n}x{k} transposed={transposed}: {chosen} is not a candidate for this shape"
            );
            // 17..32 rows are one class: the choice stands, and its output is the kernel's own.
            assert_eq!(
                ops::tuned_choice(&device, 32, &wg, transposed),
                Some(chosen)
            );
            assert_eq!(ops::tuned_choice(&device, 33, &wg, transposed), None);
            // Bit for bit: the same kernel on the same input.
            assert!(
                first == run(20, chosen),
                "{n}x{k} transposed={transposed}: the tuned product is not {chosen}'s"
            );
            assert!(
                run(31, MatmulStrategy::Tuned) == run(31, chosen),
                "{n}x{k} transposed={transposed}, 31 rows: the tuned product is not {chosen}'s"
            );
        }
    }
}

#[test]
fn qmatmul_keeps_batch_and_sequence_dimensions() {
    let cfg = QuantConfig::default();
    for ((n, k), (batch, seq)) in [
        ((70, 200), (2usize, 3usize)),
        ((70, 200), (3, 100)),
        ((37, 192), (3, 100)),
    ] {
        let q = quantized(n, k, cfg, 4);
        let (wg, wc) = (QWeight::upload(&q, &wgpu()), QWeight::upload(&q, &cpu()));
        let x = rand_vec(batch * seq * k, 5);
        let expect = ops::qmatmul(tensor(x.clone(), [batch, seq, k], &cpu()), &wc);
        for strategy in strategies() {
            let got = ops::qmatmul_with(tensor(x.clone(), [batch, seq, k], &wgpu()), &wg, strategy);
            assert_eq!(got.dims(), [batch, seq, n]);
            let err = rel_err(&values(got), &values(expect.clone()));
            assert!(err <= FWD_TOL, "[{batch},{seq},{k}] {strategy:?}: {err}");
        }
    }
}

#[test]
fn qmatmul_t_matches_reference() {
    for cfg in configs() {
        for &(n, k, bs) in &SHAPES {
            let q = quantized(
                n,
                k,
                QuantConfig {
                    blocksize: bs,
                    ..cfg
                },
                6,
            );
            let (wg, wc) = (QWeight::upload(&q, &wgpu()), QWeight::upload(&q, &cpu()));
            for m in [1usize, 7, 64, 300] {
                let dy = rand_vec(m * n, 7 + m as u64);
                let expect = values(ops::qmatmul_t(tensor(dy.clone(), [m, n], &cpu()), &wc));
                for strategy in strategies() {
                    let got = values(ops::qmatmul_t_with(
                        tensor(dy.clone(), [m, n], &wgpu()),
                        &wg,
                        strategy,
                    ));
                    let err = rel_err(&got, &expect);
                    assert!(
                        err <= FWD_TOL,
                        "{cfg:?} M={m} N={n} K={k} {strategy:?}: {err}"
                    );
                }
            }
        }
    }
}

/// Gradient of `sum(qmatmul(x, W) * r)` with respect to x, on one device.
fn qmatmul_input_grad(
    x: &[f32],
    r: &[f32],
    q: &QuantizedTensor,
    shape: [usize; 3],
    device: &burn::tensor::Device,
    strategy: MatmulStrategy,
) -> Vec<f32> {
    let device = device.clone().autodiff();
    let w = QWeight::upload(q, &device);
    let n = q.shape()[0];
    let x = tensor(x.to_vec(), shape, &device).require_grad();
    let r = tensor(r.to_vec(), [shape[0], shape[1], n], &device);
    let loss = (ops::qmatmul_with(x.clone(), &w, strategy) * r).sum();
    let grads = loss.backward();
    values(x.grad(&grads).expect("x has a gradient"))
}

#[test]
fn qmatmul_backward_matches_reference() {
    let (n, k) = (70, 200);
    for cfg in configs() {
        let q = quantized(n, k, cfg, 8);
        for shape in [[1usize, 1, k], [1, 7, k], [2, 150, k]] {
            let x = rand_vec(shape.iter().product(), 9);
            let r = rand_vec(shape[0] * shape[1] * n, 10);
            let expect = qmatmul_input_grad(&x, &r, &q, shape, &cpu(), MatmulStrategy::Auto);
            for strategy in strategies() {
                let got = qmatmul_input_grad(&x, &r, &q, shape, &wgpu(), strategy);
                let err = rel_err(&got, &expect);
                assert!(err <= GRAD_TOL, "{cfg:?} {shape:?} {strategy:?}: {err}");
            }
        }
    }
}

#[test]
fn lora_matmul_every_transpose_matches_reference() {
    for (mo, kk, no) in [(1usize, 70, 8), (300, 200, 16), (64, 7, 33), (33, 300, 64)] {
        for (tl, tr) in [(false, false), (false, true), (true, false), (true, true)] {
            let lshape = if tl { [kk, mo] } else { [mo, kk] };
            let rshape = if tr { [no, kk] } else { [kk, no] };
            let l = rand_vec(mo * kk, 11);
            let r = rand_vec(kk * no, 12);
            let run = |device: &burn::tensor::Device, path| {
                values(ops::lora_matmul(
                    tensor(l.clone(), lshape, device),
                    tensor(r.clone(), rshape, device),
                    tl,
                    tr,
                    0.5,
                    path,
                ))
            };
            let expect = run(&cpu(), OpsPath::Reference);
            let got = run(&wgpu(), OpsPath::Kernel);
            let err = rel_err(&got, &expect);
            assert!(err <= FWD_TOL, "{mo}x{kk}x{no} tl={tl} tr={tr}: {err}");
        }
    }
}

/// (loss, dX, dA, dB) of `sum(lora(x, A, B, s) * r)` on one device.
fn lora_grads(
    x: &[f32],
    a: &[f32],
    b: &[f32],
    r: &[f32],
    dims: (usize, usize, usize, usize, usize),
    device: &burn::tensor::Device,
) -> (f32, Vec<f32>, Vec<f32>, Vec<f32>) {
    let (batch, seq, k, rank, n) = dims;
    let device = device.clone().autodiff();
    let x = tensor(x.to_vec(), [batch, seq, k], &device).require_grad();
    let a = tensor(a.to_vec(), [rank, k], &device).require_grad();
    let b = tensor(b.to_vec(), [n, rank], &device).require_grad();
    let r = tensor(r.to_vec(), [batch, seq, n], &device);
    let loss = (ops::lora(x.clone(), a.clone(), b.clone(), 2.0) * r).sum();
    let value = values(loss.clone())[0];
    let grads = loss.backward();
    (
        value,
        values(x.grad(&grads).expect("dX")),
        values(a.grad(&grads).expect("dA")),
        values(b.grad(&grads).expect("dB")),
    )
}

#[test]
fn lora_gradients_match_reference_and_finite_differences() {
    let dims @ (batch, seq, k, rank, n) = (2, 37, 70, 8, 33);
    let x = rand_vec(batch * seq * k, 13);
    let a = rand_vec(rank * k, 14);
    let b = rand_vec(n * rank, 15);
    let r = rand_vec(batch * seq * n, 16);
    let (_, dx_ref, da_ref, db_ref) = lora_grads(&x, &a, &b, &r, dims, &cpu());
    let (_, dx, da, db) = lora_grads(&x, &a, &b, &r, dims, &wgpu());
    for (name, got, expect) in [
        ("dX", &dx, &dx_ref),
        ("dA", &da, &da_ref),
        ("dB", &db, &db_ref),
    ] {
        let err = rel_err(got, expect);
        assert!(err <= GRAD_TOL, "{name}: {err}");
    }

    // The loss is linear in A and in B separately, so a central difference is exact up to f32
    // rounding of the loss (~1e-7 relative of a sum of ~2500 terms).
    let eps = 0.05f32;
    let loss_at = |a: &[f32], b: &[f32]| lora_grads(&x, a, b, &r, dims, &wgpu()).0;
    for idx in [0usize, 77, rank * k - 1] {
        let (mut ap, mut am) = (a.clone(), a.clone());
        ap[idx] += eps;
        am[idx] -= eps;
        let fd = (loss_at(&ap, &b) - loss_at(&am, &b)) / (2.0 * eps);
        let scale = da.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(
            (fd - da[idx]).abs() <= 1e-3 * scale,
            "dA[{idx}]: fd {fd} vs {}",
            da[idx]
        );
    }
    for idx in [0usize, 100, n * rank - 1] {
        let (mut bp, mut bm) = (b.clone(), b.clone());
        bp[idx] += eps;
        bm[idx] -= eps;
        let fd = (loss_at(&a, &bp) - loss_at(&a, &bm)) / (2.0 * eps);
        let scale = db.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(
            (fd - db[idx]).abs() <= 1e-3 * scale,
            "dB[{idx}]: fd {fd} vs {}",
            db[idx]
        );
    }
}

#[test]
fn reference_path_runs_on_wgpu_too() {
    let q = quantized(33, 70, QuantConfig::default(), 19);
    let w = QWeight::upload(&q, &wgpu()).with_path(OpsPath::Reference);
    let x = rand_vec(7 * 70, 20);
    let got = values(ops::qmatmul(tensor(x.clone(), [7, 70], &wgpu()), &w));
    let expect = values(ops::qmatmul(
        tensor(x, [7, 70], &cpu()),
        &QWeight::upload(&q, &cpu()),
    ));
    assert!(rel_err(&got, &expect) <= FWD_TOL);
    let _ = Tensor::<1>::zeros([1], &wgpu());
}

/// Names the adapter these tests ran on. With `WGTUNE_TEST_ADAPTER` (a part of its name, any
/// case) it fails when wgpu opened another one: `.ci/run` runs this module a second time on
/// Chromium's SwiftShader through `VK_DRIVER_FILES`, and a driver that failed to load would
/// otherwise leave wgpu on llvmpipe and the second run proving nothing new.
#[test]
fn kernels_run_on_the_adapter_asked_for() {
    let name = wgpu()
        .identity()
        .expect("the wgpu device has an adapter")
        .name
        .to_string();
    eprintln!("kernel tests on {name}");
    if let Ok(want) = std::env::var("WGTUNE_TEST_ADAPTER") {
        assert!(
            name.to_lowercase().contains(&want.to_lowercase()),
            "WGTUNE_TEST_ADAPTER={want}, but wgpu opened {name}"
        );
    }
}

/// On llvmpipe the subgroup kernels run (Mesa's lavapipe has had subgroups since 20.x), so the
/// tests above that force them run them there, not their fallbacks: X Wᵀ at K = 192, dY W at
/// N = 64.
#[test]
fn the_subgroup_kernels_run_on_llvmpipe() {
    let device = wgpu();
    let name = device.identity().expect("an adapter").name.to_string();
    let fit = |n, k| {
        let q = quantized(n, k, QuantConfig::default(), 30);
        let on = |d| ops::fit(d, &QWeight::upload(&q, d));
        (on(&device), on(&cpu()))
    };
    let ((x_wt, x_wt_cpu), (dy_w, dy_w_cpu)) = (fit(37, 192), fit(64, 200));
    eprintln!("{name}: K = 192 {x_wt:?}, N = 64 {dy_w:?}");
    if name.to_lowercase().contains("llvmpipe") {
        assert!(x_wt.subgroup, "{name} should run X Wᵀ's subgroup kernel");
        assert!(dy_w.subgroup_t, "{name} should run dY W's subgroup kernel");
    }
    // Each only where its shape holds whole chunks.
    assert!(!x_wt.subgroup_t && !dy_w.subgroup);
    // On the reference path nothing needs subgroups.
    for cpu in [x_wt_cpu, dy_w_cpu] {
        assert!(!cpu.subgroup && !cpu.subgroup_t);
    }
}

/// The check the browser page runs on its device (`ops::check`) passes here, covers every kernel
/// on this adapter, and on the reference path runs the reference.
#[test]
fn the_kernel_check_passes_and_covers_every_kernel() {
    let device = wgpu();
    let report = burn::cubecl::future::block_on(ops::check::run(&device)).expect("check ran");
    let failures = report.failures();
    assert!(failures.is_empty(), "kernels over tolerance: {failures:#?}");
    // 3 weights x (dequantize + 2 products x 4 row counts x 8 strategies), and 4 LoRA products.
    assert_eq!(report.checks.len(), 3 * (1 + 2 * 4 * 8) + 4);
    assert_eq!(
        report.adapter_class.as_deref(),
        ops::adapter_class(&device).map(|c| c.name())
    );
    let ran = |kernel: &str| report.checks.iter().any(|c| c.kernel == kernel);
    for kernel in ["group", "tile", "gemm64", "gemm128", "dequant_matmul"] {
        assert!(ran(kernel), "no check ran {kernel}: {:#?}", report.checks);
    }
    let name = device.identity().expect("an adapter").name.to_lowercase();
    if name.contains("llvmpipe") {
        assert!(ran("subgroup"), "llvmpipe checked no subgroup kernel");
    }
    eprintln!(
        "{} checks on {name}, worst error {:.2e}",
        report.checks.len(),
        report.worst()
    );

    let reference = burn::cubecl::future::block_on(ops::check::run(&cpu())).expect("check ran");
    assert!(reference.failures().is_empty());
    assert!(reference.adapter_class.is_none());
    assert!(reference.checks.iter().all(|c| c.kernel == "reference"));
}

/// `wgtune info --check-kernels` runs the same check on the wgpu device and prints each kernel.
#[test]
fn info_checks_the_kernels_of_the_device() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wgtune"))
        .args(["info", "--check-kernels", "--device", "wgpu"])
        .output()
        .expect("wgtune runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("kernel check on wgpu"), "{stdout}");
    for kernel in ["group", "tile", "gemm64", "dequant_matmul", "lora"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.split_whitespace().any(|w| w == kernel) && l.contains("worst error")),
            "no line for {kernel}: {stdout}"
        );
    }
    assert!(stdout.contains("199 products in"), "{stdout}");
}
