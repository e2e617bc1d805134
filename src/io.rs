//! Reading rollout rows from JSON/JSONL and writing advantages as JSONL.
//!
//! Two input forms are accepted, told apart by content rather than by file
//! extension: a conformance-vector file (one JSON object with a `steps`
//! array, and usually `estimator`, `params` and `expected`), and JSONL with
//! one row object per line in the same field names as the vectors' `steps`:
//! `group`, `traj` (strings or integers), `step`, `obs` (anchor text) or `key`
//! (a precomputed 64-bit state key), `reward`, `episode_reward`,
//! `is_action_valid`, `response_len`. Unknown fields are ignored, a `null`
//! counts as absent, and a UTF-8 byte order mark is skipped.
//!
//! The output is JSONL, one object per input row in input order, with
//! `advantage` and the component fields named as in the vectors' `expected`
//! rows, so any vector file can be checked from the command line alone.
//!
//! # Errors
//!
//! Every problem of a row read from a file is reported at the row's line:
//! malformed JSON and wrong field types as [`Error::Parse`], rejected rows
//! (a missing field, a step out of order, ...) as [`Error::InFile`], which
//! carries the batch builder's typed error inside. Both print as
//! `file:LINE: ...` with the file's 1-based line. [`Input::locate`] gives
//! errors found later (by an estimator, for a row) the same form.
//!
//! # Speed
//!
//! A JSONL file of 100,000 rows with 270-character observations is about
//! 45 MB, and JSON is nearly all the work of the command-line tool, so:
//! - A large file is mapped, not read (no copy, no fresh pages).
//! - Lines are cut into chunks of about 256 KB at newlines (`memchr`), so a
//!   chunk is read from cache after its one UTF-8 check. Windows of chunks
//!   are parsed in parallel (rayon) while the calling thread hands the
//!   window before to the validating batch builder, which interns group and
//!   trajectory ids in row order: parsed rows are consumed while still in
//!   cache and their memory is reused window after window.
//! - A row of the usual shape (a flat object, strings without escapes) is
//!   read by a scanner of its own (`row_scan`), into the same typed fields
//!   serde_json would give; anything else, and every error message, goes
//!   through serde_json, with strings borrowed from the file and no
//!   `serde_json::Value` tree.
//! - [`read_path_keyed`] hashes anchor texts into state keys in the parsing
//!   threads, so texts are never copied into the batch when only their keys
//!   are needed (the command line's exact-key estimators).
//! - Output rows are formatted in parallel chunks and written in order, a
//!   window of chunks per `writev`. Floats are written as the shortest
//!   decimal that reads back as the same `f32` (`zmij`), integers with
//!   `itoa`; both crates already come with serde_json, so the engine's
//!   dependency set does not grow.

use std::borrow::Cow;
use std::fmt;
use std::io::Write;
use std::path::Path;

use rayon::prelude::*;
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::error::{Error, Result};
use crate::estimators::{Advantages, EstimatorConfig, EstimatorKind, Grouping, Normalization, StatsOver};
use crate::keys::StateKeyer;
use crate::rollout::{Anchor, BatchBuilder, RolloutBatch, SameIds, StepRow};

mod row_scan;

/// The tolerance of [`compare`] and of the command line's `--check`.
pub const CHECK_TOLERANCE: f64 = 1e-4;

const BYTE_ORDER_MARK: &[u8] = b"\xEF\xBB\xBF";

const ROW_SHAPE: &str = "a row object such as {\"group\": \"g\", \"traj\": \"t0\", \"step\": 0, \"obs\": \"...\", \
                         \"reward\": 0.0, \"episode_reward\": 10.0, \"is_action_valid\": true, \"response_len\": 12}";

const EXPECTED_FORMS: &str = "expected JSONL (one row object per line) or a conformance-vector file \
                              (one JSON object with a \"steps\" array)";

// ---------------------------------------------------------------- public types

/// The header of a conformance-vector file.
///
/// ```
/// let text = r#"{"estimator": "grpo", "params": {"mode": "mean_norm"}, "steps": [
///   {"group": "g", "traj": "t", "step": 0, "obs": "s", "reward": 1.0, "episode_reward": 1.0,
///    "is_action_valid": true, "response_len": 2}], "expected": [{"advantage": 1.0}]}"#;
/// let input = g2po::io::parse_str(text, "inline")?;
/// let header = input.header.unwrap();
/// assert_eq!(header.config.norm, g2po::Normalization::Mean);
/// assert_eq!(header.expected.len(), 1);
/// # Ok::<(), g2po::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct VectorHeader {
    /// The estimator configuration the file states (defaults where silent).
    pub config: EstimatorConfig,
    /// The expected rows, as JSON objects.
    pub expected: Vec<Value>,
    /// The file's `case` label, if any.
    pub case: Option<String>,
}

/// What an input file held, and where each row came from.
///
/// ```
/// let input = g2po::io::parse_str(
///     "\n{\"group\": 1, \"traj\": 7, \"step\": 0, \"key\": 99, \"reward\": 0, \"episode_reward\": 0, \"is_action_valid\": false, \"response_len\": 3}",
///     "inline",
/// )?;
/// assert!(input.header.is_none());
/// assert_eq!(input.batch.len(), 1);
/// assert_eq!(input.line(0), Some(2));
/// # Ok::<(), g2po::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Input {
    /// The validated rows.
    pub batch: RolloutBatch,
    /// Present when the input was a conformance-vector file.
    pub header: Option<VectorHeader>,
    source_name: String,
    lines: Vec<usize>,
}

impl Input {
    /// The name the input was read under (its path, or the name given to
    /// [`parse_str`]).
    ///
    /// ```
    /// # let input = g2po::io::parse_str(r#"{"group": 1, "traj": 7, "step": 0, "key": 9, "reward": 0, "episode_reward": 0, "is_action_valid": true, "response_len": 1}"#, "rows.jsonl")?;
    /// assert_eq!(input.source_name(), "rows.jsonl");
    /// # Ok::<(), g2po::Error>(())
    /// ```
    pub fn source_name(&self) -> &str {
        &self.source_name
    }

    /// The 1-based line of the file where row `row` starts (`None` past the
    /// last row).
    ///
    /// ```
    /// # let input = g2po::io::parse_str(r#"{"group": 1, "traj": 7, "step": 0, "key": 9, "reward": 0, "episode_reward": 0, "is_action_valid": true, "response_len": 1}"#, "rows.jsonl")?;
    /// assert_eq!((input.line(0), input.line(1)), (Some(1), None));
    /// # Ok::<(), g2po::Error>(())
    /// ```
    pub fn line(&self, row: usize) -> Option<usize> {
        self.lines.get(row).copied()
    }

    /// Gives an error about a row of this input the `file:LINE: ...` form
    /// ([`Error::InFile`]); other errors are returned unchanged.
    ///
    /// ```
    /// # let input = g2po::io::parse_str(r#"{"group": 1, "traj": 7, "step": 0, "key": 9, "reward": 0, "episode_reward": 0, "is_action_valid": true, "response_len": 1}"#, "rows.jsonl")?;
    /// let err = input.locate(g2po::Error::MissingField { row: 0, field: "reward" });
    /// assert_eq!(err.to_string(), "rows.jsonl:1: missing field \"reward\"");
    /// assert!(matches!(input.locate(g2po::Error::EmptyBatch), g2po::Error::EmptyBatch));
    /// # Ok::<(), g2po::Error>(())
    /// ```
    pub fn locate(&self, err: Error) -> Error {
        locate(err, &self.source_name, &self.lines, "")
    }
}

