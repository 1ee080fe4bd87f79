//! Checkpoints: `output_dir/checkpoint-N/` holds the policy as a Hugging Face folder, the
//! optimizer moments (`optimizer.safetensors`), the trainer state (`trainer_state.json`: step,
//! data position, token count, log history) and, after TR-DPO syncs, the reference
//! (`reference/`). Each is written under a temporary name and renamed, so a crash never leaves
//! a half checkpoint; `save_total_limit` prunes the oldest.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use kto_core::{Optimizer, OptimizerKind, OptimizerStorage, Position};
use kto_models::{
    DecoderConfig, SaveOptions, StorageDType, TransformerLm, load_tensor_file, save_model, save_tensor_file,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

fn one() -> u64 {
    1
}

/// `trainer_state.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainerState {
    /// Optimizer steps done.
    pub global_step: u64,
    /// Micro-steps consumed (micro-batches per device).
    pub micro_batches: u64,
    /// Data-parallel devices of the run (the data position depends on it).
    #[serde(default = "one")]
    pub devices: u64,
    /// Fractional epoch.
    pub epoch: f64,
    /// TRL's running `num_tokens`.
    pub num_tokens: f64,
    /// Optimizer steps the optimizer counted (bias correction).
    pub optimizer_steps: u64,
    /// Every log event so far (what metrics.jsonl holds).
    pub log_history: Vec<Value>,
    /// The run's seed.
    pub seed: u64,
    /// Whether `reference/` holds a synced reference.
    pub reference_saved: bool,
    /// What defines the run (see `resume`): checked when it is resumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<serde_json::Map<String, Value>>,
}

/// What a checkpoint restores.
pub struct Restored {
    /// The folder (a loadable HF model folder for the policy).
    pub folder: PathBuf,
    /// Its state.
    pub state: TrainerState,
    /// The optimizer.
    pub optimizer: Optimizer,
}

impl Restored {
    /// The run position.
    pub fn position(&self) -> Position {
        Position { step: self.state.global_step, micro_batches: self.state.micro_batches }
    }
}

/// Everything one checkpoint needs from the run.
pub struct Snapshot<'a> {
    /// Under LoRA: the adapter settings and the base model's name; the checkpoint then holds
    /// the adapter (PEFT format) instead of the whole model.
    pub lora: Option<(&'a kto_models::LoraConfig, &'a str)>,
    pub policy: &'a TransformerLm,
    pub reference: Option<&'a TransformerLm>,
    pub model_config: &'a DecoderConfig,
    pub source_folder: &'a Path,
    pub dtype: StorageDType,
    pub optimizer: &'a Optimizer,
    pub state: TrainerState,
}

/// Writes `output_dir/checkpoint-N` atomically and prunes beyond `limit` (0 keeps all).
pub fn save(output_dir: &Path, snapshot: Snapshot<'_>, limit: usize) -> Result<PathBuf> {
    let step = snapshot.state.global_step;
    let final_dir = output_dir.join(format!("checkpoint-{step}"));
    let tmp = output_dir.join(format!(".checkpoint-{step}.partial"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }
    let options = SaveOptions { dtype: Some(snapshot.dtype), max_shard_bytes: 5_000_000_000 };
    match snapshot.lora {
        Some((config, base)) => kto_models::save_adapter(snapshot.policy, config, base, &tmp)
            .with_context(|| format!("writing {}", tmp.display()))?,
        None => save_model(snapshot.policy, snapshot.model_config, Some(snapshot.source_folder), &tmp, &options)
            .with_context(|| format!("writing {}", tmp.display()))?,
    }
    if let Some(reference) = snapshot.reference {
        save_model(reference, snapshot.model_config, Some(snapshot.source_folder), &tmp.join("reference"), &options)
            .with_context(|| format!("writing {}", tmp.join("reference").display()))?;
    }
    let (_, moments) = snapshot.optimizer.to_host();
    let tensors: Vec<_> = moments
        .into_iter()
        .flat_map(|(name, m, v)| {
            let (nm, nv) = (m.len(), v.len());
            [(format!("{name}.exp_avg"), vec![nm], m), (format!("{name}.exp_avg_sq"), vec![nv], v)]
        })
        .collect();
    save_tensor_file(&tmp.join("optimizer.safetensors"), &tensors)?;
    let state_path = tmp.join("trainer_state.json");
    kto_models::write_atomic(&state_path, serde_json::to_string_pretty(&snapshot.state)? + "\n")
        .with_context(|| format!("writing {}", state_path.display()))?;
    kto_models::replace_dir(&tmp, &final_dir).with_context(|| format!("replacing {}", final_dir.display()))?;
    prune(output_dir, limit)?;
    Ok(final_dir)
}

/// Checkpoint folders of `output_dir`, oldest first.
pub fn list(output_dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(output_dir) else { return Ok(out) };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().to_string();
        if let Some(n) = name.strip_prefix("checkpoint-").and_then(|n| n.parse::<u64>().ok())
            && entry.path().join("trainer_state.json").is_file()
        {
            out.push((n, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

fn prune(output_dir: &Path, limit: usize) -> Result<()> {
    if limit == 0 {
        return Ok(());
    }
    let all = list(output_dir)?;
    for (_, dir) in all.iter().take(all.len().saturating_sub(limit)) {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(())
}

/// Finds the checkpoint `spec` names: a folder, or `latest` in `output_dir`.
pub fn find(spec: &str, output_dir: &Path) -> Result<PathBuf> {
    if spec == "latest" {
        return match list(output_dir)?.pop() {
            Some((_, dir)) => Ok(dir),
            None => bail!("--resume-from-checkpoint latest: no checkpoint-N folder in {}", output_dir.display()),
        };
    }
    let dir = PathBuf::from(spec);
    if !dir.join("trainer_state.json").is_file() {
        bail!("--resume-from-checkpoint {spec}: not a checkpoint folder (no trainer_state.json)");
    }
    Ok(dir)
}

/// Reads a checkpoint's state and optimizer.
pub fn load(
    folder: &Path,
    (kind, storage): (OptimizerKind, OptimizerStorage),
    device: &burn::tensor::Device,
) -> Result<Restored> {
    let state_path = folder.join("trainer_state.json");
    let text = std::fs::read_to_string(&state_path).with_context(|| format!("reading {}", state_path.display()))?;
    let state: TrainerState =
        serde_json::from_str(&text).with_context(|| format!("{}: not a trainer state", state_path.display()))?;
    let tensors = load_tensor_file(&folder.join("optimizer.safetensors"))?;
    let mut moments: std::collections::BTreeMap<String, (Vec<f32>, Vec<f32>)> = Default::default();
    for (name, _, values) in tensors {
        if let Some(base) = name.strip_suffix(".exp_avg_sq") {
            moments.entry(base.to_string()).or_default().1 = values;
        } else if let Some(base) = name.strip_suffix(".exp_avg") {
            moments.entry(base.to_string()).or_default().0 = values;
        } else {
            bail!("{}: unexpected tensor {name}", folder.join("optimizer.safetensors").display());
        }
    }
    let moments = moments.into_iter().map(|(k, (m, v))| (k, m, v)).collect();
    let optimizer = Optimizer::from_host(kind, storage, state.optimizer_steps, moments, device);
    Ok(Restored { folder: folder.into(), state, optimizer })
}
