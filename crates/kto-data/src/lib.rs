//! # kto-data: datasets for KTO
//!
//! Turns user datasets into token ids the way TRL 1.16 does: JSONL records in the standard and
//! conversational formats ([`read_jsonl`]), paired-to-unpaired conversion (through
//! `kto_core::unpair`), chat templates ([`HfTokenizer`]), TRL's tokenization, `max_length`
//! filter and KL pairs ([`tokenize_examples`]).
//!
//! Depends on `kto-core` only; knows nothing of models or training. Collation into typed
//! micro-batches: [`collate`]. JSON/Parquet readers, truncation modes and `kto audit` arrive with
//! the rest of issue #4.
#![deny(missing_docs)]

mod collate;
mod error;
mod record;
mod tokenize;
mod tokenizer;

pub use collate::{CollateConfig, HostBatch, HostSequences, collate};
pub use error::{Error, Result};
pub use kto_core::{PairedExample, UnpairedExample};
pub use record::{Content, Example, RecordShape, from_values, read_jsonl};
pub use tokenize::{DroppedRow, TokenizeConfig, Tokenized, TokenizedRow, tokenize_examples};
pub use tokenizer::{HfTokenizer, Message};
