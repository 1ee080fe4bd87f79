//! Data parallelism: one device's share of a step ([`Trainer::train_step_parallel`] runs one
//! `worker` per device, inline for one device, one thread each otherwise), the KL exchange
//! between the devices ([`KlGather`]), what a worker hands back ([`WorkerOutcome`],
//! [`HostRows`]), DDP's idle backward and parameter marks, and the panic guard that keeps a
//! failing device meeting the others.

use burn::module::{Module, Param};
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;

use crate::batch::KtoBatch;
use crate::error::{Error, Result};
use crate::kl::combine_device_kl;
use crate::lm::CausalLm;
use crate::logps::completion_logps;
use crate::loss::kto_loss;

use super::Trainer;
use super::passes::{host_bools, host_f32, host_i64, scalar};

/// What a device hands back from a step.
pub(super) struct WorkerOutcome {
    pub(super) grads: GradientsParams,
    /// Σ of its micro-batches' `loss / total micro-batches`.
    pub(super) loss: f64,
    /// Per micro-step, the host values behind the metrics (`None` where it had no batch).
    pub(super) rows: Vec<Option<HostRows>>,
}

/// Host copies of one micro-batch's per-row values, for the pooled metrics.
pub(super) struct HostRows {
    /// `(z₀, unclamped)` the loss used.
    pub(super) kl: (f64, f64),
    pub(super) tokens: f64,
    pub(super) desirable: Vec<bool>,
    pub(super) policy_logps: Vec<f32>,
    pub(super) rewards: Vec<f32>,
    pub(super) entropy: Vec<f32>,
    pub(super) mean_logit: Vec<f32>,
    pub(super) n_tokens: Vec<i64>,
}

/// Where the devices meet to combine their KL means (TRL's `gather` of `kl_local`): one slot
/// per device and round, and a barrier per round. Round 0 is the accumulation window's KL,
/// round `j + 1` micro-step `j`'s.
pub(super) struct KlGather {
    barrier: std::sync::Barrier,
    slots: std::sync::Mutex<Vec<Vec<Option<f64>>>>,
}

impl KlGather {
    pub(super) fn new(devices: usize, rounds: usize) -> Self {
        Self {
            barrier: std::sync::Barrier::new(devices),
            slots: std::sync::Mutex::new(vec![vec![None; devices]; rounds]),
        }
    }

    /// Posts device `k`'s KL mean of `round` (`None`: no batch, no KL term, or failed) and
    /// waits for the other devices.
    fn publish(&self, round: usize, k: usize, value: Option<f64>) {
        self.slots.lock().expect("KL slots")[round][k] = value;
        self.barrier.wait();
    }

    /// `(kl, unclamped)` of a completed round: the mean of the posted means, clamped at 0
    /// (`(0, 0)` when nothing was posted).
    fn combined(&self, round: usize) -> (f64, f64) {
        let posted: Vec<f64> = self.slots.lock().expect("KL slots")[round].iter().flatten().copied().collect();
        if posted.is_empty() { (0.0, 0.0) } else { combine_device_kl(&posted) }
    }
}

