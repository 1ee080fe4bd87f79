//! RMSNorm as transformers' families compute it.

use burn::prelude::*;
use burn::tensor::FloatDType;

use crate::config::NormScale;

/// Configuration of an [`RmsNorm`].
#[derive(Config, Debug)]
pub struct RmsNormConfig {
    /// Width of the normalised axis, `d_model`.
    pub d_model: usize,
    /// Added to the mean square (HF: `rms_norm_eps`).
    #[config(default = 1e-6)]
    pub epsilon: f64,
}

impl RmsNormConfig {
    /// A norm with unit scale on `device`.
    pub fn init(&self, device: &Device) -> RmsNorm {
        RmsNorm {
            weight: burn::module::Param::from_tensor(Tensor::ones([self.d_model], device)),
            epsilon: self.epsilon,
            scale: NormScale::AfterCast,
        }
    }
}

/// `weight ⊙ x / sqrt(mean(x²) + ε)`, reduced in f32 and cast back to the input dtype before the
/// scale (transformers' `LlamaRMSNorm`, [`NormScale::AfterCast`]) or after it (`Olmo2RMSNorm`,
/// [`NormScale::BeforeCast`]; `Gemma2RMSNorm` with `1 + weight`, [`NormScale::OffsetBeforeCast`]). The field is named `weight`, like the checkpoint key.
#[derive(Module, Debug)]
pub struct RmsNorm {
    /// The learned scale. `[d_model]`
    pub weight: burn::module::Param<Tensor<1>>,
    /// ε.
    pub epsilon: f64,
    /// Where the weight is applied relative to the cast back.
    #[module(skip)]
    pub scale: NormScale,
}

impl RmsNorm {
    /// # Shapes
    /// - `x`: `[batch, seq, d_model]`
    /// - returns: `[batch, seq, d_model]`
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let dtype = FloatDType::from(x.dtype());
        let x32 = x.cast(FloatDType::F32);
        let variance = x32.clone().square().mean_dim(2); // [batch, seq, 1]
        let normed = x32 * (variance + self.epsilon).sqrt().recip();
        let weight = self.weight.val().unsqueeze_dims::<3>(&[0, 1]);
        match self.scale {
            NormScale::AfterCast => normed.cast(dtype) * weight,
            NormScale::BeforeCast => (normed * weight.cast(FloatDType::F32)).cast(dtype),
            NormScale::OffsetBeforeCast => (normed * (weight.cast(FloatDType::F32) + 1.0)).cast(dtype),
        }
    }

    /// The same norm applying its weight as `scale` says.
    pub fn with_scale(self, scale: NormScale) -> Self {
        Self { scale, ..self }
    }
}
