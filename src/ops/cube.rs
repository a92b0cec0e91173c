//! The WGSL implementation of [`QuantBackend`] for burn's CubeCL backend on the wgpu runtime.

use burn::backend::{
    ops::FloatTensorOps,
    tensor::{FloatTensor, IntTensor},
    wgpu::{CubeBackend, CubeTensor, KernelSource, SourceKernel, SourceTemplate, into_contiguous},
};
use burn::cubecl::{
    CubeCount, CubeDim,
    ir::DeviceProperties,
    prelude::KernelId,
    server::{KernelArguments, MetadataBindingInfo},
};
use burn::tensor::{DType, Shape};

use super::backend::QuantBackend;
use super::dispatch::{self, Fit};
use super::layout::{MatmulStrategy, QLayout};
use super::shaders::{self, Shader, StatsKind};

/// A rendered WGSL specialization as a CubeCL kernel source.
struct WgslKernel(Shader);

impl KernelSource for WgslKernel {
    fn source(&self) -> SourceTemplate {
        SourceTemplate::new(self.0.source())
    }

    fn id(&self) -> KernelId {
        KernelId::new::<Self>().info(self.0)
    }

    fn lang(&self) -> &'static str {
        "wgsl"
    }
}

/// Panics unless `t` lives on the wgpu runtime with the WGSL compiler: the public API in
/// [`crate::ops`] routes every other runtime to the reference implementation.
fn ensure_wgsl(t: &CubeTensor) {
    let name = t.client.name();
    assert!(
        name.contains("wgsl"),
        "wgtune's WGSL kernels need the wgpu runtime with WGSL, got '{name}'; \
         other runtimes take the reference path"
    );
}

fn ensure_f32(t: &CubeTensor, what: &str) {
    assert!(
        t.dtype == DType::F32,
        "{what} must be f32 for the 4-bit kernels, got {:?}",
        t.dtype
    );
}

fn empty_f32(like: &CubeTensor, shape: Shape) -> CubeTensor {
    let handle = like.client.empty(shape.num_elements() * 4);
    CubeTensor::new_contiguous(
        like.client.clone(),
        like.device.clone(),
        shape,
        handle,
        DType::F32,
    )
}

/// Split `groups` workgroups over x and y so neither exceeds the 65535 limit.
fn grid_2d(groups: usize) -> (u32, u32) {
    const MAX: usize = 65535;
    if groups <= MAX {
        (groups.max(1) as u32, 1)
    } else {
        (MAX as u32, groups.div_ceil(MAX) as u32)
    }
}

/// Launches `shader` over `buffers` (its storage bindings, in order) with up to
/// [`shaders::MAX_PARAMS`] `params`, which the shader reads from CubeCL's info uniform (the
/// binding after the buffers; see [`shaders`]).
///
/// The uniform, unlike a storage buffer made for the call, is cached by content: a launch with
/// parameters seen before uploads nothing. An upload would also end the batch of recorded work
/// (CubeCL submits the queue before every buffer write, and blocks on the GPU after 64 of
/// them), which on a GPU costs more than a small kernel.
fn launch(shader: Shader, count: (u32, u32, u32), buffers: &[&CubeTensor], params: &[u32]) {
    let client = &buffers[0].client;
    let (x, y, z) = shader.workgroup();
    let bindings: Vec<_> = buffers.iter().map(|t| t.handle.clone().binding()).collect();
    client.launch(
        Box::new(SourceKernel::new(
            WgslKernel(shader),
            CubeDim::new_3d(x, y, z),
        )),
        CubeCount::Static(count.0, count.1, count.2),
        KernelArguments::new()
            .with_buffers(bindings)
            .with_info(MetadataBindingInfo::custom(shaders::pack_params(params))),
    );
}

/// The subgroup size the subgroup kernels run with on the adapter behind `props`:
/// one size only (a workgroup is one subgroup), one it is specialized for, and subgroups
/// enabled on the device. Never in the browser, whose WGSL would need `enable subgroups;`.
#[cfg(not(target_family = "wasm"))]
fn subgroup_lanes(props: &DeviceProperties) -> Option<u32> {
    let (min, max) = (props.hardware.plane_size_min, props.hardware.plane_size_max);
    (min == max
        && shaders::SUBGROUP_LANES.contains(&min)
        && crate::device::has_subgroups(&props.identity.name))
    .then_some(min)
}

