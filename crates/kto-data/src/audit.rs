//! What a dataset looks like to the trainer: label counts, the eq. 8 weight advice, dropped and
//! truncated rows, prompt/completion mismatches, token lengths and the KL pairing plan.

use std::fmt;

use kto_core::{WeightAdvice, one_class_warning, recommended_weight_ranges, weight_warning};

use crate::record::Dataset;
use crate::tokenize::{DroppedRow, TokenizeConfig, Tokenized};

/// Percentiles of token lengths (nearest rank).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LengthStats {
    /// Number of rows.
    pub count: usize,
    /// Shortest.
    pub min: usize,
    /// Median.
    pub p50: usize,
    /// 90th percentile.
    pub p90: usize,
    /// 99th percentile.
    pub p99: usize,
    /// Longest.
    pub max: usize,
    /// Mean.
    pub mean: f64,
}

impl LengthStats {
    /// Statistics of `values` (all zero for none).
    pub fn of(mut values: Vec<usize>) -> Self {
        if values.is_empty() {
            return Self::default();
        }
        values.sort_unstable();
        let n = values.len();
        // Nearest rank: the smallest value with at least p% of the values at or below it.
        let rank = |p: usize| values[(p * n).div_ceil(100).clamp(1, n) - 1];
        Self {
            count: n,
            min: values[0],
            p50: rank(50),
            p90: rank(90),
            p99: rank(99),
            max: values[n - 1],
            mean: values.iter().sum::<usize>() as f64 / n as f64,
        }
    }
}

/// How KL partners are formed over the kept rows.
#[derive(Debug, Clone, PartialEq)]
pub struct KlPlan {
    /// Rows per chunk (`per_device_train_batch_size`).
    pub chunk: usize,
    /// Number of chunks.
    pub chunks: usize,
    /// Rows in the last chunk.
    pub last_chunk: usize,
    /// Source rows paired with their own completion (a trailing chunk of one row).
    pub self_paired: Vec<usize>,
}

/// The report of [`audit`]; `Display` prints it for people.
#[derive(Debug, Clone, PartialEq)]
pub struct Audit {
    /// Examples read (after unpairing).
    pub rows: usize,
    /// Desirable and undesirable examples read.
    pub read_labels: (usize, usize),
    /// Desirable and undesirable examples kept for training.
    pub kept_labels: (usize, usize),
    /// Rows dropped by the `max_length` filter.
    pub dropped: Vec<DroppedRow>,
    /// Kept rows longer than `max_length`, whose end the collator cuts.
    pub cut_at_max_length: usize,
    /// Rows cut by `max_prompt_length` (classic truncation).
    pub cut_by_prompt_budget: usize,
    /// Rows whose tokenized prompt is not a prefix of prompt + completion.
    pub prefix_mismatches: usize,
    /// TRL's warning for them.
    pub prefix_warning: Option<String>,
    /// Prompt token lengths of kept rows.
    pub prompt_lengths: LengthStats,
    /// Completion token lengths of kept rows.
    pub completion_lengths: LengthStats,
    /// Prompt + completion lengths of kept rows, before the collator's cut.
    pub total_lengths: LengthStats,
    /// The eq. 8 ranges for the configured weights (`None` when the classes are balanced).
    pub weight_advice: Option<WeightAdvice>,
    /// TRL's warning when neither weight is in its range.
    pub weight_warning: Option<String>,
    /// The warning for a dataset with one class only.
    pub one_class_warning: Option<String>,
    /// The KL pairing plan (`None` without KL pairs).
    pub kl_plan: Option<KlPlan>,
    /// The settings audited.
    pub max_length: Option<usize>,
}

