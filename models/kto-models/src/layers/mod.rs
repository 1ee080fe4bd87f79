//! The building blocks of the decoder. Field names mirror the Hugging Face checkpoint keys.

mod attention;
mod lora;
mod mlp;
mod norm;
mod rope;

pub use attention::{Attention, AttentionConfig, LayerCache};
pub(crate) use lora::linear_rows;
pub use lora::{LoraAdapter, LoraConfig, LoraTargets, PROJECTIONS, Projection};
pub use mlp::{Mlp, MlpConfig};
pub use norm::{RmsNorm, RmsNormConfig};
pub use rope::{RotaryEmbedding, RotaryTables};
