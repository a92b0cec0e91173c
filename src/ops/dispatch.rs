//! Which 4-bit matmul implementation serves which shape on the kernel path.
//!
//! On a native GPU the choice is timed, not ruled: [`MatmulStrategy::Auto`] resolves to
//! [`MatmulStrategy::Tuned`], which times every kernel that fits the shape on the device the
//! first time its shape class is met (`ops::tune`, on CubeCL's autotune) and keeps the fastest.
//! GPUs differ too much for one table to serve them all: on an H200 the group kernel won up to
//! 32 rows and dequantize+matmul above, and where the tiled 4-bit GEMM stands between them only a
//! measurement on each GPU says.
//!
//! Software adapters and the browser keep measured rules ([`rule`]): on a CPU one timing of a
//! 2048-row product takes seconds, and in the browser a timing cannot be awaited inside a call.
//! The rules were decided by `examples/bench_kernels.rs`, which times the paths against each
//! other and against dense f32 and prints the choice per shape:
//!
//! - On a GPU (in the browser) the fused kernel (a workgroup row per column of the output, W read
//!   coalesced) reads 0.5 byte per weight once and applies it to up to 8 rows at a time, so it
//!   wins where the product is bound by reading W (few rows); burn's tiled matmul on a
//!   dequantized copy wins once enough rows reuse each weight.
//! - A software adapter (llvmpipe, SwiftShader) runs invocations as the lanes of CPU vectors.
//!   There the register-tiled fused kernel, which decodes each weight once per 8 rows with vector
//!   selects and never writes an f32 copy of W, serves every shape whose rows of W hold whole
//!   packed words, with one exception:
//! - On Mesa's llvmpipe it serves up to [`LLVMPIPE_TILE_MAX_ROWS`] rows, and dequantize+matmul
//!   more. The tile kernel's time grows with the rows while burn's tiled matmul gains efficiency
//!   with them, and where they cross depends on the CPU: on a Sapphire Rapids-class Xeon
//!   (AVX-512, 2 cores) dequantize+matmul was 1.15-3x faster at 512-2048 rows and level at
//!   64-128, while on the machine of earlier measurements the tiled kernel was 1.3-1.5x faster
//!   at 512-2048 and 1.7-2.3x at 128. The limit sits where the newer machine's two paths meet;
//!   the older one keeps the tiled kernel up to it, and above it dequantize+matmul at
//!   0.77-0.87x dense f32 (128 rows) to 0.99-1.0x (512-2048). SwiftShader is the opposite case:
//!   the same limit there halved the browser demo's training speed on the Xeon (0.45 -> 0.21
//!   steps/s, its products have 100-256 rows), so other software adapters keep the tile kernel.
//! - On llvmpipe the subgroup kernels serve wherever they run ([`Fit`]): `Y = X Wᵀ` at every
//!   row count, `dX = dY W` from [`LLVMPIPE_SUBGROUP_T_MIN_ROWS`] rows (the two limits above then
//!   govern the shapes they do not fit). llvmpipe loads from a storage buffer one lane at a time,
//!   so the tile kernels, whose eight lanes all load the same X, paid eight loads for each value
//!   of X; the subgroup kernels' lanes load different parts of X and share them by register
//!   shuffles. On the Xeon above, `X Wᵀ` ran 1.0-2.4x the tile kernel at 1-16 rows and 13-16
//!   GFLOP/s from 32 rows up, 2-3x dense f32; `dY W` 1.7-3.2x dense f32 from 128 rows up.
//!
//! Measured on llvmpipe (2 cores) and an H200: see the tables in README.md ("Kernel benchmark").

use std::sync::Mutex;

use burn::cubecl::ir::DeviceIdentity;

use super::layout::{GemmTile, MatmulStrategy};

/// Largest number of rows (tokens) for which the GPU fused kernel serves `Y = X W^T`.
pub const FUSED_MAX_ROWS: usize = 32;
/// Largest number of rows for which the GPU fused transposed kernel serves `dX = dY W`.
pub const FUSED_T_MAX_ROWS: usize = 32;
/// Largest number of rows for which the register-tiled kernels serve either product on Mesa's
/// llvmpipe (other software adapters take them at every row count), where the subgroup kernel
/// does not serve `Y = X Wᵀ`.
pub const LLVMPIPE_TILE_MAX_ROWS: usize = 64;
/// Fewest rows for which the subgroup kernel serves `dX = dY W` on llvmpipe, where it runs (at
/// one row the tile kernel was 1.3x faster; at 2 and 8 rows 0.8x and 0.56x).
pub const LLVMPIPE_SUBGROUP_T_MIN_ROWS: usize = 2;

