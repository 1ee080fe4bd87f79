//! Stage 4 of `kto train`: the reference. The dataset's own reference columns (no model loaded),
//! the base model with the adapters off under LoRA, or a frozen model; with
//! `precompute_ref_log_probs` its log-probs of every training and evaluation row, computed once
//! (or read from the output folder's cache) and carried by the rows.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::tensor::Device;
use kto_core::{LogpsConfig, Reference};
use kto_data::{CollateConfig, KlPairing, collate};
use kto_models::{LoadOptions, TransformerLm, load_model};

use super::data::Data;
use super::models::Models;
use super::plan::{ModelPlan, ReferencePlan};
use super::precompute;

/// What the reference stage needs beyond the plans.
pub struct Setting<'a> {
    /// The inner (non-autodiff) device of the policy.
    pub device: &'a Device,
    /// The training batches' collation (the precompute pass batches as training does).
    pub collate: &'a CollateConfig,
    pub per_device_train_batch_size: usize,
    pub output_dir: &'a Path,
    /// The dataset as given (for messages).
    pub dataset: &'a str,
    /// A resumed checkpoint holds a synced reference.
    pub resumed_reference: bool,
}

/// The reference of the run.
pub fn prepare(
    plan: &ReferencePlan,
    model_plan: &ModelPlan,
    data: &mut Data,
    (models, policy): (&Models, &TransformerLm),
    setting: &Setting<'_>,
) -> Result<Reference<TransformerLm>> {
    if data.reference_columns {
        // The dataset carries the reference's log-probs: no reference model is loaded.
        let dataset = setting.dataset;
        if plan.sync.is_some() {
            bail!(
                "{dataset}: the rows carry fixed reference log-probs, so `sync_ref_model` cannot change the reference"
            );
        }
        if model_plan.ref_model.is_some() {
            bail!(
                "{dataset}: the rows carry the reference's log-probs; drop `ref_model`, or the columns, to choose one"
            );
        }
        eprintln!("reference log-probs: from the dataset's columns (no reference model loaded)");
        return Ok(Reference::Precomputed);
    }
    // LoRA's reference is the policy with its adapters off: the same base weights, no copy.
    let reference = if models.lora.is_some() && model_plan.ref_model.is_none() && !setting.resumed_reference {
        policy.without_adapters().valid()
    } else {
        let options = LoadOptions { dtype: model_plan.dtype };
        load_model(&models.ref_folder, setting.device, &options)
            .with_context(|| format!("loading the reference from {}", models.ref_folder.display()))?
            .1
            .with_compute_dtype(model_plan.compute)
    };
    if !plan.precompute {
        return Ok(Reference::Model(reference));
    }
    let files: Vec<PathBuf> = data.train_files.iter().chain(&data.eval_files).cloned().collect();
    let inputs = precompute::Inputs {
        reference_folder: &models.ref_folder,
        tokenizer_folder: &data.folder,
        dataset_files: &files,
        settings: plan.manifest_settings.clone(),
    };
    // TRL precomputes the evaluation rows too, in evaluation batches.
    let mut splits = [
        precompute::Split {
            name: "train",
            rows: &mut data.train.rows,
            batch_size: setting.per_device_train_batch_size,
        },
        precompute::Split { name: "eval", rows: &mut data.eval_rows, batch_size: plan.per_device_eval_batch_size },
    ];
    // The KL completions were fixed at preprocessing: the pass reads them from the rows.
    let kl = if setting.collate.kl == KlPairing::Off { KlPairing::Off } else { KlPairing::FromRows };
    let config = CollateConfig { kl, ..*setting.collate };
    let logps = LogpsConfig::new();
    precompute::fill(setting.output_dir, &inputs, &mut splits, |chunk| {
        let batch = collate(chunk, &config);
        kto_core::reference_logps(&reference, &batch.to_device(setting.device), &logps)
    })?;
    Ok(Reference::Precomputed)
}
