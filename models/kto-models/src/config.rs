//! Hugging Face `config.json` of every family in `families/`, in both layouts seen in the wild.
//!
//! - Hub checkpoints (Llama 3, Qwen2.5): top-level `rope_theta`, `rope_scaling`, `torch_dtype`.
//! - transformers 5 (every folder it saves): `rope_parameters: {rope_theta, rope_type, ...}`,
//!   `dtype`.
//!
//! [`HfConfig`] mirrors the keys; [`DecoderConfig`] is the resolved description the decoder is
//! built from. The original JSON is kept so saving writes back every key a user's tools expect.

use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};

/// Model families this crate implements (each described in `families/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFamily {
    /// `LlamaForCausalLM` (`llama`): Llama 2/3, TinyLlama.
    Llama,
    /// `Qwen2ForCausalLM` (`qwen2`): Qwen2, Qwen2.5.
    Qwen2,
    /// `Qwen3ForCausalLM` (`qwen3`): dense Qwen3.
    Qwen3,
    /// `MistralForCausalLM` (`mistral`): Mistral, Ministral, Nemo.
    Mistral,
    /// `Olmo2ForCausalLM` (`olmo2`): OLMo 2.
    Olmo2,
    /// `SmolLM3ForCausalLM` (`smollm3`): SmolLM3.
    SmolLM3,
    /// `Gemma2ForCausalLM` (`gemma2`): Gemma 2.
    Gemma2,
    /// `Gemma3ForCausalLM` (`gemma3_text`): Gemma 3's text models (1B, and the text part of the
    /// larger ones when saved as `Gemma3ForCausalLM`).
    Gemma3,
    /// `Phi3ForCausalLM` (`phi3`): Phi-3, Phi-3.5, Phi-4-mini.
    Phi3,
}

impl ModelFamily {
    /// The `model_type` values accepted.
    pub fn supported() -> Vec<&'static str> {
        crate::families::FAMILIES.iter().map(|f| f.model_type).collect()
    }

    /// The family's `model_type`.
    pub fn model_type(self) -> &'static str {
        crate::families::of(self).model_type
    }

    /// The `architectures` entry transformers writes for the family.
    pub fn architecture(self) -> &'static str {
        crate::families::of(self).architecture
    }
}

/// Where a decoder layer's norms sit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormPlacement {
    /// Before each block: `h = x + attn(input_layernorm(x))`,
    /// `out = h + mlp(post_attention_layernorm(h))` (Llama and most families).
    Pre,
    /// After each block, no input norms: `h = x + post_attention_layernorm(attn(x))`,
    /// `out = h + post_feedforward_layernorm(mlp(h))` (OLMo 2).
    Post,
    /// Before and after each block: `h = x + post_attention_layernorm(attn(input_layernorm(x)))`,
    /// `out = h + post_feedforward_layernorm(mlp(pre_feedforward_layernorm(h)))` (Gemma 2/3).
    Sandwich,
}

impl NormPlacement {
    /// Whether layers have `input_layernorm`.
    pub fn has_input_norm(self) -> bool {
        matches!(self, Self::Pre | Self::Sandwich)
    }

    /// Whether layers have `post_feedforward_layernorm`.
    pub fn has_post_feedforward_norm(self) -> bool {
        matches!(self, Self::Post | Self::Sandwich)
    }
}

/// How an RMSNorm applies its weight relative to the cast back to the activations' dtype (the
/// same numbers in f32; different roundings in bf16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormScale {
    /// `weight * x_normed.to(dtype)` (Llama, Qwen, Mistral).
    AfterCast,
    /// `(weight * x_normed).to(dtype)` (OLMo 2).
    BeforeCast,
    /// `(x_normed * (1 + weight)).to(dtype)`, all in f32 (Gemma: the stored weight is an offset
    /// from 1, initialised to 0).
    OffsetBeforeCast,
}

/// The MLP's activation (`hidden_act`, Gemma's `hidden_activation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `silu` (SwiGLU).
    Silu,
    /// `gelu_pytorch_tanh`: GELU's tanh approximation (GeGLU).
    GeluTanh,
}

