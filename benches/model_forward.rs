//! Forward throughput of the 40M-parameter Qwen2-like bench config (hidden 512, 8 layers, 8 heads,
//! 4 kv heads, intermediate 1408, vocab 32000, tied) on the CPU backends: tokens per second of
//! `hidden_states` + chunked completion log-probs over a batch of 4 × 192 tokens.
//!
//! `forward_40m_levers` (flex only) prices two levers of the no-graph passes against the 4 × 192
//! baseline: 8 × 192 is the reference's matched and KL sequences batched into one forward (it
//! pays only if the per-token time drops), and 4 × 128 is the bound on reusing a row's prompt
//! between its matched and KL sequences (only the completion positions would be computed).
//!
//! Run: `cargo bench --workspace --bench model_forward`.

use std::path::Path;

use burn::prelude::*;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kto::core::{
    LogpsConfig, SequenceBatch, completion_logps, paired_completion_logps, sequence_logps, shared_prefix_len,
};
use kto::models::DecoderConfig;

#[path = "common/devices.rs"]
mod devices;

const BATCH: usize = 4;
const PROMPT: usize = 64;
const COMPLETION: usize = 128;

/// The 40M-parameter Qwen2-like bench config (shared with `examples/bench_model.rs`).
const BENCH_CONFIG: &str = include_str!("qwen2-40m-config.json");

/// Ids, attention mask and completion mask of `batch` rows of `prompt + completion` tokens.
fn inputs(
    batch: usize,
    prompt: usize,
    completion: usize,
    device: &Device,
) -> (Tensor<2, Int>, Tensor<2, Bool>, Tensor<2, Bool>) {
    let seq = prompt + completion;
    let ids = Tensor::<2, Int>::from_data(
        TensorData::new((0..batch * seq).map(|i| ((i * 7919) % 32000) as i64).collect::<Vec<_>>(), [batch, seq]),
        device,
    );
    let mask = Tensor::<2, Bool>::from_data(TensorData::new(vec![true; batch * seq], [batch, seq]), device);
    let completion = Tensor::<2, Bool>::from_data(
        TensorData::new((0..batch * seq).map(|i| i % seq >= prompt).collect::<Vec<_>>(), [batch, seq]),
        device,
    );
    (ids, mask, completion)
}

fn bench_levers(c: &mut Criterion) {
    let config = DecoderConfig::from_json(BENCH_CONFIG, Path::new("bench-config.json")).expect("valid config");
    let device = Device::flex();
    device.seed(0);
    let model = config.init(&device);
    let mut group = c.benchmark_group("forward_40m_levers");
    group.sample_size(10);
    for (name, batch, prompt) in [("4x192", BATCH, PROMPT), ("8x192", 2 * BATCH, PROMPT), ("4x128", BATCH, 0)] {
        let (ids, mask, completion) = inputs(batch, prompt, COMPLETION, &device);
        group.throughput(Throughput::Elements((batch * (prompt + COMPLETION)) as u64));
        group.bench_function(name, |b| {
            b.iter(|| sequence_logps(&model, ids.clone(), mask.clone(), completion.clone(), 128).into_data())
        });
    }
    // The lever as built: a row's matched and KL sequences (same prompt, other completions)
    // scored through `paired_completion_logps` against two plain passes.
    let (ids, mask, completion) = inputs(BATCH, PROMPT, COMPLETION, &device);
    let matched = SequenceBatch { input_ids: ids.clone(), attention_mask: mask.clone(), completion_mask: completion };
    let rotated = ids.clone().slice([0..BATCH, PROMPT..PROMPT + COMPLETION]).roll_dim(1, 0);
    let kl =
        SequenceBatch { input_ids: Tensor::cat(vec![ids.slice([0..BATCH, 0..PROMPT]), rotated], 1), ..matched.clone() };
    assert_eq!(shared_prefix_len(&matched, &kl), PROMPT);
    let config = LogpsConfig::new();
    group.throughput(Throughput::Elements((2 * BATCH * (PROMPT + COMPLETION)) as u64));
    group.bench_function("matched+kl separate", |b| {
        b.iter(|| {
            for s in [&matched, &kl] {
                let scored = completion_logps(
                    &model,
                    s.input_ids.clone(),
                    s.attention_mask.clone(),
                    s.completion_mask.clone(),
                    &config,
                );
                scored.logps.into_data();
            }
        })
    });
    group.bench_function("matched+kl paired", |b| {
        b.iter(|| {
            let (a, k) = paired_completion_logps(&model, &matched, &config, &model, &kl, &config);
            (a.logps.into_data(), k.logps.into_data())
        })
    });
    group.finish();
}

fn bench_forward(c: &mut Criterion) {
    let config = DecoderConfig::from_json(BENCH_CONFIG, Path::new("bench-config.json")).expect("valid config");
    let seq = PROMPT + COMPLETION;
    let backends = devices::bench_devices();
    let mut group = c.benchmark_group("forward_40m");
    group.sample_size(10);
    group.throughput(Throughput::Elements((BATCH * seq) as u64));
    for (name, device) in backends {
        device.seed(0);
        let model = config.init(&device);
        let (ids, mask, completion) = inputs(BATCH, PROMPT, COMPLETION, &device);
        group.bench_function(name, |b| {
            b.iter(|| sequence_logps(&model, ids.clone(), mask.clone(), completion.clone(), 128).into_data())
        });
    }
    group.finish();
}

criterion_group!(benches, bench_forward, bench_levers);
criterion_main!(benches);