// ---------------------------------------------------------------- reading

/// Reads a JSON vector file or a JSONL file of rows.
///
/// A regular file of 1 MiB or more is memory-mapped rather than read (no
/// copy); as with any mapping, another process truncating the file while it
/// is parsed ends this one with `SIGBUS`. Smaller files, pipes and devices
/// are read.
///
/// ```
/// let err = g2po::io::read_path("/nonexistent/rows.jsonl").unwrap_err();
/// assert!(matches!(err, g2po::Error::Io { .. }));
/// ```
pub fn read_path(path: impl AsRef<Path>) -> Result<Input> {
    let path = path.as_ref();
    let bytes = FileBytes::read(path)?;
    parse_bytes(&bytes, &path.display().to_string())
}

/// Reads a file like [`read_path`], but hashes JSONL rows' anchor texts into
/// `keyer`'s state keys while parsing, in the parsing threads, so the batch
/// holds keys and no text (a vector file keeps its texts).
///
/// An estimate from this batch equals one from [`read_path`]'s batch by an
/// estimator with the same keyer, except under similarity grouping, which
/// compares texts ([`Error::SimilarityNeedsText`]). It saves copying every
/// text into the batch and hashing it afterwards on the estimator's side:
/// the command line reads this way when its estimator groups by exact keys.
/// Rows still may not mix `obs` and `key` anchors.
///
/// ```
/// # fn main() -> g2po::Result<()> {
/// # use g2po::AdvantageEstimator;
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("rows.jsonl");
/// let row = |traj: &str, step: u32, obs: &str, reward: f64, ep: f64| {
///     format!(r#"{{"group": "g", "traj": "{traj}", "step": {step}, "obs": "{obs}", "reward": {reward}, "episode_reward": {ep}, "is_action_valid": true, "response_len": 4}}"#)
/// };
/// let rows = [row("a", 0, "hall", 0.0, 1.0), row("a", 1, "door", 1.0, 1.0), row("b", 0, "hall", 0.0, 0.0)];
/// std::fs::write(&path, rows.join("\n")).unwrap();
/// let estimator = g2po::Estimator::new(g2po::EstimatorConfig::new(g2po::EstimatorKind::G2po))?;
/// let keyed = g2po::io::read_path_keyed(&path, estimator.keyer())?;
/// let texts = g2po::io::read_path(&path)?;
/// assert!(!keyed.batch.has_text() && texts.batch.has_text());
/// assert_eq!(estimator.estimate(&keyed.batch)?, estimator.estimate(&texts.batch)?);
/// # Ok(())
/// # }
/// ```
pub fn read_path_keyed(path: impl AsRef<Path>, keyer: &StateKeyer) -> Result<Input> {
    let path = path.as_ref();
    let bytes = FileBytes::read(path)?;
    parse_bytes_with(&bytes, &path.display().to_string(), Some(keyer))
}

/// A file's bytes: mapped when it is a large regular file (no copy, no
/// zeroed pages to fault in: reading 45 MB through `read` cost about a fifth
/// of the command line's time), read into memory otherwise.
///
/// The usual caveat of mapping applies: a file truncated by another process
/// while it is parsed ends the process with `SIGBUS`. ripgrep makes the same
/// trade for the same reason.
enum FileBytes {
    Mapped(memmap2::Mmap),
    Read(Vec<u8>),
}

impl FileBytes {
    /// Files smaller than this are read: mapping costs more than it saves.
    const MAP_FROM: u64 = 1 << 20;

    fn read(path: &Path) -> Result<Self> {
        let io_err = |source| Error::Io { path: path.display().to_string(), source };
        let file = std::fs::File::open(path).map_err(io_err)?;
        let meta = file.metadata().map_err(io_err)?;
        if meta.is_file() && meta.len() >= Self::MAP_FROM {
            // SAFETY: the map is only read, and only while `self` lives; the
            // caveat above (another process truncating the file) is
            // documented.
            if let Ok(map) = unsafe { memmap2::MmapOptions::new().populate().map(&file) } {
                return Ok(FileBytes::Mapped(map));
            }
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        std::io::Read::read_to_end(&mut &file, &mut bytes).map_err(io_err)?;
        Ok(FileBytes::Read(bytes))
    }
}

impl std::ops::Deref for FileBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            FileBytes::Mapped(map) => map,
            FileBytes::Read(bytes) => bytes,
        }
    }
}

/// Parses a JSON vector document or JSONL rows (see the module docs).
///
/// ```
/// let err = g2po::io::parse_str("{\"group\": ", "bad.jsonl").unwrap_err();
/// assert!(err.to_string().starts_with("bad.jsonl:1:"));
/// ```
pub fn parse_str(text: &str, source_name: &str) -> Result<Input> {
    parse_bytes(text.as_bytes(), source_name)
}

/// Parses the bytes of a JSON vector document or of JSONL rows. Text must be
/// UTF-8; invalid bytes inside a string are a parse error at their line.
///
/// ```
/// let rows = b"{\"group\": \"g\", \"traj\": \"t\", \"step\": 0, \"obs\": \"hall\", \"reward\": 0, \
///              \"episode_reward\": 0, \"is_action_valid\": true, \"response_len\": 1}\n";
/// assert_eq!(g2po::io::parse_bytes(rows, "rows.jsonl")?.batch.len(), 1);
/// # Ok::<(), g2po::Error>(())
/// ```
pub fn parse_bytes(bytes: &[u8], source_name: &str) -> Result<Input> {
    parse_bytes_with(bytes, source_name, None)
}

/// [`parse_bytes`], hashing JSONL anchor texts with `keyer` when one is given
/// (see [`read_path_keyed`]).
fn parse_bytes_with(bytes: &[u8], source_name: &str, keyer: Option<&StateKeyer>) -> Result<Input> {
    let bytes = bytes.strip_prefix(BYTE_ORDER_MARK).unwrap_or(bytes);
    let Some(start) = bytes.iter().position(|b| !b.is_ascii_whitespace()) else {
        return Err(Error::EmptyBatch);
    };
    let parse_err = |line: usize, message: String| Error::Parse { source_name: source_name.to_owned(), line, message };
    match bytes[start] {
        b'[' => Err(parse_err(line_at(bytes, start), format!("the file holds a JSON array; {EXPECTED_FORMS}"))),
        b'{' => {
            let first_end = memchr::memchr(b'\n', &bytes[start..]).map_or(bytes.len(), |i| start + i);
            let more_after_first_line = bytes[first_end..].iter().any(|b| !b.is_ascii_whitespace());
            match serde_json::from_slice::<Probe>(&bytes[start..first_end]) {
                Ok(probe) if probe.is_vector() => parse_vector(bytes, source_name),
                // One object spread over several lines can only be a vector file.
                Err(e) if e.is_eof() && more_after_first_line => parse_vector(bytes, source_name),
                _ => parse_jsonl(bytes, source_name, keyer),
            }
        }
        _ => parse_jsonl(bytes, source_name, keyer),
    }
}

