//! # kto: KTO preference training for causal language models on burn
//!
//! The facade of the workspace; it only re-exports the three libraries:
//!
//! - [`core`] (`kto-core`): backend-generic KTO math and training;
//! - [`data`] (`kto-data`): datasets, tokenization and collation;
//! - [`models`] (`kto-models`): Llama and Qwen2, Hugging Face folders in and out.
//!
//! The backend features (`flex`, the default; `ndarray`; `wgpu`; `cuda`) are forwarded to burn.
//! The `kto` binary lives in the `kto-cli` package.
#![deny(missing_docs)]

pub use kto_core as core;
pub use kto_data as data;
pub use kto_models as models;