impl Activation {
    /// transformers' name of an activation kto implements.
    fn parse(name: &str) -> Option<Self> {
        match name {
            "silu" | "swish" => Some(Self::Silu),
            "gelu_pytorch_tanh" => Some(Self::GeluTanh),
            _ => None,
        }
    }
}

/// Norms applied to queries and keys before RoPE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkNorm {
    /// None.
    None,
    /// `q_norm`/`k_norm` over `head_dim`, applied to each head (Qwen3).
    PerHead,
    /// `q_norm`/`k_norm` over the whole projection (`heads · head_dim`), before the reshape
    /// (OLMo 2).
    FullWidth,
}

/// One layer's attention pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerAttention {
    /// A query sees at most this many keys, itself included (`None`: every earlier key).
    pub sliding_window: Option<usize>,
    /// Whether rotary position embeddings apply (SmolLM3's NoPE layers: no).
    pub rope: bool,
    /// Whether the layer uses the local RoPE tables ([`DecoderConfig::rope_local`]; Gemma 3's
    /// sliding layers) rather than the global ones.
    pub local_rope: bool,
}

/// How rotary position frequencies are scaled (`rope_scaling` / `rope_parameters.rope_type`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    Default,
    /// Positions divided by `factor` (`"linear"`).
    Linear {
        /// The scaling factor.
        factor: f64,
    },
    /// Dynamic NTK: the base grows once the sequence exceeds `original_max_position_embeddings`.
    Dynamic {
        /// The scaling factor.
        factor: f64,
        /// Context length the model was trained with.
        original_max_position_embeddings: usize,
    },
    /// Llama 3.1's frequency-dependent scaling (`"llama3"`).
    Llama3 {
        /// The scaling factor.
        factor: f64,
        /// Wavelengths longer than `original / low_freq_factor` are scaled fully.
        low_freq_factor: f64,
        /// Wavelengths shorter than `original / high_freq_factor` are kept.
        high_freq_factor: f64,
        /// Context length the model was trained with.
        original_max_position_embeddings: usize,
    },
}

/// The keys of a `config.json` the models read (others are kept verbatim in
/// [`DecoderConfig::raw`]).
#[derive(Debug, Clone, Deserialize)]
pub struct HfConfig {
    /// `llama`, `qwen2`, `qwen3`, ... (see [`ModelFamily`]).
    pub model_type: Option<String>,
    /// E.g. `["Qwen2ForCausalLM"]`.
    #[serde(default)]
    pub architectures: Vec<String>,
    /// Vocabulary rows of the embedding and head.
    pub vocab_size: usize,
    /// `d_model`.
    pub hidden_size: usize,
    /// `d_ff`.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention); defaults to `num_attention_heads`.
    pub num_key_value_heads: Option<usize>,
    /// Per-head width; defaults to `hidden_size / num_attention_heads`.
    pub head_dim: Option<usize>,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Hub layout: the RoPE base.
    pub rope_theta: Option<f64>,
    /// Hub layout: RoPE scaling, or null.
    pub rope_scaling: Option<Value>,
    /// transformers-5 layout: `{rope_theta, rope_type, ...}`.
    pub rope_parameters: Option<Value>,
    /// Longest context in training.
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    /// Llama: bias on q/k/v/o projections.
    #[serde(default)]
    pub attention_bias: bool,
    /// Llama: bias on the MLP projections.
    #[serde(default)]
    pub mlp_bias: bool,
    /// Whether `lm_head` shares the embedding matrix.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Activation; only `silu` is supported.
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Qwen2/Qwen3/SmolLM3: whether `sliding_window` applies.
    #[serde(default)]
    pub use_sliding_window: bool,
    /// Keys a query sees (itself included) on sliding layers; `null` for none.
    pub sliding_window: Option<usize>,
    /// Qwen2/Qwen3: layers from this one on slide (with `use_sliding_window`).
    pub max_window_layers: Option<usize>,
    /// transformers 5: `full_attention` or `sliding_attention` per layer.
    pub layer_types: Option<Vec<String>>,
    /// SmolLM3: 1 where a layer uses RoPE, 0 for NoPE.
    pub no_rope_layers: Option<Vec<u8>>,
    /// SmolLM3: without `no_rope_layers`, every this-many-th layer is NoPE.
    pub no_rope_layer_interval: Option<usize>,
    /// Gemma: the activation (takes precedence over `hidden_act`).
    pub hidden_activation: Option<String>,
    /// Gemma: attention scores are scaled by `query_pre_attn_scalar^-0.5`.
    pub query_pre_attn_scalar: Option<f64>,
    /// Gemma: `tanh(logits / c) · c` on the output logits.
    pub final_logit_softcapping: Option<f64>,
    /// Gemma: `tanh(scores / c) · c` on the attention scores.
    pub attn_logit_softcapping: Option<f64>,
    /// Gemma 3 (Hub layout): the RoPE base of sliding layers.
    pub rope_local_base_freq: Option<f64>,
    /// Gemma 3 (Hub layout): every this-many-th layer is full attention, the others slide.
    pub sliding_window_pattern: Option<usize>,
    /// Gemma: bidirectional attention (encoder use), not causal.
    pub use_bidirectional_attention: Option<bool>,
    /// Phi-3 (Hub layout): RoPE rotates the first `head_dim · factor` dimensions of each head.
    pub partial_rotary_factor: Option<f64>,
    /// BOS id.
    pub bos_token_id: Option<Value>,
    /// EOS id or ids.
    pub eos_token_id: Option<Value>,
    /// Pad id.
    pub pad_token_id: Option<Value>,
    /// Hub layout: dtype on disk.
    pub torch_dtype: Option<String>,
    /// transformers-5 layout: dtype on disk.
    pub dtype: Option<String>,
}