/// Just enough of a first line to tell a one-line vector file from a row.
#[derive(Deserialize)]
struct Probe {
    steps: Option<IgnoredAny>,
    group: Option<IgnoredAny>,
    traj: Option<IgnoredAny>,
}

impl Probe {
    /// A row may carry an extra field named `steps`; a vector file has no
    /// `group` or `traj` at its top level.
    fn is_vector(&self) -> bool {
        self.steps.is_some() && self.group.is_none() && self.traj.is_none()
    }
}

/// The 1-based line of byte `offset`.
fn line_at(bytes: &[u8], offset: usize) -> usize {
    1 + memchr::memchr_iter(b'\n', &bytes[..offset]).count()
}

/// One row as parsed, before the batch builder checks it against the others.
struct ParsedRow<'a> {
    group: Cow<'a, str>,
    traj: Cow<'a, str>,
    step: u32,
    anchor: ParsedAnchor<'a>,
    reward: f64,
    episode_reward: f64,
    valid: bool,
    response_len: u32,
    /// Whether the ids equal the previous row's in the same chunk.
    same: SameIds,
}

enum ParsedAnchor<'a> {
    Text(Cow<'a, str>),
    Key(u64),
    /// A text already hashed by the reader's keyer.
    HashedText(u64),
}

impl ParsedRow<'_> {
    fn step_row(&self) -> StepRow<'_> {
        StepRow {
            group: &self.group,
            traj: &self.traj,
            step: self.step,
            anchor: match &self.anchor {
                ParsedAnchor::Text(text) => Anchor::Text(text),
                ParsedAnchor::Key(key) | ParsedAnchor::HashedText(key) => Anchor::Key(*key),
            },
            reward: self.reward,
            episode_reward: self.episode_reward,
            valid: self.valid,
            response_len: self.response_len,
        }
    }
}

/// Why one row could not be parsed; turned into an [`Error`] once the row's
/// index and line in the whole file are known.
#[derive(Debug)]
enum Fault {
    /// Not JSON, not an object, or a field of the wrong type (the message is
    /// complete).
    Syntax(String),
    Missing(&'static str),
    Negative(&'static str, i64),
    TooLarge(&'static str, u64),
    BothAnchors,
}

impl Fault {
    fn into_error(self, source_name: &str, line: usize, row: usize, prefix: &str) -> Error {
        let in_file = |message: String, error: Error| Error::InFile {
            source_name: source_name.to_owned(),
            line,
            message: format!("{prefix}{message}"),
            error: Box::new(error),
        };
        match self {
            Fault::Syntax(message) => {
                Error::Parse { source_name: source_name.to_owned(), line, message: format!("{prefix}{message}") }
            }
            Fault::Missing(field) => in_file(format!("missing field {field:?}"), Error::MissingField { row, field }),
            Fault::Negative(field, value) => in_file(
                format!("field {field:?} must be non-negative, got {value}"),
                Error::Negative { row, field, value },
            ),
            Fault::TooLarge(field, value) => in_file(
                format!("field {field:?} = {value} is too large (at most {})", u32::MAX),
                Error::InvalidParameter { name: field, reason: format!("row {row}: {value} is too large") },
            ),
            Fault::BothAnchors => in_file(
                "both \"obs\" and \"key\" are given; a row's state is one or the other".to_owned(),
                Error::AmbiguousAnchor { row },
            ),
        }
    }
}

/// One JSON value of a row field as written (strings borrowed where they
/// have no escapes).
enum Scalar<'a> {
    Str(Cow<'a, str>),
    Int(i64),
    Uint(u64),
    Float(f64),
    Bool(bool),
    Null,
    Array,
    Object,
}

impl fmt::Display for Scalar<'_> {
    /// How the value reads in a message.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::Str(s) if s.chars().count() > 40 => {
                let head: String = s.chars().take(40).collect();
                write!(f, "the string {head:?}...")
            }
            Scalar::Str(s) => write!(f, "the string {s:?}"),
            Scalar::Int(v) => write!(f, "the number {v}"),
            Scalar::Uint(v) => write!(f, "the number {v}"),
            Scalar::Float(v) => write!(f, "the number {v}"),
            Scalar::Bool(v) => write!(f, "{v}"),
            Scalar::Null => f.write_str("null"),
            Scalar::Array => f.write_str("an array"),
            Scalar::Object => f.write_str("an object"),
        }
    }
}

impl<'de> Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        deserializer.deserialize_any(ScalarVisitor)
    }
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> std::result::Result<Self::Value, E> {
        Ok(Scalar::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> std::result::Result<Self::Value, E> {
        Ok(Scalar::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> std::result::Result<Self::Value, E> {
        Ok(Scalar::Uint(v))
    }
    fn visit_f64<E>(self, v: f64) -> std::result::Result<Self::Value, E> {
        Ok(Scalar::Float(v))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> std::result::Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> std::result::Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> std::result::Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v)))
    }
    fn visit_unit<E>(self) -> std::result::Result<Self::Value, E> {
        Ok(Scalar::Null)
    }
    fn visit_none<E>(self) -> std::result::Result<Self::Value, E> {
        Ok(Scalar::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Self::Value, D::Error> {
        Scalar::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Scalar::Array)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Scalar::Object)
    }
}

/// The known fields of a row object.
#[derive(Clone, Copy)]
enum Field {
    Group,
    Traj,
    Step,
    Obs,
    Key,
    Reward,
    EpisodeReward,
    Valid,
    ResponseLen,
    Other,
}

const FIELD_NAMES: [&str; 9] =
    ["group", "traj", "step", "obs", "key", "reward", "episode_reward", "is_action_valid", "response_len"];

impl Field {
    /// The field a key names (`Other` for keys a row may carry but the
    /// reader ignores).
    fn named(name: &str) -> Field {
        match name {
            "group" => Field::Group,
            "traj" => Field::Traj,
            "step" => Field::Step,
            "obs" => Field::Obs,
            "key" => Field::Key,
            "reward" => Field::Reward,
            "episode_reward" => Field::EpisodeReward,
            "is_action_valid" => Field::Valid,
            "response_len" => Field::ResponseLen,
            _ => Field::Other,
        }
    }
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct FieldVisitor;
        impl Visitor<'_> for FieldVisitor {
            type Value = Field;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E>(self, v: &str) -> std::result::Result<Field, E> {
                Ok(Field::named(v))
            }
        }
        deserializer.deserialize_identifier(FieldVisitor)
    }
}

/// The fields of one row object, each as written (`None` when absent or
/// `null`).
#[derive(Default)]
struct RawRow<'a> {
    fields: [Option<Scalar<'a>>; 9],
}

