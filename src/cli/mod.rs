//! Command implementations behind the `wgtune` binary (`src/main.rs`). Each subcommand has a clap
//! `Args` struct and a `run(args) -> anyhow::Result<()>`; errors become one line on stderr.

pub mod example;
pub mod quantize;
