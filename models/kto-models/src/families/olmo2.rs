//! OLMo 2 (`Olmo2ForCausalLM`): no norms before attention or the MLP; instead
//! `post_attention_layernorm` on the attention output and `post_feedforward_layernorm` on the
//! MLP output, each before its residual add. `q_norm`/`k_norm` normalise the whole q and k
//! projections (all heads together) before the reshape and RoPE. Its RMSNorm multiplies by the
//! weight in f32 and casts after.

use super::{Arch, Family, Refusal, llama_like, no_sliding_window};
use crate::config::{HfConfig, ModelFamily, NormPlacement, NormScale, QkNorm};

pub(crate) const FAMILY: Family =
    Family { family: ModelFamily::Olmo2, model_type: "olmo2", architecture: "Olmo2ForCausalLM", describe };

fn describe(hf: &HfConfig) -> Result<Arch, Refusal> {
    no_sliding_window(hf)?;
    let mut arch = llama_like(hf, hf.attention_bias, hf.attention_bias, false);
    arch.qk_norm = QkNorm::FullWidth;
    arch.norms = NormPlacement::Post;
    arch.norm_scale = NormScale::BeforeCast;
    Ok(arch)
}
