//! `kto train`: TRL's KTO training run from flags or a config file, with metrics, checkpoints,
//! resumption, evaluation, plots and a run summary in the output folder.

mod checkpoint;
pub mod options;
mod plot;
mod precompute;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::tensor::{Device, FloatDType};
use kto_core::{
    EvalEvery, FitConfig, FitHooks, KlMode, KtoBatch, KtoLossConfig, LogpsConfig, LossType, OptimizerKind, Position,
    Reference, Schedule, ScheduleKind, StepReport, Trainer, TrainerConfig,
};
use kto_data::{
    CollateConfig, Dataset, HfTokenizer, KlPairing, KlWindow, Sampling, TokenizeConfig, TokenizedRow, TruncationMode,
    collate, epoch_batches,
};
use kto_models::{
    DecoderConfig, GenerationConfig, LoadOptions, LoraConfig, LoraTargets, SaveOptions, StorageDType, TransformerLm,
    load_model,
};
use serde_json::{Value, json};

use self::options::{TrainConfig, TrainOptions, read_config_file};
use crate::data_args::model_folder;

#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// A YAML, TOML or JSON file of options (snake_case keys, as `trl kto --config`); flags
    /// override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub options: TrainOptions,
}

/// The demo run of `kto train` without arguments: the repository's tiny random Qwen2 and the
/// 64-row arithmetic/zen dataset, embedded in the binary.
mod demo {
    pub const FILES: &[(&str, &[u8])] = &[
        ("model/config.json", include_bytes!("../../../../tests/fixtures/models/tiny-qwen2/config.json")),
        (
            "model/generation_config.json",
            include_bytes!("../../../../tests/fixtures/models/tiny-qwen2/generation_config.json"),
        ),
        ("model/model.safetensors", include_bytes!("../../../../tests/fixtures/models/tiny-qwen2/model.safetensors")),
        ("model/tokenizer.json", include_bytes!("../../../../tests/fixtures/models/tiny-qwen2/tokenizer.json")),
        (
            "model/tokenizer_config.json",
            include_bytes!("../../../../tests/fixtures/models/tiny-qwen2/tokenizer_config.json"),
        ),
        (
            "model/special_tokens_map.json",
            include_bytes!("../../../../tests/fixtures/models/tiny-qwen2/special_tokens_map.json"),
        ),
        ("data/train.jsonl", include_bytes!("../../../../tests/fixtures/datasets/kto_standard.jsonl")),
    ];
}

/// Where the bundled demo writes its run: a run folder, ignored by the checkout's `.gitignore`.
pub const DEMO_OUTPUT_DIR: &str = "runs/kto-demo";

/// Fills a demo run's options when none of model, dataset and config is given.
fn demo_options(dir: &Path) -> Result<TrainOptions> {
    for (rel, bytes) in demo::FILES {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().expect("has a parent"))?;
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(TrainOptions {
        model: Some(dir.join("model").display().to_string()),
        dataset: Some(dir.join("data/train.jsonl").display().to_string()),
        output_dir: Some(PathBuf::from(DEMO_OUTPUT_DIR)),
        learning_rate: Some(1e-3),
        per_device_train_batch_size: Some(8),
        num_train_epochs: Some(8.0),
        logging_steps: Some(4),
        save_steps: Some(0),
        gradient_checkpointing: Some(false),
        ..TrainOptions::default()
    })
}

