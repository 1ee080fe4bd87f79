//! The one error type of kto-models.

use std::path::PathBuf;

/// Errors from reading and writing Hugging Face model folders.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `config.json` (or a shard index) is not valid JSON or lacks a required key.
    #[error("{path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// serde's error, with line and column.
        #[source]
        source: serde_json::Error,
    },
    /// A config value is outside what the models support.
    #[error("{path}: field `{field}`: {reason}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// The key.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// `model_type`/`architectures` name a model family this crate does not implement.
    #[error("{path}: unsupported architecture `{found}`; supported: {}", supported.join(", "))]
    UnsupportedArchitecture {
        /// The config file.
        path: PathBuf,
        /// What the config names.
        found: String,
        /// What is supported.
        supported: Vec<&'static str>,
    },
    /// A PEFT adapter folder does not fit (unsupported features, shapes, tensors).
    #[error("{}: {reason}", path.display())]
    Adapter {
        /// The file at fault.
        path: PathBuf,
        /// What does not fit.
        reason: String,
    },
    /// A safetensors file is malformed.
    #[error("{path}: invalid safetensors file: {reason}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What the safetensors reader reported.
        reason: String,
    },
    /// The checkpoint does not fit the model: every problem found, at once.
    #[error("{folder}: checkpoint does not match the model:\n{}", problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Checkpoint {
        /// The model folder.
        folder: PathBuf,
        /// Every missing, unexpected or mis-shaped tensor.
        problems: Vec<TensorProblem>,
    },
    /// The device cannot hold the requested dtype (ndarray has no bf16/f16).
    #[error("the device does not support {dtype:?} tensors; load in f32 instead")]
    UnsupportedDType {
        /// The requested dtype.
        dtype: burn::tensor::DType,
    },
}

/// One tensor that does not fit, as reported by [`Error::Checkpoint`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TensorProblem {
    /// The model needs a tensor the checkpoint lacks.
    Missing {
        /// The HF key.
        key: String,
    },
    /// The checkpoint holds a tensor the model does not use.
    Unexpected {
        /// The file that holds it.
        file: String,
        /// The HF key.
        key: String,
    },
    /// The tensor exists with another shape.
    ShapeMismatch {
        /// The file that holds it.
        file: String,
        /// The HF key.
        key: String,
        /// The shape the model needs.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// The tensor's dtype is not a float type the models read (f32, bf16, f16, f64).
    UnsupportedDType {
        /// The file that holds it.
        file: String,
        /// The HF key.
        key: String,
        /// The dtype in the file.
        dtype: String,
    },
}

impl std::fmt::Display for TensorProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TensorProblem::Missing { key } => write!(f, "missing tensor `{key}`"),
            TensorProblem::Unexpected { file, key } => write!(f, "{file}: unexpected tensor `{key}`"),
            TensorProblem::ShapeMismatch { file, key, expected, found } => {
                write!(f, "{file}: tensor `{key}`: expected shape {expected:?}, found {found:?}")
            }
            TensorProblem::UnsupportedDType { file, key, dtype } => {
                write!(f, "{file}: tensor `{key}`: unsupported dtype {dtype}")
            }
        }
    }
}

/// `Result` with kto-models' [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
