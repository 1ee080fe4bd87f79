//! # kto-models: Llama and Qwen2 on burn for KTO
//!
//! One decoder shared by the Llama and Qwen2 families, implementing `kto_core::CausalLm`;
//! Hugging Face `config.json` + safetensors in and out; LoRA; generation. Depends on `kto-core`
//! only. The modules arrive with issue #3; today the crate re-exports the trait they implement.
#![deny(missing_docs)]

pub use kto_core::CausalLm;
