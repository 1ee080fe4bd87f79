//! Training and evaluation metrics with TRL 1.16's semantics.
//!
//! Each micro-batch *appends* one value per key ([`microbatch_metrics`] computes them); at log
//! time every key is the plain, unweighted mean of the values appended since the previous log
//! ([`MetricsAggregator::flush`]). A key appended by only some micro-batches (`rewards/chosen`
//! in a batch without desirable rows, `rewards/margins` outside batches holding both labels) is
//! averaged over those only, so the logged margin is generally *not* the logged chosen minus
//! rejected reward. Evaluation keys get the `eval_` prefix.

/// Whether metrics belong to training or evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Training micro-batches.
    Train,
    /// Evaluation batches; keys are logged with the `eval_` prefix.
    Eval,
}

/// How a key is reduced at log time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduction {
    /// Unweighted mean of the appended values (TRL's default).
    Mean,
    /// Sum of the appended values (our `count/*` keys).
    Sum,
    /// The last value (TRL's `num_tokens`, a running total that is replaced, not appended).
    Last,
}

/// One metric value of a micro-batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    /// TRL's key (`kl`, `rewards/chosen`, ...) without any `eval_` prefix.
    pub key: &'static str,
    /// The value.
    pub value: f64,
    /// How it is reduced over a logging window.
    pub reduction: Reduction,
}

/// Host-side inputs of [`microbatch_metrics`], one entry per row of the micro-batch.
#[derive(Debug, Clone, Copy)]
pub struct MicroBatchInputs<'a> {
    /// `true` for desirable rows.
    pub desirable: &'a [bool],
    /// Policy sequence log-probs.
    pub policy_logps: &'a [f32],
    /// `β · logratio` (see [`crate::KtoLoss::rewards`]).
    pub rewards: &'a [f32],
    /// The clamped KL used by the loss (0 for `apo_zero_unpaired`).
    pub kl: f64,
    /// The KL before clamping.
    pub kl_unclamped: f64,
    /// Per-row token statistics (see [`crate::TokenStats`]): `(entropy_sum, mean_logit_sum,
    /// n_tokens)`; `None` skips `entropy` and `logits/*`.
    pub token_stats: Option<RowTokenStats<'a>>,
    /// Running total of attention-mask tokens of the matched sequences, including this
    /// micro-batch (TRL's `num_tokens`; KL sequences are not counted).
    pub num_tokens: f64,
}

/// Per-row token sums behind `entropy` and `logits/*`.
#[derive(Debug, Clone, Copy)]
pub struct RowTokenStats<'a> {
    /// Σ entropy over each row's scored tokens.
    pub entropy_sum: &'a [f32],
    /// Σ vocab-mean logit over each row's scored tokens.
    pub mean_logit_sum: &'a [f32],
    /// Scored tokens per row.
    pub n_tokens: &'a [i64],
}

