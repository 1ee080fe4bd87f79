//! What defines a run, recorded in every checkpoint (`trainer_state.json`'s `run`) and checked
//! on resume: the settings that shape the data order, the batches, the loss, the optimizer state
//! and the schedule, and fingerprints of the model, tokenizer, reference and dataset. A resume
//! that differs in any of them is refused with the setting, its recorded and its new value;
//! settings that only change what is written or when (logging, saving, evaluation, the step
//! budget) may change.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use kto_core::{OptimizerKind, OptimizerStorage, Position, Trainer};
use kto_models::TransformerLm;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::checkpoint::{self, Restored};
use super::options::TrainConfig;

/// `TrainConfig` keys that define the run, compared as resolved.
const SETTINGS: &[&str] = &[
    "dataset_split",
    "beta",
    "loss_type",
    "desirable_weight",
    "undesirable_weight",
    "max_length",
    "max_prompt_length",
    "truncation_mode",
    "learning_rate",
    "optim",
    "lr_scheduler_type",
    "warmup_ratio",
    "warmup_steps",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "max_grad_norm",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "seed",
    "shuffle",
    "group_by_length",
    "kl_estimate",
    "sync_ref_model",
    "ref_model_mixup_alpha",
    "ref_model_sync_steps",
    "lora_r",
    "lora_alpha",
    "lora_target_modules",
    "use_rslora",
    "bf16",
    "bf16_weights",
    "bf16_moments",
];

/// The files a run reads, fingerprinted into its identity.
pub struct Sources<'a> {
    /// The policy's model folder (config, weights and tokenizer).
    pub model: &'a Path,
    /// A separate reference model folder, when one is given.
    pub ref_model: Option<&'a Path>,
    /// A starting adapter folder, when one is given.
    pub adapter: Option<&'a Path>,
    /// The training data files.
    pub dataset: &'a [std::path::PathBuf],
    /// Data-parallel devices.
    pub devices: usize,
    /// Whether LoRA adapters are trained.
    pub lora: bool,
}

/// The run's identity: setting name → value, in a fixed order.
pub fn identity(c: &TrainConfig, sources: &Sources<'_>) -> Result<Map<String, Value>> {
    let resolved = serde_json::to_value(c)?;
    let mut out = Map::new();
    for key in SETTINGS {
        let lora_only = key.starts_with("lora_") || *key == "use_rslora";
        if lora_only && !sources.lora {
            continue;
        }
        out.insert((*key).to_string(), resolved[*key].clone());
    }
    out.insert("lora".into(), json!(sources.lora));
    out.insert("devices".into(), json!(sources.devices));
    out.insert("model".into(), json!(model_fingerprint(sources.model)?));
    out.insert("tokenizer".into(), json!(tokenizer_fingerprint(sources.model)?));
    let reference = match sources.ref_model {
        Some(folder) => model_fingerprint(folder)?,
        None => "the model".to_string(),
    };
    out.insert("ref_model".into(), json!(reference));
    if let Some(adapter) = sources.adapter {
        out.insert("adapter".into(), json!(folder_fingerprint(adapter, |_| true)?));
    }
    let data: Vec<String> = sources.dataset.iter().map(|p| sha256_file(p)).collect::<Result<_>>()?;
    out.insert("dataset".into(), json!(data.join(",")));
    Ok(out)
}

/// Reads the checkpoint `spec` names (a folder, or `latest` in `output_dir`), before anything
/// is written, and refuses it unless it belongs to a run with this `identity` on as many devices.
pub fn open(
    spec: Option<&str>,
    output_dir: &Path,
    optimizer: (OptimizerKind, OptimizerStorage),
    device: &Device,
    devices: u64,
    identity: &Map<String, Value>,
) -> Result<Option<Restored>> {
    let Some(spec) = spec else { return Ok(None) };
    let restored = checkpoint::load(&checkpoint::find(spec, output_dir)?, optimizer, device)?;
    if restored.state.devices != devices {
        bail!(
            "{}: the checkpoint was written by a run on {} device(s); resume it on {devices} (its data position counts micro-steps of that many batches)",
            restored.folder.display(),
            restored.state.devices,
        );
    }
    check(&restored.folder, restored.state.run.as_ref(), identity)?;
    Ok(Some(restored))
}

/// Puts `trainer` at the checkpoint's step, token count and optimizer state (checked against
/// the parameters it trains); returns the data position and the log history so far.
pub fn apply(trainer: &mut Trainer<TransformerLm>, restored: Restored) -> Result<(Position, Vec<Value>)> {
    let moments = restored.folder.join("optimizer.safetensors");
    restored.optimizer.check_moments(trainer.policy()).with_context(|| format!("{}", moments.display()))?;
    let position = restored.position();
    eprintln!("resuming from {} at step {}", restored.folder.display(), restored.state.global_step);
    trainer.restore(restored.state.global_step, restored.state.num_tokens, restored.optimizer);
    Ok((position, restored.state.log_history))
}