impl<'de> Deserialize<'de> for RawRow<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        struct RowVisitor;
        impl<'de> Visitor<'de> for RowVisitor {
            type Value = RawRow<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(ROW_SHAPE)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<RawRow<'de>, A::Error> {
                let mut row = RawRow::default();
                let mut seen = 0u16;
                while let Some(field) = map.next_key::<Field>()? {
                    if let Field::Other = field {
                        map.next_value::<IgnoredAny>()?;
                        continue;
                    }
                    let index = field as usize;
                    if seen & (1 << index) != 0 {
                        return Err(de::Error::custom(format!("field {:?} appears twice", FIELD_NAMES[index])));
                    }
                    seen |= 1 << index;
                    row.fields[index] = match map.next_value::<Scalar<'de>>()? {
                        Scalar::Null => None,
                        value => Some(value),
                    };
                }
                Ok(row)
            }
        }
        // `deserialize_map`, not `deserialize_struct`: serde_json would also
        // take a JSON array as a struct, field by position.
        deserializer.deserialize_map(RowVisitor)
    }
}

impl<'a> RawRow<'a> {
    fn take(&mut self, field: Field) -> Option<Scalar<'a>> {
        self.fields[field as usize].take()
    }

    fn required(&mut self, field: Field) -> std::result::Result<Scalar<'a>, Fault> {
        self.take(field).ok_or(Fault::Missing(FIELD_NAMES[field as usize]))
    }

    fn id(&mut self, field: Field) -> std::result::Result<Cow<'a, str>, Fault> {
        match self.required(field)? {
            Scalar::Str(s) => Ok(s),
            Scalar::Int(v) => Ok(Cow::Owned(v.to_string())),
            Scalar::Uint(v) => Ok(Cow::Owned(v.to_string())),
            other => Err(wrong_type(field, "a string or an integer", &other)),
        }
    }

    fn count(&mut self, field: Field) -> std::result::Result<u32, Fault> {
        let name = FIELD_NAMES[field as usize];
        match self.required(field)? {
            Scalar::Uint(v) => u32::try_from(v).map_err(|_| Fault::TooLarge(name, v)),
            Scalar::Int(v) => Err(Fault::Negative(name, v)),
            other => Err(wrong_type(field, "a non-negative integer", &other)),
        }
    }

    fn number(&mut self, field: Field) -> std::result::Result<f64, Fault> {
        match self.required(field)? {
            Scalar::Float(v) => Ok(v),
            Scalar::Int(v) => Ok(v as f64),
            Scalar::Uint(v) => Ok(v as f64),
            other => Err(wrong_type(field, "a number", &other)),
        }
    }

    fn into_parsed(mut self) -> std::result::Result<ParsedRow<'a>, Fault> {
        let group = self.id(Field::Group)?;
        let traj = self.id(Field::Traj)?;
        let step = self.count(Field::Step)?;
        let anchor = match (self.take(Field::Obs), self.take(Field::Key)) {
            (Some(_), Some(_)) => return Err(Fault::BothAnchors),
            (Some(Scalar::Str(text)), None) => ParsedAnchor::Text(text),
            (Some(other), None) => return Err(wrong_type(Field::Obs, "a string", &other)),
            (None, Some(Scalar::Uint(key))) => ParsedAnchor::Key(key),
            (None, Some(other)) => return Err(wrong_type(Field::Key, "an integer in 0..2^64", &other)),
            (None, None) => return Err(Fault::Missing("obs")),
        };
        let reward = self.number(Field::Reward)?;
        let episode_reward = self.number(Field::EpisodeReward)?;
        let valid = match self.required(Field::Valid)? {
            Scalar::Bool(v) => v,
            other => return Err(wrong_type(Field::Valid, "true or false", &other)),
        };
        let response_len = self.count(Field::ResponseLen)?;
        Ok(ParsedRow {
            group,
            traj,
            step,
            anchor,
            reward,
            episode_reward,
            valid,
            response_len,
            same: SameIds::default(),
        })
    }
}

fn wrong_type(field: Field, want: &str, got: &Scalar<'_>) -> Fault {
    Fault::Syntax(format!("field {:?} must be {want}, got {got}", FIELD_NAMES[field as usize]))
}

/// A serde_json error in the user's terms, with its line and column
/// relative to the parsed text.
fn json_message(e: &serde_json::Error, eof: &str) -> String {
    if e.is_eof() {
        return eof.to_owned();
    }
    let text = e.to_string();
    let position = format!(" at line {} column {}", e.line(), e.column());
    let message = text.strip_suffix(&position).unwrap_or(&text);
    let message = message.replace("invalid type: map", "invalid type: an object");
    message.replace("invalid type: sequence", "invalid type: an array")
}

/// Parses one line (or one `steps` element) into a row.
fn parse_row<'a>(text: &'a [u8], eof: &str) -> std::result::Result<ParsedRow<'a>, (Fault, usize, usize)> {
    let raw: RawRow<'_> =
        serde_json::from_slice(text).map_err(|e| (Fault::Syntax(json_message(&e, eof)), e.line(), e.column()))?;
    raw.into_parsed().map_err(|fault| (fault, 0, 0))
}

/// [`parse_row`] for text already known to be UTF-8: the fast scanner for
/// the usual flat row ([`row_scan`]), serde_json for everything else (and
/// for every error message), which then does not check each string again.
fn parse_row_str<'a>(text: &'a str, eof: &str) -> std::result::Result<ParsedRow<'a>, (Fault, usize, usize)> {
    let raw = match row_scan::scan_row(text) {
        Some(raw) => raw,
        None => serde_json::from_str(text).map_err(|e| (Fault::Syntax(json_message(&e, eof)), e.line(), e.column()))?,
    };
    raw.into_parsed().map_err(|fault| (fault, 0, 0))
}

/// The rows of one chunk of whole lines.
#[derive(Default)]
struct Chunk<'a> {
    rows: Vec<ParsedRow<'a>>,
    /// 0-based line of each row within the chunk.
    lines: Vec<usize>,
    /// Newlines in the chunk (up to the fault, if there is one: only a
    /// chunk without one is counted past).
    newlines: usize,
    /// Bytes of anchor text in its rows.
    text_bytes: usize,
    /// The first bad row: (row, line within the chunk, why).
    fault: Option<(usize, usize, Fault)>,
}

const LINE_EOF: &str = "the line ends inside the row object (each row is one complete JSON object on one line)";

fn parse_chunk<'a>(text: &'a [u8], keyer: Option<&StateKeyer>) -> Chunk<'a> {
    // A guess at the row count (rows of 256 bytes): counting the newlines
    // first would read the chunk once more, and a short guess only costs a
    // regrowth.
    let mut chunk = Chunk {
        rows: Vec::with_capacity(text.len() / 256 + 1),
        lines: Vec::with_capacity(text.len() / 256 + 1),
        ..Chunk::default()
    };
    // One UTF-8 check for the whole chunk (fast for ASCII, and the chunk is
    // small enough to be read again from cache) instead of one per string;
    // a chunk that fails is parsed from bytes, so the error names the line
    // and column of the bad string.
    let valid = std::str::from_utf8(text).ok();
    let mut start = 0;
    let mut line = 0;
    let ends = memchr::memchr_iter(b'\n', text).chain((text.last() != Some(&b'\n')).then_some(text.len()));
    for end in ends {
        let range = start..end;
        start = end + 1;
        line += 1;
        if text[range.clone()].iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let parsed = match valid {
            Some(valid) => parse_row_str(&valid[range], LINE_EOF),
            None => parse_row(&text[range], LINE_EOF),
        };
        match parsed {
            Ok(mut row) => {
                if let Some(previous) = chunk.rows.last() {
                    row.same = SameIds { group: previous.group == row.group, traj: previous.traj == row.traj };
                }
                if let ParsedAnchor::Text(text) = &row.anchor {
                    match keyer {
                        Some(keyer) => row.anchor = ParsedAnchor::HashedText(keyer.key(text)),
                        None => chunk.text_bytes += text.len(),
                    }
                }
                chunk.rows.push(row);
                chunk.lines.push(line - 1);
            }
            Err((fault, _, column)) => {
                let fault = match fault {
                    Fault::Syntax(message) if column > 0 => Fault::Syntax(format!("{message} (column {column})")),
                    other => other,
                };
                chunk.fault = Some((chunk.rows.len(), line - 1, fault));
                break;
            }
        }
    }
    chunk.newlines = line - usize::from(text.last() != Some(&b'\n'));
    chunk
}

