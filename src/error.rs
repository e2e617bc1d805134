//! The one error type of the advantage engine.
//!
//! Input is validated once, at the boundary (the batch builder and the JSON
//! readers), so every variant names the offending row and field; the
//! estimators themselves only fail on configuration errors.

use thiserror::Error;

/// Everything that can go wrong between rollout rows and token advantages.
///
/// ```
/// use g2po::{Error, RolloutBatch};
/// let err = RolloutBatch::builder().build().unwrap_err();
/// assert!(matches!(err, Error::EmptyBatch));
/// ```
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// The batch holds no rows at all.
    #[error("the batch is empty: no rows were given")]
    EmptyBatch,
    /// A trajectory was pushed without any step.
    #[error("trajectory {traj:?} of group {group:?} has no steps")]
    EmptyTrajectory {
        /// Group id.
        group: String,
        /// Trajectory id.
        traj: String,
    },
    /// Column inputs of different lengths.
    #[error("column {field:?} has {found} entries but the batch has {expected} rows")]
    LengthMismatch {
        /// The column that disagrees.
        field: &'static str,
        /// Number of rows (length of the first column).
        expected: usize,
        /// Length of this column.
        found: usize,
    },
    /// A reward that is NaN or infinite.
    #[error("row {row}: field {field:?} is not finite ({value})")]
    NonFinite {
        /// Row index in input order.
        row: usize,
        /// Field name.
        field: &'static str,
        /// The offending value.
        value: f64,
    },
    /// A reward too large in magnitude for the results to stay finite in `f32`
    /// (see [`crate::rollout::MAX_ABS_REWARD`]).
    #[error("row {row}: field {field:?} = {value} exceeds the largest accepted magnitude (1e30)")]
    RewardOutOfRange {
        /// Row index in input order.
        row: usize,
        /// Field name.
        field: &'static str,
        /// The offending value.
        value: f64,
    },
    /// A trajectory whose summed `|reward|` exceeds [`crate::rollout::MAX_ABS_REWARD`],
    /// so its discounted returns could leave the `f32` range.
    #[error("row {row}: trajectory {traj:?} sums |reward| to {sum}, beyond the largest accepted magnitude (1e30)")]
    ReturnOutOfRange {
        /// Row index in input order (the row that crossed the bound).
        row: usize,
        /// Trajectory id.
        traj: String,
        /// The sum of `|reward|` up to and including this row.
        sum: f64,
    },
    /// A negative token count or step index (only reachable from untyped input).
    #[error("row {row}: field {field:?} must be non-negative, got {value}")]
    Negative {
        /// Row index in input order.
        row: usize,
        /// Field name.
        field: &'static str,
        /// The offending value.
        value: i64,
    },
    /// The same (trajectory, step) pair twice.
    #[error("row {row}: trajectory {traj:?} step {step} already appeared at row {first_row}")]
    DuplicateStep {
        /// Row index in input order.
        row: usize,
        /// Trajectory id.
        traj: String,
        /// Step index.
        step: u32,
        /// Where it first appeared.
        first_row: usize,
    },
    /// Steps of a trajectory must appear as 0, 1, 2, ... in row order.
    #[error("row {row}: trajectory {traj:?} expected step {expected}, found step {found}")]
    StepOutOfOrder {
        /// Row index in input order.
        row: usize,
        /// Trajectory id.
        traj: String,
        /// The step that should come next.
        expected: u32,
        /// The step given.
        found: u32,
    },
    /// A trajectory id reused in a second task group.
    #[error("row {row}: trajectory {traj:?} belongs to group {first_group:?}, not {group:?}")]
    TrajectoryInTwoGroups {
        /// Row index in input order.
        row: usize,
        /// Trajectory id.
        traj: String,
        /// Group of its first row.
        first_group: String,
        /// Group given on this row.
        group: String,
    },
    /// Rows of one trajectory disagree on its episode reward.
    #[error("row {row}: trajectory {traj:?} has episode_reward {found}, earlier rows said {expected}")]
    EpisodeRewardMismatch {
        /// Row index in input order.
        row: usize,
        /// Trajectory id.
        traj: String,
        /// Episode reward of the trajectory's first row.
        expected: f64,
        /// Episode reward on this row.
        found: f64,
    },
    /// Some rows carry anchor text and others precomputed keys.
    #[error("row {row}: anchors must be all text or all keys; this row differs from row 0")]
    MixedAnchors {
        /// Row index in input order.
        row: usize,
    },
    /// A required field is absent.
    #[error("row {row}: missing field {field:?}")]
    MissingField {
        /// Row index in input order.
        row: usize,
        /// Field name.
        field: &'static str,
    },
    /// A pre-factorised (dense) id beyond the labels given for it.
    #[error("row {row}: {field} index {id} is out of range (only {count} labels were given)")]
    IdOutOfRange {
        /// Row index in input order.
        row: usize,
        /// `group` or `traj`.
        field: &'static str,
        /// The offending dense index.
        id: u32,
        /// Number of labels.
        count: usize,
    },
    /// A group id that the batch does not contain.
    #[error("unknown group {0:?}")]
    UnknownGroup(String),
    /// An estimator option out of its domain.
    #[error("invalid parameter {name}: {reason}")]
    InvalidParameter {
        /// Parameter name.
        name: &'static str,
        /// Why it is rejected.
        reason: String,
    },
    /// An [`crate::Advantages`] column holds a value that no estimator produces
    /// (a hand-built or mismatched output).
    #[error("row {row}: column {column:?} of the advantages: {reason}")]
    BadAdvantages {
        /// Row index.
        row: usize,
        /// The column.
        column: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A task group with fewer rows than the estimator needs (GRPO pass@k needs two).
    #[error("group {group:?} has {rows} row(s); the estimator needs at least {needed}")]
    GroupTooSmall {
        /// Group id.
        group: String,
        /// Its rows.
        rows: usize,
        /// The minimum.
        needed: usize,
    },
    /// A batch with fewer response tokens than the estimator needs (REINFORCE++-baseline
    /// whitens over the tokens with an unbiased variance, which needs two).
    #[error("the batch has {found} response token(s); the estimator needs at least {needed}")]
    TooFewTokens {
        /// Response tokens in the batch.
        found: usize,
        /// The minimum.
        needed: usize,
    },
    /// Similarity grouping compares anchor texts, which key-only batches lack.
    #[error("similarity grouping needs anchor text, but the batch holds precomputed keys")]
    SimilarityNeedsText,
    /// A response longer than the padded width asked for.
    #[error("row {row}: response of {len} tokens does not fit a padded width of {max_len}")]
    ResponseTooLong {
        /// Row index.
        row: usize,
        /// Its response length.
        len: u32,
        /// The requested width.
        max_len: usize,
    },
    /// A padded layout whose `rows * max_len` entries cannot be addressed.
    #[error("a padded layout of {rows} rows x {max_len} tokens is too large to allocate")]
    LayoutTooLarge {
        /// Number of rows.
        rows: usize,
        /// The padded width.
        max_len: usize,
    },
    /// Malformed JSON or JSONL input.
    #[error("{source_name}:{line}: {message}")]
    Parse {
        /// File name (or `<input>`).
        source_name: String,
        /// 1-based line.
        line: usize,
        /// What the parser said.
        message: String,
    },
    /// A row of an input file was rejected: the row's 1-based line, the
    /// reason in the file's terms (other rows named by their lines), and the
    /// typed error about the row.
    ///
    /// ```
    /// let text = "{\"group\": \"g\", \"traj\": \"t\", \"step\": 0, \"obs\": \"s\", \"reward\": 0, \"is_action_valid\": true, \"response_len\": 1}";
    /// match g2po::io::parse_str(text, "rows.jsonl") {
    ///     Err(e @ g2po::Error::InFile { .. }) => {
    ///         assert_eq!(e.to_string(), "rows.jsonl:1: missing field \"episode_reward\"");
    ///         assert!(matches!(e.in_file(), g2po::Error::MissingField { row: 0, field: "episode_reward" }));
    ///     }
    ///     other => panic!("{other:?}"),
    /// }
    /// ```
    #[error("{source_name}:{line}: {message}")]
    InFile {
        /// File name (or the name given to the parser).
        source_name: String,
        /// 1-based line where the row starts.
        line: usize,
        /// What is wrong, in the file's terms.
        message: String,
        /// The typed error, with the row's 0-based index.
        error: Box<Error>,
    },
    /// A row gives both anchor text (`obs`) and a precomputed `key`.
    #[error("row {row}: both \"obs\" and \"key\" are given; a row's state is one or the other")]
    AmbiguousAnchor {
        /// Row index in input order.
        row: usize,
    },
    /// A computed value that JSON cannot hold (NaN or infinite); the writer
    /// refuses it rather than writing `null`.
    #[error("row {row}: computed {field} is not finite ({value}); nothing was written")]
    NonFiniteOutput {
        /// Row index.
        row: usize,
        /// Output field.
        field: &'static str,
        /// The value.
        value: f32,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// The 0-based row an error is about, if it is about one row.
    ///
    /// ```
    /// assert_eq!(g2po::Error::MissingField { row: 4, field: "obs" }.row(), Some(4));
    /// assert_eq!(g2po::Error::EmptyBatch.row(), None);
    /// ```
    pub fn row(&self) -> Option<usize> {
        // Exhaustive on purpose: a new variant must say whether it names a row.
        match self {
            Error::NonFinite { row, .. }
            | Error::RewardOutOfRange { row, .. }
            | Error::ReturnOutOfRange { row, .. }
            | Error::IdOutOfRange { row, .. }
            | Error::BadAdvantages { row, .. }
            | Error::Negative { row, .. }
            | Error::DuplicateStep { row, .. }
            | Error::StepOutOfOrder { row, .. }
            | Error::TrajectoryInTwoGroups { row, .. }
            | Error::EpisodeRewardMismatch { row, .. }
            | Error::MixedAnchors { row }
            | Error::MissingField { row, .. }
            | Error::ResponseTooLong { row, .. }
            | Error::AmbiguousAnchor { row }
            | Error::NonFiniteOutput { row, .. } => Some(*row),
            Error::InFile { error, .. } => error.row(),
            Error::EmptyBatch
            | Error::EmptyTrajectory { .. }
            | Error::LengthMismatch { .. }
            | Error::UnknownGroup(_)
            | Error::InvalidParameter { .. }
            | Error::GroupTooSmall { .. }
            | Error::TooFewTokens { .. }
            | Error::LayoutTooLarge { .. }
            | Error::SimilarityNeedsText
            | Error::Parse { .. }
            | Error::Io { .. } => None,
        }
    }

    /// The error inside an [`Error::InFile`] (the typed reason, with the
    /// row's index); any other error itself.
    ///
    /// ```
    /// let e = g2po::Error::EmptyBatch;
    /// assert!(matches!(e.in_file(), g2po::Error::EmptyBatch));
    /// ```
    pub fn in_file(&self) -> &Error {
        match self {
            Error::InFile { error, .. } => error,
            other => other,
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
