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
    /// Fine-tune a LoRA adapter on a 4-bit model (no arguments: the quickstart).
    Train(Box<wgtune::cli::train::TrainArgs>),
    /// Quantize a safetensors checkpoint to bitsandbytes NF4/FP4 (loadable by transformers).
    Quantize(wgtune::cli::quantize::QuantizeArgs),
    /// Mean next-token loss and perplexity of a model over a JSONL dataset.
    Eval(wgtune::cli::eval::EvalArgs),
    /// Continue a prompt, streaming the tokens as they are generated.
    Generate(wgtune::cli::generate::GenerateArgs),
    /// Chat with a model in the terminal.
    Chat(wgtune::cli::chat::ChatArgs),
    /// wgpu adapters of this machine, and a model's size and memory needs.
    Info(wgtune::cli::info::InfoArgs),
    /// Fold a LoRA adapter into its base model and write a Hugging Face model directory.
    Merge(wgtune::cli::merge::MergeArgs),
    /// Serve the browser demo (web/) and a default model on 127.0.0.1.
    ServeWeb(wgtune::cli::serve_web::ServeWebArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::ServeWeb(_)) {
        default_sigpipe();
    }
    let result: anyhow::Result<()> = match cli.command {
        Command::Train(args) => wgtune::cli::train::run(*args),
        Command::Quantize(args) => wgtune::cli::quantize::run(args),
        Command::Eval(args) => wgtune::cli::eval::run(args),
        Command::Generate(args) => wgtune::cli::generate::run(args),
        Command::Chat(args) => wgtune::cli::chat::run(args),
        Command::ServeWeb(args) => wgtune::cli::serve_web::run(args),
        Command::Info(args) => wgtune::cli::info::run(args),
        Command::Merge(args) => wgtune::cli::merge::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Rust ignores SIGPIPE, so a `println!` into a closed pipe (`wgtune info | head -1`) panics.
/// The default action ends the process quietly, as it ends `cat`. The server keeps Rust's
/// setting: a browser closing its connection must not end it.
fn default_sigpipe() {
    #[cfg(unix)]
    // SAFETY: called once at start-up, before any thread exists; SIG_DFL is a valid action.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
