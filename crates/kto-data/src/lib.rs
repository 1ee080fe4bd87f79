//! # kto-data: datasets for KTO
//!
//! Turns user datasets into typed training batches the way TRL 1.16 does: readers (JSONL, JSON,
//! Parquet), the standard and conversational formats, paired-to-unpaired conversion (through
//! `kto_core::unpair`), chat templates, tokenization, truncation and collation.
//!
//! Depends on `kto-core` only; knows nothing of models or training. The readers and the
//! tokenization pipeline arrive with issue #4; today the crate re-exports the in-memory record
//! types it builds on.
#![deny(missing_docs)]

pub use kto_core::{PairedExample, UnpairedExample};
