//! Forward throughput of the 40M-parameter Qwen2-like bench config (hidden 512, 8 layers, 8 heads,
//! 4 kv heads, intermediate 1408, vocab 32000, tied) on the CPU backends: tokens per second of
//! `hidden_states` + chunked completion log-probs over a batch of 4 × 192 tokens.
//!
//! Run: `cargo bench --bench model_forward`.

use std::path::Path;

use burn::prelude::*;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kto::core::sequence_logps;
use kto::models::DecoderConfig;

#[path = "common/devices.rs"]
mod devices;

const BATCH: usize = 4;
const PROMPT: usize = 64;
const COMPLETION: usize = 128;

/// The 40M-parameter Qwen2-like bench config (shared with `examples/bench_model.rs`).
const BENCH_CONFIG: &str = include_str!("qwen2-40m-config.json");

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
        let ids = Tensor::<2, Int>::from_data(
            TensorData::new((0..BATCH * seq).map(|i| ((i * 7919) % 32000) as i64).collect::<Vec<_>>(), [BATCH, seq]),
            &device,
        );
        let mask = Tensor::<2, Bool>::from_data(TensorData::new(vec![true; BATCH * seq], [BATCH, seq]), &device);
        let completion = Tensor::<2, Bool>::from_data(
            TensorData::new((0..BATCH * seq).map(|i| i % seq >= PROMPT).collect::<Vec<_>>(), [BATCH, seq]),
            &device,
        );
        group.bench_function(name, |b| {
            b.iter(|| sequence_logps(&model, ids.clone(), mask.clone(), completion.clone(), 128).into_data())
        });
    }
    group.finish();
}

criterion_group!(benches, bench_forward);
criterion_main!(benches);
