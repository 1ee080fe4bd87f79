//! # kto-models: decoder families on burn for KTO
//!
//! One decoder ([`TransformerLm`]) configured by each family's description in `families/`
//! (Llama, Qwen2, Qwen3, Mistral, OLMo 2, SmolLM3, Gemma 2, Gemma 3, Phi-3), implementing
//! [`kto_core::CausalLm`]; Hugging Face folders in ([`load_model`]) and out ([`save_model`]);
//! incremental decoding with a [`KvCache`].
//!
//! Module field names mirror the checkpoint keys (`model.layers.N.self_attn.q_proj`, …), so
//! loading needs no renaming. RoPE is the `rotate_half` layout transformers uses; attention is
//! causal with right-padding masks and grouped-query heads; RMSNorm reduces in f32.
//!
//! Gradient checkpointing is a property of the autodiff device in burn 0.22:
//! `device.autodiff().gradient_checkpointing()` (the balanced strategy) recomputes activations
//! of this model during backward instead of storing them.
//!
//! Depends on `kto-core` only; knows nothing of tokenizers or datasets.
#![deny(missing_docs)]

mod atomic;
mod checkpoint;
mod config;
mod decoder;
mod error;
mod families;
mod generate;
mod layers;
mod peft;
mod safetensors_io;

pub use atomic::{sync_folder, write_atomic, write_atomic_with};
pub use checkpoint::{COMPANION_FILES, LoadOptions, SaveOptions, load_model, named_tensors, replace_dir, save_model};
pub use config::{
    Activation, DecoderConfig, HfConfig, LayerAttention, ModelFamily, NormPlacement, NormScale, QkNorm, RopeScaling,
};
pub use decoder::{Decoder, DecoderLayer, KvCache, TransformerLm};
pub use error::{Error, Result, TensorProblem};
pub use generate::{GenerationConfig, generate};
pub use layers::{
    Attention, AttentionConfig, LayerCache, LoraAdapter, LoraConfig, LoraTargets, Mlp, MlpConfig, PROJECTIONS,
    Projection, RmsNorm, RmsNormConfig, RotaryEmbedding, RotaryTables,
};
pub use peft::{load_adapter, merge_into_folder, save_adapter};
pub use safetensors_io::{HostTensor, StorageDType, load_tensor_file, save_tensor_file};
