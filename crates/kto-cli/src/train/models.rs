//! Stage 3 of `kto train`: the policy on its autodiff device (from the model folder, or from the
//! checkpoint being resumed), its LoRA adapters, and where the reference model comes from.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burn::tensor::Device;
use kto_models::{DecoderConfig, LoadOptions, LoraConfig, TransformerLm, load_model};

use super::checkpoint::Restored;
use super::plan::ModelPlan;
use crate::data_args::model_folder;

/// What the later stages need to know about the loaded policy. The policy itself is returned
/// beside it ([`load`]) so that the trainer can own the only copy: a second handle on its
/// weights would keep the loaded tensors alive after the first update (a full extra copy of the
/// weights for the whole run) and stop that update from writing in place.
pub struct Models {
    pub model_config: DecoderConfig,
    /// The adapters' settings under LoRA (as loaded from an adapter or checkpoint, else planned).
    pub lora: Option<LoraConfig>,
    /// The folder the reference model is loaded from (when one is loaded).
    pub ref_folder: PathBuf,
    /// The policy's device with autodiff (and activation recomputation when asked).
    pub train_device: Device,
    /// Activations are recomputed in the backward pass (on every device).
    pub gradient_checkpointing: bool,
}

/// `device` with autodiff, recomputing activations in the backward pass when `checkpointing`.
pub fn autodiff(device: &Device, checkpointing: bool) -> Device {
    if checkpointing { device.clone().autodiff().gradient_checkpointing() } else { device.clone().autodiff() }
}

/// Loads the policy from `folder` (the model) or the resumed checkpoint, with its adapters.
pub fn load(
    plan: &ModelPlan,
    folder: &Path,
    device: &Device,
    resume: Option<&Restored>,
) -> Result<(Models, TransformerLm)> {
    let train_device = autodiff(device, plan.gradient_checkpointing);
    let load_options = LoadOptions { dtype: plan.dtype };
    // Under LoRA the policy is the base model plus adapters (checkpoints hold adapters only).
    let policy_folder = match resume {
        Some(r) if plan.lora.is_none() => r.folder.clone(),
        _ => folder.to_path_buf(),
    };
    let (model_config, policy) = load_model(&policy_folder, &train_device, &load_options)
        .with_context(|| format!("loading the policy from {}", policy_folder.display()))?;
    let (policy, lora) = match &plan.lora {
        None => (policy, None),
        Some(config) => {
            let source = match (resume, &plan.adapter) {
                (Some(r), _) => Some(r.folder.clone()),
                (None, Some(adapter)) => Some(adapter.clone()),
                (None, None) => None,
            };
            match source {
                Some(dir) => {
                    let (policy, loaded) = kto_models::load_adapter(policy, &dir)
                        .with_context(|| format!("loading the LoRA adapter from {}", dir.display()))?;
                    (policy, Some(loaded))
                }
                None => (policy.apply_lora(config, plan.seed), Some(config.clone())),
            }
        }
    };
    let policy = policy.with_compute_dtype(plan.compute);
    let policy = match &lora {
        Some(config) if config.dropout > 0.0 && plan.apply_lora_dropout => policy.with_lora_dropout(config.dropout),
        Some(config) if config.dropout > 0.0 => {
            eprintln!(
                "note: lora_dropout {} is recorded in adapter_config.json but not applied: disable_dropout is true (TRL's default zeroes every dropout); pass --disable-dropout false to apply it",
                config.dropout
            );
            policy
        }
        _ => policy,
    };
    let ref_folder = match (resume, &plan.ref_model) {
        (Some(r), _) if r.state.reference_saved => r.folder.join("reference"),
        (_, None) => folder.to_path_buf(),
        (_, Some(spec)) => model_folder(spec)?,
    };
    let models =
        Models { model_config, lora, ref_folder, train_device, gradient_checkpointing: plan.gradient_checkpointing };
    Ok((models, policy))
}