#[cfg(target_family = "wasm")]
fn subgroup_lanes(_: &DeviceProperties) -> Option<u32> {
    None
}

/// What `layout`'s weight allows on the adapter behind `props` (see [`Fit`]).
pub(super) fn fit(props: &DeviceProperties, layout: &QLayout) -> Fit {
    // A chunk of the subgroup kernels: 4 values per lane. X Wᵀ takes chunks of a row of W,
    // whole in the row and in a block; dY W takes chunks of a row of dY (N long).
    let chunk = subgroup_lanes(props).map(|lanes| 4 * lanes as usize);
    let whole_words = layout.in_features.is_multiple_of(8);
    Fit {
        whole_words,
        subgroup: chunk
            .is_some_and(|c| layout.in_features.is_multiple_of(c) && layout.blocksize >= c),
        subgroup_t: chunk.is_some_and(|c| whole_words && layout.out_features.is_multiple_of(c)),
    }
}

/// The four weight tensors, contiguous, checked against the layout.
#[derive(Clone)]
pub(super) struct Weight {
    packed: CubeTensor,
    absmax_q: CubeTensor,
    scales: CubeTensor,
    tables: CubeTensor,
    stats: StatsKind,
}

impl Weight {
    fn new(
        packed: CubeTensor,
        absmax_q: CubeTensor,
        scales: CubeTensor,
        tables: CubeTensor,
        layout: &QLayout,
    ) -> Self {
        ensure_wgsl(&packed);
        assert_eq!(
            packed.meta.shape().num_elements(),
            layout.numel().div_ceil(8),
            "packed weight words disagree with the layout {layout:?}"
        );
        assert!(
            layout.blocksize >= 8 && layout.blocksize.is_power_of_two(),
            "blocksize must be a power of two >= 8, got {}",
            layout.blocksize
        );
        ensure_f32(&scales, "absmax statistics");
        ensure_f32(&tables, "quantization tables");
        Self {
            packed: into_contiguous(packed),
            absmax_q: into_contiguous(absmax_q),
            scales: into_contiguous(scales),
            tables: into_contiguous(tables),
            stats: StatsKind {
                double_quant: layout.double_quant,
                nested: layout.nested_blocksize as u32,
            },
        }
    }

    fn buffers(&self) -> [&CubeTensor; 4] {
        [&self.packed, &self.absmax_q, &self.scales, &self.tables]
    }
}

/// Largest f32 buffer the dequantize-then-matmul path materializes at once, whatever the device
/// binds: the transient copy of one weight stays small next to the model (a LLaMA-7B MLP weight,
/// 172 MiB in f32, dequantizes in one piece; larger weights go in chunks).
const MAX_DEQUANT_BYTES: u64 = 256 << 20;

/// Rows of W per dequantized chunk: a multiple of 8 (so chunks start on a packed word) whose
/// f32 copy fits both [`MAX_DEQUANT_BYTES`] and the device's largest storage binding (WebGPU's
/// default is 128 MiB, which browsers and software adapters enforce; a GPU's Vulkan binds GiBs).
fn chunk_rows(w: &Weight, layout: &QLayout) -> usize {
    let binding = w.scales.client.properties().memory.max_page_size;
    let bytes = MAX_DEQUANT_BYTES.min(binding) as usize;
    let rows = bytes / (4 * layout.in_features.max(1));
    (rows / 8 * 8).max(8)
}

