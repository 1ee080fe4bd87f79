//! Completion log-probabilities with TRL's one-token shift, computed in chunks of positions.

use burn::prelude::*;
use burn::tensor::FloatDType;

use crate::CausalLm;
use crate::batch::SequenceBatch;

/// How [`completion_logps`] slices the sequence axis.
#[derive(Config, Debug)]
pub struct LogpsConfig {
    /// Positions projected to the vocabulary at a time (per row). Peak memory of the projection
    /// is `batch × chunk × vocab` f32 values.
    #[config(default = 128)]
    pub chunk: usize,
    /// Also compute the per-row token statistics behind TRL's `entropy` and `logits/*` metrics
    /// (detached, no gradient). Costs one extra pass over each chunk's logits.
    #[config(default = false)]
    pub token_stats: bool,
}

/// Per-row sums over the scored completion tokens of one batch.
#[derive(Debug, Clone)]
pub struct CompletionLogps {
    /// Summed natural-log probabilities of the completion tokens, f32. Differentiable when the
    /// model ran under autodiff. `[batch]`
    pub logps: Tensor<1>,
    /// Number of scored tokens per row. `[batch]`
    pub n_tokens: Tensor<1, Int>,
    /// Present when [`LogpsConfig::token_stats`] was set.
    pub stats: Option<TokenStats>,
}

/// Detached per-row sums behind TRL's `entropy` and `logits/chosen|rejected` metrics.
#[derive(Debug, Clone)]
pub struct TokenStats {
    /// Σ over scored positions of the predictive entropy `-Σ_v p_v ln p_v` (nats). `[batch]`
    pub entropy_sum: Tensor<1>,
    /// Σ over scored positions of the mean logit over the vocabulary. `[batch]`
    pub mean_logit_sum: Tensor<1>,
}

/// Per-sequence sum of completion-token log-probs, TRL's `completion_logps`.
///
/// Position `t` of the model scores token `t + 1`; a token is scored when its
/// `completion_mask` entry is `true` (so the first completion token is predicted from the last
/// prompt position). Prompt and padding positions contribute exactly 0. Log-softmax runs in f32
/// whatever the model's dtype.
///
/// # Shapes
/// - `input_ids`: `[batch, seq]`
/// - `attention_mask`: `[batch, seq]`, `true` on real tokens
/// - `completion_mask`: `[batch, seq]`, `true` on completion tokens (never on padding)
/// - returns: `[batch]`
///
/// # Panics
/// When the three inputs do not share one shape.
pub fn sequence_logps<M: CausalLm + ?Sized>(
    model: &M,
    input_ids: Tensor<2, Int>,
    attention_mask: Tensor<2, Bool>,
    completion_mask: Tensor<2, Bool>,
    chunk: usize,
) -> Tensor<1> {
    completion_logps(model, input_ids, attention_mask, completion_mask, &LogpsConfig::new().with_chunk(chunk)).logps
}

/// [`sequence_logps`] with the token counts and, optionally, the metric statistics.
///
/// # Shapes
/// As [`sequence_logps`].
///
/// # Panics
/// When the three inputs do not share one shape, or `config.chunk == 0`.
pub fn completion_logps<M: CausalLm + ?Sized>(
    model: &M,
    input_ids: Tensor<2, Int>,
    attention_mask: Tensor<2, Bool>,
    completion_mask: Tensor<2, Bool>,
    config: &LogpsConfig,
) -> CompletionLogps {
    let [batch, seq] = input_ids.dims();
    burn::tensor::assert_shape!(attention_mask, [batch, seq]);
    burn::tensor::assert_shape!(completion_mask, [batch, seq]);
    let hidden = model.hidden_states(input_ids.clone(), attention_mask);
    logps_from_hidden(model, hidden, input_ids, completion_mask, config)
}

