//! Every kernel against exact products computed on the host, on one device.
//!
//! Natively `tests/it/kernels.rs` runs each kernel against the reference path. In a browser the
//! same WGSL goes through Tint and then the browser's own GPU driver, so the page runs this
//! check on its device: both 4-bit products by each kernel strategy (row counts across the
//! kernels' row tiles, a shape with ragged packed words among them), the dequantization, and
//! the LoRA kernel in each of its transpositions. Each result is compared with f64 sums on
//! the host over the same dequantized weights.
//!
//! Tolerance: [`TOLERANCE`], relative to the largest expected value. The kernels sum f32
//! products in their own order; at K <= 200 that rounds at about 1e-6 of the result. A wrong
//! index, nibble or block statistic moves values by their own size.

use burn::tensor::{Device, Tensor, TensorData};
use serde::Serialize;

use super::dispatch;
use super::{GemmTile, MatmulStrategy, OpsPath, QWeight};
use crate::quant::{QuantConfig, QuantError, QuantFormat, QuantizedTensor};

/// The largest error, relative to the largest expected value, that a kernel may show.
pub const TOLERANCE: f32 = 1e-4;

/// The strategies checked: each kernel forced, and the device's own choice.
pub const STRATEGIES: [MatmulStrategy; 8] = [
    MatmulStrategy::Auto,
    MatmulStrategy::FusedGroup,
    MatmulStrategy::FusedTile,
    MatmulStrategy::FusedSubgroup,
    MatmulStrategy::FusedGemm(GemmTile::T64),
    MatmulStrategy::FusedGemm(GemmTile::T128),
    MatmulStrategy::DequantMatmul,
    MatmulStrategy::DequantChunks { rows: 16 },
];

/// Row counts of X (dY): one token, a ragged few, past the 32-row tiles, past a 128-row GEMM tile.
pub const ROWS: [usize; 4] = [1, 7, 40, 130];

/// (N, K, blocksize, format, double quantization) of the weights checked: whole packed words
/// and whole subgroup chunks of K (37x192), of N (64x200), and rows of W that end inside a
/// packed word (33x70), where the tile kernels and the GEMM hand over.
const WEIGHTS: [(usize, usize, usize, QuantFormat, bool); 3] = [
    (37, 192, 64, QuantFormat::Nf4, true),
    (64, 200, 128, QuantFormat::Fp4, false),
    (33, 70, 64, QuantFormat::Nf4, false),
];

/// A failed check run (not a failed kernel: those are results with a large error).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// Quantizing a test weight failed.
    #[error("quantizing the {0} test weight: {1}")]
    Quantize(String, QuantError),
    /// Reading a result back from the device failed.
    #[error("reading the result of {0} from the device: {1}")]
    Read(String, String),
}

/// One product checked.
#[derive(Clone, Debug, Serialize)]
pub struct KernelCheck {
    /// `X Wᵀ`, `dY W`, `dequantize` or `lora`.
    pub product: String,
    /// The strategy asked for (`-` for dequantize and LoRA).
    pub strategy: String,
    /// The kernel that ran: the strategy as the adapter and the shape resolve it.
    pub kernel: String,
    /// The operands, e.g. `40x192 · (37x192 nf4)ᵀ`.
    pub shape: String,
    /// max |got - expected| / max |expected|; infinite where a value is not finite.
    pub error: f32,
}

impl KernelCheck {
    /// Whether the error is within [`TOLERANCE`].
    pub fn passed(&self) -> bool {
        self.error <= TOLERANCE
    }
}

/// Every check on one device.
#[derive(Clone, Debug, Serialize)]
pub struct CheckReport {
    /// The adapter class whose rule served `Auto` (`None`: no kernel path on this device).
    pub adapter_class: Option<String>,
    /// Each product.
    pub checks: Vec<KernelCheck>,
}

