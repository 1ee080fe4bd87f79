//! Hugging Face model folders in and out: `config.json` + safetensors (single or sharded).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::nn::{Embedding, Linear};
use burn::prelude::*;
use burn::tensor::{DType, FloatDType};

use crate::config::{DecoderConfig, NormPlacement, NormScale};
use crate::decoder::{Decoder, DecoderLayer, TransformerLm};
use crate::error::{Error, Result, TensorProblem};
use crate::layers::{Attention, Mlp, RmsNorm};
use crate::safetensors_io::{CheckpointIndex, OwnedTensor, StorageDType, file_name, write_tensors};

/// How [`load_model`] builds the model.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// Compute dtype of the parameters. Weights stored as f32, bf16 or f16 are converted to it.
    /// Only f32 on ndarray; f32 or bf16 on flex and CUDA.
    pub dtype: FloatDType,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { dtype: FloatDType::F32 }
    }
}

/// How [`save_model`] writes the folder.
#[derive(Debug, Clone, Copy)]
pub struct SaveOptions {
    /// Dtype on disk; `None` keeps the dtype the source config records (`torch_dtype`/`dtype`),
    /// or f32 when it records none.
    pub dtype: Option<StorageDType>,
    /// Shards hold at most this many bytes (transformers' `max_shard_size`); one file when the
    /// model fits.
    pub max_shard_bytes: u64,
}

impl Default for SaveOptions {
    fn default() -> Self {
        Self { dtype: None, max_shard_bytes: 5_000_000_000 }
    }
}

/// Files of a model folder copied along when saving (tokenizer, chat template, generation
/// defaults).
pub const COMPANION_FILES: [&str; 9] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
];

/// Loads a Llama or Qwen2 model from a Hugging Face folder (`config.json` plus
/// `model.safetensors` or `model.safetensors.index.json` and its shards).
///
/// Loading is strict: every missing, unexpected or mis-shaped tensor is reported at once in an
/// [`Error::Checkpoint`]. A tied checkpoint may still carry `lm_head.weight` (some Hub files do);
/// it is ignored, as transformers does.
///
/// # Errors
/// Config errors (see [`DecoderConfig::from_file`]), I/O and format errors naming the file,
/// [`Error::Checkpoint`], and [`Error::UnsupportedDType`] for bf16 on a device without it.
pub fn load_model(folder: &Path, device: &Device, options: &LoadOptions) -> Result<(DecoderConfig, TransformerLm)> {
    let dtype = DType::from(options.dtype);
    if !device.supports_dtype(dtype) {
        return Err(Error::UnsupportedDType { dtype });
    }
    let config = DecoderConfig::from_file(&folder.join("config.json"))?;
    let index = CheckpointIndex::open(folder)?;
    let mut source = Source { index: &index, used: BTreeSet::new(), problems: vec![], device, dtype: options.dtype };
    let model = build(&config, &mut source)?;
    let mut problems = source.problems;
    for (key, entry) in &index.entries {
        let ignorable = key.ends_with("rotary_emb.inv_freq") || (config.tie_word_embeddings && key == "lm_head.weight");
        if !source.used.contains(key) && !ignorable {
            problems.push(TensorProblem::Unexpected { file: file_name(&entry.file), key: key.clone() });
        }
    }
    if !problems.is_empty() {
        return Err(Error::Checkpoint { folder: folder.into(), problems });
    }
    Ok((config, model))
}

struct Source<'a> {
    index: &'a CheckpointIndex,
    used: BTreeSet<String>,
    problems: Vec<TensorProblem>,
    device: &'a Device,
    dtype: FloatDType,
}