/// [`completion_logps`] of two batches whose rows share leading tokens, each prefix computed once
/// (see [`CausalLm::hidden_states_sharing_prefix`]): KTO's matched and KL sequences, which pair
/// each row's prompt with two completions. `first` is scored through `model` (differentiable
/// under autodiff) with `first_config`; `second` through `detached`, a no-graph copy of `model`,
/// with `second_config`.
///
/// The shared length is found here ([`shared_prefix_len`]), so any batches may be passed: with
/// nothing in common both are simply run in full.
///
/// # Shapes
/// - `first`: tensors on `model`'s device; `second`: tensors on `detached`'s device; equal batch
/// - returns: `[batch]` log-probs of each
pub fn paired_completion_logps<M: CausalLm>(
    model: &M,
    first: &SequenceBatch,
    first_config: &LogpsConfig,
    detached: &M,
    second: &SequenceBatch,
    second_config: &LogpsConfig,
) -> (CompletionLogps, CompletionLogps) {
    let shared = shared_prefix_len(first, second);
    let (hidden_a, hidden_b) = model.hidden_states_sharing_prefix(
        (first.input_ids.clone(), first.attention_mask.clone()),
        detached,
        (second.input_ids.clone(), second.attention_mask.clone()),
        shared,
    );
    let a = logps_from_hidden(model, hidden_a, first.input_ids.clone(), first.completion_mask.clone(), first_config);
    let b =
        logps_from_hidden(detached, hidden_b, second.input_ids.clone(), second.completion_mask.clone(), second_config);
    (a, b)
}

/// How many leading positions two batches share in every row: the longest `n` such that, for
/// each row, ids and attention masks agree on positions `0..n`. Capped at `min(seq_a, seq_b) - 1`
/// so both keep a position of their own; 0 when the batch sizes differ.
pub fn shared_prefix_len(a: &SequenceBatch, b: &SequenceBatch) -> usize {
    let [batch, seq_a] = a.input_ids.dims();
    let [batch_b, seq_b] = b.input_ids.dims();
    let n = seq_a.min(seq_b);
    if batch != batch_b || n < 2 {
        return 0;
    }
    let head = |t: &Tensor<2, Int>| t.clone().inner().slice([0..batch, 0..n]);
    let head_mask = |t: &Tensor<2, Bool>| t.clone().inner().slice([0..batch, 0..n]).int();
    let ids_equal = head(&a.input_ids).equal(head(&b.input_ids));
    let masks_equal = head_mask(&a.attention_mask).equal(head_mask(&b.attention_mask));
    let equal = ids_equal.bool_and(masks_equal).all_dim(0).into_data(); // [1, n]
    let first_difference = equal.iter::<bool>().position(|same| !same).unwrap_or(n);
    first_difference.min(n - 1)
}

