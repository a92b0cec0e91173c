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
//!   selects and never writes an f32 copy of W, serves up to [`SOFTWARE_TILE_MAX_ROWS`] rows
//!   where rows of W hold whole packed words; dequantize+matmul serves more rows. Its time grows
//!   with the rows while burn's tiled matmul gains efficiency with them, and where they cross
//!   depends on the CPU: on a Sapphire Rapids-class Xeon (AVX-512, 2 cores) dequantize+matmul
//!   was 1.15-3x faster at 512-2048 rows and level at 64-128, while on the machine of earlier
//!   measurements the tiled kernel was 1.3-1.5x faster at 512-2048 and 1.7-2.3x at 128. The
//!   limit sits where the newer machine's two paths meet; the older one keeps the tiled kernel
//!   up to it, and above it dequantize+matmul at 0.77-0.87x dense f32 (128 rows) to 0.99-1.0x
//!   (512-2048).
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
/// Largest number of rows for which the register-tiled kernels serve either product on a
/// software adapter.
pub const SOFTWARE_TILE_MAX_ROWS: usize = 64;

/// The kind of adapter the kernels run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdapterClass {
    /// A GPU (any vendor, native or through a browser).
    Gpu,
    /// A software implementation on the CPU: Mesa's llvmpipe, SwiftShader, WARP.
    Software,
}

impl AdapterClass {
    /// The class of the device `identity` names: software where no card is behind it (CubeCL
    /// reports no physical device for llvmpipe, SwiftShader, WARP or a browser's fallback adapter).
    pub fn of(identity: &DeviceIdentity) -> Self {
        if identity.physical.is_none() {
            AdapterClass::Software
        } else {
            AdapterClass::Gpu
        }
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
    let tile = adapter == AdapterClass::Software && whole_words;
    match strategy {
        MatmulStrategy::Auto if tile && rows <= SOFTWARE_TILE_MAX_ROWS => MatmulStrategy::FusedTile,
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
    use AdapterClass::{Gpu, Software};
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
    fn software_adapters_take_the_tiled_kernel_for_few_rows_that_hold_whole_words() {
        for rows in [1, 8, 33, SOFTWARE_TILE_MAX_ROWS] {
            assert_eq!(resolve(Auto, rows, false, Software, true), FusedTile);
            assert_eq!(resolve(Auto, rows, true, Software, true), FusedTile);
        }
        for rows in [SOFTWARE_TILE_MAX_ROWS + 1, 2048] {
            assert_eq!(resolve(Auto, rows, false, Software, true), DequantMatmul);
            assert_eq!(resolve(Auto, rows, true, Software, true), DequantMatmul);
        }
        for rows in [1, 2048] {
            assert_eq!(resolve(Fused, rows, false, Software, true), FusedTile);
        }
        assert_eq!(resolve(Auto, 8, false, Software, false), FusedGroup);
        assert_eq!(resolve(Auto, 300, false, Software, false), DequantMatmul);
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