impl Source<'_> {
    /// The tensor `key` with the checkpoint `shape`; zeros (and a recorded problem) when it is
    /// missing or mis-shaped, so every problem gets reported.
    fn values(&mut self, key: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let count = shape.iter().product();
        let Some(entry) = self.index.entries.get(key) else {
            self.problems.push(TensorProblem::Missing { key: key.into() });
            return Ok(vec![0.0; count]);
        };
        self.used.insert(key.into());
        if entry.shape != shape {
            self.problems.push(TensorProblem::ShapeMismatch {
                file: file_name(&entry.file),
                key: key.into(),
                expected: shape.to_vec(),
                found: entry.shape.clone(),
            });
            return Ok(vec![0.0; count]);
        }
        match entry.read_f32(key)? {
            Ok(values) => Ok(values),
            Err(problem) => {
                self.problems.push(problem);
                Ok(vec![0.0; count])
            }
        }
    }

    fn tensor<const D: usize>(&self, values: Vec<f32>, shape: [usize; D]) -> Tensor<D> {
        let t = Tensor::<D>::from_data(TensorData::new(values, shape), (self.device, DType::F32));
        if self.dtype == FloatDType::F32 { t } else { t.cast(self.dtype) }
    }

    /// A `Linear` from a PyTorch `[d_out, d_in]` weight (transposed to burn's `[d_in, d_out]`).
    fn linear(&mut self, prefix: &str, d_in: usize, d_out: usize, bias: bool) -> Result<Linear> {
        let w = self.values(&format!("{prefix}.weight"), &[d_out, d_in])?;
        let weight = self.tensor(transpose(&w, d_out, d_in), [d_in, d_out]);
        let bias = if bias {
            let b = self.values(&format!("{prefix}.bias"), &[d_out])?;
            Some(Param::from_tensor(self.tensor(b, [d_out])))
        } else {
            None
        };
        Ok(Linear { weight: Param::from_tensor(weight), bias })
    }

    fn norm(&mut self, prefix: &str, d: usize, epsilon: f64, scale: NormScale) -> Result<RmsNorm> {
        let w = self.values(&format!("{prefix}.weight"), &[d])?;
        Ok(RmsNorm { weight: Param::from_tensor(self.tensor(w, [d])), epsilon, scale })
    }
}

/// Row-major `[rows, cols]` to `[cols, rows]`.
pub(crate) fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}

fn build(config: &DecoderConfig, src: &mut Source<'_>) -> Result<TransformerLm> {
    let (d, heads, kv, hd) = (config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim);
    let (eps, scale) = (config.rms_norm_eps, config.norm_scale);
    let embed = src.values("model.embed_tokens.weight", &[config.vocab_size, d])?;
    let embed_tokens = Embedding { weight: Param::from_tensor(src.tensor(embed, [config.vocab_size, d])) };
    let mut layers = Vec::with_capacity(config.num_layers);
    for i in 0..config.num_layers {
        let p = format!("model.layers.{i}");
        let fused = config.fused_projections;
        let mut separate = |name: &str, d_out: usize, bias: bool| -> Result<Option<crate::layers::Projection>> {
            if fused { Ok(None) } else { Ok(Some(src.linear(&format!("{p}.{name}"), d, d_out, bias)?.into())) }
        };
        let (q_proj, k_proj, v_proj) = (
            separate("self_attn.q_proj", heads * hd, config.qkv_bias)?,
            separate("self_attn.k_proj", kv * hd, config.qkv_bias)?,
            separate("self_attn.v_proj", kv * hd, config.qkv_bias)?,
        );
        let ff = config.intermediate_size;
        let (gate_proj, up_proj) =
            (separate("mlp.gate_proj", ff, config.mlp_bias)?, separate("mlp.up_proj", ff, config.mlp_bias)?);
        let qkv_proj = match fused {
            true => {
                Some(src.linear(&format!("{p}.self_attn.qkv_proj"), d, (heads + 2 * kv) * hd, config.qkv_bias)?.into())
            }
            false => None,
        };
        let gate_up_proj = match fused {
            true => Some(src.linear(&format!("{p}.mlp.gate_up_proj"), d, 2 * ff, config.mlp_bias)?.into()),
            false => None,
        };
        let self_attn = Attention {
            q_proj,
            k_proj,
            v_proj,
            qkv_proj,
            o_proj: src.linear(&format!("{p}.self_attn.o_proj"), heads * hd, d, config.o_bias)?.into(),
            q_norm: match config.qk_norm_widths() {
                Some((w, _)) => Some(src.norm(&format!("{p}.self_attn.q_norm"), w, eps, scale)?),
                None => None,
            },
            k_norm: match config.qk_norm_widths() {
                Some((_, w)) => Some(src.norm(&format!("{p}.self_attn.k_norm"), w, eps, scale)?),
                None => None,
            },
            n_heads: heads,
            n_kv_heads: kv,
            head_dim: hd,
            qk_norm: config.qk_norm,
            pattern: config.layers[i],
            scale: config.attn_scale,
            softcap: config.attn_softcap,
            compute: None,
        };
        let mlp = Mlp {
            gate_proj,
            up_proj,
            gate_up_proj,
            down_proj: src.linear(&format!("{p}.mlp.down_proj"), ff, d, config.mlp_bias)?.into(),
            activation: config.activation,
        };
        let placement = config.norms;
        let mut norm = |name: &str| src.norm(&format!("{p}.{name}"), d, eps, scale);
        let mut optional = |present: bool, name: &str| if present { norm(name).map(Some) } else { Ok(None) };
        layers.push(DecoderLayer {
            self_attn,
            mlp,
            input_layernorm: optional(placement.has_input_norm(), "input_layernorm")?,
            post_attention_layernorm: optional(true, "post_attention_layernorm")?.expect("always present"),
            pre_feedforward_layernorm: optional(placement == NormPlacement::Sandwich, "pre_feedforward_layernorm")?,
            post_feedforward_layernorm: optional(placement.has_post_feedforward_norm(), "post_feedforward_layernorm")?,
            norms: placement,
        });
    }
    let norm = src.norm("model.norm", d, eps, scale)?;
    let lm_head =
        if config.tie_word_embeddings { None } else { Some(src.linear("lm_head", d, config.vocab_size, false)?) };
    Ok(TransformerLm::from_parts(Decoder { embed_tokens, layers, norm }, lm_head, config))
}

