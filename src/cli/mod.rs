//! Command implementations behind the `wgtune` binary (`src/main.rs`). Each subcommand has a clap
//! `Args` struct and a `run(args) -> anyhow::Result<()>`; errors become one line on stderr.

pub mod chat;
pub mod eval;
pub mod example;
pub mod generate;
pub mod info;
pub mod merge;
pub mod model_args;
pub mod quantize;
pub mod quickstart;
pub mod serve_web;
pub mod train;
