//! The accumulation window under [`KlMode::AccumulationWindow`]: one no-graph KL pass over
//! every micro-batch of the optimizer step gives one `z₀` for all of them (round 0 of the KL
//! exchange), and the window is one batch for the metrics too. Also the grouping of the
//! devices' host rows into metric records: one per micro-step otherwise.

use burn::module::Module;
use burn::prelude::*;

use crate::batch::KtoBatch;
use crate::error::Result;
use crate::kl::kl_estimate;
use crate::lm::CausalLm;

use super::parallel::{HostRows, WorkerOutcome, guarded};
use super::passes::{KlPass, scalar};
use super::{KlMode, Reference, Trainer};

impl<M: CausalLm + Module + Clone + Send + Sync> Trainer<M> {
    /// Whether `z₀` is estimated once over the accumulation window (a KL loss under
    /// [`KlMode::AccumulationWindow`]).
    pub(super) fn kl_spans_window(&self) -> bool {
        self.config.loss.loss_type.uses_kl() && self.config.kl_mode == KlMode::AccumulationWindow
    }

    /// Device `k`'s KL mean over the window: the no-graph KL pass of each of its micro-batches
    /// (`frozen` is the policy's non-autodiff snapshot), concatenated into one estimate. `None`
    /// when it has no batch in the step or the loss has no KL term; a panic becomes
    /// [`Error::DeviceFailed`](crate::error::Error::DeviceFailed).
    pub(super) fn window_kl(
        &self,
        k: usize,
        device: &Device,
        reference: &Reference<M>,
        frozen: &M,
        batches: &[Option<KtoBatch>],
    ) -> Result<Option<f64>> {
        guarded(k, device, || {
            let passes: Vec<KlPass> = batches
                .iter()
                .flatten()
                .map(|b| self.kl_pass_on(reference, frozen, b))
                .filter_map(Result::transpose)
                .collect::<Result<_>>()?;
            if passes.is_empty() {
                return Ok(None);
            }
            let policy = Tensor::cat(passes.iter().map(|p| p.policy.clone()).collect(), 0);
            let reference = Tensor::cat(passes.iter().map(|p| p.reference.clone()).collect(), 0);
            Ok(Some(scalar(kl_estimate(policy, reference).unclamped)))
        })
    }

    /// The devices' host rows grouped into metric records: per micro-step, the rows of every
    /// device pooled in device order (TRL's one record per micro-batch); under one KL estimate
    /// per window the window is the batch: one record of all its rows, as TRL's batch of
    /// `batch × GA` rows.
    pub(super) fn metric_groups<'a>(
        &self,
        outcomes: &'a [WorkerOutcome],
        micro_steps: usize,
    ) -> Vec<Vec<&'a HostRows>> {
        if self.kl_spans_window() {
            vec![(0..micro_steps).flat_map(|j| outcomes.iter().filter_map(move |o| o.rows[j].as_ref())).collect()]
        } else {
            (0..micro_steps).map(|j| outcomes.iter().filter_map(|o| o.rows[j].as_ref()).collect()).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trainer::test_support::*;
    use burn::optim::GradientsParams;

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
        let get = |k: &str| logged.get(k);
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
}
