//! Helpers shared by the trainer's tests: a config, a synthetic batch, a seeded trainer on
//! [`TinyLm`], and readers of its parameters and logged values.

use std::collections::BTreeMap;

use burn::prelude::*;

use crate::batch::{KtoBatch, SequenceBatch};
use crate::logps::LogpsConfig;
use crate::loss::KtoLossConfig;
use crate::optim::{OptimizerKind, OptimizerStorage, Schedule, ScheduleKind};
use crate::test_lm::TinyLm;

use super::{KlMode, Reference, Trainer, TrainerConfig};

pub(crate) fn config(batch: usize, ga: usize, kl_mode: KlMode) -> TrainerConfig {
    TrainerConfig {
        loss: KtoLossConfig::new(),
        optimizer: OptimizerKind::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 },
        storage: OptimizerStorage::default(),
        schedule: Schedule { kind: ScheduleKind::Linear, learning_rate: 1e-2, warmup_steps: 0, total_steps: 4 },
        max_grad_norm: Some(1.0),
        gradient_accumulation_steps: ga,
        per_device_train_batch_size: batch,
        kl_mode,
        logps: LogpsConfig::new(),
    }
}

/// `rows` rows of 6 tokens (prompt 3, completion 3); KL sequences swap in the previous row's
/// completion; labels alternate.
pub(crate) fn batch(rows: usize, offset: i64, device: &Device) -> KtoBatch {
    let seq = |shift: i64| {
        let ids: Vec<i64> =
            (0..rows as i64).flat_map(|r| (0..6).map(move |t| (r * 7 + t * 3 + shift + offset) % 16)).collect();
        let mask = vec![true; rows * 6];
        let completion: Vec<bool> = (0..rows).flat_map(|_| (0..6).map(|t| t >= 3)).collect();
        SequenceBatch::from_host(ids, mask, completion, [rows, 6], device)
    };
    let labels: Vec<bool> = (0..rows).map(|r| (r as i64 + offset) % 2 == 0).collect();
    KtoBatch {
        matched: seq(0),
        kl: Some(seq(5)),
        desirable: Tensor::from_data(TensorData::new(labels, [rows]), device),
        reference_logps: None,
        reference_kl_logps: None,
    }
}

pub(crate) fn trainer(cfg: TrainerConfig) -> (Trainer<TinyLm>, Device) {
    let device = kto_testkit::device();
    device.seed(7);
    let train = device.clone().autodiff();
    let policy = TinyLm::new(16, 8, &train);
    let reference = policy.clone().valid();
    (Trainer::new(cfg, policy, Reference::Model(reference)).expect("valid"), train)
}

pub(crate) fn parameters(trainer: &Trainer<TinyLm>) -> BTreeMap<String, Vec<f32>> {
    crate::optim::parameters_by_path(&trainer.policy().clone().valid())
        .into_iter()
        .map(|(path, t)| (path, t.into_data().iter::<f32>().collect()))
        .collect()
}

pub(crate) fn assert_same_parameters(a: &Trainer<TinyLm>, b: &Trainer<TinyLm>, tolerance: f32) {
    let (a, b) = (parameters(a), parameters(b));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (path, values) in &a {
        let worst = values.iter().zip(&b[path]).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(worst <= tolerance, "{path}: differs by {worst:e}");
    }
}

pub(crate) fn logged(trainer: &mut Trainer<TinyLm>) -> BTreeMap<String, f64> {
    trainer.log(1.0).entries().into_iter().collect()
}

pub(crate) fn trainer_single() -> (Trainer<TinyLm>, Device) {
    trainer(config(4, 1, KlMode::MicroBatch))
}