/// Rows `r0..r1` of `dequant(W)` as an f32 `[r1 - r0, K]` tensor (`r0` a multiple of 8).
fn dequantize_rows(w: &Weight, layout: &QLayout, r0: usize, r1: usize) -> CubeTensor {
    let k = layout.in_features;
    let numel = (r1 - r0) * k;
    let out = empty_f32(&w.scales, Shape::from(vec![r1 - r0, k]));
    let first_word = r0 * k / 8;
    let words = (r1 * k).div_ceil(8) - first_word;
    let (gx, gy) = grid_2d(words.div_ceil(shaders::DEQUANT_WG as usize));
    let [p, q, s, t] = w.buffers();
    launch(
        Shader::Dequant(w.stats),
        (gx, gy, 1),
        &[p, q, s, t, &out],
        &[
            numel as u32,
            layout.blocksize as u32,
            words as u32,
            gx,
            first_word as u32,
        ],
    );
    out
}

/// `dequant(W[r0..r1, :])ᵀ` as a row-major `[K, r1 - r0]` tensor (`dequant_4bit_t.wgsl`), the
/// right-hand operand of `X Wᵀ` in the layout a dense model stores. Needs `K % 8 == 0`.
fn dequantize_rows_t(w: &Weight, layout: &QLayout, r0: usize, r1: usize) -> CubeTensor {
    let k = layout.in_features;
    debug_assert!(
        k.is_multiple_of(8),
        "the transposing dequantization needs whole words per row"
    );
    let rows = r1 - r0;
    let out = empty_f32(&w.scales, Shape::from(vec![k, rows]));
    let (tn, tk) = shaders::DEQUANT_T_TILE;
    let tiles_k = k.div_ceil(tk);
    let (gx, gy) = grid_2d(rows.div_ceil(tn) * tiles_k);
    let [p, q, s, t] = w.buffers();
    launch(
        Shader::DequantT(w.stats),
        (gx, gy, 1),
        &[p, q, s, t, &out],
        &[
            k as u32,
            layout.blocksize as u32,
            r0 as u32,
            rows as u32,
            tiles_k as u32,
            gx,
        ],
    );
    out
}

fn dequantize_weight(w: &Weight, layout: &QLayout) -> CubeTensor {
    dequantize_rows(w, layout, 0, layout.out_features)
}

