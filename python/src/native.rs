//! The native API: `estimate`, `keys`, `broadcast`, and the state graph.

use std::sync::Arc;

use g2po::graph::StateGraph;
use g2po::keys::{CollapseWhitespace, StateKeyer, StripMoveCounter, StripTurnPrefix};
use g2po::rollout::{DenseAnchors, DenseColumns};
use g2po::{
    AdvantageEstimator, Advantages, Estimator, EstimatorConfig, EstimatorKind, Grouping, Normalization, RolloutBatch,
    StatsOver, TerminalValues,
};
use numpy::{PyArray1, PyArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use rayon::prelude::*;

use crate::convert::{self, TextRef};
use crate::errors::{Failure, Fallible, from_engine, no_panic};
use crate::threads;

/// Builds the engine's keyer from canonicaliser names.
pub fn keyer(names: &[String]) -> Fallible<StateKeyer> {
    let mut k = StateKeyer::new();
    for name in names {
        k = match name.as_str() {
            "strip_turn_prefix" => k.with(StripTurnPrefix),
            "strip_move_counter" => k.with(StripMoveCounter),
            "collapse_whitespace" => k.with(CollapseWhitespace),
            "text_env" => k.with(StripTurnPrefix).with(StripMoveCounter).with(CollapseWhitespace),
            other => {
                return Err(Failure::config(
                    "canonicalizers",
                    format!(
                        "unknown canonicalizer {other:?} (expected strip_turn_prefix, strip_move_counter, \
                         collapse_whitespace or text_env)"
                    ),
                ));
            }
        };
    }
    Ok(k)
}

/// Keys of borrowed texts, hashed in parallel (no GIL needed).
pub fn hash_texts(keyer: &StateKeyer, texts: &[TextRef]) -> Vec<u64> {
    const AHEAD: usize = 4;
    let mut keys = vec![0u64; texts.len()];
    keys.par_chunks_mut(2048).enumerate().for_each(|(chunk, out)| {
        let start = chunk * 2048;
        for (i, key) in out.iter_mut().enumerate() {
            if let Some(ahead) = texts.get(start + i + AHEAD) {
                // The first two lines; the adjacent-line prefetcher streams the rest.
                convert::prefetch(ahead.ptr());
                convert::prefetch(ahead.ptr().wrapping_add(64));
            }
            // SAFETY: every TextRef points into a str the caller's array keeps alive.
            *key = keyer.key(unsafe { texts[start + i].as_str() });
        }
    });
    keys
}

/// Keys of an object array of `str`: one GIL-held pass when no canonicaliser
/// runs (memory-bound), else pointers first and canonicalise + hash in
/// parallel without the GIL (CPU-bound).
pub fn text_keys(
    py: Python<'_>,
    obj: &Bound<'_, PyAny>,
    argument: &str,
    expected: Option<usize>,
    keyer: &StateKeyer,
    canonicalizers: &[String],
    num_threads: Option<usize>,
) -> Fallible<Vec<u64>> {
    if canonicalizers.is_empty() {
        return convert::text_keys_one_pass(obj, argument, expected, |t| keyer.key(t));
    }
    let refs = convert::texts(obj, argument, expected)?;
    py.detach(|| no_panic(|| threads::run(num_threads, || hash_texts(keyer, &refs))))
}

/// Whether an estimator groups rows into states (and so needs anchors).
fn uses_states(kind: EstimatorKind) -> bool {
    matches!(kind, EstimatorKind::Gigpo | EstimatorKind::G2po | EstimatorKind::G2poTree | EstimatorKind::G2poBellman)
}

/// Every estimator option, as the Python `Config` passes them.
#[allow(clippy::too_many_arguments)]
pub fn config(
    estimator: &str,
    mode: &str,
    gamma: f64,
    epsilon: f64,
    step_weight: f64,
    invalid_penalty: f64,
    stats_over: &str,
    similarity: Option<f64>,
    terminal: Option<(f64, f64)>,
) -> Fallible<EstimatorConfig> {
    let to_config = |e: g2po::Error| from_engine(e, &|r| r);
    let kind: EstimatorKind = estimator.parse().map_err(to_config)?;
    let norm: Normalization = mode.parse().map_err(to_config)?;
    let stats_over: StatsOver = stats_over.parse().map_err(to_config)?;
    let cfg = EstimatorConfig {
        kind,
        gamma,
        epsilon,
        norm,
        step_weight,
        invalid_penalty,
        stats_over,
        grouping: match similarity {
            None => Grouping::Exact,
            Some(threshold) => Grouping::Similarity { threshold },
        },
        terminal: match terminal {
            None => TerminalValues::EpisodeReward,
            Some((success, failure)) => TerminalValues::Fixed { success, failure },
        },
    };
    cfg.validate().map_err(to_config)?;
    Ok(cfg)
}

/// A batch kept alive for graph exports.
#[pyclass(module = "g2po_rs._native", frozen)]
pub struct Batch {
    pub batch: Arc<RolloutBatch>,
    /// Engine row -> caller row (None: identity).
    pub caller_row: Option<Arc<Vec<u32>>>,
}

#[pymethods]
impl Batch {
    /// Number of rows.
    fn __len__(&self) -> usize {
        self.batch.len()
    }

    /// Number of task groups.
    #[getter]
    fn num_groups(&self) -> usize {
        self.batch.num_groups()
    }

    /// Seconds of each of `repeats` calls of the engine alone
    /// (`Estimator::estimate_into` on this already-built batch, buffers
    /// reused), for benchmarks: the Rust time beside which the Python call's
    /// time is reported.
    #[pyo3(signature = (estimator, mode, repeats, num_threads=None))]
    fn time_engine(
        &self,
        py: Python<'_>,
        estimator: &str,
        mode: &str,
        repeats: usize,
        num_threads: Option<usize>,
    ) -> PyResult<Vec<f64>> {
        let cfg = config(estimator, mode, 0.95, 1e-6, 1.0, 0.1, "rows", None, None)?;
        let batch = self.batch.clone();
        let times = py.detach(|| {
            no_panic(|| {
                threads::run(num_threads, || -> Fallible<Vec<f64>> {
                    let est = Estimator::new(cfg).map_err(|e| from_engine(e, &|r| r))?;
                    let mut out = Advantages::default();
                    let mut times = Vec::with_capacity(repeats);
                    for _ in 0..repeats {
                        let start = std::time::Instant::now();
                        est.estimate_into(&batch, &mut out).map_err(|e| from_engine(e, &|r| r))?;
                        times.push(start.elapsed().as_secs_f64());
                    }
                    Ok(times)
                })?
            })
        })?;
        Ok(times)
    }
}

/// Within each trajectory, reorders rows by their step (keeping the set of
/// positions each trajectory occupies). Returns the engine-row -> caller-row
/// map, or None when every trajectory is already in step order.
fn step_order(traj: &[u32], step: &[u32], num_trajs: usize) -> Option<Vec<u32>> {
    let mut next = vec![0u32; num_trajs];
    let ordered = traj.iter().zip(step).all(|(&t, &s)| {
        let ok = next[t as usize] == s;
        next[t as usize] = s.wrapping_add(1);
        ok
    });
    if ordered {
        return None;
    }
    let mut rows_of: Vec<Vec<u32>> = vec![Vec::new(); num_trajs];
    for (row, &t) in traj.iter().enumerate() {
        rows_of[t as usize].push(row as u32);
    }
    let mut perm = vec![0u32; traj.len()];
    for rows in &rows_of {
        let mut by_step = rows.clone();
        by_step.sort_by_key(|&r| step[r as usize]);
        for (&pos, &row) in rows.iter().zip(&by_step) {
            perm[pos as usize] = row;
        }
    }
    Some(perm)
}

fn permute<T: Copy>(v: &[T], perm: &[u32]) -> Vec<T> {
    perm.iter().map(|&r| v[r as usize]).collect()
}

fn unpermute<T: Copy + Default>(v: Vec<T>, perm: Option<&[u32]>) -> Vec<T> {
    match perm {
        None => v,
        Some(p) => {
            let mut out = vec![T::default(); v.len()];
            for (i, &r) in p.iter().enumerate() {
                out[r as usize] = v[i];
            }
            out
        }
    }
}

/// Native estimate. See `g2po_rs.estimate` for the documented interface.
#[pyfunction]
#[pyo3(signature = (*, estimator, mode, gamma, epsilon, step_weight, invalid_penalty, stats_over, similarity,
                    terminal, canonicalizers, group, traj, step, anchors, keys, reward, episode_reward, valid,
                    response_len, num_threads))]
