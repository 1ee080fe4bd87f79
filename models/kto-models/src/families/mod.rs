//! The decoder families, each a short description of how its `config.json` maps onto the one
//! decoder's options ([`Arch`]): biases, where the norms sit and how they scale, query/key
//! norms, and per layer the attention window and whether RoPE applies. The checkpoint keys
//! follow from the options (`self_attn.q_norm`, `post_feedforward_layernorm`, ...), so a family
//! is its file here plus its tests.

use crate::config::{HfConfig, LayerAttention, ModelFamily, NormPlacement, NormScale, QkNorm, RopeScaling};

mod gemma2;
mod gemma3;
mod llama;
mod mistral;
mod olmo2;
mod phi3;
mod qwen2;
mod qwen3;
mod smollm3;

/// A family's decoder options, resolved from its config.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Arch {
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub mlp_bias: bool,
    pub qk_norm: QkNorm,
    pub norms: NormPlacement,
    pub norm_scale: NormScale,
    /// One entry per layer.
    pub layers: Vec<LayerAttention>,
    pub embed_scale: Option<f64>,
    pub attn_scale: Option<f64>,
    pub attn_softcap: Option<f64>,
    pub final_softcap: Option<f64>,
    /// The global RoPE, when the family resolves it itself (Gemma 3's per-layer-type layout).
    pub rope: Option<(f64, RopeScaling)>,
    pub rope_local: Option<(f64, RopeScaling)>,
    /// Phi-3's `partial_rotary_factor`.
    pub rotary_fraction: Option<f64>,
    pub fused_projections: bool,
}

/// A config value the family's arithmetic depends on and kto does not implement: `(key, why)`.
pub(crate) type Refusal = (&'static str, String);

/// One family: its `model_type`, the `architectures` entry transformers writes, and its
/// description.
pub(crate) struct Family {
    pub family: ModelFamily,
    pub model_type: &'static str,
    pub architecture: &'static str,
    pub describe: fn(&HfConfig) -> Result<Arch, Refusal>,
}

/// Every family kto implements.
pub(crate) const FAMILIES: [Family; 9] = [
    llama::FAMILY,
    qwen2::FAMILY,
    qwen3::FAMILY,
    mistral::FAMILY,
    olmo2::FAMILY,
    smollm3::FAMILY,
    gemma2::FAMILY,
    gemma3::FAMILY,
    phi3::FAMILY,
];

/// The family of `model_type`.
pub(crate) fn by_model_type(model_type: &str) -> Option<&'static Family> {
    FAMILIES.iter().find(|f| f.model_type == model_type)
}

/// The family of `family`.
pub(crate) fn of(family: ModelFamily) -> &'static Family {
    FAMILIES.iter().find(|f| f.family == family).expect("every family is listed")
}

/// Llama's layer: pre-norms scaled after the cast, no q/k norm, full attention and RoPE everywhere.
pub(crate) fn llama_like(hf: &HfConfig, qkv_bias: bool, o_bias: bool, mlp_bias: bool) -> Arch {
    Arch {
        qkv_bias,
        o_bias,
        mlp_bias,
        qk_norm: QkNorm::None,
        norms: NormPlacement::Pre,
        norm_scale: NormScale::AfterCast,
        layers: vec![LayerAttention { sliding_window: None, rope: true, local_rope: false }; hf.num_hidden_layers],
        embed_scale: None,
        attn_scale: None,
        attn_softcap: None,
        final_softcap: None,
        rope: None,
        rope_local: None,
        rotary_fraction: None,
        fused_projections: false,
    }
}

/// Refuses a `sliding_window` that a family without one would silently drop.
pub(crate) fn no_sliding_window(hf: &HfConfig) -> Result<(), Refusal> {
    match hf.sliding_window {
        Some(w) => Err(("sliding_window", format!("{w}: this family has no sliding-window attention in transformers"))),
        None => Ok(()),
    }
}

/// The per-layer windows of the Qwen-style configs: `layer_types` when given (transformers 5),
/// else `sliding_window` from layer `max_window_layers` on when `use_sliding_window` is true
/// (as `Qwen2Config`/`Qwen3Config` derive them); `sliding_window` alone is ignored, as there.
pub(crate) fn qwen_windows(hf: &HfConfig) -> Result<Vec<Option<usize>>, Refusal> {
    let window = if hf.use_sliding_window { hf.sliding_window } else { None };
    match &hf.layer_types {
        Some(types) => layer_type_windows(types, hf.num_hidden_layers, window),
        None => Ok((0..hf.num_hidden_layers)
            .map(|i| window.filter(|_| i >= hf.max_window_layers.unwrap_or(hf.num_hidden_layers)))
            .collect()),
    }
}

/// Windows from transformers 5's `layer_types` (`full_attention` / `sliding_attention`).
pub(crate) fn layer_type_windows(
    types: &[String],
    layers: usize,
    sliding_window: Option<usize>,
) -> Result<Vec<Option<usize>>, Refusal> {
    if types.len() != layers {
        return Err(("layer_types", format!("has {} entries for {layers} layers", types.len())));
    }
    types
        .iter()
        .map(|t| match (t.as_str(), sliding_window) {
            ("full_attention", _) => Ok(None),
            ("sliding_attention", Some(w)) => Ok(Some(w)),
            ("sliding_attention", None) => {
                Err(("layer_types", "names a sliding layer but sliding_window is null".into()))
            }
            (other, _) => Err(("layer_types", format!("`{other}` (expected full_attention or sliding_attention)"))),
        })
        .collect()
}
