//! `kto train`: TRL's KTO training run from flags or a config file, with metrics, checkpoints,
//! resumption, evaluation, plots and a run summary in the output folder.

//!
//! A run is a pipeline of stages, each in its own file and each taking the typed results of the
//! ones before it: [`plan`] (every setting checked), [`data`], the resume check ([`resume`]),
//! [`models`], [`reference`], [`fit`], [`save`] and [`summary`]. Nothing is written before the
//! resume check has passed.

mod checkpoint;
mod data;
mod fit;
mod hooks;
mod models;
pub mod options;
mod plan;
mod plot;
mod precompute;
mod reference;
mod resume;
mod save;
mod summary;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use kto_core::OptimizerKind;
use kto_data::{CollateConfig, KlPairing};

use self::options::{TrainConfig, TrainOptions, read_config_file};

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

/// A whole run: the stages in order.
fn run(c: &TrainConfig) -> Result<()> {
    let started = Instant::now();
    let plan = plan::plan(c)?;
    let (run, device) = (&plan.run, plan.run.devices[0].clone());
    let n_devices = run.devices.len() as u64;

    let mut data = data::prepare(&plan.models.model, &plan.data)?;

    let ref_folder = plan.models.ref_model.as_deref().map(crate::data_args::model_folder).transpose()?;
    let sources = resume::Sources {
        model: &data.folder,
        ref_model: ref_folder.as_deref(),
        adapter: plan.models.adapter.as_deref(),
        dataset: &data.train_files,
        devices: run.devices.len(),
        lora: plan.models.lora.is_some(),
    };
    let identity = resume::identity(c, &sources)?;
    let spec = run.resume_from_checkpoint.as_deref();
    let restored = resume::open(spec, &run.output_dir, (run.optimizer, run.storage), &device, n_devices, &identity)?;

    let (models, policy) = models::load(&plan.models, &data.folder, &device, restored.as_ref())?;
    std::fs::create_dir_all(&run.output_dir).with_context(|| format!("creating {}", run.output_dir.display()))?;
    let collate = CollateConfig {
        pad_id: data.pad_id,
        max_length: plan.data.tokenize.max_length,
        pad_to_multiple_of: run.pad_to_multiple_of,
        kl: if plan.data.uses_kl { plan.data.sampling.kl_pairing() } else { KlPairing::Off },
    };
    let setting = reference::Setting {
        device: &device,
        collate: &collate,
        per_device_train_batch_size: run.per_device_train_batch_size,
        output_dir: &run.output_dir,
        dataset: &plan.data.dataset,
        resumed_reference: restored.as_ref().is_some_and(|r| r.state.reference_saved),
    };
    let reference = reference::prepare(&plan.reference, &plan.models, &mut data, (&models, &policy), &setting)?;

    let resolved = serde_json::to_value(c)?;
    let lora = models.lora.as_ref().map(|config| (config, plan.models.model.as_str()));
    let inputs = fit::Inputs {
        plan: run,
        sync_ref: plan.reference.sync,
        sampling: plan.data.sampling,
        collate,
        data: &data,
        models: &models,
        lora,
        dtype: save::storage(plan.models.dtype),
        identity: &identity,
        resolved: &resolved,
    };
    let fitted = fit::fit(&inputs, policy, reference, restored)?;

    // The model, the summary and the plots.
    // `auto` is the dtype of the model the run started from: a resumed policy is loaded from a
    // checkpoint, which holds the training dtype (bf16 under --bf16-weights).
    let source_config = kto_models::DecoderConfig::from_file(&data.folder.join("config.json"))?;
    let final_dtype = save::final_dtype(run.save_dtype, &source_config);
    save::save(&fitted.policy, lora, &models.model_config, &data.folder, &run.output_dir, final_dtype)?;
    summary::write(
        &run.output_dir,
        &summary::Summary {
            start_step: fitted.start.step,
            end_step: fitted.end.step,
            epoch: fitted.epoch,
            train_rows: data.train.rows.len(),
            dropped_rows: data.train.dropped.len(),
            runtime_s: started.elapsed().as_secs_f64(),
            step_seconds: &fitted.step_seconds,
            history: &fitted.history,
            warnings: &data.warnings,
            device_names: &run.device_names,
            precision: plan.models.precision.name(),
            moments: match run.optimizer {
                OptimizerKind::Sgd { .. } => None,
                OptimizerKind::AdamW { .. } => Some(if plan.models.bf16_moments { "bf16" } else { "f32" }),
            },
            devices: n_devices,
        },
    )
}
