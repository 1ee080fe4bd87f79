//! Collation into right-padded micro-batches, as TRL 1.16's `DataCollatorForUnpairedPreference`.

use burn::tensor::{Bool, Device, Tensor, TensorData};
use kto_core::{KtoBatch, SequenceBatch};

use crate::tokenize::TokenizedRow;

/// Where the KL sequences of a batch take their completions from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KlPairing {
    /// No KL sequences (`apo_zero_unpaired`).
    Off,
    /// Each row's [`TokenizedRow::kl_completion_ids`], paired at preprocessing (TRL; right when
    /// batches are the preprocessing chunks, i.e. sequential sampling).
    #[default]
    FromRows,
    /// Formed in the batch itself: row `i` takes the completion of row `i - 1` (row 0 the last
    /// row's), the same `+1` rotation as TRL, valid under any sampler (shuffled or
    /// length-grouped batches).
    InBatch,
}

/// Padding settings (TRL names).
#[derive(Debug, Clone, Copy)]
pub struct CollateConfig {
    /// Pad id (the tokenizer's pad token, or EOS when it has none).
    pub pad_id: u32,
    /// Keep the first `max_length` tokens of each sequence (`None`: no truncation).
    pub max_length: Option<usize>,
    /// Round the padded width up to a multiple of this.
    pub pad_to_multiple_of: Option<usize>,
    /// Where KL completions come from.
    pub kl: KlPairing,
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
    /// Precomputed reference log-probabilities of the completions, when every row has one.
    pub reference_logps: Option<Vec<f32>>,
    /// Precomputed reference log-probabilities of the KL completions, when every row has one
    /// (not with [`KlPairing::InBatch`], whose pairs are new).
    pub reference_kl_logps: Option<Vec<f32>>,
}

impl HostBatch {
    /// The typed tensor batch on `device`.
    pub fn to_device(&self, device: &Device) -> KtoBatch {
        let n = self.desirable.len();
        KtoBatch {
            matched: self.matched.to_device(device),
            kl: self.kl.as_ref().map(|kl| kl.to_device(device)),
            desirable: Tensor::<1, Bool>::from_data(TensorData::new(self.desirable.clone(), [n]), device),
            reference_logps: self.reference_logps.as_ref().map(|v| vector(v, device)),
            reference_kl_logps: self.reference_kl_logps.as_ref().map(|v| vector(v, device)),
        }
    }
}

fn vector(values: &[f32], device: &Device) -> Tensor<1> {
    Tensor::from_data(TensorData::new(values.to_vec(), [values.len()]), (device, burn::tensor::DType::F32))
}

/// Collates rows the way TRL's collator does: `prompt ++ completion` (and `prompt ++
/// kl_completion`) cut to the first `max_length` tokens, right-padded with the pad id, masks
/// `true` on real and on completion tokens; precomputed reference log-probs when every row has
/// them.
///
/// # Panics
/// With [`KlPairing::FromRows`] when a row has no KL completion (tokenized without KL pairs).
pub fn collate(rows: &[&TokenizedRow], config: &CollateConfig) -> HostBatch {
    let matched = HostSequences::build(rows.iter().map(|r| (&r.prompt_ids[..], &r.completion_ids[..])), config);
    let kl = match config.kl {
        KlPairing::Off => None,
        KlPairing::FromRows => Some(HostSequences::build(
            rows.iter()
                .map(|r| (&r.prompt_ids[..], r.kl_completion_ids.as_deref().expect("rows tokenized with KL pairs"))),
            config,
        )),
        KlPairing::InBatch => {
            let partners = kto_core::kl_partners(rows.len());
            Some(HostSequences::build(
                rows.iter().zip(partners).map(|(r, p)| (&r.prompt_ids[..], &rows[p].completion_ids[..])),
                config,
            ))
        }
    };
    let all = |f: fn(&TokenizedRow) -> Option<f64>| -> Option<Vec<f32>> {
        rows.iter().map(|r| f(r).map(|x| x as f32)).collect()
    };
    HostBatch {
        matched,
        kl,
        desirable: rows.iter().map(|r| r.label).collect(),
        reference_logps: all(|r| r.ref_logps),
        reference_kl_logps: match config.kl {
            KlPairing::FromRows => all(|r| r.ref_kl_logps),
            KlPairing::Off | KlPairing::InBatch => None,
        },
    }
}
