//! `kto logps`: per processed row, the policy's (and optionally a reference model's) summed
//! completion log-probs of the matched and the KL sequences, batched as training batches them.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use kto_core::{LogpsConfig, reference_logps};
use kto_data::{CollateConfig, HfTokenizer, KlPairing, TokenizedRow, collate};
use kto_models::{LoadOptions, TransformerLm, load_model};
use serde_json::json;

use crate::data_args::{DataArgs, model_folder};

#[derive(Debug, clap::Args)]
pub struct LogpsArgs {
    /// Policy model folder or hub id (its tokenizer is used).
    #[arg(long)]
    pub model: String,
    /// Reference model folder or hub id: adds `ref_logps` and `ref_KL_logps`, the columns
    /// `kto train` reads back (the output is a pre-tokenized dataset).
    #[arg(long)]
    pub ref_model: Option<String>,
    /// A PEFT LoRA adapter folder applied to --model.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    #[command(flatten)]
    pub data: DataArgs,
    /// Output JSONL file (written whole or not at all).
    #[arg(long)]
    pub out: PathBuf,
    /// The device (as compiled in).
    #[arg(long, default_value_t = crate::device::default_device(), value_parser = crate::choices::devices::<crate::device::DeviceSpec>())]
    pub device: crate::device::DeviceSpec,
}

pub fn logps(args: &LogpsArgs) -> Result<()> {
    let device = args.device.device()?;
    let folder = model_folder(&args.model)?;
    let tokenizer = HfTokenizer::from_folder(&folder)
        .with_context(|| format!("loading the tokenizer from {}", folder.display()))?;
    let (_, tokenized, config) = args.data.load(&tokenizer)?;
    let load = |spec: &str| -> Result<TransformerLm> {
        let folder = model_folder(spec)?;
        let (_, model) = load_model(&folder, &device, &LoadOptions::default())
            .with_context(|| format!("loading model from {}", folder.display()))?;
        Ok(model)
    };
    let policy = load(&args.model)?;
    let policy = match &args.adapter {
        Some(dir) => {
            kto_models::load_adapter(policy, dir)
                .with_context(|| format!("loading the adapter from {}", dir.display()))?
                .0
        }
        None => policy,
    };
    let reference = args.ref_model.as_deref().map(load).transpose()?;
    let Some(pad_id) = tokenizer.pad_id() else {
        bail!("{}: the tokenizer has neither a pad nor an EOS token", folder.display())
    };
    let collate_config = CollateConfig {
        pad_id,
        max_length: config.max_length,
        pad_to_multiple_of: None,
        kl: if config.kl_pairs { KlPairing::FromRows } else { KlPairing::Off },
    };
    let logps_config = LogpsConfig::new();
    let mut lines = Vec::with_capacity(tokenized.rows.len());
    for chunk in tokenized.rows.chunks(config.per_device_train_batch_size) {
        let refs: Vec<&TokenizedRow> = chunk.iter().collect();
        let batch = collate(&refs, &collate_config).to_device(&device);
        let (policy_logps, policy_kl) = reference_logps(&policy, &batch, &logps_config);
        let (ref_logps, ref_kl) = match &reference {
            Some(model) => {
                let (a, b) = reference_logps(model, &batch, &logps_config);
                (Some(a), b)
            }
            None => (None, None),
        };
        for (k, row) in chunk.iter().enumerate() {
            let mut line = json!({
                "row": row.source_row,
                "label": row.label,
                "prompt_ids": row.prompt_ids,
                "completion_ids": row.completion_ids,
                "kl_completion_ids": row.kl_completion_ids,
                "logps": policy_logps[k],
                "kl_logps": policy_kl.as_ref().map(|v| v[k]),
            });
            if let Some(r) = &ref_logps {
                line["ref_logps"] = json!(r[k]);
                line["ref_KL_logps"] = json!(ref_kl.as_ref().map(|v| v[k]));
            }
            lines.push(line);
        }
    }
    write_jsonl(&args.out, &lines)?;
    eprintln!("wrote {} rows to {}", lines.len(), args.out.display());
    Ok(())
}

/// Writes one JSON object per line, atomically ([`kto_models::write_atomic_with`]): a failure
/// leaves nothing behind.
pub fn write_jsonl(path: &Path, rows: &[serde_json::Value]) -> Result<()> {
    kto_models::write_atomic_with(path, |tmp| -> Result<()> {
        let file = std::fs::File::create(tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let mut out = std::io::BufWriter::new(file);
        for row in rows {
            serde_json::to_writer(&mut out, row)?;
            out.write_all(b"\n")?;
        }
        out.into_inner().map_err(|e| e.into_error())?;
        Ok(())
    })
    .with_context(|| format!("writing {}", path.display()))
}
