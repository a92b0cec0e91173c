//! `wgtune info [--model PATH] [--check-kernels [--device D]]`
//!
//! The wgpu adapters of this machine (name, API, type, the limits wgtune's kernels depend on,
//! `shader-f16` and subgroups) and what `--device auto` picks; with `--model`, the model's config,
//! parameter count and the device memory its weights need as f16 vs NF4, computed from the
//! shapes (a 4-bit linear weight: packed codes plus block statistics); with `--check-kernels`,
//! every kernel on the device against exact host products (`ops::check`).

use std::path::PathBuf;

use anyhow::Result;

use crate::device::{self, DeviceChoice};
use crate::model::LlamaConfig;
use crate::ops::check;
use crate::pretrained::read_config;
use crate::quant::QuantConfig;

/// Arguments of `wgtune info`.
#[derive(Clone, Debug, clap::Args)]
pub struct InfoArgs {
    /// A GGUF file or a Hugging Face model directory to describe.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Also run every 4-bit and LoRA kernel on the device against exact products computed on
    /// the host (`ops::check`, 199 products), print each kernel's worst error, and fail if one
    /// is over the tolerance: a check of this machine's GPU driver and shader compiler.
    #[arg(long)]
    pub check_kernels: bool,
    /// The device `--check-kernels` runs on: `wgpu` (the default adapter), `auto` or `cpu`.
    #[arg(long, default_value = "wgpu")]
    pub device: DeviceChoice,
}

/// Runs `wgtune info`.
pub fn run(args: InfoArgs) -> Result<()> {
    let adapters = device::adapters();
    println!("wgpu adapters: {}", adapters.len());
    for a in &adapters {
        println!("  {}", a.summary());
        println!("    driver: {}", a.driver);
        println!(
            "    max storage buffer binding {} | max buffer {} | workgroup: {} invocations, {} storage",
            mib(a.max_storage_buffer_binding_size),
            mib(a.max_buffer_size),
            a.max_workgroup_invocations,
            kib(u64::from(a.max_workgroup_storage)),
        );
        println!(
            "    shader-f16: {} | subgroups: {}",
            yes_no(a.shader_f16),
            yes_no(a.subgroups)
        );
    }
    println!(
        "--device auto: {}",
        device::select(DeviceChoice::Auto).description
    );
    if let Some(path) = &args.model {
        let config = read_config(path)?;
        println!();
        print_model(path, &config);
    }
    if args.check_kernels {
        println!();
        check_kernels(args.device)?;
    }
    Ok(())
}

/// Runs `ops::check` on `choice`'s device and prints the worst error per product and kernel.
fn check_kernels(choice: DeviceChoice) -> Result<()> {
    let selected = device::select(choice);
    println!("kernel check on {}:", selected.description);
    let started = std::time::Instant::now();
    let report = burn::cubecl::future::block_on(check::run(&selected.device))?;
    // Each (product, kernel) pair's products and worst error, in the order the check ran them.
    let mut rows: Vec<(&str, &str, usize, f32)> = Vec::new();
    for c in &report.checks {
        match rows
            .iter_mut()
            .find(|r| r.0 == c.product && r.1 == c.kernel)
        {
            Some(row) => {
                row.2 += 1;
                row.3 = row.3.max(c.error);
            }
            None => rows.push((&c.product, &c.kernel, 1, c.error)),
        }
    }
    for (product, kernel, n, error) in &rows {
        println!("  {product:<10} {kernel:<18} {n:>3} products, worst error {error:.1e}");
    }
    let failures = report.failures();
    for f in &failures {
        println!(
            "  FAILED: {} by {} ({}), {}: error {:e}",
            f.product, f.kernel, f.strategy, f.shape, f.error
        );
    }
    println!(
        "{} products in {:.1} s, worst error {:.1e} (tolerance {:.0e}, relative to the largest value)",
        report.checks.len(),
        started.elapsed().as_secs_f64(),
        report.worst(),
        check::TOLERANCE
    );
    if !failures.is_empty() {
        anyhow::bail!(
            "{} of {} kernel products disagree with the host on {}",
            failures.len(),
            report.checks.len(),
            selected.description
        );
    }
    Ok(())
}

