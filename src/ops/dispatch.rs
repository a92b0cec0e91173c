//! Which 4-bit matmul implementation serves which shape on the kernel path.
//!
//! Decided by `examples/bench_kernels.rs`, which times the fused kernel against
//! dequantize-then-matmul for LLaMA-like shapes and prints the choice per shape class. The fused
//! kernel reads 0.5 byte per weight once and applies it to up to 8 rows at a time, so it wins
//! where the product is bound by reading W (few rows); burn's tiled matmul on a dequantized
//! copy wins once enough rows reuse each weight.
//!
//! Measured on llvmpipe (2 cores): see the table in README.md ("Kernel benchmark").

use super::layout::MatmulStrategy;

/// Largest number of rows (tokens) for which the fused kernel serves `Y = X W^T`.
pub const FUSED_MAX_ROWS: usize = 32;
/// Largest number of rows for which the fused transposed kernel serves `dX = dY W`.
pub const FUSED_T_MAX_ROWS: usize = 32;

/// The concrete strategy for `rows` rows of X.
pub fn resolve(strategy: MatmulStrategy, rows: usize, transposed: bool) -> MatmulStrategy {
    let limit = if transposed {
        FUSED_T_MAX_ROWS
    } else {
        FUSED_MAX_ROWS
    };
    match strategy {
        MatmulStrategy::Auto if rows <= limit => MatmulStrategy::Fused,
        MatmulStrategy::Auto => MatmulStrategy::DequantMatmul,
        chosen => chosen,
    }
}
