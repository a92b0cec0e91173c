//! The WGSL sources in `shaders/` and the specializations the code launches.
//!
//! Templates use `{{ name }}` placeholders; [`Shader::source`] renders one specialization. The
//! same rendering feeds the kernels and the naga validation test, so a shader that fails to
//! validate fails on any machine, GPU or not.
//!
//! Each shader takes its launch parameters (shapes, strides, ..) as
//! `var<uniform> params: array<vec4<u32>, 2>` in the binding after its storage buffers: CubeCL's
//! per-launch info uniform, which it fills from [`pack_params`]'s 64-bit words.

use super::layout::GemmTile;

const COMMON_4BIT: &str = include_str!("../../shaders/common_4bit.wgsl");
const DEQUANT_4BIT: &str = include_str!("../../shaders/dequant_4bit.wgsl");
const DEQUANT_4BIT_T: &str = include_str!("../../shaders/dequant_4bit_t.wgsl");
const QMATMUL_4BIT: &str = include_str!("../../shaders/qmatmul_4bit.wgsl");
const QMATMUL_4BIT_T: &str = include_str!("../../shaders/qmatmul_4bit_t.wgsl");
const QMATMUL_4BIT_TILE: &str = include_str!("../../shaders/qmatmul_4bit_tile.wgsl");
const QMATMUL_4BIT_T_TILE: &str = include_str!("../../shaders/qmatmul_4bit_t_tile.wgsl");
const QMATMUL_4BIT_SUBGROUP: &str = include_str!("../../shaders/qmatmul_4bit_subgroup.wgsl");
const QMATMUL_4BIT_T_SUBGROUP: &str = include_str!("../../shaders/qmatmul_4bit_t_subgroup.wgsl");
const GEMM_TILE: &str = include_str!("../../shaders/gemm_tile.wgsl");
const QMATMUL_4BIT_GEMM: &str = include_str!("../../shaders/qmatmul_4bit_gemm.wgsl");
const QMATMUL_4BIT_T_GEMM: &str = include_str!("../../shaders/qmatmul_4bit_t_gemm.wgsl");
const LORA: &str = include_str!("../../shaders/lora.wgsl");

/// Invocations per workgroup of the dequantization kernel.
pub const DEQUANT_WG: u32 = 256;
/// Rows and columns of W per workgroup of the transposing dequantization kernel (the columns a
/// multiple of 8); it runs one invocation per packed word of the tile.
pub const DEQUANT_T_TILE: (usize, usize) = (32, 64);
const DEQUANT_T_WG: u32 = (DEQUANT_T_TILE.0 * DEQUANT_T_TILE.1 / 8) as u32;
/// Row-tile sizes the fused kernels are specialized for.
pub const FUSED_TILES: [u32; 2] = [1, 8];

/// Rows of X handled per workgroup by the fused kernels (the grid's z covers the rest): one
/// for a single row (token generation), else eight.
pub fn fused_tm(rows: usize) -> u32 {
    if rows == 1 { 1 } else { 8 }
}
/// Invocations per workgroup of the register-tiled kernels for software adapters: one vector of
/// eight f32 lanes on llvmpipe (wider groups measured no faster there, and fewer groups share out
/// worse over many cores).
pub const TILE_WG: u32 = 8;
/// Columns of Y per invocation of `qmatmul_4bit_tile.wgsl`.
pub const TILE_TN: u32 = 8;
/// Packed words of W (eight columns of dX each) per invocation of `qmatmul_4bit_t_tile.wgsl`.
pub const TILE_TW: u32 = 2;

