//! # kto-data: datasets for KTO
//!
//! Turns user datasets into token ids and typed batches the way TRL 1.16 does:
//!
//! - [`load_dataset`]: a JSONL, JSON or Parquet file, a folder laid out as a Hugging Face dataset
//!   repo, or a hub id found in the local Hugging Face cache ([`resolve_dataset`]), streamed
//!   ([`records`]) and typed into unpaired [`Example`]s ([`read_dataset`]): standard and
//!   conversational formats, paired data unpaired in TRL's order through `kto_core::unpair`;
//! - [`HfTokenizer`]: `tokenizer.json`, special tokens and the chat template (minijinja);
//! - [`tokenize_examples`]: TRL's tokenization, `max_length` filter and KL pairs, classic TRL's
//!   `max_prompt_length` truncation, in parallel;
//! - [`epoch_batches`] and [`collate`]: batch order (sequential, shuffled, length-grouped) and
//!   right-padded typed micro-batches;
//! - [`audit`]: what a dataset looks like to the trainer (counts, lengths, drops, KL plan).
//!
//! Depends on `kto-core` only; knows nothing of models or training.
#![deny(missing_docs)]

mod audit;
mod batching;
mod collate;
mod error;
mod reader;
mod record;
mod source;
mod tokenize;
mod tokenizer;

pub use audit::{Audit, LengthStats, audit};
pub use batching::{Sampling, epoch_batches};
pub use collate::{CollateConfig, HostBatch, HostSequences, KlPairing, collate};
pub use error::{Error, Result};
pub use kto_core::{PairedExample, UnpairedExample};
pub use reader::{Location, RawRecord, Unit, records};
pub use record::{Content, Dataset, Example, RecordShape, load_dataset, read_dataset, read_jsonl};
pub use source::{DataFile, FileFormat, cached_snapshot, hub_cache_dir, resolve_dataset};
pub use tokenize::{
    DroppedRow, KlWindow, TokenizeConfig, Tokenized, TokenizedRow, TruncationMode, check_vocabulary, dataset_reference,
    tokenize_examples,
};
pub use tokenizer::{HfTokenizer, Message, TemplateInputs};
