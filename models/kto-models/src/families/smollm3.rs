//! SmolLM3 (`SmolLM3ForCausalLM`): Llama's layer where `no_rope_layers[i] == 0` marks a layer
//! without RoPE (NoPE); absent, every `no_rope_layer_interval`-th layer (default 4) is NoPE.
//! With `use_sliding_window`, the NoPE layers attend through `sliding_window`.

use super::{Arch, Family, Refusal, layer_type_windows, llama_like};
use crate::config::{HfConfig, ModelFamily};

pub(crate) const FAMILY: Family =
    Family { family: ModelFamily::SmolLM3, model_type: "smollm3", architecture: "SmolLM3ForCausalLM", describe };

fn describe(hf: &HfConfig) -> Result<Arch, Refusal> {
    let n = hf.num_hidden_layers;
    let rope: Vec<bool> = match &hf.no_rope_layers {
        Some(flags) if flags.len() == n => flags.iter().map(|&f| f != 0).collect(),
        Some(flags) => return Err(("no_rope_layers", format!("has {} entries for {n} layers", flags.len()))),
        None => {
            let interval = hf.no_rope_layer_interval.unwrap_or(4);
            if interval == 0 {
                return Err(("no_rope_layer_interval", "must be >= 1".into()));
            }
            (0..n).map(|i| (i + 1) % interval != 0).collect()
        }
    };
    let windows = match &hf.layer_types {
        Some(types) => layer_type_windows(types, n, hf.sliding_window)?,
        None => rope.iter().map(|&has_rope| hf.sliding_window.filter(|_| hf.use_sliding_window && !has_rope)).collect(),
    };
    let mut arch = llama_like(hf, hf.attention_bias, hf.attention_bias, hf.mlp_bias);
    for ((layer, rope), window) in arch.layers.iter_mut().zip(rope).zip(windows) {
        layer.rope = rope;
        layer.sliding_window = window;
    }
    Ok(arch)
}