/// Audits a tokenized dataset with the configured loss weights.
pub fn audit(
    dataset: &Dataset,
    tokenized: &Tokenized,
    config: &TokenizeConfig,
    desirable_weight: f64,
    undesirable_weight: f64,
) -> Audit {
    let rows = &tokenized.rows;
    let kept_d = rows.iter().filter(|r| r.label).count();
    let kept_labels = (kept_d, rows.len() - kept_d);
    let kl_plan = config.kl_pairs.then(|| {
        let chunk = config.per_device_train_batch_size.max(1);
        let last_chunk = match rows.len() % chunk {
            0 if rows.is_empty() => 0,
            0 => chunk,
            r => r,
        };
        KlPlan {
            chunk,
            chunks: rows.len().div_ceil(chunk),
            last_chunk,
            self_paired: if last_chunk == 1 { rows.last().map(|r| r.source_row).into_iter().collect() } else { vec![] },
        }
    });
    Audit {
        rows: dataset.examples.len(),
        read_labels: dataset.label_counts(),
        kept_labels,
        dropped: tokenized.dropped.clone(),
        cut_at_max_length: config.max_length.map_or(0, |m| rows.iter().filter(|r| r.len() > m).count()),
        cut_by_prompt_budget: rows.iter().filter(|r| r.truncated != (0, 0)).count(),
        prefix_mismatches: tokenized.prefix_mismatches,
        prefix_warning: tokenized.prefix_warning.clone(),
        prompt_lengths: LengthStats::of(rows.iter().map(|r| r.prompt_ids.len()).collect()),
        completion_lengths: LengthStats::of(rows.iter().map(|r| r.completion_ids.len()).collect()),
        total_lengths: LengthStats::of(rows.iter().map(|r| r.len()).collect()),
        weight_advice: recommended_weight_ranges(kept_labels.0, kept_labels.1, desirable_weight, undesirable_weight),
        weight_warning: weight_warning(kept_labels.0, kept_labels.1, desirable_weight, undesirable_weight),
        one_class_warning: one_class_warning(kept_labels.0, kept_labels.1),
        kl_plan,
        max_length: config.max_length,
    }
}

impl fmt::Display for LengthStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "min {:>5}  p50 {:>5}  p90 {:>5}  p99 {:>5}  max {:>5}  mean {:>8.1}",
            self.min, self.p50, self.p90, self.p99, self.max, self.mean
        )
    }
}

impl fmt::Display for Audit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (rd, ru) = self.read_labels;
        let (kd, ku) = self.kept_labels;
        writeln!(f, "rows read          {:>7}  (desirable {rd}, undesirable {ru})", self.rows)?;
        writeln!(f, "rows kept          {:>7}  (desirable {kd}, undesirable {ku})", kd + ku)?;
        let limit = self.max_length.map_or_else(|| "none".to_string(), |m| m.to_string());
        writeln!(
            f,
            "dropped            {:>7}  (prompt alone has max_length={limit} tokens or more)",
            self.dropped.len()
        )?;
        for d in self.dropped.iter().take(10) {
            writeln!(f, "  row {}: {}", d.source_row, d.reason)?;
        }
        if self.dropped.len() > 10 {
            writeln!(f, "  ... {} more (see --dump)", self.dropped.len() - 10)?;
        }
        writeln!(f, "cut at max_length  {:>7}  (the collator keeps the first {limit} tokens)", self.cut_at_max_length)?;
        if self.cut_by_prompt_budget > 0 {
            writeln!(f, "cut by max_prompt_length {:>7}", self.cut_by_prompt_budget)?;
        }
        writeln!(f, "prefix mismatches  {:>7}", self.prefix_mismatches)?;
        writeln!(f, "tokens (kept rows)")?;
        writeln!(f, "  prompt           {}", self.prompt_lengths)?;
        writeln!(f, "  completion       {}", self.completion_lengths)?;
        writeln!(f, "  total            {}", self.total_lengths)?;
        match &self.weight_advice {
            None => writeln!(f, "weights            balanced classes: any weights are in range")?,
            Some(a) => writeln!(
                f,
                "weights            eq. 8 recommends desirable_weight in [{}, {}] or undesirable_weight in [{}, {}]{}",
                kto_core::py_float_repr(a.desirable_range.0),
                kto_core::py_float_repr(a.desirable_range.1),
                kto_core::py_float_repr(a.undesirable_range.0),
                kto_core::py_float_repr(a.undesirable_range.1),
                if a.in_range { " (the configured weights are in range)" } else { "" }
            )?,
        }
        match &self.kl_plan {
            None => writeln!(f, "KL pairs           none (apo_zero_unpaired)")?,
            Some(p) => {
                writeln!(
                    f,
                    "KL pairs           {} chunks of {} rows (last chunk {}), each row takes the previous row's completion",
                    p.chunks, p.chunk, p.last_chunk
                )?;
                if !p.self_paired.is_empty() {
                    writeln!(f, "  self-paired (a chunk of one row, as TRL does): rows {:?}", p.self_paired)?;
                }
            }
        }
        for w in [&self.weight_warning, &self.one_class_warning, &self.prefix_warning].into_iter().flatten() {
            writeln!(f, "warning: {w}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s = LengthStats::of((1..=100).collect());
        assert_eq!((s.min, s.p50, s.p90, s.p99, s.max), (1, 50, 90, 99, 100));
        assert_eq!(s.mean, 50.5);
        let s = LengthStats::of(vec![7, 3, 5]);
        // ceil(0.5 * 3) = 2nd smallest; ceil(0.9 * 3) = 3rd.
        assert_eq!((s.p50, s.p90, s.p99), (5, 7, 7));
        assert_eq!(LengthStats::of(vec![]), LengthStats::default());
    }
}
