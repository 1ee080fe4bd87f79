//! The SwiGLU feed-forward block of Llama and Qwen2.

use burn::nn::LinearConfig;
use burn::prelude::*;
use burn::tensor::activation::silu;

use super::lora::Projection;

/// Configuration of an [`Mlp`].
#[derive(Config, Debug)]
pub struct MlpConfig {
    /// `d_model` (HF: `hidden_size`).
    pub d_model: usize,
    /// `d_ff` (HF: `intermediate_size`).
    pub d_ff: usize,
    /// Biases on the three projections (Llama's `mlp_bias`).
    #[config(default = false)]
    pub bias: bool,
}

impl MlpConfig {
    /// A randomly initialised block on `device`.
    pub fn init(&self, device: &Device) -> Mlp {
        let proj = |d_in, d_out| Projection::from(LinearConfig::new(d_in, d_out).with_bias(self.bias).init(device));
        Mlp {
            gate_proj: proj(self.d_model, self.d_ff),
            up_proj: proj(self.d_model, self.d_ff),
            down_proj: proj(self.d_ff, self.d_model),
        }
    }
}

/// `down_proj(silu(gate_proj(x)) ⊙ up_proj(x))`.
#[derive(Module, Debug)]
pub struct Mlp {
    /// `[d_model, d_ff]` (burn layout; the checkpoint stores `[d_ff, d_model]`).
    pub gate_proj: Projection,
    /// `[d_model, d_ff]`.
    pub up_proj: Projection,
    /// `[d_ff, d_model]`.
    pub down_proj: Projection,
}

impl Mlp {
    /// # Shapes
    /// - `x`: `[batch, seq, d_model]`
    /// - returns: `[batch, seq, d_model]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let gate = silu(self.gate_proj.forward(x.clone()));
        self.down_proj.forward(gate * self.up_proj.forward(x))
    }
}
