//! Stage 5 of `kto train`: the trainer (on every data-parallel device, at the checkpoint's
//! position when resuming), `kto_config.json`, and the training loop.

use anyhow::{Context, Result};
use kto_core::{FitConfig, LogpsConfig, Position, Reference, Schedule, Trainer, TrainerConfig};
use kto_data::{CollateConfig, Sampling};
use kto_models::{LoraConfig, StorageDType, TransformerLm};
use serde_json::{Map, Value};

use super::checkpoint::{self, Restored};
use super::data::Data;
use super::hooks::{CheckpointSources, Hooks, LoopSettings};
use super::models::{self, Models};
use super::plan::RunPlan;
use super::{resume, save};

/// What the loop needs from the earlier stages.
pub struct Inputs<'a> {
    pub plan: &'a RunPlan,
    /// TR-DPO: `(α, τ)`.
    pub sync_ref: Option<(f64, u64)>,
    pub sampling: Sampling,
    pub collate: CollateConfig,
    pub data: &'a Data,
    pub models: &'a Models,
    /// Under LoRA: the adapters' settings and the base model's name.
    pub lora: Option<(&'a LoraConfig, &'a str)>,
    pub dtype: StorageDType,
    /// What defines the run (recorded in every checkpoint).
    pub identity: &'a Map<String, Value>,
    /// Every setting as resolved (written as `kto_config.json`).
    pub resolved: &'a Value,
}

/// What the loop produced.
pub struct Fitted {
    pub policy: TransformerLm,
    pub start: Position,
    pub end: Position,
    /// The fractional epoch reached.
    pub epoch: f64,
    /// Every log event (of the resumed run too).
    pub history: Vec<Value>,
    pub step_seconds: Vec<f64>,
}

/// Builds the trainer around `policy` (moved in: the trainer holds the only copy) and trains to
/// the last step.
pub fn fit(
    inputs: &Inputs<'_>,
    policy: TransformerLm,
    reference: Reference<TransformerLm>,
    restored: Option<Restored>,
) -> Result<Fitted> {
    let (run, data, models) = (inputs.plan, inputs.data, inputs.models);
    let device = run.devices[0].clone();
    let n_devices = run.devices.len() as u64;
    let per_epoch = data.train.rows.len().div_ceil(run.per_device_train_batch_size) as u64;
    let ga = run.gradient_accumulation_steps as u64;
    let steps_per_epoch = FitConfig::steps_per_epoch(per_epoch, ga, n_devices);
    let micro_steps_per_epoch = FitConfig::micro_steps_per_epoch(per_epoch, n_devices);
    let total_steps = FitConfig::total_steps(run.max_steps, run.num_train_epochs, steps_per_epoch);
    let mut trainer = trainer(run, models, policy, reference, total_steps)?;
    let (start, history) = match restored {
        Some(r) => resume::apply(&mut trainer, r)?,
        None => (Position::default(), Vec::new()),
    };
    let config_path = run.output_dir.join("kto_config.json");
    kto_models::write_atomic(&config_path, serde_json::to_string_pretty(inputs.resolved)? + "\n")?;
    let metrics_path = run.output_dir.join("metrics.jsonl");
    save::write_history(&metrics_path, &history)?;

    let fit_config = FitConfig {
        max_steps: total_steps,
        micro_batches_per_epoch: per_epoch,
        gradient_accumulation_steps: ga,
        logging_steps: run.logging_steps,
        eval_every: run.eval_every,
        save_steps: run.save_steps,
        sync_ref: inputs.sync_ref,
    };
    let settings = LoopSettings {
        per_device_train_batch_size: run.per_device_train_batch_size,
        per_device_eval_batch_size: run.per_device_eval_batch_size,
        gradient_accumulation_steps: run.gradient_accumulation_steps,
        kl_mode: run.kl_mode,
        sampling: inputs.sampling,
        collate: inputs.collate,
        generate_during_eval: run.generate_during_eval,
        sync_ref_model: inputs.sync_ref.is_some(),
        output_dir: run.output_dir.clone(),
        save_total_limit: run.save_total_limit,
        seed: run.seed,
    };
    let checkpoints = CheckpointSources {
        model_config: &models.model_config,
        source_folder: &data.folder,
        dtype: inputs.dtype,
        lora: inputs.lora,
        run: inputs.identity,
    };
    let mut hooks = Hooks::new(
        &settings,
        &data.train.rows,
        &data.eval_rows,
        (&models.train_device, &device, n_devices),
        history,
        metrics_path,
        checkpoints,
        &data.tokenizer,
        (total_steps, start.step),
    );
    let outcome = kto_core::fit(&mut trainer, &fit_config, start, &mut hooks);
    hooks.progress.finish();
    let end = outcome.with_context(|| match checkpoint::list(&run.output_dir).ok().and_then(|mut l| l.pop()) {
        Some((step, _)) => format!("training stopped; the last checkpoint (step {step}) is intact"),
        None => "training stopped".to_string(),
    })?;
    Ok(Fitted {
        policy: trainer.into_policy(),
        start,
        end,
        epoch: end.epoch(micro_steps_per_epoch),
        history: hooks.history,
        step_seconds: hooks.step_seconds,
    })
}

/// The trainer over every data-parallel device, with the run's schedule over `total_steps`.
fn trainer(
    run: &RunPlan,
    models: &Models,
    policy: TransformerLm,
    reference: Reference<TransformerLm>,
    total_steps: u64,
) -> Result<Trainer<TransformerLm>> {
    let trainer_config = TrainerConfig {
        loss: run.loss.clone(),
        optimizer: run.optimizer,
        storage: run.storage,
        schedule: Schedule {
            kind: run.schedule_kind,
            learning_rate: run.learning_rate,
            warmup_steps: Schedule::warmup(total_steps, run.warmup_steps, run.warmup_ratio),
            total_steps,
        },
        max_grad_norm: run.max_grad_norm,
        gradient_accumulation_steps: run.gradient_accumulation_steps,
        per_device_train_batch_size: run.per_device_train_batch_size,
        kl_mode: run.kl_mode,
        logps: LogpsConfig::new(),
    };
    let checkpointing = models.gradient_checkpointing;
    let replicas: Vec<_> = run.devices[1..].iter().map(|d| models::autodiff(d, checkpointing)).collect();
    let trainer = Trainer::new(trainer_config, policy, reference)?.with_overlapped_reference(run.cpu);
    Ok(if run.ddp { trainer.with_ddp(&replicas) } else { trainer.with_devices(&replicas) })
}
