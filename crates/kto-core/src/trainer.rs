//! The KTO training step with TRL 1.16's arithmetic: per micro-batch a no-graph KL pass, the
//! policy forward with autodiff, the reference log-probs (a frozen model or precomputed), the
//! loss divided by the accumulation steps, backward and accumulation; per optimizer step the
//! global gradient norm, clipping, the learning rate of the schedule and the update.
//!
//! The trainer holds no data and does no I/O: the caller hands it the micro-batches of each step
//! (see `kto-data`) and reads back [`StepReport`]s and logged metrics.

use burn::module::Module;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;

use crate::batch::{KtoBatch, SequenceBatch};
use crate::error::{Error, Result};
use crate::kl::kl_estimate;
use crate::lm::CausalLm;
use crate::logps::{CompletionLogps, LogpsConfig, completion_logps, paired_completion_logps};
use crate::loss::{KtoLossConfig, kto_loss};
use crate::metrics::{MetricsAggregator, MicroBatchInputs, Mode, Reduction, RowTokenStats, microbatch_metrics};
use crate::optim::{Optimizer, OptimizerKind, Schedule, clip_factor, global_grad_norm};

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
    reference: Reference<M>,
    optimizer: Optimizer,
    step: u64,
    num_tokens: f64,
    metrics: MetricsAggregator,
    window_loss: f64,
    window_steps: u64,
    last: Option<StepReport>,
}

/// Host copies of one micro-batch's KL pass.
struct KlPass {
    policy: Tensor<1>,
    reference: Tensor<1>,
}

