//! Typed errors of the library. The CLI adds context with `anyhow`.

use std::path::PathBuf;

/// Everything the library can fail with.
#[derive(Debug, thiserror::Error)]
pub enum LopperError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file exists but does not hold what was expected.
    #[error("{path}: {what}")]
    BadFile { path: PathBuf, what: String },
    /// A model graph that cannot be built or executed (bad wiring, shapes that do not fit).
    #[error("invalid model graph: {0}")]
    Graph(String),
    /// Saved weights that do not fit the saved architecture.
    #[error("weights do not match the architecture: {0}")]
    WeightMismatch(String),
    /// A name that is not known (model, data set, optimiser, ...).
    #[error("unknown {kind} '{name}' (known: {known})")]
    Unknown {
        kind: &'static str,
        name: String,
        known: String,
    },
    /// A configuration value that cannot be used.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A plot could not be drawn.
    #[error("cannot draw the plot: {0}")]
    Plot(String),
    /// A model that the chosen export format cannot express.
    #[error("cannot export: {0}")]
    Export(String),
    /// Training diverged.
    #[error("{0}")]
    Diverged(String),
}

impl LopperError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        LopperError::Io {
            path: path.into(),
            source,
        }
    }
    pub fn bad_file(path: impl Into<PathBuf>, what: impl Into<String>) -> Self {
        LopperError::BadFile {
            path: path.into(),
            what: what.into(),
        }
    }
}

pub type Result<T, E = LopperError> = std::result::Result<T, E>;