/// Subgroup sizes the subgroup kernels are specialized for (llvmpipe's is 8 with 256-bit
/// vectors, 16 with 512-bit ones; SwiftShader's is 4).
pub const SUBGROUP_LANES: [u32; 3] = [4, 8, 16];
/// Columns of Y per invocation of `qmatmul_4bit_subgroup.wgsl`: each vec4 of X a lane loads
/// serves this many columns. 4 measured 1.2x 2 at 32 rows (576x1536, 512 rows, llvmpipe).
pub const SUBGROUP_TN: u32 = 4;
/// Word columns (8 columns of dX each) per invocation of `qmatmul_4bit_t_subgroup.wgsl`: 1, 2
/// and 4 measured 1.45x, 1.46x and 1.13x dense f32 (576x1536, 512 rows, llvmpipe).
pub const SUBGROUP_TW: u32 = 2;
/// Rows of X (dY) per invocation of the subgroup kernels, the row tiles they are specialized for.
pub const SUBGROUP_TILES: [u32; 4] = [1, 8, 16, 32];

/// The subgroup kernels' row tile for `rows` rows of X (dY): the smallest of 1, 8, 16 and 32
/// that holds them, 32 beyond (each decoded weight serves 32 rows; 16 and 24 measured
/// 0.85-0.95x of 32 at 512 rows, 64 no faster).
pub fn subgroup_tm(rows: usize) -> u32 {
    match rows {
        0..=1 => 1,
        2..=8 => 8,
        9..=16 => 16,
        _ => 32,
    }
}

/// Most launch parameters a shader takes (`array<vec4<u32>, 2>`).
pub const MAX_PARAMS: usize = 8;

/// `params` as CubeCL's info words: zero-padded to [`MAX_PARAMS`] u32, two per little-endian u64,
/// so the uniform's bytes are the u32 in order.
///
/// Panics on more than [`MAX_PARAMS`] parameters (a bug in the launching code).
pub fn pack_params(params: &[u32]) -> Vec<u64> {
    assert!(
        params.len() <= MAX_PARAMS,
        "{} shader parameters, at most {MAX_PARAMS}",
        params.len()
    );
    let mut padded = [0u32; MAX_PARAMS];
    padded[..params.len()].copy_from_slice(params);
    padded
        .chunks(2)
        .map(|pair| u64::from(pair[0]) | (u64::from(pair[1]) << 32))
        .collect()
}

/// Nested block size of double quantization (bitsandbytes uses 256).
pub const NESTED_BLOCKSIZE: u32 = 256;

/// How a 4-bit weight stores its block statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StatsKind {
    /// Double quantization (u8 absmax codes + nested absmax) instead of f32 absmax.
    pub double_quant: bool,
    /// Nested block size (only read with double quantization).
    pub nested: u32,
}

/// One specialization of one shader.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shader {
    /// `dequant_4bit.wgsl`.
    Dequant(StatsKind),
    /// `dequant_4bit_t.wgsl`: rows of W dequantized into `[K, rows]` (needs `K % 8 == 0`).
    DequantT(StatsKind),
    /// `qmatmul_4bit.wgsl`, `tm` rows of X per workgroup.
    Qmatmul { stats: StatsKind, tm: u32 },
    /// `qmatmul_4bit_t.wgsl`, `tm` rows of dY per workgroup.
    QmatmulT { stats: StatsKind, tm: u32 },
    /// `qmatmul_4bit_tile.wgsl`, `tm` rows of X per invocation (needs `K % 8 == 0`).
    QmatmulTile { stats: StatsKind, tm: u32 },
    /// `qmatmul_4bit_t_tile.wgsl`, `tm` rows of dY per invocation (needs `K % 8 == 0`).
    QmatmulTTile { stats: StatsKind, tm: u32 },
    /// `qmatmul_4bit_subgroup.wgsl`, `tm` rows of X per invocation, subgroups of `lanes` lanes
    /// (needs `K % (4 lanes) == 0` and a blocksize >= `4 lanes`; native only).
    QmatmulSubgroup {
        stats: StatsKind,
        tm: u32,
        lanes: u32,
    },
    /// `qmatmul_4bit_t_subgroup.wgsl`, `tm` rows of dY per invocation, subgroups of `lanes`
    /// lanes (needs `K % 8 == 0` and `N % (4 lanes) == 0`; native only).
    QmatmulTSubgroup {
        stats: StatsKind,
        tm: u32,
        lanes: u32,
    },
    /// `qmatmul_4bit_gemm.wgsl` with a `tile` x `tile` register tile per invocation (needs
    /// `K % 8 == 0`).
    QmatmulGemm { stats: StatsKind, tile: u32 },
    /// `qmatmul_4bit_t_gemm.wgsl` with a `tile` x `tile` register tile per invocation (needs
    /// `K % 8 == 0`).
    QmatmulTGemm { stats: StatsKind, tile: u32 },
    /// `lora.wgsl` with a `tm` x `tn` micro-tile per invocation.
    Lora { tm: u32, tn: u32 },
}

