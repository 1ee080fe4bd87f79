//! The training loop's side of `kto_core::fit` (used by the fit stage): batches per epoch (with
//! the window's KL pairs for shuffled batches), `metrics.jsonl`, evaluation and its samples,
//! checkpoints, and the progress line.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Result;
use burn::tensor::Device;
use kto_core::{
    EvalMetrics, FitConfig, FitHooks, KlMode, KtoBatch, LogRecord, Position, Reference, StepReport, Trainer,
};
use kto_data::{CollateConfig, HfTokenizer, KlPairing, Sampling, TokenizedRow, collate, epoch_batches};
use kto_models::{DecoderConfig, GenerationConfig, LoraConfig, StorageDType, TransformerLm};
use serde_json::{Map, Value, json};

use super::checkpoint;

/// The loop's settings (from the plan).
pub struct LoopSettings {
    pub per_device_train_batch_size: usize,
    pub per_device_eval_batch_size: usize,
    pub gradient_accumulation_steps: usize,
    pub kl_mode: KlMode,
    pub sampling: Sampling,
    pub collate: CollateConfig,
    pub generate_during_eval: bool,
    /// TR-DPO is on: checkpoints keep the synced reference.
    pub sync_ref_model: bool,
    pub output_dir: PathBuf,
    pub save_total_limit: usize,
    pub seed: u64,
}

/// What the checkpoints write besides the trainer's state.
pub struct CheckpointSources<'a> {
    pub model_config: &'a DecoderConfig,
    /// The model folder (its non-weight files are copied next to each saved model).
    pub source_folder: &'a Path,
    pub dtype: StorageDType,
    /// Under LoRA: the adapters' settings and the base model's name.
    pub lora: Option<(&'a LoraConfig, &'a str)>,
    /// What defines the run (recorded for resumption).
    pub run: &'a Map<String, Value>,
}

/// The loop's hooks.
pub struct Hooks<'a> {
    settings: &'a LoopSettings,
    rows: &'a [TokenizedRow],
    lengths: Vec<usize>,
    eval_rows: &'a [TokenizedRow],
    train_device: Device,
    device: Device,
    /// Data-parallel devices.
    devices: u64,
    /// The current epoch's batches.
    order: Option<(u64, Vec<Vec<usize>>)>,
    pub history: Vec<Value>,
    metrics_path: PathBuf,
    sources: CheckpointSources<'a>,
    pub progress: Progress,
    tokenizer: &'a HfTokenizer,
    /// Wall time of each optimizer step of this run (data, four passes, backward, update).
    pub step_seconds: Vec<f64>,
    step_started: Instant,
}

impl<'a> Hooks<'a> {
    /// Hooks over `rows` (training) and `eval_rows`, logging into `metrics_path` after
    /// `history` (a resumed run's), with the progress line counting to `total_steps`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        settings: &'a LoopSettings,
        rows: &'a [TokenizedRow],
        eval_rows: &'a [TokenizedRow],
        devices: (&Device, &Device, u64),
        history: Vec<Value>,
        metrics_path: PathBuf,
        sources: CheckpointSources<'a>,
        tokenizer: &'a HfTokenizer,
        (total_steps, start_step): (u64, u64),
    ) -> Self {
        let (train_device, device, n_devices) = devices;
        Self {
            settings,
            rows,
            lengths: rows.iter().map(TokenizedRow::len).collect(),
            eval_rows,
            train_device: train_device.clone(),
            device: device.clone(),
            devices: n_devices,
            order: None,
            history,
            metrics_path,
            sources,
            progress: Progress::new(total_steps, start_step),
            tokenizer,
            step_seconds: Vec::new(),
            step_started: Instant::now(),
        }
    }
}