fn print_model(path: &std::path::Path, c: &LlamaConfig) {
    println!("model: {}", path.display());
    println!(
        "  layers {} | hidden {} | intermediate {} | heads {} (kv {}) x head_dim {} | vocab {} | context {} | tied embeddings {}",
        c.num_hidden_layers,
        c.hidden_size,
        c.intermediate_size,
        c.num_attention_heads,
        c.num_kv_heads(),
        c.head_dim(),
        c.vocab_size,
        c.max_position_embeddings,
        yes_no(c.tie_word_embeddings),
    );
    let shapes = ParamShapes::of(c);
    let linear: usize = shapes.linear.iter().map(|[o, i]| o * i).sum();
    let total = linear + shapes.other;
    println!(
        "  parameters: {} ({} in linear projections, {} in embeddings/norms/head)",
        count(total),
        count(linear),
        count(shapes.other)
    );
    let q = QuantConfig::default();
    let nf4_linear: usize = shapes
        .linear
        .iter()
        .map(|[o, i]| quantized_bytes(o * i, q))
        .sum();
    let f16 = 2 * total;
    let nf4 = nf4_linear + 2 * shapes.other;
    println!("  weights on device:");
    println!(
        "    f16 (2 bytes/param):                         {}",
        mib(f16 as u64)
    );
    println!(
        "    NF4 linears (blocksize 64, double quant) + f16 rest: {} ({:.2}x smaller)",
        mib(nf4 as u64),
        f16 as f64 / nf4 as f64
    );
    println!(
        "    as wgtune holds it (NF4 linears + f32 rest): {}",
        mib((nf4_linear + 4 * shapes.other) as u64)
    );
}

/// Weight shapes of a LLaMA model: the linear projections `[out, in]` (the ones quantized) and
/// the count of every other parameter.
struct ParamShapes {
    linear: Vec<[usize; 2]>,
    other: usize,
}

impl ParamShapes {
    fn of(c: &LlamaConfig) -> Self {
        let (h, inter, d) = (c.hidden_size, c.intermediate_size, c.head_dim());
        let (q, kv) = (c.num_attention_heads * d, c.num_kv_heads() * d);
        let per_layer = [
            [q, h],
            [kv, h],
            [kv, h],
            [h, q],
            [inter, h],
            [inter, h],
            [h, inter],
        ];
        let linear = (0..c.num_hidden_layers).flat_map(|_| per_layer).collect();
        let embed = c.vocab_size * h;
        let head = if c.tie_word_embeddings { 0 } else { embed };
        let norms = (2 * c.num_hidden_layers + 1) * h;
        ParamShapes {
            linear,
            other: embed + head + norms,
        }
    }
}

/// Device bytes of an `n`-element 4-bit weight: packed codes, plus one f32 absmax per block, or
/// with double quantization one u8 per block, an f32 per 256 blocks, the 256-entry map and the
/// offset.
fn quantized_bytes(n: usize, q: QuantConfig) -> usize {
    let blocks = n.div_ceil(q.blocksize);
    let stats = if q.double_quant {
        blocks + 4 * blocks.div_ceil(256) + 4 * 256 + 4
    } else {
        4 * blocks
    };
    n.div_ceil(2) + stats
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn kib(bytes: u64) -> String {
    format!("{:.0} KiB", bytes as f64 / 1024.0)
}

fn count(n: usize) -> String {
    if n >= 1_000_000_000 {
        format!("{:.2} B", n as f64 / 1e9)
    } else {
        format!("{:.1} M", n as f64 / 1e6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nf4_is_about_half_a_byte_per_weight() {
        let n = 4096 * 4096;
        let b = quantized_bytes(n, QuantConfig::default());
        // 0.5 B codes + 1/64 B codes of the absmax + small f32 terms.
        assert!((b as f64 / n as f64 - (0.5 + 1.0 / 64.0)).abs() < 1e-3);
    }
}
