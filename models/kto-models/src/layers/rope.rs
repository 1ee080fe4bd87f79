//! Rotary position embeddings in Hugging Face's `rotate_half` layout.
//!
//! burn's `RotaryEncoding` rotates *interleaved* pairs `(x0, x1), (x2, x3), …`; Llama and Qwen2
//! checkpoints are trained with the two *halves* rotated against each other, so this module
//! computes the tables the way transformers does (f32 frequencies, `cat(freqs, freqs)`).

use burn::prelude::*;

use crate::config::RopeScaling;

/// Frequencies of the rotary embedding (no parameters; rebuilt from the config).
#[derive(Debug, Clone)]
pub struct RotaryEmbedding {
    head_dim: usize,
    theta: f64,
    scaling: RopeScaling,
}

/// `cos` and `sin` tables for a range of positions.
#[derive(Debug, Clone)]
pub struct RotaryTables {
    /// `[positions, head_dim]`
    pub cos: Tensor<2>,
    /// `[positions, head_dim]`
    pub sin: Tensor<2>,
}

impl RotaryEmbedding {
    /// Tables for `head_dim`-wide heads with base `theta` and the given scaling.
    pub fn new(head_dim: usize, theta: f64, scaling: RopeScaling) -> Self {
        Self { head_dim, theta, scaling }
    }

    /// The inverse frequencies, `[head_dim / 2]`, for a sequence of `seq_len` positions (only the
    /// dynamic scaling depends on it), as transformers' `*_compute_*_rope_parameters` compute
    /// them in f32.
    pub fn inv_freq(&self, seq_len: usize) -> Vec<f32> {
        let dim = self.head_dim;
        let base = match self.scaling {
            RopeScaling::Dynamic { factor, original_max_position_embeddings: orig } if seq_len > orig => {
                self.theta
                    * ((factor * seq_len as f64 / orig as f64) - (factor - 1.0)).powf(dim as f64 / (dim as f64 - 2.0))
            }
            _ => self.theta,
        };
        let base = base as f32;
        let inv: Vec<f32> = (0..dim).step_by(2).map(|i| 1.0 / base.powf(i as f32 / dim as f32)).collect();
        match self.scaling {
            RopeScaling::Linear { factor } => inv.iter().map(|f| f / factor as f32).collect(),
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                let (factor, low, high) = (factor as f32, low_freq_factor as f32, high_freq_factor as f32);
                let old = original_max_position_embeddings as f32;
                let low_freq_wavelen = old / low;
                let high_freq_wavelen = old / high;
                inv.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        if wavelen > low_freq_wavelen {
                            f / factor
                        } else if wavelen < high_freq_wavelen {
                            f
                        } else {
                            let smooth = (old / wavelen - low) / (high - low);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
            RopeScaling::Default | RopeScaling::Dynamic { .. } => inv,
        }
    }

    /// Tables for positions `start..start + len`; `total_len` is the full sequence length (for
    /// dynamic scaling).
    pub fn tables(&self, start: usize, len: usize, total_len: usize, device: &Device) -> RotaryTables {
        let inv = self.inv_freq(total_len);
        let half = inv.len();
        let mut cos = Vec::with_capacity(len * self.head_dim);
        let mut sin = Vec::with_capacity(len * self.head_dim);
        for pos in start..start + len {
            let freqs: Vec<f32> = inv.iter().map(|f| f * pos as f32).collect();
            for _ in 0..2 {
                cos.extend(freqs.iter().map(|x| x.cos()));
                sin.extend(freqs.iter().map(|x| x.sin()));
            }
        }
        debug_assert_eq!(cos.len(), len * 2 * half);
        RotaryTables {
            cos: Tensor::from_data(TensorData::new(cos, [len, self.head_dim]), device),
            sin: Tensor::from_data(TensorData::new(sin, [len, self.head_dim]), device),
        }
    }
}

impl RotaryTables {
    /// `x ⊙ cos + rotate_half(x) ⊙ sin`, with `rotate_half([a, b]) = [-b, a]` on the last axis.
    ///
    /// # Shapes
    /// - `x`: `[batch, n_heads, seq, head_dim]`, `seq` equal to the tables' positions
    /// - returns: same
    pub fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        let [batch, heads, seq, head_dim] = x.dims();
        let rotary = self.cos.dims()[1];
        if rotary < head_dim {
            // Partial rotary (Phi-3): the first `rotary` dimensions turn, the rest pass.
            let turned = self.apply(x.clone().slice([0..batch, 0..heads, 0..seq, 0..rotary]));
            let pass = x.slice([0..batch, 0..heads, 0..seq, rotary..head_dim]);
            return Tensor::cat(vec![turned, pass], 3);
        }
        let half = head_dim / 2;
        let first = x.clone().slice([0..batch, 0..heads, 0..seq, 0..half]);
        let second = x.clone().slice([0..batch, 0..heads, 0..seq, half..head_dim]);
        let rotated = Tensor::cat(vec![second.neg(), first], 3);
        let dtype = x.dtype();
        let cos = self.cos.clone().cast(dtype).unsqueeze_dims::<4>(&[0, 1]);
        let sin = self.sin.clone().cast(dtype).unsqueeze_dims::<4>(&[0, 1]);
        x * cos + rotated * sin
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_frequencies_are_theta_powers() {
        // head_dim 4, theta 10000: inv_freq = [1, 10000^-0.5 = 0.01]
        let rope = RotaryEmbedding::new(4, 10_000.0, RopeScaling::Default);
        let inv = rope.inv_freq(8);
        assert!((inv[0] - 1.0).abs() < 1e-7 && (inv[1] - 0.01).abs() < 1e-7, "{inv:?}");
        let linear = RotaryEmbedding::new(4, 10_000.0, RopeScaling::Linear { factor: 2.0 }).inv_freq(8);
        assert!((linear[1] - 0.005).abs() < 1e-7);
    }

