//! One optimizer step: [`Trainer::train_step`] on the policy's device and
//! [`Trainer::train_step_parallel`] across the data-parallel devices. The step checks its
//! micro-steps, runs one worker per device (see `parallel.rs`), pools the devices' rows into
//! the logged metrics, combines the gradients, clips them and applies the optimizer update.

use burn::module::Module;
use burn::optim::MultiGradientsParams;

use crate::batch::KtoBatch;
use crate::error::{Error, Result};
use crate::lm::CausalLm;
use crate::metrics::{MicroBatchInputs, Mode, RowTokenStats, microbatch_metrics};
use crate::optim::{clip_factor, gather_gradients, global_grad_norm};

use super::parallel::{HostRows, KlGather, WorkerOutcome, mark_distributed, panic_message};
use super::{StepReport, Trainer};

impl<M: CausalLm + Module + Clone + Send + Sync> Trainer<M> {
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
                    0 => self.policy().clone(),
                    k => self.policy().clone().fork(&self.replicas[k - 1].device),
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
        // The workers' handles on the weights go before the update, which then holds the only
        // one and writes each weight in place.
        drop(policies);
        let outcomes = outcomes.into_iter().collect::<Result<Vec<_>>>()?;
        let step_loss = self.record_metrics(&outcomes, micro_steps.len());
        self.apply_update(step, step_loss, outcomes)
    }

    /// Records the step's metrics (see [`Self::metric_groups`]) and counts its tokens; returns
    /// the step loss, the sum of the devices' losses.
    fn record_metrics(&mut self, outcomes: &[WorkerOutcome], micro_steps: usize) -> f64 {
        // Metrics: per micro-step, the rows of every device pooled in device order (TRL's one
        // record per micro-batch). Under one KL estimate per window the window is the batch:
        // one record of all its rows, as TRL's batch of `batch × GA` rows.
        let mut step_loss = 0.0;
        let groups = self.metric_groups(outcomes, micro_steps);
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
        for o in outcomes {
            step_loss += o.loss;
        }
        step_loss
    }

    /// Combines the devices' gradients on the policy's device (already summed under DDP), clips
    /// them by the global norm and applies the optimizer update of step `step`.
    fn apply_update(&mut self, step: u64, step_loss: f64, outcomes: Vec<WorkerOutcome>) -> Result<StepReport> {
        let workers = self.devices();
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
                gather_gradients(self.policy(), multi, &self.device_of(0).without_autodiff())
            }
        };
        let grad_norm = global_grad_norm(self.policy(), &grads);
        if !grad_norm.is_finite() {
            return Err(Error::NonFinite { step, what: format!("gradient norm {grad_norm}") });
        }
        let scale = clip_factor(grad_norm, self.config.max_grad_norm);
        let lr = self.config.schedule.lr(self.step);
        let policy = self.policy.take().expect("the policy is only taken out during an update");
        self.policy = Some(self.optimizer.step(policy, &mut grads, lr, scale));
        self.step = step;
        self.window_loss += step_loss;
        self.window_steps += 1;
        let report = StepReport { step, loss: step_loss, grad_norm, learning_rate: lr };
        self.last = Some(report);
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_lm::TinyLm;
    use crate::trainer::KlMode;
    use crate::trainer::test_support::*;
    use burn::prelude::*;

    #[test]
    fn overlapped_reference_passes_train_exactly_as_sequential_ones() {
        // The reference's passes on their own thread compute the same values: every loss,
        // gradient norm, logged metric and weight agrees to the bit over three steps, with the
        // micro-batch's own KL pass and with the window's.
        for kl_mode in [KlMode::MicroBatch, KlMode::AccumulationWindow] {
            let (mut sequential, device) = trainer(config(4, 2, kl_mode));
            let (overlapped, _) = trainer(config(4, 2, kl_mode));
            let mut overlapped = overlapped.with_overlapped_reference(true);
            for step in 0..3 {
                let micro = [batch(4, 2 * step, &device), batch(4, 2 * step + 1, &device)];
                let (a, b) =
                    (sequential.train_step(&micro).expect("step"), overlapped.train_step(&micro).expect("step"));
                assert_eq!((a.loss, a.grad_norm), (b.loss, b.grad_norm), "{kl_mode:?} step {step}");
            }
            assert_eq!(logged(&mut sequential), logged(&mut overlapped), "{kl_mode:?}");
            assert_same_parameters(&sequential, &overlapped, 0.0);
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
        trainer.policy = Some(poisoned);
        let before = trainer.policy().lm_head.bias.as_ref().expect("bias").val().into_data();
        let err = trainer.train_step(&[batch(4, 1, &device)]).expect_err("NaN");
        assert!(matches!(err, Error::NonFinite { step: 2, .. }), "{err}");
        assert!(err.to_string().starts_with("step 2: loss NaN is not finite"), "{err}");
        assert_eq!(trainer.steps(), 1, "the failed step is not counted");
        assert_eq!(trainer.policy().lm_head.bias.as_ref().expect("bias").val().into_data(), before);
    }
}
