//! Llama (`LlamaForCausalLM`): Llama 2/3, TinyLlama. Pre-norm layers, SwiGLU MLP, grouped-query
//! attention with RoPE on every layer; `attention_bias` on q/k/v/o, `mlp_bias` on the MLP.

use super::{Arch, Family, Refusal, llama_like, no_sliding_window};
use crate::config::{HfConfig, ModelFamily};

pub(crate) const FAMILY: Family =
    Family { family: ModelFamily::Llama, model_type: "llama", architecture: "LlamaForCausalLM", describe };

fn describe(hf: &HfConfig) -> Result<Arch, Refusal> {
    no_sliding_window(hf)?;
    Ok(llama_like(hf, hf.attention_bias, hf.attention_bias, hf.mlp_bias))
}