impl FitHooks<TransformerLm> for Hooks<'_> {
    fn micro_batch(&mut self, epoch: u64, index: u64) -> kto_core::Result<KtoBatch> {
        let s = self.settings;
        if self.order.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let batches = epoch_batches(&self.lengths, s.per_device_train_batch_size, s.sampling, epoch, false);
            self.order = Some((epoch, batches));
        }
        let (_, batches) = self.order.as_ref().expect("set above");
        let rows: Vec<&TokenizedRow> = batches[index as usize].iter().map(|&i| &self.rows[i]).collect();
        if s.kl_mode == KlMode::AccumulationWindow && s.collate.kl == KlPairing::InBatch {
            // Shuffled batches under one KL estimate per window: the pairs rotate over this
            // device's whole window, as sequential rows do at preprocessing.
            let members: Vec<usize> = kto_core::window_micro_batches(
                index as usize,
                batches.len(),
                s.gradient_accumulation_steps,
                self.devices as usize,
            )
            .into_iter()
            .flat_map(|b| batches[b].iter().copied())
            .collect();
            let partners = kto_core::kl_partners(members.len());
            let first =
                members.iter().position(|&r| r == batches[index as usize][0]).expect("the batch is in its window");
            let paired: Vec<TokenizedRow> = rows
                .iter()
                .enumerate()
                .map(|(i, row)| TokenizedRow {
                    kl_completion_ids: Some(self.rows[members[partners[first + i]]].completion_ids.clone()),
                    ..(*row).clone()
                })
                .collect();
            let paired: Vec<&TokenizedRow> = paired.iter().collect();
            let config = CollateConfig { kl: KlPairing::FromRows, ..s.collate };
            return Ok(collate(&paired, &config).to_device(&self.train_device));
        }
        Ok(collate(&rows, &s.collate).to_device(&self.train_device))
    }

    fn on_step(&mut self, report: &StepReport, _position: &Position) {
        let now = Instant::now();
        self.step_seconds.push(now.duration_since(self.step_started).as_secs_f64());
        self.step_started = now;
        self.progress.step(report);
    }

    fn on_log(&mut self, record: &LogRecord) -> kto_core::Result<()> {
        let event = serde_json::to_value(record).expect("numbers serialize");
        self.progress.log(&event);
        let line = serde_json::to_string(&event).expect("numbers serialize") + "\n";
        let io =
            |e: std::io::Error| kto_core::Error::Settings { reason: format!("{}: {e}", self.metrics_path.display()) };
        let mut file = std::fs::OpenOptions::new().append(true).create(true).open(&self.metrics_path).map_err(io)?;
        file.write_all(line.as_bytes()).map_err(io)?;
        self.history.push(event);
        Ok(())
    }

    fn evaluate(
        &mut self,
        trainer: &Trainer<TransformerLm>,
        position: &Position,
    ) -> kto_core::Result<Option<EvalMetrics>> {
        let collate_config = self.settings.collate;
        let kl = if collate_config.kl == KlPairing::Off { KlPairing::Off } else { KlPairing::FromRows };
        let batches: Vec<KtoBatch> = self
            .eval_rows
            .chunks(self.settings.per_device_eval_batch_size)
            .map(|chunk| {
                let rows: Vec<&TokenizedRow> = chunk.iter().collect();
                collate(&rows, &CollateConfig { kl, ..collate_config }).to_device(&self.device)
            })
            .collect();
        let values = trainer.evaluate(&batches)?;
        if self.settings.generate_during_eval {
            self.samples(trainer, position).map_err(|e| kto_core::Error::Settings { reason: format!("{e:#}") })?;
        }
        Ok(Some(values))
    }

    fn save(&mut self, trainer: &Trainer<TransformerLm>, position: &Position) -> kto_core::Result<()> {
        let policy = burn::module::Module::valid(trainer.policy());
        let synced = match trainer.reference() {
            Reference::Model(m) if self.settings.sync_ref_model => Some(m.clone()),
            _ => None,
        };
        let per_epoch = self.rows.len().div_ceil(self.settings.per_device_train_batch_size) as u64;
        let state = checkpoint::TrainerState {
            global_step: position.step,
            micro_batches: position.micro_batches,
            devices: self.devices,
            epoch: position.epoch(FitConfig::micro_steps_per_epoch(per_epoch, self.devices)),
            num_tokens: trainer.num_tokens(),
            optimizer_steps: trainer.optimizer().steps(),
            log_history: self.history.clone(),
            seed: self.settings.seed,
            reference_saved: synced.is_some(),
            run: Some(self.sources.run.clone()),
        };
        let snapshot = checkpoint::Snapshot {
            lora: self.sources.lora,
            policy: &policy,
            reference: synced.as_ref(),
            model_config: self.sources.model_config,
            source_folder: self.sources.source_folder,
            dtype: self.sources.dtype,
            optimizer: trainer.optimizer(),
            state,
        };
        checkpoint::save(&self.settings.output_dir, snapshot, self.settings.save_total_limit)
            .map_err(|e| kto_core::Error::Settings { reason: format!("saving a checkpoint: {e:#}") })?;
        Ok(())
    }
}