impl<M: CausalLm + Module + Clone + Send + Sync> Trainer<M> {
    /// Device `k`'s share of a step: for each micro-step where it has a batch, the policy and
    /// reference passes, the KL exchange with the other devices, the loss and its backward.
    /// Always takes part in every exchange, also after an error, so no device waits forever.
    pub(super) fn worker(
        &self,
        k: usize,
        policy: &M,
        micro_steps: &[Vec<KtoBatch>],
        total: f64,
        gather: &KlGather,
    ) -> Result<WorkerOutcome> {
        let device = self.device_of(k);
        let reference = match k {
            0 => &self.reference,
            k => &self.replicas[k - 1].reference,
        };
        let frozen = policy.clone().valid();
        let uses_kl = self.config.loss.loss_type.uses_kl();
        let mut failure: Option<Error> = None;
        let batches: Vec<Option<KtoBatch>> = guarded(k, &device, || {
            Ok(micro_steps
                .iter()
                .map(|m| m.get(k).map(|b| if k == 0 { b.clone() } else { b.to_device(&device) }))
                .collect())
        })
        .unwrap_or_else(|e| {
            failure = Some(e);
            vec![None; micro_steps.len()]
        });
        let record = |result: Result<()>, failure: &mut Option<Error>| {
            if let Err(e) = result
                && failure.is_none()
            {
                *failure = Some(e);
            }
        };

        // Round 0: the window's KL (accumulation_window), one mean per device.
        let window = self.kl_spans_window();
        let mut local = None;
        if window {
            match self.window_kl(k, &device, reference, &frozen, &batches) {
                Ok(kl) => local = kl,
                Err(e) => record(Err(e), &mut failure),
            }
        }
        gather.publish(0, k, local);

        let mut accumulator = GradientsAccumulator::<M>::new();
        let mut loss_sum = 0.0;
        let mut rows = Vec::with_capacity(micro_steps.len());
        for (j, batch) in batches.iter().enumerate() {
            let round = j + 1;
            // Forward passes; the policy's graph is kept until the loss is known.
            let passes = match (batch, failure.is_none()) {
                (Some(batch), true) => {
                    match guarded(k, &device, || self.forward_passes(policy, &frozen, reference, batch, window)) {
                        Ok(p) => Some(p),
                        Err(e) => {
                            record(Err(e), &mut failure);
                            None
                        }
                    }
                }
                _ => None,
            };
            let local = passes.as_ref().and_then(|p| p.kl.as_ref()).map(|kl| scalar(kl.unclamped.clone()));
            gather.publish(round, k, local);
            let z0 = match (uses_kl, window) {
                (false, _) => (0.0, 0.0),
                (true, true) => gather.combined(0),
                (true, false) => gather.combined(round),
            };
            let (Some(passes), Some(batch)) = (passes, batch) else {
                if self.ddp.is_some() {
                    self.ddp_idle_backward(policy, micro_steps, j, &device);
                }
                rows.push(None);
                continue;
            };
            let backward = guarded(k, &device, || {
                let inner = device.clone().without_autodiff();
                let kl = Tensor::<1>::from_floats([z0.0 as f32], &inner);
                let policy_logps = passes.policy.logps.clone();
                let out = kto_loss(&self.config.loss, policy_logps, passes.reference, batch.desirable.clone(), kl);
                let loss_value = scalar(out.loss.clone().inner());
                if !loss_value.is_finite() {
                    let step = self.step + 1;
                    return Err(Error::NonFinite { step, what: format!("loss {loss_value}") });
                }
                let grads = (out.loss / total).backward();
                let grads = GradientsParams::from_grads(grads, policy);
                let stats = passes.policy.stats.as_ref().expect("token stats requested");
                let host = HostRows {
                    kl: z0,
                    tokens: batch.matched.attention_mask.clone().int().sum().inner().into_scalar::<i64>() as f64,
                    desirable: host_bools(batch.desirable.clone()),
                    policy_logps: host_f32(passes.policy.logps.clone().inner()),
                    rewards: host_f32(out.rewards.inner()),
                    entropy: host_f32(stats.entropy_sum.clone().inner()),
                    mean_logit: host_f32(stats.mean_logit_sum.clone().inner()),
                    n_tokens: host_i64(passes.policy.n_tokens.clone().inner()),
                };
                Ok((loss_value, grads, host))
            });
            match backward {
                Ok((loss_value, grads, host)) => {
                    loss_sum += loss_value / total;
                    accumulator.accumulate(policy, grads);
                    rows.push(Some(host));
                }
                Err(e) => {
                    record(Err(e), &mut failure);
                    if self.ddp.is_some() {
                        self.ddp_idle_backward(policy, micro_steps, j, &device);
                    }
                    rows.push(None);
                }
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(WorkerOutcome { grads: accumulator.grads(), loss: loss_sum, rows }),
        }
    }

    /// Under DDP, a device with nothing to contribute to micro-step `j` still joins its
    /// all-reduce: a backward of zero times the log-probs of the micro-step's first batch
    /// touches the same parameters and adds nothing.
    fn ddp_idle_backward(&self, policy: &M, micro_steps: &[Vec<KtoBatch>], j: usize, device: &Device) {
        let seqs = micro_steps[j][0].matched.to_device(device);
        let logps =
            completion_logps(policy, seqs.input_ids, seqs.attention_mask, seqs.completion_mask, &self.config.logps)
                .logps;
        let _ = (logps.sum() * 0.0).backward();
    }
}

/// Runs one piece of device `k`'s work, turning a panic (out of memory, a shape error, a
/// backend failure) into [`Error::DeviceFailed`] naming the device, so the worker goes on to
/// meet the other devices at every exchange instead of leaving them waiting forever.
pub(super) fn guarded<T>(k: usize, device: &Device, work: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).unwrap_or_else(|payload| {
        Err(Error::DeviceFailed { device: k, name: format!("{device:?}"), message: panic_message(payload.as_ref()) })
    })
}

/// The text of a panic's payload.
pub(super) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    match (payload.downcast_ref::<&str>(), payload.downcast_ref::<String>()) {
        (Some(s), _) => (*s).to_string(),
        (_, Some(s)) => s.clone(),
        _ => "a panic without a message".to_string(),
    }
}

