//! [`CausalLm`]: what a model must offer to be trained with KTO.

use burn::prelude::*;

/// A decoder-only language model, split into its body and its output projection.
///
/// KTO needs per-token log-probabilities of completion tokens only. Asking a model for its
/// `[batch, seq, vocab]` logits would materialise the largest tensor of the whole step (for a
/// 150k vocabulary and 2k tokens that is 1.2 GB per row in f32) for positions that are mostly
/// prompt and padding. So the trait separates the two halves: [`hidden_states`] runs the
/// transformer once, and [`project`] is applied by [`crate::completion_logps`] to small slices of
/// positions, so peak memory stays `O(batch × chunk × vocab)`.
///
/// # Implementing it for your own burn model
///
/// - `hidden_states` returns the final hidden states, *after* the last normalisation, for every
///   position. It must be a pure `&self` forward: causal attention, right padding
///   (`attention_mask` is `true` on real tokens, padding only at the end of a row), positions
///   `0..seq` for every row.
/// - `project` applies the output head (the `lm_head`, or the transposed embedding matrix for
///   tied embeddings, plus any bias or soft-capping) to any slice of hidden states.
/// - Both run on the device of their inputs; under `device.autodiff()` they must be
///   differentiable with respect to the model's parameters.
///
/// A minimal implementation (an embedding table and a linear head) is in the kto-core tests and
/// in the book's chapter "Using kto-core in your own burn project".
///
/// [`hidden_states`]: CausalLm::hidden_states
/// [`project`]: CausalLm::project
pub trait CausalLm {
    /// Final hidden states for every position.
    ///
    /// # Shapes
    /// - `input_ids`: `[batch, seq]`, token ids
    /// - `attention_mask`: `[batch, seq]`, `true` on real tokens (right padding)
    /// - returns: `[batch, seq, d_model]`; position `t` is the state that predicts token `t + 1`
    fn hidden_states(&self, input_ids: Tensor<2, Int>, attention_mask: Tensor<2, Bool>) -> Tensor<3>;

    /// The output projection: hidden states to next-token logits.
    ///
    /// # Shapes
    /// - `hidden`: `[batch, positions, d_model]`, any contiguous slice of positions
    /// - returns: `[batch, positions, vocab]`
    fn project(&self, hidden: Tensor<3>) -> Tensor<3>;

    /// Width of [`project`](CausalLm::project)'s output.
    fn vocab_size(&self) -> usize;

    /// Hidden states of two batches whose rows start with the same tokens, computing that shared
    /// prefix once: `first` through `self` (differentiable under autodiff) and `second` through
    /// `detached`, a copy of `self` on the inner, non-autodiff device (`self.clone().valid()`, or
    /// `self` when it already is one). `second`'s states carry no graph.
    ///
    /// KTO scores each row's prompt twice, with its own completion and with its KL partner's;
    /// [`crate::paired_completion_logps`] finds how many leading positions the two batches share
    /// in every row and passes that as `shared`. A model with a key/value cache runs `first`
    /// once, keeps the keys and values of positions `0..shared`, and runs only `second`'s
    /// remaining positions on them. The default ignores `shared` and runs both batches in full,
    /// which is always correct.
    ///
    /// # Shapes
    /// - `first`: `([batch, seq_a], [batch, seq_a])`, ids and attention mask
    /// - `second`: `([batch, seq_b], [batch, seq_b])`, ids and attention mask on `detached`'s device
    /// - `shared`: positions `0..shared` have equal ids and masks in both, `shared < min(seq_a, seq_b)`
    /// - returns: `([batch, seq_a, d_model], [batch, seq_b, d_model])`
    fn hidden_states_sharing_prefix(
        &self,
        first: (Tensor<2, Int>, Tensor<2, Bool>),
        detached: &Self,
        second: (Tensor<2, Int>, Tensor<2, Bool>),
        shared: usize,
    ) -> (Tensor<3>, Tensor<3>) {
        let _ = shared;
        (self.hidden_states(first.0, first.1), detached.hidden_states(second.0, second.1))
    }

    /// Full logits for every position. Convenient for inspection and generation; training code
    /// uses the chunked [`crate::completion_logps`] instead.
    ///
    /// # Shapes
    /// - `input_ids`, `attention_mask`: `[batch, seq]`
    /// - returns: `[batch, seq, vocab]`
    fn logits(&self, input_ids: Tensor<2, Int>, attention_mask: Tensor<2, Bool>) -> Tensor<3> {
        self.project(self.hidden_states(input_ids, attention_mask))
    }
}
