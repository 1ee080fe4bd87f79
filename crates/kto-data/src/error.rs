//! The one error type of kto-data.

use std::path::PathBuf;

/// Errors from reading tokenizers, templates and datasets.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file is malformed.
    #[error("{path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// serde's error, with line and column.
        #[source]
        source: serde_json::Error,
    },
    /// `tokenizer.json` could not be loaded, or encoding/decoding failed.
    #[error("{path}: tokenizer: {message}")]
    Tokenizer {
        /// The tokenizer folder or file.
        path: PathBuf,
        /// What the tokenizers library reported.
        message: String,
    },
    /// The tokenizer has no chat template but a conversation was given.
    #[error("{path}: no chat template (neither `chat_template` in tokenizer_config.json nor chat_template.jinja)")]
    NoChatTemplate {
        /// The tokenizer folder.
        path: PathBuf,
    },
    /// The chat template failed to render (including `raise_exception` calls in the template).
    #[error("{path}: chat template: {message}")]
    Template {
        /// The tokenizer folder.
        path: PathBuf,
        /// minijinja's message.
        message: String,
    },
}

/// `Result` with kto-data's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