/// Marks every trainable parameter of `module` for burn's collective gradient reduction.
pub(super) fn mark_distributed<M: Module>(module: M) -> M {
    struct Mark;
    impl burn::module::ModuleMapper for Mark {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            let (id, tensor, mapper) = param.consume();
            let tensor = if tensor.is_require_grad() { tensor.set_distributed(id) } else { tensor };
            Param::from_mapped_value(id, tensor, mapper)
        }
    }
    module.map(&mut Mark)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kl::kl_estimate;
    use crate::logps::LogpsConfig;
    use crate::loss::{KtoLossConfig, LossType};
    use crate::test_lm::TinyLm;
    use crate::trainer::test_support::*;
    use crate::trainer::{KlMode, Reference, TrainerConfig};

    /// Weights within 1e-6 (the bound): the two runs add the same per-row terms in a
    /// different order (per device, then across devices).
    const PARALLEL_WEIGHTS: f32 = 1e-6;

    #[test]
    fn two_devices_equal_one_device_accumulating_the_same_batches() {
        // Two devices, one batch of 4 each per step, z₀ = mean of the two devices' KL means;
        // one device accumulating the same two batches with one z₀ over the window: with equal
        // batch sizes the mean of the device means is the window mean.
        let (two, device) = trainer(config(4, 1, KlMode::MicroBatch));
        let mut two = two.with_devices(std::slice::from_ref(&device));
        let (mut one, _) = trainer(config(4, 2, KlMode::AccumulationWindow));
        assert_eq!((two.devices(), one.devices()), (2, 1));
        for step in 0..3 {
            let (a, b) = (batch(4, 2 * step, &device), batch(4, 2 * step + 1, &device));
            let r2 = two.train_step_parallel(&[vec![a.clone(), b.clone()]]).expect("two devices");
            let r1 = one.train_step(&[a, b]).expect("one device");
            assert!((r2.loss - r1.loss).abs() <= 1e-6, "step {step}: loss {} vs {}", r2.loss, r1.loss);
            assert!((r2.grad_norm - r1.grad_norm).abs() <= 1e-6 * r1.grad_norm.max(1.0), "step {step}");
            let (l2, l1) = (logged(&mut two), logged(&mut one));
            for key in ["kl", "kl_unclamped", "rewards/chosen", "rewards/rejected", "logps/chosen", "num_tokens"] {
                let (x, y) = (l2[key], l1[key]);
                assert!((x - y).abs() <= 1e-6 * y.abs().max(1.0), "step {step} {key}: {x} vs {y}");
            }
        }
        assert_same_parameters(&two, &one, PARALLEL_WEIGHTS);
    }

    #[test]
    fn the_logged_kl_is_the_mean_of_the_device_means_and_rewards_pool_every_row() {
        let (trainer, device) = trainer(config(4, 1, KlMode::MicroBatch));
        let mut trainer = trainer.with_devices(&[device.clone(), device.clone()]);
        // A first step moves the policy away from the reference (before it, every KL is 0).
        let first: Vec<KtoBatch> = (0..3).map(|k| batch(4, k, &device)).collect();
        trainer.train_step_parallel(&[first]).expect("three devices");
        trainer.log(1.0);
        let batches: Vec<KtoBatch> = (0..3).map(|k| batch(4, 10 + k, &device)).collect();
        // Each device's own KL mean with the weights before the step: policy and reference
        // log-probs of its KL sequences.
        let frozen = trainer.policy().clone().valid();
        let Reference::Model(reference) = trainer.reference().clone() else { unreachable!("a model") };
        let means: Vec<f64> = batches
            .iter()
            .map(|b| {
                let kl = b.kl.as_ref().expect("KL sequences").inner();
                let score = |m: &TinyLm| {
                    completion_logps(
                        m,
                        kl.input_ids.clone(),
                        kl.attention_mask.clone(),
                        kl.completion_mask.clone(),
                        &LogpsConfig::new(),
                    )
                    .logps
                };
                scalar(kl_estimate(score(&frozen), score(&reference)).unclamped)
            })
            .collect();
        assert!(means.iter().any(|m| *m != means[0]), "the devices' batches differ");
        // TRL gathers the rewards of every device: Σ chosen rewards / number of chosen rows.
        let (mut chosen_sum, mut chosen_count) = (0.0, 0.0);
        for b in &batches {
            let m = b.matched.inner();
            let score = |lm: &TinyLm| {
                let scored = completion_logps(
                    lm,
                    m.input_ids.clone(),
                    m.attention_mask.clone(),
                    m.completion_mask.clone(),
                    &LogpsConfig::new(),
                );
                host_f32(scored.logps)
            };
            let (policy, reference) = (score(&frozen), score(&reference));
            for ((p, r), desirable) in policy.iter().zip(&reference).zip(host_bools(b.desirable.clone())) {
                if desirable {
                    chosen_sum += 0.1 * f64::from(p - r); // β = 0.1
                    chosen_count += 1.0;
                }
            }
        }
        trainer.train_step_parallel(&[batches]).expect("three devices");
        let logged = logged(&mut trainer);
        let chosen = chosen_sum / chosen_count;
        assert!(
            (logged["rewards/chosen"] - chosen).abs() <= 1e-6 * chosen.abs().max(1.0),
            "{} vs {chosen}",
            logged["rewards/chosen"]
        );
        let mean = means.iter().sum::<f64>() / 3.0;
        assert!((logged["kl_unclamped"] - mean).abs() <= 1e-6, "{} vs {mean}", logged["kl_unclamped"]);
        assert!((logged["kl"] - mean.max(0.0)).abs() <= 1e-6, "{} vs {}", logged["kl"], mean.max(0.0));
    }

    #[test]
    fn a_short_last_micro_step_leaves_devices_idle_and_averages_what_ran() {
        // Without a KL term each micro-batch's loss is independent: two devices over the
        // micro-steps [b0, b1], [b2] equal one device accumulating b0, b1, b2 (each / 3).
        let apo = |ga| TrainerConfig {
            loss: KtoLossConfig::new().with_loss_type(LossType::ApoZeroUnpaired),
            ..config(4, ga, KlMode::MicroBatch)
        };
        let (two, device) = trainer(apo(2));
        let mut two = two.with_devices(std::slice::from_ref(&device));
        let (mut one, _) = trainer(apo(3));
        let b: Vec<KtoBatch> = (0..3).map(|k| batch(4, k, &device)).collect();
        let r2 = two.train_step_parallel(&[vec![b[0].clone(), b[1].clone()], vec![b[2].clone()]]).expect("two devices");
        let r1 = one.train_step(&b).expect("one device");
        assert!((r2.loss - r1.loss).abs() <= 1e-6, "{} vs {}", r2.loss, r1.loss);
        assert_same_parameters(&two, &one, PARALLEL_WEIGHTS);
        let err = two.train_step_parallel(&[vec![b[0].clone(), b[1].clone(), b[2].clone()]]).expect_err("3 > 2");
        assert!(err.to_string().contains("3 batches for 2 device(s)"), "{err}");
    }

    #[test]
    fn a_failure_on_one_device_stops_the_step_without_a_deadlock() {
        let (trainer, device) = trainer(config(4, 1, KlMode::MicroBatch));
        let mut trainer = trainer.with_devices(std::slice::from_ref(&device));
        let good = batch(4, 0, &device);
        let broken = KtoBatch { kl: None, ..batch(4, 1, &device) };
        let before = parameters(&trainer);
        // Device 1 fails in its first micro-step; both devices still meet at every exchange.
        let err = trainer
            .train_step_parallel(&[vec![good.clone(), broken], vec![good.clone(), good]])
            .expect_err("a batch without KL sequences");
        assert!(err.to_string().contains("no KL sequences"), "{err}");
        assert_eq!(trainer.steps(), 0);
        assert_eq!(parameters(&trainer), before);
    }

    #[test]
    fn a_panic_on_one_device_ends_the_step_with_an_error_naming_it() {
        let (trainer, device) = trainer(config(4, 1, KlMode::MicroBatch));
        let mut trainer = trainer.with_devices(&[device.clone(), device.clone()]);
        let good = batch(4, 0, &device);
        // A completion mask one position short: the log-prob shape assertion panics on device 1.
        let mut broken = batch(4, 1, &device);
        broken.matched.completion_mask = broken.matched.completion_mask.slice([0..4, 0..5]);
        let before = parameters(&trainer);
        for micro_steps in [
            vec![vec![good.clone(), broken.clone(), good.clone()]],
            vec![vec![good.clone(), broken.clone(), good.clone()], vec![good.clone(), good.clone(), good.clone()]],
        ] {
            let err = trainer.train_step_parallel(&micro_steps).expect_err("device 1 panics");
            assert!(matches!(err, Error::DeviceFailed { device: 1, .. }), "{err}");
            assert!(err.to_string().starts_with("device 1 ("), "{err}");
            assert_eq!(trainer.steps(), 0);
            assert_eq!(parameters(&trainer), before);
        }
        // On a single device the same panic is an error too.
        let (mut single, _) = trainer_single();
        let err = single.train_step(&[broken]).expect_err("panics");
        assert!(matches!(err, Error::DeviceFailed { device: 0, .. }), "{err}");
    }
}
