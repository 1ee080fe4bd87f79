//! Mistral (`MistralForCausalLM`): Mistral 7B, Ministral, Nemo. Llama's layer without biases;
//! `sliding_window` on every layer (a query sees at most that many keys, itself included;
//! `null` on v0.2+ and Nemo means full attention); `head_dim` may be given (Nemo: 128).

use super::{Arch, Family, Refusal, llama_like};
use crate::config::{HfConfig, ModelFamily};

pub(crate) const FAMILY: Family =
    Family { family: ModelFamily::Mistral, model_type: "mistral", architecture: "MistralForCausalLM", describe };

fn describe(hf: &HfConfig) -> Result<Arch, Refusal> {
    let mut arch = llama_like(hf, false, false, false);
    for layer in &mut arch.layers {
        layer.sliding_window = hf.sliding_window;
    }
    Ok(arch)
}