/// Fewest rows for which the subgroup kernel serves a product (`dY W` when `transposed`) on
/// llvmpipe, where it runs: every row count for `X Wᵀ`.
pub fn llvmpipe_subgroup_min_rows(transposed: bool) -> usize {
    if transposed {
        LLVMPIPE_SUBGROUP_T_MIN_ROWS
    } else {
        1
    }
}

/// The kind of adapter the kernels run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdapterClass {
    /// A GPU (any vendor, native or through a browser).
    Gpu,
    /// Mesa's llvmpipe, the software Vulkan of a Linux machine without a GPU.
    Llvmpipe,
    /// Any other software implementation on the CPU: SwiftShader (a browser without a GPU),
    /// WARP, a browser's fallback adapter.
    Software,
}

impl AdapterClass {
    /// Every class.
    pub const ALL: [AdapterClass; 3] = [
        AdapterClass::Gpu,
        AdapterClass::Llvmpipe,
        AdapterClass::Software,
    ];

    /// The class of the device `identity` names: software where no card is behind it (CubeCL
    /// reports no physical device for llvmpipe, SwiftShader, WARP or a browser's fallback
    /// adapter), llvmpipe by its name. The name picks a speed trade-off, never a capability.
    pub fn of(identity: &DeviceIdentity) -> Self {
        if identity.physical.is_some() {
            AdapterClass::Gpu
        } else if identity.name.to_ascii_lowercase().contains("llvmpipe") {
            AdapterClass::Llvmpipe
        } else {
            AdapterClass::Software
        }
    }

    /// Whether invocations run as the lanes of CPU vectors (no card behind the adapter).
    pub fn is_software(self) -> bool {
        self != AdapterClass::Gpu
    }

    /// The name [`FromStr`](std::str::FromStr) reads: `gpu`, `llvmpipe` or `software`.
    pub fn name(self) -> &'static str {
        match self {
            AdapterClass::Gpu => "gpu",
            AdapterClass::Llvmpipe => "llvmpipe",
            AdapterClass::Software => "software",
        }
    }
}

impl std::fmt::Display for AdapterClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for AdapterClass {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        AdapterClass::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| format!("unknown adapter class {s:?} (gpu, llvmpipe or software)"))
    }
}

/// The class whose kernels serve every device where one is forced ([`force_adapter_class`]).
static FORCED_CLASS: Mutex<Option<AdapterClass>> = Mutex::new(None);

/// Chooses the kernels on every device as on an adapter of `class` from now on (`None`: each
/// device by its own class). The class decides speed only, never whether a kernel runs, so any
/// class's choice is correct on any adapter: this runs a GPU's kernels where no GPU is at hand
/// (the browser test runs the page on SwiftShader with the rule a page on a real GPU takes).
pub fn force_adapter_class(class: Option<AdapterClass>) {
    *FORCED_CLASS.lock().unwrap_or_else(|e| e.into_inner()) = class;
}

/// The class whose kernels serve the device `identity` names: the forced one where one is
/// ([`force_adapter_class`]), else its own ([`AdapterClass::of`]).
pub fn adapter_class(identity: &DeviceIdentity) -> AdapterClass {
    let forced = *FORCED_CLASS.lock().unwrap_or_else(|e| e.into_inner());
    forced.unwrap_or_else(|| AdapterClass::of(identity))
}

/// Whether this build times kernels inside a call ([`MatmulStrategy::Tuned`]): everywhere but
/// in the browser, where a device timing resolves on the event loop, after the call returns.
pub const TUNES: bool = cfg!(not(target_family = "wasm"));

/// What a weight's shape and the adapter allow besides the group kernel and dequantize+matmul,
/// which serve every product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fit {
    /// Rows of W hold whole packed words (`K % 8 == 0`): the tile kernels and the GEMM run.
    pub whole_words: bool,
    /// The subgroup kernel runs `Y = X Wᵀ`: the adapter has subgroups of 4, 8 or 16 lanes, and
    /// rows of W hold whole chunks of 4 lanes elements inside one absmax block (native only).
    pub subgroup: bool,
    /// The subgroup kernel runs `dX = dY W`: such subgroups, whole packed words, and rows of dY
    /// in whole chunks of 4 lanes values (native only).
    pub subgroup_t: bool,
}

