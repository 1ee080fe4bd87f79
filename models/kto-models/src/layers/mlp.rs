//! The gated feed-forward block: SwiGLU (Llama, Qwen, Mistral, ...) or GeGLU (Gemma).

use burn::nn::LinearConfig;
use burn::prelude::*;
use burn::tensor::activation::silu;

use super::lora::Projection;
use crate::config::Activation;

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
            gate_proj: Some(proj(self.d_model, self.d_ff)),
            up_proj: Some(proj(self.d_model, self.d_ff)),
            gate_up_proj: None,
            down_proj: proj(self.d_ff, self.d_model),
            activation: Activation::Silu,
        }
    }
}

/// `down_proj(act(gate_proj(x)) ⊙ up_proj(x))`, `act` SiLU (Llama) or GELU's tanh form (Gemma).
#[derive(Module, Debug)]
pub struct Mlp {
    /// `[d_model, d_ff]` (burn layout; the checkpoint stores `[d_ff, d_model]`).
    pub gate_proj: Option<Projection>,
    /// `[d_model, d_ff]`.
    pub up_proj: Option<Projection>,
    /// Phi-3's fused projection, `[d_model, 2 d_ff]`, columns `[gate | up]`.
    pub gate_up_proj: Option<Projection>,
    /// `[d_ff, d_model]`.
    pub down_proj: Projection,
    /// The gate's activation (SwiGLU or GeGLU).
    #[module(skip)]
    pub activation: Activation,
}

impl Mlp {
    /// # Shapes
    /// - `x`: `[batch, seq, d_model]`
    /// - returns: `[batch, seq, d_model]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let (gate, up) = match (&self.gate_up_proj, &self.gate_proj, &self.up_proj) {
            (Some(fused), ..) => {
                let [batch, seq, _] = x.dims();
                let out = fused.forward(x); // [batch, seq, 2 d_ff]
                let d_ff = out.dims()[2] / 2;
                let part = |from: usize| out.clone().slice([0..batch, 0..seq, from..from + d_ff]);
                (part(0), part(d_ff))
            }
            (None, Some(gate), Some(up)) => (gate.forward(x.clone()), up.forward(x)),
            _ => unreachable!("an MLP has gate/up projections or a fused gate_up_proj"),
        };
        let gate = match self.activation {
            Activation::Silu => silu(gate),
            Activation::GeluTanh => gelu_tanh(gate),
        };
        self.down_proj.forward(gate * up)
    }
}

/// torch's `gelu(x, approximate="tanh")`: `x/2 · (1 + tanh(√(2/π) · (x + 0.044715 x³)))`.
fn gelu_tanh(x: Tensor<3>) -> Tensor<3> {
    let cube = x.clone() * x.clone() * x.clone();
    let inner = (x.clone() + cube * 0.044715) * (2.0 / std::f64::consts::PI).sqrt();
    x.clone() * 0.5 * (inner.tanh() + 1.0)
}
