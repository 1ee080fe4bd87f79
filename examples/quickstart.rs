//! The library API end to end, offline, on the test fixtures: load a Hugging Face model folder
//! and a KTO dataset, tokenize and collate as TRL does, train a few KTO steps with a frozen
//! reference, print the logged metrics, and save the trained model as a Hugging Face folder.
//!
//! ```sh
//! cargo run --release --example quickstart [OUT_DIR]
//! ```
//!
//! `kto train` does the same (and more: schedules, checkpoints, plots) from the command line.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use kto::core::{
    KlMode, KtoLossConfig, LogpsConfig, OptimizerKind, OptimizerStorage, Reference, Schedule, ScheduleKind, Trainer,
    TrainerConfig,
};
use kto::data::{CollateConfig, HfTokenizer, KlPairing, TokenizeConfig, collate, read_jsonl, tokenize_examples};
use kto::models::{LoadOptions, SaveOptions, TransformerLm, load_model, save_model};

const BATCH: usize = 4;
const STEPS: u64 = 4;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let model_dir = root.join("models/tiny-qwen2");
    let out = std::env::args().nth(1).map_or_else(|| std::env::temp_dir().join("kto-quickstart"), PathBuf::from);

    // Data: read, tokenize (prompt + completion + EOS, KL pairs within each batch of 4), collate.
    let tokenizer = HfTokenizer::from_folder(&model_dir)?;
    let examples = read_jsonl(&root.join("datasets/kto_standard.jsonl"))?;
    let tokenized = tokenize_examples(&examples, &tokenizer, &TokenizeConfig::trl(BATCH))?;
    println!("{} rows tokenized, {} dropped", tokenized.rows.len(), tokenized.dropped.len());
    let collate_config = CollateConfig {
        pad_id: tokenizer.pad_id().ok_or("the tokenizer has no pad or eos token")?,
        max_length: None,
        pad_to_multiple_of: None,
        kl: KlPairing::FromRows,
    };

    // Models: the policy on the autodiff device, the frozen reference without autodiff.
    let device = Device::flex();
    let train_device = device.clone().autodiff();
    let (config, policy) = load_model(&model_dir, &train_device, &LoadOptions::default())?;
    let (_, reference) = load_model(&model_dir, &device, &LoadOptions::default())?;

    let trainer_config = TrainerConfig {
        loss: KtoLossConfig::new().with_beta(0.1),
        optimizer: OptimizerKind::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 },
        storage: OptimizerStorage::default(),
        schedule: Schedule { kind: ScheduleKind::Linear, learning_rate: 1e-3, warmup_steps: 0, total_steps: STEPS },
        max_grad_norm: Some(1.0),
        gradient_accumulation_steps: 1,
        per_device_train_batch_size: BATCH,
        kl_mode: KlMode::MicroBatch,
        logps: LogpsConfig::new(),
    };
    let mut trainer: Trainer<TransformerLm> = Trainer::new(trainer_config, policy, Reference::Model(reference))?;

    let batches: Vec<_> = tokenized.rows.chunks(BATCH).collect();
    for step in 0..STEPS as usize {
        let rows: Vec<_> = batches[step % batches.len()].iter().collect();
        let batch = collate(&rows, &collate_config).to_device(&train_device);
        trainer.train_step(&[batch])?;
        let epoch = (step + 1) as f64 / batches.len() as f64;
        let logged = trainer.log(epoch);
        let show = |key: &str| logged.get(key).unwrap_or(f64::NAN);
        println!(
            "step {}: loss {:.4}  kl {:.4}  rewards/chosen {:+.4}  rewards/rejected {:+.4}",
            step + 1,
            show("loss"),
            show("kl"),
            show("rewards/chosen"),
            show("rewards/rejected")
        );
    }

    // The trained policy as a Hugging Face folder (config, safetensors, tokenizer files).
    let policy = trainer.into_policy().valid();
    save_model(&policy, &config, Some(&model_dir), &out, &SaveOptions::default())?;
    println!("saved {}", out.display());
    Ok(())
}
