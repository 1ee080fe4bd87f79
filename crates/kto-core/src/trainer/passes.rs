//! The forward passes of one micro-batch: the policy's log-probs (with the autodiff graph), the
//! reference's (a frozen model or the log-probs precomputed into the batch), and the no-graph KL
//! pass over the batch's KL sequences; also [`reference_logps`] for precomputing a reference,
//! and the host copies (`scalar`, `host_*`) the metrics are computed from.

use burn::module::Module;
use burn::prelude::*;

use crate::batch::{KtoBatch, SequenceBatch};
use crate::error::{Error, Result};
use crate::kl::{KlEstimate, kl_estimate};
use crate::lm::CausalLm;
use crate::logps::{CompletionLogps, LogpsConfig, completion_logps, paired_completion_logps};

use super::{Reference, Trainer};

/// Log-probs of one micro-batch's KL pass.
pub(super) struct KlPass {
    pub(super) policy: Tensor<1>,
    pub(super) reference: Tensor<1>,
}

/// One micro-batch's forward results on one device: the policy's (with its graph), the
/// reference's, and the device's own KL estimate when its KL pairs were scored.
pub(super) struct Passes {
    pub(super) policy: CompletionLogps,
    pub(super) reference: Tensor<1>,
    pub(super) kl: Option<KlEstimate>,
}

impl<M: CausalLm + Module + Clone + Send + Sync> Trainer<M> {
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
    pub(super) fn reference_pair_on(
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
    pub(super) fn policy_pair(
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
    pub(super) fn kl_sequences(&self, batch: &KtoBatch) -> Result<Option<SequenceBatch>> {
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
    pub(super) fn kl_pass_on(&self, reference: &Reference<M>, frozen: &M, batch: &KtoBatch) -> Result<Option<KlPass>> {
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

    /// The policy pass (with graph) and the reference pass of one micro-batch, with the KL
    /// sequences unless the window's `z₀` is used.
    pub(super) fn forward_passes(
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
        let ((policy_out, policy_kl), reference_pair) = if self.overlap_reference {
            // The reference's no-graph passes on a thread of their own, beside the policy's: on a
            // CPU most of a pass outside the gemms runs on one core, so two passes at once use
            // both. Each computes exactly what it computes alone.
            std::thread::scope(|scope| {
                let reference = scope.spawn(|| self.reference_pair_on(reference, batch, kl_seqs.as_ref()));
                let policy = self.policy_pair(policy, &batch.matched, frozen, kl_seqs.as_ref());
                let reference = reference.join().unwrap_or_else(|payload| std::panic::resume_unwind(payload));
                (policy, reference)
            })
        } else {
            let policy = self.policy_pair(policy, &batch.matched, frozen, kl_seqs.as_ref());
            (policy, self.reference_pair_on(reference, batch, kl_seqs.as_ref()))
        };
        let (reference_out, reference_kl) = reference_pair?;
        let kl = policy_kl.zip(reference_kl).map(|(p, r)| kl_estimate(p, r));
        Ok(Passes { policy: policy_out, reference: reference_out, kl })
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

pub(super) fn scalar(t: Tensor<1>) -> f64 {
    f64::from(t.inner().into_scalar::<f32>())
}

pub(super) fn host_f32(t: Tensor<1>) -> Vec<f32> {
    t.inner().into_data().convert::<f32>().try_into_vec::<f32>().expect("f32 data after convert")
}

pub(super) fn host_i64(t: Tensor<1, Int>) -> Vec<i64> {
    t.inner().into_data().convert::<i64>().try_into_vec::<i64>().expect("i64 data after convert")
}

pub(super) fn host_bools(t: Tensor<1, Bool>) -> Vec<bool> {
    t.inner().into_data().try_into_vec::<bool>().expect("bool data")
}
