//! The loss's error type.
//!
//! Every check happens before any arithmetic, so that bad input comes back as
//! one of these instead of a NaN loss or a silently wrong gradient.

use thiserror::Error;

/// Bad inputs or options of the GRPO loss, on any implementation (CPU
/// reference, candle op, CUDA kernel).
///
/// ```
/// use g2po::loss::LossError;
/// let e = LossError::LengthMismatch { name: "mask", got: 3, expected: 4 };
/// assert_eq!(e.to_string(), "input `mask` has 3 entries, expected 4");
/// ```
#[derive(Debug, Clone, PartialEq, Error)]
pub enum LossError {
    /// A flat input does not hold `rows * max_len` entries (or a tensor input
    /// is not `[rows, max_len]`).
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
        /// Flat (row-major) index of the first bad entry.
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
    /// `rows * max_len` cannot be addressed.
    #[error("a loss of {rows} rows x {max_len} tokens is too large")]
    TooLarge {
        /// Rows.
        rows: usize,
        /// Padded width.
        max_len: usize,
    },
    /// An option is out of its domain (the message names it and its value).
    #[error("invalid loss configuration: {0}")]
    BadConfig(String),
    /// A result came out non-finite although every input was finite: an
    /// option or input so large that the loss (f64) or its gradient (f32)
    /// cannot be represented.
    #[error("the loss's {what} is not finite ({value}) although every input is; an option or input is too large")]
    NonFiniteResult {
        /// `"loss"` or `"gradient"`.
        what: &'static str,
        /// The offending value.
        value: f64,
    },
}