/// `X W^T` (or `dY W` when `transposed`) over the last dimension of `input`, by the fused
/// kernel or by dequantizing then burn's matmul, as `strategy` and the row count decide.
pub(super) fn linear(
    input: CubeTensor,
    w: Weight,
    layout: &QLayout,
    strategy: MatmulStrategy,
    transposed: bool,
) -> CubeTensor {
    ensure_f32(&input, "4-bit matmul input");
    let input = into_contiguous(input);
    let shape = input.meta.shape().clone();
    let (k, n) = (layout.in_features, layout.out_features);
    // Y[m, n] = sum_k X[m, k] W[n, k]  or  dX[m, k] = sum_n dY[m, n] W[n, k].
    let (inner, outer) = if transposed { (n, k) } else { (k, n) };
    assert_eq!(
        shape[shape.num_dims() - 1],
        inner,
        "4-bit matmul input's last dimension must be {inner} for layout {layout:?}"
    );
    let m = shape.num_elements() / inner.max(1);
    let mut out_dims = shape.to_vec();
    *out_dims.last_mut().expect("at least one dimension") = outer;
    let out_shape = Shape::from(out_dims);
    let props = input.client.properties();
    let resolved = dispatch::resolve(
        strategy,
        m,
        transposed,
        dispatch::adapter_class(&props.identity),
        fit(props, layout),
    );
    #[cfg(not(target_family = "wasm"))]
    if resolved == MatmulStrategy::Tuned {
        return super::tune::tuned_linear(input, w, layout, transposed);
    }
    let chunk = match resolved {
        MatmulStrategy::DequantMatmul => Some(chunk_rows(&w, layout)),
        MatmulStrategy::DequantChunks { rows } => Some(rows.div_ceil(8).max(1) * 8),
        _ => None,
    };
    if let Some(step) = chunk {
        let lhs = CubeBackend::float_reshape(input, Shape::from(vec![m, inner]));
        let out = dequant_matmul(lhs, &w, layout, step, transposed);
        return CubeBackend::float_reshape(out, out_shape);
    }
    let out = empty_f32(&input, out_shape);
    if m == 0 {
        return out;
    }
    let [p, q, s, t] = w.buffers();
    if let MatmulStrategy::FusedGemm(tile) = resolved {
        // A (16 * tile)^2 tile of the output per workgroup, no 2-D split needed: 128k output
        // columns are at most 2048 groups, and the 65535-group limit on y is 4M rows.
        let side = tile.side();
        let tile = tile.per_invocation();
        let shader = if transposed {
            Shader::QmatmulTGemm {
                stats: w.stats,
                tile,
            }
        } else {
            Shader::QmatmulGemm {
                stats: w.stats,
                tile,
            }
        };
        launch(
            shader,
            (outer.div_ceil(side) as u32, m.div_ceil(side) as u32, 1),
            &[p, q, s, t, &input, &out],
            &[m as u32, n as u32, k as u32, layout.blocksize as u32],
        );
        return out;
    }
    // The row-tiled kernels: `tm` rows of the input per workgroup (the grid's z), and the
    // output columns each workgroup covers (x * y).
    let stats = w.stats;
    let (shader, tm, columns_per_group) = if resolved == MatmulStrategy::FusedSubgroup {
        let lanes = subgroup_lanes(props).expect("the subgroup kernel is resolved where it runs");
        let tm = shaders::subgroup_tm(m);
        if transposed {
            let shader = Shader::QmatmulTSubgroup { stats, tm, lanes };
            (shader, tm, lanes * shaders::SUBGROUP_TW * 8)
        } else {
            let shader = Shader::QmatmulSubgroup { stats, tm, lanes };
            (shader, tm, lanes * shaders::SUBGROUP_TN)
        }
    } else {
        let tm = shaders::fused_tm(m);
        let (shader, columns) = match (transposed, resolved == MatmulStrategy::FusedTile) {
            (false, false) => (Shader::Qmatmul { stats, tm }, 8),
            (true, false) => (Shader::QmatmulT { stats, tm }, 64),
            (false, true) => (
                Shader::QmatmulTile { stats, tm },
                shaders::TILE_WG * shaders::TILE_TN,
            ),
            (true, true) => (
                Shader::QmatmulTTile { stats, tm },
                shaders::TILE_WG * shaders::TILE_TW * 8,
            ),
        };
        (shader, tm, columns)
    };
    let (gx, gy) = grid_2d(outer.div_ceil(columns_per_group as usize));
    launch(
        shader,
        (gx, gy, m.div_ceil(tm as usize) as u32),
        &[p, q, s, t, &input, &out],
        &[m as u32, n as u32, k as u32, layout.blocksize as u32, gx],
    );
    out
}

/// `lhs W^T` (`[m, K] -> [m, N]`) or, when `transposed`, `lhs W` (`[m, N] -> [m, K]`) through
/// dequantized chunks of `step` rows of W (a multiple of 8) and burn's matmul: each chunk's f32
/// copy lives only for its product.
fn dequant_matmul(
    lhs: CubeTensor,
    w: &Weight,
    layout: &QLayout,
    step: usize,
    transposed: bool,
) -> CubeTensor {
    let n = layout.out_features;
    let m = lhs.meta.shape()[0];
    let mut outputs = Vec::new();
    let mut sum: Option<CubeTensor> = None;
    for r0 in (0..n).step_by(step) {
        let r1 = (r0 + step).min(n);
        if transposed {
            let wd = dequantize_rows(w, layout, r0, r1); // [r1 - r0, K]
            // dX = sum over chunks of dY[:, r0..r1] W[r0..r1, :].
            let part = if r0 == 0 && r1 == n {
                lhs.clone()
            } else {
                CubeBackend::float_slice(lhs.clone(), &[(0..m).into(), (r0..r1).into()])
            };
            let prod = CubeBackend::float_matmul(part, wd);
            sum = Some(match sum {
                Some(acc) => CubeBackend::float_add(acc, prod),
                None => prod,
            });
        } else {
            // Y[:, r0..r1] = X W[r0..r1, :]^T, W^T dequantized straight into [K, r1 - r0]
            // where rows hold whole words, else as a transposed view of [r1 - r0, K].
            let wt = if layout.in_features.is_multiple_of(8) {
                dequantize_rows_t(w, layout, r0, r1)
            } else {
                CubeBackend::float_transpose(dequantize_rows(w, layout, r0, r1))
            };
            outputs.push(CubeBackend::float_matmul(lhs.clone(), wt));
        }
    }
    match sum {
        Some(dx) => dx,
        None if outputs.len() == 1 => outputs.pop().expect("one chunk"),
        None => CubeBackend::float_cat(outputs, 1),
    }
}

