//! The quickstart through the library: what `wgtune train` with no arguments does.
//!
//! ```text
//! cargo run --release --example quickstart [-- --steps N] [--device auto|wgpu|cpu] [--out DIR]
//! ```
//! Fine-tunes SmolLM2-135M-Instruct (NF4 base, LoRA r 16 on all linear layers) to write dates as
//! `YYYY-MM-DD`, then prints the held-out exact-match score before and after.

use anyhow::{Context, Result, bail};
use wgtune::cli::quickstart::{QuickstartOptions, run};

fn main() -> Result<()> {
    let mut opts = QuickstartOptions::default();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--steps" => opts.steps = value()?.parse()?,
            "--device" => opts.device = value()?,
            "--out" => opts.out = value()?.into(),
            other => bail!("unknown argument {other} (--steps N, --device D, --out DIR)"),
        }
    }
    run(&opts)
}