/// The values TRL appends for one micro-batch, in TRL's order, plus ours (`kl_unclamped`,
/// `count/desirable`, `count/undesirable`).
///
/// - `kl`; `entropy` = Σ entropy / Σ scored tokens over all rows (0 without tokens);
///   `num_tokens` (replaced);
/// - `logits/chosen|rejected` = Σ mean logit / Σ tokens over that class's rows, when it has
///   tokens;
/// - `rewards/chosen`, `logps/chosen` (class means) when the class is present, the same for
///   rejected; `rewards/margins` = chosen − rejected mean reward when both are present.
///
/// # Panics
/// When the slices have different lengths.
pub fn microbatch_metrics(inputs: &MicroBatchInputs<'_>) -> Vec<Metric> {
    let n = inputs.desirable.len();
    assert_eq!(inputs.policy_logps.len(), n, "policy_logps length");
    assert_eq!(inputs.rewards.len(), n, "rewards length");
    let mean = |key: &'static str, value: f64| Metric { key, value, reduction: Reduction::Mean };
    let mut out = vec![mean("kl", inputs.kl)];

    let class_sum = |values: &[f32], label: bool| -> (f64, usize) {
        inputs
            .desirable
            .iter()
            .zip(values)
            .filter(|(d, _)| **d == label)
            .fold((0.0, 0), |(s, c), (_, v)| (s + f64::from(*v), c + 1))
    };

    let mut logits = Vec::new();
    if let Some(stats) = inputs.token_stats {
        assert_eq!(stats.entropy_sum.len(), n, "entropy_sum length");
        assert_eq!(stats.mean_logit_sum.len(), n, "mean_logit_sum length");
        assert_eq!(stats.n_tokens.len(), n, "n_tokens length");
        let tokens: i64 = stats.n_tokens.iter().sum();
        let entropy: f64 = stats.entropy_sum.iter().map(|&v| f64::from(v)).sum();
        out.push(mean("entropy", if tokens > 0 { entropy / tokens as f64 } else { 0.0 }));
        for (key, label) in [("logits/chosen", true), ("logits/rejected", false)] {
            let (mut sum, mut count) = (0.0, 0i64);
            for i in (0..n).filter(|&i| inputs.desirable[i] == label) {
                sum += f64::from(stats.mean_logit_sum[i]);
                count += stats.n_tokens[i];
            }
            if count > 0 {
                logits.push(mean(key, sum / count as f64));
            }
        }
    }
    out.push(Metric { key: "num_tokens", value: inputs.num_tokens, reduction: Reduction::Last });
    out.extend(logits);

    let mut class_rewards = [None, None];
    for (slot, (label, reward_key, logps_key)) in
        [(true, "rewards/chosen", "logps/chosen"), (false, "rewards/rejected", "logps/rejected")]
            .into_iter()
            .enumerate()
    {
        let (reward_sum, count) = class_sum(inputs.rewards, label);
        if count > 0 {
            let (logps_sum, _) = class_sum(inputs.policy_logps, label);
            let reward = reward_sum / count as f64;
            class_rewards[slot] = Some(reward);
            out.push(mean(reward_key, reward));
            out.push(mean(logps_key, logps_sum / count as f64));
        }
    }
    if let [Some(chosen), Some(rejected)] = class_rewards {
        out.push(mean("rewards/margins", chosen - rejected));
    }

    let n_desirable = inputs.desirable.iter().filter(|d| **d).count();
    out.push(mean("kl_unclamped", inputs.kl_unclamped));
    out.push(Metric { key: "count/desirable", value: n_desirable as f64, reduction: Reduction::Sum });
    out.push(Metric { key: "count/undesirable", value: (n - n_desirable) as f64, reduction: Reduction::Sum });
    out
}

/// Collects metric values per micro-batch and reduces them at log time.
#[derive(Debug, Clone, Default)]
pub struct MetricsAggregator {
    train: Window,
    eval: Window,
}

#[derive(Debug, Clone, Default)]
struct Window {
    /// Keys in first-appearance order (the order TRL logs them in).
    keys: Vec<(String, Reduction, Vec<f64>)>,
}

impl MetricsAggregator {
    /// An empty aggregator.
    pub fn new() -> Self {
        Self::default()
    }

    fn window(&mut self, mode: Mode) -> &mut Window {
        match mode {
            Mode::Train => &mut self.train,
            Mode::Eval => &mut self.eval,
        }
    }

    /// Adds one value under `key`.
    pub fn push(&mut self, mode: Mode, key: &str, value: f64, reduction: Reduction) {
        let window = self.window(mode);
        match window.keys.iter_mut().find(|(k, _, _)| k == key) {
            Some((_, _, values)) => values.push(value),
            None => window.keys.push((key.to_string(), reduction, vec![value])),
        }
    }

    /// Adds every metric of one micro-batch.
    pub fn record(&mut self, mode: Mode, metrics: &[Metric]) {
        for m in metrics {
            self.push(mode, m.key, m.value, m.reduction);
        }
    }

    /// Whether anything was recorded since the last flush.
    pub fn is_empty(&self, mode: Mode) -> bool {
        match mode {
            Mode::Train => self.train.keys.is_empty(),
            Mode::Eval => self.eval.keys.is_empty(),
        }
    }

    /// Reduces and clears the window of `mode`.
    ///
    /// # Panics
    /// On a key that is not one of [`KtoMetrics::KEYS`] (every key comes from
    /// [`microbatch_metrics`]).
    pub fn flush(&mut self, mode: Mode) -> KtoMetrics {
        let mut out = KtoMetrics::default();
        for (key, reduction, values) in std::mem::take(&mut self.window(mode).keys) {
            let value = match reduction {
                Reduction::Mean => values.iter().sum::<f64>() / values.len() as f64,
                Reduction::Sum => values.iter().sum(),
                Reduction::Last => *values.last().expect("a key has at least one value"),
            };
            *out.slot(&key).unwrap_or_else(|| panic!("`{key}` is not a KTO metric")) = Some(value);
        }
        out
    }
}

