//! The KTO training step with TRL 1.16's arithmetic: per micro-batch a no-graph KL pass, the
//! policy forward with autodiff, the reference log-probs (a frozen model or precomputed), the
//! loss divided by the accumulation steps, backward and accumulation; per optimizer step the
//! global gradient norm, clipping, the learning rate of the schedule and the update.
//!
//! The trainer holds no data and does no I/O: the caller hands it the micro-batches of each step
//! (see `kto-data`) and reads back [`StepReport`]s and logged metrics.
//!
//! ## The files
//! Each file adds its own `impl` block to [`Trainer`]; read them in this order:
//!
//! | file | holds |
//! | --- | --- |
//! | `mod.rs` (this one) | the settings, the [`Trainer`] and its accessors, [`Trainer::log`] |
//! | `passes.rs` | the forward passes of one micro-batch (policy, reference, KL) and the host copies |
//! | `step.rs` | one optimizer step: [`Trainer::train_step`], [`Trainer::train_step_parallel`] |
//! | `parallel.rs` | one device's share of a step (`worker`), the KL exchange between devices, DDP |
//! | `window.rs` | the KL estimate over the accumulation window and the grouping of metric rows |
//! | `eval.rs` | [`Trainer::evaluate`] |

use burn::module::Module;
use burn::prelude::*;
use burn::tensor::distributed::{DistributedConfig, DistributedContext, ReduceOperation};

use crate::error::{Error, Result};
use crate::lm::CausalLm;
use crate::logps::LogpsConfig;
use crate::loss::KtoLossConfig;
use crate::metrics::{LogRecord, MetricsAggregator, Mode};
use crate::optim::{Optimizer, OptimizerKind, OptimizerStorage, Schedule};

mod eval;
mod parallel;
mod passes;
mod step;
#[cfg(test)]
pub(crate) mod test_support;
mod window;

pub use passes::reference_logps;

/// TRL's message when a KL loss runs with one row per device.
pub const BATCH_SIZE_ONE_MESSAGE: &str = "Actual (not effective) batch size must be > 1. KTO will not work properly because \
     the KL term will be equivalent to the implied reward.";

crate::choice! {
    /// Which rows the KL reference point `z₀` is estimated from (`kl_estimate`).
    pub enum KlMode("kl_estimate", default = MicroBatch) {
        /// Each micro-batch's own KL pairs (TRL). Needs at least two rows per micro-batch.
        MicroBatch = "micro_batch",
        /// One no-graph KL pass over every micro-batch of the optimizer step, and one `z₀` for
        /// all of them: works with one row per micro-batch.
        AccumulationWindow = "accumulation_window",
    }
}

/// Settings of a [`Trainer`].
#[derive(Debug, Clone)]
pub struct TrainerConfig {
    /// The loss.
    pub loss: KtoLossConfig,
    /// The optimizer.
    pub optimizer: OptimizerKind,
    /// Where it keeps what it updates narrower than f32 (bf16 weights or moments).
    pub storage: OptimizerStorage,
    /// The learning-rate schedule.
    pub schedule: Schedule,
    /// Global gradient-norm clipping (`None` or `0` disables it; transformers' default 1.0).
    pub max_grad_norm: Option<f64>,
    /// Micro-batches per optimizer step.
    pub gradient_accumulation_steps: usize,
    /// Rows per micro-batch (checked against TRL's batch-size rule).
    pub per_device_train_batch_size: usize,
    /// How `z₀` is estimated.
    pub kl_mode: KlMode,
    /// Chunking of the log-prob computation.
    pub logps: LogpsConfig,
}