impl Fit {
    /// Whole packed words, no subgroup kernel.
    pub const WORDS: Fit = Fit {
        whole_words: true,
        subgroup: false,
        subgroup_t: false,
    };
    /// Rows of W that end inside a packed word.
    pub const RAGGED: Fit = Fit {
        whole_words: false,
        subgroup: false,
        subgroup_t: false,
    };
    /// Everything: whole words and the subgroup kernel.
    pub const SUBGROUP: Fit = Fit {
        whole_words: true,
        subgroup: true,
        subgroup_t: true,
    };

    /// Whether the subgroup kernel runs the product (`dY W` when `transposed`).
    pub fn subgroup_for(self, transposed: bool) -> bool {
        if transposed {
            self.subgroup_t
        } else {
            self.subgroup
        }
    }
}

/// The concrete strategy for `rows` rows of X on `adapter`, for a weight that allows `fit`.
/// [`MatmulStrategy::Tuned`] means the caller times the candidates ([`tune_candidates`]).
pub fn resolve(
    strategy: MatmulStrategy,
    rows: usize,
    transposed: bool,
    adapter: AdapterClass,
    fit: Fit,
) -> MatmulStrategy {
    let tile = adapter.is_software() && fit.whole_words;
    match strategy {
        MatmulStrategy::Auto if TUNES && adapter == AdapterClass::Gpu => MatmulStrategy::Tuned,
        MatmulStrategy::Tuned if TUNES => MatmulStrategy::Tuned,
        MatmulStrategy::Auto | MatmulStrategy::Tuned => rule(rows, transposed, adapter, fit),
        MatmulStrategy::Fused if tile => MatmulStrategy::FusedTile,
        MatmulStrategy::Fused => MatmulStrategy::FusedGroup,
        MatmulStrategy::FusedSubgroup if !fit.subgroup_for(transposed) => {
            resolve(MatmulStrategy::Fused, rows, transposed, adapter, fit)
        }
        MatmulStrategy::FusedTile if !fit.whole_words => MatmulStrategy::FusedGroup,
        MatmulStrategy::FusedGemm(_) if !fit.whole_words => MatmulStrategy::DequantMatmul,
        chosen => chosen,
    }
}

/// The measured rule for `rows` rows of X on `adapter` where nothing is timed (software
/// adapters, the browser): see the module's documentation.
pub fn rule(rows: usize, transposed: bool, adapter: AdapterClass, fit: Fit) -> MatmulStrategy {
    let limit = if transposed {
        FUSED_T_MAX_ROWS
    } else {
        FUSED_MAX_ROWS
    };
    let tile_rows = match adapter {
        AdapterClass::Gpu => 0,
        AdapterClass::Llvmpipe => LLVMPIPE_TILE_MAX_ROWS,
        AdapterClass::Software => usize::MAX,
    };
    if adapter == AdapterClass::Llvmpipe
        && fit.subgroup_for(transposed)
        && rows >= llvmpipe_subgroup_min_rows(transposed)
    {
        MatmulStrategy::FusedSubgroup
    } else if adapter.is_software() && fit.whole_words {
        if rows <= tile_rows {
            MatmulStrategy::FusedTile
        } else {
            MatmulStrategy::DequantMatmul
        }
    } else if rows <= limit {
        MatmulStrategy::FusedGroup
    } else {
        MatmulStrategy::DequantMatmul
    }
}

/// The kernels [`MatmulStrategy::Tuned`] times for a product (`dY W` when `transposed`) of a
/// weight that allows `fit`, in the order it tries them: each one the shape allows, so a tuning
/// never measures one kernel twice under two names.
pub fn tune_candidates(fit: Fit, transposed: bool) -> Vec<MatmulStrategy> {
    let mut all = vec![MatmulStrategy::FusedGroup, MatmulStrategy::DequantMatmul];
    if fit.whole_words {
        all.push(MatmulStrategy::FusedTile);
        all.extend(GemmTile::ALL.map(MatmulStrategy::FusedGemm));
    }
    if fit.subgroup_for(transposed) {
        all.push(MatmulStrategy::FusedSubgroup);
    }
    all
}

