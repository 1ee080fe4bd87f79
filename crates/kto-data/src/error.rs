//! The one error type of kto-data.

use std::path::PathBuf;

use crate::reader::Location;

/// Errors from reading tokenizers, templates and datasets.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A JSON file is malformed.
    #[error("{}: {source}", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// serde's error, with line and column.
        #[source]
        source: serde_json::Error,
    },
    /// `tokenizer.json` could not be loaded, or encoding/decoding failed.
    #[error("{}: tokenizer: {message}", path.display())]
    Tokenizer {
        /// The tokenizer folder or file.
        path: PathBuf,
        /// What the tokenizers library reported.
        message: String,
    },
    /// A dataset record is malformed: `data.jsonl:7: field "label": expected a boolean, found "yes"`.
    #[error("{at}: {}{reason}", Error::field_prefix(field))]
    Record {
        /// The file and line or row.
        at: Location,
        /// The field, when one is at fault.
        field: Option<String>,
        /// What is wrong.
        reason: String,
    },
    /// A dataset could not be found or opened: `trl-lib/kto-mix-14k: no data files for split "dev"`.
    #[error("{spec}: {reason}")]
    Dataset {
        /// The dataset as given (path or hub id).
        spec: String,
        /// What is wrong.
        reason: String,
    },
    /// Settings that do not fit together.
    #[error("invalid settings: {message}")]
    Config {
        /// What is wrong, naming the setting.
        message: String,
    },
    /// The dataset has no records.
    #[error("{}: the dataset is empty", path.display())]
    EmptyDataset {
        /// The dataset file.
        path: PathBuf,
    },
    /// The tokenizer has no chat template but a conversation was given.
    #[error("{}: no chat template (neither `chat_template` in tokenizer_config.json nor chat_template.jinja)", path.display())]
    NoChatTemplate {
        /// The tokenizer folder.
        path: PathBuf,
    },
    /// The chat template failed to render (including `raise_exception` calls in the template).
    #[error("{}: chat template: {message}", path.display())]
    Template {
        /// The tokenizer folder.
        path: PathBuf,
        /// minijinja's message.
        message: String,
    },
}

impl Error {
    fn field_prefix(field: &Option<String>) -> String {
        field.as_ref().map(|f| format!("field \"{f}\": ")).unwrap_or_default()
    }
}

/// `Result` with kto-data's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