    #[test]
    fn llama3_scaling_keeps_high_and_scales_low_frequencies() {
        // wavelen of f=1 is 2π < 8192/4: kept; f=1e-4 has wavelen 62832 > 8192: divided by 8.
        let rope = RotaryEmbedding::new(
            4,
            1e8,
            RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 8192,
            },
        );
        let inv = rope.inv_freq(8);
        assert!((inv[0] - 1.0).abs() < 1e-7);
        assert!((inv[1] - 1e-4 / 8.0).abs() < 1e-10, "{inv:?}");
    }

    #[test]
    fn dynamic_ntk_grows_the_base_past_the_trained_context() {
        // head_dim 4, theta 10000, factor 2, trained on 8 positions. Up to 8 positions: plain
        // frequencies. At 16: base = 10000 * (2*16/8 - 1)^(4/2) = 90000, inv_freq[1] = 90000^-0.5.
        let rope = RotaryEmbedding::new(
            4,
            10_000.0,
            RopeScaling::Dynamic { factor: 2.0, original_max_position_embeddings: 8 },
        );
        assert!((rope.inv_freq(8)[1] - 0.01).abs() < 1e-7);
        assert!((rope.inv_freq(16)[1] - 1.0 / 300.0).abs() < 1e-7, "{:?}", rope.inv_freq(16));
    }

    #[test]
    fn rotation_at_position_zero_is_identity() {
        let device = kto_testkit::device();
        let rope = RotaryEmbedding::new(4, 10_000.0, RopeScaling::Default);
        let x = Tensor::<4>::from_floats([[[[1.0, 2.0, 3.0, 4.0]]]], &device);
        let y = rope.tables(0, 1, 1, &device).apply(x.clone());
        y.into_data().assert_approx_eq::<f32>(&x.into_data(), kto_testkit::tolerance(kto_testkit::EXACT_MATH));
        // Position 1, head_dim 2 (one frequency, 1 rad): [a, b] -> [a cos1 - b sin1, b cos1 + a sin1]
        let rope = RotaryEmbedding::new(2, 10_000.0, RopeScaling::Default);
        let x = Tensor::<4>::from_floats([[[[1.0, 2.0]]]], &device);
        let y = rope.tables(1, 1, 2, &device).apply(x);
        let (c, s) = (1f32.cos(), 1f32.sin());
        y.into_data().assert_approx_eq::<f32>(
            &TensorData::new(vec![c - 2.0 * s, 2.0 * c + s], [1, 1, 1, 2]),
            kto_testkit::tolerance(kto_testkit::EXACT_MATH),
        );
    }
}
