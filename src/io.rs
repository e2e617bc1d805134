//! Reading rollout rows from JSON/JSONL and writing advantages as JSONL.
//!
//! Two input forms are accepted, told apart by content rather than by file
//! extension: a conformance-vector file (one JSON object with `steps`, and
//! usually `estimator`, `params` and `expected`), and JSONL with one row
//! object per line in the same field names as the vectors' `steps`:
//! `group`, `traj` (strings or integers), `step`, `obs` (anchor text) or `key`
//! (a precomputed 64-bit state key), `reward`, `episode_reward`,
//! `is_action_valid`, `response_len`. Unknown fields are ignored.
//!
//! The output is JSONL, one object per input row in input order, with
//! `advantage` and the component fields named as in the vectors' `expected`
//! rows, so any vector file can be checked from the command line alone.

use std::io::Write;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::estimators::{Advantages, EstimatorConfig, EstimatorKind, Grouping, Normalization, StatsOver};
use crate::rollout::{Anchor, BatchBuilder, RolloutBatch, StepRow};

/// A group or trajectory id: a string or an integer in the input.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Id {
    Text(String),
    Int(i64),
    Uint(u64),
}

impl Id {
    fn into_string(self) -> String {
        match self {
            Id::Text(s) => s,
            Id::Int(i) => i.to_string(),
            Id::Uint(u) => u.to_string(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct RawRow {
    group: Option<Id>,
    traj: Option<Id>,
    step: Option<i64>,
    obs: Option<String>,
    key: Option<u64>,
    reward: Option<f64>,
    episode_reward: Option<f64>,
    is_action_valid: Option<bool>,
    response_len: Option<i64>,
}

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

/// What an input file held.
///
/// ```
/// let input = g2po::io::parse_str(
///     r#"{"group": 1, "traj": 7, "step": 0, "key": 99, "reward": 0, "episode_reward": 0, "is_action_valid": false, "response_len": 3}"#,
///     "inline",
/// )?;
/// assert!(input.header.is_none());
/// assert_eq!(input.batch.len(), 1);
/// # Ok::<(), g2po::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Input {
    /// The validated rows.
    pub batch: RolloutBatch,
    /// Present when the input was a conformance-vector file.
    pub header: Option<VectorHeader>,
}

/// Reads a JSON vector file or a JSONL file of rows.
///
/// ```
/// let err = g2po::io::read_path("/nonexistent/rows.jsonl").unwrap_err();
/// assert!(matches!(err, g2po::Error::Io { .. }));
/// ```
pub fn read_path(path: impl AsRef<Path>) -> Result<Input> {
    let path = path.as_ref();
    let text =
        std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.display().to_string(), source })?;
    parse_str(&text, &path.display().to_string())
}

/// Parses a JSON vector document or JSONL rows (see the module docs).
///
/// ```
/// let err = g2po::io::parse_str("{\"group\": ", "bad.jsonl").unwrap_err();
/// assert!(err.to_string().starts_with("bad.jsonl:1:"));
/// ```
pub fn parse_str(text: &str, source_name: &str) -> Result<Input> {
    let parse_err = |line: usize, message: String| Error::Parse { source_name: source_name.to_owned(), line, message };
    // A vector file is one object holding "steps"; anything else is JSONL.
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') {
        let mut stream = serde_json::Deserializer::from_str(trimmed).into_iter::<Value>();
        if let Some(Ok(Value::Object(map))) = stream.next()
            && map.contains_key("steps")
        {
            let rest = &trimmed[stream.byte_offset()..];
            if !rest.trim().is_empty() {
                return Err(parse_err(1, "trailing content after the vector object".into()));
            }
            return parse_vector(Value::Object(map), source_name);
        }
    }
    let mut builder = RolloutBatch::builder();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let raw: RawRow = serde_json::from_str(line).map_err(|e| parse_err(index + 1, e.to_string()))?;
        push_raw(&mut builder, raw)?;
    }
    Ok(Input { batch: builder.build()?, header: None })
}

