//! Qwen3 (`Qwen3ForCausalLM`): Qwen2's layer without biases (`attention_bias`, default false)
//! and with `q_norm`/`k_norm`, RMSNorms over `head_dim` applied to every head before RoPE.
//! `head_dim` is its own setting (128 by default), not `hidden_size / num_attention_heads`.

use super::{Arch, Family, Refusal, llama_like, qwen_windows};
use crate::config::{HfConfig, ModelFamily, QkNorm};

pub(crate) const FAMILY: Family =
    Family { family: ModelFamily::Qwen3, model_type: "qwen3", architecture: "Qwen3ForCausalLM", describe };

fn describe(hf: &HfConfig) -> Result<Arch, Refusal> {
    let mut arch = llama_like(hf, hf.attention_bias, hf.attention_bias, false);
    arch.qk_norm = QkNorm::PerHead;
    for (layer, window) in arch.layers.iter_mut().zip(qwen_windows(hf)?) {
        layer.sliding_window = window;
    }
    Ok(arch)
}
