//! # kto-data: datasets for KTO
//!
//! Turns user datasets into typed training batches the way TRL 1.16 does: readers (JSONL, JSON,
//! Parquet), the standard and conversational formats, paired-to-unpaired conversion (through
//! `kto_core::unpair`), chat templates, tokenization, truncation and collation.
//!
//! Depends on `kto-core` only; knows nothing of models or training. Today it holds the
//! tokenizer and chat-template layer ([`HfTokenizer`]); the dataset readers and the TRL
//! tokenization pipeline arrive with issue #4.
#![deny(missing_docs)]

mod error;
mod tokenizer;

pub use error::{Error, Result};
pub use kto_core::{PairedExample, UnpairedExample};
pub use tokenizer::{HfTokenizer, Message};