fn default_max_positions() -> usize {
    2048
}

fn default_act() -> String {
    "silu".into()
}

/// Everything the decoder is built from, resolved from either config layout.
#[derive(Debug, Clone)]
pub struct DecoderConfig {
    /// The family.
    pub family: ModelFamily,
    /// Vocabulary rows.
    pub vocab_size: usize,
    /// `d_model`.
    pub hidden_size: usize,
    /// `d_ff`.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_layers: usize,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Per-head width.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// RoPE scaling.
    pub rope_scaling: RopeScaling,
    /// Longest context in training.
    pub max_position_embeddings: usize,
    /// Bias on q/k/v.
    pub qkv_bias: bool,
    /// Bias on o_proj.
    pub o_bias: bool,
    /// Bias on the MLP projections.
    pub mlp_bias: bool,
    /// Tied input/output embeddings (no `lm_head.weight` in the checkpoint).
    pub tie_word_embeddings: bool,
    /// Query/key norms.
    pub qk_norm: QkNorm,
    /// Where each layer's norms sit.
    pub norms: NormPlacement,
    /// How the norms apply their weight.
    pub norm_scale: NormScale,
    /// Each layer's attention window and RoPE.
    pub layers: Vec<LayerAttention>,
    /// The MLP's activation.
    pub activation: Activation,
    /// Embeddings multiplied by this (Gemma: `sqrt(hidden_size)`, in the weights' dtype).
    pub embed_scale: Option<f64>,
    /// Attention scores multiplied by this (default `head_dim^-0.5`).
    pub attn_scale: Option<f64>,
    /// Soft-cap of the attention scores.
    pub attn_softcap: Option<f64>,
    /// Soft-cap of the output logits.
    pub final_softcap: Option<f64>,
    /// RoPE base and scaling of the layers marked [`LayerAttention::local_rope`].
    pub rope_local: Option<(f64, RopeScaling)>,
    /// Dimensions of each head RoPE rotates (the first ones; `head_dim` but for Phi-3's
    /// `partial_rotary_factor`).
    pub rotary_dim: usize,
    /// q/k/v and gate/up are fused into `qkv_proj` and `gate_up_proj` (Phi-3).
    pub fused_projections: bool,
    /// End-of-sequence ids from the config.
    pub eos_token_ids: Vec<u32>,
    /// The dtype recorded on disk (`float32`, `bfloat16`, ...), if any.
    pub stored_dtype: Option<String>,
    /// The original `config.json`, written back (updated) on save.
    pub raw: Value,
}

