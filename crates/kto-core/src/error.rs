//! The one error type of kto-core.
//!
//! Tensor math is infallible here: a wrong shape, rank or device is a bug and panics (documented
//! under `# Panics`). What a user can get wrong, a configuration value or a malformed in-memory
//! record, comes back as an [`Error`].

/// Errors from validating configurations and preparing in-memory records.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// A configuration value is out of its domain, e.g. `beta must be > 0, got -0.1`.
    #[error("{field} {reason}")]
    InvalidConfig {
        /// The config field, with TRL's name (`beta`, `desirable_weight`, ...).
        field: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
    /// Settings that do not fit together, or a batch that lacks what the settings need; the
    /// message names the setting.
    #[error("{reason}")]
    Settings {
        /// What is wrong, naming the setting (TRL's name).
        reason: String,
    },
    /// A data-parallel device (or the only device) panicked in its share of a step: out of
    /// memory, a shape error, a backend failure. The other devices stopped at the next exchange.
    #[error("device {device} ({name}) failed: {message}")]
    DeviceFailed {
        /// The worker index (0 is the policy's device).
        device: usize,
        /// The device, as burn names it.
        name: String,
        /// The panic's message.
        message: String,
    },
    /// The loss or the gradients became NaN or infinite.
    #[error("step {step}: {what} is not finite; training stopped (the last checkpoint is intact)")]
    NonFinite {
        /// The optimizer step (1-based) that failed.
        step: u64,
        /// What was not finite, with its value.
        what: String,
    },
    /// A paired record whose `chosen` or `rejected` is empty, so no prompt can be extracted
    /// (TRL crashes on such a row).
    #[error("row {row}: field `{field}`: is empty, cannot extract an implicit prompt")]
    EmptyPairedField {
        /// 0-based row index in the paired dataset.
        row: usize,
        /// `chosen` or `rejected`.
        field: &'static str,
    },
    /// Some paired records carry a `prompt` and others do not.
    #[error("row {row}: field `prompt`: {found} but row {first_row} {expected}; a dataset must use one paired format")]
    MixedPromptPresence {
        /// The first row, which fixed the format.
        first_row: usize,
        /// The offending row.
        row: usize,
        /// What the offending row has.
        found: &'static str,
        /// What the first row has.
        expected: &'static str,
    },
}

/// `Result` with kto-core's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
