//! Chat with a model plus a LoRA adapter through the library API.
//!
//! ```text
//! cargo run --release --example chat -- --adapter DIR [--model PATH] [--device auto|wgpu|cpu]
//! ```
//! Loads the model (default SmolLM2-135M-Instruct, NF4), applies the PEFT adapter, and answers
//! each line of stdin with the model's chat template over the whole conversation, streaming
//! greedy tokens. `/reset` clears the history; end of input quits.

use std::io::{BufRead as _, Write as _};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use wgtune::data::template::Message;
use wgtune::device::{DeviceChoice, select};
use wgtune::generate::{GenerateOptions, generate, reply_stop_ids};
use wgtune::io::model_cache::default_model_path;
use wgtune::peft::AdapterFile;
use wgtune::pretrained::Pretrained;
use wgtune::quant::QuantConfig;

fn main() -> Result<()> {
    let mut adapter: Option<PathBuf> = None;
    let mut model: Option<PathBuf> = None;
    let mut device = DeviceChoice::Auto;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--adapter" => adapter = Some(value()?.into()),
            "--model" => model = Some(value()?.into()),
            "--device" => device = value()?.parse()?,
            other => bail!("unknown argument {other}"),
        }
    }
    let path = match model {
        Some(p) => p,
        None => default_model_path()?,
    };
    let device = select(device).device;
    let mut pre = Pretrained::load(&path, Some(QuantConfig::default()), &device)?;
    if let Some(dir) = &adapter {
        AdapterFile::read(dir)?.apply(&mut pre.model)?;
        eprintln!("adapter: {}", dir.display());
    }
    let tokenizer = pre.tokenizer()?.clone();
    let stop = reply_stop_ids(&tokenizer, &pre.template);
    let options = GenerateOptions {
        max_new_tokens: 256,
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        seed: 0,
        stop_ids: stop.clone(),
    };
    let mut history: Vec<Message> = Vec::new();
    eprintln!("type a message (/reset clears the history, Ctrl-D quits)");
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        if line.trim() == "/reset" {
            history.clear();
            continue;
        }
        history.push(Message::new("user", line));
        let prompt = tokenizer.encode(&pre.template.render(&history, true)?, false)?;
        let out = generate(&pre.model, &tokenizer, &prompt, &options, |piece| {
            print!("{piece}");
            std::io::stdout().flush().ok();
        })?;
        println!();
        let reply: Vec<u32> = out
            .ids
            .into_iter()
            .filter(|id| !stop.contains(id))
            .collect();
        history.push(Message::new(
            "assistant",
            tokenizer.decode(&reply, true)?.trim(),
        ));
    }
    Ok(())
}