/// Chunk boundaries: each chunk ends after a newline and is about 256 KiB,
/// so that a chunk stays in a core's cache between its UTF-8 check and its
/// parse (this VM's L2 is 512 KB), and its rows' memory is reused by the
/// allocator from chunk to chunk.
fn chunk_bounds(text: &[u8]) -> Vec<usize> {
    const TARGET: usize = 1 << 18;
    let mut bounds = vec![0];
    let mut pos = 0;
    while pos < text.len() {
        let next = pos + TARGET;
        pos = match text.get(next..).and_then(|rest| memchr::memchr(b'\n', rest)) {
            Some(i) => next + i + 1,
            None => text.len(),
        };
        bounds.push(pos);
    }
    bounds
}

/// Parses windows of chunks on the pool while this thread hands the window
/// before to the (serial) batch builder: the parsed rows are consumed while
/// they are still in cache, and their memory is reused by the next windows
/// instead of growing by 110 bytes a row (fresh pages cost about 4 µs each
/// on the 2-core VM: `docs/benchmarks.md`).
fn parse_jsonl(bytes: &[u8], source_name: &str, keyer: Option<&StateKeyer>) -> Result<Input> {
    let bounds = chunk_bounds(bytes);
    let ranges: Vec<std::ops::Range<usize>> = bounds.windows(2).map(|w| w[0]..w[1]).collect();
    let parse = |group: &[std::ops::Range<usize>]| -> Vec<Chunk<'_>> {
        group.par_iter().map(|range| parse_chunk(&bytes[range.clone()], keyer)).collect()
    };
    let mut groups = ranges.chunks(4 * rayon::current_num_threads());
    let mut ready = groups.next().map_or_else(Vec::new, parse);

    // The builder reserves for the whole file from the first window's rows
    // per byte; a short guess only costs a regrowth.
    let first_bytes: usize = ranges.iter().take(ready.len()).map(|r| r.len()).sum();
    let scale = |n: usize| (n as f64 * bytes.len() as f64 / first_bytes.max(1) as f64 * 1.05) as usize;
    let rows_seen: usize = ready.iter().map(|c| c.rows.len()).sum();
    let text_seen: usize = ready.iter().map(|c| c.text_bytes).sum();
    let mut reader = RowSink {
        builder: BatchBuilder::with_capacity(scale(rows_seen), scale(text_seen)),
        lines: Vec::with_capacity(scale(rows_seen)),
        line_base: 0,
        first_hashed: None,
        check_mixed: keyer.is_some(),
        source_name,
    };
    loop {
        let group = groups.next();
        let mut next = Vec::new();
        let mut taken = Ok(());
        rayon::in_place_scope(|scope| {
            if let Some(group) = group {
                scope.spawn(|_| next = parse(group));
            }
            taken = ready.drain(..).try_for_each(|chunk| reader.take(chunk));
        });
        taken?;
        if group.is_none() {
            break;
        }
        ready = next;
    }
    let RowSink { builder, lines, .. } = reader;
    Ok(Input { batch: builder.build()?, header: None, source_name: source_name.to_owned(), lines })
}

/// The serial end of [`parse_jsonl`]: parsed chunks, in file order, into
/// the batch builder.
struct RowSink<'s> {
    builder: BatchBuilder,
    lines: Vec<usize>,
    /// Lines before the next chunk.
    line_base: usize,
    /// Whether the first row's anchor was a hashed text.
    first_hashed: Option<bool>,
    /// Hashed texts reach the builder as keys, so mixing `obs` and `key`
    /// rows is caught here, as the builder would.
    check_mixed: bool,
    source_name: &'s str,
}

impl RowSink<'_> {
    /// Pushes a chunk's rows; the first problem in file order (a row the
    /// builder rejects, or the chunk's unparsable row) is the error.
    fn take(&mut self, chunk: Chunk<'_>) -> Result<()> {
        let hashed = |row: &ParsedRow<'_>| matches!(row.anchor, ParsedAnchor::HashedText(_));
        for (row, line) in chunk.rows.iter().zip(&chunk.lines) {
            self.lines.push(self.line_base + line + 1);
            let first_hashed = *self.first_hashed.get_or_insert(hashed(row));
            if self.check_mixed && hashed(row) != first_hashed {
                let err = Error::MixedAnchors { row: self.lines.len() - 1 };
                return Err(locate(err, self.source_name, &self.lines, ""));
            }
            push_row(&mut self.builder, row, self.source_name, &self.lines, "")?;
        }
        if let Some((_, line, fault)) = chunk.fault {
            return Err(fault.into_error(self.source_name, self.line_base + line + 1, self.lines.len(), ""));
        }
        self.line_base += chunk.newlines;
        Ok(())
    }
}

fn push_row(
    builder: &mut BatchBuilder,
    row: &ParsedRow<'_>,
    source_name: &str,
    lines: &[usize],
    prefix: &str,
) -> Result<()> {
    builder.push_step_with(row.step_row(), row.same).map_err(|e| locate(e, source_name, lines, prefix))
}

/// Restates a row error at the row's line, naming other rows by their lines
/// too.
fn locate(err: Error, source_name: &str, lines: &[usize], prefix: &str) -> Error {
    let Some(row) = err.row() else {
        return err;
    };
    let Some(&line) = lines.get(row) else {
        return err;
    };
    let line_of = |r: usize| lines.get(r).map_or_else(|| format!("row {r}"), |l| format!("line {l}"));
    let message = match &err {
        Error::DuplicateStep { traj, step, first_row, .. } => {
            format!("trajectory {traj:?} step {step} already appeared on {}", line_of(*first_row))
        }
        Error::MixedAnchors { .. } => format!(
            "anchors must be all \"obs\" texts or all \"key\"s; this row differs from the first row ({})",
            line_of(0)
        ),
        other => {
            let text = other.to_string();
            text.strip_prefix(&format!("row {row}: ")).map(str::to_owned).unwrap_or(text)
        }
    };
    Error::InFile {
        source_name: source_name.to_owned(),
        line,
        message: format!("{prefix}{message}"),
        error: Box::new(err),
    }
}

