//! Typed Python exceptions (defined in `g2po_rs/errors.py`) built from Rust.
//!
//! Work that runs without the GIL cannot touch Python, so it reports a
//! [`Failure`]; the caller turns it into the Python exception once it holds
//! the GIL again.

use pyo3::prelude::*;

/// Which exception class of `g2po_rs.errors`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Input,
    Type,
    Config,
    Internal,
}

impl Kind {
    fn class(self) -> &'static str {
        match self {
            Kind::Input => "InputError",
            Kind::Type => "InputTypeError",
            Kind::Config => "ConfigError",
            Kind::Internal => "InternalError",
        }
    }
}

/// An error not yet raised: kind, argument, row and message.
#[derive(Debug, Clone)]
pub struct Failure {
    pub kind: Kind,
    pub argument: Option<String>,
    pub row: Option<usize>,
    pub message: String,
}

impl Failure {
    pub fn new(kind: Kind, argument: impl Into<String>, row: Option<usize>, message: impl Into<String>) -> Self {
        Self { kind, argument: Some(argument.into()), row, message: message.into() }
    }

    pub fn input(argument: impl Into<String>, row: Option<usize>, message: impl Into<String>) -> Self {
        Self::new(Kind::Input, argument, row, message)
    }

    pub fn type_(argument: impl Into<String>, row: Option<usize>, message: impl Into<String>) -> Self {
        Self::new(Kind::Type, argument, row, message)
    }

    pub fn config(argument: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(Kind::Config, argument, None, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self { kind: Kind::Internal, argument: None, row: None, message: message.into() }
    }

    /// The Python exception. The message always starts with the argument
    /// (and row) so that a bare traceback already says what is wrong.
    pub fn into_pyerr(self, py: Python<'_>) -> PyErr {
        let text = match (&self.argument, self.row) {
            (Some(a), Some(r)) => format!("{a}, row {r}: {}", self.message),
            (Some(a), None) => format!("{a}: {}", self.message),
            _ => self.message.clone(),
        };
        let built = (|| -> PyResult<PyErr> {
            let class = py.import("g2po_rs.errors")?.getattr(self.kind.class())?;
            let value = class.call1((text.clone(), self.argument.clone(), self.row))?;
            Ok(PyErr::from_value(value))
        })();
        built.unwrap_or_else(|e| e)
    }
}

impl From<Failure> for PyErr {
    fn from(f: Failure) -> PyErr {
        Python::attach(|py| f.into_pyerr(py))
    }
}

/// Result of work that may fail with a [`Failure`].
pub type Fallible<T> = Result<T, Failure>;

/// Maps an engine error to a failure, naming the Python argument. `row_of`
/// maps the engine's row back to the caller's (rows may have been permuted).
pub fn from_engine(e: g2po::Error, row_of: &dyn Fn(usize) -> usize) -> Failure {
    use g2po::Error as E;
    let message = e.to_string();
    let arg = |field: &str| match field {
        "anchor" => "anchors".to_owned(),
        other => other.to_owned(),
    };
    match e {
        E::EmptyBatch => Failure::input("group", None, "the batch is empty: no rows were given"),
        E::LengthMismatch { field, .. } => Failure::input(arg(field), None, message),
        E::NonFinite { row, field, .. } | E::RewardOutOfRange { row, field, .. } | E::Negative { row, field, .. } => {
            Failure::input(arg(field), Some(row_of(row)), message)
        }
        E::ReturnOutOfRange { row, .. } => Failure::input("reward", Some(row_of(row)), message),
        E::GroupTooSmall { .. } | E::UnknownGroup(_) => Failure::input("group", None, message),
        E::TooFewTokens { .. } => Failure::input("response_len", None, message),
        E::EmptyTrajectory { .. } => Failure::input("traj", None, message),
        E::DuplicateStep { row, .. } | E::StepOutOfOrder { row, .. } => {
            Failure::input("step", Some(row_of(row)), message)
        }
        E::TrajectoryInTwoGroups { row, .. } => Failure::input("traj", Some(row_of(row)), message),
        E::EpisodeRewardMismatch { row, .. } => Failure::input("episode_reward", Some(row_of(row)), message),
        E::MixedAnchors { row } => Failure::input("anchors", Some(row_of(row)), message),
        E::IdOutOfRange { row, field, .. } => Failure::input(field, Some(row_of(row)), message),
        E::InvalidParameter { name, .. } => Failure::config(name, message),
        E::SimilarityNeedsText => Failure::config("similarity", message),
        E::ResponseTooLong { row, .. } => Failure::input("response_len", Some(row_of(row)), message),
        other => Failure::internal(other.to_string()),
    }
}

/// Runs `f`, turning a Rust panic into [`Kind::Internal`] (never a
/// `PanicException`). Input is validated before the engine runs, so this is
/// a last line of defence, not control flow.
pub fn no_panic<T>(f: impl FnOnce() -> Fallible<T>) -> Fallible<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(Failure::internal(format!("internal error in the g2po engine: {what}")))
        }
    }
}