impl TrainerConfig {
    /// Checks the settings together.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the setting; TRL's message for a KL loss with one row per
    /// micro-batch (unless [`KlMode::AccumulationWindow`]).
    pub fn validate(&self) -> Result<()> {
        self.loss.validate()?;
        let bad = |reason: String| Err(Error::Settings { reason });
        if self.gradient_accumulation_steps == 0 {
            return bad("gradient_accumulation_steps must be >= 1".into());
        }
        if self.per_device_train_batch_size == 0 {
            return bad("per_device_train_batch_size must be >= 1".into());
        }
        if !(self.schedule.learning_rate >= 0.0 && self.schedule.learning_rate.is_finite()) {
            return bad(format!("learning_rate must be >= 0, got {}", self.schedule.learning_rate));
        }
        if let Some(m) = self.max_grad_norm
            && (m.is_nan() || m < 0.0)
        {
            return bad(format!("max_grad_norm must be >= 0, got {m}"));
        }
        if self.loss.loss_type.uses_kl() && self.per_device_train_batch_size <= 1 && self.kl_mode == KlMode::MicroBatch
        {
            return bad(BATCH_SIZE_ONE_MESSAGE.into());
        }
        if self.loss.loss_type.uses_kl()
            && self.kl_mode == KlMode::AccumulationWindow
            && self.per_device_train_batch_size * self.gradient_accumulation_steps <= 1
        {
            return bad(
                "kl_estimate accumulation_window needs at least two rows per window (per_device_train_batch_size × gradient_accumulation_steps >= 2): a window of one row pairs it with its own completion"
                    .into(),
            );
        }
        Ok(())
    }
}

/// The reference the policy is measured against.
#[derive(Debug, Clone)]
pub enum Reference<M> {
    /// A frozen model on the non-autodiff device.
    Model(M),
    /// Log-probs carried by each batch (`KtoBatch::reference_logps` and `reference_kl_logps`).
    Precomputed,
}

/// What one optimizer step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// The step number (1-based, as logged).
    pub step: u64,
    /// Σ over micro-batches of `loss / gradient_accumulation_steps` (transformers' step loss).
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// The learning rate applied.
    pub learning_rate: f64,
}

/// A KTO trainer: the policy (on an autodiff device), the reference, the optimizer and the
/// metrics of the current logging window.
#[derive(Debug)]
pub struct Trainer<M> {
    config: TrainerConfig,
    /// Always `Some` between calls; taken out only while the optimizer maps it, so that the
    /// update holds the only handle on each weight and writes it in place.
    policy: Option<M>,
    /// The policy's (autodiff) device: data-parallel device 0.
    device: Device,
    reference: Reference<M>,
    /// Data-parallel devices 1.. with their copies of the reference.
    replicas: Vec<Replica<M>>,
    /// Set by [`Self::with_ddp`]: the collective all-reduce of burn's DDP (NCCL on CUDA).
    ddp: Option<std::sync::Arc<DistributedContext>>,
    optimizer: Optimizer,
    /// Set by [`Self::with_overlapped_reference`].
    overlap_reference: bool,
    step: u64,
    num_tokens: f64,
    metrics: MetricsAggregator,
    window_loss: f64,
    window_steps: u64,
    last: Option<StepReport>,
}

/// A data-parallel device beyond the first: its autodiff device and the reference living there.
#[derive(Debug)]
struct Replica<M> {
    device: Device,
    reference: Reference<M>,
}

impl<M: CausalLm + Module + Clone + Send + Sync> Trainer<M> {
    /// A trainer starting at step 0. `policy` must live on an autodiff device; a reference model
    /// on its inner (non-autodiff) device.
    ///
    /// # Errors
    /// As [`TrainerConfig::validate`]; a policy without parameters.
    pub fn new(config: TrainerConfig, policy: M, reference: Reference<M>) -> Result<Self> {
        config.validate()?;
        let optimizer = Optimizer::new(config.optimizer, config.storage);
        let device = policy
            .devices()
            .into_iter()
            .next()
            .ok_or_else(|| Error::Settings { reason: "the policy has no parameters".into() })?;
        Ok(Self {
            config,
            policy: Some(policy),
            device,
            reference,
            replicas: Vec::new(),
            ddp: None,
            optimizer,
            overlap_reference: false,
            step: 0,
            num_tokens: 0.0,
            metrics: MetricsAggregator::new(),
            window_loss: 0.0,
            window_steps: 0,
            last: None,
        })
    }