#[allow(clippy::too_many_arguments)]
pub fn estimate<'py>(
    py: Python<'py>,
    estimator: &str,
    mode: &str,
    gamma: f64,
    epsilon: f64,
    step_weight: f64,
    invalid_penalty: f64,
    stats_over: &str,
    similarity: Option<f64>,
    terminal: Option<(f64, f64)>,
    canonicalizers: Vec<String>,
    group: &Bound<'py, PyAny>,
    traj: &Bound<'py, PyAny>,
    step: Option<&Bound<'py, PyAny>>,
    anchors: Option<&Bound<'py, PyAny>>,
    keys: Option<&Bound<'py, PyAny>>,
    reward: Option<&Bound<'py, PyAny>>,
    episode_reward: &Bound<'py, PyAny>,
    valid: Option<&Bound<'py, PyAny>>,
    response_len: Option<&Bound<'py, PyAny>>,
    num_threads: Option<usize>,
) -> PyResult<Bound<'py, PyDict>> {
    let cfg = config(estimator, mode, gamma, epsilon, step_weight, invalid_penalty, stats_over, similarity, terminal)?;
    let keyer = keyer(&canonicalizers)?;
    let groups = convert::ids(group, "group", None)?;
    let n = groups.dense.len();
    let trajs = convert::ids(traj, "traj", Some(n))?;
    let steps = step.map(|s| convert::counts(s, "step", Some(n))).transpose()?;
    let episode_reward = convert::floats(episode_reward, "episode_reward", Some(n))?;
    let reward = match reward {
        Some(r) => convert::floats(r, "reward", Some(n))?,
        None => vec![0.0; n],
    };
    let valid = match valid {
        Some(v) => convert::bools(v, "valid", Some(n))?,
        None => vec![true; n],
    };
    let response_len = match response_len {
        Some(v) => convert::counts(v, "response_len", Some(n))?,
        None => vec![1; n],
    };
    let similar = matches!(cfg.grouping, Grouping::Similarity { .. });
    let (texts, given_keys) = match (anchors, keys) {
        (Some(_), Some(_)) => return Err(Failure::input("anchors", None, "give anchors or keys, not both").into()),
        (None, None) if uses_states(cfg.kind) => {
            return Err(Failure::input("anchors", None, format!("{} needs anchors (texts) or keys", cfg.kind)).into());
        }
        (Some(a), None) if similar => (Some(convert::texts(a, "anchors", Some(n))?), None),
        (Some(a), None) => (None, Some(text_keys(py, a, "anchors", Some(n), &keyer, &canonicalizers, num_threads)?)),
        (None, Some(k)) => (None, Some(convert::keys(k, "keys", Some(n))?)),
        (None, None) => (None, None),
    };
    let num_trajs = trajs.labels.len();
    let group_index = groups.dense.clone();

    let (adv, batch, perm) = py.detach(|| {
        no_panic(|| {
            threads::run(num_threads, || -> Fallible<(Advantages, RolloutBatch, Option<Vec<u32>>)> {
                let perm = steps.as_ref().and_then(|s| step_order(&trajs.dense, s, num_trajs));
                let anchors = match (&texts, given_keys) {
                    (Some(t), _) => {
                        // SAFETY: the caller's array keeps every str alive.
                        let order: Box<dyn Iterator<Item = &TextRef>> = match &perm {
                            Some(p) => Box::new(p.iter().map(|&r| &t[r as usize])),
                            None => Box::new(t.iter()),
                        };
                        DenseAnchors::texts(order.map(|t| unsafe { t.as_str() }))
                    }
                    (None, Some(k)) => DenseAnchors::Keys(match &perm {
                        Some(p) => permute(&k, p),
                        None => k,
                    }),
                    // An estimator without states: the anchors are unused.
                    (None, None) => DenseAnchors::Keys(vec![0; n]),
                };
                let cols = match &perm {
                    None => DenseColumns {
                        group_ids: groups.labels,
                        traj_ids: trajs.labels,
                        group: groups.dense,
                        traj: trajs.dense,
                        step: steps,
                        anchors,
                        reward,
                        episode_reward,
                        valid,
                        response_len,
                    },
                    Some(p) => DenseColumns {
                        group_ids: groups.labels,
                        traj_ids: trajs.labels,
                        group: permute(&groups.dense, p),
                        traj: permute(&trajs.dense, p),
                        step: steps.as_deref().map(|s| permute(s, p)),
                        anchors,
                        reward: permute(&reward, p),
                        episode_reward: permute(&episode_reward, p),
                        valid: permute(&valid, p),
                        response_len: permute(&response_len, p),
                    },
                };
                let row_of = |r: usize| perm.as_ref().map_or(r, |p| p[r] as usize);
                let batch = RolloutBatch::from_dense(cols).map_err(|e| from_engine(e, &row_of))?;
                let est = Estimator::new(cfg).map_err(|e| from_engine(e, &row_of))?.with_keyer(keyer);
                let adv = est.estimate(&batch).map_err(|e| from_engine(e, &row_of))?;
                Ok((adv, batch, perm))
            })?
        })
    })?;

    let out = PyDict::new(py);
    let p = perm.as_deref();
    macro_rules! put {
        ($name:literal, $col:expr) => {
            let col = $col;
            if col.is_empty() {
                out.set_item($name, py.None())?;
            } else {
                out.set_item($name, PyArray1::from_vec(py, unpermute(col, p)))?;
            }
        };
    }
    put!("advantage", adv.advantage);
    put!("episode", adv.episode);
    put!("step", adv.step);
    put!("node_centric", adv.node_centric);
    put!("edge_centric", adv.edge_centric);
    put!("step_return", adv.step_return);
    put!("node", adv.node);
    put!("next_node", adv.next_node);
    put!("node_value", adv.node_value);
    put!("next_value", adv.next_value);
    out.set_item("group_index", PyArray1::from_vec(py, group_index))?;
    out.set_item("batch", Batch { batch: Arc::new(batch), caller_row: perm.map(Arc::new) })?;
    Ok(out)
}