impl Shader {
    /// Workgroup size `(x, y, z)`, as written in the shader.
    pub fn workgroup(&self) -> (u32, u32, u32) {
        match self {
            Shader::Dequant(_) => (DEQUANT_WG, 1, 1),
            Shader::DequantT(_) => (DEQUANT_T_WG, 1, 1),
            Shader::Qmatmul { .. } => (32, 8, 1),
            Shader::QmatmulT { .. } => (64, 4, 1),
            Shader::QmatmulTile { .. } | Shader::QmatmulTTile { .. } => (TILE_WG, 1, 1),
            Shader::QmatmulSubgroup { lanes, .. } | Shader::QmatmulTSubgroup { lanes, .. } => {
                (*lanes, 1, 1)
            }
            Shader::QmatmulGemm { .. } | Shader::QmatmulTGemm { .. } => (16, 16, 1),
            Shader::Lora { .. } => (16, 16, 1),
        }
    }

    /// Whether the shader calls subgroup builtins: it compiles only where the device enables
    /// subgroups, which WebGPU in a browser does only behind `enable subgroups;` (not written,
    /// since naga refuses the directive): native only.
    pub fn needs_subgroups(&self) -> bool {
        matches!(
            self,
            Shader::QmatmulSubgroup { .. } | Shader::QmatmulTSubgroup { .. }
        )
    }