    /// Data-parallel training: `devices` are the autodiff devices of workers 1.. (the policy's
    /// own device is worker 0), e.g. `cuda:1`, `cuda:2`, or the same CPU device again in tests.
    /// Each gets the policy at every step and a copy of the reference model now; see
    /// [`Self::train_step_parallel`].
    pub fn with_devices(mut self, devices: &[Device]) -> Self {
        self.replicas = devices
            .iter()
            .map(|device| Replica { device: device.clone(), reference: self.reference_on(device) })
            .collect();
        self
    }

    /// [`Self::with_devices`] with burn's DDP instead of gathering gradients: every trainable
    /// parameter of each device's policy is marked for a collective sum (`set_distributed`), so
    /// each `backward` returns gradients already summed over the devices (NCCL's all-reduce on
    /// CUDA), and device 0's gradients drive the single optimizer update. Devices without a
    /// batch in a micro-step (the end of an epoch) run a zero-weighted backward so every device
    /// takes part in every all-reduce.
    ///
    /// Only CUDA devices implement the collective (with the NCCL library present at run time);
    /// burn panics on other backends, so callers check the devices first (`kto train --ddp`
    /// does). `devices` are workers 1..; the policy's device is worker 0.
    pub fn with_ddp(self, devices: &[Device]) -> Self {
        let mut trainer = self.with_devices(devices);
        let all: Vec<Device> = (0..trainer.devices()).map(|k| trainer.device_of(k)).collect();
        let context = DistributedContext::init(all, DistributedConfig { all_reduce_op: ReduceOperation::Sum });
        trainer.ddp = Some(std::sync::Arc::new(context));
        trainer
    }

    /// Runs each micro-batch's reference passes (a frozen model's no-graph forwards) on a thread
    /// of their own while the policy's forward runs, instead of after it. For CPU devices, where
    /// much of a pass is single-threaded elementwise work: the two passes then share the cores.
    /// The values are the same either way; on a GPU, whose kernels already fill the device, it
    /// only adds a second stream. Off by default.
    pub fn with_overlapped_reference(mut self, overlap: bool) -> Self {
        self.overlap_reference = overlap;
        self
    }

    /// Data-parallel devices (1 without [`Self::with_devices`]).
    pub fn devices(&self) -> usize {
        1 + self.replicas.len()
    }

    /// Worker `k`'s autodiff device.
    fn device_of(&self, k: usize) -> Device {
        match k {
            0 => self.device.clone(),
            k => self.replicas[k - 1].device.clone(),
        }
    }

    /// The reference moved to `device`'s inner device.
    fn reference_on(&self, device: &Device) -> Reference<M> {
        match &self.reference {
            Reference::Model(model) => Reference::Model(model.clone().to_device(&device.clone().without_autodiff())),
            Reference::Precomputed => Reference::Precomputed,
        }
    }

    /// Copies the reference to every replica again (after it changed).
    fn refresh_replicas(&mut self) {
        let references: Vec<Reference<M>> = self.replicas.iter().map(|r| self.reference_on(&r.device)).collect();
        for (replica, reference) in self.replicas.iter_mut().zip(references) {
            replica.reference = reference;
        }
    }

    /// The settings.
    pub fn config(&self) -> &TrainerConfig {
        &self.config
    }

    /// The policy being trained.
    pub fn policy(&self) -> &M {
        self.policy.as_ref().expect("the policy is only taken out during an update")
    }

    /// The trained policy.
    pub fn into_policy(self) -> M {
        self.policy.expect("the policy is only taken out during an update")
    }

    /// Optimizer steps taken.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// The optimizer (for checkpoints).
    pub fn optimizer(&self) -> &Optimizer {
        &self.optimizer
    }

