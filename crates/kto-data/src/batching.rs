//! The order rows are drawn in and grouped into batches: TRL's sequential order, a seeded
//! shuffle, or length-grouped batches that cut padding.

use kto_core::SplitMix64;

use crate::collate::KlPairing;

/// How rows are ordered into batches (TRL's `train_sampling_strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sampling {
    /// Dataset order (TRL 1.16's only choice with a KL term); KL pairs are TRL's preprocessing
    /// pairs.
    #[default]
    Sequential,
    /// A new seeded permutation every epoch (seed + epoch, as transformers seeds its sampler);
    /// KL pairs are formed in each batch.
    Shuffle {
        /// Base seed.
        seed: u64,
    },
    /// Like transformers' `group_by_length`: a seeded permutation cut into mega-batches of up to
    /// 50 batches, each sorted by length (longest first), the longest row's batch first. Cuts
    /// padding; KL pairs are formed in each batch.
    GroupByLength {
        /// Base seed.
        seed: u64,
    },
}

impl Sampling {
    /// Parses `sequential`, `random` (or `shuffle`) and `group_by_length` with a seed.
    ///
    /// # Errors
    /// A message listing the accepted names.
    pub fn parse(name: &str, seed: u64) -> Result<Self, String> {
        match name {
            "sequential" => Ok(Self::Sequential),
            "random" | "shuffle" => Ok(Self::Shuffle { seed }),
            "group_by_length" => Ok(Self::GroupByLength { seed }),
            other => Err(format!(
                "unknown train_sampling_strategy \"{other}\" (expected sequential, random or group_by_length)"
            )),
        }
    }

    /// The KL pairing that is right for batches drawn this way.
    pub fn kl_pairing(self) -> KlPairing {
        match self {
            Self::Sequential => KlPairing::FromRows,
            Self::Shuffle { .. } | Self::GroupByLength { .. } => KlPairing::InBatch,
        }
    }
}

/// The batches of one epoch, as row indices: `lengths[i]` is row `i`'s token count (used by
/// [`Sampling::GroupByLength`]). The last batch may be short unless `drop_last`.
///
/// # Panics
/// When `batch_size == 0`.
pub fn epoch_batches(
    lengths: &[usize],
    batch_size: usize,
    sampling: Sampling,
    epoch: u64,
    drop_last: bool,
) -> Vec<Vec<usize>> {
    assert!(batch_size > 0, "batch_size must be > 0");
    let n = lengths.len();
    let order: Vec<usize> = match sampling {
        Sampling::Sequential => (0..n).collect(),
        Sampling::Shuffle { seed } => {
            let mut order: Vec<usize> = (0..n).collect();
            SplitMix64::new(seed.wrapping_add(epoch)).shuffle(&mut order);
            order
        }
        Sampling::GroupByLength { seed } => length_grouped(lengths, batch_size, seed.wrapping_add(epoch)),
    };
    let mut batches: Vec<Vec<usize>> = order.chunks(batch_size).map(<[usize]>::to_vec).collect();
    if drop_last && batches.last().is_some_and(|b| b.len() < batch_size) {
        batches.pop();
    }
    batches
}

fn length_grouped(lengths: &[usize], batch_size: usize, seed: u64) -> Vec<usize> {
    let n = lengths.len();
    let mut order: Vec<usize> = (0..n).collect();
    SplitMix64::new(seed).shuffle(&mut order);
    let mult = (n / (batch_size * 4)).clamp(1, 50);
    let mega = mult * batch_size;
    let mut megabatches: Vec<Vec<usize>> = order
        .chunks(mega)
        .map(|c| {
            let mut c = c.to_vec();
            // Stable sort, longest first; ties keep the shuffled order.
            c.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
            c
        })
        .collect();
    // The longest row goes first so an out-of-memory error shows at the first step.
    if let Some((k, _)) = megabatches
        .iter()
        .enumerate()
        .filter(|(_, m)| !m.is_empty())
        .max_by_key(|(k, m)| (lengths[m[0]], std::cmp::Reverse(*k)))
        && k > 0
    {
        let (first, rest) = megabatches.split_at_mut(k);
        std::mem::swap(&mut first[0][0], &mut rest[0][0]);
    }
    megabatches.concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_batches_are_consecutive_chunks() {
        let b = epoch_batches(&[1; 7], 3, Sampling::Sequential, 0, false);
        assert_eq!(b, vec![vec![0, 1, 2], vec![3, 4, 5], vec![6]]);
        assert_eq!(epoch_batches(&[1; 7], 3, Sampling::Sequential, 0, true).len(), 2);
    }

    #[test]
    fn shuffles_differ_by_epoch_and_cover_every_row_once() {
        let lengths = [1; 20];
        let e0 = epoch_batches(&lengths, 4, Sampling::Shuffle { seed: 42 }, 0, false);
        let e1 = epoch_batches(&lengths, 4, Sampling::Shuffle { seed: 42 }, 1, false);
        assert_ne!(e0, e1);
        assert_eq!(e0, epoch_batches(&lengths, 4, Sampling::Shuffle { seed: 42 }, 0, false), "seeded");
        for batches in [e0, e1] {
            let mut all: Vec<usize> = batches.concat();
            all.sort_unstable();
            assert_eq!(all, (0..20).collect::<Vec<_>>());
        }
    }

    #[test]
    fn length_grouping_cuts_padding() {
        // 64 rows of lengths 1..=64 in a scrambled order; batches of 4.
        let lengths: Vec<usize> = (0..64).map(|i| (i * 37) % 64 + 1).collect();
        let padded = |batches: &[Vec<usize>]| -> usize {
            batches.iter().map(|b| b.iter().map(|&i| lengths[i]).max().unwrap_or(0) * b.len()).sum()
        };
        let grouped = epoch_batches(&lengths, 4, Sampling::GroupByLength { seed: 0 }, 0, false);
        let shuffled = epoch_batches(&lengths, 4, Sampling::Shuffle { seed: 0 }, 0, false);
        // mult = 64 / (4 * 4) = 4: mega-batches of 16 rows, each sorted longest first, so a
        // batch holds rows of neighbouring lengths and pads less than a shuffled one.
        assert!(padded(&grouped) < padded(&shuffled), "{} vs {}", padded(&grouped), padded(&shuffled));
        assert_eq!(lengths[grouped[0][0]], 64, "longest row first");
        let mut all = grouped.concat();
        all.sort_unstable();
        assert_eq!(all, (0..64).collect::<Vec<_>>());
    }
}