/// State keys of texts, as the engine computes them.
#[pyfunction]
#[pyo3(signature = (texts, canonicalizers, num_threads=None))]
pub fn keys<'py>(
    py: Python<'py>,
    texts: &Bound<'py, PyAny>,
    canonicalizers: Vec<String>,
    num_threads: Option<usize>,
) -> PyResult<Bound<'py, PyArray1<u64>>> {
    let keyer = keyer(&canonicalizers)?;
    let keys = text_keys(py, texts, "texts", None, &keyer, &canonicalizers, num_threads)?;
    Ok(PyArray1::from_vec(py, keys))
}

/// The canonical form of one text (what is hashed).
#[pyfunction]
pub fn canonical(text: &str, canonicalizers: Vec<String>) -> PyResult<String> {
    Ok(keyer(&canonicalizers)?.canonical(text).into_owned())
}

/// The state graph of one group of an estimate, as a Python object.
#[pyclass(module = "g2po_rs._native", frozen)]
pub struct Graph {
    graph: StateGraph,
}

#[pymethods]
impl Graph {
    /// Graphviz DOT text.
    fn to_dot(&self) -> String {
        self.graph.to_dot()
    }

    /// JSON text: group, stats, nodes and edges.
    fn to_json(&self) -> String {
        self.graph.to_json().to_string()
    }

