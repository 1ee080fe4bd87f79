//! Stage 0 of `kto train`: every setting checked and turned into the typed values the later
//! stages take, before anything is read or written.

use std::path::PathBuf;

use anyhow::{Result, bail};
use burn::tensor::{Device, FloatDType};
use kto_core::{EvalEvery, KlMode, KtoLossConfig, Optim, OptimizerKind, OptimizerStorage, ScheduleKind};
use kto_data::{KlWindow, Sampling, TokenizeConfig};
use kto_models::LoraConfig;

use super::options::TrainConfig;
use crate::choices::EvalStrategy;

/// The whole run, as typed values grouped by the stage that uses them.
pub struct Plan {
    pub data: DataPlan,
    pub models: ModelPlan,
    pub reference: ReferencePlan,
    pub run: RunPlan,
}

/// What the data stage reads and how it tokenizes it.
pub struct DataPlan {
    pub dataset: String,
    pub dataset_split: String,
    /// `(eval_dataset, eval_dataset_split)`.
    pub eval: Option<(String, String)>,
    pub tokenize: TokenizeConfig,
    pub sampling: Sampling,
    pub uses_kl: bool,
    pub desirable_weight: f64,
    pub undesirable_weight: f64,
    pub precompute_ref_log_probs: bool,
}

/// Which models are loaded, on what, with which adapters.
pub struct ModelPlan {
    pub model: String,
    /// A separate reference model (the default is a frozen copy of `model`).
    pub ref_model: Option<String>,
    /// A PEFT adapter folder to start from.
    pub adapter: Option<PathBuf>,
    pub lora: Option<LoraConfig>,
    /// `!disable_dropout`: LoRA's dropout is applied in training forwards.
    pub apply_lora_dropout: bool,
    pub precision: Precision,
    /// The weights' dtype (f32: mixed precision keeps f32 masters).
    pub dtype: FloatDType,
    /// Mixed precision: the dtype the matmuls compute in (`bf16`).
    pub compute: Option<FloatDType>,
    /// AdamW's moments in bf16 (`bf16_moments`).
    pub bf16_moments: bool,
    pub gradient_checkpointing: bool,
    /// The seed of LoRA's initialisation.
    pub seed: u64,
}

/// How the policy is held and computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// f32 throughout.
    Fp32,
    /// `bf16`: f32 master weights, matmuls on bf16 inputs (TRL's `bf16=True`).
    Bf16Mixed,
    /// `bf16_weights`: weights, gradients and the reference in bf16, stochastically rounded
    /// updates.
    Bf16Weights,
}

impl Precision {
    /// As `run_summary.json` records it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Fp32 => "fp32",
            Self::Bf16Mixed => "bf16-mixed",
            Self::Bf16Weights => "bf16-weights",
        }
    }
}

/// Where the reference log-probs come from.
pub struct ReferencePlan {
    pub precompute: bool,
    /// TR-DPO: `(α, τ)`.
    pub sync: Option<(f64, u64)>,
    pub per_device_eval_batch_size: usize,
    /// The settings that shape the precomputed rows (recorded in the cache's manifest).
    pub manifest_settings: serde_json::Value,
}

/// The optimisation and the run's outputs.
pub struct RunPlan {
    pub loss: KtoLossConfig,
    pub optimizer: OptimizerKind,
    pub schedule_kind: ScheduleKind,
    pub learning_rate: f64,
    pub warmup_steps: u64,
    pub warmup_ratio: f64,
    pub max_grad_norm: Option<f64>,
    pub kl_mode: KlMode,
    pub per_device_train_batch_size: usize,
    pub per_device_eval_batch_size: usize,
    pub gradient_accumulation_steps: usize,
    /// `> 0` overrides the epochs.
    pub max_steps: u64,
    pub num_train_epochs: f64,
    pub logging_steps: u64,
    pub eval_every: EvalEvery,
    pub save_steps: Option<u64>,
    pub save_total_limit: usize,
    pub pad_to_multiple_of: Option<usize>,
    pub devices: Vec<Device>,
    /// What `--device`/`--devices` said, for the summary.
    pub device_names: String,
    /// Every device is a CPU backend: the reference passes overlap the policy's.
    pub cpu: bool,
    pub ddp: bool,
    pub generate_during_eval: bool,
    pub output_dir: PathBuf,
    pub resume_from_checkpoint: Option<String>,
    pub seed: u64,
    /// The final model's dtype on disk.
    pub save_dtype: crate::choices::SaveDType,
    /// Where the optimizer keeps AdamW's moments, and the seed of its stochastic rounding.
    pub storage: OptimizerStorage,
}

/// How many data-parallel devices `devices` lists (1 when it is empty: the single `device`).
fn device_count(c: &TrainConfig) -> usize {
    c.devices.0.len().max(1)
}

fn invalid(key: &str, reason: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("invalid value for `{key}`: {reason}")
}

