//! The language-model policy's error type.
//!
//! The two file failures a user can fix (the weights were never fetched; the
//! file is not the expected GGUF) are variants of their own that name the
//! path and the fix, so that a trainer can tell them apart from bad caller
//! input and from failures inside candle.

use std::path::PathBuf;

use thiserror::Error;

use crate::learner::LearnerError;

/// Everything that can go wrong in [`crate::lm`].
///
/// ```
/// use g2po::lm::LmError;
/// let e = LmError::MissingWeights { path: "/nowhere/model.gguf".into() };
/// assert!(e.to_string().contains("scripts/fetch-smollm2.sh"));
/// ```
#[derive(Debug, Error)]
pub enum LmError {
    /// The GGUF file does not exist (the setup step was not run).
    #[error(
        "SmolLM2 weights not found at {path}: run `{cmd}` to fetch them into the cache \
         (or point {env} at a copy)",
        cmd = super::FETCH_COMMAND,
        env = super::GGUF_PATH_ENV
    )]
    MissingWeights {
        /// Where the file was looked for.
        path: PathBuf,
    },
    /// The file exists but is not a usable SmolLM2 GGUF (truncated, wrong
    /// format, another architecture, a missing tensor or metadata key).
    #[error("{path} is not a usable SmolLM2 GGUF file: {reason} (re-run `{cmd}` to fetch it again)", cmd = super::FETCH_COMMAND)]
    CorruptWeights {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// Reading the file failed for another reason (permissions, I/O).
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Building the tokenizer or encoding text failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// An option is out of its domain.
    #[error("invalid configuration: {0}")]
    BadConfig(String),
    /// Some other caller input is invalid (message says which).
    #[error("invalid input: {0}")]
    BadInput(String),
    /// The loss or the optimiser rejected the update (message says why).
    #[error("learner: {0}")]
    Learner(String),
    /// A failure inside candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Shorthand for results of this module.
pub type Result<T, E = LmError> = std::result::Result<T, E>;

impl From<LearnerError> for LmError {
    /// A learner error (the loss or the optimiser helpers rejected
    /// something), keeping candle failures and configuration errors typed.
    fn from(e: LearnerError) -> Self {
        match e {
            LearnerError::Candle(c) => LmError::Candle(c),
            LearnerError::BadConfig(m) => LmError::BadConfig(m),
            LearnerError::Policy(e) => match e.downcast::<LmError>() {
                Ok(lm) => *lm,
                Err(other) => LmError::Learner(other.to_string()),
            },
            other => LmError::Learner(other.to_string()),
        }
    }
}
