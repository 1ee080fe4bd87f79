//! Grouped-query self-attention with rotary positions (or none), optional query/key norms,
//! causal + sliding-window + padding masks and a KV cache.

use burn::nn::LinearConfig;
use burn::prelude::*;
use burn::tensor::FloatDType;

use super::lora::Projection;
use super::{RmsNorm, RotaryTables};
use crate::config::{LayerAttention, QkNorm};

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
            q_proj: Some(proj(self.d_model, self.n_heads * self.head_dim, self.qkv_bias)),
            k_proj: Some(proj(self.d_model, self.n_kv_heads * self.head_dim, self.qkv_bias)),
            v_proj: Some(proj(self.d_model, self.n_kv_heads * self.head_dim, self.qkv_bias)),
            qkv_proj: None,
            o_proj: proj(self.n_heads * self.head_dim, self.d_model, self.o_bias),
            q_norm: None,
            k_norm: None,
            n_heads: self.n_heads,
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
            qk_norm: QkNorm::None,
            pattern: LayerAttention { sliding_window: None, rope: true, local_rope: false },
            scale: None,
            softcap: None,
            compute: None,
        }
    }
}

/// Self-attention of one decoder layer. Field names match the checkpoint (`self_attn.q_proj`, …).
#[derive(Module, Debug)]
pub struct Attention {
    /// `[d_model, n_heads · head_dim]` (absent when fused into `qkv_proj`)
    pub q_proj: Option<Projection>,
    /// `[d_model, n_kv_heads · head_dim]`
    pub k_proj: Option<Projection>,
    /// `[d_model, n_kv_heads · head_dim]`
    pub v_proj: Option<Projection>,
    /// Phi-3's fused projection, `[d_model, (n_heads + 2 n_kv_heads) · head_dim]`, columns
    /// `[q | k | v]`.
    pub qkv_proj: Option<Projection>,
    /// `[n_heads · head_dim, d_model]`
    pub o_proj: Projection,
    /// `q_norm` (Qwen3: over `head_dim`; OLMo 2: over `n_heads · head_dim`).
    pub q_norm: Option<RmsNorm>,
    /// `k_norm` (Qwen3: over `head_dim`; OLMo 2: over `n_kv_heads · head_dim`).
    pub k_norm: Option<RmsNorm>,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads.
    pub n_kv_heads: usize,
    /// Per-head width.
    pub head_dim: usize,
    /// How `q_norm`/`k_norm` apply.
    #[module(skip)]
    pub qk_norm: QkNorm,
    /// The layer's window and RoPE.
    #[module(skip)]
    pub pattern: LayerAttention,
    /// The scores' scale (`None`: `head_dim^-0.5`; Gemma: `query_pre_attn_scalar^-0.5`).
    #[module(skip)]
    pub scale: Option<f64>,
    /// `tanh(scores / c) · c` before the mask (Gemma 2's `attn_logit_softcapping`).
    #[module(skip)]
    pub softcap: Option<f64>,
    /// Mixed precision: the two attention products on inputs cast to this dtype.
    #[module(skip)]
    pub compute: Option<FloatDType>,
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
    /// Key `j` is hidden from query `i` when it lies in the future (`j > past + i`), outside the
    /// layer's sliding window, or is padding (`key_mask[j] == false`); a query always sees
    /// itself, so all-padding rows stay finite.
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
        let (mut q, mut k, v) = self.qkv(x); // [batch, seq, n · head_dim]
        let norms = self.q_norm.as_ref().zip(self.k_norm.as_ref());
        if let (QkNorm::FullWidth, Some((q_norm, k_norm))) = (self.qk_norm, norms) {
            (q, k) = (q_norm.forward(q), k_norm.forward(k));
        }
        let (mut q, mut k) = (heads(q, h), heads(k, kvh));
        if let (QkNorm::PerHead, Some((q_norm, k_norm))) = (self.qk_norm, norms) {
            // Each head's `head_dim` values normalised alone: [batch, n, seq, hd] as rows of hd.
            let per_head = |norm: &RmsNorm, t: Tensor<4>, n: usize| {
                norm.forward(t.reshape([batch, n * seq, hd])).reshape([batch, n, seq, hd])
            };
            (q, k) = (per_head(q_norm, q, h), per_head(k_norm, k, kvh));
        }
        let (q, k) = if self.pattern.rope { (rope.apply(q), rope.apply(k)) } else { (q, k) };
        let v = heads(v, kvh);

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
        let scale = self.scale.unwrap_or(1.0 / (hd as f64).sqrt());
        let mut scores = match self.compute {
            // As under autocast: the product and its scaling in the compute dtype.
            Some(low) => (q.cast(low).matmul(k.cast(low).swap_dims(2, 3)) * scale).cast(FloatDType::F32),
            None => q.matmul(k.swap_dims(2, 3)).cast(FloatDType::F32) * scale,
        }; // [batch, n_heads, seq, total]
        if let Some(cap) = self.softcap {
            scores = (scores / cap).tanh() * cap;
        }
        let masked = attention_mask(key_mask, seq, past, self.pattern.sliding_window).expand([batch, h, seq, total]);
        let probs = softmax_last(scores.mask_fill(masked, f32::NEG_INFINITY));
        let context = match self.compute {
            Some(low) => probs.cast(low).matmul(v.cast(low)).cast(dtype),
            None => probs.cast(dtype).matmul(v),
        };
        let context = context.swap_dims(1, 2).reshape([batch, seq, h * hd]); // [batch, seq, n_heads · head_dim]
        self.o_proj.forward(context)
    }
}

impl Attention {
    /// The query, key and value projections of `x`, from the separate projections or the fused
    /// one.
    fn qkv(&self, x: Tensor<3>) -> (Tensor<3>, Tensor<3>, Tensor<3>) {
        match (&self.qkv_proj, &self.q_proj, &self.k_proj, &self.v_proj) {
            (Some(fused), ..) => {
                let [batch, seq, _] = x.dims();
                let (q, kv) = (self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim);
                let out = fused.forward(x); // [batch, seq, q + 2 kv]
                let part = |from: usize, len: usize| out.clone().slice([0..batch, 0..seq, from..from + len]);
                (part(0, q), part(q, kv), part(q + kv, kv))
            }
            (None, Some(q), Some(k), Some(v)) => (q.forward(x.clone()), k.forward(x.clone()), v.forward(x)),
            _ => unreachable!("an attention block has q/k/v projections or a fused qkv_proj"),
        }
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

/// `true` where a key must be hidden: `[batch, 1, seq, past + seq]`. Key `j` is hidden from the
/// query at position `p = past + i` when it is in the future (`j > p`), outside a sliding window
/// of `w` keys (`j <= p - w`: the query sees `w` keys, itself included, as transformers'
/// sliding-window mask), or padding (but never the query itself).
fn attention_mask(key_mask: Tensor<2, Bool>, seq: usize, past: usize, window: Option<usize>) -> Tensor<4, Bool> {
    let [batch, total] = key_mask.dims();
    let device = key_mask.device();
    let mut future = Vec::with_capacity(seq * total);
    let mut diagonal = Vec::with_capacity(seq * total);
    for i in 0..seq {
        let p = past + i;
        for j in 0..total {
            let outside = window.is_some_and(|w| j + w <= p);
            future.push(j > p || outside);
            diagonal.push(j == p);
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
