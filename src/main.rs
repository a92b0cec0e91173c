//! The `wgtune` command line: a thin clap front end over [`wgtune::cli`].

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// QLoRA fine-tuning of LLaMA-family models with 4-bit weights on any GPU.
#[derive(Parser)]
#[command(name = "wgtune", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Quantize a safetensors checkpoint to bitsandbytes NF4/FP4 (loadable by transformers).
    Quantize(wgtune::cli::quantize::QuantizeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: anyhow::Result<()> = match cli.command {
        Command::Quantize(args) => wgtune::cli::quantize::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
