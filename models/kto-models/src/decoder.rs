//! The one decoder every family in `families/` configures, and the causal LM on top of it.

use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::prelude::*;
use kto_core::CausalLm;

use crate::config::{DecoderConfig, NormPlacement, NormScale, QkNorm};
use crate::layers::{
    Attention, AttentionConfig, LayerCache, LoraConfig, Mlp, MlpConfig, Projection, RmsNorm, RmsNormConfig,
    RotaryEmbedding, RotaryTables, linear_rows,
};

/// One decoder layer. With [`NormPlacement::Pre`]: `h = x + attn(input_layernorm(x))`,
/// `out = h + mlp(post_attention_layernorm(h))`; with [`NormPlacement::Post`] (no input norm):
/// `h = x + post_attention_layernorm(attn(x))`, `out = h + post_feedforward_layernorm(mlp(h))`.
#[derive(Module, Debug)]
pub struct DecoderLayer {
    /// `self_attn`.
    pub self_attn: Attention,
    /// `mlp`.
    pub mlp: Mlp,
    /// `input_layernorm` (pre-norm layers).
    pub input_layernorm: Option<RmsNorm>,
    /// `post_attention_layernorm`: before the MLP (pre-norm), after attention (post-norm).
    pub post_attention_layernorm: RmsNorm,
    /// `pre_feedforward_layernorm` (sandwich layers: before the MLP).
    pub pre_feedforward_layernorm: Option<RmsNorm>,
    /// `post_feedforward_layernorm` (post-norm and sandwich layers: after the MLP).
    pub post_feedforward_layernorm: Option<RmsNorm>,
    /// Where the norms sit.
    #[module(skip)]
    pub norms: NormPlacement,
}

impl DecoderLayer {
    /// The layer over `x`, attending through `cache` when given.
    fn forward(
        &self,
        x: Tensor<3>,
        (global, local): (&RotaryTables, Option<&RotaryTables>),
        attention_mask: Tensor<2, Bool>,
        cache: Option<&mut Option<LayerCache>>,
    ) -> Tensor<3> {
        let norm = |n: &Option<RmsNorm>, t: Tensor<3>| match n {
            Some(n) => n.forward(t),
            None => t,
        };
        let tables = match local {
            Some(local) if self.self_attn.pattern.local_rope => local,
            _ => global,
        };
        match self.norms {
            NormPlacement::Pre => {
                let h =
                    x.clone() + self.self_attn.forward(norm(&self.input_layernorm, x), tables, attention_mask, cache);
                h.clone() + self.mlp.forward(self.post_attention_layernorm.forward(h))
            }
            NormPlacement::Post => {
                let attn = self.self_attn.forward(x.clone(), tables, attention_mask, cache);
                let h = x + self.post_attention_layernorm.forward(attn);
                h.clone() + norm(&self.post_feedforward_layernorm, self.mlp.forward(h))
            }
            NormPlacement::Sandwich => {
                let input = norm(&self.input_layernorm, x.clone());
                let h = x + self.post_attention_layernorm.forward(self.self_attn.forward(
                    input,
                    tables,
                    attention_mask,
                    cache,
                ));
                let mlp = self.mlp.forward(norm(&self.pre_feedforward_layernorm, h.clone()));
                h + norm(&self.post_feedforward_layernorm, mlp)
            }
        }
    }
}

/// The transformer body (`model.*` in the checkpoint).
#[derive(Module, Debug)]
pub struct Decoder {
    /// `model.embed_tokens`: `[vocab, d_model]`.
    pub embed_tokens: Embedding,
    /// `model.layers.N`.
    pub layers: Vec<DecoderLayer>,
    /// `model.norm`.
    pub norm: RmsNorm,
}

/// A Llama or Qwen2 causal language model. Field names are the checkpoint's top level
/// (`model`, `lm_head`); `lm_head` is `None` when the embeddings are tied.
#[derive(Module, Debug)]
pub struct TransformerLm {
    /// The body.
    pub model: Decoder,
    /// The output head, `[d_model, vocab]`; `None` for tied embeddings.
    pub lm_head: Option<Linear>,
    #[module(skip)]
    rope: RotaryEmbedding,
    /// What some families add around the layers (embedding scale, logit soft-cap, local RoPE).
    #[module(skip)]
    extras: LmExtras,
}

