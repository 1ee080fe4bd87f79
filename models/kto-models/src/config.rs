//! Hugging Face `config.json` for Llama and Qwen2, in both layouts seen in the wild.
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

/// Model families this crate implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFamily {
    /// `LlamaForCausalLM` (`model_type: "llama"`): Llama 2/3, TinyLlama, Mistral-style configs
    /// without sliding windows.
    Llama,
    /// `Qwen2ForCausalLM` (`model_type: "qwen2"`): Qwen2, Qwen2.5.
    Qwen2,
}

impl ModelFamily {
    /// The `model_type` values accepted.
    pub const SUPPORTED: [&'static str; 2] = ["llama", "qwen2"];

    /// The `architectures` entry transformers writes for the family.
    pub fn architecture(self) -> &'static str {
        match self {
            ModelFamily::Llama => "LlamaForCausalLM",
            ModelFamily::Qwen2 => "Qwen2ForCausalLM",
        }
    }
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

/// The keys of a Llama/Qwen2 `config.json` the models read (others are kept verbatim in
/// [`DecoderConfig::raw`]).
#[derive(Debug, Clone, Deserialize)]
pub struct HfConfig {
    /// `llama` or `qwen2`.
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
    /// Qwen2: sliding-window attention (unsupported when true).
    #[serde(default)]
    pub use_sliding_window: bool,
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
    /// The family (decides the q/k/v biases).
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

        let family = match hf.model_type.as_deref() {
            Some("llama") => ModelFamily::Llama,
            Some("qwen2") => ModelFamily::Qwen2,
            other => {
                let found = other.map(str::to_string).or_else(|| hf.architectures.first().cloned());
                return Err(Error::UnsupportedArchitecture {
                    path: path.into(),
                    found: found.unwrap_or_else(|| "<no model_type>".into()),
                    supported: vec!["llama (LlamaForCausalLM)", "qwen2 (Qwen2ForCausalLM)"],
                });
            }
        };
        if let Some(arch) = hf.architectures.iter().find(|a| a.as_str() != family.architecture()) {
            return Err(Error::UnsupportedArchitecture {
                path: path.into(),
                found: arch.clone(),
                supported: vec!["LlamaForCausalLM", "Qwen2ForCausalLM"],
            });
        }
        if hf.hidden_act != "silu" {
            return Err(config_err("hidden_act", format!("only `silu` is supported, got `{}`", hf.hidden_act)));
        }
        if hf.use_sliding_window {
            return Err(config_err("use_sliding_window", "sliding-window attention is not supported".into()));
        }
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
        let rope_theta = theta.unwrap_or(10_000.0);
        let rope_scaling = parse_rope_scaling(scaling.as_ref(), hf.max_position_embeddings)
            .map_err(|reason| config_err("rope_scaling", reason))?;

        let eos_token_ids = match &hf.eos_token_id {
            None | Some(Value::Null) => vec![],
            Some(Value::Number(n)) => n.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
            Some(Value::Array(items)) => items.iter().filter_map(Value::as_u64).map(|v| v as u32).collect(),
            Some(other) => return Err(config_err("eos_token_id", format!("expected an id or a list, found {other}"))),
        };
        let (qkv_bias, o_bias) = match family {
            ModelFamily::Qwen2 => (true, false),
            ModelFamily::Llama => (hf.attention_bias, hf.attention_bias),
        };
        Ok(DecoderConfig {
            family,
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
            qkv_bias,
            o_bias,
            mlp_bias: family == ModelFamily::Llama && hf.mlp_bias,
            tie_word_embeddings: hf.tie_word_embeddings,
            eos_token_ids,
            stored_dtype: hf.torch_dtype.or(hf.dtype),
            raw,
        })
    }
}

fn parse_rope_scaling(value: Option<&Value>, max_positions: usize) -> std::result::Result<RopeScaling, String> {
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
            "config.json: unsupported architecture `gpt2`; supported: llama (LlamaForCausalLM), qwen2 (Qwen2ForCausalLM)"
        );
        let err =
            parse(&format!(r#"{{"model_type": "qwen2", {BASE}, "rope_scaling": {{"type": "yarn", "factor": 4.0}}}}"#))
                .unwrap_err();
        assert_eq!(
            err.to_string(),
            "config.json: field `rope_scaling`: unsupported rope type `yarn`; supported: default, linear, dynamic, llama3"
        );
    }
}