    /// Tokens of the matched sequences seen so far (TRL's `num_tokens`).
    pub fn num_tokens(&self) -> f64 {
        self.num_tokens
    }

    /// The reference.
    pub fn reference(&self) -> &Reference<M> {
        &self.reference
    }

    /// TR-DPO's reference update: `ref ← α · policy + (1 − α) · ref`, parameter by parameter
    /// (matched by module path). Does nothing for a precomputed reference.
    pub fn sync_reference(&mut self, alpha: f64) {
        if let Reference::Model(reference) = &self.reference {
            let policy = crate::optim::parameters_by_path(&self.policy().clone().valid());
            let mixed = crate::optim::mix_parameters(reference.clone(), &policy, alpha);
            self.reference = Reference::Model(mixed);
            self.refresh_replicas();
        }
    }

    /// Replaces the reference (resuming a run whose reference was synced).
    pub fn set_reference(&mut self, reference: Reference<M>) {
        self.reference = reference;
        self.refresh_replicas();
    }

    /// Restores the position of a checkpointed run.
    pub fn restore(&mut self, step: u64, num_tokens: f64, optimizer: Optimizer) {
        self.step = step;
        self.num_tokens = num_tokens;
        self.optimizer = optimizer;
    }

    /// The logged values since the previous call, with transformers' and TRL's keys: `loss`
    /// (mean step loss of the window), `grad_norm` and `learning_rate` (of the last step), the KTO
    /// metrics (means over the window's micro-batches), `epoch` and `step`.
    pub fn log(&mut self, epoch: f64) -> LogRecord {
        let record = LogRecord::Train {
            loss: self.last.map(|_| self.window_loss / self.window_steps.max(1) as f64),
            grad_norm: self.last.map(|last| last.grad_norm),
            learning_rate: self.last.map(|last| last.learning_rate),
            metrics: self.metrics.flush(Mode::Train),
            epoch,
            step: self.step,
        };
        self.window_loss = 0.0;
        self.window_steps = 0;
        record
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;
    use crate::loss::LossType;

    #[test]
    fn batch_size_one_is_refused_with_trls_message_unless_the_kl_spans_the_window() {
        let err = config(1, 4, KlMode::MicroBatch).validate().expect_err("refused");
        assert_eq!(err.to_string(), BATCH_SIZE_ONE_MESSAGE);
        let apo = TrainerConfig {
            loss: KtoLossConfig::new().with_loss_type(LossType::ApoZeroUnpaired),
            ..config(1, 4, KlMode::MicroBatch)
        };
        assert!(apo.validate().is_ok(), "no KL term, no constraint");
        assert!(config(1, 4, KlMode::AccumulationWindow).validate().is_ok());
        // A window of one row would pair it with itself.
        let err = config(1, 1, KlMode::AccumulationWindow).validate().expect_err("one-row window");
        assert!(err.to_string().contains("at least two rows per window"), "{err}");
    }

    #[test]
    fn reference_sync_mixes_the_policy_in() {
        let (mut trainer, device) = trainer(config(4, 1, KlMode::MicroBatch));
        trainer.train_step(&[batch(4, 0, &device)]).expect("trains");
        let policy = crate::optim::parameters_by_path(&trainer.policy().clone().valid());
        let before = match trainer.reference() {
            Reference::Model(m) => crate::optim::parameters_by_path(m),
            Reference::Precomputed => unreachable!("a model reference"),
        };
        trainer.sync_reference(0.25);
        let after = match trainer.reference() {
            Reference::Model(m) => crate::optim::parameters_by_path(m),
            Reference::Precomputed => unreachable!("a model reference"),
        };
        assert_eq!(after.len(), policy.len());
        for (path, mixed) in &after {
            // ref ← 0.25 · policy + 0.75 · ref, element by element.
            let expected = policy[path].clone() * 0.25 + before[path].clone() * 0.75;
            mixed.to_data().assert_approx_eq::<f32>(&expected.into_data(), burn::tensor::Tolerance::absolute(1e-7));
        }
    }
}
