//! The learner's error type.
//!
//! One enum covers bad caller input (caught before any arithmetic so that the
//! loss never silently becomes NaN) and failures of the tensor library, so
//! that callers can `?` through policy, loss and optimiser code alike.

use thiserror::Error;

/// Everything that can go wrong in the loss, the policy or the learner.
///
/// ```
/// use g2po::learner::LearnerError;
/// let e = LearnerError::EmptyMask;
/// assert!(e.to_string().contains("mask"));
/// ```
#[derive(Debug, Error)]
pub enum LearnerError {
    /// A flat input slice does not hold `rows * max_len` entries.
    #[error("input `{name}` has {got} entries, expected {expected}")]
    LengthMismatch {
        /// Name of the offending input.
        name: &'static str,
        /// Its length.
        got: usize,
        /// The required length.
        expected: usize,
    },
    /// An input entry is NaN or infinite.
    #[error("input `{name}` has a non-finite value at index {index}")]
    NonFinite {
        /// Name of the offending input.
        name: &'static str,
        /// Flat index of the first bad entry.
        index: usize,
    },
    /// A mask entry is neither 0 nor 1.
    #[error("mask entry {index} is {value}, expected 0 or 1")]
    BadMask {
        /// Flat index of the entry.
        index: usize,
        /// Its value.
        value: f32,
    },
    /// No token is selected by the mask, so every aggregation is undefined.
    #[error("the response mask selects no token")]
    EmptyMask,
    /// An option is out of its domain.
    #[error("invalid configuration: {0}")]
    BadConfig(String),
    /// Some other caller input is invalid (message says which).
    #[error("invalid input: {0}")]
    BadInput(String),
    /// The gradient norm was NaN or infinite; the update was not applied.
    #[error("non-finite gradient norm {0}; update skipped")]
    NonFiniteGradient(f64),
    /// A failure inside candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Shorthand for results of this module.
pub type Result<T, E = LearnerError> = std::result::Result<T, E>;
