//! `kto audit`: what the trainer will see of a dataset, and a JSONL dump of every row.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use kto_data::{Dataset, HfTokenizer, Tokenized};
use serde_json::{Value, json};

use crate::data_args::{DataArgs, model_folder};

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// Model folder or hub id whose tokenizer is used.
    #[arg(long, conflicts_with = "tokenizer", required_unless_present = "tokenizer")]
    pub model: Option<String>,
    /// Tokenizer folder or hub id (instead of --model).
    #[arg(long)]
    pub tokenizer: Option<String>,
    #[command(flatten)]
    pub data: DataArgs,
    /// Weight of desirable examples (for the eq. 8 advice).
    #[arg(long, default_value_t = 1.0)]
    pub desirable_weight: f64,
    /// Weight of undesirable examples (for the eq. 8 advice).
    #[arg(long, default_value_t = 1.0)]
    pub undesirable_weight: f64,
    /// Write one JSON object per row, in training order, to this JSONL file.
    #[arg(long)]
    pub dump: Option<PathBuf>,
}

pub fn audit(args: &AuditArgs) -> Result<()> {
    let spec = args.model.as_deref().or(args.tokenizer.as_deref()).expect("clap requires one");
    let folder = model_folder(spec)?;
    let tokenizer = HfTokenizer::from_folder(&folder)
        .with_context(|| format!("loading the tokenizer from {}", folder.display()))?;
    let (dataset, tokenized, config) = args.data.load(&tokenizer)?;
    let report = kto_data::audit(&dataset, &tokenized, &config, args.desirable_weight, args.undesirable_weight);
    if let Some(path) = &args.dump {
        write_dump(path, &dataset, &tokenized)?;
    }
    print!("{report}");
    if let Some(path) = &args.dump {
        println!("dump               {}", path.display());
    }
    Ok(())
}

/// Rows in processing order: kept rows in training order, dropped rows where they were.
fn dump_rows(dataset: &Dataset, tokenized: &Tokenized) -> impl Iterator<Item = Value> {
    tokenized.order.iter().zip(&dataset.examples).map(|(slot, example)| {
        let mut row = match *slot {
            Ok(i) => {
                let r = &tokenized.rows[i];
                json!({
                    "row": r.source_row,
                    "source": example.at.to_string(),
                    "label": r.label,
                    "dropped": false,
                    "prompt_ids": r.prompt_ids,
                    "completion_ids": r.completion_ids,
                    "kl_completion_ids": r.kl_completion_ids,
                })
            }
            Err(i) => {
                let d = &tokenized.dropped[i];
                json!({
                    "row": d.source_row,
                    "source": example.at.to_string(),
                    "label": d.label,
                    "dropped": true,
                    "reason": d.reason,
                    "prompt_ids": d.prompt_ids,
                    "completion_ids": d.completion_ids,
                })
            }
        };
        if let Ok(i) = *slot {
            let r = &tokenized.rows[i];
            if r.truncated != (0, 0) {
                row["truncated"] = json!({"prompt": r.truncated.0, "completion": r.truncated.1});
            }
        }
        if !example.extra.is_empty() {
            row["columns"] = Value::Object(example.extra.clone());
        }
        row
    })
}

fn write_dump(path: &Path, dataset: &Dataset, tokenized: &Tokenized) -> Result<()> {
    let rows: Vec<Value> = dump_rows(dataset, tokenized).collect();
    crate::logps::write_jsonl(path, &rows)
}