impl CheckReport {
    /// The checks over [`TOLERANCE`].
    pub fn failures(&self) -> Vec<&KernelCheck> {
        self.checks.iter().filter(|c| !c.passed()).collect()
    }

    /// The largest error of all.
    pub fn worst(&self) -> f32 {
        self.checks.iter().fold(0.0, |m, c| m.max(c.error))
    }
}

/// Runs every check on `device` (async: the browser reads results back on the event loop).
pub async fn run(device: &Device) -> Result<CheckReport, CheckError> {
    let class = super::adapter_class(device);
    let mut checks = Vec::new();
    for (seed, &(n, k, blocksize, format, double_quant)) in WEIGHTS.iter().enumerate() {
        let cfg = QuantConfig {
            format,
            blocksize,
            double_quant,
        };
        let name = format!("{n}x{k} {}", format.name());
        let q = QuantizedTensor::quantize(&noise(n * k, 1 + seed as u64), &[n, k], cfg)
            .map_err(|e| CheckError::Quantize(name.clone(), e))?;
        let host_w = q.dequantize();
        let w = QWeight::upload(&q, device);
        let fit = super::fit(device, &w);

        let got = read(super::dequantize(&w), &format!("dequantize {name}")).await?;
        checks.push(KernelCheck {
            product: "dequantize".into(),
            strategy: "-".into(),
            kernel: kernel_name(w.path(), "dequant"),
            shape: name.clone(),
            error: rel_err(&got, &host_w),
        });

        for transposed in [false, true] {
            let inner = if transposed { n } else { k };
            let product = if transposed { "dY W" } else { "X Wᵀ" };
            for (i, &rows) in ROWS.iter().enumerate() {
                let x = noise(rows * inner, 100 + 10 * seed as u64 + i as u64);
                let expect = host_product(&x, &host_w, rows, n, k, transposed);
                for strategy in STRATEGIES {
                    let input =
                        Tensor::<2>::from_data(TensorData::new(x.clone(), [rows, inner]), device);
                    let out = if transposed {
                        super::qmatmul_t_with(input, &w, strategy)
                    } else {
                        super::qmatmul_with(input, &w, strategy)
                    };
                    let shape = if transposed {
                        format!("{rows}x{inner} · ({name})")
                    } else {
                        format!("{rows}x{inner} · ({name})ᵀ")
                    };
                    let got = read(out, &format!("{product} {strategy} {shape}")).await?;
                    // Off the kernel path (no class) the strategy is ignored.
                    let kernel = class.map_or("reference".into(), |c| {
                        dispatch::resolve(strategy, rows, transposed, c, fit).to_string()
                    });
                    checks.push(KernelCheck {
                        product: product.into(),
                        strategy: strategy.to_string(),
                        kernel,
                        shape,
                        error: rel_err(&got, &expect),
                    });
                }
            }
        }
    }
    checks.extend(check_lora(device).await?);
    Ok(CheckReport {
        adapter_class: class.map(|c| c.to_string()),
        checks,
    })
}

