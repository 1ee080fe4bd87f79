//! Gemma 3 text (`Gemma3ForCausalLM`, `model_type` `gemma3_text`): Gemma 2's layer without the
//! soft-caps by default, plus per-head `(1 + w)` `q_norm`/`k_norm`. Every
//! `sliding_window_pattern`-th layer (default 6) is full attention, the others slide (or
//! `layer_types`). Sliding layers use the local RoPE base (`rope_local_base_freq`, 10 000),
//! full layers `rope_theta` (1 000 000) with `rope_scaling`; transformers 5 writes both as
//! `rope_parameters` keyed by layer type. The multimodal `gemma3` checkpoints are refused: their
//! text model sits under another prefix.

use serde_json::Value;

use super::gemma2::gemma_arch;
use super::{Arch, Family, Refusal, layer_type_windows};
use crate::config::{HfConfig, ModelFamily, QkNorm, RopeScaling, parse_rope_scaling};

pub(crate) const FAMILY: Family =
    Family { family: ModelFamily::Gemma3, model_type: "gemma3_text", architecture: "Gemma3ForCausalLM", describe };

fn describe(hf: &HfConfig) -> Result<Arch, Refusal> {
    let n = hf.num_hidden_layers;
    let windows = match &hf.layer_types {
        Some(types) => layer_type_windows(types, n, hf.sliding_window)?,
        None => {
            let pattern = hf.sliding_window_pattern.unwrap_or(6);
            if pattern == 0 {
                return Err(("sliding_window_pattern", "must be >= 1".into()));
            }
            (0..n).map(|i| hf.sliding_window.filter(|_| (i + 1) % pattern != 0)).collect()
        }
    };
    let mut arch = gemma_arch(hf, windows, hf.attn_logit_softcapping, hf.final_logit_softcapping)?;
    arch.qk_norm = QkNorm::PerHead;
    let (global, local) = ropes(hf)?;
    arch.rope = Some(global);
    arch.rope_local = Some(local);
    for layer in &mut arch.layers {
        layer.local_rope = layer.sliding_window.is_some();
    }
    Ok(arch)
}

/// A RoPE base and its scaling.
type Rope = (f64, RopeScaling);

/// `(global, local)` RoPE from either layout.
fn ropes(hf: &HfConfig) -> Result<(Rope, Rope), Refusal> {
    let scaling = |v: Option<&Value>| {
        parse_rope_scaling(v.filter(|v| !v.is_null()), hf.max_position_embeddings).map_err(|r| ("rope_scaling", r))
    };
    match hf.rope_parameters.as_ref().and_then(Value::as_object) {
        Some(by_type) if by_type.contains_key("full_attention") || by_type.contains_key("sliding_attention") => {
            let of = |key: &str, default_theta: f64| -> Result<Rope, Refusal> {
                let params = by_type.get(key);
                let theta = params.and_then(|p| p.get("rope_theta")).and_then(Value::as_f64).unwrap_or(default_theta);
                Ok((theta, scaling(params)?))
            };
            Ok((of("full_attention", 1_000_000.0)?, of("sliding_attention", 10_000.0)?))
        }
        _ => Ok((
            (hf.rope_theta.unwrap_or(1_000_000.0), scaling(hf.rope_scaling.as_ref())?),
            (hf.rope_local_base_freq.unwrap_or(10_000.0), RopeScaling::Default),
        )),
    }
}
