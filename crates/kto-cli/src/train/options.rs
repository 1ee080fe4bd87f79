//! `kto train`'s settings: TRL `KTOConfig` / `TrainingArguments` names, as kebab-case flags and as
//! snake_case keys of a `--config` file (YAML, TOML or JSON, like `trl kto --config`). Flags
//! override the file; unknown keys and invalid values are errors naming the key.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use kto_core::{KlMode, LossType, Optim, ScheduleKind};
use kto_data::TruncationMode;
use kto_models::LoraTargets;
use serde::{Deserialize, Serialize};

use crate::choices::{EvalStrategy, LORA_TARGETS, SaveDType, choice, devices, values};
use crate::device::{DeviceList, DeviceSpec};

/// Declares every option once: the clap/serde struct of optional values, the resolved struct
/// with defaults, and the merge.
macro_rules! options {
    ($( $(#[doc = $doc:literal])* $(#[arg($($arg:tt)*)])? $name:ident : $ty:ty = $default:expr ; )*) => {
        /// Options as given (flags or file); `None` when not given.
        #[derive(Debug, Clone, Default, clap::Args, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct TrainOptions {
            $( $(#[doc = $doc])* #[arg(long $(, $($arg)*)?)] pub $name: Option<$ty>, )*
        }

        /// Every option resolved (flag, else file, else default): what the run uses and records.
        #[derive(Debug, Clone, PartialEq, Serialize)]
        pub struct TrainConfig {
            $( $(#[doc = $doc])* pub $name: $ty, )*
        }

        impl TrainOptions {
            /// Flags over file over defaults.
            pub fn resolve(self, file: TrainOptions) -> TrainConfig {
                TrainConfig { $( $name: self.$name.or(file.$name).unwrap_or_else(|| $default), )* }
            }
        }
    };
}

options! {
    /// Policy model: a Hugging Face folder or a hub id in the local cache.
    model: String = String::new();
    /// Reference model (default: a frozen copy of --model).
    ref_model: String = String::new();
    /// Training data (file, dataset repo folder, or cached hub id).
    dataset: String = String::new();
    /// Split of --dataset.
    dataset_split: String = "train".into();
    /// Evaluation data (same forms as --dataset).
    eval_dataset: String = String::new();
    /// Split of --eval-dataset.
    eval_dataset_split: String = "test".into();
    /// Output folder: final model, metrics.jsonl, config, summary, plots, checkpoints.
    output_dir: PathBuf = PathBuf::from("trainer_output");
    /// KTO's β.
    beta: f64 = 0.1;
    /// The objective.
    #[arg(value_parser = choice::<LossType>())]
    loss_type: LossType = LossType::Kto;
    /// λ_D.
    desirable_weight: f64 = 1.0;
    /// λ_U.
    undesirable_weight: f64 = 1.0;
    /// Drop rows whose prompt has this many tokens, cut the rest to it; 0 disables both.
    max_length: usize = 1024;
    /// Classic TRL prompt budget (see the book's Data chapter); 0 = unset.
    max_prompt_length: usize = 0;
    /// Which end of an over-long prompt --max-prompt-length keeps.
    #[arg(value_parser = choice::<TruncationMode>())]
    truncation_mode: TruncationMode = TruncationMode::KeepEnd;
    /// Pad batches to a multiple of this; 0 = unset.
    pad_to_multiple_of: usize = 0;
    /// Compute the reference log-probs once before training (cached in the output folder).
    #[arg(num_args = 0..=1, default_missing_value = "true")]
    precompute_ref_log_probs: bool = false;
    /// Peak learning rate (TRL's default 1e-6).
    learning_rate: f64 = 1e-6;
    /// The optimizer (adamw_torch_fused and adamw_hf are accepted as adamw_torch).
    #[arg(value_parser = choice::<Optim>())]
    optim: Optim = Optim::AdamwTorch;
    /// The learning-rate schedule.
    #[arg(value_parser = choice::<ScheduleKind>())]
    lr_scheduler_type: ScheduleKind = ScheduleKind::Linear;
    /// Warm-up as a fraction of the steps (used when --warmup-steps is 0).
    warmup_ratio: f64 = 0.0;
    /// Warm-up steps.
    warmup_steps: u64 = 0;
    /// Decoupled weight decay (not on biases and norms).
    weight_decay: f64 = 0.0;
    /// AdamW β1.
    adam_beta1: f64 = 0.9;
    /// AdamW β2.
    adam_beta2: f64 = 0.999;
    /// AdamW ε.
    adam_epsilon: f64 = 1e-8;
    /// Global gradient-norm clipping (0 disables).
    max_grad_norm: f64 = 1.0;
    /// Rows per micro-batch.
    per_device_train_batch_size: usize = 8;
    /// Rows per evaluation batch.
    per_device_eval_batch_size: usize = 8;
    /// Micro-batches per optimizer step.
    gradient_accumulation_steps: usize = 1;
    /// Epochs (when --max-steps is not set).
    num_train_epochs: f64 = 3.0;
    /// Optimizer steps (overrides --num-train-epochs when > 0).
    max_steps: i64 = -1;
    /// Log every this many steps.
    logging_steps: u64 = 10;
    /// When to evaluate.
    #[arg(value_parser = choice::<EvalStrategy>())]
    eval_strategy: EvalStrategy = EvalStrategy::No;
    /// Evaluate every this many steps (eval_strategy steps; default logging_steps).
    eval_steps: u64 = 0;
    /// Checkpoint every this many steps (0 = never).
    save_steps: u64 = 500;
    /// Keep at most this many checkpoints (0 = all).
    save_total_limit: usize = 0;
    /// Seed of shuffling and generation.
    seed: u64 = 42;
    /// Shuffle the training rows every epoch (KL pairs are then formed in each batch).
    #[arg(num_args = 0..=1, default_missing_value = "true")]
    shuffle: bool = false;
    /// Group rows of similar length into batches (less padding; KL pairs formed in each batch).
    #[arg(num_args = 0..=1, default_missing_value = "true")]
    group_by_length: bool = false;
    /// Recompute activations in the backward pass to save memory (TRL's default: true).
    #[arg(num_args = 0..=1, default_missing_value = "true")]
    gradient_checkpointing: bool = true;
    /// TRL's `bf16=True`: mixed precision, f32 master weights and optimizer state, every matmul
    /// on bf16 inputs (flex, CUDA).
    #[arg(num_args = 0..=1, default_missing_value = "true")]
    bf16: bool = false;
    /// Beyond TRL, for memory: the policy's weights and gradients and the reference held in
    /// bf16 (2 bytes per weight, not 4), every update computed in f32 and rounded
    /// stochastically, seeded so a resume is exact (flex, CUDA).
    #[arg(num_args = 0..=1, default_missing_value = "true")]
    bf16_weights: bool = false;
    /// Beyond TRL, for memory: AdamW's two moments held in bf16 (4 bytes per parameter, not 8),
    /// rounded stochastically as --bf16-weights rounds the weights.
    #[arg(num_args = 0..=1, default_missing_value = "true")]
    bf16_moments: bool = false;
    /// The final model's dtype on disk (checkpoints keep the weights as training holds them).
    #[arg(value_parser = choice::<SaveDType>())]
    save_dtype: SaveDType = SaveDType::Auto;
    /// The device (as compiled in).
    #[arg(value_parser = devices::<DeviceSpec>())]
    device: DeviceSpec = crate::device::default_device();
    /// Data-parallel devices, comma-separated (cuda:0,cuda:1 or wgpu:0,wgpu:1); replaces
    /// --device. Each takes its own per-device batch; the first also evaluates, logs and saves.
    #[arg(value_parser = devices::<DeviceList>())]
    devices: DeviceList = DeviceList::default();
    /// With --devices on CUDA: sum gradients with burn's DDP all-reduce (NCCL) during the
    /// backward instead of gathering them on the first device.
    #[arg(num_args = 0..=1, default_missing_value = "true")]
    ddp: bool = false;
    /// micro_batch (TRL: each micro-batch's own KL pairs) or accumulation_window (one KL
    /// estimate per optimizer step).
    #[arg(value_parser = choice::<KlMode>())]
    kl_estimate: KlMode = KlMode::MicroBatch;
    /// TR-DPO: mix the policy into the reference every --ref-model-sync-steps.
    #[arg(num_args = 0..=1, default_missing_value = "true")]
    sync_ref_model: bool = false;
    /// TR-DPO α.
    ref_model_mixup_alpha: f64 = 0.6;
    /// TR-DPO τ.
    ref_model_sync_steps: u64 = 512;
    /// Write policy and reference samples for a few eval prompts at each evaluation.
    #[arg(num_args = 0..=1, default_missing_value = "true")]
    generate_during_eval: bool = false;
    /// Continue from a checkpoint folder, or `latest` in --output-dir.
    resume_from_checkpoint: String = String::new();
    /// Train LoRA adapters on the frozen model; the reference is the model with adapters off.
    #[arg(num_args = 0..=1, default_missing_value = "true")]
    use_peft: bool = false;
    /// LoRA rank (PEFT's `r`; TRL's default 16).
    lora_r: usize = 16;
    /// LoRA α (TRL's default 32).
    lora_alpha: f64 = 32.0;
    /// LoRA dropout (PEFT's `lora_dropout`): applied in training only with
    /// --disable-dropout false, as TRL zeroes every dropout by default.
    lora_dropout: f64 = 0.05;
    /// TRL's `disable_dropout`: no dropout anywhere in the policy (the default). false applies
    /// LoRA's `lora_dropout` (the decoders' own attention dropout is not implemented and must
    /// be 0).
    #[arg(num_args = 0..=1, default_missing_value = "true")]
    disable_dropout: bool = true;
    /// Comma-separated projections (q_proj,k_proj,...) or all-linear.
    #[arg(value_parser = values::<LoraTargets>(&LORA_TARGETS))]
    lora_target_modules: LoraTargets = LoraTargets::Names(vec!["q_proj".into(), "v_proj".into()]);
    /// Scale adapters by α/√r (rsLoRA) instead of α/r.
    #[arg(num_args = 0..=1, default_missing_value = "true")]
    use_rslora: bool = false;
    /// Start from an existing PEFT LoRA adapter folder (implies --use-peft).
    adapter: String = String::new();
}

/// Reads a `--config` file (`.yaml`/`.yml`, `.toml`, `.json`) into options.
///
/// # Errors
/// `file: key: reason` for unknown keys and invalid values; parse errors with their line.
pub fn read_config_file(path: &Path) -> Result<TrainOptions> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or_default().to_ascii_lowercase();
    fn named<E: std::fmt::Display>(path: &Path) -> impl Fn(serde_path_to_error::Error<E>) -> anyhow::Error + '_ {
        move |e| {
            let key = e.path().to_string();
            let key = if key == "." { String::new() } else { format!("{key}: ") };
            anyhow::anyhow!("{}: {key}{}", path.display(), e.inner())
        }
    }
    match ext.as_str() {
        "yaml" | "yml" => {
            let de = serde_yaml_ng::Deserializer::from_str(&text);
            serde_path_to_error::deserialize(de).map_err(named(path))
        }
        "toml" => {
            let de = toml::Deserializer::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            serde_path_to_error::deserialize(de).map_err(named(path))
        }
        "json" => {
            let mut de = serde_json::Deserializer::from_str(&text);
            serde_path_to_error::deserialize(&mut de).map_err(named(path))
        }
        _ => bail!("{}: unknown config format (expected .yaml, .yml, .toml or .json)", path.display()),
    }
}