pub fn train(args: &TrainArgs) -> Result<()> {
    let file = match &args.config {
        Some(path) => read_config_file(path)?,
        None => TrainOptions::default(),
    };
    let is_demo = args.config.is_none() && args.options.model.is_none() && args.options.dataset.is_none();
    let demo_dir = if is_demo { Some(tempfile_dir()?) } else { None };
    let file = match &demo_dir {
        Some(dir) => {
            eprintln!(
                "kto train: no --model/--dataset/--config given, so training the bundled demo (tiny random Qwen2, 64 rows) on the CPU"
            );
            demo_options(dir)?
        }
        None => file,
    };
    let config = args.options.clone().resolve(file);
    let result = run(&config);
    if let Some(dir) = demo_dir {
        let _ = std::fs::remove_dir_all(dir);
    }
    result
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("kto-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Every setting checked and turned into library types, before any file is written.
struct Plan {
    loss: KtoLossConfig,
    optimizer: OptimizerKind,
    schedule_kind: ScheduleKind,
    kl_mode: KlMode,
    tokenize: TokenizeConfig,
    sampling: Sampling,
    eval_every: EvalEvery,
    dtype: FloatDType,
    lora: Option<LoraConfig>,
}

/// How many data-parallel devices `devices` lists (1 when it is empty: the single `device`).
fn device_count(c: &TrainConfig) -> usize {
    c.devices.split(',').filter(|s| !s.trim().is_empty()).count().max(1)
}

fn invalid(key: &str, reason: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("invalid value for `{key}`: {reason}")
}

fn plan(c: &TrainConfig) -> Result<Plan> {
    if c.model.is_empty() {
        bail!("`model` is required (--model DIR or a hub id)");
    }
    if c.dataset.is_empty() {
        bail!("`dataset` is required (--dataset PATH or a hub id)");
    }
    let loss_type = LossType::parse(&c.loss_type).map_err(|e| invalid("loss_type", e))?;
    let loss = KtoLossConfig::new()
        .with_beta(c.beta)
        .with_loss_type(loss_type)
        .with_desirable_weight(c.desirable_weight)
        .with_undesirable_weight(c.undesirable_weight);
    loss.validate()?;
    let optimizer = OptimizerKind::parse(&c.optim, c.adam_beta1, c.adam_beta2, c.adam_epsilon, c.weight_decay)?;
    let schedule_kind = ScheduleKind::parse(&c.lr_scheduler_type)?;
    let kl_mode = KlMode::parse(&c.kl_estimate)?;
    if loss_type.uses_kl() && kl_mode == KlMode::MicroBatch && c.per_device_train_batch_size <= 1 {
        bail!("{}", kto_core::BATCH_SIZE_ONE_MESSAGE);
    }
    let tokenize = TokenizeConfig {
        max_length: (c.max_length > 0).then_some(c.max_length),
        max_prompt_length: (c.max_prompt_length > 0).then_some(c.max_prompt_length),
        truncation_mode: TruncationMode::parse(&c.truncation_mode).map_err(|e| invalid("truncation_mode", e))?,
        per_device_train_batch_size: c.per_device_train_batch_size,
        kl_pairs: loss_type.uses_kl(),
        // One KL estimate per window: the pairs span the window too (batch 1 × GA 4 pairs as
        // TRL's batch 4 × GA 1).
        kl_window: (kl_mode == KlMode::AccumulationWindow).then_some(KlWindow {
            gradient_accumulation_steps: c.gradient_accumulation_steps.max(1),
            devices: device_count(c),
        }),
    };
    tokenize.validate()?;
    if c.shuffle && c.group_by_length {
        bail!("`shuffle` and `group_by_length` exclude each other; choose one");
    }
    let sampling = if c.group_by_length {
        Sampling::GroupByLength { seed: c.seed }
    } else if c.shuffle {
        Sampling::Shuffle { seed: c.seed }
    } else {
        Sampling::Sequential
    };
    let eval_every = match c.eval_strategy.as_str() {
        "no" => EvalEvery::Never,
        "steps" => EvalEvery::Steps(if c.eval_steps > 0 { c.eval_steps } else { c.logging_steps }),
        "epoch" => EvalEvery::Epoch,
        other => return Err(invalid("eval_strategy", format!("\"{other}\" (expected no, steps or epoch)"))),
    };
    if eval_every != EvalEvery::Never && c.eval_dataset.is_empty() {
        bail!("`eval_strategy` is {} but no `eval_dataset` is given", c.eval_strategy);
    }
    if c.per_device_eval_batch_size == 0 {
        return Err(invalid("per_device_eval_batch_size", "must be >= 1"));
    }
    if !(0.0..=1.0).contains(&c.warmup_ratio) {
        return Err(invalid("warmup_ratio", format!("{} (expected a fraction in [0, 1])", c.warmup_ratio)));
    }
    if !(0.0..=1.0).contains(&c.ref_model_mixup_alpha) {
        return Err(invalid("ref_model_mixup_alpha", format!("{} (expected [0, 1])", c.ref_model_mixup_alpha)));
    }
    if c.precompute_ref_log_probs && sampling != Sampling::Sequential && loss_type.uses_kl() {
        bail!(
            "`precompute_ref_log_probs` needs sequential batches with a KL loss (the KL pairs are fixed at preprocessing); drop `shuffle`/`group_by_length`"
        );
    }
    if c.ddp {
        let specs: Vec<&str> = c.devices.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
        if specs.len() < 2 || !specs.iter().all(|s| *s == "cuda" || s.starts_with("cuda:")) {
            return Err(invalid(
                "ddp",
                "needs --devices with two or more CUDA devices (burn's all-reduce exists only on CUDA); without it, --devices gathers gradients on any backend",
            ));
        }
    }
    if c.sync_ref_model && c.precompute_ref_log_probs {
        bail!(
            "`sync_ref_model` cannot be combined with `precompute_ref_log_probs` (the reference changes during training)"
        );
    }
    if !c.num_train_epochs.is_finite() || (c.max_steps <= 0 && c.num_train_epochs <= 0.0) {
        return Err(invalid(
            "num_train_epochs",
            format!("{} (expected a finite number, > 0 when max_steps is not set)", c.num_train_epochs),
        ));
    }
    if c.sync_ref_model && (c.use_peft || !c.adapter.is_empty()) {
        // TRL refuses it too: under LoRA the reference is the base model with the adapters off,
        // so there is no separate reference model to mix the policy into.
        return Err(invalid(
            "sync_ref_model",
            "cannot be combined with LoRA (`use_peft` or `adapter`): the reference is the base model with the adapters off, so there is no reference model to sync",
        ));
    }
    let dtype = if c.bf16 { FloatDType::BF16 } else { FloatDType::F32 };
    let lora = if c.use_peft || !c.adapter.is_empty() {
        if c.lora_r == 0 {
            return Err(invalid("lora_r", "must be >= 1"));
        }
        if !(0.0..1.0).contains(&c.lora_dropout) {
            return Err(invalid("lora_dropout", format!("{} (expected a probability in [0, 1))", c.lora_dropout)));
        }
        Some(LoraConfig {
            r: c.lora_r,
            alpha: c.lora_alpha,
            dropout: c.lora_dropout,
            targets: LoraTargets::parse(&c.lora_target_modules).map_err(|e| invalid("lora_target_modules", e))?,
            use_rslora: c.use_rslora,
        })
    } else {
        None
    };
    Ok(Plan { loss, optimizer, schedule_kind, kl_mode, tokenize, sampling, eval_every, dtype, lora })
}

fn run(c: &TrainConfig) -> Result<()> {
    let started = Instant::now();
    let plan = plan(c)?;
    let devices = match c.devices.trim() {
        "" => vec![crate::device::parse_device(&c.device)?],
        list => list.split(',').map(|spec| crate::device::parse_device(spec.trim())).collect::<Result<Vec<_>>>()?,
    };
    let device = devices[0].clone();
    let folder = model_folder(&c.model)?;
    let tokenizer = HfTokenizer::from_folder(&folder)
        .with_context(|| format!("loading the tokenizer from {}", folder.display()))?;
    let pad_id = tokenizer
        .pad_id()
        .with_context(|| format!("{}: the tokenizer has neither a pad nor an EOS token", folder.display()))?;

    // Every id that reaches the embedding table must be in it: checked before anything is
    // written, against the model's own config.
    let vocab_size = DecoderConfig::from_file(&folder.join("config.json"))
        .with_context(|| format!("reading {}", folder.join("config.json").display()))?
        .vocab_size;
    if pad_id as usize >= vocab_size {
        bail!(
            "{}: the pad token id {pad_id} is outside the model's vocabulary ({vocab_size} ids); use a pad token the embedding table has (or resize the model)",
            folder.display()
        );
    }

    // Data.
    let dataset = kto_data::load_dataset(&c.dataset, &c.dataset_split)?;
    let mut tokenized = kto_data::tokenize_examples(&dataset.examples, &tokenizer, &plan.tokenize)?;
    kto_data::check_vocabulary(&tokenized, &dataset.examples, vocab_size)?;
    let uses_kl = plan.loss.loss_type.uses_kl();
    // Reference log-probs carried by the dataset (TRL's precompute columns, `kto logps`).
    let columns = kto_data::dataset_reference(&tokenized, &dataset.examples, uses_kl)?;
    if columns && c.precompute_ref_log_probs {
        bail!(
            "{}: the rows carry the reference's log-probs (`ref_logps`), so `precompute_ref_log_probs` has nothing to compute; drop one of the two",
            c.dataset
        );
    }
    if columns && uses_kl && plan.sampling != Sampling::Sequential {
        bail!(
            "{}: the rows' `ref_KL_logps` belong to the KL pairs of sequential batches; drop `shuffle`/`group_by_length`",
            c.dataset
        );
    }
    let audit = kto_data::audit(&dataset, &tokenized, &plan.tokenize, c.desirable_weight, c.undesirable_weight);
    let mut warnings: Vec<String> = Vec::new();
    for w in [&audit.weight_warning, &audit.one_class_warning, &audit.prefix_warning].into_iter().flatten() {
        eprintln!("warning: {w}");
        warnings.push(w.clone());
    }
    if tokenized.rows.is_empty() {
        bail!("{}: every row was dropped by max_length={} (see `kto audit`)", c.dataset, c.max_length);
    }
    let (mut eval_rows, eval_files) = if c.eval_dataset.is_empty() {
        (Vec::new(), Vec::new())
    } else {
        let eval: Dataset = kto_data::load_dataset(&c.eval_dataset, &c.eval_dataset_split)?;
        // TRL pairs evaluation rows in chunks of the *train* batch size (of the train window,
        // evaluated on one device, under `accumulation_window`).
        let kl_window = plan.tokenize.kl_window.map(|w| KlWindow { devices: 1, ..w });
        let tokenized = kto_data::tokenize_examples(
            &eval.examples,
            &tokenizer,
            &TokenizeConfig { kl_window, ..plan.tokenize.clone() },
        )?;
        kto_data::check_vocabulary(&tokenized, &eval.examples, vocab_size)?;
        if columns && !kto_data::dataset_reference(&tokenized, &eval.examples, uses_kl)? {
            bail!(
                "{}: the training rows carry the reference's log-probs but the evaluation rows do not; give both, or neither (a reference model then scores them)",
                c.eval_dataset
            );
        }
        (tokenized.rows, eval.files)
    };

    // Models.
    let load_options = LoadOptions { dtype: plan.dtype };
    let autodiff = |device: &Device| {
        if c.gradient_checkpointing {
            device.clone().autodiff().gradient_checkpointing()
        } else {
            device.clone().autodiff()
        }
    };
    let train_device = autodiff(&device);
    let output_dir = c.output_dir.clone();
    std::fs::create_dir_all(&output_dir).with_context(|| format!("creating {}", output_dir.display()))?;
    let resume = if c.resume_from_checkpoint.is_empty() {
        None
    } else {
        Some(checkpoint::load(&checkpoint::find(&c.resume_from_checkpoint, &output_dir)?, plan.optimizer, &device)?)
    };
    // Under LoRA the policy is the base model plus adapters (checkpoints hold adapters only).
    let policy_folder = match &resume {
        Some(r) if plan.lora.is_none() => r.folder.clone(),
        _ => folder.clone(),
    };
    let (model_config, policy) = load_model(&policy_folder, &train_device, &load_options)
        .with_context(|| format!("loading the policy from {}", policy_folder.display()))?;
    let (policy, lora) = match &plan.lora {
        None => (policy, None),
        Some(config) => {
            let source = match (&resume, c.adapter.is_empty()) {
                (Some(r), _) => Some(r.folder.clone()),
                (None, false) => Some(PathBuf::from(&c.adapter)),
                (None, true) => None,
            };
            match source {
                Some(dir) => {
                    let (policy, loaded) = kto_models::load_adapter(policy, &dir)
                        .with_context(|| format!("loading the LoRA adapter from {}", dir.display()))?;
                    (policy, Some(loaded))
                }
                None => (policy.apply_lora(config, c.seed), Some(config.clone())),
            }
        }
    };
    let policy = match &lora {
        Some(config) if config.dropout > 0.0 && !c.disable_dropout => policy.with_lora_dropout(config.dropout),
        Some(config) if config.dropout > 0.0 => {
            eprintln!(
                "note: lora_dropout {} is recorded in adapter_config.json but not applied: disable_dropout is true (TRL's default zeroes every dropout); pass --disable-dropout false to apply it",
                config.dropout
            );
            policy
        }
        _ => policy,
    };
    let ref_folder = match (&resume, c.ref_model.is_empty()) {
        (Some(r), _) if r.state.reference_saved => r.folder.join("reference"),
        (_, true) => folder.clone(),
        (_, false) => model_folder(&c.ref_model)?,
    };
    let collate_config = CollateConfig {
        pad_id,
        max_length: plan.tokenize.max_length,
        pad_to_multiple_of: (c.pad_to_multiple_of > 0).then_some(c.pad_to_multiple_of),
        kl: if plan.loss.loss_type.uses_kl() { plan.sampling.kl_pairing() } else { KlPairing::Off },
    };
    let logps = LogpsConfig::new();
    let reference = if columns {
        // The dataset carries the reference's log-probs: no reference model is loaded.
        if c.sync_ref_model {
            bail!(
                "{}: the rows carry fixed reference log-probs, so `sync_ref_model` cannot change the reference",
                c.dataset
            );
        }
        if !c.ref_model.is_empty() {
            bail!(
                "{}: the rows carry the reference's log-probs; drop `ref_model`, or the columns, to choose one",
                c.dataset
            );
        }
        eprintln!("reference log-probs: from the dataset's columns (no reference model loaded)");
        Reference::Precomputed
    } else {
        // LoRA's reference is the policy with its adapters off: the same base weights, no copy.
        let reference =
            if lora.is_some() && c.ref_model.is_empty() && !resume.as_ref().is_some_and(|r| r.state.reference_saved) {
                policy.without_adapters().valid()
            } else {
                load_model(&ref_folder, &device, &load_options)
                    .with_context(|| format!("loading the reference from {}", ref_folder.display()))?
                    .1
            };
        if c.precompute_ref_log_probs {
            let files: Vec<PathBuf> = dataset.files.iter().chain(&eval_files).cloned().collect();
            let inputs = precompute::Inputs {
                reference_folder: &ref_folder,
                tokenizer_folder: &folder,
                dataset_files: &files,
                settings: json!({
                    "max_length": c.max_length, "max_prompt_length": c.max_prompt_length,
                    "truncation_mode": c.truncation_mode, "batch_size": c.per_device_train_batch_size,
                    "loss_type": c.loss_type, "pad_to_multiple_of": c.pad_to_multiple_of, "bf16": c.bf16,
                    "dataset_split": c.dataset_split, "eval_dataset_split": c.eval_dataset_split,
                    "kl_estimate": c.kl_estimate, "gradient_accumulation_steps": c.gradient_accumulation_steps,
                    "devices": device_count(c),
                }),
            };
            // TRL precomputes the evaluation rows too, in evaluation batches.
            let mut splits = [
                precompute::Split {
                    name: "train",
                    rows: &mut tokenized.rows,
                    batch_size: c.per_device_train_batch_size,
                },
                precompute::Split { name: "eval", rows: &mut eval_rows, batch_size: c.per_device_eval_batch_size },
            ];
            precompute::fill(&output_dir, &inputs, &mut splits, |chunk| {
                let batch =
                    collate(chunk, &CollateConfig { kl: collate_config_kl_rows(&collate_config), ..collate_config });
                kto_core::reference_logps(&reference, &batch.to_device(&device), &logps)
            })?;
            Reference::Precomputed
        } else {
            Reference::Model(reference)
        }
    };

    // Schedule.
    let per_epoch = tokenized.rows.len().div_ceil(c.per_device_train_batch_size) as u64;
    let ga = c.gradient_accumulation_steps.max(1) as u64;
    let n_devices = devices.len() as u64;
    let steps_per_epoch = FitConfig::steps_per_epoch(per_epoch, ga, n_devices);
    let micro_steps_per_epoch = FitConfig::micro_steps_per_epoch(per_epoch, n_devices);
    let total_steps = FitConfig::total_steps(c.max_steps.max(0) as u64, c.num_train_epochs, steps_per_epoch);
    let schedule = Schedule {
        kind: plan.schedule_kind,
        learning_rate: c.learning_rate,
        warmup_steps: Schedule::warmup(total_steps, c.warmup_steps, c.warmup_ratio),
        total_steps,
    };
    let trainer_config = TrainerConfig {
        loss: plan.loss.clone(),
        optimizer: plan.optimizer,
        schedule,
        max_grad_norm: (c.max_grad_norm > 0.0).then_some(c.max_grad_norm),
        gradient_accumulation_steps: ga as usize,
        per_device_train_batch_size: c.per_device_train_batch_size,
        kl_mode: plan.kl_mode,
        logps: logps.clone(),
    };
    let replicas: Vec<Device> = devices[1..].iter().map(autodiff).collect();
    let trainer = Trainer::new(trainer_config, policy, reference)?;
    let mut trainer = if c.ddp { trainer.with_ddp(&replicas) } else { trainer.with_devices(&replicas) };
    let mut history = Vec::new();
    let start = match resume {
        Some(r) => {
            if r.state.devices != n_devices {
                bail!(
                    "{}: the checkpoint was written by a run on {} device(s); resume it on {} (its data position counts micro-steps of that many batches)",
                    r.folder.display(),
                    r.state.devices,
                    n_devices
                );
            }
            let position = r.position();
            eprintln!("resuming from {} at step {}", r.folder.display(), r.state.global_step);
            trainer.restore(r.state.global_step, r.state.num_tokens, r.optimizer);
            history = r.state.log_history;
            position
        }
        None => Position::default(),
    };
    let fit_config = FitConfig {
        max_steps: total_steps,
        micro_batches_per_epoch: per_epoch,
        gradient_accumulation_steps: ga,
        logging_steps: c.logging_steps,
        eval_every: plan.eval_every,
        save_steps: (c.save_steps > 0).then_some(c.save_steps),
        sync_ref: c.sync_ref_model.then_some((c.ref_model_mixup_alpha, c.ref_model_sync_steps)),
    };
    let resolved = serde_json::to_value(c)?;
    kto_models::write_atomic(&output_dir.join("kto_config.json"), serde_json::to_string_pretty(&resolved)? + "\n")?;
    let metrics_path = output_dir.join("metrics.jsonl");
    write_history(&metrics_path, &history)?;

    let lengths: Vec<usize> = tokenized.rows.iter().map(TokenizedRow::len).collect();
    let mut hooks = Hooks {
        config: c,
        rows: &tokenized.rows,
        lengths,
        eval_rows: &eval_rows,
        collate: collate_config,
        sampling: plan.sampling,
        train_device: train_device.clone(),
        device: device.clone(),
        devices: n_devices,
        order: None,
        history,
        metrics_path: metrics_path.clone(),
        model_config: &model_config,
        source_folder: &folder,
        dtype: storage(plan.dtype),
        progress: Progress::new(total_steps, start.step),
        tokenizer: &tokenizer,
        warnings: &warnings,
        lora: lora.as_ref(),
        base_name: &c.model,
        step_seconds: Vec::new(),
        step_started: Instant::now(),
    };
    let outcome = kto_core::fit(&mut trainer, &fit_config, start, &mut hooks);
    hooks.progress.finish();
    let end = outcome.with_context(|| match checkpoint::list(&output_dir).ok().and_then(|mut l| l.pop()) {
        Some((step, _)) => format!("training stopped; the last checkpoint (step {step}) is intact"),
        None => "training stopped".to_string(),
    })?;

    // Final model, summary, plots.
    let history = hooks.history;
    let step_seconds = hooks.step_seconds;
    let policy = trainer.into_policy();
    match &lora {
        Some(config) => {
            kto_models::save_adapter(&policy.valid(), config, &c.model, &output_dir)?;
            copy_companions(&folder, &output_dir)?;
        }
        None => save_final_model(&policy, &model_config, &folder, &output_dir, storage(plan.dtype))?,
    }
    let runtime = started.elapsed().as_secs_f64();
    let last = |key: &str| history.iter().rev().find_map(|e| e.get(key).and_then(Value::as_f64));
    let summary = json!({
        "global_step": end.step,
        "epoch": end.epoch(micro_steps_per_epoch),
        "train_rows": tokenized.rows.len(),
        "dropped_rows": tokenized.dropped.len(),
        "train_runtime_s": runtime,
        "train_steps_per_second": (end.step - start.step) as f64 / runtime,
        "step_seconds": step_seconds,
        "final": {"loss": last("loss"), "kl": last("kl"), "rewards/margins": last("rewards/margins")},
        "warnings": warnings,
        "device": if c.devices.is_empty() { c.device.clone() } else { c.devices.clone() },
        "devices": n_devices,
        "kto_version": env!("CARGO_PKG_VERSION"),
    });
    kto_models::write_atomic(&output_dir.join("run_summary.json"), serde_json::to_string_pretty(&summary)? + "\n")?;
    for (file, title, series) in [
        ("loss.svg", "loss", &["loss", "eval_loss"][..]),
        ("kl.svg", "KL estimate", &["kl", "eval_kl"][..]),
        ("rewards.svg", "rewards", &["rewards/chosen", "rewards/rejected", "rewards/margins"][..]),
    ] {
        if let Some(svg) = plot::svg(&plot::Chart { title, series }, &history) {
            kto_models::write_atomic(&output_dir.join(file), svg)?;
        }
    }
    eprintln!(
        "trained {} steps in {:.1}s; model, metrics.jsonl, plots and run_summary.json in {}",
        end.step - start.step,
        runtime,
        output_dir.display()
    );
    Ok(())
}

/// The tokenizer and generation files next to a saved adapter, as TRL saves them.
fn copy_companions(source: &Path, out: &Path) -> Result<()> {
    for file in kto_models::COMPANION_FILES {
        let from = source.join(file);
        if from.is_file() && from.file_name() != Some(std::ffi::OsStr::new("generation_config.json")) {
            let bytes = std::fs::read(&from).with_context(|| format!("reading {}", from.display()))?;
            kto_models::write_atomic(&out.join(file), bytes).with_context(|| format!("copying {}", from.display()))?;
        }
    }
    Ok(())
}

fn collate_config_kl_rows(c: &CollateConfig) -> KlPairing {
    match c.kl {
        KlPairing::Off => KlPairing::Off,
        _ => KlPairing::FromRows,
    }
}

fn storage(dtype: FloatDType) -> StorageDType {
    if dtype == FloatDType::BF16 { StorageDType::BF16 } else { StorageDType::F32 }
}

fn write_history(path: &Path, history: &[Value]) -> Result<()> {
    let mut text = String::new();
    for e in history {
        text.push_str(&serde_json::to_string(e)?);
        text.push('\n');
    }
    kto_models::write_atomic(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Writes the final model into `output_dir` itself (loadable with `from_pretrained`), next to
/// the run's other files.
fn save_final_model(
    policy: &TransformerLm,
    config: &DecoderConfig,
    source: &Path,
    output_dir: &Path,
    dtype: StorageDType,
) -> Result<()> {
    let tmp = output_dir.join(".final-model.partial");
    kto_models::save_model(
        &burn::module::Module::valid(policy),
        config,
        Some(source),
        &tmp,
        &SaveOptions { dtype: Some(dtype), max_shard_bytes: 5_000_000_000 },
    )?;
    // The new files replace the old ones by rename (each either old or new at any moment);
    // only then do weight files of an earlier save that the new one does not have go, e.g.
    // shards of a larger layout. The index goes last, so it never names a missing shard.
    let mut new: Vec<std::ffi::OsString> =
        std::fs::read_dir(&tmp)?.map(|e| e.map(|e| e.file_name())).collect::<std::io::Result<_>>()?;
    new.sort_by_key(|n| n == "model.safetensors.index.json");
    for name in &new {
        std::fs::rename(tmp.join(name), output_dir.join(name))?;
    }
    kto_models::sync_folder(&output_dir.join("config.json"));
    for entry in std::fs::read_dir(output_dir)? {
        let path = entry?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        let weights = name.ends_with(".safetensors") || name == "model.safetensors.index.json";
        if path.is_file() && weights && !new.iter().any(|n| *n == *name) {
            std::fs::remove_file(&path)?;
        }
    }
    std::fs::remove_dir(&tmp)?;
    Ok(())
}

struct Hooks<'a> {
    config: &'a TrainConfig,
    rows: &'a [TokenizedRow],
    lengths: Vec<usize>,
    eval_rows: &'a [TokenizedRow],
    collate: CollateConfig,
    sampling: Sampling,
    train_device: Device,
    device: Device,
    /// Data-parallel devices.
    devices: u64,
    /// The current epoch's batches.
    order: Option<(u64, Vec<Vec<usize>>)>,
    history: Vec<Value>,
    metrics_path: PathBuf,
    model_config: &'a DecoderConfig,
    source_folder: &'a Path,
    dtype: StorageDType,
    progress: Progress,
    tokenizer: &'a HfTokenizer,
    warnings: &'a [String],
    lora: Option<&'a LoraConfig>,
    base_name: &'a str,
    /// Wall time of each optimizer step of this run (data, four passes, backward, update).
    step_seconds: Vec<f64>,
    step_started: Instant,
}

impl FitHooks<TransformerLm> for Hooks<'_> {
    fn micro_batch(&mut self, epoch: u64, index: u64) -> kto_core::Result<KtoBatch> {
        if self.order.as_ref().is_none_or(|(e, _)| *e != epoch) {
            let batches =
                epoch_batches(&self.lengths, self.config.per_device_train_batch_size, self.sampling, epoch, false);
            self.order = Some((epoch, batches));
        }
        let (_, batches) = self.order.as_ref().expect("set above");
        let rows: Vec<&TokenizedRow> = batches[index as usize].iter().map(|&i| &self.rows[i]).collect();
        let window = self.config.kl_estimate == "accumulation_window";
        if window && self.collate.kl == KlPairing::InBatch {
            // Shuffled batches under one KL estimate per window: the pairs rotate over this
            // device's whole window, as sequential rows do at preprocessing.
            let ga = self.config.gradient_accumulation_steps.max(1);
            let members: Vec<usize> =
                kto_core::window_micro_batches(index as usize, batches.len(), ga, self.devices as usize)
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
            let config = CollateConfig { kl: KlPairing::FromRows, ..self.collate };
            return Ok(collate(&paired, &config).to_device(&self.train_device));
        }
        Ok(collate(&rows, &self.collate).to_device(&self.train_device))
    }

    fn on_step(&mut self, report: &StepReport, _position: &Position) {
        let now = Instant::now();
        self.step_seconds.push(now.duration_since(self.step_started).as_secs_f64());
        self.step_started = now;
        self.progress.step(report);
    }

    fn on_log(&mut self, values: &[(String, f64)]) -> kto_core::Result<()> {
        let event: serde_json::Map<String, Value> = values.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        let event = Value::Object(event);
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
    ) -> kto_core::Result<Vec<(String, f64)>> {
        let batches: Vec<KtoBatch> = self
            .eval_rows
            .chunks(self.config.per_device_eval_batch_size)
            .map(|chunk| {
                let rows: Vec<&TokenizedRow> = chunk.iter().collect();
                let kl = if self.collate.kl == KlPairing::Off { KlPairing::Off } else { KlPairing::FromRows };
                collate(&rows, &CollateConfig { kl, ..self.collate }).to_device(&self.device)
            })
            .collect();
        let values = trainer.evaluate(&batches)?;
        if self.config.generate_during_eval {
            self.samples(trainer, position).map_err(|e| kto_core::Error::Settings { reason: format!("{e:#}") })?;
        }
        Ok(values)
    }

    fn save(&mut self, trainer: &Trainer<TransformerLm>, position: &Position) -> kto_core::Result<()> {
        let policy = burn::module::Module::valid(trainer.policy());
        let synced = match trainer.reference() {
            Reference::Model(m) if self.config.sync_ref_model => Some(m.clone()),
            _ => None,
        };
        let state = checkpoint::TrainerState {
            global_step: position.step,
            micro_batches: position.micro_batches,
            devices: self.devices,
            epoch: position.epoch(FitConfig::micro_steps_per_epoch(
                self.rows.len().div_ceil(self.config.per_device_train_batch_size) as u64,
                self.devices,
            )),
            num_tokens: trainer.num_tokens(),
            optimizer_steps: trainer.optimizer().steps(),
            log_history: self.history.clone(),
            seed: self.config.seed,
            reference_saved: synced.is_some(),
        };
        let snapshot = checkpoint::Snapshot {
            lora: self.lora.map(|config| (config, self.base_name)),
            policy: &policy,
            reference: synced.as_ref(),
            model_config: self.model_config,
            source_folder: self.source_folder,
            dtype: self.dtype,
            optimizer: trainer.optimizer(),
            state,
        };
        checkpoint::save(&self.config.output_dir, snapshot, self.config.save_total_limit)
            .map_err(|e| kto_core::Error::Settings { reason: format!("saving a checkpoint: {e:#}") })?;
        let _ = self.warnings;
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
        let path = self.config.output_dir.join("eval_samples.jsonl");
        let mut file = std::fs::OpenOptions::new().append(true).create(true).open(&path)?;
        file.write_all(out.as_bytes())?;
        Ok(())
    }
}

/// A progress line on a terminal (step, ETA, loss, KL, margin), plain log lines otherwise.
struct Progress {
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

    fn finish(&self) {
        if self.terminal {
            eprintln!();
        }
    }
}
