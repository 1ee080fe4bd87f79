//! A tiny [`CausalLm`] for kto-core's own tests: token embeddings, a causal running mean (so each
//! position depends on its prefix and never on later positions) and a linear head.

use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::prelude::*;

use crate::CausalLm;

#[derive(Module, Debug)]
pub(crate) struct TinyLm {
    pub(crate) embed_tokens: Embedding,
    pub(crate) lm_head: Linear,
}

impl TinyLm {
    /// Random weights (seeded through the device by the caller when needed).
    pub(crate) fn new(vocab: usize, d_model: usize, device: &Device) -> Self {
        Self {
            embed_tokens: EmbeddingConfig::new(vocab, d_model).init(device),
            lm_head: LinearConfig::new(d_model, vocab).init(device),
        }
    }

    /// A head that outputs all-zero logits (uniform next-token distribution).
    pub(crate) fn zeros(vocab: usize, d_model: usize, device: &Device) -> Self {
        Self {
            embed_tokens: EmbeddingConfig::new(vocab, d_model).init(device),
            lm_head: LinearConfig::new(d_model, vocab).with_initializer(burn::nn::Initializer::Zeros).init(device),
        }
    }
}

impl CausalLm for TinyLm {
    fn hidden_states(&self, input_ids: Tensor<2, Int>, _attention_mask: Tensor<2, Bool>) -> Tensor<3> {
        let [_, seq] = input_ids.dims();
        let device = input_ids.device();
        let embedded = self.embed_tokens.forward(input_ids); // [batch, seq, d_model]
        let counts = Tensor::<1, Int>::arange(1..seq as i64 + 1, &device).float().reshape([1, seq, 1]);
        embedded.cumsum(1) / counts
    }

    fn project(&self, hidden: Tensor<3>) -> Tensor<3> {
        self.lm_head.forward(hidden)
    }

    fn vocab_size(&self) -> usize {
        self.lm_head.weight.dims()[1]
    }
}
