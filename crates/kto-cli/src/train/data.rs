//! Stage 1 of `kto train`: the tokenizer, the training and evaluation rows (tokenized, checked
//! against the model's vocabulary), whether they carry the reference's log-probs, and the data
//! warnings. Reads only; nothing is written.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use kto_data::{Dataset, HfTokenizer, KlWindow, Sampling, TokenizeConfig, Tokenized, TokenizedRow};
use kto_models::DecoderConfig;

use super::plan::DataPlan;
use crate::data_args::model_folder;

/// The rows of a run and what they were made with.
pub struct Data {
    /// The model folder the tokenizer (and the policy) come from.
    pub folder: PathBuf,
    pub tokenizer: HfTokenizer,
    pub pad_id: u32,
    pub train: Tokenized,
    pub train_files: Vec<PathBuf>,
    pub eval_rows: Vec<TokenizedRow>,
    pub eval_files: Vec<PathBuf>,
    /// The rows carry the reference's log-probs (TRL's precompute columns, `kto logps`).
    pub reference_columns: bool,
    /// The data warnings printed (also recorded in the run summary).
    pub warnings: Vec<String>,
}

/// Loads, tokenizes and checks the training and evaluation data for `model`.
pub fn prepare(model: &str, plan: &DataPlan) -> Result<Data> {
    let folder = model_folder(model)?;
    let tokenizer = HfTokenizer::from_folder(&folder)
        .with_context(|| format!("loading the tokenizer from {}", folder.display()))?;
    let pad_id = tokenizer
        .pad_id()
        .with_context(|| format!("{}: the tokenizer has neither a pad nor an EOS token", folder.display()))?;

    // Every id that reaches the embedding table must be in it: checked before anything is
    // written, against the model's own config.
    let vocab_size = DecoderConfig::from_file(&folder.join("config.json"))
        .with_context(|| format!("reading {}", folder.join("config.json").display()))?
        .vocab_size;
    if pad_id as usize >= vocab_size {
        bail!(
            "{}: the pad token id {pad_id} is outside the model's vocabulary ({vocab_size} ids); use a pad token the embedding table has (or resize the model)",
            folder.display()
        );
    }

    let dataset = kto_data::load_dataset(&plan.dataset, &plan.dataset_split)?;
    let train = kto_data::tokenize_examples(&dataset.examples, &tokenizer, &plan.tokenize)?;
    kto_data::check_vocabulary(&train, &dataset.examples, vocab_size)?;
    let reference_columns = kto_data::dataset_reference(&train, &dataset.examples, plan.uses_kl)?;
    if reference_columns && plan.precompute_ref_log_probs {
        bail!(
            "{}: the rows carry the reference's log-probs (`ref_logps`), so `precompute_ref_log_probs` has nothing to compute; drop one of the two",
            plan.dataset
        );
    }
    if reference_columns && plan.uses_kl && plan.sampling != Sampling::Sequential {
        bail!(
            "{}: the rows' `ref_KL_logps` belong to the KL pairs of sequential batches; drop `shuffle`/`group_by_length`",
            plan.dataset
        );
    }
    let audit = kto_data::audit(&dataset, &train, &plan.tokenize, plan.desirable_weight, plan.undesirable_weight);
    let mut warnings: Vec<String> = Vec::new();
    for w in [&audit.weight_warning, &audit.one_class_warning, &audit.prefix_warning].into_iter().flatten() {
        eprintln!("warning: {w}");
        warnings.push(w.clone());
    }
    if train.rows.is_empty() {
        let max_length = plan.tokenize.max_length.unwrap_or(0);
        bail!("{}: every row was dropped by max_length={max_length} (see `kto audit`)", plan.dataset);
    }
    let (eval_rows, eval_files) = match &plan.eval {
        None => (Vec::new(), Vec::new()),
        Some((eval_dataset, split)) => {
            let eval: Dataset = kto_data::load_dataset(eval_dataset, split)?;
            // TRL pairs evaluation rows in chunks of the *train* batch size (of the train
            // window, evaluated on one device, under `accumulation_window`).
            let kl_window = plan.tokenize.kl_window.map(|w| KlWindow { devices: 1, ..w });
            let config = TokenizeConfig { kl_window, ..plan.tokenize.clone() };
            let tokenized = kto_data::tokenize_examples(&eval.examples, &tokenizer, &config)?;
            kto_data::check_vocabulary(&tokenized, &eval.examples, vocab_size)?;
            if reference_columns && !kto_data::dataset_reference(&tokenized, &eval.examples, plan.uses_kl)? {
                bail!(
                    "{eval_dataset}: the training rows carry the reference's log-probs but the evaluation rows do not; give both, or neither (a reference model then scores them)"
                );
            }
            (tokenized.rows, eval.files)
        }
    };
    Ok(Data {
        folder,
        tokenizer,
        pad_id,
        train,
        train_files: dataset.files,
        eval_rows,
        eval_files,
        reference_columns,
        warnings,
    })
}
