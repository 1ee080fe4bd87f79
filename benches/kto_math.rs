//! Criterion benches of kto-core's math on the flex CPU backend.
//!
//! - `loss/*`: the KTO loss and KL estimate of one micro-batch from given log-probs;
//! - `logps/*`: completion log-probs through a 32k-vocabulary head, chunked (kto-core) against
//!   the naive full `[batch, seq, vocab]` log-softmax, on the bench shape of issue #7 (batch 4,
//!   prompt 64 + completion 128 tokens, `d_model` 512).
//!
//! Run: `cargo bench --bench kto_math`.

use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use criterion::{Criterion, criterion_group, criterion_main};
use kto::core::{CausalLm, KtoLossConfig, kl_estimate, kto_loss, sequence_logps};

/// Embeddings straight into a linear head: the cost is all in the projection, which is what the
/// chunking changes.
#[derive(Module, Debug)]
struct HeadOnlyLm {
    embed_tokens: Embedding,
    lm_head: Linear,
}

impl CausalLm for HeadOnlyLm {
    fn hidden_states(&self, input_ids: Tensor<2, Int>, _attention_mask: Tensor<2, Bool>) -> Tensor<3> {
        self.embed_tokens.forward(input_ids)
    }
    fn project(&self, hidden: Tensor<3>) -> Tensor<3> {
        self.lm_head.forward(hidden)
    }
    fn vocab_size(&self) -> usize {
        self.lm_head.weight.dims()[1]
    }
}

const BATCH: usize = 4;
const PROMPT: usize = 64;
const COMPLETION: usize = 128;
const VOCAB: usize = 32_000;
const D_MODEL: usize = 512;

fn bench_loss(c: &mut Criterion) {
    let device = Device::flex();
    let n = 64;
    let logps = |offset: f32| {
        Tensor::<1>::from_data(TensorData::new((0..n).map(|i| -(i as f32) - offset).collect::<Vec<_>>(), [n]), &device)
    };
    let desirable =
        Tensor::<1, Bool>::from_data(TensorData::new((0..n).map(|i| i % 3 != 0).collect::<Vec<_>>(), [n]), &device);
    let config = KtoLossConfig::new();
    c.bench_function("loss/kto_loss+kl_estimate batch 64", |b| {
        b.iter(|| {
            let kl = kl_estimate(logps(1.0), logps(1.5));
            let out = kto_loss(&config, logps(0.0), logps(0.5), desirable.clone(), kl.kl);
            out.loss.into_scalar::<f32>()
        })
    });
}

fn bench_logps(c: &mut Criterion) {
    let device = Device::flex();
    device.seed(0);
    let lm = HeadOnlyLm {
        embed_tokens: EmbeddingConfig::new(VOCAB, D_MODEL).init(&device),
        lm_head: LinearConfig::new(D_MODEL, VOCAB).with_bias(false).init(&device),
    };
    let seq = PROMPT + COMPLETION;
    let ids = Tensor::<2, Int>::from_data(
        TensorData::new((0..BATCH * seq).map(|i| ((i * 7919) % VOCAB) as i64).collect::<Vec<_>>(), [BATCH, seq]),
        &device,
    );
    let mask = Tensor::<2, Bool>::from_data(TensorData::new(vec![true; BATCH * seq], [BATCH, seq]), &device);
    let completion = Tensor::<2, Bool>::from_data(
        TensorData::new((0..BATCH * seq).map(|i| i % seq >= PROMPT).collect::<Vec<_>>(), [BATCH, seq]),
        &device,
    );
    let mut group = c.benchmark_group("logps");
    group.sample_size(10);
    for chunk in [32, 128] {
        group.bench_function(format!("chunked {chunk}"), |b| {
            b.iter(|| sequence_logps(&lm, ids.clone(), mask.clone(), completion.clone(), chunk).into_data())
        });
    }
    group.bench_function("naive full log_softmax", |b| {
        b.iter(|| {
            let logits = lm.logits(ids.clone(), mask.clone()).slice([0..BATCH, 0..seq - 1]);
            let picked = log_softmax(logits, 2)
                .gather(2, ids.clone().slice([0..BATCH, 1..seq]).unsqueeze_dim::<3>(2))
                .reshape([BATCH, seq - 1]);
            let scored = completion.clone().slice([0..BATCH, 1..seq]).float();
            (picked * scored).sum_dim(1).into_data()
        })
    });
    group.finish();
}

criterion_group!(benches, bench_loss, bench_logps);
criterion_main!(benches);