fn given(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// Checks every setting of `c`, alone and together, and builds the plan.
pub fn plan(c: &TrainConfig) -> Result<Plan> {
    if c.model.is_empty() {
        bail!("`model` is required (--model DIR or a hub id)");
    }
    if c.dataset.is_empty() {
        bail!("`dataset` is required (--dataset PATH or a hub id)");
    }
    let loss = KtoLossConfig::new()
        .with_beta(c.beta)
        .with_loss_type(c.loss_type)
        .with_desirable_weight(c.desirable_weight)
        .with_undesirable_weight(c.undesirable_weight);
    loss.validate()?;
    let data = data_plan(c)?;
    let run = run_plan(c, loss)?;
    let reference = reference_plan(c)?;
    let models = model_plan(c)?;
    check_precision(&models, &run.devices)?;
    Ok(Plan { data, models, reference, run })
}

/// Refuses a bf16 setting on a device that cannot compute in bf16, naming the setting and the
/// device, before anything is read (a checkpoint's moments are restored in their dtype).
fn check_precision(models: &ModelPlan, devices: &[Device]) -> Result<()> {
    let asked = match models.precision {
        Precision::Bf16Weights => Some("bf16_weights"),
        Precision::Bf16Mixed => Some("bf16"),
        Precision::Fp32 => models.bf16_moments.then_some("bf16_moments"),
    };
    let Some(setting) = asked else { return Ok(()) };
    match devices.iter().find(|d| !d.supports_dtype(burn::tensor::DType::BF16)) {
        Some(device) => Err(invalid(
            setting,
            format!(
                "the device {device:?} cannot compute in bf16 (flex and CUDA can); train in f32 there (--{} false)",
                setting.replace('_', "-")
            ),
        )),
        None => Ok(()),
    }
}

/// The data: tokenization (with the KL pairs of the loss and the window), sampling.
fn data_plan(c: &TrainConfig) -> Result<DataPlan> {
    let uses_kl = c.loss_type.uses_kl();
    if uses_kl && c.kl_estimate == KlMode::MicroBatch && c.per_device_train_batch_size <= 1 {
        bail!("{}", kto_core::BATCH_SIZE_ONE_MESSAGE);
    }
    let tokenize = TokenizeConfig {
        max_length: (c.max_length > 0).then_some(c.max_length),
        max_prompt_length: (c.max_prompt_length > 0).then_some(c.max_prompt_length),
        truncation_mode: c.truncation_mode,
        per_device_train_batch_size: c.per_device_train_batch_size,
        kl_pairs: uses_kl,
        // One KL estimate per window: the pairs span the window too (batch 1 × GA 4 pairs as
        // TRL's batch 4 × GA 1).
        kl_window: (c.kl_estimate == KlMode::AccumulationWindow).then_some(KlWindow {
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
    if c.precompute_ref_log_probs && sampling != Sampling::Sequential && uses_kl {
        bail!(
            "`precompute_ref_log_probs` needs sequential batches with a KL loss (the KL pairs are fixed at preprocessing); drop `shuffle`/`group_by_length`"
        );
    }
    Ok(DataPlan {
        dataset: c.dataset.clone(),
        dataset_split: c.dataset_split.clone(),
        eval: given(&c.eval_dataset).map(|d| (d, c.eval_dataset_split.clone())),
        tokenize,
        sampling,
        uses_kl,
        desirable_weight: c.desirable_weight,
        undesirable_weight: c.undesirable_weight,
        precompute_ref_log_probs: c.precompute_ref_log_probs,
    })
}

/// The optimisation, evaluation, devices and outputs.
fn run_plan(c: &TrainConfig, loss: KtoLossConfig) -> Result<RunPlan> {
    let optimizer = OptimizerKind::new(c.optim, c.adam_beta1, c.adam_beta2, c.adam_epsilon, c.weight_decay)?;
    if c.bf16_moments && c.optim == Optim::Sgd {
        return Err(invalid("bf16_moments", "`optim` is sgd, which keeps no moments (it applies to adamw_torch)"));
    }
    let eval_every = match c.eval_strategy {
        EvalStrategy::No => EvalEvery::Never,
        EvalStrategy::Steps => EvalEvery::Steps(if c.eval_steps > 0 { c.eval_steps } else { c.logging_steps }),
        EvalStrategy::Epoch => EvalEvery::Epoch,
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
    if c.ddp {
        let specs = &c.devices.0;
        if specs.len() < 2 || !specs.iter().all(|s| s.is_cuda()) {
            return Err(invalid(
                "ddp",
                "needs --devices with two or more CUDA devices (burn's all-reduce exists only on CUDA); without it, --devices gathers gradients on any backend",
            ));
        }
    }
    if !c.num_train_epochs.is_finite() || (c.max_steps <= 0 && c.num_train_epochs <= 0.0) {
        return Err(invalid(
            "num_train_epochs",
            format!("{} (expected a finite number, > 0 when max_steps is not set)", c.num_train_epochs),
        ));
    }
    let devices = match c.devices.0.as_slice() {
        [] => vec![c.device.device()?],
        list => list.iter().map(|spec| spec.device()).collect::<Result<_>>()?,
    };
    Ok(RunPlan {
        loss,
        optimizer,
        schedule_kind: c.lr_scheduler_type,
        learning_rate: c.learning_rate,
        warmup_steps: c.warmup_steps,
        warmup_ratio: c.warmup_ratio,
        max_grad_norm: (c.max_grad_norm > 0.0).then_some(c.max_grad_norm),
        kl_mode: c.kl_estimate,
        per_device_train_batch_size: c.per_device_train_batch_size,
        per_device_eval_batch_size: c.per_device_eval_batch_size,
        gradient_accumulation_steps: c.gradient_accumulation_steps.max(1),
        max_steps: c.max_steps.max(0) as u64,
        num_train_epochs: c.num_train_epochs,
        logging_steps: c.logging_steps,
        eval_every,
        save_steps: (c.save_steps > 0).then_some(c.save_steps),
        save_total_limit: c.save_total_limit,
        pad_to_multiple_of: (c.pad_to_multiple_of > 0).then_some(c.pad_to_multiple_of),
        devices,
        cpu: if c.devices.0.is_empty() { c.device.is_cpu() } else { c.devices.0.iter().all(|s| s.is_cpu()) },
        device_names: if c.devices.0.is_empty() { c.device.to_string() } else { c.devices.to_string() },
        ddp: c.ddp,
        generate_during_eval: c.generate_during_eval,
        output_dir: c.output_dir.clone(),
        resume_from_checkpoint: given(&c.resume_from_checkpoint),
        seed: c.seed,
        save_dtype: c.save_dtype,
        storage: OptimizerStorage {
            moments: if c.bf16_moments { FloatDType::BF16 } else { FloatDType::F32 },
            seed: c.seed,
        },
    })
}

/// The reference: precomputed or a model, TR-DPO's syncs.
fn reference_plan(c: &TrainConfig) -> Result<ReferencePlan> {
    if !(0.0..=1.0).contains(&c.ref_model_mixup_alpha) {
        return Err(invalid("ref_model_mixup_alpha", format!("{} (expected [0, 1])", c.ref_model_mixup_alpha)));
    }
    if c.sync_ref_model && c.precompute_ref_log_probs {
        bail!(
            "`sync_ref_model` cannot be combined with `precompute_ref_log_probs` (the reference changes during training)"
        );
    }
    let manifest_settings = serde_json::json!({
        "max_length": c.max_length, "max_prompt_length": c.max_prompt_length,
        "truncation_mode": c.truncation_mode, "batch_size": c.per_device_train_batch_size,
        "loss_type": c.loss_type, "pad_to_multiple_of": c.pad_to_multiple_of, "bf16": c.bf16,
        "dataset_split": c.dataset_split, "eval_dataset_split": c.eval_dataset_split,
        "kl_estimate": c.kl_estimate, "gradient_accumulation_steps": c.gradient_accumulation_steps,
        "devices": device_count(c),
    });
    Ok(ReferencePlan {
        precompute: c.precompute_ref_log_probs,
        sync: c.sync_ref_model.then_some((c.ref_model_mixup_alpha, c.ref_model_sync_steps)),
        per_device_eval_batch_size: c.per_device_eval_batch_size,
        manifest_settings,
    })
}

/// The models: the adapters (LoRA), precision, recomputation.
fn model_plan(c: &TrainConfig) -> Result<ModelPlan> {
    if c.sync_ref_model && (c.use_peft || !c.adapter.is_empty()) {
        // TRL refuses it too: under LoRA the reference is the base model with the adapters off,
        // so there is no separate reference model to mix the policy into.
        return Err(invalid(
            "sync_ref_model",
            "cannot be combined with LoRA (`use_peft` or `adapter`): the reference is the base model with the adapters off, so there is no reference model to sync",
        ));
    }
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
            targets: c.lora_target_modules.clone(),
            use_rslora: c.use_rslora,
        })
    } else {
        None
    };
    // --bf16 with --bf16-weights is --bf16-weights: its matmuls are bf16 too.
    let precision = match (c.bf16, c.bf16_weights) {
        (_, true) => Precision::Bf16Weights,
        (true, false) => Precision::Bf16Mixed,
        (false, false) => Precision::Fp32,
    };
    Ok(ModelPlan {
        model: c.model.clone(),
        ref_model: given(&c.ref_model),
        adapter: given(&c.adapter).map(PathBuf::from),
        lora,
        apply_lora_dropout: !c.disable_dropout,
        precision,
        dtype: if precision == Precision::Bf16Weights { FloatDType::BF16 } else { FloatDType::F32 },
        compute: (precision != Precision::Fp32).then_some(FloatDType::BF16),
        bf16_moments: c.bf16_moments,
        gradient_checkpointing: c.gradient_checkpointing,
        seed: c.seed,
    })
}
