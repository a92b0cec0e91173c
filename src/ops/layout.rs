//! Shapes and launch options shared by the backend trait and its implementations.

use burn::tensor::Shape;

/// What a quantized linear weight looks like on the device: `W` is `[out_features, in_features]`
/// row-major, in blocks of `blocksize` consecutive elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct QLayout {
    /// Rows of W (N).
    pub out_features: usize,
    /// Columns of W (K).
    pub in_features: usize,
    /// Elements per absmax block.
    pub blocksize: usize,
    /// Whether the absmax statistics are double quantized.
    pub double_quant: bool,
    /// Nested block size of the double quantization.
    pub nested_blocksize: usize,
}

impl QLayout {
    /// Elements of W.
    pub fn numel(&self) -> usize {
        self.out_features * self.in_features
    }
}

/// Which implementation computes a 4-bit matmul on the kernel path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MatmulStrategy {
    /// The choice for the shape and adapter (see [`crate::ops::dispatch`]): timed on the device
    /// ([`MatmulStrategy::Tuned`]) on a native GPU, a measured rule on software adapters and in
    /// the browser.
    #[default]
    Auto,
    /// Time every kernel that fits the shape on the device, the first time its shape class
    /// (product, rows rounded up to a power of two, K, N) is met in the process, and take the
    /// fastest from then on (CubeCL's autotune, the machinery burn tunes its own matmuls with).
    /// In the browser, where a timing cannot be awaited inside a call, it is
    /// [`MatmulStrategy::Auto`]'s rule.
    Tuned,
    /// The fused dequant+matmul WGSL kernel that suits the adapter: [`MatmulStrategy::FusedTile`]
    /// on a software adapter where K is a multiple of 8, else [`MatmulStrategy::FusedGroup`].
    Fused,
    /// The fused kernel for GPUs (`qmatmul_4bit.wgsl`, `qmatmul_4bit_t.wgsl`): a workgroup row
    /// reads a row of W coalesced and reduces through workgroup memory.
    FusedGroup,
    /// The fused kernel for software adapters (`qmatmul_4bit_tile.wgsl`,
    /// `qmatmul_4bit_t_tile.wgsl`): each invocation holds a register tile and decodes by
    /// selects. Needs K a multiple of 8; [`MatmulStrategy::FusedGroup`] serves other shapes.
    FusedTile,
    /// The fused kernels for Mesa's llvmpipe (`qmatmul_4bit_subgroup.wgsl`,
    /// `qmatmul_4bit_t_subgroup.wgsl`): the lanes of a subgroup load different parts of X (dY)
    /// and share them by `subgroupBroadcast`. Native only, where the adapter has subgroups of 4,
    /// 8 or 16 lanes and the shape whole chunks of 4 values per lane (`dispatch::Fit`);
    /// elsewhere it runs as [`MatmulStrategy::Fused`].
    FusedSubgroup,
    /// The tiled 4-bit GEMM (`qmatmul_4bit_gemm.wgsl`, `qmatmul_4bit_t_gemm.wgsl`): an f32
    /// SGEMM whose tiles of W are dequantized on their way into workgroup memory, for many rows
    /// on a GPU. Needs K a multiple of 8; [`MatmulStrategy::DequantMatmul`] serves other shapes.
    FusedGemm(GemmTile),
    /// Dequantize to f32 with the WGSL kernel, then burn's matmul, in chunks of rows of W whose
    /// f32 copy stays under WebGPU's default binding limit (128 MiB).
    DequantMatmul,
    /// [`MatmulStrategy::DequantMatmul`] with at most `rows` rows of W per chunk (rounded up to
    /// a multiple of 8).
    DequantChunks {
        /// Rows of W dequantized at a time.
        rows: usize,
    },
}

impl std::fmt::Display for MatmulStrategy {
    /// The short name the benchmark prints and the autotune records.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MatmulStrategy::Auto => f.write_str("auto"),
            MatmulStrategy::Tuned => f.write_str("tuned"),
            MatmulStrategy::Fused => f.write_str("fused"),
            MatmulStrategy::FusedGroup => f.write_str("group"),
            MatmulStrategy::FusedTile => f.write_str("tile"),
            MatmulStrategy::FusedSubgroup => f.write_str("subgroup"),
            MatmulStrategy::FusedGemm(tile) => write!(f, "gemm{}", tile.side()),
            MatmulStrategy::DequantMatmul => f.write_str("dequant_matmul"),
            MatmulStrategy::DequantChunks { rows } => write!(f, "dequant_matmul_{rows}"),
        }
    }
}

/// The output tile one workgroup of the tiled 4-bit GEMM computes (16 x 16 invocations, each
/// holding a square register tile).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GemmTile {
    /// 64 x 64 outputs, 4 x 4 per invocation, 8 KiB of workgroup memory.
    T64,
    /// 128 x 128 outputs, 8 x 8 per invocation, 16 KiB of workgroup memory (WebGPU's default
    /// limit): twice the reuse of each staged value, a quarter of the workgroups.
    T128,
}

impl GemmTile {
    /// Every tile, in the order the benchmark lists them.
    pub const ALL: [GemmTile; 2] = [GemmTile::T64, GemmTile::T128];

    /// Rows (and columns) of the output each invocation holds.
    pub fn per_invocation(self) -> u32 {
        match self {
            GemmTile::T64 => 4,
            GemmTile::T128 => 8,
        }
    }

    /// Rows (and columns) of the output each workgroup computes.
    pub fn side(self) -> usize {
        16 * self.per_invocation() as usize
    }
}

/// Output shape of `X * W^T`: X's shape with the last dimension replaced by `out_features`.
pub fn qmatmul_shape(x: &Shape, layout: &QLayout) -> Shape {
    let mut dims = x.to_vec();
    *dims
        .last_mut()
        .expect("qmatmul input has at least one dimension") = layout.out_features;
    Shape::from(dims)
}

/// Output shape of `dY * W`: dY's shape with the last dimension replaced by `in_features`.
pub fn qmatmul_t_shape(dy: &Shape, layout: &QLayout) -> Shape {
    let mut dims = dy.to_vec();
    *dims
        .last_mut()
        .expect("qmatmul_t input has at least one dimension") = layout.in_features;
    Shape::from(dims)
}

/// Shape of the dequantized weight.
pub fn dequant_shape(layout: &QLayout) -> Shape {
    Shape::from(vec![layout.out_features, layout.in_features])
}

/// Output shape of `op(L) * op(R)` for 2-D operands, `op` a transpose when its flag is set.
pub fn lora_shape(lhs: &Shape, rhs: &Shape, trans_lhs: &bool, trans_rhs: &bool) -> Shape {
    let rows = if *trans_lhs { lhs[1] } else { lhs[0] };
    let cols = if *trans_rhs { rhs[0] } else { rhs[1] };
    Shape::from(vec![rows, cols])
}
