//! One full KTO optimizer step on the 40M-parameter Qwen2-like bench config (issue #7's shape:
//! batch 4, prompt 64 + completion 128 tokens, KL pairs, a separate reference model, AdamW,
//! global clipping): a no-graph KL pass, the policy forward and backward, the reference passes
//! and the update. Throughput counts the matched batch's tokens (4 × 192), as
//! `shared/reference/bench_trl.py` counts TRL's.
//!
//! Run: `cargo bench --bench train_step`

use std::path::Path;

use burn::prelude::*;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kto::core::{
    KlMode, KtoBatch, KtoLossConfig, LogpsConfig, OptimizerKind, OptimizerStorage, Reference, Schedule, ScheduleKind,
    SequenceBatch, Trainer, TrainerConfig,
};
use kto::models::{DecoderConfig, TransformerLm};

#[path = "common/devices.rs"]
mod devices;

const BATCH: usize = 4;
const PROMPT: usize = 64;
const COMPLETION: usize = 128;
const CONFIG: &str = include_str!("qwen2-40m-config.json");

/// Random rows with exact lengths; KL sequences take the previous row's completion (TRL's +1
/// rotation inside the batch).
fn batch(step: usize, device: &Device) -> KtoBatch {
    let seq = PROMPT + COMPLETION;
    let token = |row: usize, t: usize| (((step * 131 + row * 7919 + t * 104_729) % 31_999) + 1) as i64;
    let build = |partner: &dyn Fn(usize) -> usize| {
        let ids: Vec<i64> = (0..BATCH)
            .flat_map(|r| (0..seq).map(move |t| (r, t)))
            .map(|(r, t)| if t < PROMPT { token(r, t) } else { token(partner(r), t) })
            .collect();
        let completion: Vec<bool> = (0..BATCH * seq).map(|i| i % seq >= PROMPT).collect();
        SequenceBatch::from_host(ids, vec![true; BATCH * seq], completion, [BATCH, seq], device)
    };
    let labels: Vec<bool> = (0..BATCH).map(|r| !(r + step).is_multiple_of(3)).collect();
    KtoBatch {
        matched: build(&|r| r),
        kl: Some(build(&|r| (r + BATCH - 1) % BATCH)),
        desirable: Tensor::from_data(TensorData::new(labels, [BATCH]), device),
        reference_logps: None,
        reference_kl_logps: None,
    }
}

fn bench(c: &mut Criterion) {
    let config = DecoderConfig::from_json(CONFIG, Path::new("qwen2-40m-config.json")).expect("valid config");
    let mut group = c.benchmark_group("train_step_40m");
    group.sample_size(10);
    group.throughput(Throughput::Elements((BATCH * (PROMPT + COMPLETION)) as u64));
    let backends = devices::bench_devices();
    for (name, device) in backends {
        device.seed(0);
        let train = device.clone().autodiff();
        let policy: TransformerLm = config.init(&train);
        let reference = policy.clone().valid();
        let trainer_config = TrainerConfig {
            loss: KtoLossConfig::new(),
            optimizer: OptimizerKind::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 },
            storage: OptimizerStorage::default(),
            schedule: Schedule {
                kind: ScheduleKind::Constant,
                learning_rate: 1e-5,
                warmup_steps: 0,
                total_steps: 1000,
            },
            max_grad_norm: Some(1.0),
            gradient_accumulation_steps: 1,
            per_device_train_batch_size: BATCH,
            kl_mode: KlMode::MicroBatch,
            logps: LogpsConfig::new(),
        };
        let mut trainer = Trainer::new(trainer_config, policy, Reference::Model(reference)).expect("valid");
        let mut step = 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                step += 1;
                trainer.train_step(&[batch(step, &train)]).expect("finite step")
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
