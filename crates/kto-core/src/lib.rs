//! # kto-core: the math of KTO on burn, backend-generic
//!
//! Kahneman-Tversky Optimization (Ethayarajh et al. 2024, arXiv:2402.01306) aligns a causal
//! language model from binary feedback: each example is a prompt, a completion and a thumbs-up
//! (desirable) or thumbs-down (undesirable) label. This crate holds everything that is math or
//! training logic, written against burn 0.22's runtime [`Device`](burn::tensor::Device), so one
//! code path runs on CUDA, wgpu and the CPU backends:
//!
//! | piece | item |
//! | --- | --- |
//! | what a model must offer | [`CausalLm`] |
//! | a collated micro-batch | [`KtoBatch`] |
//! | completion log-probs (TRL's shift, f32, chunked) | [`sequence_logps`], [`completion_logps`] |
//! | the loss (`kto`, `apo_zero_unpaired`, class weights) | [`kto_loss`], [`KtoLossConfig`] |
//! | the KL reference point `z₀` | [`kl_estimate`], [`combine_device_kl`] |
//! | KL pairs | [`kl_partners`], [`kl_partners_chunked`] |
//! | paired data to unpaired examples | [`unpair`], [`extract_prompt`] |
//! | the eq. 8 weight heuristic | [`recommended_weight_ranges`], [`weight_warning`] |
//! | metrics with TRL's semantics | [`microbatch_metrics`], [`MetricsAggregator`] |
//! | matched and KL sequences sharing their prompts | [`paired_completion_logps`] |
//! | the training step, on one device or data-parallel | [`Trainer`], [`Trainer::train_step_parallel`], [`fit`] |
//!
//! The numbers are TRL 1.16's: the tests replay TRL's own per-micro-batch log-probs and check
//! the loss, KL, rewards and metrics it logged.
//!
//! ## What this crate must not know
//! Files, tokenizers, weight formats and command lines: no `std::fs`, no safetensors, no
//! serde_json. Readers and tokenization live in `kto-data`, models and checkpoints in
//! `kto-models`, devices and I/O in `kto-cli`.
//!
//! ## Example
//! ```
//! use burn::prelude::*;
//! use kto_core::{kl_estimate, kto_loss, KtoLossConfig};
//!
//! let device = Device::flex();
//! let policy = Tensor::<1>::from_floats([-10.0, -12.0], &device);
//! let reference = Tensor::<1>::from_floats([-11.0, -11.0], &device);
//! let desirable = Tensor::<1, Bool>::from_bool(TensorData::from([true, false]), &device);
//! let kl = kl_estimate(
//!     Tensor::from_floats([-20.0, -21.0], &device),
//!     Tensor::from_floats([-20.5, -21.5], &device),
//! );
//! let out = kto_loss(&KtoLossConfig::new(), policy, reference, desirable, kl.kl);
//! // lr = (1, -1), z0 = 0.5, β = 0.1: ℓ = 1 - σ(0.05) and 1 - σ(0.15), mean ≈ 0.47504
//! assert!((out.loss.into_scalar::<f32>() - 0.475_04).abs() < 1e-5);
//! ```
//!
//! See the book's chapter "The KTO objective" for each symbol mapped to its config field.
#![deny(missing_docs)]

#[doc(hidden)]
pub use serde as __serde;

mod batch;
mod choice;
mod error;
mod fit;
mod kl;
mod lm;
mod logps;
mod loss;
mod metrics;
mod optim;
mod pairing;
mod rng;
#[cfg(test)]
mod test_lm;
mod trainer;
mod unpair;
mod weights;

pub use batch::{KtoBatch, SequenceBatch};
pub use choice::{Choice, UnknownChoice, text_or_list};
pub use error::{Error, Result};
pub use fit::{EvalEvery, FitConfig, FitHooks, Position, fit};
pub use kl::{KlEstimate, combine_device_kl, kl_estimate};
pub use lm::CausalLm;
pub use logps::{
    CompletionLogps, LogpsConfig, TokenStats, completion_logps, logps_from_hidden, paired_completion_logps,
    sequence_logps, shared_prefix_len,
};
pub use loss::{KtoLoss, KtoLossConfig, LossType, kto_loss};
pub use metrics::{
    EvalMetrics, KtoMetrics, LogRecord, Metric, MetricsAggregator, MicroBatchInputs, Mode, Reduction, RowTokenStats,
    microbatch_metrics,
};
pub use optim::{
    HostMoments, Optim, Optimizer, OptimizerKind, OptimizerStorage, Schedule, ScheduleKind, clip_factor,
    gather_gradients, global_grad_norm, mix_parameters, parameters_by_path, round_stochastic,
};
pub use pairing::{kl_partners, kl_partners_chunked, kl_partners_windowed, window_micro_batches};
pub use rng::SplitMix64;
pub use trainer::{BATCH_SIZE_ONE_MESSAGE, KlMode, Reference, StepReport, Trainer, TrainerConfig, reference_logps};
pub use unpair::{
    ExtractedPrompt, PairedExample, PromptContent, TRL_UNPAIR_BLOCK, UnpairedExample, extract_prompt, unpair,
};
pub use weights::{
    WEIGHT_RATIO_UPPER, WeightAdvice, one_class_warning, py_float_repr, recommended_weight_ranges, weight_warning,
};