/// The chunked scoring half of [`completion_logps`], for callers that already ran
/// [`CausalLm::hidden_states`] (for instance to share one forward between several uses).
///
/// Only positions between the first and the last scored token of the whole batch are
/// projected: prompt prefixes and trailing padding cost nothing.
///
/// # Shapes
/// - `hidden`: `[batch, seq, d_model]`
/// - `input_ids`, `completion_mask`: `[batch, seq]`
///
/// # Panics
/// On mismatched shapes or `config.chunk == 0`.
pub fn logps_from_hidden<M: CausalLm + ?Sized>(
    model: &M,
    hidden: Tensor<3>,
    input_ids: Tensor<2, Int>,
    completion_mask: Tensor<2, Bool>,
    config: &LogpsConfig,
) -> CompletionLogps {
    assert!(config.chunk > 0, "LogpsConfig::chunk must be > 0");
    let [batch, seq] = input_ids.dims();
    let [_, _, d_model] = hidden.dims();
    burn::tensor::assert_shape!(hidden, [batch, seq, d_model]);
    burn::tensor::assert_shape!(completion_mask, [batch, seq]);
    let device = hidden.device();

    // Token t+1 is scored from position t: targets and masks are shifted left by one.
    let n_tokens = completion_mask.clone().int().slice([0..batch, 1.min(seq)..seq]).sum_dim(1).reshape([batch]);
    let mut logps = Tensor::<1>::zeros([batch], &device);
    let mut entropy_sum = config.token_stats.then(|| Tensor::<1>::zeros([batch], &device));
    let mut mean_logit_sum = entropy_sum.clone();

    if let Some((first, last)) = scored_position_range(&completion_mask) {
        let mut start = first;
        while start <= last {
            let end = (start + config.chunk).min(last + 1); // positions [start, end)
            let positions = end - start;
            let h = hidden.clone().slice([0..batch, start..end, 0..d_model]);
            let logits = model.project(h).cast(FloatDType::F32); // [batch, positions, vocab]
            let targets = input_ids.clone().slice([0..batch, start + 1..end + 1]);
            let scored = completion_mask.clone().slice([0..batch, start + 1..end + 1]);
            let ignored = scored.bool_not(); // [batch, positions]

            let max = logits.clone().detach().max_dim(2); // [batch, positions, 1]
            let picked = logits.clone().gather(2, targets.unsqueeze_dim::<3>(2)); // [batch, positions, 1]
            // The statistics need the logits again; without them `logits` is held once here, so
            // the shift and exp below run in place instead of beside a second logits-sized buffer.
            let kept = config.token_stats.then(|| logits.clone().detach());
            let lse = (logits - max.clone()).exp().sum_dim(2).log() + max; // [batch, positions, 1]
            let per_token = (picked - lse.clone()).reshape([batch, positions]).mask_fill(ignored.clone(), 0.0);
            logps = logps + per_token.sum_dim(1).reshape([batch]);

            if let (Some(entropy), Some(mean_logit), Some(logits)) =
                (entropy_sum.as_mut(), mean_logit_sum.as_mut(), kept)
            {
                let lse = lse.detach();
                let probs = (logits.clone() - lse.clone()).exp();
                // -Σ p (x - lse) = lse - Σ p x
                let token_entropy = (lse - (probs * logits.clone()).sum_dim(2))
                    .reshape([batch, positions])
                    .mask_fill(ignored.clone(), 0.0);
                let token_mean = logits.mean_dim(2).reshape([batch, positions]).mask_fill(ignored, 0.0);
                *entropy = entropy.clone() + token_entropy.sum_dim(1).reshape([batch]);
                *mean_logit = mean_logit.clone() + token_mean.sum_dim(1).reshape([batch]);
            }
            start = end;
        }
    }

    let stats = match (entropy_sum, mean_logit_sum) {
        (Some(entropy_sum), Some(mean_logit_sum)) => Some(TokenStats { entropy_sum, mean_logit_sum }),
        _ => None,
    };
    CompletionLogps { logps, n_tokens, stats }
}