/// TRL's KTO metrics of one logging window or one evaluation, reduced over its micro-batches;
/// `None` where none of them had the value (`rewards/chosen` without desirable rows, ...).
/// [`Self::entries`] gives TRL's keys in TRL's order.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct KtoMetrics {
    /// `kl`: the mean clamped KL estimate `z₀`.
    pub kl: Option<f64>,
    /// `entropy`: mean per-token entropy of the policy.
    pub entropy: Option<f64>,
    /// `num_tokens`: attention-mask tokens of the matched sequences trained on so far.
    pub num_tokens: Option<f64>,
    /// `logits/chosen`: mean vocab-mean logit over desirable completion tokens.
    pub logits_chosen: Option<f64>,
    /// `logits/rejected`: the same over undesirable completion tokens.
    pub logits_rejected: Option<f64>,
    /// `rewards/chosen`: mean reward of desirable rows.
    pub rewards_chosen: Option<f64>,
    /// `logps/chosen`: mean policy log-prob of desirable rows.
    pub logps_chosen: Option<f64>,
    /// `rewards/rejected`: mean reward of undesirable rows.
    pub rewards_rejected: Option<f64>,
    /// `logps/rejected`: mean policy log-prob of undesirable rows.
    pub logps_rejected: Option<f64>,
    /// `rewards/margins`: mean chosen − rejected reward over micro-batches with both labels.
    pub rewards_margins: Option<f64>,
    /// `kl_unclamped` (ours): the KL estimate before clamping at 0.
    pub kl_unclamped: Option<f64>,
    /// `count/desirable` (ours): desirable rows seen.
    pub count_desirable: Option<f64>,
    /// `count/undesirable` (ours): undesirable rows seen.
    pub count_undesirable: Option<f64>,
}

impl KtoMetrics {
    /// TRL's keys, in TRL's logging order (ours last).
    pub const KEYS: [&'static str; 13] = [
        "kl",
        "entropy",
        "num_tokens",
        "logits/chosen",
        "logits/rejected",
        "rewards/chosen",
        "logps/chosen",
        "rewards/rejected",
        "logps/rejected",
        "rewards/margins",
        "kl_unclamped",
        "count/desirable",
        "count/undesirable",
    ];

    fn slots(&self) -> [Option<f64>; 13] {
        [
            self.kl,
            self.entropy,
            self.num_tokens,
            self.logits_chosen,
            self.logits_rejected,
            self.rewards_chosen,
            self.logps_chosen,
            self.rewards_rejected,
            self.logps_rejected,
            self.rewards_margins,
            self.kl_unclamped,
            self.count_desirable,
            self.count_undesirable,
        ]
    }

    fn slot(&mut self, key: &str) -> Option<&mut Option<f64>> {
        Some(match key {
            "kl" => &mut self.kl,
            "entropy" => &mut self.entropy,
            "num_tokens" => &mut self.num_tokens,
            "logits/chosen" => &mut self.logits_chosen,
            "logits/rejected" => &mut self.logits_rejected,
            "rewards/chosen" => &mut self.rewards_chosen,
            "logps/chosen" => &mut self.logps_chosen,
            "rewards/rejected" => &mut self.rewards_rejected,
            "logps/rejected" => &mut self.logps_rejected,
            "rewards/margins" => &mut self.rewards_margins,
            "kl_unclamped" => &mut self.kl_unclamped,
            "count/desirable" => &mut self.count_desirable,
            "count/undesirable" => &mut self.count_undesirable,
            _ => return None,
        })
    }

    /// The value under TRL's `key` (without any `eval_` prefix).
    pub fn get(&self, key: &str) -> Option<f64> {
        Self::KEYS.iter().position(|k| *k == key).and_then(|i| self.slots()[i])
    }

    /// `(key, value)` of the values present, in [`Self::KEYS`] order.
    pub fn entries(&self) -> Vec<(&'static str, f64)> {
        Self::KEYS.iter().zip(self.slots()).filter_map(|(k, v)| v.map(|v| (*k, v))).collect()
    }

    /// Whether no value is present.
    pub fn is_empty(&self) -> bool {
        self.slots().iter().all(Option::is_none)
    }
}

/// What an evaluation gives: `eval_loss` and the KTO metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EvalMetrics {
    /// `eval_loss`: the row-weighted mean loss (`None` without rows).
    pub loss: Option<f64>,
    /// The KTO metrics, logged with the `eval_` prefix.
    pub metrics: KtoMetrics,
}

/// One event of the log: a line of `metrics.jsonl`, an entry of transformers' `log_history`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LogRecord {
    /// A training log: the window's step values and KTO metrics.
    Train {
        /// `loss`: the mean step loss of the window (`None` before any step).
        loss: Option<f64>,
        /// `grad_norm` of the window's last step, before clipping.
        grad_norm: Option<f64>,
        /// `learning_rate` of the window's last step.
        learning_rate: Option<f64>,
        /// The KTO metrics of the window.
        metrics: KtoMetrics,
        /// Fractional epoch.
        epoch: f64,
        /// Optimizer steps done.
        step: u64,
    },
    /// An evaluation (keys with the `eval_` prefix).
    Eval {
        /// `eval_loss` and the `eval_*` metrics.
        eval: EvalMetrics,
        /// Fractional epoch.
        epoch: f64,
        /// Optimizer steps done.
        step: u64,
    },
}

