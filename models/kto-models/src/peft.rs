//! PEFT LoRA adapters on disk: `adapter_model.safetensors` (keys
//! `base_model.model.<module>.lora_A.weight` `[r, d_in]` and `.lora_B.weight` `[d_out, r]`,
//! PyTorch's layout) and `adapter_config.json`, as `peft` writes and reads them; and merging an
//! adapter into a plain Hugging Face folder.

use std::path::Path;

use burn::module::Module;
use serde_json::{Value, json};

use crate::checkpoint::transpose;
use crate::config::DecoderConfig;
use crate::decoder::TransformerLm;
use crate::error::{Error, Result};
use crate::layers::{LoraConfig, LoraTargets, Projection};
use crate::safetensors_io::{HostTensor, load_tensor_file, save_tensor_file};

const WEIGHTS: &str = "adapter_model.safetensors";
const CONFIG: &str = "adapter_config.json";

fn host(t: burn::tensor::Tensor<2>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 data after convert")
}

/// Writes the model's adapters as a PEFT folder at `out` (created if needed): the weights in
/// f32 and `adapter_config.json` with `r`, `lora_alpha`, `target_modules`, `use_rslora` and
/// `base_model_name_or_path`.
///
/// # Errors
/// I/O and safetensors errors naming the file; [`Error::Checkpoint`]-free: a model without
/// adapters writes an empty adapter.
pub fn save_adapter(model: &TransformerLm, config: &LoraConfig, base_model: &str, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|source| Error::Io { path: out.into(), source })?;
    let mut tensors: Vec<HostTensor> = Vec::new();
    for (prefix, proj) in model.projections() {
        let Some(adapter) = &proj.lora else { continue };
        let [d_in, r] = adapter.a.dims();
        let [_, d_out] = adapter.b.dims();
        let a = transpose(&host(adapter.a.val()), d_in, r); // [r, d_in]
        let b = transpose(&host(adapter.b.val()), r, d_out); // [d_out, r]
        tensors.push((format!("base_model.model.{prefix}.lora_A.weight"), vec![r, d_in], a));
        tensors.push((format!("base_model.model.{prefix}.lora_B.weight"), vec![d_out, r], b));
    }
    save_tensor_file(&out.join(WEIGHTS), &tensors)?;
    let cfg = json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": config.r,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "target_modules": config.targets.to_json(),
        "use_rslora": config.use_rslora,
        "bias": "none",
        "fan_in_fan_out": false,
        "init_lora_weights": true,
        "inference_mode": true,
        "modules_to_save": null,
        "use_dora": false,
    });
    let path = out.join(CONFIG);
    let text = serde_json::to_string_pretty(&cfg).map_err(|source| Error::Json { path: path.clone(), source })?;
    crate::write_atomic(&path, text + "\n").map_err(|source| Error::Io { path, source })
}

/// Reads a PEFT LoRA folder and attaches its adapters to `model` (whose weights are frozen);
/// returns the model and the adapter's settings.
///
/// # Errors
/// [`Error::Adapter`] naming the file and what does not fit (unsupported PEFT features, shapes,
/// missing or unexpected tensors).
pub fn load_adapter(model: TransformerLm, folder: &Path) -> Result<(TransformerLm, LoraConfig)> {
    let cfg_path = folder.join(CONFIG);
    let bad = |reason: String| Error::Adapter { path: cfg_path.clone(), reason };
    let text = std::fs::read_to_string(&cfg_path).map_err(|source| Error::Io { path: cfg_path.clone(), source })?;
    let cfg: Value = serde_json::from_str(&text).map_err(|source| Error::Json { path: cfg_path.clone(), source })?;
    if cfg["peft_type"] != "LORA" {
        return Err(bad(format!("peft_type {} is not supported (only LORA)", cfg["peft_type"])));
    }
    for (key, ok) in [("use_dora", Value::Bool(false)), ("fan_in_fan_out", Value::Bool(false))] {
        if !cfg[key].is_null() && cfg[key] != ok {
            return Err(bad(format!("{key} = {} is not supported", cfg[key])));
        }
    }
    if cfg["bias"].as_str().is_some_and(|b| b != "none") {
        return Err(bad(format!("bias = {} is not supported (only \"none\")", cfg["bias"])));
    }
    let r = cfg["r"].as_u64().ok_or_else(|| bad("`r` is missing or not an integer".into()))? as usize;
    let alpha = cfg["lora_alpha"].as_f64().ok_or_else(|| bad("`lora_alpha` is missing".into()))?;
    let targets = match &cfg["target_modules"] {
        Value::String(s) => LoraTargets::parse(s).map_err(bad)?,
        Value::Array(items) => {
            // PEFT saves `all-linear` resolved to module paths (`model.layers.0.self_attn.q_proj`):
            // the projection is the last part. Which layers carry an adapter is what the
            // weights hold.
            let mut names: Vec<&str> =
                items.iter().filter_map(Value::as_str).map(|n| n.rsplit('.').next().unwrap_or(n)).collect();
            names.sort_unstable();
            names.dedup();
            LoraTargets::parse(&names.join(",")).map_err(bad)?
        }
        other => return Err(bad(format!("target_modules {other} is not supported"))),
    };
    let config = LoraConfig {
        r,
        alpha,
        dropout: cfg["lora_dropout"].as_f64().unwrap_or(0.0),
        targets,
        use_rslora: cfg["use_rslora"].as_bool().unwrap_or(false),
    };
    let weights_path = folder.join(WEIGHTS);
    let wbad = |reason: String| Error::Adapter { path: weights_path.clone(), reason };
    let mut tensors: std::collections::HashMap<String, (Vec<usize>, Vec<f32>)> =
        load_tensor_file(&weights_path)?.into_iter().map(|(k, s, v)| (k, (s, v))).collect();
    let mut problem = None;
    let model = model.no_grad().map_projections(|prefix, _, proj| {
        let key = |part: &str| format!("base_model.model.{prefix}.{part}.weight");
        let (Some(a), Some(b)) = (tensors.remove(&key("lora_A")), tensors.remove(&key("lora_B"))) else {
            return proj;
        };
        let [d_in, d_out] = proj.linear.weight.dims();
        if a.0 != [r, d_in] || b.0 != [d_out, r] {
            problem.get_or_insert(format!(
                "{prefix}: lora_A {:?} / lora_B {:?} do not fit r = {r} and weight [{d_out}, {d_in}]",
                a.0, b.0
            ));
            return proj;
        }
        let device = proj.linear.weight.device();
        let adapter = config.adapter_from(transpose(&a.1, r, d_in), transpose(&b.1, d_out, r), d_in, d_out, &device);
        Projection { lora: Some(adapter), ..proj }
    });
    if let Some(p) = problem {
        return Err(wbad(p));
    }
    if let Some(extra) = tensors.keys().next() {
        return Err(wbad(format!("tensor {extra} matches no projection of the model")));
    }
    Ok((model, config))
}

/// Writes `base` with its adapters merged (`W + scale · A B`) as a plain Hugging Face folder.
///
/// # Errors
/// As [`crate::save_model`].
pub fn merge_into_folder(
    model: TransformerLm,
    config: &DecoderConfig,
    source_folder: &Path,
    out: &Path,
    options: &crate::SaveOptions,
) -> Result<()> {
    crate::save_model(&model.merge_adapters(), config, Some(source_folder), out, options)
}