/// The autotune's shape class of `rows` rows: the next power of two. Products within one class
/// share a choice, so a new sequence length does not start a new tuning.
pub fn tune_rows(rows: usize) -> usize {
    rows.max(1).next_power_of_two()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::GemmTile;
    use AdapterClass::{Gpu, Llvmpipe, Software};
    const WORDS: Fit = Fit::WORDS;
    const RAGGED: Fit = Fit::RAGGED;
    use MatmulStrategy::*;

    #[test]
    fn native_gpus_time_the_kernels_and_the_browser_keeps_the_rule() {
        for transposed in [false, true] {
            // Natively every GPU shape is timed; a software adapter is timed only on request.
            for rows in [1, 33, 2048] {
                assert_eq!(resolve(Auto, rows, transposed, Gpu, WORDS), Tuned);
                assert_eq!(resolve(Auto, rows, transposed, Gpu, RAGGED), Tuned);
                assert_eq!(resolve(Tuned, rows, transposed, Llvmpipe, WORDS), Tuned);
                assert_ne!(resolve(Auto, rows, transposed, Llvmpipe, WORDS), Tuned);
            }
            // The rule a GPU takes where nothing is timed (the browser).
            assert_eq!(rule(1, transposed, Gpu, WORDS), FusedGroup);
            assert_eq!(rule(32, transposed, Gpu, WORDS), FusedGroup);
            assert_eq!(rule(33, transposed, Gpu, WORDS), DequantMatmul);
            assert_eq!(resolve(Fused, 2048, transposed, Gpu, WORDS), FusedGroup);
        }
    }

    #[test]
    fn tuning_measures_each_kernel_the_shape_allows_once() {
        let whole = tune_candidates(WORDS, false);
        assert_eq!(whole.len(), 5);
        for (i, s) in whole.iter().enumerate() {
            assert!(!whole[i + 1..].contains(s), "{s} listed twice");
            // Each candidate runs as itself: none is rewritten into another by the shape.
            assert_eq!(resolve(*s, 300, false, Gpu, WORDS), *s);
        }
        // Where rows of W do not hold whole packed words, the tile kernel and the GEMM would
        // run as the group kernel and dequantize+matmul: they are not candidates.
        let ragged = tune_candidates(RAGGED, false);
        assert_eq!(ragged, vec![FusedGroup, DequantMatmul]);
        for s in ragged {
            assert_eq!(resolve(s, 300, true, Gpu, RAGGED), s);
        }
        assert_eq!(
            [0, 1, 2, 7, 8, 300, 2048].map(tune_rows),
            [1, 1, 2, 8, 8, 512, 2048]
        );
    }

    #[test]
    fn software_adapters_take_the_tiled_kernel_where_rows_hold_whole_words() {
        for transposed in [false, true] {
            for rows in [1, 8, 33, LLVMPIPE_TILE_MAX_ROWS, 2048] {
                assert_eq!(resolve(Auto, rows, transposed, Software, WORDS), FusedTile);
                assert_eq!(resolve(Fused, rows, transposed, Software, WORDS), FusedTile);
                assert_eq!(resolve(Fused, rows, transposed, Llvmpipe, WORDS), FusedTile);
            }
            // llvmpipe only up to its limit.
            for rows in [1, 8, 33, LLVMPIPE_TILE_MAX_ROWS] {
                assert_eq!(resolve(Auto, rows, transposed, Llvmpipe, WORDS), FusedTile);
            }
            for rows in [LLVMPIPE_TILE_MAX_ROWS + 1, 2048] {
                assert_eq!(
                    resolve(Auto, rows, transposed, Llvmpipe, WORDS),
                    DequantMatmul
                );
            }
        }
        for adapter in [Software, Llvmpipe] {
            assert_eq!(resolve(Auto, 8, false, adapter, RAGGED), FusedGroup);
            assert_eq!(resolve(Auto, 300, false, adapter, RAGGED), DequantMatmul);
        }
    }

    #[test]
    fn llvmpipe_takes_the_subgroup_kernels_where_they_run() {
        let sub = Fit::SUBGROUP;
        let x_wt_only = Fit {
            subgroup_t: false,
            ..sub
        };
        for rows in [1, 2, 8, 65, 2048] {
            let served = |&t: &bool| rows >= llvmpipe_subgroup_min_rows(t);
            for transposed in [false, true].into_iter().filter(served) {
                assert_eq!(
                    resolve(Auto, rows, transposed, Llvmpipe, sub),
                    FusedSubgroup
                );
                // Not where it does not run, not on other adapters.
                assert_ne!(
                    resolve(Auto, rows, transposed, Llvmpipe, WORDS),
                    FusedSubgroup
                );
                assert_eq!(resolve(Auto, rows, transposed, Software, sub), FusedTile);
                assert_eq!(
                    rule(rows, transposed, Gpu, sub),
                    rule(rows, transposed, Gpu, WORDS)
                );
            }
            assert_eq!(
                resolve(Auto, rows, false, Llvmpipe, x_wt_only),
                FusedSubgroup
            );
            assert_ne!(
                resolve(Auto, rows, true, Llvmpipe, x_wt_only),
                FusedSubgroup
            );
        }
        // dY W keeps the tile kernel for few rows.
        for rows in 1..LLVMPIPE_SUBGROUP_T_MIN_ROWS {
            assert_eq!(resolve(Auto, rows, true, Llvmpipe, sub), FusedTile);
        }
        // Asked for where it cannot run, it runs as the adapter's fused kernel.
        assert_eq!(
            resolve(FusedSubgroup, 512, true, Llvmpipe, sub),
            FusedSubgroup
        );
        assert_eq!(
            resolve(FusedSubgroup, 512, true, Llvmpipe, x_wt_only),
            FusedTile
        );
        assert_eq!(
            resolve(FusedSubgroup, 512, false, Llvmpipe, WORDS),
            FusedTile
        );
        assert_eq!(resolve(FusedSubgroup, 512, false, Gpu, RAGGED), FusedGroup);
        // A tuning times it for each product where it runs.
        assert!(tune_candidates(sub, false).contains(&FusedSubgroup));
        assert!(tune_candidates(sub, true).contains(&FusedSubgroup));
        assert!(!tune_candidates(x_wt_only, true).contains(&FusedSubgroup));
        assert!(!tune_candidates(WORDS, false).contains(&FusedSubgroup));
    }

    fn identity(name: &str, card: bool) -> DeviceIdentity {
        DeviceIdentity {
            name: name.into(),
            fingerprint: String::new(),
            physical: card.then(Default::default),
        }
    }

    #[test]
    fn adapters_are_classed_by_card_then_name() {
        let llvmpipe = "llvmpipe (LLVM 15.0.6, 256 bits)";
        assert_eq!(AdapterClass::of(&identity(llvmpipe, false)), Llvmpipe);
        assert_eq!(
            AdapterClass::of(&identity("google swiftshader", false)),
            Software
        );
        assert_eq!(AdapterClass::of(&identity("NVIDIA H200", true)), Gpu);
        assert!(Llvmpipe.is_software() && Software.is_software() && !Gpu.is_software());
        // The page's `?kernels=` names.
        for class in AdapterClass::ALL {
            assert_eq!(class.to_string().parse::<AdapterClass>(), Ok(class));
        }
        assert!(
            "GPU"
                .parse::<AdapterClass>()
                .unwrap_err()
                .contains("gpu, llvmpipe or software")
        );
    }

    #[test]
    fn explicit_choices_stand_unless_the_shape_forbids_them() {
        assert_eq!(resolve(FusedGroup, 1, false, Software, WORDS), FusedGroup);
        assert_eq!(resolve(FusedTile, 1, false, Gpu, WORDS), FusedTile);
        assert_eq!(resolve(FusedTile, 1, false, Gpu, RAGGED), FusedGroup);
        for tile in GemmTile::ALL {
            assert_eq!(
                resolve(FusedGemm(tile), 1, true, Gpu, WORDS),
                FusedGemm(tile)
            );
            assert_eq!(
                resolve(FusedGemm(tile), 512, false, Gpu, RAGGED),
                DequantMatmul
            );
        }
        assert_eq!(
            resolve(DequantMatmul, 1, true, Software, WORDS),
            DequantMatmul
        );
        let chunks = DequantChunks { rows: 16 };
        assert_eq!(resolve(chunks, 1, false, Gpu, WORDS), chunks);
    }
}