impl Hooks<'_> {
    /// `generate_during_eval`: greedy continuations of the first eval prompts by the policy and
    /// the reference, appended to `eval_samples.jsonl`.
    fn samples(&self, trainer: &Trainer<TransformerLm>, position: &Position) -> Result<()> {
        let settings = GenerationConfig {
            max_new_tokens: 64,
            do_sample: false,
            eos_token_ids: self.tokenizer.eos_id().into_iter().collect(),
            ..GenerationConfig::default()
        };
        let policy = burn::module::Module::valid(trainer.policy());
        let mut out = String::new();
        for row in self.eval_rows.iter().take(4) {
            if row.prompt_ids.is_empty() {
                // Nothing to continue from (an empty prompt without a BOS token): said in the
                // file rather than generated from nothing.
                let line = json!({"step": position.step, "row": row.source_row, "prompt": "", "policy": null,
                    "reference": null, "skipped": "the prompt has no tokens to continue"});
                out.push_str(&serde_json::to_string(&line)?);
                out.push('\n');
                continue;
            }
            let policy_ids = kto_models::generate(&policy, &row.prompt_ids, &settings, &self.device);
            let reference = match trainer.reference() {
                Reference::Model(m) => {
                    let ids = kto_models::generate(m, &row.prompt_ids, &settings, &self.device);
                    Some(self.tokenizer.decode(&ids, true)?)
                }
                Reference::Precomputed => None,
            };
            let line = json!({
                "step": position.step,
                "row": row.source_row,
                "prompt": self.tokenizer.decode(&row.prompt_ids, false)?,
                "policy": self.tokenizer.decode(&policy_ids, true)?,
                "reference": reference,
            });
            out.push_str(&serde_json::to_string(&line)?);
            out.push('\n');
        }
        let path = self.settings.output_dir.join("eval_samples.jsonl");
        let mut file = std::fs::OpenOptions::new().append(true).create(true).open(&path)?;
        file.write_all(out.as_bytes())?;
        Ok(())
    }
}

/// A progress line on a terminal (step, ETA, loss, KL, margin), plain log lines otherwise.
pub struct Progress {
    total: u64,
    start_step: u64,
    started: Instant,
    terminal: bool,
    last: Option<(f64, f64, f64)>,
}

impl Progress {
    fn new(total: u64, start_step: u64) -> Self {
        Self { total, start_step, started: Instant::now(), terminal: std::io::stderr().is_terminal(), last: None }
    }

    fn step(&mut self, report: &StepReport) {
        if !self.terminal {
            return;
        }
        let done = report.step - self.start_step;
        let elapsed = self.started.elapsed().as_secs_f64();
        let eta = elapsed / done.max(1) as f64 * (self.total - report.step) as f64;
        let (loss, kl, margin) = self.last.unwrap_or((report.loss, f64::NAN, f64::NAN));
        let width = 24;
        let filled = (report.step as usize * width) / self.total.max(1) as usize;
        eprint!(
            "\r[{}{}] {}/{} eta {:>5.0}s loss {:.4} kl {:.4} margin {:+.4}  ",
            "#".repeat(filled),
            "-".repeat(width - filled),
            report.step,
            self.total,
            eta,
            loss,
            kl,
            margin
        );
    }

    fn log(&mut self, event: &Value) {
        let get = |k: &str| event.get(k).and_then(Value::as_f64);
        if let Some(loss) = get("loss") {
            self.last = Some((loss, get("kl").unwrap_or(f64::NAN), get("rewards/margins").unwrap_or(f64::NAN)));
        }
        if !self.terminal {
            let step = get("step").unwrap_or(0.0);
            let mut line = format!("step {step:>6}/{}", self.total);
            for (key, label) in [
                ("loss", "loss"),
                ("kl", "kl"),
                ("rewards/margins", "margin"),
                ("learning_rate", "lr"),
                ("eval_loss", "eval_loss"),
                ("eval_rewards/margins", "eval_margin"),
            ] {
                if let Some(v) = get(key) {
                    line.push_str(&format!("  {label} {v:.6}"));
                }
            }
            eprintln!("{line}");
        }
    }

    pub fn finish(&self) {
        if self.terminal {
            eprintln!();
        }
    }
}
