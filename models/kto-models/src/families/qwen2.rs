//! Qwen2 (`Qwen2ForCausalLM`): Qwen2, Qwen2.5. Llama's layer with biases on q/k/v (none on o or
//! the MLP); sliding windows from `use_sliding_window` / `max_window_layers` or `layer_types`.

use super::{Arch, Family, Refusal, llama_like, qwen_windows};
use crate::config::{HfConfig, ModelFamily};

pub(crate) const FAMILY: Family =
    Family { family: ModelFamily::Qwen2, model_type: "qwen2", architecture: "Qwen2ForCausalLM", describe };

fn describe(hf: &HfConfig) -> Result<Arch, Refusal> {
    let mut arch = llama_like(hf, true, false, false);
    for (layer, window) in arch.layers.iter_mut().zip(qwen_windows(hf)?) {
        layer.sliding_window = window;
    }
    Ok(arch)
}
