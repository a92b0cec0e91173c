//! Times the 4-bit matmul paths against dense f32 on one device, in one run.
//!
//! ```text
//! cargo run --release --example bench_kernels [-- --json] [--device wgpu|cpu] [--shapes small|large|all]
//!     [--shapes KxN,..] [--rows 1,8,128,512,2048] [--transposed] [--tuned] [--dense-limit-mib N]
//! ```
//! `--tuned` times the tuned dispatch (`MatmulStrategy::Tuned`) on a software adapter too, whose
//! `Auto` keeps a measured rule.
//! `--transposed` times the input gradient `dX = dY W` (the backward pass's product) instead of
//! `Y = X W^T`, with the same paths.
//! For LLaMA-like weights (K x N in 576x1536, 4096x4096, 4096x11008) and M in 1, 8, 128, 512,
//! 2048 rows, it measures `Y = X W^T` three ways: the fused WGSL kernel the adapter takes (the
//! group kernel on a GPU, the register-tiled one on a software adapter; `MatmulStrategy::Fused`),
//! the WGSL dequantize followed by burn's matmul, and burn's dense f32 matmul on the unquantized
//! weight; at M <= 8 also the other fused kernel (`other`, for the record), at M >= 128 the
//! tiled 4-bit GEMM with both workgroup tiles (`gemm64`, `gemm128`), and where it runs (llvmpipe)
//! the subgroup kernel (`subgroup`). It prints GFLOP/s, the
//! ratios fused/dense and fused/dequant+matmul, which 4-bit path wins and which one
//! `wgtune::ops::dispatch` takes (a mismatch is marked `!`), with that path's speed against dense
//! (`auto/dense`, JSON `auto_gflops`), and the bytes of the weight in NF4 vs f32. On a native GPU
//! the dispatch times the kernels itself (`MatmulStrategy::Tuned`): there the `auto` path is
//! timed as a model calls it, and the dispatch column names the kernel its tuning picked. First
//! it times each path on a 64x64 weight and one row, work too small to matter: the cost of a call as
//! such (launches, bindings, synchronization), the floor under the small shapes' times (with
//! `--json`: `floor_us`, [fused, dequant+matmul, dense], on every line).

use std::time::{Duration, Instant};

use burn::tensor::{Device, DeviceKind, Tensor, TensorData};
use wgtune::model::linear::transpose;
use wgtune::ops::dispatch::{self, AdapterClass};
use wgtune::ops::{self, GemmTile, MatmulStrategy, QWeight};
use wgtune::quant::{QuantConfig, QuantizedTensor};

/// Largest f32 weight the dense baseline uploads by default (WebGPU's default binding limit);
/// `--dense-limit-mib` raises it on adapters that bind more (a real GPU's Vulkan does).
const DENSE_LIMIT_MIB: usize = 128;

/// Largest M at which the GPU's fused kernel is timed (a software adapter's, which serves every
/// M, is timed at every M).
const FUSED_LIMIT: usize = 128;

/// Largest M at which the fused kernel the adapter does not take is timed.
const OTHER_LIMIT: usize = 8;

/// Smallest M at which the tiled 4-bit GEMM is timed (below it most of its 64- or 128-row tile
/// would be padding).
const GEMM_MIN: usize = 128;

struct Args {
    json: bool,
    rows: Vec<usize>,
    transposed: bool,
    tuned: bool,
    device: String,
    shapes: String,
    dense_limit_mib: usize,
}