/// `alpha op(L) op(R)` in each transposition the LoRA forward and backward use.
async fn check_lora(device: &Device) -> Result<Vec<KernelCheck>, CheckError> {
    let (m, k, r) = (130, 200, 8);
    let alpha = 0.5;
    let mut checks = Vec::new();
    for (i, (trans_lhs, trans_rhs)) in [(false, true), (false, false), (true, false), (true, true)]
        .into_iter()
        .enumerate()
    {
        // op(L) is m x k and op(R) is k x r, whatever their storage.
        let lhs = noise(m * k, 200 + i as u64);
        let rhs = noise(k * r, 300 + i as u64);
        let l_dims = if trans_lhs { [k, m] } else { [m, k] };
        let r_dims = if trans_rhs { [r, k] } else { [k, r] };
        let at = |v: &[f32], dims: [usize; 2], trans: bool, row: usize, col: usize| {
            if trans {
                v[col * dims[1] + row]
            } else {
                v[row * dims[1] + col]
            }
        };
        let mut expect = vec![0f32; m * r];
        for row in 0..m {
            for col in 0..r {
                let sum: f64 = (0..k)
                    .map(|j| {
                        f64::from(at(&lhs, l_dims, trans_lhs, row, j))
                            * f64::from(at(&rhs, r_dims, trans_rhs, j, col))
                    })
                    .sum();
                expect[row * r + col] = (sum * f64::from(alpha)) as f32;
            }
        }
        let path = OpsPath::for_device(device);
        let out = super::lora_matmul(
            Tensor::<2>::from_data(TensorData::new(lhs, l_dims), device),
            Tensor::<2>::from_data(TensorData::new(rhs, r_dims), device),
            trans_lhs,
            trans_rhs,
            alpha,
            path,
        );
        let t = |trans: bool| if trans { "ᵀ" } else { "" };
        let shape = format!(
            "({}x{}){} · ({}x{}){}",
            l_dims[0],
            l_dims[1],
            t(trans_lhs),
            r_dims[0],
            r_dims[1],
            t(trans_rhs)
        );
        let got = read(out, &format!("lora {shape}")).await?;
        checks.push(KernelCheck {
            product: "lora".into(),
            strategy: "-".into(),
            kernel: kernel_name(path, "lora"),
            shape,
            error: rel_err(&got, &expect),
        });
    }
    Ok(checks)
}

/// `X Wᵀ` (`[rows, k] · [n, k]ᵀ`) or, `transposed`, `dY W` (`[rows, n] · [n, k]`) in f64.
fn host_product(
    x: &[f32],
    w: &[f32],
    rows: usize,
    n: usize,
    k: usize,
    transposed: bool,
) -> Vec<f32> {
    let mut out = Vec::new();
    for row in 0..rows {
        if transposed {
            let dy = &x[row * n..(row + 1) * n];
            out.extend((0..k).map(|col| {
                (0..n)
                    .map(|j| f64::from(dy[j]) * f64::from(w[j * k + col]))
                    .sum::<f64>() as f32
            }));
        } else {
            let xr = &x[row * k..(row + 1) * k];
            out.extend(w.chunks(k).map(|wr| {
                xr.iter()
                    .zip(wr)
                    .map(|(a, b)| f64::from(*a) * f64::from(*b))
                    .sum::<f64>() as f32
            }));
        }
    }
    out
}

/// The values of `t`, read back without blocking.
async fn read(t: Tensor<2>, what: &str) -> Result<Vec<f32>, CheckError> {
    let fail = |e: String| CheckError::Read(what.to_string(), e);
    t.into_data_async()
        .await
        .map_err(|e| fail(format!("{e:?}")))?
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| fail(format!("{e:?}")))
}

/// max |got - expect| / max |expect|; infinite where the lengths differ or a difference is not
/// finite (NaN included, which `f32::max` alone would skip). The tests' measure too.
pub fn rel_err(got: &[f32], expect: &[f32]) -> f32 {
    if got.len() != expect.len() {
        return f32::INFINITY;
    }
    let scale = expect
        .iter()
        .fold(0f32, |m, v| m.max(v.abs()))
        .max(f32::MIN_POSITIVE);
    let diff = got.iter().zip(expect).fold(0f32, |m, (a, b)| {
        if (a - b).abs().is_finite() {
            m.max((a - b).abs())
        } else {
            f32::INFINITY
        }
    });
    diff / scale
}

/// What served a product: `kernel` on the kernel path, else the reference path.
fn kernel_name(path: OpsPath, kernel: &str) -> String {
    match path {
        OpsPath::Reference => "reference".into(),
        OpsPath::Kernel => kernel.into(),
    }
}

/// `n` values in [-1, 1) from a xorshift generator seeded by `seed` (the tests' and the
/// benchmarks' inputs too).
pub fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}
