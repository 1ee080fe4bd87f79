//! The KTO training step with TRL 1.16's arithmetic: per micro-batch a no-graph KL pass, the
//! policy forward with autodiff, the reference log-probs (a frozen model or precomputed), the
//! loss divided by the accumulation steps, backward and accumulation; per optimizer step the
//! global gradient norm, clipping, the learning rate of the schedule and the update.
//!
//! The trainer holds no data and does no I/O: the caller hands it the micro-batches of each step
//! (see `kto-data`) and reads back [`StepReport`]s and logged metrics.

use burn::module::{Module, Param};
use burn::optim::{GradientsAccumulator, GradientsParams, MultiGradientsParams};
use burn::prelude::*;
use burn::tensor::distributed::{DistributedConfig, DistributedContext, ReduceOperation};

use crate::batch::{KtoBatch, SequenceBatch};
use crate::error::{Error, Result};
use crate::kl::{KlEstimate, combine_device_kl, kl_estimate};
use crate::lm::CausalLm;
use crate::logps::{CompletionLogps, LogpsConfig, completion_logps, paired_completion_logps};
use crate::loss::{KtoLossConfig, kto_loss};
use crate::metrics::{MetricsAggregator, MicroBatchInputs, Mode, RowTokenStats, microbatch_metrics};
use crate::optim::{Optimizer, OptimizerKind, Schedule, clip_factor, gather_gradients, global_grad_norm};

/// TRL's message when a KL loss runs with one row per device.
pub const BATCH_SIZE_ONE_MESSAGE: &str = "Actual (not effective) batch size must be > 1. KTO will not work properly because \
     the KL term will be equivalent to the implied reward.";

/// Which rows the KL reference point `z₀` is estimated from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KlMode {
    /// Each micro-batch's own KL pairs (TRL). Needs at least two rows per micro-batch.
    #[default]
    MicroBatch,
    /// One no-graph KL pass over every micro-batch of the optimizer step, and one `z₀` for all of
    /// them: works with one row per micro-batch.
    AccumulationWindow,
}

impl KlMode {
    /// Parses `micro_batch` and `accumulation_window`.
    ///
    /// # Errors
    /// [`Error::InvalidConfig`] naming the accepted values.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "micro_batch" => Ok(Self::MicroBatch),
            "accumulation_window" => Ok(Self::AccumulationWindow),
            other => Err(Error::Settings {
                reason: format!("kl_estimate \"{other}\" is unknown (expected micro_batch or accumulation_window)"),
            }),
        }
    }
}