    /// The rendered WGSL text of this specialization.
    pub fn source(&self) -> String {
        match *self {
            Shader::Dequant(stats) => {
                let body = render(
                    DEQUANT_4BIT,
                    &[
                        ("wg", DEQUANT_WG.to_string()),
                        ("tile_len", (2 * DEQUANT_WG).to_string()),
                    ],
                );
                with_common(stats, &body)
            }
            Shader::DequantT(stats) => {
                let (tn, tk) = DEQUANT_T_TILE;
                let body = render(
                    DEQUANT_4BIT_T,
                    &[
                        ("tn", tn.to_string()),
                        ("tk", tk.to_string()),
                        ("wg", DEQUANT_T_WG.to_string()),
                        ("tile_len", (tn * (tk + 1)).to_string()),
                    ],
                );
                with_common(stats, &body)
            }
            Shader::Qmatmul { stats, tm } => {
                let body = render(
                    QMATMUL_4BIT,
                    &[
                        ("tm", tm.to_string()),
                        ("partial_len", (8 * tm * 32).to_string()),
                    ],
                );
                with_common(stats, &body)
            }
            Shader::QmatmulT { stats, tm } => {
                let body = render(
                    QMATMUL_4BIT_T,
                    &[
                        ("tm", tm.to_string()),
                        ("partial_len", (4 * tm * 64).to_string()),
                    ],
                );
                with_common(stats, &body)
            }
            Shader::QmatmulTile { stats, tm } => {
                let body = render(
                    QMATMUL_4BIT_TILE,
                    &[
                        ("tm", tm.to_string()),
                        ("tn", TILE_TN.to_string()),
                        ("wg", TILE_WG.to_string()),
                        ("acc_len", (tm * TILE_TN).to_string()),
                        ("xs_len", (2 * tm).to_string()),
                    ],
                );
                with_common(stats, &body)
            }
            Shader::QmatmulTTile { stats, tm } => {
                let body = render(
                    QMATMUL_4BIT_T_TILE,
                    &[
                        ("tm", tm.to_string()),
                        ("tw", TILE_TW.to_string()),
                        ("wg", TILE_WG.to_string()),
                        ("acc_len", (2 * tm * TILE_TW).to_string()),
                    ],
                );
                with_common(stats, &body)
            }
            Shader::QmatmulSubgroup { stats, tm, lanes } => {
                let body = render(
                    QMATMUL_4BIT_SUBGROUP,
                    &[
                        ("tm", tm.to_string()),
                        ("tn", SUBGROUP_TN.to_string()),
                        ("lanes", lanes.to_string()),
                        ("acc_len", (tm * SUBGROUP_TN).to_string()),
                        ("wd_len", (lanes * SUBGROUP_TN).to_string()),
                        ("decode", subgroup_decode(lanes)),
                        ("rows", subgroup_rows(tm, lanes)),
                        ("store", subgroup_store(tm)),
                    ],
                );
                with_common(stats, &body)
            }
            Shader::QmatmulTSubgroup { stats, tm, lanes } => {
                let body = render(
                    QMATMUL_4BIT_T_SUBGROUP,
                    &[
                        ("tm", tm.to_string()),
                        ("tw", SUBGROUP_TW.to_string()),
                        ("lanes", lanes.to_string()),
                        ("acc_len", (2 * tm * SUBGROUP_TW).to_string()),
                        ("load", subgroup_t_load(tm)),
                        ("lanes_code", subgroup_t_lanes(tm, lanes)),
                        ("store", subgroup_t_store(tm)),
                    ],
                );
                with_common(stats, &body)
            }
            Shader::QmatmulGemm { stats, tile } | Shader::QmatmulTGemm { stats, tile } => {
                let template = match self {
                    Shader::QmatmulGemm { .. } => QMATMUL_4BIT_GEMM,
                    _ => QMATMUL_4BIT_T_GEMM,
                };
                // The shared tile code; staged slices of 16: [16][16 * tile / 4] vec4 each of
                // the left operand and W.
                let tile_code = render(
                    GEMM_TILE,
                    &[
                        ("tile", tile.to_string()),
                        ("tile4", (tile / 4).to_string()),
                        ("staged_len", (16 * 16 * tile / 4).to_string()),
                        ("acc_len", (tile * tile / 4).to_string()),
                    ],
                );
                with_common(stats, &format!("{tile_code}\n{}", render(template, &[])))
            }
            Shader::Lora { tm, tn } => render(
                LORA,
                &[
                    ("tm", tm.to_string()),
                    ("tn", tn.to_string()),
                    ("a_tile_len", (16 * 16 * tm).to_string()),
                    ("b_tile_len", (16 * 16 * tn).to_string()),
                    ("acc_len", (tm * tn).to_string()),
                ],
            ),
        }
    }

    /// Every specialization the code can launch (for validation).
    pub fn all() -> Vec<Shader> {
        let mut all = Vec::new();
        for double_quant in [false, true] {
            let stats = StatsKind {
                double_quant,
                nested: NESTED_BLOCKSIZE,
            };
            all.push(Shader::Dequant(stats));
            all.push(Shader::DequantT(stats));
            for tm in FUSED_TILES {
                all.push(Shader::Qmatmul { stats, tm });
                all.push(Shader::QmatmulT { stats, tm });
                all.push(Shader::QmatmulTile { stats, tm });
                all.push(Shader::QmatmulTTile { stats, tm });
            }
            for tm in SUBGROUP_TILES {
                for lanes in SUBGROUP_LANES {
                    all.push(Shader::QmatmulSubgroup { stats, tm, lanes });
                    all.push(Shader::QmatmulTSubgroup { stats, tm, lanes });
                }
            }
            for tile in GemmTile::ALL.map(GemmTile::per_invocation) {
                all.push(Shader::QmatmulGemm { stats, tile });
                all.push(Shader::QmatmulTGemm { stats, tile });
            }
        }
        for tm in LORA_TILES {
            for tn in LORA_TILES {
                all.push(Shader::Lora { tm, tn });
            }
        }
        all
    }
}