fn parse_args() -> Args {
    let mut args = Args {
        json: false,
        rows: vec![1, 8, 128, 512, 2048],
        transposed: false,
        tuned: false,
        device: "wgpu".into(),
        shapes: "all".into(),
        dense_limit_mib: DENSE_LIMIT_MIB,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--json" => args.json = true,
            "--transposed" => args.transposed = true,
            "--tuned" => args.tuned = true,
            "--rows" => {
                let list = it.next().unwrap_or_default();
                args.rows = list
                    .split(',')
                    .map(|r| r.trim().parse().ok().filter(|&r: &usize| r > 0))
                    .collect::<Option<Vec<usize>>>()
                    .unwrap_or_else(|| {
                        eprintln!(
                            "--rows needs positive row counts separated by commas, got '{list}'"
                        );
                        std::process::exit(2);
                    })
            }
            "--device" => args.device = it.next().unwrap_or_default(),
            "--shapes" => args.shapes = it.next().unwrap_or_default(),
            "--dense-limit-mib" => {
                args.dense_limit_mib = it.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
                    eprintln!("--dense-limit-mib needs a number of MiB");
                    std::process::exit(2);
                })
            }
            other => {
                eprintln!(
                    "unknown argument {other}; usage: bench_kernels [--json] [--device wgpu] [--shapes small|large|all|KxN,..] [--rows 1,8,..] [--transposed] [--tuned] [--dense-limit-mib N]"
                );
                std::process::exit(2);
            }
        }
    }
    args
}

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut v = wgtune::ops::check::noise(n, seed);
    v.iter_mut().for_each(|x| *x *= 0.05);
    v
}

/// One path of a row: a call that queues the product.
type Path<'a> = Box<dyn FnMut() -> Tensor<2> + 'a>;

/// Seconds for `q` calls of `f` queued back to back and synchronized once.
fn batch(device: &Device, f: &mut Path, q: usize) -> f64 {
    let t = Instant::now();
    let outputs: Vec<_> = (0..q).map(|_| f()).collect();
    device.sync().expect("sync");
    drop(outputs);
    t.elapsed().as_secs_f64()
}

/// Seconds per call of each path when calls are queued back to back and synchronized once (as in
/// a model's forward pass, where launches overlap), after a warm-up call (compilation, or a
/// tuned path's tuning).
///
/// The one synchronization that ends a batch has a fixed cost (a submit and a wait, worth many
/// small kernels on a fast GPU). Timing a batch of q calls and one of 2q calls takes it out: a
/// call costs (t(2q) - t(q)) / q. q doubles from 2 until a batch takes 10 ms, keeping at most
/// 1024 calls and 1 GiB of outputs (`out_bytes` each) alive. A call of 20 ms or more dwarfs the
/// synchronization and is timed alone; one of more than 5 s is measured by its warm-up call.
///
/// The paths are sampled in rounds, one sample of each in turn, so that a machine whose speed
/// drifts (a busy VM's steal time) slows them alike and their ratios hold: 3 to 7 rounds, until
/// about a second per path has passed. Each path's time is the lower median of its samples.
fn time_paths(device: &Device, out_bytes: usize, paths: &mut [Path]) -> Vec<f64> {
    let cap = ((1usize << 29) / out_bytes.max(1)).clamp(2, 1024);
    // Per path: the warm-up's seconds, and the batch size its samples take (None: the warm-up
    // is the measurement).
    let plan: Vec<(f64, Option<usize>)> = paths
        .iter_mut()
        .map(|f| {
            let t = Instant::now();
            let _ = f().into_data();
            let first = t.elapsed().as_secs_f64();
            if first > 5.0 {
                return (first, None);
            }
            if batch(device, f, 1) >= 0.02 {
                return (first, Some(1));
            }
            let mut q = 2;
            while q * 2 <= cap && batch(device, f, q) < 0.01 {
                q *= 2;
            }
            (first, Some(q))
        })
        .collect();
    let mut samples = vec![Vec::new(); paths.len()];
    let budget = Duration::from_secs(paths.len() as u64);
    let start = Instant::now();
    for round in 0..7 {
        if round >= 3 && start.elapsed() > budget {
            break;
        }
        for ((f, &(_, q)), samples) in paths.iter_mut().zip(&plan).zip(&mut samples) {
            let Some(q) = q else { continue };
            samples.push(if q == 1 {
                batch(device, f, 1)
            } else {
                let one = batch(device, f, q);
                let two = batch(device, f, 2 * q);
                let per_call = (two - one) / q as f64;
                // Noise can make the difference vanish; then the plain mean of the longer batch.
                if per_call > 0.0 {
                    per_call
                } else {
                    two / (2 * q) as f64
                }
            });
        }
    }
    plan.iter()
        .zip(samples)
        .map(|(&(first, _), mut samples)| {
            if samples.is_empty() {
                return first;
            }
            samples.sort_by(f64::total_cmp);
            samples[(samples.len() - 1) / 2]
        })
        .collect()
}