fn parse_vector(doc: Value, source_name: &str) -> Result<Input> {
    let parse_err = |message: String| Error::Parse { source_name: source_name.to_owned(), line: 1, message };
    let Value::Object(mut map) = doc else { unreachable!("checked by the caller") };
    let wrong = |field: &str, want: &str| parse_err(format!("field {field:?} must be {want}"));
    let kind = match map.get("estimator") {
        None => EstimatorKind::G2po,
        Some(Value::String(name)) => name.parse::<EstimatorKind>()?,
        Some(_) => return Err(wrong("estimator", "a string")),
    };
    let mut config = EstimatorConfig::new(kind);
    match map.get("params") {
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
    let steps = match map.remove("steps") {
        Some(Value::Array(steps)) => steps,
        _ => return Err(parse_err("\"steps\" must be an array".into())),
    };
    let mut builder = RolloutBatch::builder();
    for (row, step) in steps.into_iter().enumerate() {
        let raw: RawRow = serde_json::from_value(step).map_err(|e| parse_err(format!("steps[{row}]: {e}")))?;
        push_raw(&mut builder, raw)?;
    }
    let expected = match map.remove("expected") {
        Some(Value::Array(rows)) => rows,
        Some(_) => return Err(parse_err("\"expected\" must be an array".into())),
        None => Vec::new(),
    };
    let case = map.get("case").and_then(Value::as_str).map(str::to_owned);
    Ok(Input { batch: builder.build()?, header: Some(VectorHeader { config, expected, case }) })
}

fn push_raw(builder: &mut BatchBuilder, raw: RawRow) -> Result<()> {
    let row = builder.len();
    let missing = |field| Error::MissingField { row, field };
    let group = raw.group.ok_or_else(|| missing("group"))?.into_string();
    let traj = raw.traj.ok_or_else(|| missing("traj"))?.into_string();
    let step = raw.step.ok_or_else(|| missing("step"))?;
    let response_len = raw.response_len.ok_or_else(|| missing("response_len"))?;
    for (field, value) in [("step", step), ("response_len", response_len)] {
        if value < 0 {
            return Err(Error::Negative { row, field, value });
        }
        if value > u32::MAX as i64 {
            return Err(Error::InvalidParameter { name: field, reason: format!("row {row}: {value} is too large") });
        }
    }
    let anchor = match (&raw.obs, raw.key) {
        (Some(text), _) => Anchor::Text(text),
        (None, Some(key)) => Anchor::Key(key),
        (None, None) => return Err(missing("obs")),
    };
    builder.push_step(StepRow {
        group: &group,
        traj: &traj,
        step: step as u32,
        anchor,
        reward: raw.reward.ok_or_else(|| missing("reward"))?,
        episode_reward: raw.episode_reward.ok_or_else(|| missing("episode_reward"))?,
        valid: raw.is_action_valid.ok_or_else(|| missing("is_action_valid"))?,
        response_len: response_len as u32,
    })
}

/// The JSON object of one output row, with the vectors' field names.
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
    let mut obj = serde_json::Map::new();
    let mut put_f = |name: &str, col: &[f32]| {
        if let Some(v) = col.get(row) {
            obj.insert(name.to_owned(), Value::from(*v as f64));
        }
    };
    put_f("advantage", &adv.advantage);
    put_f("episode_advantage", &adv.episode);
    put_f("step_advantage", &adv.step);
    put_f("node_centric", &adv.node_centric);
    put_f("edge_centric", &adv.edge_centric);
    put_f("step_return", &adv.step_return);
    put_f("node_value", &adv.node_value);
    // GiGPO's ids are step groups, G2PO's are nodes.
    let id_name = if adv.next_node.is_empty() { "step_group" } else { "node" };
    if let Some(v) = adv.node.get(row) {
        obj.insert(id_name.to_owned(), Value::from(*v));
    }
    if let Some(v) = adv.next_node.get(row) {
        obj.insert("next_node".to_owned(), Value::from(*v));
    }
    Value::Object(obj)
}

/// Writes one JSON object per row (see [`row_json`]).
///
/// ```
/// # use g2po::AdvantageEstimator;
/// let batch = g2po::doc_batch();
/// let adv = g2po::Estimator::new(g2po::EstimatorConfig::new(g2po::EstimatorKind::G2po))?.estimate(&batch)?;
/// let mut out = Vec::new();
/// g2po::io::write_jsonl(&adv, &mut out).unwrap();
/// assert_eq!(String::from_utf8(out).unwrap().lines().count(), batch.len());
/// # Ok::<(), g2po::Error>(())
/// ```
pub fn write_jsonl(adv: &Advantages, mut writer: impl Write) -> std::io::Result<()> {
    for row in 0..adv.len() {
        serde_json::to_writer(&mut writer, &row_json(adv, row))?;
        writer.write_all(b"\n")?;
    }
    Ok(())
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
/// field (every field the expected rows carry).
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
                    if err.is_nan() || err > c.max_abs_error {
                        c.max_abs_error = if err.is_nan() { f64::INFINITY } else { err };
                        c.worst = Some((row, field.clone()));
                    }
                }
                _ => c.problems.push(format!("row {row}: field {field:?} is not numeric")),
            }
        }
    }
    c
}