/// First and last model positions (inclusive) that score a completion token in any row: position
/// `t` is needed iff some row has `completion_mask[t + 1]`. `None` when nothing is scored.
fn scored_position_range(completion_mask: &Tensor<2, Bool>) -> Option<(usize, usize)> {
    let [_, seq] = completion_mask.dims();
    if seq < 2 {
        return None;
    }
    let any = completion_mask.clone().any_dim(0).into_data(); // [1, seq]
    let any: Vec<bool> = any.iter::<bool>().collect();
    let first = (1..seq).find(|&t| any[t])?;
    let last = (1..seq).rev().find(|&t| any[t])?;
    Some((first - 1, last - 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_lm::TinyLm;
    use burn::tensor::activation::log_softmax;
    use kto_testkit::{EXACT_MATH, cpu_devices, tolerance};

    /// Full `[batch, seq, vocab]` log-softmax, the naive reference.
    fn naive_logps(
        lm: &TinyLm,
        ids: &Tensor<2, Int>,
        mask: &Tensor<2, Bool>,
        completion: &Tensor<2, Bool>,
    ) -> Tensor<1> {
        let [batch, seq] = ids.dims();
        let logits = lm.logits(ids.clone(), mask.clone()).slice([0..batch, 0..seq - 1]);
        let logp = log_softmax(logits, 2);
        let targets = ids.clone().slice([0..batch, 1..seq]).unsqueeze_dim::<3>(2);
        let picked = logp.gather(2, targets).reshape([batch, seq - 1]);
        let scored = completion.clone().slice([0..batch, 1..seq]).float();
        (picked * scored).sum_dim(1).reshape([batch])
    }

    fn batch(device: &Device) -> (Tensor<2, Int>, Tensor<2, Bool>, Tensor<2, Bool>) {
        // Row 0: 3 prompt + 3 completion tokens; row 1: 2 prompt + 2 completion + 2 padding.
        let ids = Tensor::<2, Int>::from_ints([[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 0, 0]], device);
        let mask = Tensor::<2, Bool>::from_bool(
            TensorData::from([[true, true, true, true, true, true], [true, true, true, true, false, false]]),
            device,
        );
        let completion = Tensor::<2, Bool>::from_bool(
            TensorData::from([[false, false, false, true, true, true], [false, false, true, true, false, false]]),
            device,
        );
        (ids, mask, completion)
    }

    #[test]
    fn chunked_equals_naive_full_log_softmax_for_every_chunk_size() {
        for (name, device) in cpu_devices() {
            let lm = TinyLm::new(16, 8, &device);
            let (ids, mask, completion) = batch(&device);
            let expected = naive_logps(&lm, &ids, &mask, &completion).into_data();
            for chunk in [1, 2, 3, 5, 128] {
                let got = sequence_logps(&lm, ids.clone(), mask.clone(), completion.clone(), chunk);
                got.into_data().assert_approx_eq::<f32>(&expected, tolerance(EXACT_MATH));
            }
            let _ = name;
        }
    }

    #[test]
    fn chunked_gradients_equal_autodiff_through_the_full_log_softmax() {
        // Every parameter gradient of the chunked path must be what autodiff gives for the naive
        // full-vocabulary formula, for any chunking and with non-uniform per-row weights
        // downstream.
        for (name, device) in cpu_devices() {
            let device = device.autodiff();
            device.seed(11);
            let lm = TinyLm::new(16, 8, &device);
            let (ids, mask, completion) = batch(&device);
            let weights = Tensor::<1>::from_floats([0.7, -1.3], &device);
            let grads_of = |logps: Tensor<1>| {
                let grads = (logps * weights.clone()).sum().backward();
                let head = lm.lm_head.weight.val().grad(&grads).expect("head is trained").into_data();
                let embed = lm.embed_tokens.weight.val().grad(&grads).expect("embedding is trained").into_data();
                (head, embed)
            };
            let (head, embed) = grads_of(naive_logps(&lm, &ids, &mask, &completion));
            for chunk in [1, 2, 128] {
                let (h, e) = grads_of(sequence_logps(&lm, ids.clone(), mask.clone(), completion.clone(), chunk));
                h.assert_approx_eq::<f32>(&head, tolerance(EXACT_MATH));
                e.assert_approx_eq::<f32>(&embed, tolerance(EXACT_MATH));
            }
            let _ = name;
        }
    }

    #[test]
    fn counts_scored_tokens_and_skips_prompt_only_rows() {
        let device = kto_testkit::device();
        let lm = TinyLm::new(16, 8, &device);
        let (ids, mask, completion) = batch(&device);
        let out = completion_logps(&lm, ids, mask, completion, &LogpsConfig::new());
        // Row 0 scores tokens 3..6 (3 tokens), row 1 tokens 2..4 (2 tokens).
        assert_eq!(out.n_tokens.into_data().iter::<i64>().collect::<Vec<_>>(), vec![3, 2]);

        let none = Tensor::<2, Bool>::from_bool(TensorData::from([[false; 6], [false; 6]]), &device);
        let (ids, mask, _) = batch(&device);
        let zero = sequence_logps(&lm, ids, mask, none, 4);
        assert_eq!(zero.into_data().iter::<f32>().collect::<Vec<_>>(), vec![0.0, 0.0]);
    }

    #[test]
    fn token_stats_match_hand_computed_uniform_logits() {
        // A head that outputs all-zero logits: p = 1/V everywhere, entropy ln V per token,
        // mean logit 0, log-prob -ln V per token.
        let device = kto_testkit::device();
        let lm = TinyLm::zeros(16, 8, &device);
        let (ids, mask, completion) = batch(&device);
        let out = completion_logps(&lm, ids, mask, completion, &LogpsConfig::new().with_token_stats(true));
        let ln_v = (16f32).ln();
        let stats = out.stats.expect("token stats requested");
        let expect = |v: [f32; 2]| TensorData::from(v);
        out.logps.into_data().assert_approx_eq::<f32>(&expect([-3.0 * ln_v, -2.0 * ln_v]), tolerance(EXACT_MATH));
        stats.entropy_sum.into_data().assert_approx_eq::<f32>(&expect([3.0 * ln_v, 2.0 * ln_v]), tolerance(EXACT_MATH));
        stats.mean_logit_sum.into_data().assert_approx_eq::<f32>(&expect([0.0, 0.0]), tolerance(EXACT_MATH));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        /// Extra right padding, whatever the pad id, leaves every row's log-prob unchanged.
        #[test]
        fn padding_amount_and_id_do_not_change_logps(extra in 1usize..6, pad_id in 0i64..16, chunk in 1usize..5) {
            let device = kto_testkit::device();
            device.seed(3);
            let lm = TinyLm::new(16, 8, &device);
            let (ids, mask, completion) = batch(&device);
            let base = sequence_logps(&lm, ids.clone(), mask.clone(), completion.clone(), chunk).into_data();
            let ids = Tensor::cat(vec![ids, Tensor::<2, Int>::full([2, extra], pad_id, &device)], 1);
            let pad = Tensor::<2, Bool>::from_bool(TensorData::new(vec![false; 2 * extra], [2, extra]), &device);
            let mask = Tensor::cat(vec![mask, pad.clone()], 1);
            let completion = Tensor::cat(vec![completion, pad], 1);
            let padded = sequence_logps(&lm, ids, mask, completion, chunk).into_data();
            padded.assert_approx_eq::<f32>(&base, tolerance(EXACT_MATH));
        }
    }

    #[test]
    fn the_policy_kl_forward_adds_no_gradient() {
        // The same loss with z0 from the policy's own KL forward, or with z0 as a plain constant
        // of the same value, must give identical parameter gradients.
        let device = kto_testkit::device().autodiff();
        device.seed(7);
        let lm = TinyLm::new(16, 8, &device);
        let (ids, mask, completion) = batch(&device);
        let kl_ids = Tensor::<2, Int>::from_ints([[1, 2, 3, 10, 0, 0], [7, 8, 4, 5, 6, 0]], &device);
        let kl_mask = Tensor::<2, Bool>::from_bool(
            TensorData::from([[true, true, true, true, false, false], [true, true, true, true, true, false]]),
            &device,
        );
        let kl_completion = Tensor::<2, Bool>::from_bool(
            TensorData::from([[false, false, false, true, false, false], [false, false, true, true, true, false]]),
            &device,
        );
        // Both rows desirable: with one row of each label and equal log-ratios, the two
        // sigmoids' derivatives with respect to z0 would cancel and the test would prove nothing.
        let desirable = Tensor::<1, Bool>::from_bool(TensorData::from([true, true]), &device);
        let config = crate::KtoLossConfig::new();

        let reference = sequence_logps(&lm, ids.clone(), mask.clone(), completion.clone(), 2).detach() + 0.3;
        let gradient = |kl: Tensor<1>| {
            let policy = sequence_logps(&lm, ids.clone(), mask.clone(), completion.clone(), 2);
            let out = crate::kto_loss(&config, policy, reference.clone(), desirable.clone(), kl);
            let grads = out.loss.backward();
            lm.lm_head.weight.val().grad(&grads).expect("head is trained").into_data()
        };
        let policy_kl = sequence_logps(&lm, kl_ids, kl_mask, kl_completion, 2);
        // A reference 0.5 nats below the policy on every KL pair gives z0 = 0.5: positive, so the
        // clamp is not what stops the gradient, and small, so the sigmoids are far from flat.
        let reference_kl = policy_kl.clone().detach() - 0.5;
        let estimate = crate::kl_estimate(policy_kl, reference_kl);
        let z0 = estimate.kl.clone().into_scalar::<f32>();
        assert!((z0 - 0.5).abs() < 1e-5, "z0 = {z0}");
        let through_model = gradient(estimate.kl);
        let constant = gradient(Tensor::from_floats([z0], &device));
        through_model.assert_approx_eq::<f32>(&constant, tolerance(EXACT_MATH));
    }

    #[test]
    fn shared_prefix_is_the_shortest_common_start_over_rows() {
        let device = kto_testkit::device();
        let seqs = |ids: [[i64; 5]; 2], mask: [[bool; 5]; 2]| SequenceBatch {
            input_ids: Tensor::from_ints(ids, &device),
            attention_mask: Tensor::from_bool(TensorData::from(mask), &device),
            completion_mask: Tensor::from_bool(TensorData::from([[false; 5]; 2]), &device),
        };
        let full = [[true; 5]; 2];
        let a = seqs([[1, 2, 3, 4, 5], [6, 7, 8, 9, 1]], full);
        // Row 0 agrees on 3 positions, row 1 on 2: the batch shares 2.
        assert_eq!(shared_prefix_len(&a, &seqs([[1, 2, 3, 0, 0], [6, 7, 0, 0, 0]], full)), 2);
        // Equal ids but a padded position in one of them ends the shared part there.
        let padded = [[true, true, false, false, false], [true; 5]];
        assert_eq!(shared_prefix_len(&a, &seqs([[1, 2, 3, 4, 5], [6, 7, 8, 9, 1]], padded)), 2);
        // Identical batches keep one position of their own: 5 - 1.
        assert_eq!(shared_prefix_len(&a, &a), 4);
        // Different first tokens share nothing.
        assert_eq!(shared_prefix_len(&a, &seqs([[0, 2, 3, 4, 5], [6, 7, 8, 9, 1]], full)), 0);
    }

    #[test]
    fn paired_scoring_equals_two_plain_passes_for_a_model_without_a_cache() {
        for (name, device) in cpu_devices() {
            device.seed(3);
            let lm = TinyLm::new(16, 8, &device);
            let (ids, mask, completion) = batch(&device);
            let a = SequenceBatch { input_ids: ids.clone(), attention_mask: mask.clone(), completion_mask: completion };
            // The KL partner: the same prompts, the completions of the other row.
            let b = SequenceBatch {
                input_ids: Tensor::from_ints([[1, 2, 3, 8, 9, 10], [7, 8, 4, 5, 6, 0]], &device),
                attention_mask: Tensor::from_bool(
                    TensorData::from([[true; 6], [true, true, true, true, true, false]]),
                    &device,
                ),
                completion_mask: Tensor::from_bool(
                    TensorData::from([
                        [false, false, false, true, true, true],
                        [false, false, true, true, true, false],
                    ]),
                    &device,
                ),
            };
            let config = LogpsConfig::new().with_chunk(2);
            let (pa, pb) = paired_completion_logps(&lm, &a, &config, &lm, &b, &config);
            let plain = |s: &SequenceBatch| {
                completion_logps(&lm, s.input_ids.clone(), s.attention_mask.clone(), s.completion_mask.clone(), &config)
            };
            assert_eq!(pa.logps.into_data(), plain(&a).logps.into_data(), "{name}");
            assert_eq!(pb.logps.into_data(), plain(&b).logps.into_data(), "{name}");
            assert_eq!(pb.n_tokens.into_data().convert::<i64>(), TensorData::from([3i64, 3]), "{name}");
        }
    }
}
