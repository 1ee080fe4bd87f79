//! Collation into right-padded micro-batches, as TRL 1.16's `DataCollatorForUnpairedPreference`.

use burn::tensor::{Bool, Device, Tensor, TensorData};
use kto_core::{KtoBatch, SequenceBatch};

use crate::tokenize::TokenizedRow;

/// Padding settings (TRL names).
#[derive(Debug, Clone, Copy)]
pub struct CollateConfig {
    /// Pad id (the tokenizer's pad token, or EOS when it has none).
    pub pad_id: u32,
    /// Keep the first `max_length` tokens of each sequence (`None`: no truncation).
    pub max_length: Option<usize>,
    /// Round the padded width up to a multiple of this.
    pub pad_to_multiple_of: Option<usize>,
}

/// Host-side padded sequences: row-major `batch × seq`.
#[derive(Debug, Clone, PartialEq)]
pub struct HostSequences {
    /// Token ids.
    pub input_ids: Vec<i64>,
    /// `true` on real tokens.
    pub attention_mask: Vec<bool>,
    /// `true` on completion tokens.
    pub completion_mask: Vec<bool>,
    /// `[batch, seq]`.
    pub shape: [usize; 2],
}

impl HostSequences {
    /// Rows `prompt ++ completion`, each cut to `max_length`, right-padded.
    fn build<'a>(rows: impl Iterator<Item = (&'a [u32], &'a [u32])>, config: &CollateConfig) -> Self {
        let seqs: Vec<(Vec<u32>, usize)> = rows
            .map(|(prompt, completion)| {
                let mut ids: Vec<u32> = prompt.iter().chain(completion).copied().collect();
                if let Some(max) = config.max_length {
                    ids.truncate(max);
                }
                (ids, prompt.len())
            })
            .collect();
        let longest = seqs.iter().map(|(ids, _)| ids.len()).max().unwrap_or(0);
        let seq = match config.pad_to_multiple_of {
            Some(m) if m > 0 => longest.div_ceil(m) * m,
            _ => longest,
        };
        let mut out =
            Self { input_ids: vec![], attention_mask: vec![], completion_mask: vec![], shape: [seqs.len(), seq] };
        for (ids, prompt_len) in &seqs {
            for t in 0..seq {
                let real = t < ids.len();
                out.input_ids.push(i64::from(if real { ids[t] } else { config.pad_id }));
                out.attention_mask.push(real);
                out.completion_mask.push(real && t >= *prompt_len);
            }
        }
        out
    }

    /// The tensors on `device`.
    pub fn to_device(&self, device: &Device) -> SequenceBatch {
        SequenceBatch::from_host(
            self.input_ids.clone(),
            self.attention_mask.clone(),
            self.completion_mask.clone(),
            self.shape,
            device,
        )
    }
}

/// A collated micro-batch on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct HostBatch {
    /// Prompt + completion.
    pub matched: HostSequences,
    /// Prompt + KL completion, when the rows carry KL completions.
    pub kl: Option<HostSequences>,
    /// Labels.
    pub desirable: Vec<bool>,
}

impl HostBatch {
    /// The typed tensor batch on `device`.
    pub fn to_device(&self, device: &Device) -> KtoBatch {
        let n = self.desirable.len();
        KtoBatch {
            matched: self.matched.to_device(device),
            kl: self.kl.as_ref().map(|kl| kl.to_device(device)),
            desirable: Tensor::<1, Bool>::from_data(TensorData::new(self.desirable.clone(), [n]), device),
            reference_logps: None,
            reference_kl_logps: None,
        }
    }
}

/// Collates rows the way TRL's collator does: `prompt ++ completion` (and `prompt ++
/// kl_completion`) cut to the first `max_length` tokens, right-padded with the pad id, masks
/// `true` on real and on completion tokens.
pub fn collate(rows: &[&TokenizedRow], config: &CollateConfig) -> HostBatch {
    let matched = HostSequences::build(rows.iter().map(|r| (&r.prompt_ids[..], &r.completion_ids[..])), config);
    let kl = rows.iter().all(|r| r.kl_completion_ids.is_some()).then(|| {
        HostSequences::build(
            rows.iter().map(|r| (&r.prompt_ids[..], r.kl_completion_ids.as_deref().expect("checked above"))),
            config,
        )
    });
    HostBatch { matched, kl, desirable: rows.iter().map(|r| r.label).collect() }
}