/// The family options that live outside the layers.
#[derive(Debug, Clone, Default)]
struct LmExtras {
    /// Embeddings × this, rounded to the weights' dtype (Gemma: `sqrt(hidden_size)`).
    embed_scale: Option<f64>,
    /// `tanh(logits / c) · c` (Gemma 2's `final_logit_softcapping`).
    final_softcap: Option<f64>,
    /// The local RoPE of layers marked `local_rope` (Gemma 3's sliding layers).
    rope_local: Option<RotaryEmbedding>,
    /// Mixed precision: the output head's matmul in this dtype (see
    /// [`TransformerLm::with_compute_dtype`]).
    compute: Option<burn::tensor::FloatDType>,
}

impl LmExtras {
    fn of(config: &DecoderConfig) -> Self {
        Self {
            embed_scale: config.embed_scale,
            final_softcap: config.final_softcap,
            rope_local: config.rope_local.map(|(theta, scaling)| RotaryEmbedding::new(config.head_dim, theta, scaling)),
            compute: None,
        }
    }
}

/// Keys and values of every layer for incremental decoding.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<LayerCache>>,
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Positions already cached.
    pub fn len(&self) -> usize {
        self.layers.first().and_then(|l| l.as_ref()).map_or(0, |c| c.keys.dims()[2])
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The first `positions` cached positions of every layer, off the autodiff graph (on the
    /// inner device).
    pub fn detached_prefix(&self, positions: usize) -> Self {
        let cut = |t: &Tensor<4>| {
            let [batch, heads, _, head_dim] = t.dims();
            t.clone().slice([0..batch, 0..heads, 0..positions, 0..head_dim]).inner()
        };
        let layers = self
            .layers
            .iter()
            .map(|layer| layer.as_ref().map(|c| LayerCache { keys: cut(&c.keys), values: cut(&c.values) }))
            .collect();
        Self { layers }
    }
}

impl DecoderConfig {
    /// A randomly initialised model on `device` (for tests and benches; real weights come from
    /// [`crate::load_model`]), initialised as transformers does: matrices `N(0, 0.02)`
    /// (`initializer_range`), biases 0, norms 1. Seed the device for reproducible weights.
    pub fn init(&self, device: &Device) -> TransformerLm {
        hf_init(self.init_raw(device))
    }

    fn init_raw(&self, device: &Device) -> TransformerLm {
        let norm_of = |d: usize| {
            let norm = RmsNormConfig::new(d).with_epsilon(self.rms_norm_eps).init(device).with_scale(self.norm_scale);
            if self.norm_scale == NormScale::OffsetBeforeCast {
                // Gemma stores `w` of `1 + w`: transformers initialises it to 0.
                RmsNorm { weight: burn::module::Param::from_tensor(norm.weight.val().zeros_like()), ..norm }
            } else {
                norm
            }
        };
        let norm = || norm_of(self.hidden_size);
        let layers = (0..self.num_layers)
            .map(|i| {
                let self_attn =
                    AttentionConfig::new(self.hidden_size, self.num_heads, self.num_kv_heads, self.head_dim)
                        .with_qkv_bias(self.qkv_bias)
                        .with_o_bias(self.o_bias)
                        .init(device);
                let (q_width, k_width) = self.qk_norm_widths().unzip();
                DecoderLayer {
                    self_attn: Attention {
                        q_norm: q_width.map(norm_of),
                        k_norm: k_width.map(norm_of),
                        qk_norm: self.qk_norm,
                        pattern: self.layers[i],
                        scale: self.attn_scale,
                        softcap: self.attn_softcap,
                        ..self_attn
                    },
                    mlp: Mlp {
                        activation: self.activation,
                        ..MlpConfig::new(self.hidden_size, self.intermediate_size).with_bias(self.mlp_bias).init(device)
                    },
                    input_layernorm: self.norms.has_input_norm().then(norm),
                    post_attention_layernorm: norm(),
                    pre_feedforward_layernorm: (self.norms == NormPlacement::Sandwich).then(norm),
                    post_feedforward_layernorm: self.norms.has_post_feedforward_norm().then(norm),
                    norms: self.norms,
                }
            })
            .collect();
        TransformerLm {
            model: Decoder {
                embed_tokens: EmbeddingConfig::new(self.vocab_size, self.hidden_size).init(device),
                layers,
                norm: norm(),
            },
            lm_head: (!self.tie_word_embeddings)
                .then(|| LinearConfig::new(self.hidden_size, self.vocab_size).with_bias(false).init(device)),
            rope: self.rotary(),
            extras: LmExtras::of(self),
        }
    }

    /// Widths of `q_norm` and `k_norm`, when the family has them.
    pub(crate) fn qk_norm_widths(&self) -> Option<(usize, usize)> {
        match self.qk_norm {
            QkNorm::None => None,
            QkNorm::PerHead => Some((self.head_dim, self.head_dim)),
            QkNorm::FullWidth => Some((self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim)),
        }
    }

    pub(crate) fn rotary(&self) -> RotaryEmbedding {
        RotaryEmbedding::new(self.rotary_dim, self.rope_theta, self.rope_scaling)
    }
}

impl TransformerLm {
    pub(crate) fn from_parts(model: Decoder, lm_head: Option<Linear>, config: &DecoderConfig) -> Self {
        Self { model, lm_head, rope: config.rotary(), extras: LmExtras::of(config) }
    }

    /// Hidden states of new positions, attending to the cache (when given) and updating it.
    ///
    /// # Shapes
    /// - `input_ids`: `[batch, seq]`, the new positions
    /// - `attention_mask`: `[batch, past + seq]`, `true` on real tokens, past included
    /// - returns: `[batch, seq, d_model]`, after the final norm
    pub fn forward_hidden(
        &self,
        input_ids: Tensor<2, Int>,
        attention_mask: Tensor<2, Bool>,
        mut cache: Option<&mut KvCache>,
    ) -> Tensor<3> {
        let [_, seq] = input_ids.dims();
        let device = input_ids.device();
        let past = cache.as_ref().map_or(0, |c| c.len());
        if let Some(cache) = cache.as_mut() {
            cache.layers.resize(self.model.layers.len(), None);
        }
        let tables = self.rope.tables(past, seq, past + seq, &device);
        let local = self.extras.rope_local.as_ref().map(|rope| rope.tables(past, seq, past + seq, &device));
        let mut x = self.model.embed_tokens.forward(input_ids); // [batch, seq, d_model]
        if let Some(scale) = self.extras.embed_scale {
            // transformers multiplies by the scale cast to the weights' dtype.
            let scale = if x.dtype() == burn::tensor::DType::BF16 {
                f64::from(half::bf16::from_f64(scale).to_f32())
            } else {
                f64::from(scale as f32)
            };
            x = x * scale;
        }
        for (i, layer) in self.model.layers.iter().enumerate() {
            let slot = cache.as_mut().map(|c| &mut c.layers[i]);
            x = layer.forward(x, (&tables, local.as_ref()), attention_mask.clone(), slot);
        }
        self.model.norm.forward(x)
    }
}

impl CausalLm for TransformerLm {
    fn hidden_states(&self, input_ids: Tensor<2, Int>, attention_mask: Tensor<2, Bool>) -> Tensor<3> {
        self.forward_hidden(input_ids, attention_mask, None)
    }

    /// Runs `first` in full with a key/value cache, then `second`'s positions `shared..` on the
    /// detached first `shared` cached positions: `second`'s prompt is not recomputed.
    fn hidden_states_sharing_prefix(
        &self,
        (ids_a, mask_a): (Tensor<2, Int>, Tensor<2, Bool>),
        detached: &Self,
        (ids_b, mask_b): (Tensor<2, Int>, Tensor<2, Bool>),
        shared: usize,
    ) -> (Tensor<3>, Tensor<3>) {
        let [batch, seq_b] = ids_b.dims();
        if shared == 0 || shared >= seq_b {
            return (self.hidden_states(ids_a, mask_a), detached.hidden_states(ids_b, mask_b));
        }
        let mut cache = KvCache::new();
        let hidden_a = self.forward_hidden(ids_a, mask_a, Some(&mut cache)); // [batch, seq_a, d_model]
        let d_model = hidden_a.dims()[2];
        let mut prefix = cache.detached_prefix(shared);
        let prefix_hidden = hidden_a.clone().slice([0..batch, 0..shared, 0..d_model]).inner();
        let suffix = detached.forward_hidden(ids_b.slice([0..batch, shared..seq_b]), mask_b, Some(&mut prefix));
        (hidden_a, Tensor::cat(vec![prefix_hidden, suffix], 1))
    }

    fn project(&self, hidden: Tensor<3>) -> Tensor<3> {
        let logits = self.head(hidden);
        match self.extras.final_softcap {
            Some(cap) => (logits / cap).tanh() * cap,
            None => logits,
        }
    }

    fn vocab_size(&self) -> usize {
        self.model.embed_tokens.weight.dims()[0]
    }
}

impl TransformerLm {
    /// The output head's logits, before any soft-cap.
    fn head(&self, hidden: Tensor<3>) -> Tensor<3> {
        if let Some(dtype) = self.extras.compute {
            let out = burn::tensor::FloatDType::from(hidden.dtype());
            let weight = match &self.lm_head {
                Some(head) => head.weight.val(),                          // [d_model, vocab]
                None => self.model.embed_tokens.weight.val().transpose(), // tied: Eᵀ
            };
            let bias = self.lm_head.as_ref().and_then(|h| h.bias.as_ref()).map(|b| b.val().cast(dtype));
            return linear_rows(hidden.cast(dtype), weight.cast(dtype), bias).cast(out);
        }
        match &self.lm_head {
            Some(head) => linear_rows(hidden, head.weight.val(), head.bias.as_ref().map(|b| b.val())),
            None => {
                // Tied: logits = h Eᵀ with the embedding matrix `[vocab, d_model]`.
                let [batch, seq, d] = hidden.dims();
                let weight = self.model.embed_tokens.weight.val(); // [vocab, d_model]
                let vocab = weight.dims()[0];
                hidden.reshape([batch * seq, d]).matmul(weight.transpose()).reshape([batch, seq, vocab])
            }
        }
    }
}

/// LoRA on the decoder's projections.
impl TransformerLm {
    /// Rebuilds the model with `f` applied to every projection, given its checkpoint prefix
    /// (`model.layers.3.self_attn.q_proj`) and name (`q_proj`).
    pub fn map_projections(self, mut f: impl FnMut(&str, &'static str, Projection) -> Projection) -> Self {
        let Self { model, lm_head, rope, extras } = self;
        let Decoder { embed_tokens, layers, norm } = model;
        let layers = layers
            .into_iter()
            .enumerate()
            .map(|(i, layer)| {
                let DecoderLayer {
                    self_attn,
                    mlp,
                    input_layernorm,
                    post_attention_layernorm,
                    pre_feedforward_layernorm,
                    post_feedforward_layernorm,
                    norms,
                } = layer;
                let mut p = |group: &str, name: &'static str, proj: Projection| {
                    f(&format!("model.layers.{i}.{group}.{name}"), name, proj)
                };
                let self_attn = crate::layers::Attention {
                    q_proj: self_attn.q_proj.map(|x| p("self_attn", "q_proj", x)),
                    k_proj: self_attn.k_proj.map(|x| p("self_attn", "k_proj", x)),
                    v_proj: self_attn.v_proj.map(|x| p("self_attn", "v_proj", x)),
                    qkv_proj: self_attn.qkv_proj.map(|x| p("self_attn", "qkv_proj", x)),
                    o_proj: p("self_attn", "o_proj", self_attn.o_proj),
                    ..self_attn
                };
                let mlp = crate::layers::Mlp {
                    gate_proj: mlp.gate_proj.map(|x| p("mlp", "gate_proj", x)),
                    up_proj: mlp.up_proj.map(|x| p("mlp", "up_proj", x)),
                    gate_up_proj: mlp.gate_up_proj.map(|x| p("mlp", "gate_up_proj", x)),
                    down_proj: p("mlp", "down_proj", mlp.down_proj),
                    activation: mlp.activation,
                };
                DecoderLayer {
                    self_attn,
                    mlp,
                    input_layernorm,
                    post_attention_layernorm,
                    pre_feedforward_layernorm,
                    post_feedforward_layernorm,
                    norms,
                }
            })
            .collect();
        Self { model: Decoder { embed_tokens, layers, norm }, lm_head, rope, extras }
    }

    /// Every projection with its checkpoint prefix, in checkpoint order.
    pub fn projections(&self) -> Vec<(String, &Projection)> {
        let mut out = Vec::new();
        for (i, layer) in self.model.layers.iter().enumerate() {
            let a = &layer.self_attn;
            let m = &layer.mlp;
            for (group, name, proj) in [
                ("self_attn", "q_proj", a.q_proj.as_ref()),
                ("self_attn", "k_proj", a.k_proj.as_ref()),
                ("self_attn", "v_proj", a.v_proj.as_ref()),
                ("self_attn", "qkv_proj", a.qkv_proj.as_ref()),
                ("self_attn", "o_proj", Some(&a.o_proj)),
                ("mlp", "gate_proj", m.gate_proj.as_ref()),
                ("mlp", "up_proj", m.up_proj.as_ref()),
                ("mlp", "gate_up_proj", m.gate_up_proj.as_ref()),
                ("mlp", "down_proj", Some(&m.down_proj)),
            ] {
                if let Some(proj) = proj {
                    out.push((format!("model.layers.{i}.{group}.{name}"), proj));
                }
            }
        }
        out
    }

    /// Freezes every weight and gives the targeted projections new PEFT-initialised adapters
    /// (seeded: the same on every backend).
    pub fn apply_lora(self, config: &LoraConfig, seed: u64) -> Self {
        let mut rng = kto_core::SplitMix64::new(seed);
        self.no_grad().map_projections(|_, name, proj| {
            if !config.targets.includes(name) {
                return proj;
            }
            let [d_in, d_out] = proj.linear.weight.dims();
            let device = proj.linear.weight.device();
            let dtype = proj.linear.weight.val().dtype();
            let adapter = config.init_adapter(d_in, d_out, &mut rng, &device);
            Projection { lora: Some(cast_adapter(adapter, dtype)), ..proj }
        })
    }

    /// Every adapter drops its input with probability `p` in training forwards (on an autodiff
    /// device): PEFT's `lora_dropout` when TRL's `disable_dropout` is false.
    ///
    /// # Panics
    /// When `p` is not in `[0, 1)`.
    pub fn with_lora_dropout(self, p: f64) -> Self {
        assert!((0.0..1.0).contains(&p), "lora_dropout must be in [0, 1), got {p}");
        self.map_projections(|_, _, proj| Projection {
            lora: proj.lora.map(|adapter| crate::layers::LoraAdapter { dropout: p, ..adapter }),
            ..proj
        })
    }

    /// Mixed precision, as TRL's `bf16=True` runs transformers under autocast: the weights stay
    /// as they are (f32 masters, trained in f32), and every matmul (the projections and their
    /// adapters, the attention products, the output head) runs on inputs cast to `dtype`, its
    /// output cast back; embeddings, norms, RoPE, softmax and the log-probs stay in f32.
    /// `None` turns it off.
    pub fn with_compute_dtype(self, dtype: Option<burn::tensor::FloatDType>) -> Self {
        let mut model = self.map_projections(|_, _, proj| Projection { compute: dtype, ..proj });
        for layer in &mut model.model.layers {
            layer.self_attn.compute = dtype;
        }
        model.extras.compute = dtype;
        model
    }

    /// Whether any projection has an adapter.
    pub fn has_adapters(&self) -> bool {
        self.projections().iter().any(|(_, p)| p.lora.is_some())
    }

    /// The same model with every adapter removed: the base model, sharing its weights (no
    /// copy), which is LoRA training's reference.
    pub fn without_adapters(&self) -> Self {
        self.clone().map_projections(|_, _, proj| Projection { lora: None, ..proj })
    }

    /// The adapters merged into the weights (`W + scale · A B`) and removed.
    pub fn merge_adapters(self) -> Self {
        self.map_projections(|_, _, proj| {
            if proj.lora.is_none() {
                return proj;
            }
            let weight = proj.merged_weight();
            let linear = burn::nn::Linear { weight: burn::module::Param::from_tensor(weight), bias: proj.linear.bias };
            Projection { linear, lora: None, compute: proj.compute }
        })
    }
}

fn cast_adapter(adapter: crate::layers::LoraAdapter, dtype: burn::tensor::DType) -> crate::layers::LoraAdapter {
    let cast = |p: burn::module::Param<Tensor<2>>| {
        let t = p.val();
        if t.dtype() == dtype {
            p
        } else {
            burn::module::Param::from_tensor(t.cast(burn::tensor::FloatDType::from(dtype)))
        }
    };
    crate::layers::LoraAdapter { a: cast(adapter.a), b: cast(adapter.b), ..adapter }
}

/// transformers' `_init_weights` for Llama/Qwen2: every matrix `N(0, 0.02)`, every bias 0;
/// norm weights keep their ones.
fn hf_init(model: TransformerLm) -> TransformerLm {
    struct Init {
        path: Vec<String>,
    }
    impl burn::module::ModuleMapper for Init {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn map_float<const D: usize>(
            &mut self,
            param: burn::module::Param<Tensor<D>>,
        ) -> burn::module::Param<Tensor<D>> {
            let (id, tensor, mapper) = param.consume();
            let is_norm = self.path.iter().any(|p| p.contains("norm"));
            let value = if D == 2 {
                Tensor::random(tensor.shape(), burn::tensor::Distribution::Normal(0.0, 0.02), &tensor.device())
            } else if is_norm {
                tensor
            } else {
                tensor.zeros_like()
            };
            burn::module::Param::from_mapped_value(id, value, mapper)
        }
    }
    model.map(&mut Init { path: Vec::new() })
}
