//! Text generation: greedy and temperature / top-k / top-p sampling, with or without a KV cache.

use std::path::Path;

use burn::prelude::*;
use kto_core::{CausalLm, SplitMix64};
use serde_json::Value;

use crate::decoder::{KvCache, TransformerLm};
use crate::error::{Error, Result};

/// How [`generate`] picks tokens. Field names follow transformers' `GenerationConfig`.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// Stop after this many new tokens.
    pub max_new_tokens: usize,
    /// Sample (`true`) or take the most likely token (`false`, greedy).
    pub do_sample: bool,
    /// Logits are divided by it before sampling.
    pub temperature: f64,
    /// Keep only the `k` most likely tokens (0 = off).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `p` (1.0 = off).
    pub top_p: f64,
    /// Seed of the sampler.
    pub seed: u64,
    /// Generation stops after any of these (config `eos_token_id` and `generation_config.json`).
    pub eos_token_ids: Vec<u32>,
    /// Reuse keys and values of earlier positions (`use_cache`); `false` recomputes the whole
    /// prefix at every step.
    pub use_cache: bool,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 64,
            do_sample: false,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
            eos_token_ids: vec![],
            use_cache: true,
        }
    }
}

impl GenerationConfig {
    /// Defaults of a model folder: `generation_config.json` (sampling settings and EOS ids) on
    /// top of the model config's EOS ids.
    ///
    /// # Errors
    /// I/O or JSON errors naming `generation_config.json` when it exists but cannot be read.
    pub fn from_folder(folder: &Path, config_eos: &[u32]) -> Result<Self> {
        let mut out = Self { eos_token_ids: config_eos.to_vec(), ..Self::default() };
        let path = folder.join("generation_config.json");
        if !path.is_file() {
            return Ok(out);
        }
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Io { path: path.clone(), source })?;
        let value: Value = serde_json::from_str(&text).map_err(|source| Error::Json { path, source })?;
        match value.get("eos_token_id") {
            Some(Value::Number(n)) => out.eos_token_ids = n.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
            Some(Value::Array(ids)) => {
                out.eos_token_ids = ids.iter().filter_map(Value::as_u64).map(|v| v as u32).collect()
            }
            _ => {}
        }
        if let Some(v) = value.get("do_sample").and_then(Value::as_bool) {
            out.do_sample = v;
        }
        if let Some(v) = value.get("temperature").and_then(Value::as_f64) {
            out.temperature = v;
        }
        if let Some(v) = value.get("top_k").and_then(Value::as_u64) {
            out.top_k = v as usize;
        }
        if let Some(v) = value.get("top_p").and_then(Value::as_f64) {
            out.top_p = v;
        }
        Ok(out)
    }
}

/// Continues `prompt` and returns the new tokens only (ending with the EOS token when one was
/// produced).
///
/// # Panics
/// When `prompt` is empty.
pub fn generate(model: &TransformerLm, prompt: &[u32], config: &GenerationConfig, device: &Device) -> Vec<u32> {
    assert!(!prompt.is_empty(), "generation needs at least one prompt token");
    let mut rng = SplitMix64::new(config.seed);
    let mut tokens: Vec<u32> = prompt.to_vec();
    let mut cache = KvCache::new();
    let mut new = Vec::new();
    while new.len() < config.max_new_tokens {
        let logits = if config.use_cache {
            let fresh = if cache.is_empty() { &tokens[..] } else { &tokens[tokens.len() - 1..] };
            last_logits(model, fresh, tokens.len(), Some(&mut cache), device)
        } else {
            last_logits(model, &tokens, tokens.len(), None, device)
        };
        let next = pick(&logits, config, &mut rng);
        tokens.push(next);
        new.push(next);
        if config.eos_token_ids.contains(&next) {
            break;
        }
    }
    new
}

/// Next-token logits after feeding `fresh` (the last `fresh.len()` of `total` tokens).
fn last_logits(
    model: &TransformerLm,
    fresh: &[u32],
    total: usize,
    cache: Option<&mut KvCache>,
    device: &Device,
) -> Vec<f32> {
    let n = fresh.len();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(fresh.iter().map(|&t| t as i64).collect(), [1, n]), device);
    let mask = Tensor::<2, Bool>::from_data(TensorData::new(vec![true; total], [1, total]), device);
    let hidden = model.forward_hidden(ids, mask, cache); // [1, n, d_model]
    let [_, _, d] = hidden.dims();
    let last = hidden.slice([0..1, n - 1..n, 0..d]);
    model.project(last).into_data().convert::<f32>().iter::<f32>().collect()
}

/// transformers' order: temperature, then top-k, then top-p, then sampling (or argmax).
fn pick(logits: &[f32], config: &GenerationConfig, rng: &mut SplitMix64) -> u32 {
    if !config.do_sample {
        // First index of the maximum, like torch.argmax.
        let mut best = 0;
        for (i, &v) in logits.iter().enumerate() {
            if v > logits[best] {
                best = i;
            }
        }
        return best as u32;
    }
    let temperature = config.temperature.max(1e-6);
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    if config.top_k > 0 {
        order.truncate(config.top_k);
    }
    let max = f64::from(logits[order[0]]) / temperature;
    let mut probs: Vec<f64> = order.iter().map(|&i| (f64::from(logits[i]) / temperature - max).exp()).collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if config.top_p < 1.0 {
        // Keep tokens until the cumulative probability reaches top_p (at least one).
        let mut cumulative = 0.0;
        let mut keep = 0;
        for p in &probs {
            keep += 1;
            cumulative += p;
            if cumulative >= config.top_p {
                break;
            }
        }
        order.truncate(keep);
        probs.truncate(keep);
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
    }
    let draw = rng.next_f64();
    let mut cumulative = 0.0;
    for (&i, p) in order.iter().zip(&probs) {
        cumulative += p;
        if draw < cumulative {
            return i as u32;
        }
    }
    *order.last().expect("at least one candidate") as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum_and_top_k_one_is_greedy() {
        let config = GenerationConfig::default();
        let mut rng = SplitMix64::new(0);
        assert_eq!(pick(&[0.1, 2.0, 2.0, -1.0], &config, &mut rng), 1);
        let sampled = GenerationConfig { do_sample: true, top_k: 1, ..GenerationConfig::default() };
        for _ in 0..10 {
            assert_eq!(pick(&[0.1, 2.0, 1.9, -1.0], &sampled, &mut rng), 1);
        }
        // top_p 0.5 with one token holding 0.88 of the mass keeps only that token.
        let nucleus = GenerationConfig { do_sample: true, top_p: 0.5, ..GenerationConfig::default() };
        for _ in 0..10 {
            assert_eq!(pick(&[0.0, 3.0, 0.0, 0.0], &nucleus, &mut rng), 1);
        }
    }
}