/// The top level of a vector file; `steps` is kept as text so each row can
/// be located in the file.
#[derive(Deserialize)]
struct VectorDoc<'a> {
    estimator: Option<Value>,
    params: Option<Value>,
    #[serde(borrow)]
    steps: Option<&'a RawValue>,
    expected: Option<Value>,
    case: Option<Value>,
}

const DOC_EOF: &str = "the file ends inside the JSON document";

fn parse_vector(bytes: &[u8], source_name: &str) -> Result<Input> {
    let parse_err = |line: usize, message: String| Error::Parse { source_name: source_name.to_owned(), line, message };
    let doc: VectorDoc<'_> = serde_json::from_slice(bytes).map_err(|e| {
        let line = if e.is_eof() { line_at(bytes, bytes.len()) } else { e.line() };
        let column = if e.is_eof() { String::new() } else { format!(" (column {})", e.column()) };
        parse_err(line, format!("{}{column}", json_message(&e, DOC_EOF)))
    })?;
    let wrong = |field: &str, want: &str| parse_err(1, format!("field {field:?} must be {want}"));
    let kind = match &doc.estimator {
        None => EstimatorKind::G2po,
        Some(Value::String(name)) => name.parse::<EstimatorKind>()?,
        Some(_) => return Err(wrong("estimator", "a string")),
    };
    let mut config = EstimatorConfig::new(kind);
    match &doc.params {
        None => {}
        Some(Value::Object(params)) => {
            let num = |name: &str| -> Result<Option<f64>> {
                match params.get(name) {
                    None => Ok(None),
                    Some(v) => v.as_f64().map(Some).ok_or_else(|| wrong(name, "a number")),
                }
            };
            let text = |name: &str| -> Result<Option<&str>> {
                match params.get(name) {
                    None => Ok(None),
                    Some(v) => v.as_str().map(Some).ok_or_else(|| wrong(name, "a string")),
                }
            };
            config.gamma = num("gamma")?.unwrap_or(config.gamma);
            config.epsilon = num("epsilon")?.unwrap_or(config.epsilon);
            config.step_weight = num("step_advantage_w")?.unwrap_or(config.step_weight);
            config.invalid_penalty = num("invalid_action_penalty")?.unwrap_or(config.invalid_penalty);
            if let Some(mode) = text("mode")? {
                config.norm = mode.parse::<Normalization>()?;
            }
            if let Some(over) = text("stats_over")? {
                config.stats_over = over.parse::<StatsOver>()?;
            }
            let threshold = num("similarity_thresh")?;
            match params.get("enable_similarity") {
                None | Some(Value::Bool(false)) => {}
                Some(Value::Bool(true)) => {
                    config.grouping = Grouping::Similarity { threshold: threshold.unwrap_or(0.95) };
                }
                Some(_) => return Err(wrong("enable_similarity", "true or false")),
            }
        }
        Some(_) => return Err(wrong("params", "an object")),
    }
    let steps_raw = doc.steps.ok_or_else(|| parse_err(1, format!("no \"steps\" array; {EXPECTED_FORMS}")))?;
    let steps_line = line_at(bytes, offset_in(bytes, steps_raw.get()));
    let steps: Vec<&RawValue> = serde_json::from_str(steps_raw.get())
        .map_err(|_| parse_err(steps_line, "\"steps\" must be an array of row objects".into()))?;

    let mut builder = RolloutBatch::builder();
    let mut lines = Vec::with_capacity(steps.len());
    let (mut counted_to, mut line) = (0, 1);
    for (index, step) in steps.iter().enumerate() {
        let offset = offset_in(bytes, step.get());
        line += memchr::memchr_iter(b'\n', &bytes[counted_to..offset]).count();
        counted_to = offset;
        let prefix = format!("steps[{index}]: ");
        let row = match parse_row(step.get().as_bytes(), "the row object is not closed") {
            Ok(row) => row,
            Err((fault, at_line, column)) => {
                // serde_json counts from the element's first byte.
                let column = match at_line {
                    0 => String::new(),
                    1 => format!(" (column {})", offset - line_start(bytes, offset) + column),
                    _ => format!(" (column {column})"),
                };
                let fault = match fault {
                    Fault::Syntax(message) => Fault::Syntax(format!("{message}{column}")),
                    other => other,
                };
                return Err(fault.into_error(source_name, line + at_line.saturating_sub(1), index, &prefix));
            }
        };
        lines.push(line);
        push_row(&mut builder, &row, source_name, &lines, &prefix)?;
    }
    let expected = match doc.expected {
        Some(Value::Array(rows)) => rows,
        Some(_) => return Err(parse_err(1, "\"expected\" must be an array".into())),
        None => Vec::new(),
    };
    let case = doc.case.as_ref().and_then(Value::as_str).map(str::to_owned);
    Ok(Input {
        batch: builder.build()?,
        header: Some(VectorHeader { config, expected, case }),
        source_name: source_name.to_owned(),
        lines,
    })
}

/// Byte offset of `part`, a slice borrowed from `whole`.
fn offset_in(whole: &[u8], part: &str) -> usize {
    let offset = part.as_ptr() as usize - whole.as_ptr() as usize;
    debug_assert!(offset <= whole.len());
    offset
}

/// Byte offset of the start of the line holding `offset`.
fn line_start(bytes: &[u8], offset: usize) -> usize {
    memchr::memrchr(b'\n', &bytes[..offset]).map_or(0, |i| i + 1)
}

// ---------------------------------------------------------------- writing

/// The value a computed `f32` has once written and read back: the `f64`
/// nearest to its shortest round-trip decimal, which is what the JSONL
/// output holds.
fn as_written(value: f32) -> f64 {
    let mut buffer = zmij::Buffer::new();
    buffer.format(value).parse().unwrap_or(value as f64)
}

/// The output columns of one [`Advantages`], in the output's field order
/// (alphabetical, as serde_json writes objects).
struct OutputColumns<'a> {
    floats: Vec<(&'static str, &'a [f32])>,
    ints: Vec<(&'static str, &'a [i32])>,
    /// Field order: `(is_int, index)` into `floats` / `ints`.
    order: Vec<(bool, usize)>,
    /// The text before each field's value: `{"name":` for the first,
    /// `,"name":` after (one copy per field instead of three).
    keys: Vec<Vec<u8>>,
}

impl<'a> OutputColumns<'a> {
    fn of(adv: &'a Advantages) -> Self {
        // GiGPO's ids are step groups, G2PO's are nodes.
        let id_name = if adv.next_node.is_empty() { "step_group" } else { "node" };
        let floats = [
            ("advantage", &adv.advantage),
            ("episode_advantage", &adv.episode),
            ("step_advantage", &adv.step),
            ("node_centric", &adv.node_centric),
            ("edge_centric", &adv.edge_centric),
            ("step_return", &adv.step_return),
            ("node_value", &adv.node_value),
            ("next_value", &adv.next_value),
        ];
        let ints = [(id_name, &adv.node), ("next_node", &adv.next_node)];
        let floats: Vec<(&str, &[f32])> =
            floats.into_iter().filter(|(_, c)| !c.is_empty()).map(|(n, c)| (n, c.as_slice())).collect();
        let ints: Vec<(&str, &[i32])> =
            ints.into_iter().filter(|(_, c)| !c.is_empty()).map(|(n, c)| (n, c.as_slice())).collect();
        let mut order: Vec<(bool, usize)> =
            (0..floats.len()).map(|i| (false, i)).chain((0..ints.len()).map(|i| (true, i))).collect();
        let name = |&(is_int, i): &(bool, usize)| if is_int { ints[i].0 } else { floats[i].0 };
        order.sort_by_key(name);
        let keys = order
            .iter()
            .enumerate()
            .map(|(n, f)| format!("{}\"{}\":", if n == 0 { '{' } else { ',' }, name(f)).into_bytes())
            .collect();
        Self { floats, ints, order, keys }
    }

