//! LoRA as PEFT does it: each targeted projection `W` gains a trainable low-rank update,
//! `y = x W + scale · (x A) B` with `A` `[d_in, r]` (kaiming-uniform, seeded) and `B` `[r, d_out]`
//! (zeros), `scale = lora_alpha / r` (or `/ √r` with rsLoRA); the base weights are frozen. The
//! same module without its adapters is the reference model: no second copy of the weights.

use std::ops::Deref;

use burn::module::Param;
use burn::nn::Linear;
use burn::prelude::*;
use kto_core::SplitMix64;

/// One low-rank adapter.
#[derive(Module, Debug)]
pub struct LoraAdapter {
    /// `A`, `[d_in, r]` (PEFT's `lora_A.weight` transposed).
    pub a: Param<Tensor<2>>,
    /// `B`, `[r, d_out]` (PEFT's `lora_B.weight` transposed).
    pub b: Param<Tensor<2>>,
    /// `lora_alpha / r` (rsLoRA: `lora_alpha / √r`).
    #[module(skip)]
    pub scale: f64,
}

impl LoraAdapter {
    /// `scale · (x A) B`.
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, d_in]` → `[batch, seq, d_out]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, s, d_in] = x.dims();
        let d_out = self.b.dims()[1];
        let h = x.reshape([b * s, d_in]).matmul(self.a.val()).matmul(self.b.val());
        (h * self.scale).reshape([b, s, d_out])
    }
}

/// A projection of the decoder: a linear layer and, under LoRA, its adapter. Dereferences to the
/// linear layer, whose weights keep the checkpoint layout.
#[derive(Module, Debug)]
pub struct Projection {
    /// The (frozen under LoRA) linear layer.
    pub linear: Linear,
    /// The adapter, when this projection is targeted.
    pub lora: Option<LoraAdapter>,
}

impl From<Linear> for Projection {
    fn from(linear: Linear) -> Self {
        Self { linear, lora: None }
    }
}

impl Deref for Projection {
    type Target = Linear;
    fn deref(&self) -> &Linear {
        &self.linear
    }
}

impl Projection {
    /// `x W (+ bias) + scale · (x A) B`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        match &self.lora {
            None => self.linear.forward(x),
            Some(adapter) => self.linear.forward(x.clone()) + adapter.forward(x),
        }
    }

    /// The weight with the adapter merged in: `W + scale · A B` (`[d_in, d_out]`).
    pub fn merged_weight(&self) -> Tensor<2> {
        let w = self.linear.weight.val();
        match &self.lora {
            None => w,
            Some(adapter) => w + adapter.a.val().matmul(adapter.b.val()) * adapter.scale,
        }
    }
}

/// Which projections get adapters (PEFT's `target_modules`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoraTargets {
    /// These module names (`q_proj`, `v_proj`, ...).
    Names(Vec<String>),
    /// PEFT's `all-linear`: every projection of every layer (never `lm_head`).
    AllLinear,
}

impl LoraTargets {
    /// Parses `q_proj,v_proj` or `all-linear`.
    ///
    /// # Errors
    /// A message naming an unknown module.
    pub fn parse(spec: &str) -> Result<Self, String> {
        if spec == "all-linear" {
            return Ok(Self::AllLinear);
        }
        let names: Vec<String> = spec.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
        for n in &names {
            if !PROJECTIONS.contains(&n.as_str()) {
                return Err(format!(
                    "unknown LoRA target module \"{n}\" (expected all-linear or some of {})",
                    PROJECTIONS.join(", ")
                ));
            }
        }
        if names.is_empty() {
            return Err("no LoRA target modules".into());
        }
        Ok(Self::Names(names))
    }

    /// Whether projection `name` is targeted.
    pub fn includes(&self, name: &str) -> bool {
        match self {
            Self::AllLinear => true,
            Self::Names(n) => n.iter().any(|x| x == name),
        }
    }

    /// PEFT's `target_modules` value.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Self::AllLinear => serde_json::Value::String("all-linear".into()),
            Self::Names(n) => serde_json::json!(n),
        }
    }
}

/// The projections of a decoder layer, by their checkpoint names.
pub const PROJECTIONS: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

/// LoRA settings (PEFT's `LoraConfig` names).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    /// `r`.
    pub r: usize,
    /// `lora_alpha`.
    pub alpha: f64,
    /// `lora_dropout` (TRL's `disable_dropout` zeroes it, so it is recorded, not applied).
    pub dropout: f64,
    /// `target_modules`.
    pub targets: LoraTargets,
    /// `use_rslora`: scale by `alpha / √r` instead of `alpha / r`.
    pub use_rslora: bool,
}

impl LoraConfig {
    /// The adapter scale.
    pub fn scale(&self) -> f64 {
        if self.use_rslora { self.alpha / (self.r as f64).sqrt() } else { self.alpha / self.r as f64 }
    }

    /// A new adapter for a `[d_in, d_out]` weight, initialised as PEFT does: `A` kaiming-uniform
    /// (`a = √5`, so `U(−1/√d_in, 1/√d_in)`), `B` zero. Values come from `rng`, so they are the
    /// same on every backend.
    pub fn init_adapter(&self, d_in: usize, d_out: usize, rng: &mut SplitMix64, device: &Device) -> LoraAdapter {
        let bound = 1.0 / (d_in as f64).sqrt();
        // PEFT draws lora_A.weight as [r, d_in]; kto stores A = lora_A.weightᵀ.
        let drawn: Vec<f32> = (0..self.r * d_in).map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32).collect();
        let mut a = vec![0.0f32; d_in * self.r];
        for i in 0..self.r {
            for j in 0..d_in {
                a[j * self.r + i] = drawn[i * d_in + j];
            }
        }
        self.adapter_from(a, vec![0.0; self.r * d_out], d_in, d_out, device)
    }

    /// An adapter with the given `A` (`[d_in, r]`, row-major) and `B` (`[r, d_out]`).
    pub fn adapter_from(&self, a: Vec<f32>, b: Vec<f32>, d_in: usize, d_out: usize, device: &Device) -> LoraAdapter {
        let f32_ = (device, burn::tensor::DType::F32);
        LoraAdapter {
            a: Param::from_tensor(Tensor::from_data(TensorData::new(a, [d_in, self.r]), f32_)),
            b: Param::from_tensor(Tensor::from_data(TensorData::new(b, [self.r, d_out]), f32_)),
            scale: self.scale(),
        }
    }
}
