//! LoRA as PEFT does it: each targeted projection `W` gains a trainable low-rank update,
//! `y = x W + scale · (x A) B` with `A` `[d_in, r]` (kaiming-uniform, seeded) and `B` `[r, d_out]`
//! (zeros), `scale = lora_alpha / r` (or `/ √r` with rsLoRA); the base weights are frozen. The
//! same module without its adapters is the reference model: no second copy of the weights.

use std::ops::Deref;

use burn::module::Param;
use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::FloatDType;
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
    /// The dropout applied to the adapter's input while training (PEFT's `lora_dropout`; 0:
    /// none). Only the autodiff forward drops: evaluation, the reference and the KL passes on
    /// the plain device see every input, as `model.eval()` / `no_grad` passes in PEFT do not.
    #[module(skip)]
    pub dropout: f64,
}

impl LoraAdapter {
    /// `scale · (x A) B`.
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, d_in]` → `[batch, seq, d_out]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, s, d_in] = x.dims();
        let d_out = self.b.dims()[1];
        let x = if self.dropout > 0.0 && x.device().is_autodiff() {
            let keep = 1.0 - self.dropout;
            let mask = x.random_like(burn::tensor::Distribution::Bernoulli(keep));
            x * mask / keep
        } else {
            x
        };
        let h = x.reshape([b * s, d_in]).matmul(self.a.val()).matmul(self.b.val());
        (h * self.scale).reshape([b, s, d_out])
    }

    /// [`Self::forward`] with `A` and `B` cast to `dtype` (the input already is).
    fn forward_in(&self, x: Tensor<3>, dtype: FloatDType) -> Tensor<3> {
        let cast = |p: &Param<Tensor<2>>| Param::from_tensor(p.val().cast(dtype));
        let adapter = LoraAdapter { a: cast(&self.a), b: cast(&self.b), scale: self.scale, dropout: self.dropout };
        adapter.forward(x)
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
    /// Mixed precision: the matmul runs on inputs and weights cast to this dtype (the weights
    /// stay as they are, f32 masters), and the output is cast back, as under torch's autocast.
    #[module(skip)]
    pub compute: Option<FloatDType>,
}

impl From<Linear> for Projection {
    fn from(linear: Linear) -> Self {
        Self { linear, lora: None, compute: None }
    }
}

impl Deref for Projection {
    type Target = Linear;
    fn deref(&self) -> &Linear {
        &self.linear
    }
}

/// `x W (+ bias)` over the rows of `x`, its batch and sequence axes folded into one. Left 3-D,
/// burn broadcasts the weight over the batch (when the sequence fills its row tiles) and the
/// backward forms the weight's gradient as one product per row, summed afterwards: `batch`
/// weight-sized temporaries per projection (4 x 1.4 GB per backward at 0.5B parameters, all
/// of them fresh pages). Folded, the gradient is one `[d_in, rows] @ [rows, d_out]` product.
///
/// # Shapes
/// - `x`: `[batch, seq, d_in]`, `weight`: `[d_in, d_out]`, `bias`: `[d_out]`
/// - returns: `[batch, seq, d_out]`
pub(crate) fn linear_rows(x: Tensor<3>, weight: Tensor<2>, bias: Option<Tensor<1>>) -> Tensor<3> {
    let [batch, seq, d_in] = x.dims();
    let d_out = weight.dims()[1];
    burn::tensor::module::linear(x.reshape([batch * seq, d_in]), weight, bias).reshape([batch, seq, d_out])
}

impl Projection {
    /// `x W (+ bias) + scale · (x A) B`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        if let Some(dtype) = self.compute {
            return self.forward_in(x, dtype);
        }
        let base = |x| linear_rows(x, self.linear.weight.val(), self.linear.bias.as_ref().map(|b| b.val()));
        match &self.lora {
            None => base(x),
            Some(adapter) => base(x.clone()) + adapter.forward(x),
        }
    }

    /// [`Self::forward`] with the input, weights and bias cast to `dtype` for the matmuls (the
    /// adapter's too) and the output cast back to the input's dtype.
    fn forward_in(&self, x: Tensor<3>, dtype: FloatDType) -> Tensor<3> {
        let out = FloatDType::from(x.dtype());
        let x = x.cast(dtype);
        let weight = self.linear.weight.val().cast(dtype);
        let bias = self.linear.bias.as_ref().map(|b| b.val().cast(dtype));
        let mut y = linear_rows(x.clone(), weight, bias);
        if let Some(adapter) = &self.lora {
            y = y + adapter.forward_in(x, dtype);
        }
        y.cast(out)
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

impl std::str::FromStr for LoraTargets {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse(s)
    }
}

impl std::fmt::Display for LoraTargets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::AllLinear => f.write_str("all-linear"),
            Self::Names(n) => f.write_str(&n.join(",")),
        }
    }
}

/// As PEFT writes `target_modules`: `"all-linear"` or a list of names.
impl serde::Serialize for LoraTargets {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::AllLinear => serializer.serialize_str("all-linear"),
            Self::Names(n) => n.serialize(serializer),
        }
    }
}

/// `"all-linear"`, a comma-separated string (`"q_proj,v_proj"`) or a list of names.
impl<'de> serde::Deserialize<'de> for LoraTargets {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Self::parse(&kto_core::text_or_list(deserializer)?).map_err(serde::de::Error::custom)
    }
}

/// The projections of a decoder layer, by their checkpoint names.
/// (`qkv_proj` and `gate_up_proj` are Phi-3's fused ones.)
pub const PROJECTIONS: [&str; 9] =
    ["q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj", "gate_proj", "up_proj", "gate_up_proj", "down_proj"];

/// LoRA settings (PEFT's `LoraConfig` names).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    /// `r`.
    pub r: usize,
    /// `lora_alpha`.
    pub alpha: f64,
    /// `lora_dropout`, saved in `adapter_config.json`; applied in training only when TRL's
    /// `disable_dropout` is false ([`crate::TransformerLm::with_lora_dropout`]), as TRL zeroes
    /// every dropout module, PEFT's included, by default.
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
            dropout: 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `lora_dropout` drops adapter inputs in training (autodiff) forwards only: evaluation,
    /// reference and KL passes on the plain device see every input.
    #[test]
    fn dropout_applies_to_training_forwards_only() {
        let plain = kto_testkit::device();
        let train = plain.clone().autodiff();
        let config = LoraConfig {
            r: 2,
            alpha: 2.0,
            dropout: 0.5,
            targets: LoraTargets::parse("q_proj").expect("targets"),
            use_rslora: false,
        };
        let (d_in, d_out) = (64, 3);
        let a: Vec<f32> = (0..d_in * 2).map(|i| ((i % 7) as f32 - 3.0) / 10.0).collect();
        let b: Vec<f32> = (0..2 * d_out).map(|i| (i as f32 + 1.0) / 4.0).collect();
        let x = |device: &Device| Tensor::<3>::ones([1, 4, d_in], device);
        let host = |t: Tensor<3>| t.into_data().convert::<f32>().try_to_vec::<f32>().expect("f32");
        for device in [&plain, &train] {
            let off = config.adapter_from(a.clone(), b.clone(), d_in, d_out, device);
            let on = LoraAdapter { dropout: config.dropout, ..off.clone() };
            let (kept, dropped) = (host(off.forward(x(device))), host(on.forward(x(device))));
            if device.is_autodiff() {
                assert_ne!(kept, dropped, "a training forward drops inputs");
            } else {
                assert_eq!(kept, dropped, "a plain forward sees every input");
            }
        }
    }
}