impl DecoderConfig {
    /// Reads and resolves `config.json`.
    ///
    /// # Errors
    /// I/O and JSON errors naming the file; [`Error::UnsupportedArchitecture`] for another
    /// `model_type`; [`Error::Config`] for unsupported values (RoPE types, activations,
    /// sliding windows).
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.into(), source })?;
        Self::from_json(&text, path)
    }

    /// Resolves a `config.json` held in memory; `path` is used in error messages.
    ///
    /// # Errors
    /// As [`DecoderConfig::from_file`].
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let raw: Value = serde_json::from_str(text).map_err(|source| Error::Json { path: path.into(), source })?;
        let hf: HfConfig =
            serde_json::from_value(raw.clone()).map_err(|source| Error::Json { path: path.into(), source })?;
        let config_err = |field: &str, reason: String| Error::Config { path: path.into(), field: field.into(), reason };

        if hf.model_type.as_deref() == Some("gemma3") {
            return Err(config_err(
                "model_type",
                "`gemma3` is the multimodal Gemma 3 (Gemma3ForConditionalGeneration), whose text model sits under `language_model`; kto trains the text model: save it as Gemma3ForCausalLM (model_type `gemma3_text`)".into(),
            ));
        }
        let Some(spec) = hf.model_type.as_deref().and_then(crate::families::by_model_type) else {
            let found = hf.model_type.clone().or_else(|| hf.architectures.first().cloned());
            return Err(Error::UnsupportedArchitecture {
                path: path.into(),
                found: found.unwrap_or_else(|| "<no model_type>".into()),
                supported: crate::families::FAMILIES.iter().map(|f| f.model_type).collect(),
            });
        };
        if let Some(arch) = hf.architectures.iter().find(|a| a.as_str() != spec.architecture) {
            return Err(Error::UnsupportedArchitecture {
                path: path.into(),
                found: arch.clone(),
                supported: crate::families::FAMILIES.iter().map(|f| f.architecture).collect(),
            });
        }
        let (act_key, act_name) = match &hf.hidden_activation {
            Some(name) => ("hidden_activation", name.as_str()),
            None => ("hidden_act", hf.hidden_act.as_str()),
        };
        let activation = Activation::parse(act_name).ok_or_else(|| {
            config_err(act_key, format!("`{act_name}` is not implemented (supported: silu, gelu_pytorch_tanh)"))
        })?;
        let arch = (spec.describe)(&hf).map_err(|(field, reason)| config_err(field, reason))?;
        if hf.num_attention_heads == 0
            || (!hf.hidden_size.is_multiple_of(hf.num_attention_heads) && hf.head_dim.is_none())
        {
            return Err(config_err(
                "num_attention_heads",
                format!("must divide hidden_size {} (or give head_dim)", hf.hidden_size),
            ));
        }
        let num_kv_heads = hf.num_key_value_heads.unwrap_or(hf.num_attention_heads);
        if num_kv_heads == 0 || !hf.num_attention_heads.is_multiple_of(num_kv_heads) {
            return Err(config_err(
                "num_key_value_heads",
                format!("must divide num_attention_heads {}, got {num_kv_heads}", hf.num_attention_heads),
            ));
        }
        let head_dim = hf.head_dim.unwrap_or(hf.hidden_size / hf.num_attention_heads);
        if !head_dim.is_multiple_of(2) {
            return Err(config_err("head_dim", format!("must be even for rotary embeddings, got {head_dim}")));
        }

        // RoPE: transformers 5 nests everything in `rope_parameters`; the Hub layout has a
        // top-level theta and an optional `rope_scaling` object.
        let (theta, scaling) = match &hf.rope_parameters {
            Some(params) if params.is_object() => {
                let theta = params.get("rope_theta").and_then(Value::as_f64).or(hf.rope_theta);
                (theta, Some(params.clone()))
            }
            _ => (hf.rope_theta, hf.rope_scaling.clone().filter(|v| !v.is_null())),
        };
        let (rope_theta, rope_scaling) = match arch.rope {
            Some(global) => global,
            None => (
                theta.unwrap_or(10_000.0),
                parse_rope_scaling(scaling.as_ref(), hf.max_position_embeddings)
                    .map_err(|reason| config_err("rope_scaling", reason))?,
            ),
        };

        let eos_token_ids = match &hf.eos_token_id {
            None | Some(Value::Null) => vec![],
            Some(Value::Number(n)) => n.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_u64).map(|v| v as u32).collect(),
            Some(other) => return Err(config_err("eos_token_id", format!("expected an id or a list, found {other}"))),
        };
        Ok(DecoderConfig {
            family: spec.family,
            vocab_size: hf.vocab_size,
            hidden_size: hf.hidden_size,
            intermediate_size: hf.intermediate_size,
            num_layers: hf.num_hidden_layers,
            num_heads: hf.num_attention_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: hf.rms_norm_eps,
            rope_theta,
            rope_scaling,
            max_position_embeddings: hf.max_position_embeddings,
            qkv_bias: arch.qkv_bias,
            o_bias: arch.o_bias,
            mlp_bias: arch.mlp_bias,
            tie_word_embeddings: hf.tie_word_embeddings,
            qk_norm: arch.qk_norm,
            norms: arch.norms,
            norm_scale: arch.norm_scale,
            layers: arch.layers,
            activation,
            embed_scale: arch.embed_scale,
            attn_scale: arch.attn_scale,
            attn_softcap: arch.attn_softcap,
            final_softcap: arch.final_softcap,
            rope_local: arch.rope_local,
            rotary_dim: match arch.rotary_fraction {
                Some(f) => {
                    let dim = (head_dim as f64 * f) as usize;
                    if dim == 0 || !dim.is_multiple_of(2) || dim > head_dim {
                        return Err(config_err(
                            "partial_rotary_factor",
                            format!("{f} gives {dim} rotary dimensions of {head_dim} (must be even and > 0)"),
                        ));
                    }
                    dim
                }
                None => head_dim,
            },
            fused_projections: arch.fused_projections,
            eos_token_ids,
            stored_dtype: hf.torch_dtype.or(hf.dtype),
            raw,
        })
    }
}