    /// Edges as (source node id, target node id, count, mean advantage, rows);
    /// ids -1 and -2 are the success and failure terminals; rows are the
    /// caller's row indices.
    fn edges(&self) -> Vec<(i32, i32, u32, f64, Vec<u32>)> {
        let g = &self.graph.graph;
        g.edge_indices()
            .map(|e| {
                let (a, b) = g.edge_endpoints(e).expect("edge of this graph");
                let t = &g[e];
                (g[a].id, g[b].id, t.count, t.mean_advantage, t.rows.clone())
            })
            .collect()
    }

    /// Nodes as (id, kind, visits, value, label).
    fn nodes(&self) -> Vec<(i32, String, u32, f64, String)> {
        let g = &self.graph.graph;
        g.node_indices()
            .map(|i| {
                let n = &g[i];
                let kind = match n.kind {
                    g2po::graph::NodeKind::State => "state",
                    g2po::graph::NodeKind::Success => "success",
                    g2po::graph::NodeKind::Failure => "failure",
                };
                (n.id, kind.to_owned(), n.visits, n.value, n.label.clone())
            })
            .collect()
    }

    /// Summary statistics as a dict-like JSON text.
    fn stats_json(&self) -> String {
        serde_json::to_string(&self.graph.stats()).expect("stats serialise")
    }

