//! Evaluation: [`Trainer::evaluate`] scores batches without gradients and returns TRL's eval
//! metrics and `eval_loss`.

use burn::module::Module;
use burn::prelude::*;

use crate::batch::KtoBatch;
use crate::error::Result;
use crate::kl::kl_estimate;
use crate::lm::CausalLm;
use crate::loss::kto_loss;
use crate::metrics::{EvalMetrics, MetricsAggregator, MicroBatchInputs, Mode, RowTokenStats, microbatch_metrics};

use super::Trainer;
use super::passes::{host_bools, host_f32, host_i64, scalar};

impl<M: CausalLm + Module + Clone + Send + Sync> Trainer<M> {
    /// Evaluation over `batches` without gradients: TRL's metrics with the `eval_` prefix and
    /// `eval_loss` (the row-weighted mean of the batches' losses, as transformers gathers them);
    /// `eval_num_tokens` is the train token count so far, as TRL logs it.
    ///
    /// # Errors
    /// As [`Self::train_step`] for batches that lack what the loss needs.
    pub fn evaluate(&self, batches: &[KtoBatch]) -> Result<EvalMetrics> {
        let frozen = self.policy().clone().valid();
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
        // TRL's value is a float32 mean.
        let loss = (rows > 0).then(|| f64::from((weighted_loss / rows as f64) as f32));
        Ok(EvalMetrics { loss, metrics: metrics.flush(Mode::Eval) })
    }
}
