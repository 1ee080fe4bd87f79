//! [`KtoBatch`]: one collated micro-batch, with named tensors instead of string keys.

use burn::prelude::*;

/// Right-padded token sequences with their masks.
#[derive(Debug, Clone)]
pub struct SequenceBatch {
    /// Token ids, padded with the pad id. `[batch, seq]`
    pub input_ids: Tensor<2, Int>,
    /// `true` on real tokens. `[batch, seq]`
    pub attention_mask: Tensor<2, Bool>,
    /// `true` on completion tokens (the scored ones). `[batch, seq]`
    pub completion_mask: Tensor<2, Bool>,
}

impl SequenceBatch {
    /// The same tensors on `device`.
    pub fn to_device(&self, device: &Device) -> Self {
        Self {
            input_ids: self.input_ids.clone().to_device(device),
            attention_mask: self.attention_mask.clone().to_device(device),
            completion_mask: self.completion_mask.clone().to_device(device),
        }
    }

    /// The same tensors off the autodiff graph, on the inner device (what a frozen model reads).
    pub fn inner(&self) -> Self {
        Self {
            input_ids: self.input_ids.clone().inner(),
            attention_mask: self.attention_mask.clone().inner(),
            completion_mask: self.completion_mask.clone().inner(),
        }
    }

    /// Builds the tensors from row-major host data of `batch × seq` entries.
    ///
    /// # Panics
    /// When a vector's length is not `batch × seq`.
    pub fn from_host(
        input_ids: Vec<i64>,
        attention_mask: Vec<bool>,
        completion_mask: Vec<bool>,
        [batch, seq]: [usize; 2],
        device: &Device,
    ) -> Self {
        assert_eq!(input_ids.len(), batch * seq, "input_ids length");
        assert_eq!(attention_mask.len(), batch * seq, "attention_mask length");
        assert_eq!(completion_mask.len(), batch * seq, "completion_mask length");
        Self {
            input_ids: Tensor::from_data(TensorData::new(input_ids, [batch, seq]), device),
            attention_mask: Tensor::from_data(TensorData::new(attention_mask, [batch, seq]), device),
            completion_mask: Tensor::from_data(TensorData::new(completion_mask, [batch, seq]), device),
        }
    }
}

/// One micro-batch of unpaired KTO examples.
#[derive(Debug, Clone)]
pub struct KtoBatch {
    /// Each row's prompt + completion.
    pub matched: SequenceBatch,
    /// Each row's prompt + its KL partner's completion; `None` for losses without a KL term.
    pub kl: Option<SequenceBatch>,
    /// `true` for desirable rows. `[batch]`
    pub desirable: Tensor<1, Bool>,
    /// Precomputed reference log-probs of the matched sequences, when available. `[batch]`
    pub reference_logps: Option<Tensor<1>>,
    /// Precomputed reference log-probs of the KL sequences, when available. `[batch]`
    pub reference_kl_logps: Option<Tensor<1>>,
}

impl KtoBatch {
    /// The same batch on `device` (a data-parallel worker's).
    pub fn to_device(&self, device: &Device) -> Self {
        Self {
            matched: self.matched.to_device(device),
            kl: self.kl.as_ref().map(|kl| kl.to_device(device)),
            desirable: self.desirable.clone().to_device(device),
            reference_logps: self.reference_logps.clone().map(|t| t.to_device(device)),
            reference_kl_logps: self.reference_kl_logps.clone().map(|t| t.to_device(device)),
        }
    }
}