    /// The group id (its label).
    #[getter]
    fn group(&self) -> String {
        self.graph.group.clone()
    }
}

/// Builds the state graph of group `group_index` (dense, first-seen order) from
/// an estimate's columns. `labels`: an optional object array of the caller's
/// anchor texts, used as node labels.
#[pyfunction]
#[pyo3(signature = (batch, group_index, advantage, node, next_node, node_value, next_value, labels=None))]
#[allow(clippy::too_many_arguments)]
pub fn graph<'py>(
    batch: &Batch,
    group_index: usize,
    advantage: &Bound<'py, PyAny>,
    node: &Bound<'py, PyAny>,
    next_node: &Bound<'py, PyAny>,
    node_value: &Bound<'py, PyAny>,
    next_value: &Bound<'py, PyAny>,
    labels: Option<&Bound<'py, PyAny>>,
) -> PyResult<Graph> {
    let b = &batch.batch;
    let n = b.len();
    if group_index >= b.num_groups() {
        return Err(Failure::input("group", None, format!("index {group_index} >= {} groups", b.num_groups())).into());
    }
    let caller = |r: usize| batch.caller_row.as_ref().map_or(r, |p| p[r] as usize);
    let read_f32 = |obj: &Bound<'py, PyAny>, name: &str| -> Fallible<Vec<f32>> {
        Ok(convert::floats(obj, name, Some(n))?.into_iter().map(|x| x as f32).collect())
    };
    let read_i32 = |obj: &Bound<'py, PyAny>, name: &str| -> Fallible<Vec<i32>> {
        let arr = convert::array1(obj, name)?;
        let typed = arr
            .cast::<PyArray1<i32>>()
            .map_err(|_| Failure::type_(name, None, "expected the int32 column of an estimate"))?;
        let v = typed.readonly().as_slice().expect("contiguous").to_vec();
        if v.len() != n {
            return Err(Failure::input(name, None, "length differs from the batch"));
        }
        Ok(v)
    };
    // Columns come in the caller's order; the engine's batch is in its own.
    let reorder_f = |v: Vec<f32>| (0..n).map(|r| v[caller(r)]).collect::<Vec<_>>();
    let reorder_i = |v: Vec<i32>| (0..n).map(|r| v[caller(r)]).collect::<Vec<_>>();
    let adv = Advantages {
        advantage: reorder_f(read_f32(advantage, "advantage")?),
        node: reorder_i(read_i32(node, "node")?),
        next_node: reorder_i(read_i32(next_node, "next_node")?),
        node_value: reorder_f(read_f32(node_value, "node_value")?),
        next_value: reorder_f(read_f32(next_value, "next_value")?),
        ..Default::default()
    };
    let mut graph = StateGraph::build(b, &adv, group_index).map_err(|e| from_engine(e, &caller))?;
    for edge in graph.graph.edge_weights_mut() {
        for r in &mut edge.rows {
            *r = caller(*r as usize) as u32;
        }
    }
    if let Some(labels) = labels {
        let py = labels.py();
        let texts: Vec<Py<PyAny>> =
            labels.extract().map_err(|_| Failure::type_("labels", None, "expected a sequence"))?;
        let mut seen = std::collections::HashSet::new();
        for &r in b.group_rows(group_index) {
            let id = adv.node[r as usize];
            if id >= 0
                && seen.insert(id)
                && let Some(index) = graph.state_index(id as usize)
                && let Some(obj) = texts.get(caller(r as usize))
            {
                graph.graph[index].label = obj.bind(py).str().map(|s| s.to_string()).unwrap_or_default();
            }
        }
    }
    Ok(Graph { graph })
}

/// `advantage[:, None] * mask` into a new float32 [rows, L] array, for any
/// mask dtype (bool, integers, floats) and any strides.
#[pyfunction]
#[pyo3(signature = (advantage, mask, num_threads=None))]
pub fn broadcast<'py>(
    py: Python<'py>,
    advantage: &Bound<'py, PyAny>,
    mask: &Bound<'py, PyAny>,
    num_threads: Option<usize>,
) -> PyResult<Bound<'py, numpy::PyArray2<f32>>> {
    let adv: Vec<f32> = convert::floats(advantage, "advantage", None)?.into_iter().map(|x| x as f32).collect();
    crate::tokens::broadcast(py, &adv, mask, "response_mask", num_threads)
}