impl<M: CausalLm + Module + Clone> Trainer<M> {
    /// A trainer starting at step 0. `policy` must live on an autodiff device; a reference model
    /// on its inner (non-autodiff) device.
    ///
    /// # Errors
    /// As [`TrainerConfig::validate`].
    pub fn new(config: TrainerConfig, policy: M, reference: Reference<M>) -> Result<Self> {
        config.validate()?;
        let optimizer = Optimizer::new(config.optimizer);
        Ok(Self {
            config,
            policy,
            reference,
            optimizer,
            step: 0,
            num_tokens: 0.0,
            metrics: MetricsAggregator::new(),
            window_loss: 0.0,
            window_steps: 0,
            last: None,
        })
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
        }
    }

    /// Replaces the reference (resuming a run whose reference was synced).
    pub fn set_reference(&mut self, reference: Reference<M>) {
        self.reference = reference;
    }

    /// Restores the position of a checkpointed run.
    pub fn restore(&mut self, step: u64, num_tokens: f64, optimizer: Optimizer) {
        self.step = step;
        self.num_tokens = num_tokens;
        self.optimizer = optimizer;
    }

    fn reference_logps(&self, seqs: &SequenceBatch, precomputed: Option<&Tensor<1>>, what: &str) -> Result<Tensor<1>> {
        match &self.reference {
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
    fn reference_pair(&self, batch: &KtoBatch, kl: Option<&SequenceBatch>) -> Result<(Tensor<1>, Option<Tensor<1>>)> {
        match (&self.reference, kl) {
            (Reference::Model(model), Some(kl)) => {
                let config = &self.config.logps;
                let (matched, kl) = paired_completion_logps(model, &batch.matched.inner(), config, model, kl, config);
                Ok((matched.logps, Some(kl.logps)))
            }
            (_, kl) => {
                let matched =
                    self.reference_logps(&batch.matched, batch.reference_logps.as_ref(), "reference log-probs")?;
                let kl = match kl {
                    Some(kl) => {
                        Some(self.reference_logps(kl, batch.reference_kl_logps.as_ref(), "reference KL log-probs")?)
                    }
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

    /// The no-graph KL pass of one micro-batch: the policy (a non-autodiff snapshot) and the
    /// reference on the KL sequences.
    fn kl_pass(&self, frozen: &M, batch: &KtoBatch) -> Result<Option<KlPass>> {
        if !self.config.loss.loss_type.uses_kl() {
            return Ok(None);
        }
        let kl = batch.kl.as_ref().ok_or_else(|| Error::Settings {
            reason: "the loss uses a KL term but a batch has no KL sequences".into(),
        })?;
        let policy = completion_logps(
            frozen,
            kl.input_ids.clone().inner(),
            kl.attention_mask.clone().inner(),
            kl.completion_mask.clone().inner(),
            &self.config.logps,
        )
        .logps;
        let reference = self.reference_logps(kl, batch.reference_kl_logps.as_ref(), "reference KL log-probs")?;
        Ok(Some(KlPass { policy, reference }))
    }

    /// One optimizer step over `micro_batches` (normally `gradient_accumulation_steps` of them;
    /// a shorter last step of an epoch is allowed, as transformers does).
    ///
    /// # Errors
    /// [`Error::NonFinite`] naming the step when the loss or the gradient norm is NaN or
    /// infinite (the policy is left as it was); configuration errors for batches that lack what
    /// the loss needs.
    pub fn train_step(&mut self, micro_batches: &[KtoBatch]) -> Result<StepReport> {
        let step = self.step + 1;
        if micro_batches.is_empty() {
            return Err(Error::Settings { reason: "an optimizer step needs at least one micro-batch".into() });
        }
        // transformers divides by the micro-batches this step actually has (the last step of an
        // epoch may have fewer than gradient_accumulation_steps).
        let ga = micro_batches.len() as f64;
        let frozen = self.policy.clone().valid();
        let window_kl = match self.config.kl_mode {
            KlMode::AccumulationWindow if self.config.loss.loss_type.uses_kl() => {
                let passes: Vec<KlPass> = micro_batches
                    .iter()
                    .map(|b| self.kl_pass(&frozen, b))
                    .collect::<Result<Vec<_>>>()?
                    .into_iter()
                    .flatten()
                    .collect();
                let policy = Tensor::cat(passes.iter().map(|p| p.policy.clone()).collect(), 0);
                let reference = Tensor::cat(passes.iter().map(|p| p.reference.clone()).collect(), 0);
                Some(kl_estimate(policy, reference))
            }
            _ => None,
        };
        let mut accumulator = GradientsAccumulator::<M>::new();
        let mut step_loss = 0.0;
        for batch in micro_batches {
            // The micro-batch's own KL pass (unless the window's z₀ is used) shares each row's
            // prompt with its matched sequence: the policy's KL log-probs come from the same
            // forward as its graph, the reference's from one pass over both.
            let kl_seqs = match window_kl {
                Some(_) => None,
                None => self.kl_sequences(batch)?,
            };
            let m = &batch.matched;
            let (policy, policy_kl) = self.policy_pair(&self.policy, m, &frozen, kl_seqs.as_ref());
            let (reference, reference_kl) = self.reference_pair(batch, kl_seqs.as_ref())?;
            let estimate = match (&window_kl, policy_kl, reference_kl) {
                (Some(w), _, _) => Some(w.clone()),
                (None, Some(policy_kl), Some(reference_kl)) => Some(kl_estimate(policy_kl, reference_kl)),
                _ => None,
            };
            let device = policy.logps.device();
            // Reference log-probs and z₀ stay off the autodiff graph: mixed with the policy's
            // tracked tensors they act as constants.
            let (kl, kl_host) = match &estimate {
                Some(e) => {
                    let kl = e.kl.clone().inner();
                    (kl.clone(), (scalar(kl), scalar(e.unclamped.clone())))
                }
                None => (Tensor::<1>::zeros([1], &device.clone().without_autodiff()), (0.0, 0.0)),
            };
            let out = kto_loss(&self.config.loss, policy.logps.clone(), reference, batch.desirable.clone(), kl);
            let loss_value = scalar(out.loss.clone().inner());
            if !loss_value.is_finite() {
                return Err(Error::NonFinite { step, what: format!("loss {loss_value}") });
            }
            step_loss += loss_value / ga;
            let grads = (out.loss / ga).backward();
            accumulator.accumulate(&self.policy, GradientsParams::from_grads(grads, &self.policy));

            let tokens = m.attention_mask.clone().int().sum().inner().into_scalar::<i64>() as f64;
            self.num_tokens += tokens;
            let desirable = host_bools(batch.desirable.clone());
            let policy_logps = host_f32(policy.logps.clone().inner());
            let rewards = host_f32(out.rewards.inner());
            let stats = policy.stats.as_ref().expect("token stats requested");
            let (entropy, logits) =
                (host_f32(stats.entropy_sum.clone().inner()), host_f32(stats.mean_logit_sum.clone().inner()));
            let n_tokens = host_i64(policy.n_tokens.clone().inner());
            let metrics = microbatch_metrics(&MicroBatchInputs {
                desirable: &desirable,
                policy_logps: &policy_logps,
                rewards: &rewards,
                kl: kl_host.0,
                kl_unclamped: kl_host.1,
                token_stats: Some(RowTokenStats {
                    entropy_sum: &entropy,
                    mean_logit_sum: &logits,
                    n_tokens: &n_tokens,
                }),
                num_tokens: self.num_tokens,
            });
            self.metrics.record(Mode::Train, &metrics);
        }
        let mut grads = accumulator.grads();
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
    /// `eval_loss` (mean of the batches' losses).
    ///
    /// # Errors
    /// As [`Self::train_step`] for batches that lack what the loss needs.
    pub fn evaluate(&self, batches: &[KtoBatch]) -> Result<Vec<(String, f64)>> {
        let frozen = self.policy.clone().valid();
        let mut metrics = MetricsAggregator::new();
        let mut num_tokens = 0.0;
        for batch in batches {
            let kl_seqs = self.kl_sequences(batch)?;
            let m = &batch.matched;
            let (policy, policy_kl) = self.policy_pair(&frozen, &m.inner(), &frozen, kl_seqs.as_ref());
            let (reference, reference_kl) = self.reference_pair(batch, kl_seqs.as_ref())?;
            let estimate = policy_kl.zip(reference_kl).map(|(p, r)| kl_estimate(p, r));
            let device = policy.logps.device();
            let (kl, kl_host) = match &estimate {
                Some(e) => (e.kl.clone(), (scalar(e.kl.clone()), scalar(e.unclamped.clone()))),
                None => (Tensor::<1>::zeros([1], &device), (0.0, 0.0)),
            };
            let out = kto_loss(&self.config.loss, policy.logps.clone(), reference, batch.desirable.clone().inner(), kl);
            metrics.push(Mode::Eval, "loss", scalar(out.loss), Reduction::Mean);
            num_tokens += m.attention_mask.clone().int().sum().inner().into_scalar::<i64>() as f64;
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
                    num_tokens,
                }),
            );
        }
        Ok(metrics.flush(Mode::Eval))
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
        // With one row per micro-batch, rewards/margins needs both labels in one micro-batch, so
        // it is absent; both class rewards are present (labels alternate across micro-batches).
        assert!(get("rewards/chosen").is_some() && get("rewards/rejected").is_some());
        assert_eq!(get("rewards/margins"), None);
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
}