    fn name(&self, (is_int, i): (bool, usize)) -> &'static str {
        if is_int { self.ints[i].0 } else { self.floats[i].0 }
    }

    fn len(&self, (is_int, i): (bool, usize)) -> usize {
        if is_int { self.ints[i].1.len() } else { self.floats[i].1.len() }
    }

    /// Every column must cover every row, and every value must be finite
    /// (JSON has no infinity; serde_json would write `null`).
    fn check(&self, rows: usize) -> Result<()> {
        for &field in &self.order {
            if self.len(field) != rows {
                return Err(Error::LengthMismatch { field: self.name(field), expected: rows, found: self.len(field) });
            }
        }
        let first_bad = self
            .floats
            .par_iter()
            .filter_map(|(name, col)| col.iter().position(|v| !v.is_finite()).map(|row| (row, *name, col[row])))
            .min_by_key(|&(row, name, _)| (row, name));
        match first_bad {
            Some((row, field, value)) => Err(Error::NonFiniteOutput { row, field, value }),
            None => Ok(()),
        }
    }

    /// The most bytes one row can take: its keys, the longest number of
    /// each type, and `}\n`.
    fn max_row_len(&self) -> usize {
        const MAX_F32: usize = 24; // zmij's buffer
        const MAX_I32: usize = 11; // "-2147483648"
        let values: usize = self.order.iter().map(|&(is_int, _)| if is_int { MAX_I32 } else { MAX_F32 }).sum();
        self.keys.iter().map(Vec::len).sum::<usize>() + values + 2
    }

    /// Appends row `row` to `out`. The row is built in `line` (at least
    /// [`Self::max_row_len`] bytes) and appended with one copy: a field is a
    /// dozen bytes, and `extend_from_slice` of each would be a `memcpy`
    /// call each (a third of the formatting time).
    fn write_row(&self, row: usize, line: &mut [u8], out: &mut Vec<u8>) {
        let mut floats = zmij::Buffer::new();
        let mut ints = itoa::Buffer::new();
        let mut at = 0;
        for (key, &field) in self.keys.iter().zip(&self.order) {
            at += copy_short(&mut line[at..], key);
            let value = match field {
                (true, i) => ints.format(self.ints[i].1[row]).as_bytes(),
                (false, i) => floats.format_finite(self.floats[i].1[row]).as_bytes(),
            };
            at += copy_short(&mut line[at..], value);
        }
        at += copy_short(&mut line[at..], b"}\n");
        out.extend_from_slice(&line[..at]);
    }
}

/// Copies `src` to the start of `dst` and returns its length. Up to 32
/// bytes it uses two overlapping fixed-size moves, which compile to a few
/// register moves where a variable-length copy calls `memcpy`.
#[inline(always)]
fn copy_short(dst: &mut [u8], src: &[u8]) -> usize {
    let n = src.len();
    match n {
        16..=32 => {
            dst[..16].copy_from_slice(&src[..16]);
            dst[n - 16..n].copy_from_slice(&src[n - 16..]);
        }
        8..16 => {
            dst[..8].copy_from_slice(&src[..8]);
            dst[n - 8..n].copy_from_slice(&src[n - 8..]);
        }
        4..8 => {
            dst[..4].copy_from_slice(&src[..4]);
            dst[n - 4..n].copy_from_slice(&src[n - 4..]);
        }
        _ => dst[..n].copy_from_slice(src),
    }
    n
}

/// The JSON object of one output row, with the vectors' field names; numbers
/// are the values the JSONL output holds (see [`write_jsonl`]).
///
/// ```
/// # use g2po::AdvantageEstimator;
/// let batch = g2po::doc_batch();
/// let adv = g2po::Estimator::new(g2po::EstimatorConfig::new(g2po::EstimatorKind::Gigpo))?.estimate(&batch)?;
/// let row = g2po::io::row_json(&adv, 0);
/// assert!(row.get("step_group").is_some() && row.get("step_return").is_some());
/// # Ok::<(), g2po::Error>(())
/// ```
pub fn row_json(adv: &Advantages, row: usize) -> Value {
    let columns = OutputColumns::of(adv);
    let mut obj = serde_json::Map::new();
    for &field in &columns.order {
        let value = match field {
            (true, i) => columns.ints[i].1.get(row).map(|&v| Value::from(v)),
            (false, i) => columns.floats[i].1.get(row).map(|&v| Value::from(as_written(v))),
        };
        if let Some(value) = value {
            obj.insert(columns.name(field).to_owned(), value);
        }
    }
    Value::Object(obj)
}

/// Writes one JSON object per row (the fields of [`row_json`]), in row order.
///
/// Each float is the shortest decimal that reads back as the same `f32`. The
/// rows are checked first: a non-finite value ([`Error::NonFiniteOutput`])
/// or a column of the wrong length ([`Error::LengthMismatch`]) fails before
/// anything is written. A failure of the writer itself is an [`Error::Io`]
/// with the path `<output>`; it may leave a partial output behind, so write
/// files through a temporary file and a rename (as the command line does).
///
/// ```
/// # use g2po::AdvantageEstimator;
/// let batch = g2po::doc_batch();
/// let mut adv = g2po::Estimator::new(g2po::EstimatorConfig::new(g2po::EstimatorKind::G2po))?.estimate(&batch)?;
/// let mut out = Vec::new();
/// g2po::io::write_jsonl(&adv, &mut out)?;
/// assert_eq!(String::from_utf8(out).unwrap().lines().count(), batch.len());
/// adv.edge_centric[1] = f32::INFINITY;
/// let mut out = Vec::new();
/// let err = g2po::io::write_jsonl(&adv, &mut out).unwrap_err();
/// assert!(matches!(err, g2po::Error::NonFiniteOutput { row: 1, field: "edge_centric", .. }));
/// assert!(out.is_empty());
/// # Ok::<(), g2po::Error>(())
/// ```
pub fn write_jsonl(adv: &Advantages, mut writer: impl Write) -> Result<()> {
    // Chunks of about 100 KB: small enough to come from the allocator's
    // heap and be reused window after window (fresh pages cost about 4 µs
    // each on the 2-core VM), large enough that a window is one `writev`.
    const ROWS_PER_CHUNK: usize = 512;
    let columns = OutputColumns::of(adv);
    let rows = adv.len();
    columns.check(rows)?;
    let chunks: Vec<std::ops::Range<usize>> =
        (0..rows).step_by(ROWS_PER_CHUNK).map(|start| start..(start + ROWS_PER_CHUNK).min(rows)).collect();
    // A window of chunks is formatted in parallel on the pool while this
    // thread writes the window before it, so formatting and writing overlap;
    // memory stays at two windows whatever the batch size.
    let window = 4 * rayon::current_num_threads();
    let format = |buffers: &mut Vec<Vec<u8>>, group: &[std::ops::Range<usize>]| {
        buffers.resize_with(group.len(), Vec::new);
        buffers.par_iter_mut().zip(group).for_each(|(buffer, range)| {
            buffer.clear();
            let mut line = vec![0; columns.max_row_len()];
            for row in range.clone() {
                columns.write_row(row, &mut line, buffer);
            }
        });
    };
    let write = |writer: &mut dyn Write, buffers: &[Vec<u8>]| -> Result<()> {
        write_all_vectored(writer, buffers).map_err(|source| Error::Io { path: "<output>".into(), source })
    };
    let mut groups = chunks.chunks(window);
    let (mut ready, mut next) = (Vec::new(), Vec::new());
    if let Some(first) = groups.next() {
        format(&mut ready, first);
    }
    for group in groups {
        let mut written = Ok(());
        rayon::in_place_scope(|scope| {
            scope.spawn(|_| format(&mut next, group));
            written = write(&mut writer, &ready);
        });
        written?;
        std::mem::swap(&mut ready, &mut next);
    }
    write(&mut writer, &ready)
}

