//! `precompute_ref_log_probs`: the reference's log-probs of every training and evaluation row,
//! computed once before training, the training rows in training batches and the evaluation rows
//! in evaluation batches (as TRL does at initialisation), and cached in the output folder
//! (`ref_logps.jsonl`, one line per row with its split) with a manifest
//! (`ref_logps.manifest.json`) of SHA-256 hashes of the reference weights, the tokenizer, the
//! dataset files, and the settings that shape the rows. A later run reuses the cache only when
//! the manifest matches.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use kto_data::TokenizedRow;
use serde_json::{Value, json};

use super::resume::sha256_file;

/// What the cached values depend on.
pub struct Inputs<'a> {
    pub reference_folder: &'a Path,
    pub tokenizer_folder: &'a Path,
    pub dataset_files: &'a [PathBuf],
    pub settings: Value,
}

const CACHE: &str = "ref_logps.jsonl";
const MANIFEST: &str = "ref_logps.manifest.json";

/// One split's rows and the batch size its reference pass runs in.
pub struct Split<'a> {
    /// `train` or `eval`.
    pub name: &'static str,
    pub rows: &'a mut [TokenizedRow],
    pub batch_size: usize,
}

fn manifest(inputs: &Inputs<'_>, rows: Value) -> Result<Value> {
    let mut weights = serde_json::Map::new();
    let mut names: Vec<PathBuf> = std::fs::read_dir(inputs.reference_folder)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
            n.ends_with(".safetensors") || n == "config.json"
        })
        .collect();
    names.sort();
    for p in names {
        weights.insert(p.file_name().expect("file").to_string_lossy().into(), sha256_file(&p)?.into());
    }
    let mut tokenizer = serde_json::Map::new();
    for name in ["tokenizer.json", "tokenizer_config.json", "chat_template.jinja"] {
        let p = inputs.tokenizer_folder.join(name);
        if p.is_file() {
            tokenizer.insert(name.into(), sha256_file(&p)?.into());
        }
    }
    let data: Vec<Value> =
        inputs.dataset_files.iter().map(|p| Ok(json!(sha256_file(p)?))).collect::<Result<Vec<Value>>>()?;
    Ok(json!({
        "version": 2,
        "reference_weights": weights,
        "tokenizer": tokenizer,
        "dataset": data,
        "settings": inputs.settings,
        "rows": rows,
    }))
}

/// Fills `ref_logps` / `ref_kl_logps` of every split's rows, from the cache when its manifest
/// matches, else with `compute` over consecutive chunks of the split's batch size (then cached).
pub fn fill(
    output_dir: &Path,
    inputs: &Inputs<'_>,
    splits: &mut [Split<'_>],
    mut compute: impl FnMut(&[&TokenizedRow]) -> (Vec<f32>, Option<Vec<f32>>),
) -> Result<()> {
    let counts: serde_json::Map<String, Value> = splits
        .iter()
        .map(|s| (s.name.to_string(), json!({"rows": s.rows.len(), "batch_size": s.batch_size})))
        .collect();
    let expected = manifest(inputs, Value::Object(counts))?;
    let (cache, manifest_path) = (output_dir.join(CACHE), output_dir.join(MANIFEST));
    let total: usize = splits.iter().map(|s| s.rows.len()).sum();
    let cached: Option<Value> =
        std::fs::read_to_string(&manifest_path).ok().and_then(|t| serde_json::from_str(&t).ok());
    if cached.as_ref() == Some(&expected) && cache.is_file() {
        let text = std::fs::read_to_string(&cache)?;
        let values: Vec<Value> = text.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
        if values.len() == total {
            let mut values = values.iter();
            for split in splits.iter_mut() {
                for (row, v) in split.rows.iter_mut().zip(values.by_ref()) {
                    if v["split"] != split.name || v["row"].as_u64() != Some(row.source_row as u64) {
                        bail!("{}: line for {} row {} is out of order", cache.display(), split.name, row.source_row);
                    }
                    row.ref_logps = v["ref_logps"].as_f64();
                    row.ref_kl_logps = v["ref_KL_logps"].as_f64();
                }
            }
            eprintln!("reference log-probs: reusing {} (manifest matches)", cache.display());
            return Ok(());
        }
    }
    for split in splits.iter_mut() {
        for chunk in split.rows.chunks_mut(split.batch_size.max(1)) {
            let refs: Vec<&TokenizedRow> = chunk.iter().collect();
            let (logps, kl) = compute(&refs);
            if logps.len() != chunk.len() {
                bail!("reference pass returned {} values for {} rows", logps.len(), chunk.len());
            }
            for (k, row) in chunk.iter_mut().enumerate() {
                row.ref_logps = Some(f64::from(logps[k]));
                row.ref_kl_logps = kl.as_ref().map(|kl| f64::from(kl[k]));
            }
        }
    }
    let lines: Vec<Value> = splits
        .iter()
        .flat_map(|s| {
            s.rows.iter().map(|r| {
                json!({"split": s.name, "row": r.source_row, "ref_logps": r.ref_logps, "ref_KL_logps": r.ref_kl_logps})
            })
        })
        .collect();
    // The manifest goes last: a cache without a matching manifest is never trusted.
    let _ = std::fs::remove_file(&manifest_path);
    crate::logps::write_jsonl(&cache, &lines)?;
    kto_models::write_atomic(&manifest_path, serde_json::to_string_pretty(&expected)? + "\n")?;
    eprintln!("reference log-probs: computed for {total} rows, cached in {}", cache.display());
    Ok(())
}