/// Every parameter with its Hugging Face key and PyTorch-layout shape, in checkpoint order.
/// Tied models have no `lm_head.weight`.
pub fn named_tensors(model: &TransformerLm) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 data after convert")
    }
    let mut out = Vec::new();
    let linear = |out: &mut Vec<_>, prefix: &str, l: &Linear| {
        let [d_in, d_out] = l.weight.dims();
        out.push((format!("{prefix}.weight"), vec![d_out, d_in], transpose(&values(l.weight.val()), d_in, d_out)));
        if let Some(b) = &l.bias {
            out.push((format!("{prefix}.bias"), vec![d_out], values(b.val())));
        }
    };
    let norm = |out: &mut Vec<_>, prefix: &str, n: &RmsNorm| {
        out.push((format!("{prefix}.weight"), n.weight.dims().to_vec(), values(n.weight.val())));
    };
    let embed = &model.model.embed_tokens.weight;
    out.push(("model.embed_tokens.weight".into(), embed.dims().to_vec(), values(embed.val())));
    for (i, layer) in model.model.layers.iter().enumerate() {
        let p = format!("model.layers.{i}");
        let a = &layer.self_attn;
        for (name, proj) in
            [("q_proj", &a.q_proj), ("k_proj", &a.k_proj), ("v_proj", &a.v_proj), ("qkv_proj", &a.qkv_proj)]
        {
            if let Some(proj) = proj {
                linear(&mut out, &format!("{p}.self_attn.{name}"), proj);
            }
        }
        linear(&mut out, &format!("{p}.self_attn.o_proj"), &layer.self_attn.o_proj);
        if let Some(n) = &layer.self_attn.q_norm {
            norm(&mut out, &format!("{p}.self_attn.q_norm"), n);
        }
        if let Some(n) = &layer.self_attn.k_norm {
            norm(&mut out, &format!("{p}.self_attn.k_norm"), n);
        }
        let m = &layer.mlp;
        for (name, proj) in [("gate_proj", &m.gate_proj), ("up_proj", &m.up_proj), ("gate_up_proj", &m.gate_up_proj)] {
            if let Some(proj) = proj {
                linear(&mut out, &format!("{p}.mlp.{name}"), proj);
            }
        }
        linear(&mut out, &format!("{p}.mlp.down_proj"), &layer.mlp.down_proj);
        if let Some(n) = &layer.input_layernorm {
            norm(&mut out, &format!("{p}.input_layernorm"), n);
        }
        norm(&mut out, &format!("{p}.post_attention_layernorm"), &layer.post_attention_layernorm);
        if let Some(n) = &layer.pre_feedforward_layernorm {
            norm(&mut out, &format!("{p}.pre_feedforward_layernorm"), n);
        }
        if let Some(n) = &layer.post_feedforward_layernorm {
            norm(&mut out, &format!("{p}.post_feedforward_layernorm"), n);
        }
    }
    norm(&mut out, "model.norm", &model.model.norm);
    if let Some(head) = &model.lm_head {
        linear(&mut out, "lm_head", head);
    }
    out
}

