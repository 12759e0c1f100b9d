//! Errors of loading TLS material.

use std::path::PathBuf;

/// TLS material could not be loaded; the message names the file and the field it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ZtlsError {
    /// A file could not be read.
    #[error("`{field}`: cannot read {}: {message}", path.display())]
    Read {
        /// The configuration field naming the file.
        field: String,
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// A file was read but its content is unusable.
    #[error("`{field}`: {}: {problem}; {fix}", path.display())]
    Content {
        /// The configuration field naming the file.
        field: String,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
        /// How to fix it.
        fix: String,
    },
    /// The configuration is unusable as a whole.
    #[error(transparent)]
    Config(#[from] portcullis_core::ConfigError),
    /// rustls refused the configuration.
    #[error("TLS configuration refused: {0}")]
    Tls(String),
}

impl ZtlsError {
    pub(crate) fn content(
        field: impl Into<String>,
        path: &std::path::Path,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self::Content {
            field: field.into(),
            path: path.to_owned(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}
