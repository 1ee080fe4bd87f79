//! Stage 6 of `kto train`: the trained model in the output folder itself (a Hugging Face folder,
//! or a PEFT adapter with the tokenizer files), replacing an earlier save file by file.

use std::path::Path;

use anyhow::{Context, Result};
use burn::tensor::FloatDType;
use kto_models::{DecoderConfig, LoraConfig, SaveOptions, StorageDType, TransformerLm};
use serde_json::Value;

/// Writes the trained `policy` into `output_dir`: the adapters under LoRA (with the base
/// model's name), else the whole model.
pub fn save(
    policy: &TransformerLm,
    lora: Option<(&LoraConfig, &str)>,
    model_config: &DecoderConfig,
    source: &Path,
    output_dir: &Path,
    dtype: StorageDType,
) -> Result<()> {
    match lora {
        Some((config, base)) => {
            kto_models::save_adapter(&burn::module::Module::valid(policy), config, base, output_dir)?;
            copy_companions(source, output_dir)
        }
        None => save_final_model(policy, model_config, source, output_dir, dtype),
    }
}

/// The final model's dtype on disk: as asked, or (`auto`) the source checkpoint's, as
/// transformers saves a model in the dtype it was loaded with.
pub fn final_dtype(asked: crate::choices::SaveDType, source: &DecoderConfig) -> StorageDType {
    use crate::choices::SaveDType;
    match asked {
        SaveDType::Auto => {
            source.stored_dtype.as_deref().and_then(StorageDType::from_config_name).unwrap_or(StorageDType::F32)
        }
        SaveDType::Float32 => StorageDType::F32,
        SaveDType::Bfloat16 => StorageDType::BF16,
        SaveDType::Float16 => StorageDType::F16,
    }
}

/// The storage dtype of a run's compute dtype.
pub fn storage(dtype: FloatDType) -> StorageDType {
    if dtype == FloatDType::BF16 { StorageDType::BF16 } else { StorageDType::F32 }
}

/// Writes `history` as JSON lines (the log so far of a resumed run).
pub fn write_history(path: &Path, history: &[Value]) -> Result<()> {
    let mut text = String::new();
    for e in history {
        text.push_str(&serde_json::to_string(e)?);
        text.push('\n');
    }
    kto_models::write_atomic(path, text).with_context(|| format!("writing {}", path.display()))
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