/// Micro-tile sizes the LoRA kernel is specialized for.
pub const LORA_TILES: [u32; 2] = [1, 4];

/// The LoRA micro-tile for one output dimension: 1 for skinny (<= 16), else 4.
pub fn lora_tile(dim: usize) -> u32 {
    if dim <= 16 { 1 } else { 4 }
}

/// `qmatmul_4bit_subgroup.wgsl`'s `{{ decode }}`: each column's words of the chunk, decoded.
fn subgroup_decode(lanes: u32) -> String {
    let mut out = String::new();
    for c in 0..SUBGROUP_TN {
        let first = lanes * c;
        out += &format!(
            "        {{\n            let w = min(n0 + {first}u, n_total - 1u) * words + j;\n            \
             let s = block_absmax((w * 8u) / blocksize);\n"
        );
        for q in 0..lanes / 2 {
            let i = first + 2 * q;
            out += &format!(
                "            let p{q} = packed[w + {q}u];\n            \
                 wd[{i}] = decode4(p{q}, NIBBLES_LO, code) * s;\n            \
                 wd[{}] = decode4(p{q}, NIBBLES_HI, code) * s;\n",
                i + 1
            );
        }
        out += "        }\n";
    }
    out
}

/// `qmatmul_4bit_subgroup.wgsl`'s `{{ rows }}`: each row's vec4 of X, shared and accumulated.
fn subgroup_rows(tm: u32, lanes: u32) -> String {
    let mut out = String::new();
    for r in 0..tm {
        out += &format!(
            "        {{\n            let xv = x[min(m0 + {r}u, m_total - 1u) * k4 + 2u * j + lane];\n"
        );
        for i in 0..lanes {
            out += &format!("            let x{i} = subgroupBroadcast(xv, {i}u);\n");
        }
        for c in 0..SUBGROUP_TN {
            let terms: Vec<String> = (0..lanes)
                .map(|i| format!("dot(x{i}, wd[{}])", lanes * c + i))
                .collect();
            out += &format!(
                "            acc[{}] += {};\n",
                r * SUBGROUP_TN + c,
                terms.join(" + ")
            );
        }
        out += "        }\n";
    }
    out
}

/// `qmatmul_4bit_subgroup.wgsl`'s `{{ store }}`: the sums of the rows and columns that exist.
fn subgroup_store(tm: u32) -> String {
    let mut out = String::new();
    for r in 0..tm {
        for c in 0..SUBGROUP_TN {
            out += &format!(
                "    if m0 + {r}u < m_total && n0 + S * {c}u < n_total {{\n        \
                 y[(m0 + {r}u) * n_total + n0 + S * {c}u] = acc[{}];\n    }}\n",
                r * SUBGROUP_TN + c
            );
        }
    }
    out
}

/// `qmatmul_4bit_t_subgroup.wgsl`'s `{{ load }}`: each row's vec4 of the chunk of dY.
fn subgroup_t_load(tm: u32) -> String {
    (0..tm)
        .map(|r| {
            format!(
                "        let dyv{r} = dy[min(m0 + {r}u, m_total - 1u) * n4 + n0 / 4u + lane];\n"
            )
        })
        .collect()
}

