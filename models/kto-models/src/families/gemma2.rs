//! Gemma 2 (`Gemma2ForCausalLM`): embeddings scaled by `sqrt(hidden_size)`; four norms per layer
//! (before and after attention and the MLP), each `(1 + w)` in f32; attention scores scaled by
//! `query_pre_attn_scalar^-0.5` and soft-capped by `attn_logit_softcapping`, the output logits
//! by `final_logit_softcapping`; sliding and full layers alternating (`layer_types`, layer 0
//! sliding); GeGLU with `gelu_pytorch_tanh`; tied embeddings.

use super::{Arch, Family, Refusal, layer_type_windows, llama_like};
use crate::config::{HfConfig, ModelFamily, NormPlacement, NormScale};

pub(crate) const FAMILY: Family =
    Family { family: ModelFamily::Gemma2, model_type: "gemma2", architecture: "Gemma2ForCausalLM", describe };

fn describe(hf: &HfConfig) -> Result<Arch, Refusal> {
    let windows = match &hf.layer_types {
        Some(types) => layer_type_windows(types, hf.num_hidden_layers, hf.sliding_window)?,
        None => (0..hf.num_hidden_layers).map(|i| hf.sliding_window.filter(|_| (i + 1) % 2 != 0)).collect(),
    };
    gemma_arch(hf, windows, hf.attn_logit_softcapping, hf.final_logit_softcapping)
}

/// What Gemma 2 and 3 share, with the per-layer windows and the soft-caps given.
pub(super) fn gemma_arch(
    hf: &HfConfig,
    windows: Vec<Option<usize>>,
    attn_softcap: Option<f64>,
    final_softcap: Option<f64>,
) -> Result<Arch, Refusal> {
    if hf.use_bidirectional_attention == Some(true) {
        return Err(("use_bidirectional_attention", "true: kto trains causal decoders only".into()));
    }
    let mut arch = llama_like(hf, hf.attention_bias, hf.attention_bias, false);
    arch.norms = NormPlacement::Sandwich;
    arch.norm_scale = NormScale::OffsetBeforeCast;
    arch.embed_scale = Some((hf.hidden_size as f64).sqrt());
    arch.attn_scale = Some(hf.query_pre_attn_scalar.unwrap_or(256.0).powf(-0.5));
    arch.attn_softcap = attn_softcap;
    arch.final_softcap = final_softcap;
    for (layer, window) in arch.layers.iter_mut().zip(windows) {
        layer.sliding_window = window;
    }
    Ok(arch)
}
