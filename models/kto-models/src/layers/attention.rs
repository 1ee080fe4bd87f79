//! Grouped-query self-attention with rotary positions, causal + padding masks and a KV cache.

use burn::nn::LinearConfig;
use burn::prelude::*;
use burn::tensor::FloatDType;

use super::RotaryTables;
use super::lora::Projection;

/// Configuration of an [`Attention`] block.
#[derive(Config, Debug)]
pub struct AttentionConfig {
    /// `d_model`.
    pub d_model: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads; `n_heads` must be a multiple (1 = multi-query).
    pub n_kv_heads: usize,
    /// Per-head width.
    pub head_dim: usize,
    /// Biases on q/k/v (Qwen2; Llama's `attention_bias`).
    #[config(default = false)]
    pub qkv_bias: bool,
    /// Bias on the output projection (Llama's `attention_bias`).
    #[config(default = false)]
    pub o_bias: bool,
}

impl AttentionConfig {
    /// A randomly initialised block on `device`.
    ///
    /// # Panics
    /// When `n_heads` is not a multiple of `n_kv_heads`.
    pub fn init(&self, device: &Device) -> Attention {
        assert!(
            self.n_kv_heads > 0 && self.n_heads.is_multiple_of(self.n_kv_heads),
            "n_heads must be a multiple of n_kv_heads"
        );
        let proj = |d_in, d_out, bias| Projection::from(LinearConfig::new(d_in, d_out).with_bias(bias).init(device));
        Attention {
            q_proj: proj(self.d_model, self.n_heads * self.head_dim, self.qkv_bias),
            k_proj: proj(self.d_model, self.n_kv_heads * self.head_dim, self.qkv_bias),
            v_proj: proj(self.d_model, self.n_kv_heads * self.head_dim, self.qkv_bias),
            o_proj: proj(self.n_heads * self.head_dim, self.d_model, self.o_bias),
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
        }
    }
}

/// Self-attention of one decoder layer. Field names match the checkpoint (`self_attn.q_proj`, …).
#[derive(Module, Debug)]
pub struct Attention {
    /// `[d_model, n_heads · head_dim]`
    pub q_proj: Projection,
    /// `[d_model, n_kv_heads · head_dim]`
    pub k_proj: Projection,
    /// `[d_model, n_kv_heads · head_dim]`
    pub v_proj: Projection,
    /// `[n_heads · head_dim, d_model]`
    pub o_proj: Projection,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Per-head width.
    pub head_dim: usize,
}

/// Keys and values of the positions seen so far, for one layer.
#[derive(Debug, Clone)]
pub struct LayerCache {
    /// `[batch, n_kv_heads, past, head_dim]`
    pub keys: Tensor<4>,
    /// `[batch, n_kv_heads, past, head_dim]`
    pub values: Tensor<4>,
}

impl Attention {
    /// Attention over `x` (the new positions) and the cached past, if any.
    ///
    /// Key `j` is hidden from query `i` when it lies in the future (`j > past + i`) or is padding
    /// (`key_mask[j] == false`); a query always sees itself, so all-padding rows stay finite.
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, d_model]`, the new positions
    /// - `rope`: tables for positions `past..past + seq`
    /// - `key_mask`: `[batch, past + seq]`, `true` on real tokens
    /// - `cache`: updated in place with this call's keys and values when given
    /// - returns: `[batch, seq, d_model]`
    pub fn forward(
        &self,
        x: Tensor<3>,
        rope: &RotaryTables,
        key_mask: Tensor<2, Bool>,
        cache: Option<&mut Option<LayerCache>>,
    ) -> Tensor<3> {
        let [batch, seq, _] = x.dims();
        let (h, kvh, hd) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let heads = |t: Tensor<3>, n: usize| t.reshape([batch, seq, n, hd]).swap_dims(1, 2); // [batch, n, seq, head_dim]
        let q = rope.apply(heads(self.q_proj.forward(x.clone()), h));
        let k = rope.apply(heads(self.k_proj.forward(x.clone()), kvh));
        let v = heads(self.v_proj.forward(x), kvh);

        let (k, v) = match cache {
            Some(slot) => {
                let (k, v) = match slot.take() {
                    Some(past) => (Tensor::cat(vec![past.keys, k], 2), Tensor::cat(vec![past.values, v], 2)),
                    None => (k, v),
                };
                *slot = Some(LayerCache { keys: k.clone(), values: v.clone() });
                (k, v)
            }
            None => (k, v),
        };
        let total = k.dims()[2];
        let past = total - seq;
        burn::tensor::debug_assert_shape!(key_mask, [batch, total]);

        let repeat = |t: Tensor<4>| {
            if h == kvh {
                t
            } else {
                t.unsqueeze_dim::<5>(2).expand([batch, kvh, h / kvh, total, hd]).reshape([batch, h, total, hd])
            }
        };
        let (k, v) = (repeat(k), repeat(v)); // [batch, n_heads, total, head_dim]

        let dtype = q.dtype();
        let scores = q.matmul(k.swap_dims(2, 3)).cast(FloatDType::F32) * (1.0 / (hd as f64).sqrt()); // [batch, n_heads, seq, total]
        let masked = attention_mask(key_mask, seq, past).expand([batch, h, seq, total]);
        let probs = softmax_last(scores.mask_fill(masked, f32::NEG_INFINITY)).cast(dtype);
        let context = probs.matmul(v).swap_dims(1, 2).reshape([batch, seq, h * hd]); // [batch, seq, n_heads · head_dim]
        self.o_proj.forward(context)
    }
}

/// Softmax over the last axis from primitive ops (`exp(x - max) / Σ exp(x - max)`, the max
/// detached).
///
/// Not burn's `activation::softmax`: flex has a fused softmax kernel that the autodiff backend
/// does not forward to (it runs these same primitive ops instead), so the policy's forward under
/// autodiff and the reference's plain forward would round differently, and a policy equal to its
/// reference would log a KL of ~1e-6 instead of TRL's exact 0. Every primitive here runs the same
/// kernel with and without autodiff.
fn softmax_last(scores: Tensor<4>) -> Tensor<4> {
    let max = scores.clone().detach().max_dim(3); // [batch, n_heads, seq, 1]
    let exp = (scores - max).exp();
    let sum = exp.clone().sum_dim(3);
    exp / sum
}

/// `true` where a key must be hidden: `[batch, 1, seq, past + seq]`.
fn attention_mask(key_mask: Tensor<2, Bool>, seq: usize, past: usize) -> Tensor<4, Bool> {
    let [batch, total] = key_mask.dims();
    let device = key_mask.device();
    let mut future = Vec::with_capacity(seq * total);
    let mut diagonal = Vec::with_capacity(seq * total);
    for i in 0..seq {
        for j in 0..total {
            future.push(j > past + i);
            diagonal.push(j == past + i);
        }
    }
    let future =
        Tensor::<2, Bool>::from_data(TensorData::new(future, [seq, total]), &device).reshape([1, 1, seq, total]);
    let diagonal =
        Tensor::<2, Bool>::from_data(TensorData::new(diagonal, [seq, total]), &device).reshape([1, 1, seq, total]);
    let padding = key_mask.bool_not().reshape([batch, 1, 1, total]).expand([batch, 1, seq, total]);
    let padding = padding.bool_and(diagonal.expand([batch, 1, seq, total]).bool_not());
    padding.bool_or(future.expand([batch, 1, seq, total]))
}