/// Seconds per call of the fused kernel, dequantize+matmul and the dense matmul on a 64x64
/// weight and one row: what a call costs whatever its work.
fn call_floor(device: &Device) -> [f64; 3] {
    let (k, n) = (64, 64);
    let w = random(n * k, 7);
    let q = QuantizedTensor::quantize(&w, &[n, k], QuantConfig::default()).expect("quantize");
    let qw = QWeight::upload(&q, device);
    let wt = Tensor::<2>::from_data(TensorData::new(transpose(&w, n, k), [k, n]), device);
    let x = Tensor::<2>::from_data(TensorData::new(random(k, 1), [1, k]), device);
    let bytes = n * 4;
    let mut paths: Vec<Path> = vec![
        Box::new(|| ops::qmatmul_with(x.clone(), &qw, MatmulStrategy::Fused)),
        Box::new(|| ops::qmatmul_with(x.clone(), &qw, MatmulStrategy::DequantMatmul)),
        Box::new(|| x.clone().matmul(wt.clone())),
    ];
    let t = time_paths(device, bytes, &mut paths);
    [t[0], t[1], t[2]]
}

fn main() {
    let args = parse_args();
    let device = match args.device.as_str() {
        "cpu" => wgtune::device::cpu_backend(),
        _ => Device::wgpu(DeviceKind::DefaultDevice),
    };
    let identity = device.identity();
    let adapter = identity
        .as_ref()
        .map_or_else(|| args.device.clone(), |i| i.name.to_string())
        .replace('"', "'");
    // The CPU backend has no adapter; its reference path takes no dispatch.
    let class = identity
        .as_ref()
        .map_or(AdapterClass::Gpu, AdapterClass::of);
    let software = class.is_software();
    let (kernel, other_kernel, other) = if software {
        ("tile", "group", MatmulStrategy::FusedGroup)
    } else {
        ("group", "tile", MatmulStrategy::FusedTile)
    };
    let shapes: Vec<(usize, usize)> = match args.shapes.as_str() {
        "small" => vec![(576, 1536)],
        "large" => vec![(4096, 11008)],
        "all" => vec![(576, 1536), (4096, 4096), (4096, 11008)],
        list => list
            .split(',')
            .map(|s| {
                let (k, n) = s.trim().split_once('x')?;
                Some((k.parse().ok()?, n.parse().ok()?)).filter(|&(k, n)| k > 0 && n > 0)
            })
            .collect::<Option<_>>()
            .unwrap_or_else(|| {
                eprintln!("--shapes takes small, large, all or KxN[,KxN..], got '{list}'");
                std::process::exit(2);
            }),
    };
    let floor = call_floor(&device);
    if !args.json {
        println!(
            "device: {adapter} ({}: fused = the {kernel} kernel, other = the {other_kernel} kernel); timing {}",
            if software { "software adapter" } else { "GPU" },
            if args.transposed {
                "dX = dY W (M x N times N x K)"
            } else {
                "Y = X W^T (M x K times K x N)"
            }
        );
        println!(
            "per-call floor (64x64 weight, 1 row): fused {:.1} µs, deq+mm {:.1} µs, dense {:.1} µs",
            floor[0] * 1e6,
            floor[1] * 1e6,
            floor[2] * 1e6
        );
        println!(
            "{:>5} {:>5} {:>6} | {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} | {:>11} {:>13} | fastest 4-bit (dispatch) | µs fused / deq+mm / dense",
            "M",
            "K",
            "N",
            "fused",
            "deq+mm",
            "dense",
            "other",
            "gemm64",
            "gemm128",
            "subgroup",
            "fused/dense",
            "fused/deq+mm"
        );
    }
    let op = if args.transposed { "dy_w" } else { "x_wt" };
    for &(k, n) in &shapes {
        let w = random(n * k, (k * n) as u64);
        let q = QuantizedTensor::quantize(&w, &[n, k], QuantConfig::default()).expect("quantize");
        let qw = QWeight::upload(&q, &device);
        // Whether the subgroup kernel runs this product here.
        let fit = ops::fit(&device, &qw);
        let subgroup = fit.subgroup_for(args.transposed);
        // The dense operand: W^T laid out contiguously, as a dense model stores it for X W^T, or
        // W itself for dY W.
        let (inner, outer) = if args.transposed { (n, k) } else { (k, n) };
        let dense_w = if args.transposed {
            w.clone()
        } else {
            transpose(&w, n, k)
        };
        let dense_t = (n * k * 4 <= args.dense_limit_mib << 20)
            .then(|| Tensor::<2>::from_data(TensorData::new(dense_w, [inner, outer]), &device));
        // The 4-bit product the row timings measure.
        let product = |x: &Tensor<2>, strategy| {
            if args.transposed {
                ops::qmatmul_t_with(x.clone(), &qw, strategy)
            } else {
                ops::qmatmul_with(x.clone(), &qw, strategy)
            }
        };
        // The dequantization alone, as bytes moved (4-bit read + f32 written) per second; it is
        // one f32 buffer, so it runs where the dense weight fits.
        let dequant_s = dense_t
            .is_some()
            .then(|| time_paths(&device, n * k * 4, &mut [Box::new(|| ops::dequantize(&qw))])[0]);
        let dequant_gbps = dequant_s.map(|t| (qw.size_bytes() + n * k * 4) as f64 / 1e9 / t);
        if !args.json {
            println!(
                "weight {k}x{n}: NF4 {} bytes on device vs f32 {} bytes ({:.2}x smaller); dequantize alone {}",
                qw.size_bytes(),
                n * k * 4,
                (n * k * 4) as f64 / qw.size_bytes() as f64,
                dequant_s
                    .zip(dequant_gbps)
                    .map_or("-".to_string(), |(t, g)| format!(
                        "{g:.1} GB/s, {:.1} µs",
                        t * 1e6
                    ))
            );
        }
        for &m in &args.rows {
            let x = Tensor::<2>::from_data(
                TensorData::new(random(m * inner, m as u64), [m, inner]),
                &device,
            );
            let flops = 2.0 * (m * n * k) as f64 / 1e9;
            let out_bytes = m * outer * 4;
            // What a model gets (`MatmulStrategy::Auto`) is timed as such where the dispatch
            // tunes (a native GPU, or `--tuned`), with its first call (the tuning) as the
            // warm-up; elsewhere it is the rule's path, one of the others.
            let tunes =
                identity.is_some() && dispatch::TUNES && (args.tuned || class == AdapterClass::Gpu);
            // The paths of this row, by name. On a GPU the fused kernel serves few rows
            // (ops::dispatch), and past FUSED_LIMIT rows it is not measured. One f32 copy of a
            // large weight exceeds WebGPU's default 128 MiB binding limit, which software adapters
            // and browsers enforce: the dense baseline cannot run there.
            let (x, product) = (&x, &product);
            let mut named: Vec<(&str, Path)> = Vec::new();
            if m <= FUSED_LIMIT || software {
                named.push(("fused", Box::new(|| product(x, MatmulStrategy::Fused))));
            }
            if m <= OTHER_LIMIT {
                named.push(("other", Box::new(|| product(x, other))));
            }
            if subgroup {
                named.push((
                    "subgroup",
                    Box::new(|| product(x, MatmulStrategy::FusedSubgroup)),
                ));
            }
            if m >= GEMM_MIN {
                for (name, tile) in [("gemm64", GemmTile::T64), ("gemm128", GemmTile::T128)] {
                    named.push((
                        name,
                        Box::new(move || product(x, MatmulStrategy::FusedGemm(tile))),
                    ));
                }
            }
            named.push((
                "deq",
                Box::new(|| product(x, MatmulStrategy::DequantMatmul)),
            ));
            if let Some(wt) = &dense_t {
                named.push(("dense", Box::new(|| x.clone().matmul(wt.clone()))));
            }
            if tunes {
                named.push(("auto", Box::new(|| product(x, MatmulStrategy::Tuned))));
            }
            let (names, mut paths): (Vec<_>, Vec<_>) = named.into_iter().unzip();
            let seconds = time_paths(&device, out_bytes, &mut paths);
            let gflops = |name: &str| {
                names
                    .iter()
                    .position(|n| *n == name)
                    .map(|i| flops / seconds[i])
            };
            let (fused, other_fused, deq, dense) = (
                gflops("fused"),
                gflops("other"),
                gflops("deq"),
                gflops("dense"),
            );
            let deq = deq.expect("dequantize+matmul is always timed");
            let gemm = [gflops("gemm64"), gflops("gemm128")];
            let sub = gflops("subgroup");
            // The fastest 4-bit path measured, and the one the dispatch takes for this shape.
            let candidates = [
                (kernel, fused),
                ("dequant_matmul", Some(deq)),
                ("gemm64", gemm[0]),
                ("gemm128", gemm[1]),
                ("subgroup", sub),
            ];
            let (fastest, best) = candidates
                .iter()
                .filter_map(|&(name, g)| g.map(|g| (name, g)))
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .expect("dequantize+matmul is always timed");
            let chosen = if fastest == "dequant_matmul" {
                "dequant_matmul"
            } else {
                "fused"
            };
            let dispatched = ops::tuned_choice(&device, m, &qw, args.transposed)
                .unwrap_or_else(|| {
                    dispatch::resolve(MatmulStrategy::Auto, m, args.transposed, class, fit)
                })
                .to_string();
            let auto = gflops("auto").or_else(|| {
                candidates
                    .iter()
                    .find(|c| c.0 == dispatched)
                    .and_then(|c| c.1)
            });
            let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
            let json = |v: Option<f64>| v.map_or("null".to_string(), |v| format!("{v:.4}"));
            let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a / b);
            let best = Some(best);
            if args.json {
                println!(
                    "{{\"op\":\"{op}\",\"m\":{m},\"k\":{k},\"n\":{n},\"fused_gflops\":{},\"dequant_matmul_gflops\":{deq:.4},\"dense_gflops\":{},\"fused_kernel\":\"{kernel}\",\"other_fused_gflops\":{},\"gemm_gflops\":[{},{}],\"subgroup_gflops\":{},\"chosen\":\"{chosen}\",\"fastest\":\"{fastest}\",\"dispatch\":\"{dispatched}\",\"auto_gflops\":{},\"dequant_gbps\":{},\"floor_us\":[{:.2},{:.2},{:.2}],\"adapter\":\"{adapter}\"}}",
                    json(fused),
                    json(dense),
                    json(other_fused),
                    json(gemm[0]),
                    json(gemm[1]),
                    json(sub),
                    json(auto),
                    json(dequant_gbps),
                    floor[0] * 1e6,
                    floor[1] * 1e6,
                    floor[2] * 1e6
                );
            } else {
                // Microseconds per call: set against the floor above.
                let us = |g: Option<f64>| {
                    g.map_or("-".to_string(), |g| format!("{:.1}", flops / g * 1e6))
                };
                println!(
                    "{m:>5} {k:>5} {n:>6} | {:>9} {deq:>9.2} {:>9} {:>9} {:>9} {:>9} {:>9} | {:>11} {:>13} | {fastest} ({dispatched}{}) (fastest/dense {}, auto/dense {}) | µs {} / {} / {}",
                    fmt(fused),
                    fmt(dense),
                    fmt(other_fused),
                    fmt(gemm[0]),
                    fmt(gemm[1]),
                    fmt(sub),
                    fmt(ratio(fused, dense)),
                    fmt(fused.map(|f| f / deq)),
                    if fastest == dispatched { "" } else { " !" },
                    fmt(ratio(best, dense)),
                    fmt(ratio(auto, dense)),
                    us(fused),
                    us(Some(deq)),
                    us(dense)
                );
            }
        }
    }
}