/// Writes every buffer, in order, in as few calls as the writer allows
/// (`std`'s `write_all_vectored` is not stable yet).
fn write_all_vectored(writer: &mut dyn Write, buffers: &[Vec<u8>]) -> std::io::Result<()> {
    let mut slices: Vec<std::io::IoSlice<'_>> =
        buffers.iter().filter(|b| !b.is_empty()).map(|b| std::io::IoSlice::new(b)).collect();
    let mut slices = &mut slices[..];
    while !slices.is_empty() {
        match writer.write_vectored(slices) {
            Ok(0) => return Err(std::io::Error::new(std::io::ErrorKind::WriteZero, "failed to write whole buffer")),
            Ok(n) => std::io::IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- checking

/// A computed value that differs from a vector file's expected value by more
/// than [`CHECK_TOLERANCE`].
///
/// ```
/// let m = g2po::io::ValueMismatch { row: 3, field: "advantage".into(), expected: 0.5, computed: 0.25 };
/// assert_eq!(m.row, 3);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ValueMismatch {
    /// Row index.
    pub row: usize,
    /// Field name.
    pub field: String,
    /// The file's value.
    pub expected: f64,
    /// The computed value, as written.
    pub computed: f64,
}

/// The largest disagreement between computed rows and a vector file's
/// `expected` rows.
///
/// ```
/// let c = g2po::io::Comparison::default();
/// assert!(c.passes(1e-4));
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Comparison {
    /// Number of (row, field) values compared.
    pub compared: usize,
    /// Largest absolute difference over numeric fields.
    pub max_abs_error: f64,
    /// Where it occurred: (row, field).
    pub worst: Option<(usize, String)>,
    /// Integer fields (ids) that differ: (row, field, expected, found).
    pub id_mismatches: Vec<(usize, String, i64, i64)>,
    /// Numeric values off by more than [`CHECK_TOLERANCE`], in row order.
    pub mismatches: Vec<ValueMismatch>,
    /// Expected fields the output lacks, or a row count that differs.
    pub problems: Vec<String>,
}

impl Comparison {
    /// Whether every value agrees within `tolerance` and every id matches.
    ///
    /// ```
    /// let c = g2po::io::Comparison { max_abs_error: 1e-3, ..Default::default() };
    /// assert!(!c.passes(1e-4));
    /// ```
    pub fn passes(&self, tolerance: f64) -> bool {
        self.max_abs_error <= tolerance && self.id_mismatches.is_empty() && self.problems.is_empty()
    }
}

/// Compares computed advantages with a vector file's expected rows, field by
/// field (every field the expected rows carry). Computed values are taken as
/// written by [`write_jsonl`], so comparing a file with the output it was
/// written from gives an error of exactly 0.
///
/// ```
/// # use g2po::AdvantageEstimator;
/// let batch = g2po::doc_batch();
/// let adv = g2po::Estimator::new(g2po::EstimatorConfig::new(g2po::EstimatorKind::Grpo))?.estimate(&batch)?;
/// let expected: Vec<_> = (0..adv.len()).map(|r| g2po::io::row_json(&adv, r)).collect();
/// assert!(g2po::io::compare(&adv, &expected).passes(0.0));
/// # Ok::<(), g2po::Error>(())
/// ```
pub fn compare(adv: &Advantages, expected: &[Value]) -> Comparison {
    let mut c = Comparison::default();
    if expected.len() != adv.len() {
        c.problems.push(format!("expected {} rows, computed {}", expected.len(), adv.len()));
    }
    for (row, want) in expected.iter().enumerate().take(adv.len()) {
        let got = row_json(adv, row);
        let Some(want) = want.as_object() else {
            c.problems.push(format!("expected[{row}] is not an object"));
            continue;
        };
        for (field, want_value) in want {
            let Some(got_value) = got.get(field) else {
                c.problems.push(format!("row {row}: no computed field {field:?}"));
                continue;
            };
            if let (Some(w), Some(g)) = (want_value.as_i64(), got_value.as_i64()) {
                if w != g {
                    c.id_mismatches.push((row, field.clone(), w, g));
                }
                c.compared += 1;
                continue;
            }
            match (want_value.as_f64(), got_value.as_f64()) {
                (Some(w), Some(g)) => {
                    let err = (w - g).abs();
                    c.compared += 1;
                    // NaN counts as the worst possible error.
                    let err = if err.is_nan() { f64::INFINITY } else { err };
                    if err > c.max_abs_error {
                        c.max_abs_error = err;
                        c.worst = Some((row, field.clone()));
                    }
                    if err > CHECK_TOLERANCE {
                        c.mismatches.push(ValueMismatch { row, field: field.clone(), expected: w, computed: g });
                    }
                }
                _ => c.problems.push(format!("row {row}: field {field:?} is not numeric")),
            }
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_bounds_end_after_newlines_and_cover_the_text() {
        let line = "x".repeat(999) + "\n";
        let text = line.repeat(2000) + "tail";
        let bounds = chunk_bounds(text.as_bytes());
        assert_eq!((bounds[0], *bounds.last().unwrap()), (0, text.len()));
        assert!(bounds.len() > 2, "{bounds:?}");
        for &b in &bounds[1..bounds.len() - 1] {
            assert_eq!(text.as_bytes()[b - 1], b'\n');
        }
    }

    #[test]
    fn as_written_reads_back_as_the_same_f32() {
        for v in [0.1f32, -1.229_071_7, 1e-7, 3.4e38, 0.0, -0.0, 123_456_790.0] {
            assert_eq!(as_written(v) as f32, v);
            let mut b = zmij::Buffer::new();
            let text = b.format_finite(v);
            let parsed: f64 = serde_json::from_str(text).unwrap();
            assert_eq!(parsed, as_written(v), "{text}");
        }
    }
}
