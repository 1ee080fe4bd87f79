//! Dataset and tokenization options shared by `kto audit` and `kto train` (TRL `KTOConfig` names),
//! and the lookup of model/tokenizer folders given as paths or hub ids.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use kto_core::LossType;
use kto_data::{Dataset, HfTokenizer, TokenizeConfig, Tokenized, TruncationMode};

use crate::choices::choice;

/// Where the data comes from and how it is tokenized.
#[derive(Debug, Clone, clap::Args)]
pub struct DataArgs {
    /// Dataset: a .jsonl/.json/.parquet file, a folder laid out as a Hugging Face dataset repo,
    /// or a hub id (`owner/name[@revision]`) already in the local Hugging Face cache.
    #[arg(long)]
    pub dataset: String,
    /// Split to read from a folder or hub dataset.
    #[arg(long, default_value = "train")]
    pub dataset_split: String,
    /// Drop rows whose prompt alone has this many tokens; keep the first `max_length` tokens of
    /// the others (TRL 1.16). `0` disables both.
    #[arg(long, default_value_t = 1024)]
    pub max_length: usize,
    /// Classic TRL's prompt budget: over-long rows keep `max_prompt_length` prompt tokens and
    /// `max_length - max_prompt_length` completion tokens instead of being dropped.
    #[arg(long)]
    pub max_prompt_length: Option<usize>,
    /// Which end of an over-long prompt `--max-prompt-length` keeps.
    #[arg(long, default_value_t = TruncationMode::KeepEnd, value_parser = choice::<TruncationMode>())]
    pub truncation_mode: TruncationMode,
    /// Rows per device per step; KL pairs are formed in chunks of this many rows.
    #[arg(long, default_value_t = 8)]
    pub per_device_train_batch_size: usize,
    /// The objective (`apo_zero_unpaired` needs no KL pairs).
    #[arg(long, default_value_t = LossType::Kto, value_parser = choice::<LossType>())]
    pub loss_type: LossType,
}

impl DataArgs {
    /// The tokenization settings.
    pub fn tokenize_config(&self) -> Result<TokenizeConfig> {
        let config = TokenizeConfig {
            max_length: (self.max_length > 0).then_some(self.max_length),
            max_prompt_length: self.max_prompt_length,
            truncation_mode: self.truncation_mode,
            per_device_train_batch_size: self.per_device_train_batch_size,
            kl_pairs: self.loss_type.uses_kl(),
            kl_window: None,
        };
        config.validate()?;
        Ok(config)
    }

    /// Reads and tokenizes the dataset.
    pub fn load(&self, tokenizer: &HfTokenizer) -> Result<(Dataset, Tokenized, TokenizeConfig)> {
        let config = self.tokenize_config()?;
        let dataset = kto_data::load_dataset(&self.dataset, &self.dataset_split)?;
        let tokenized = kto_data::tokenize_examples(&dataset.examples, tokenizer, &config)?;
        Ok((dataset, tokenized, config))
    }
}

/// A model or tokenizer folder given as a path or as a hub id in the local Hugging Face cache.
pub fn model_folder(spec: &str) -> Result<PathBuf> {
    let path = Path::new(spec);
    if path.is_dir() {
        return Ok(path.into());
    }
    if path.exists() {
        bail!("{spec}: expected a folder (config.json, *.safetensors, tokenizer files)");
    }
    let (repo, revision) = spec.split_once('@').unwrap_or((spec, "main"));
    let cache =
        kto_data::hub_cache_dir().with_context(|| format!("{spec}: no such folder, and no Hugging Face cache"))?;
    kto_data::cached_snapshot(&cache, "models", repo, revision)
        .map_err(|reason| anyhow::anyhow!("{spec}: no such folder; as a hub id: {reason}"))
}
