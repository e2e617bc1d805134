//! The learner's error type.
//!
//! One enum covers bad loss inputs ([`LossError`], caught before any
//! arithmetic so that the loss never silently becomes NaN), bad update
//! batches, the policy's own failures and failures of the tensor library, so
//! that callers can `?` through loss, policy and optimiser code alike.

use thiserror::Error;

use crate::loss::LossError;

/// Everything that can go wrong in the loss op or the learner.
///
/// ```
/// use g2po::learner::LearnerError;
/// use g2po::loss::LossError;
/// let e = LearnerError::from(LossError::EmptyMask);
/// assert!(e.to_string().contains("mask"));
/// ```
#[derive(Debug, Error)]
pub enum LearnerError {
    /// The loss rejected its inputs or options.
    #[error(transparent)]
    Loss(#[from] LossError),
    /// A learner option is out of its domain.
    #[error("invalid learner configuration: {0}")]
    BadConfig(String),
    /// Some other caller input is invalid (the message says which).
    #[error("invalid input: {0}")]
    BadInput(String),
    /// The padded token layout ([`crate::broadcast`]) rejected the rows.
    #[error(transparent)]
    Layout(#[from] crate::Error),
    /// The gradient norm was NaN or infinite; the update was not applied.
    #[error("non-finite gradient norm {0}; update skipped")]
    NonFiniteGradient(f64),
    /// The policy failed while scoring tokens (its own error, boxed; see
    /// [`crate::learner::TrainablePolicy::Error`]).
    #[error("policy: {0}")]
    Policy(Box<dyn std::error::Error + Send + Sync>),
    /// A failure inside candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Shorthand for results of this module.
pub type Result<T, E = LearnerError> = std::result::Result<T, E>;