pub(crate) fn parse_rope_scaling(
    value: Option<&Value>,
    max_positions: usize,
) -> std::result::Result<RopeScaling, String> {
    let Some(obj) = value.and_then(Value::as_object) else {
        return Ok(RopeScaling::Default);
    };
    let kind = obj.get("rope_type").or_else(|| obj.get("type")).and_then(Value::as_str).unwrap_or("default");
    let num = |key: &str| -> std::result::Result<f64, String> {
        obj.get(key).and_then(Value::as_f64).ok_or_else(|| format!("rope type `{kind}` needs a numeric `{key}`"))
    };
    let original = obj
        .get("original_max_position_embeddings")
        .and_then(Value::as_u64)
        .map(|v| v as usize)
        .unwrap_or(max_positions);
    match kind {
        "default" => Ok(RopeScaling::Default),
        "linear" => Ok(RopeScaling::Linear { factor: num("factor")? }),
        "dynamic" => Ok(RopeScaling::Dynamic { factor: num("factor")?, original_max_position_embeddings: original }),
        "llama3" => Ok(RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: original,
        }),
        other => Err(format!("unsupported rope type `{other}`; supported: default, linear, dynamic, llama3")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<DecoderConfig> {
        DecoderConfig::from_json(json, Path::new("config.json"))
    }

    const BASE: &str = r#""vocab_size": 10, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 1, "rms_norm_eps": 1e-6"#;

    #[test]
    fn both_rope_layouts_resolve_alike() {
        let hub = parse(&format!(
            r#"{{"model_type": "llama", {BASE}, "rope_theta": 500000.0,
            "rope_scaling": {{"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}}}}"#
        ))
        .expect("hub layout");
        let v5 = parse(&format!(
            r#"{{"model_type": "llama", {BASE}, "rope_parameters": {{"rope_theta": 500000.0, "rope_type": "llama3",
            "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}}}"#
        ))
        .expect("transformers-5 layout");
        assert_eq!(hub.rope_theta, 500000.0);
        assert_eq!(hub.rope_scaling, v5.rope_scaling);
        assert_eq!(hub.rope_theta, v5.rope_theta);
        assert_eq!(hub.head_dim, 4);
    }

    #[test]
    fn unknown_architectures_and_rope_types_are_errors() {
        let err = parse(&format!(r#"{{"model_type": "gpt2", {BASE}}}"#)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "config.json: unsupported architecture `gpt2`; supported: llama, qwen2, qwen3, mistral, olmo2, smollm3, gemma2, gemma3_text, phi3"
        );
        let err =
            parse(&format!(r#"{{"model_type": "qwen2", {BASE}, "rope_scaling": {{"type": "yarn", "factor": 4.0}}}}"#))
                .unwrap_err();
        assert_eq!(
            err.to_string(),
            "config.json: field `rope_scaling`: unsupported rope type `yarn`; supported: default, linear, dynamic, llama3"
        );
    }

    #[test]
    fn families_resolve_their_layer_patterns() {
        let layers = r#""vocab_size": 10, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 4,
            "num_attention_heads": 2, "num_key_value_heads": 1, "rms_norm_eps": 1e-6"#;
        let window = |c: &DecoderConfig| c.layers.iter().map(|l| l.sliding_window).collect::<Vec<_>>();
        let rope = |c: &DecoderConfig| c.layers.iter().map(|l| l.rope).collect::<Vec<_>>();
        // Mistral: every layer slides.
        let mistral =
            parse(&format!(r#"{{"model_type": "mistral", {layers}, "sliding_window": 8, "head_dim": null}}"#))
                .expect("mistral");
        assert_eq!(window(&mistral), [Some(8); 4]);
        assert_eq!((mistral.head_dim, mistral.qk_norm), (4, QkNorm::None));
        // Qwen2/Qwen3: from max_window_layers on, only with use_sliding_window; else ignored.
        let qwen = |extra: &str| parse(&format!(r#"{{"model_type": "qwen3", {layers}, "head_dim": 6, {extra}}}"#));
        let sliding = qwen(r#""use_sliding_window": true, "sliding_window": 16, "max_window_layers": 2"#).expect("q3");
        assert_eq!(window(&sliding), [None, None, Some(16), Some(16)]);
        assert_eq!((sliding.head_dim, sliding.qk_norm, sliding.qkv_bias), (6, QkNorm::PerHead, false));
        assert_eq!(window(&qwen(r#""use_sliding_window": false, "sliding_window": 16"#).expect("q3")), [None; 4]);
        // transformers 5's layer_types.
        let typed = qwen(
            r#""use_sliding_window": true, "sliding_window": 16,
            "layer_types": ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]"#,
        )
        .expect("layer_types");
        assert_eq!(window(&typed), [Some(16), None, Some(16), None]);
        // SmolLM3: NoPE every interval-th layer without a list.
        let smol = parse(&format!(r#"{{"model_type": "smollm3", {layers}, "no_rope_layer_interval": 2}}"#)).expect("s");
        assert_eq!(rope(&smol), [true, false, true, false]);
        let listed = parse(&format!(r#"{{"model_type": "smollm3", {layers}, "no_rope_layers": [1, 1, 1, 0]}}"#));
        assert_eq!(rope(&listed.expect("list")), [true, true, true, false]);
        // Gemma 3 (Hub layout): every 2nd layer full; local base on sliding layers, global with scaling.
        let gemma3 = parse(&format!(
            r#"{{"model_type": "gemma3_text", {layers}, "sliding_window": 8, "sliding_window_pattern": 2,
            "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0, "query_pre_attn_scalar": 16,
            "rope_scaling": {{"rope_type": "linear", "factor": 2.0}}, "hidden_activation": "gelu_pytorch_tanh"}}"#
        ))
        .expect("gemma3");
        assert_eq!(window(&gemma3), [Some(8), None, Some(8), None]);
        let local: Vec<bool> = gemma3.layers.iter().map(|l| l.local_rope).collect();
        assert_eq!(local, [true, false, true, false]);
        assert_eq!((gemma3.rope_theta, gemma3.rope_scaling), (1e6, RopeScaling::Linear { factor: 2.0 }));
        assert_eq!(gemma3.rope_local, Some((1e4, RopeScaling::Default)));
        assert_eq!((gemma3.attn_scale, gemma3.embed_scale), (Some(0.25), Some(8f64.sqrt())));
        assert_eq!((gemma3.activation, gemma3.norms), (Activation::GeluTanh, NormPlacement::Sandwich));
        // The same in transformers 5's layout.
        let v5 = parse(&format!(
            r#"{{"model_type": "gemma3_text", {layers}, "sliding_window": 8, "query_pre_attn_scalar": 16,
            "layer_types": ["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
            "rope_parameters": {{"full_attention": {{"rope_type": "linear", "factor": 2.0, "rope_theta": 1000000.0}},
            "sliding_attention": {{"rope_type": "default", "rope_theta": 10000.0}}}}, "hidden_activation": "gelu_pytorch_tanh"}}"#
        ))
        .expect("gemma3 v5");
        assert_eq!(
            (v5.rope_theta, v5.rope_scaling, v5.rope_local),
            (gemma3.rope_theta, gemma3.rope_scaling, gemma3.rope_local)
        );
        assert_eq!(window(&v5), window(&gemma3));
        // Phi-3: fused projections, RoPE on a fraction of each head (Hub layout at the top,
        // transformers 5 in rope_parameters), a window on every layer.
        let phi = parse(&format!(
            r#"{{"model_type": "phi3", {layers}, "partial_rotary_factor": 0.5, "sliding_window": 16}}"#
        ))
        .expect("phi3");
        assert_eq!((phi.fused_projections, phi.rotary_dim, phi.head_dim), (true, 2, 4));
        assert_eq!(window(&phi), [Some(16); 4]);
        let v5 = parse(&format!(
            r#"{{"model_type": "phi3", {layers}, "rope_parameters": {{"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}}}}"#
        ))
        .expect("phi3 v5");
        assert_eq!(v5.rotary_dim, 2);
        // OLMo 2: post-norms, full-width q/k norms, the weight applied before the cast.
        let olmo = parse(&format!(r#"{{"model_type": "olmo2", {layers}}}"#)).expect("olmo2");
        assert_eq!(
            (olmo.norms, olmo.qk_norm, olmo.norm_scale),
            (NormPlacement::Post, QkNorm::FullWidth, NormScale::BeforeCast)
        );
    }

    #[test]
    fn values_a_family_would_silently_drop_are_refused_by_name() {
        let err = parse(&format!(r#"{{"model_type": "llama", {BASE}, "sliding_window": 4096}}"#)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "config.json: field `sliding_window`: 4096: this family has no sliding-window attention in transformers"
        );
        let longrope = r#""rope_scaling": {"type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}"#;
        let err = parse(&format!(r#"{{"model_type": "phi3", {BASE}, {longrope}}}"#)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "config.json: field `rope_scaling`: `longrope` (the 128k Phi-3 variants) is not implemented"
        );
        let err = parse(&format!(r#"{{"model_type": "gemma3", {BASE}}}"#)).unwrap_err();
        assert!(
            err.to_string().starts_with("config.json: field `model_type`: `gemma3` is the multimodal Gemma 3"),
            "{err}"
        );
        let err =
            parse(&format!(r#"{{"model_type": "gemma2", {BASE}, "use_bidirectional_attention": true}}"#)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "config.json: field `use_bidirectional_attention`: true: kto trains causal decoders only"
        );
        let err = parse(&format!(r#"{{"model_type": "llama", {BASE}, "hidden_act": "relu"}}"#)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "config.json: field `hidden_act`: `relu` is not implemented (supported: silu, gelu_pytorch_tanh)"
        );
        let err = parse(&format!(r#"{{"model_type": "smollm3", {BASE}, "no_rope_layers": [1, 0, 1]}}"#)).unwrap_err();
        assert_eq!(err.to_string(), "config.json: field `no_rope_layers`: has 3 entries for 1 layers");
        let err = parse(&format!(
            r#"{{"model_type": "qwen3", {BASE}, "use_sliding_window": false, "layer_types": ["sliding_attention"]}}"#
        ))
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "config.json: field `layer_types`: names a sliding layer but sliding_window is null"
        );
    }
}
