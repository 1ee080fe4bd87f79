//! Phi-3 (`Phi3ForCausalLM`): Phi-3, Phi-3.5 and Phi-4-mini. Llama's layer with the q/k/v
//! projections fused into `self_attn.qkv_proj` (rows `[q | k | v]`) and gate/up into
//! `mlp.gate_up_proj` (rows `[gate | up]`); RoPE on the first `partial_rotary_factor` of each
//! head's dimensions; `sliding_window` on every layer. `resid_pdrop`, `embd_pdrop` and
//! `attention_dropout` are dropouts TRL's `disable_dropout` zeroes. `longrope` scaling (the
//! 128k variants) is refused.

use serde_json::Value;

use super::{Arch, Family, Refusal, llama_like};
use crate::config::{HfConfig, ModelFamily};

pub(crate) const FAMILY: Family =
    Family { family: ModelFamily::Phi3, model_type: "phi3", architecture: "Phi3ForCausalLM", describe };

fn describe(hf: &HfConfig) -> Result<Arch, Refusal> {
    if [hf.rope_scaling.as_ref(), hf.rope_parameters.as_ref()].into_iter().any(is_longrope) {
        return Err(("rope_scaling", "`longrope` (the 128k Phi-3 variants) is not implemented".into()));
    }
    let mut arch = llama_like(hf, hf.attention_bias, hf.attention_bias, false);
    arch.fused_projections = true;
    // transformers 5 keeps the factor in `rope_parameters`; the Hub layout at the top.
    let in_params = hf.rope_parameters.as_ref().and_then(|p| p.get("partial_rotary_factor")).and_then(Value::as_f64);
    arch.rotary_fraction = in_params.or(hf.partial_rotary_factor).filter(|&f| f != 1.0);
    for layer in &mut arch.layers {
        layer.sliding_window = hf.sliding_window;
    }
    Ok(arch)
}

fn is_longrope(v: Option<&Value>) -> bool {
    let kind = v.and_then(|v| v.get("rope_type").or_else(|| v.get("type"))).and_then(Value::as_str);
    kind == Some("longrope")
}