/// `qmatmul_4bit_t_subgroup.wgsl`'s `{{ lanes_code }}`: for each lane's vec4, its four rows of W
/// decoded and applied to every row of dY. The four are unrolled too: as a loop, reading the
/// vec4's component by the loop counter, the kernel ran 0.6-0.7x (llvmpipe, 128-512 rows).
fn subgroup_t_lanes(tm: u32, lanes: u32) -> String {
    let mut out = String::new();
    for i in 0..lanes {
        out += "        {\n";
        for r in 0..tm {
            out += &format!("            let g{r} = subgroupBroadcast(dyv{r}, {i}u);\n");
        }
        for (e, comp) in ["x", "y", "z", "w"].iter().enumerate() {
            out += &format!(
                "            {{\n                let n = n0 + {}u;\n",
                4 * i + e as u32
            );
            for t in 0..SUBGROUP_TW {
                out += &format!(
                    "                {{\n                    \
                 let w = n * words + min(w0 + {}u, words - 1u);\n                    \
                 let s = block_absmax((w * 8u) / blocksize);\n                    \
                 let p = packed[w];\n                    \
                 let lo = decode4(p, NIBBLES_LO, code) * s;\n                    \
                 let hi = decode4(p, NIBBLES_HI, code) * s;\n",
                    lanes * t
                );
                for r in 0..tm {
                    let a = 2 * (r * SUBGROUP_TW + t);
                    out += &format!(
                        "                    acc[{a}] += g{r}.{comp} * lo;\n                    \
                     acc[{}] += g{r}.{comp} * hi;\n",
                        a + 1
                    );
                }
                out += "                }\n";
            }
            out += "            }\n";
        }
        out += "        }\n";
    }
    out
}

/// `qmatmul_4bit_t_subgroup.wgsl`'s `{{ store }}`: the sums of the rows and columns that exist.
fn subgroup_t_store(tm: u32) -> String {
    let mut out = String::new();
    for r in 0..tm {
        for t in 0..SUBGROUP_TW {
            let a = 2 * (r * SUBGROUP_TW + t);
            out += &format!(
                "    if m0 + {r}u < m_total && w0 + S * {t}u < words {{\n        \
                 let o = ((m0 + {r}u) * k_total + 8u * (w0 + S * {t}u)) / 4u;\n        \
                 dx[o] = acc[{a}];\n        dx[o + 1u] = acc[{}];\n    }}\n",
                a + 1
            );
        }
    }
    out
}

fn with_common(stats: StatsKind, body: &str) -> String {
    let common = render(
        COMMON_4BIT,
        &[
            ("double_quant", stats.double_quant.to_string()),
            ("nested", stats.nested.to_string()),
        ],
    );
    format!("{common}\n{body}")
}

/// Replace every `{{ name }}` in `template` with its value.
///
/// Panics on a placeholder left without a value: that is a bug in this file, caught by the
/// validation test.
fn render(template: &str, vars: &[(&str, String)]) -> String {
    let mut out = template.to_string();
    for (name, value) in vars {
        out = out.replace(&format!("{{{{ {name} }}}}"), value);
    }
    if let Some(pos) = out.find("{{") {
        let end = out[pos..].find("}}").map_or(out.len(), |e| pos + e + 2);
        panic!("shader placeholder without a value: {}", &out[pos..end]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_replaces_every_placeholder() {
        assert_eq!(
            render("a {{ x }} b {{ x }}", &[("x", "1".into())]),
            "a 1 b 1"
        );
    }

    #[test]
    fn params_pack_in_order_as_the_uniform_reads_them() {
        let words = pack_params(&[1, 2, 3]);
        assert_eq!(words.len(), MAX_PARAMS / 2);
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        let back: Vec<u32> = bytes
            .chunks(4)
            .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(back, [1, 2, 3, 0, 0, 0, 0, 0]);
    }

    #[test]
    #[should_panic(expected = "placeholder without a value")]
    fn render_rejects_missing_values() {
        render("a {{ y }}", &[("x", "1".into())]);
    }
}