impl LogRecord {
    /// `(key, value)` with TRL's keys, in TRL's order: the step values (or `eval_loss`), the
    /// KTO metrics (`eval_`-prefixed for an evaluation), `epoch`, `step`.
    pub fn entries(&self) -> Vec<(String, f64)> {
        let mut out = Vec::new();
        let (metrics, prefix, epoch, step) = match self {
            Self::Train { loss, grad_norm, learning_rate, metrics, epoch, step } => {
                for (key, value) in [("loss", loss), ("grad_norm", grad_norm), ("learning_rate", learning_rate)] {
                    if let Some(v) = value {
                        out.push((key.to_string(), *v));
                    }
                }
                (metrics, "", epoch, step)
            }
            Self::Eval { eval, epoch, step } => {
                if let Some(loss) = eval.loss {
                    out.push(("eval_loss".to_string(), loss));
                }
                (&eval.metrics, "eval_", epoch, step)
            }
        };
        out.extend(metrics.entries().into_iter().map(|(k, v)| (format!("{prefix}{k}"), v)));
        out.push(("epoch".to_string(), *epoch));
        out.push(("step".to_string(), *step as f64));
        out
    }

    /// The value under a logged key (`loss`, `eval_rewards/margins`, ...).
    pub fn get(&self, key: &str) -> Option<f64> {
        self.entries().into_iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
}

/// A JSON object with TRL's keys ([`LogRecord::entries`]).
impl serde::Serialize for LogRecord {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let entries = self.entries();
        let mut map = serializer.serialize_map(Some(entries.len()))?;
        for (key, value) in &entries {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn margins_only_from_batches_with_both_labels() {
        let mut agg = MetricsAggregator::new();
        // Batch 1: both labels; rewards 0.4 (chosen) and 0.1 (rejected): margin 0.3.
        let b1 = microbatch_metrics(&MicroBatchInputs {
            desirable: &[true, false],
            policy_logps: &[-1.0, -3.0],
            rewards: &[0.4, 0.1],
            kl: 0.0,
            kl_unclamped: -0.5,
            token_stats: None,
            num_tokens: 10.0,
        });
        // Batch 2: chosen only, reward 0.2.
        let b2 = microbatch_metrics(&MicroBatchInputs {
            desirable: &[true, true],
            policy_logps: &[-2.0, -4.0],
            rewards: &[0.2, 0.2],
            kl: 0.5,
            kl_unclamped: 0.5,
            token_stats: None,
            num_tokens: 25.0,
        });
        agg.record(Mode::Eval, &b1);
        agg.record(Mode::Eval, &b2);
        let eval = EvalMetrics { loss: Some(0.5), metrics: agg.flush(Mode::Eval) };
        let record = LogRecord::Eval { eval, epoch: 1.0, step: 2 };
        let logged: std::collections::HashMap<_, _> = record.entries().into_iter().collect();
        // rewards/chosen = mean(0.4, 0.2) = 0.3; rejected = 0.1 (batch 1 only); margin = 0.3 (batch 1 only)
        let close = |k: &str, v: f64| assert!((logged[k] - v).abs() < 1e-6, "{k}: {} vs {v}", logged[k]);
        close("eval_rewards/chosen", 0.3);
        close("eval_rewards/rejected", 0.1);
        close("eval_rewards/margins", 0.3);
        close("eval_kl", 0.25);
        close("eval_num_tokens", 25.0);
        close("eval_count/desirable", 3.0);
        close("eval_logps/chosen", (-1.0 + -3.0) / 2.0); // mean(-1, mean(-2, -4))
        assert!(agg.is_empty(Mode::Eval));
        // Serialized with TRL's keys in TRL's order; absent values are left out (no token stats).
        let json = serde_json::to_string(&record).expect("serializes");
        assert!(
            json.starts_with(r#"{"eval_loss":0.5,"eval_kl":0.25,"eval_num_tokens":25.0,"eval_rewards/chosen""#),
            "{json}"
        );
        assert!(json.ends_with(r#""eval_count/undesirable":1.0,"epoch":1.0,"step":2.0}"#), "{json}");
        assert!(!json.contains("entropy"), "{json}");
    }
}
