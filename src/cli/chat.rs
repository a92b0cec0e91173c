//! `wgtune chat [--model PATH] [--quant ..] [--device ..] [sampling flags]`
//!
//! A terminal conversation: each line read from stdin is a user message; the reply streams to
//! stdout. The whole history is rendered with the model's chat template for every reply.
//! `/reset` forgets the history, `/exit` or end of input ends the chat.

use std::io::{BufRead as _, Write as _};

use anyhow::{Context, Result};

use super::generate::{SamplingArgs, report, stop_ids, stream};
use super::model_args::ModelArgs;
use crate::data::template::Message;

/// Arguments of `wgtune chat`.
#[derive(Clone, Debug, clap::Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A system message opening the conversation.
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// Runs `wgtune chat`.
pub fn run(args: ChatArgs) -> Result<()> {
    args.sampling.check()?;
    let (pretrained, _) = args.model.load()?;
    let tokenizer = pretrained.tokenizer()?;
    let options = args.sampling.options(stop_ids(&pretrained, true)?)?;
    let opening: Vec<Message> = args
        .system
        .iter()
        .map(|s| Message::new("system", s.clone()))
        .collect();
    let mut history = opening.clone();
    eprintln!("chat: type a message; /reset clears the history, /exit or Ctrl-D ends");
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        eprint!("> ");
        std::io::stderr().flush().ok();
        let Some(line) = lines.next() else { break };
        let line = line.context("reading stdin")?;
        match line.trim() {
            "" => continue,
            "/exit" => break,
            "/reset" => {
                history = opening.clone();
                eprintln!("(history cleared)");
                continue;
            }
            _ => {}
        }
        history.push(Message::new("user", line));
        let text = pretrained.template.render(&history, true)?;
        let prompt_ids = tokenizer.encode(&text, false)?;
        let generated = stream(&pretrained, &prompt_ids, &options)?;
        println!();
        report(&generated);
        let reply_ids: Vec<u32> = generated
            .ids
            .iter()
            .copied()
            .filter(|id| !options.stop_ids.contains(id))
            .collect();
        let reply = tokenizer.decode(&reply_ids, true)?;
        history.push(Message::new("assistant", reply.trim().to_string()));
    }
    Ok(())
}