impl QuantBackend for CubeBackend {
    fn qmatmul(
        x: FloatTensor<Self>,
        packed: IntTensor<Self>,
        absmax_q: IntTensor<Self>,
        scales: FloatTensor<Self>,
        tables: FloatTensor<Self>,
        layout: QLayout,
        strategy: MatmulStrategy,
    ) -> FloatTensor<Self> {
        let w = Weight::new(packed, absmax_q, scales, tables, &layout);
        linear(x, w, &layout, strategy, false)
    }

    fn qmatmul_t(
        dy: FloatTensor<Self>,
        packed: IntTensor<Self>,
        absmax_q: IntTensor<Self>,
        scales: FloatTensor<Self>,
        tables: FloatTensor<Self>,
        layout: QLayout,
        strategy: MatmulStrategy,
    ) -> FloatTensor<Self> {
        let w = Weight::new(packed, absmax_q, scales, tables, &layout);
        linear(dy, w, &layout, strategy, true)
    }

    fn dequantize_4bit(
        packed: IntTensor<Self>,
        absmax_q: IntTensor<Self>,
        scales: FloatTensor<Self>,
        tables: FloatTensor<Self>,
        layout: QLayout,
    ) -> FloatTensor<Self> {
        let w = Weight::new(packed, absmax_q, scales, tables, &layout);
        dequantize_weight(&w, &layout)
    }

    fn lora_matmul(
        lhs: FloatTensor<Self>,
        rhs: FloatTensor<Self>,
        trans_lhs: bool,
        trans_rhs: bool,
        alpha: f32,
    ) -> FloatTensor<Self> {
        ensure_wgsl(&lhs);
        ensure_f32(&lhs, "LoRA lhs");
        ensure_f32(&rhs, "LoRA rhs");
        let (ls, rs) = (lhs.meta.shape().clone(), rhs.meta.shape().clone());
        assert!(
            ls.num_dims() == 2 && rs.num_dims() == 2,
            "lora_matmul takes 2-D operands, got {ls:?} and {rs:?}"
        );
        // Element (i, k) of op(L) is lhs[i*a_rs + k*a_cs]; element (k, j) of op(R) is
        // rhs[k*b_rs + j*b_cs]. The tensors' own strides serve, so transposed views need no copy.
        let (l0, l1) = (lhs.meta.strides()[0] as u32, lhs.meta.strides()[1] as u32);
        let (r0, r1) = (rhs.meta.strides()[0] as u32, rhs.meta.strides()[1] as u32);
        let (mo, kl, a_rs, a_cs) = if trans_lhs {
            (ls[1], ls[0], l1, l0)
        } else {
            (ls[0], ls[1], l0, l1)
        };
        let (kr, no, b_rs, b_cs) = if trans_rhs {
            (rs[1], rs[0], r1, r0)
        } else {
            (rs[0], rs[1], r0, r1)
        };
        assert_eq!(
            kl, kr,
            "lora_matmul inner dimensions differ: {ls:?} x {rs:?}"
        );
        let out = empty_f32(&lhs, Shape::from(vec![mo, no]));
        if mo == 0 || no == 0 {
            return out;
        }
        let (tm, tn) = (shaders::lora_tile(mo), shaders::lora_tile(no));
        let gx = no.div_ceil(16 * tn as usize) as u32;
        let gy = mo.div_ceil(16 * tm as usize) as u32;
        launch(
            Shader::Lora { tm, tn },
            (gx, gy, 1),
            &[&lhs, &rhs, &out],
            &[
                mo as u32,
                no as u32,
                kl as u32,
                a_rs,
                a_cs,
                b_rs,
                b_cs,
                alpha.to_bits(),
            ],
        );
        out
    }
}