/// Writes `model` as a Hugging Face folder at `out`: `config.json` (the source config with its
/// dtype updated), safetensors with HF keys and PyTorch layouts (sharded above
/// `max_shard_bytes`, with `model.safetensors.index.json`), tied weights omitted, and the
/// [`COMPANION_FILES`] of `source_folder` copied along.
///
/// The folder is written under a temporary name next to `out` and renamed into place, so an
/// interrupted save never leaves a half-written model; an existing `out` is replaced.
///
/// # Errors
/// I/O errors naming the path.
pub fn save_model(
    model: &TransformerLm,
    config: &DecoderConfig,
    source_folder: Option<&Path>,
    out: &Path,
    options: &SaveOptions,
) -> Result<()> {
    let dtype = options
        .dtype
        .or_else(|| config.stored_dtype.as_deref().and_then(StorageDType::from_config_name))
        .unwrap_or(StorageDType::F32);
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let name = out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;

    let tensors: Vec<(String, OwnedTensor)> = named_tensors(model)
        .into_iter()
        .map(|(key, shape, values)| (key, OwnedTensor::new(&values, shape, dtype)))
        .collect();
    write_tensors(&tmp, &tensors, options.max_shard_bytes)?;

    let mut raw = config.raw.clone();
    if let Some(obj) = raw.as_object_mut() {
        let key = if obj.contains_key("dtype") || !obj.contains_key("torch_dtype") { "dtype" } else { "torch_dtype" };
        obj.insert(key.into(), serde_json::Value::String(dtype.config_name().into()));
    }
    let config_path = tmp.join("config.json");
    let text =
        serde_json::to_string_pretty(&raw).map_err(|source| Error::Json { path: config_path.clone(), source })?;
    crate::write_atomic(&config_path, text + "\n").map_err(io(&config_path))?;
    if let Some(src) = source_folder {
        for file in COMPANION_FILES {
            let from = src.join(file);
            if from.is_file() {
                std::fs::copy(&from, tmp.join(file)).map_err(io(&from))?;
            }
        }
    }
    replace_dir(&tmp, out)
}

/// Moves `tmp` to `out`, replacing any existing `out` only after `tmp` is complete.
/// Puts the finished folder `tmp` in place of `out`: the old folder is moved aside, the new one
/// renamed in, then the old one removed, so `out` is never deleted before its replacement is
/// complete (a crash between the renames leaves the old folder beside it, whole).
///
/// # Errors
/// [`Error::Io`] naming the folder.
pub fn replace_dir(tmp: &Path, out: &Path) -> Result<()> {
    let io = |path: PathBuf| move |source| Error::Io { path, source };
    if out.exists() {
        let old = out.with_file_name(format!(
            ".{}.old-{}",
            out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            std::process::id()
        ));
        std::fs::rename(out, &old).map_err(io(out.into()))?;
        std::fs::rename(tmp, out).map_err(io(out.into()))?;
        std::fs::remove_dir_all(&old).map_err(io(old.clone()))?;
    } else {
        std::fs::rename(tmp, out).map_err(io(out.into()))?;
    }
    crate::sync_folder(out);
    Ok(())
}
