//! Fine-tuning through the library API: load a model, build a dataset, train a LoRA adapter,
//! save it as a PEFT directory.
//!
//! ```text
//! cargo run --release --example finetune [-- --data FILE.jsonl] [--steps N] [--out DIR]
//!     [--device auto|wgpu|cpu]
//! ```
//! Defaults: the project's date-normalization set (`data/quickstart/train.jsonl`), 20 steps,
//! `finetune-out/`. The adapter loads in PEFT (`PeftModel.from_pretrained`) and in
//! `wgtune generate --adapter DIR`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use wgtune::data::dataset::{DatasetOptions, load_dataset, split_eval};
use wgtune::device::{DeviceChoice, select};
use wgtune::io::model_cache::default_model_path;
use wgtune::peft::{self, LoraConfig};
use wgtune::pretrained::Pretrained;
use wgtune::quant::QuantConfig;
use wgtune::train::{Event, ScheduleKind, TrainOptions, Trainer};

fn main() -> Result<()> {
    let mut data = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/data/quickstart/train.jsonl"
    ));
    let mut steps = 20u64;
    let mut out = PathBuf::from("finetune-out");
    let mut device = DeviceChoice::Auto;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--data" => data = value()?.into(),
            "--steps" => steps = value()?.parse()?,
            "--out" => out = value()?.into(),
            "--device" => device = value()?.parse()?,
            other => bail!("unknown argument {other}"),
        }
    }

    // 1. The model: 4-bit NF4 base weights on an autodiff device (gradients for the adapters).
    let selected = select(device);
    println!("device: {}", selected.description);
    let model_path = default_model_path()?;
    let mut pre = Pretrained::load(
        &model_path,
        Some(QuantConfig::default()),
        &selected.device.clone().autodiff(),
    )?;

    // 2. The data: chat rows rendered with the model's template, loss on the answers only.
    let opts = DatasetOptions {
        max_len: 256,
        ..DatasetOptions::default()
    };
    let ds = load_dataset(&data, pre.tokenizer.as_ref(), &pre.template, &opts)?;
    println!(
        "{}: {} examples ({})",
        data.display(),
        ds.examples.len(),
        ds.format
    );
    let (train, eval) = split_eval(ds.examples, 0.05, 0);

    // 3. LoRA r 16 on every linear layer, PEFT's init.
    let lora = LoraConfig::default();
    peft::attach(&mut pre.model, &lora, 0);

    // 4. Train: AdamW, cosine schedule with warmup, clipping at 1.0.
    let pad_id = pre
        .tokenizer
        .as_ref()
        .and_then(|t| t.eos_id())
        .map_or(0, i64::from);
    let options = TrainOptions {
        lr: 1e-3,
        schedule: ScheduleKind::Cosine,
        batch_size: 8,
        steps: Some(steps),
        pad_id,
        base_model: model_path.display().to_string(),
        ..TrainOptions::default()
    };
    let mut trainer = Trainer::new(pre.model, lora, train, eval, options)?;
    println!(
        "eval loss before: {:.4}",
        trainer.evaluate().unwrap_or(f64::NAN)
    );
    trainer.run(None, &mut |e| {
        if let Event::Step(m) = e {
            println!(
                "step {:>3}  loss {:.4}  lr {:.2e}  {:.0} tok/s",
                m.step, m.loss, m.lr, m.tokens_per_s
            );
        }
    })?;
    println!(
        "eval loss after: {:.4}",
        trainer.evaluate().unwrap_or(f64::NAN)
    );

    // 5. Save as a PEFT adapter directory.
    trainer.save_adapter(&out)?;
    println!("adapter written to {}", out.display());
    Ok(())
}