/// Settings of a [`Trainer`].
#[derive(Debug, Clone)]
pub struct TrainerConfig {
    /// The loss.
    pub loss: KtoLossConfig,
    /// The optimizer.
    pub optimizer: OptimizerKind,
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
    policy: M,
    /// The policy's (autodiff) device: data-parallel device 0.
    device: Device,
    reference: Reference<M>,
    /// Data-parallel devices 1.. with their copies of the reference.
    replicas: Vec<Replica<M>>,
    /// Set by [`Self::with_ddp`]: the collective all-reduce of burn's DDP (NCCL on CUDA).
    ddp: Option<std::sync::Arc<DistributedContext>>,
    optimizer: Optimizer,
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

/// Log-probs of one micro-batch's KL pass.
struct KlPass {
    policy: Tensor<1>,
    reference: Tensor<1>,
}

/// One micro-batch's forward results on one device: the policy's (with its graph), the
/// reference's, and the device's own KL estimate when its KL pairs were scored.
struct Passes {
    policy: CompletionLogps,
    reference: Tensor<1>,
    kl: Option<KlEstimate>,
}

/// What a device hands back from a step.
struct WorkerOutcome {
    grads: GradientsParams,
    /// Σ of its micro-batches' `loss / total micro-batches`.
    loss: f64,
    /// Per micro-step, the host values behind the metrics (`None` where it had no batch).
    rows: Vec<Option<HostRows>>,
}

/// Host copies of one micro-batch's per-row values, for the pooled metrics.
struct HostRows {
    /// `(z₀, unclamped)` the loss used.
    kl: (f64, f64),
    tokens: f64,
    desirable: Vec<bool>,
    policy_logps: Vec<f32>,
    rewards: Vec<f32>,
    entropy: Vec<f32>,
    mean_logit: Vec<f32>,
    n_tokens: Vec<i64>,
}

/// Where the devices meet to combine their KL means (TRL's `gather` of `kl_local`): one slot
/// per device and round, and a barrier per round. Round 0 is the accumulation window's KL,
/// round `j + 1` micro-step `j`'s.
struct KlGather {
    barrier: std::sync::Barrier,
    slots: std::sync::Mutex<Vec<Vec<Option<f64>>>>,
}

impl KlGather {
    fn new(devices: usize, rounds: usize) -> Self {
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
    /// A trainer starting at step 0. `policy` must live on an autodiff device; a reference model
    /// on its inner (non-autodiff) device.
    ///
    /// # Errors
    /// As [`TrainerConfig::validate`]; a policy without parameters.
    pub fn new(config: TrainerConfig, policy: M, reference: Reference<M>) -> Result<Self> {
        config.validate()?;
        let optimizer = Optimizer::new(config.optimizer);
        let device = policy
            .devices()
            .into_iter()
            .next()
            .ok_or_else(|| Error::Settings { reason: "the policy has no parameters".into() })?;
        Ok(Self {
            config,
            policy,
            device,
            reference,
            replicas: Vec::new(),
            ddp: None,
            optimizer,
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
        &self.policy
    }

    /// The trained policy.
    pub fn into_policy(self) -> M {
        self.policy
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
            let policy = crate::optim::parameters_by_path(&self.policy.clone().valid());
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

    fn reference_logps(
        &self,
        reference: &Reference<M>,
        seqs: &SequenceBatch,
        precomputed: Option<&Tensor<1>>,
        what: &str,
    ) -> Result<Tensor<1>> {
        match reference {
            Reference::Model(model) => Ok(completion_logps(
                model,
                seqs.input_ids.clone().inner(),
                seqs.attention_mask.clone().inner(),
                seqs.completion_mask.clone().inner(),
                &self.config.logps,
            )
            .logps),
            Reference::Precomputed => precomputed.map(|t| t.clone().inner()).ok_or_else(|| Error::Settings {
                reason: format!("the reference is precomputed but a batch has no {what}"),
            }),
        }
    }

    /// The reference's log-probs of a batch's matched sequences and, given the batch's KL
    /// sequences (on the inner device), of those too: a model scores both in one prompt-sharing
    /// pass; a precomputed reference reads them from the batch.
    fn reference_pair_on(
        &self,
        reference: &Reference<M>,
        batch: &KtoBatch,
        kl: Option<&SequenceBatch>,
    ) -> Result<(Tensor<1>, Option<Tensor<1>>)> {
        match (reference, kl) {
            (Reference::Model(model), Some(kl)) => {
                let config = &self.config.logps;
                let (matched, kl) = paired_completion_logps(model, &batch.matched.inner(), config, model, kl, config);
                Ok((matched.logps, Some(kl.logps)))
            }
            (_, kl) => {
                let matched = self.reference_logps(
                    reference,
                    &batch.matched,
                    batch.reference_logps.as_ref(),
                    "reference log-probs",
                )?;
                let kl = match kl {
                    Some(kl) => Some(self.reference_logps(
                        reference,
                        kl,
                        batch.reference_kl_logps.as_ref(),
                        "reference KL log-probs",
                    )?),
                    None => None,
                };
                Ok((matched, kl))
            }
        }
    }

    /// The policy's log-probs of `matched` through `model` (with the token statistics; with a
    /// graph when `model` is the autodiff policy) and, given KL sequences, theirs through
    /// `frozen` (no graph), the shared prompts computed once.
    fn policy_pair(
        &self,
        model: &M,
        matched: &SequenceBatch,
        frozen: &M,
        kl: Option<&SequenceBatch>,
    ) -> (CompletionLogps, Option<Tensor<1>>) {
        let with_stats = self.config.logps.clone().with_token_stats(true);
        match kl {
            Some(kl) => {
                let (matched, kl) =
                    paired_completion_logps(model, matched, &with_stats, frozen, kl, &self.config.logps);
                (matched, Some(kl.logps))
            }
            None => (
                completion_logps(
                    model,
                    matched.input_ids.clone(),
                    matched.attention_mask.clone(),
                    matched.completion_mask.clone(),
                    &with_stats,
                ),
                None,
            ),
        }
    }

    /// A batch's KL sequences on the inner device, when the loss uses a KL term.
    fn kl_sequences(&self, batch: &KtoBatch) -> Result<Option<SequenceBatch>> {
        if !self.config.loss.loss_type.uses_kl() {
            return Ok(None);
        }
        let kl = batch.kl.as_ref().ok_or_else(|| Error::Settings {
            reason: "the loss uses a KL term but a batch has no KL sequences".into(),
        })?;
        Ok(Some(kl.inner()))
    }

    /// The no-graph KL pass of one micro-batch (the accumulation window's): the policy (a
    /// non-autodiff snapshot) and `reference` on the KL sequences. `None` without a KL term.
    fn kl_pass_on(&self, reference: &Reference<M>, frozen: &M, batch: &KtoBatch) -> Result<Option<KlPass>> {
        let Some(kl) = self.kl_sequences(batch)? else {
            return Ok(None);
        };
        let policy = completion_logps(
            frozen,
            kl.input_ids.clone(),
            kl.attention_mask.clone(),
            kl.completion_mask.clone(),
            &self.config.logps,
        )
        .logps;
        let reference =
            self.reference_logps(reference, &kl, batch.reference_kl_logps.as_ref(), "reference KL log-probs")?;
        Ok(Some(KlPass { policy, reference }))
    }

    /// One optimizer step over `micro_batches` (normally `gradient_accumulation_steps` of them;
    /// a shorter last step of an epoch is allowed, as transformers does), on the policy's device.
    ///
    /// # Errors
    /// [`Error::NonFinite`] naming the step when the loss or the gradient norm is NaN or
    /// infinite (the policy is left as it was); configuration errors for batches that lack what
    /// the loss needs.
    pub fn train_step(&mut self, micro_batches: &[KtoBatch]) -> Result<StepReport> {
        let micro_steps: Vec<Vec<KtoBatch>> = micro_batches.iter().map(|b| vec![b.clone()]).collect();
        self.train_step_parallel(&micro_steps)
    }

    /// One optimizer step across the data-parallel devices ([`Self::with_devices`]).
    /// `micro_steps[j][k]` is device `k`'s micro-batch of accumulation step `j`; a micro-step
    /// may have fewer batches than devices (the end of an epoch), and the devices without one sit
    /// it out.
    ///
    /// TRL's multi-process semantics: the KL pairs stay inside each device's batch; `z₀` of a
    /// micro-step is the mean of the devices' KL means, clamped at 0, the same on every device;
    /// each device's loss is its own batch mean, divided by the number of micro-batches in the
    /// step, so the summed gradients are their mean; the logged metrics pool the rows of every
    /// device (sums over counts) and `num_tokens` counts every device's tokens.
    ///
    /// Devices run on one thread each and meet once per micro-step to combine their KL means.
    /// Their gradients are gathered with burn's [`MultiGradientsParams`] onto the policy's
    /// device, where the global-norm clipping and the optimizer update happen once.
    ///
    /// # Errors
    /// As [`Self::train_step`]; also a micro-step with no batch or more batches than devices.
    pub fn train_step_parallel(&mut self, micro_steps: &[Vec<KtoBatch>]) -> Result<StepReport> {
        let step = self.step + 1;
        let workers = self.devices();
        if micro_steps.is_empty() {
            return Err(Error::Settings { reason: "an optimizer step needs at least one micro-batch".into() });
        }
        if let Some(bad) = micro_steps.iter().find(|m| m.is_empty() || m.len() > workers) {
            return Err(Error::Settings {
                reason: format!("a micro-step has {} batches for {workers} device(s)", bad.len()),
            });
        }
        // transformers divides by the micro-batches this step actually has (the last step of an
        // epoch may have fewer than gradient_accumulation_steps); DDP then averages over
        // devices: together, the mean over every micro-batch of the step.
        let total = micro_steps.iter().map(Vec::len).sum::<usize>() as f64;
        let policies: Vec<M> = (0..workers)
            .map(|k| {
                let policy = match k {
                    0 => self.policy.clone(),
                    k => self.policy.clone().fork(&self.replicas[k - 1].device),
                };
                // A fork does not carry the mark: set it on every step's copies.
                if self.ddp.is_some() { mark_distributed(policy) } else { policy }
            })
            .collect();
        let rounds = micro_steps.len() + 1;
        let gather = KlGather::new(workers, rounds);
        let run = |k: usize| self.worker(k, &policies[k], micro_steps, total, &gather);
        let outcomes: Vec<Result<WorkerOutcome>> = if workers == 1 {
            vec![run(0)]
        } else {
            std::thread::scope(|scope| {
                let handles: Vec<_> = (0..workers).map(|k| scope.spawn(move || run(k))).collect();
                // Each worker catches its own panics (see `guarded`) and keeps meeting the
                // others at every exchange, so a join never waits on a stuck device.
                handles
                    .into_iter()
                    .enumerate()
                    .map(|(k, h)| {
                        h.join().unwrap_or_else(|payload| {
                            Err(Error::DeviceFailed {
                                device: k,
                                name: format!("{:?}", self.device_of(k)),
                                message: panic_message(payload.as_ref()),
                            })
                        })
                    })
                    .collect()
            })
        };
        let outcomes = outcomes.into_iter().collect::<Result<Vec<_>>>()?;

        // Metrics: per micro-step, the rows of every device pooled in device order (TRL's one
        // record per micro-batch). Under one KL estimate per window the window is the batch:
        // one record of all its rows, as TRL's batch of `batch × GA` rows.
        let mut step_loss = 0.0;
        let window = self.config.loss.loss_type.uses_kl() && self.config.kl_mode == KlMode::AccumulationWindow;
        let groups: Vec<Vec<&HostRows>> = if window {
            vec![(0..micro_steps.len()).flat_map(|j| outcomes.iter().filter_map(move |o| o.rows[j].as_ref())).collect()]
        } else {
            (0..micro_steps.len()).map(|j| outcomes.iter().filter_map(|o| o.rows[j].as_ref()).collect()).collect()
        };
        for rows in groups {
            self.num_tokens += rows.iter().map(|r| r.tokens).sum::<f64>();
            let cat = |f: fn(&HostRows) -> &[f32]| rows.iter().flat_map(|r| f(r).iter().copied()).collect::<Vec<f32>>();
            let desirable: Vec<bool> = rows.iter().flat_map(|r| r.desirable.iter().copied()).collect();
            let n_tokens: Vec<i64> = rows.iter().flat_map(|r| r.n_tokens.iter().copied()).collect();
            let (policy_logps, rewards) = (cat(|r| &r.policy_logps), cat(|r| &r.rewards));
            let (entropy, logits) = (cat(|r| &r.entropy), cat(|r| &r.mean_logit));
            // Every device used the same z₀ for this micro-step.
            let (kl, kl_unclamped) = rows.first().map_or((0.0, 0.0), |r| r.kl);
            let metrics = microbatch_metrics(&MicroBatchInputs {
                desirable: &desirable,
                policy_logps: &policy_logps,
                rewards: &rewards,
                kl,
                kl_unclamped,
                token_stats: Some(RowTokenStats {
                    entropy_sum: &entropy,
                    mean_logit_sum: &logits,
                    n_tokens: &n_tokens,
                }),
                num_tokens: self.num_tokens,
            });
            self.metrics.record(Mode::Train, &metrics);
        }
        for o in &outcomes {
            step_loss += o.loss;
        }

        let mut grads = match (workers, &self.ddp) {
            // DDP: every device already holds the sum over devices.
            (1, _) | (_, Some(_)) => outcomes.into_iter().next().expect("one worker").grads,
            _ => {
                let multi = MultiGradientsParams {
                    grads: outcomes
                        .into_iter()
                        .enumerate()
                        .map(|(k, o)| (o.grads, self.device_of(k).without_autodiff()))
                        .collect(),
                };
                gather_gradients(&self.policy, multi, &self.device_of(0).without_autodiff())
            }
        };
        let grad_norm = global_grad_norm(&self.policy, &grads);
        if !grad_norm.is_finite() {
            return Err(Error::NonFinite { step, what: format!("gradient norm {grad_norm}") });
        }
        let scale = clip_factor(grad_norm, self.config.max_grad_norm);
        let lr = self.config.schedule.lr(self.step);
        self.policy = self.optimizer.step(self.policy.clone(), &mut grads, lr, scale);
        self.step = step;
        self.window_loss += step_loss;
        self.window_steps += 1;
        let report = StepReport { step, loss: step_loss, grad_norm, learning_rate: lr };
        self.last = Some(report);
        Ok(report)
    }

    /// Device `k`'s share of a step: for each micro-step where it has a batch, the policy and
    /// reference passes, the KL exchange with the other devices, the loss and its backward.
    /// Always takes part in every exchange, also after an error, so no device waits forever.
    fn worker(
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
        let window = uses_kl && self.config.kl_mode == KlMode::AccumulationWindow;
        let mut local = None;
        if window {
            let window_kl = guarded(k, &device, || {
                let passes: Vec<KlPass> = batches
                    .iter()
                    .flatten()
                    .map(|b| self.kl_pass_on(reference, &frozen, b))
                    .filter_map(Result::transpose)
                    .collect::<Result<_>>()?;
                if passes.is_empty() {
                    return Ok(None);
                }
                let policy = Tensor::cat(passes.iter().map(|p| p.policy.clone()).collect(), 0);
                let reference = Tensor::cat(passes.iter().map(|p| p.reference.clone()).collect(), 0);
                Ok(Some(scalar(kl_estimate(policy, reference).unclamped)))
            });
            match window_kl {
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

    /// The policy pass (with graph) and the reference pass of one micro-batch, with the KL
    /// sequences unless the window's `z₀` is used.
    fn forward_passes(
        &self,
        policy: &M,
        frozen: &M,
        reference: &Reference<M>,
        batch: &KtoBatch,
        window: bool,
    ) -> Result<Passes> {
        // The micro-batch's own KL pass shares each row's prompt with its matched sequence: the
        // policy's KL log-probs come from the same forward as its graph, the reference's from
        // one pass over both.
        let kl_seqs = if window { None } else { self.kl_sequences(batch)? };
        let (policy_out, policy_kl) = self.policy_pair(policy, &batch.matched, frozen, kl_seqs.as_ref());
        let (reference_out, reference_kl) = self.reference_pair_on(reference, batch, kl_seqs.as_ref())?;
        let kl = policy_kl.zip(reference_kl).map(|(p, r)| kl_estimate(p, r));
        Ok(Passes { policy: policy_out, reference: reference_out, kl })
    }

    /// The logged values since the previous call, with transformers' and TRL's keys: `loss`
    /// (mean step loss of the window), `grad_norm` and `learning_rate` (of the last step), the KTO
    /// metrics (means over the window's micro-batches), `epoch` and `step`.
    pub fn log(&mut self, epoch: f64) -> Vec<(String, f64)> {
        let mut out = Vec::new();
        if let Some(last) = self.last {
            out.push(("loss".to_string(), self.window_loss / self.window_steps.max(1) as f64));
            out.push(("grad_norm".to_string(), last.grad_norm));
            out.push(("learning_rate".to_string(), last.learning_rate));
        }
        out.extend(self.metrics.flush(Mode::Train));
        out.push(("epoch".to_string(), epoch));
        out.push(("step".to_string(), self.step as f64));
        self.window_loss = 0.0;
        self.window_steps = 0;
        out
    }

    /// Evaluation over `batches` without gradients: TRL's metrics with the `eval_` prefix and
    /// `eval_loss` (the row-weighted mean of the batches' losses, as transformers gathers them);
    /// `eval_num_tokens` is the train token count so far, as TRL logs it.
    ///
    /// # Errors
    /// As [`Self::train_step`] for batches that lack what the loss needs.
    pub fn evaluate(&self, batches: &[KtoBatch]) -> Result<Vec<(String, f64)>> {
        let frozen = self.policy.clone().valid();
        let mut metrics = MetricsAggregator::new();
        // transformers repeats each batch's loss `eval_batch_size` times and accelerate cuts the
        // last batch's copies to its real rows: `eval_loss` is the row-weighted mean.
        let (mut weighted_loss, mut rows) = (0.0, 0usize);
        for batch in batches {
            let kl_seqs = self.kl_sequences(batch)?;
            let m = &batch.matched;
            let (policy, policy_kl) = self.policy_pair(&frozen, &m.inner(), &frozen, kl_seqs.as_ref());
            let (reference, reference_kl) = self.reference_pair_on(&self.reference, batch, kl_seqs.as_ref())?;
            let estimate = policy_kl.zip(reference_kl).map(|(p, r)| kl_estimate(p, r));
            let device = policy.logps.device();
            let (kl, kl_host) = match &estimate {
                Some(e) => (e.kl.clone(), (scalar(e.kl.clone()), scalar(e.unclamped.clone()))),
                None => (Tensor::<1>::zeros([1], &device), (0.0, 0.0)),
            };
            let out = kto_loss(&self.config.loss, policy.logps.clone(), reference, batch.desirable.clone().inner(), kl);
            let n = batch.desirable.dims()[0];
            weighted_loss += scalar(out.loss) * n as f64;
            rows += n;
            let stats = policy.stats.as_ref().expect("token stats requested");
            let (entropy, logits) = (host_f32(stats.entropy_sum.clone()), host_f32(stats.mean_logit_sum.clone()));
            let n_tokens = host_i64(policy.n_tokens.clone());
            let desirable = host_bools(batch.desirable.clone());
            metrics.record(
                Mode::Eval,
                &microbatch_metrics(&MicroBatchInputs {
                    desirable: &desirable,
                    policy_logps: &host_f32(policy.logps),
                    rewards: &host_f32(out.rewards),
                    kl: kl_host.0,
                    kl_unclamped: kl_host.1,
                    token_stats: Some(RowTokenStats {
                        entropy_sum: &entropy,
                        mean_logit_sum: &logits,
                        n_tokens: &n_tokens,
                    }),
                    // TRL's eval `num_tokens` is the train count so far: eval tokens never count.
                    num_tokens: self.num_tokens,
                }),
            );
        }
        let mut values = metrics.flush(Mode::Eval);
        if rows > 0 {
            // TRL's value is a float32 mean.
            values.insert(0, ("eval_loss".to_string(), f64::from((weighted_loss / rows as f64) as f32)));
        }
        Ok(values)
    }
}

/// Reference log-probs of one batch for `precompute_ref_log_probs`: the matched sequences and,
/// when the batch has them, the KL sequences, as host values in row order. Run it with the
/// reference (the untrained policy in full fine-tuning) on the training batches before the
/// first step, as TRL does at initialisation.
pub fn reference_logps<M: CausalLm>(model: &M, batch: &KtoBatch, logps: &LogpsConfig) -> (Vec<f32>, Option<Vec<f32>>) {
    let matched = batch.matched.inner();
    match &batch.kl {
        Some(kl) => {
            let (matched, kl) = paired_completion_logps(model, &matched, logps, model, &kl.inner(), logps);
            (host_f32(matched.logps), Some(host_f32(kl.logps)))
        }
        None => {
            let scored =
                completion_logps(model, matched.input_ids, matched.attention_mask, matched.completion_mask, logps);
            (host_f32(scored.logps), None)
        }
    }
}

/// Runs one piece of device `k`'s work, turning a panic (out of memory, a shape error, a
/// backend failure) into [`Error::DeviceFailed`] naming the device, so the worker goes on to
/// meet the other devices at every exchange instead of leaving them waiting forever.
fn guarded<T>(k: usize, device: &Device, work: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).unwrap_or_else(|payload| {
        Err(Error::DeviceFailed { device: k, name: format!("{device:?}"), message: panic_message(payload.as_ref()) })
    })
}

/// The text of a panic's payload.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    match (payload.downcast_ref::<&str>(), payload.downcast_ref::<String>()) {
        (Some(s), _) => (*s).to_string(),
        (_, Some(s)) => s.clone(),
        _ => "a panic without a message".to_string(),
    }
}

/// Marks every trainable parameter of `module` for burn's collective gradient reduction.
fn mark_distributed<M: Module>(module: M) -> M {
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

fn scalar(t: Tensor<1>) -> f64 {
    f64::from(t.inner().into_scalar::<f32>())
}

fn host_f32(t: Tensor<1>) -> Vec<f32> {
    t.inner().into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 data after convert")
}

fn host_i64(t: Tensor<1, Int>) -> Vec<i64> {
    t.inner().into_data().convert::<i64>().try_into_vec::<i64>().expect("i64 data after convert")
}

fn host_bools(t: Tensor<1, Bool>) -> Vec<bool> {
    t.inner().into_data().try_into_vec::<bool>().expect("bool data")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loss::LossType;
    use crate::optim::ScheduleKind;
    use crate::test_lm::TinyLm;
    use std::collections::BTreeMap;

    fn config(batch: usize, ga: usize, kl_mode: KlMode) -> TrainerConfig {
        TrainerConfig {
            loss: KtoLossConfig::new(),
            optimizer: OptimizerKind::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 },
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
    fn batch(rows: usize, offset: i64, device: &Device) -> KtoBatch {
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

    fn trainer(cfg: TrainerConfig) -> (Trainer<TinyLm>, Device) {
        let device = kto_testkit::device();
        device.seed(7);
        let train = device.clone().autodiff();
        let policy = TinyLm::new(16, 8, &train);
        let reference = policy.clone().valid();
        (Trainer::new(cfg, policy, Reference::Model(reference)).expect("valid"), train)
    }

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
    fn accumulation_window_trains_with_one_row_per_micro_batch() {
        let (mut trainer, device) = trainer(config(1, 4, KlMode::AccumulationWindow));
        let before = crate::optim::global_grad_norm(trainer.policy(), &GradientsParams::new());
        assert_eq!(before, 0.0, "no gradients yet");
        for step in 0..3 {
            let micro: Vec<KtoBatch> = (0..4).map(|k| batch(1, step * 4 + k, &device)).collect();
            let report = trainer.train_step(&micro).expect("trains");
            assert!(report.loss.is_finite() && report.grad_norm > 0.0, "{report:?}");
        }
        let logged = trainer.log(1.0);
        let get = |k: &str| logged.iter().find(|(key, _)| key == k).map(|(_, v)| *v);
        // The window is the batch for the metrics too (one record per step, as TRL's batch of
        // four rows): both labels are in every window (labels alternate across micro-batches),
        // so each step has a margin, and the logged margin is chosen − rejected.
        let (chosen, rejected) = (get("rewards/chosen").expect("chosen"), get("rewards/rejected").expect("rejected"));
        let margin = get("rewards/margins").expect("every window has both labels");
        assert!(
            (margin - (chosen - rejected)).abs() <= 1e-6 * margin.abs().max(1.0),
            "{margin} vs {chosen} - {rejected}"
        );
        assert_eq!(get("step"), Some(3.0));
        // After training, the window's KL estimate is shared by its micro-batches: one value.
        assert!(get("kl").expect("kl").is_finite());
    }

    #[test]
    fn micro_batch_kl_equals_the_window_kl_when_the_window_is_one_micro_batch() {
        let (mut a, device) = trainer(config(4, 1, KlMode::MicroBatch));
        let (mut b, _) = trainer(config(4, 1, KlMode::AccumulationWindow));
        for step in 0..3 {
            let ra = a.train_step(&[batch(4, step, &device)]).expect("trains");
            let rb = b.train_step(&[batch(4, step, &device)]).expect("trains");
            assert_eq!(ra, rb, "step {step}");
        }
    }

    #[test]
    fn a_nan_loss_stops_the_step_and_leaves_the_policy_untouched() {
        let (mut trainer, device) = trainer(config(4, 1, KlMode::MicroBatch));
        trainer.train_step(&[batch(4, 0, &device)]).expect("a good step");
        // Poison the head: every logit becomes NaN.
        let policy = trainer.policy().clone();
        let poisoned = TinyLm {
            lm_head: burn::nn::Linear {
                weight: burn::module::Param::from_tensor(Tensor::from_inner(
                    policy.lm_head.weight.val().inner().mul_scalar(f32::NAN),
                )),
                bias: policy.lm_head.bias.clone(),
            },
            ..policy
        };
        trainer.policy = poisoned;
        let before = trainer.policy().lm_head.bias.as_ref().expect("bias").val().into_data();
        let err = trainer.train_step(&[batch(4, 1, &device)]).expect_err("NaN");
        assert!(matches!(err, Error::NonFinite { step: 2, .. }), "{err}");
        assert!(err.to_string().starts_with("step 2: loss NaN is not finite"), "{err}");
        assert_eq!(trainer.steps(), 1, "the failed step is not counted");
        assert_eq!(trainer.policy().lm_head.bias.as_ref().expect("bias").val().into_data(), before);
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

    fn parameters(trainer: &Trainer<TinyLm>) -> BTreeMap<String, Vec<f32>> {
        crate::optim::parameters_by_path(&trainer.policy().clone().valid())
            .into_iter()
            .map(|(path, t)| (path, t.into_data().iter::<f32>().collect()))
            .collect()
    }

    fn assert_same_parameters(a: &Trainer<TinyLm>, b: &Trainer<TinyLm>, tolerance: f32) {
        let (a, b) = (parameters(a), parameters(b));
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (path, values) in &a {
            let worst = values.iter().zip(&b[path]).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            assert!(worst <= tolerance, "{path}: differs by {worst:e}");
        }
    }

    fn logged(trainer: &mut Trainer<TinyLm>) -> BTreeMap<String, f64> {
        trainer.log(1.0).into_iter().collect()
    }

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

    fn trainer_single() -> (Trainer<TinyLm>, Device) {
        trainer(config(4, 1, KlMode::MicroBatch))
    }

    #[test]
    fn fit_hands_each_device_its_own_batches_once_per_epoch() {
        use crate::fit::{EvalEvery, FitConfig, FitHooks, Position, fit};
        struct Recorder {
            device: Device,
            asked: Vec<(u64, u64)>,
        }
        impl FitHooks<TinyLm> for Recorder {
            fn micro_batch(&mut self, epoch: u64, index: u64) -> Result<KtoBatch> {
                self.asked.push((epoch, index));
                Ok(batch(4, index as i64, &self.device))
            }
            fn on_log(&mut self, _values: &[(String, f64)]) -> Result<()> {
                Ok(())
            }
        }
        let (trainer, device) = trainer(config(4, 1, KlMode::MicroBatch));
        let mut trainer = trainer.with_devices(std::slice::from_ref(&device));
        // 5 batches on 2 devices: 3 micro-steps per epoch ([0, 1], [2, 3], [4]); 1 per step.
        assert_eq!(FitConfig::micro_steps_per_epoch(5, 2), 3);
        assert_eq!(FitConfig::steps_per_epoch(5, 1, 2), 3);
        let config = FitConfig {
            max_steps: 4,
            micro_batches_per_epoch: 5,
            gradient_accumulation_steps: 1,
            logging_steps: 0,
            eval_every: EvalEvery::Never,
            save_steps: None,
            sync_ref: None,
        };
        let mut hooks = Recorder { device, asked: Vec::new() };
        let end = fit(&mut trainer, &config, Position::default(), &mut hooks).expect("fits");
        assert_eq!(hooks.asked, vec![(0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (1, 0), (1, 1)]);
        assert_eq!(end, Position { step: 4, micro_batches: 4 });
        assert!((end.epoch(3) - 4.0 / 3.0).abs() < 1e-12);
    }
}
