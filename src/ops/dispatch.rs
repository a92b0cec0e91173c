//! Which 4-bit matmul implementation serves which shape on the kernel path.
//!
//! Decided by `examples/bench_kernels.rs`, which times the fused kernels against
//! dequantize-then-matmul for LLaMA-like shapes and prints the choice per shape class.
//!
//! - On a GPU the fused kernel (a workgroup row per column of the output, W read coalesced)
//!   reads 0.5 byte per weight once and applies it to up to 8 rows at a time, so it wins where
//!   the product is bound by reading W (few rows); burn's tiled matmul on a dequantized copy
//!   wins once enough rows reuse each weight.
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
//! - The tiled 4-bit GEMM ([`MatmulStrategy::FusedGemm`]) is not chosen yet: it is written for
//!   GPUs, where it avoids the second dispatch and the f32 copy of dequantize+matmul, and only a
//!   GPU measurement (bench_kernels' `gemm64`, `gemm128` columns) can place it.
//!
//! Measured on llvmpipe (2 cores) and an H200: see the tables in README.md ("Kernel benchmark").

use burn::cubecl::ir::DeviceIdentity;

use super::layout::MatmulStrategy;

/// Largest number of rows (tokens) for which the GPU fused kernel serves `Y = X W^T`.
pub const FUSED_MAX_ROWS: usize = 32;
/// Largest number of rows for which the GPU fused transposed kernel serves `dX = dY W`.
pub const FUSED_T_MAX_ROWS: usize = 32;
/// Largest number of rows for which the register-tiled kernels serve either product on Mesa's
/// llvmpipe (other software adapters take them at every row count).
pub const LLVMPIPE_TILE_MAX_ROWS: usize = 64;

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
}

/// The concrete strategy for `rows` rows of X on `adapter`, for a weight whose rows hold whole
/// packed words (`in_features % 8 == 0`) or not.
pub fn resolve(
    strategy: MatmulStrategy,
    rows: usize,
    transposed: bool,
    adapter: AdapterClass,
    whole_words: bool,
) -> MatmulStrategy {
    let limit = if transposed {
        FUSED_T_MAX_ROWS
    } else {
        FUSED_MAX_ROWS
    };
    let tile = adapter.is_software() && whole_words;
    let tile_rows = if adapter == AdapterClass::Llvmpipe {
        LLVMPIPE_TILE_MAX_ROWS
    } else {
        usize::MAX
    };
    match strategy {
        MatmulStrategy::Auto if tile && rows <= tile_rows => MatmulStrategy::FusedTile,
        MatmulStrategy::Auto if tile => MatmulStrategy::DequantMatmul,
        MatmulStrategy::Fused if tile => MatmulStrategy::FusedTile,
        MatmulStrategy::Auto if rows <= limit => MatmulStrategy::FusedGroup,
        MatmulStrategy::Auto => MatmulStrategy::DequantMatmul,
        MatmulStrategy::Fused => MatmulStrategy::FusedGroup,
        MatmulStrategy::FusedTile if !whole_words => MatmulStrategy::FusedGroup,
        MatmulStrategy::FusedGemm(_) if !whole_words => MatmulStrategy::DequantMatmul,
        chosen => chosen,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::GemmTile;
    use AdapterClass::{Gpu, Llvmpipe, Software};
    use MatmulStrategy::*;

    #[test]
    fn gpus_fuse_few_rows_and_dequantize_many() {
        for transposed in [false, true] {
            assert_eq!(resolve(Auto, 1, transposed, Gpu, true), FusedGroup);
            assert_eq!(resolve(Auto, 32, transposed, Gpu, true), FusedGroup);
            assert_eq!(resolve(Auto, 33, transposed, Gpu, true), DequantMatmul);
            assert_eq!(resolve(Fused, 2048, transposed, Gpu, true), FusedGroup);
        }
    }

    #[test]
    fn software_adapters_take_the_tiled_kernel_where_rows_hold_whole_words() {
        for transposed in [false, true] {
            for rows in [1, 8, 33, LLVMPIPE_TILE_MAX_ROWS, 2048] {
                assert_eq!(resolve(Auto, rows, transposed, Software, true), FusedTile);
                assert_eq!(resolve(Fused, rows, transposed, Software, true), FusedTile);
                assert_eq!(resolve(Fused, rows, transposed, Llvmpipe, true), FusedTile);
            }
            // llvmpipe only up to its limit.
            for rows in [1, 8, 33, LLVMPIPE_TILE_MAX_ROWS] {
                assert_eq!(resolve(Auto, rows, transposed, Llvmpipe, true), FusedTile);
            }
            for rows in [LLVMPIPE_TILE_MAX_ROWS + 1, 2048] {
                assert_eq!(
                    resolve(Auto, rows, transposed, Llvmpipe, true),
                    DequantMatmul
                );
            }
        }
        for adapter in [Software, Llvmpipe] {
            assert_eq!(resolve(Auto, 8, false, adapter, false), FusedGroup);
            assert_eq!(resolve(Auto, 300, false, adapter, false), DequantMatmul);
        }
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
    }

    #[test]
    fn explicit_choices_stand_unless_the_shape_forbids_them() {
        assert_eq!(resolve(FusedGroup, 1, false, Software, true), FusedGroup);
        assert_eq!(resolve(FusedTile, 1, false, Gpu, true), FusedTile);
        assert_eq!(resolve(FusedTile, 1, false, Gpu, false), FusedGroup);
        for tile in GemmTile::ALL {
            assert_eq!(
                resolve(FusedGemm(tile), 1, true, Gpu, true),
                FusedGemm(tile)
            );
            assert_eq!(
                resolve(FusedGemm(tile), 512, false, Gpu, false),
                DequantMatmul
            );
        }
        assert_eq!(
            resolve(DequantMatmul, 1, true, Software, true),
            DequantMatmul
        );
        let chunks = DequantChunks { rows: 16 };
        assert_eq!(resolve(chunks, 1, false, Gpu, true), chunks);
    }
}