/// Refuses a resume whose identity differs from the checkpoint's, naming every differing
/// setting with its recorded and its new value. A checkpoint without a recorded identity (an
/// older kto) is resumed with a warning.
pub fn check(folder: &Path, recorded: Option<&Map<String, Value>>, current: &Map<String, Value>) -> Result<()> {
    let Some(recorded) = recorded else {
        eprintln!(
            "warning: {} records no run settings (written by an older kto): its settings are not checked against this run's",
            folder.display()
        );
        return Ok(());
    };
    let mut differences = Vec::new();
    for (key, now) in current {
        let before = recorded.get(key).unwrap_or(&Value::Null);
        if before != now {
            differences.push(format!("`{key}`: the checkpoint's run used {}, this run {}", shown(before), shown(now)));
        }
    }
    for key in recorded.keys().filter(|k| !current.contains_key(*k)) {
        differences.push(format!("`{key}`: the checkpoint's run used {}, this run none", shown(&recorded[key])));
    }
    if differences.is_empty() {
        return Ok(());
    }
    bail!(
        "{}: cannot resume with other run settings (its optimizer state, data position and schedule belong to its own run); start a new output_dir, or resume with the checkpoint's settings:\n  {}",
        folder.display(),
        differences.join("\n  ")
    )
}

fn shown(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "none".into(),
        other => other.to_string(),
    }
}

/// SHA-256 of a file's bytes, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut hasher = Sha256::new();
    let mut file = std::fs::File::open(path).with_context(|| format!("hashing {}", path.display()))?;
    std::io::copy(&mut file, &mut hasher).with_context(|| format!("hashing {}", path.display()))?;
    Ok(format!("{:x}", hasher.finalize()))
}

/// A model folder's fingerprint without reading its weights: `config.json`, and per weight file
/// its name, size and safetensors header (every tensor's name, dtype, shape and offsets). Cheap
/// on an 8B model, and it changes when the architecture, a tensor or the shard layout does.
fn model_fingerprint(folder: &Path) -> Result<String> {
    folder_fingerprint(folder, |name| {
        name == "config.json" || name.ends_with(".safetensors") || name == "model.safetensors.index.json"
    })
}

fn tokenizer_fingerprint(folder: &Path) -> Result<String> {
    folder_fingerprint(folder, |name| {
        matches!(name, "tokenizer.json" | "tokenizer_config.json" | "chat_template.jinja" | "special_tokens_map.json")
    })
}

/// SHA-256 over the chosen files of `folder` in name order: small files whole, safetensors
/// files by size and header.
fn folder_fingerprint(folder: &Path, chosen: impl Fn(&str) -> bool) -> Result<String> {
    let mut names: Vec<String> = std::fs::read_dir(folder)
        .with_context(|| format!("reading {}", folder.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| chosen(n))
        .collect();
    names.sort();
    let mut hasher = Sha256::new();
    for name in &names {
        let path = folder.join(name);
        hasher.update(name.as_bytes());
        hasher.update([0]);
        if name.ends_with(".safetensors") {
            let size = std::fs::metadata(&path).with_context(|| format!("reading {}", path.display()))?.len();
            hasher.update(size.to_le_bytes());
            let mut file = std::fs::File::open(&path).with_context(|| format!("reading {}", path.display()))?;
            let mut len = [0u8; 8];
            file.read_exact(&mut len).with_context(|| format!("{}: no safetensors header", path.display()))?;
            let len = u64::from_le_bytes(len).min(size.saturating_sub(8));
            let mut header = Vec::new();
            file.take(len).read_to_end(&mut header).with_context(|| format!("reading {}", path.display()))?;
            hasher.update(&header);
        } else {
            hasher.update(std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?);
        }
    }
    Ok(format!("{:x}", hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, Value)]) -> Map<String, Value> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }

    #[test]
    fn a_difference_is_refused_naming_the_setting_and_both_values() {
        let recorded = map(&[("optim", json!("adamw_torch")), ("per_device_train_batch_size", json!(4))]);
        let current = map(&[("optim", json!("sgd")), ("per_device_train_batch_size", json!(4))]);
        let folder = Path::new("out/checkpoint-3");
        let err = check(folder, Some(&recorded), &current).expect_err("differs").to_string();
        assert!(err.starts_with("out/checkpoint-3: cannot resume with other run settings"), "{err}");
        assert!(err.contains("`optim`: the checkpoint's run used adamw_torch, this run sgd"), "{err}");
        assert!(!err.contains("per_device_train_batch_size"), "only differing settings are named: {err}");
        check(folder, Some(&recorded), &recorded).expect("the same settings resume");
        // A setting only one side has (LoRA's, say) differs too.
        let err = check(folder, Some(&map(&[("lora_r", json!(8))])), &map(&[])).expect_err("differs").to_string();
        assert!(err.contains("`lora_r`: the checkpoint's run used 8, this run none"), "{err}");
        check(folder, None, &current).expect("an older checkpoint resumes with a warning");
    }
}
