//! Primitives of the drop-in modules (`g2po_rs.compat`).
//!
//! The reference trainers call their estimators in two phases: the first on the
//! rollout in step order (GiGPO's discounted returns, G2PO's node values), the
//! second after the batch was duplicated and reordered, with only per-row ids
//! left (no step order). Phase one runs on the engine (G2PO: nodes from the
//! engine's state keys). Phase two is grouped standardisation over the ids the
//! trainer carried along; its formulas are composed in Python from the
//! primitives here (factorised ids, per-group statistics, token sums and the
//! token broadcast), which do every per-row loop in Rust.

use ahash::AHashMap;
use g2po::RolloutBatch;
use g2po::rollout::{DenseAnchors, DenseColumns};
use numpy::{PyArray1, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::prelude::*;
use rayon::prelude::*;

use crate::convert;
use crate::errors::{Failure, Fallible, from_engine, no_panic};
use crate::native::{self, keyer};

/// A numpy array handed to Python.
type Arr<'py, T> = Bound<'py, PyArray1<T>>;

fn u32s(obj: &Bound<'_, PyAny>, argument: &str, expected: Option<usize>) -> Fallible<Vec<u32>> {
    convert::counts(obj, argument, expected)
}

fn i64s(obj: &Bound<'_, PyAny>, argument: &str, expected: Option<usize>) -> Fallible<Vec<i64>> {
    let arr = convert::array1(obj, argument)?;
    if let Some(n) = expected
        && arr.shape()[0] != n
    {
        return Err(Failure::input(
            argument,
            None,
            format!("has {} entries but the batch has {n} rows", arr.shape()[0]),
        ));
    }
    if let Ok(t) = arr.cast::<PyArray1<i64>>() {
        return Ok(t.readonly().as_slice().expect("contiguous").to_vec());
    }
    if let Ok(t) = arr.cast::<PyArray1<i32>>() {
        return Ok(t.readonly().as_slice().expect("contiguous").iter().map(|&x| x as i64).collect());
    }
    Err(Failure::type_(argument, None, "expected an int64 or int32 array"))
}

/// Dense ids of any id column, their count and the first row of each.
#[pyfunction]
#[pyo3(signature = (ids, argument="index"))]
pub fn factorize<'py>(
    py: Python<'py>,
    ids: &Bound<'py, PyAny>,
    argument: &str,
) -> PyResult<(Arr<'py, u32>, usize, Arr<'py, i64>)> {
    let f = convert::ids(ids, argument, None)?;
    let n = f.labels.len();
    let mut first = vec![-1i64; n];
    for (row, &id) in f.dense.iter().enumerate() {
        if first[id as usize] < 0 {
            first[id as usize] = row as i64;
        }
    }
    Ok((PyArray1::from_vec(py, f.dense), n, PyArray1::from_vec(py, first)))
}

/// Dense ids of (a, b) pairs and their count; `a` holds dense ids (0..k).
/// Pairs are numbered group by group of `a` (rows of a group in row order),
/// so each group's map stays small and in cache.
#[pyfunction]
pub fn pair_ids<'py>(
    py: Python<'py>,
    a: &Bound<'py, PyAny>,
    b: &Bound<'py, PyAny>,
) -> PyResult<(Arr<'py, u32>, usize)> {
    let a = u32s(a, "a", None)?;
    let b = convert::keys(b, "b", Some(a.len()))?;
    let groups = a.iter().copied().max().map_or(0, |m| m as usize + 1);
    let mut offsets = vec![0usize; groups + 1];
    for &g in &a {
        offsets[g as usize + 1] += 1;
    }
    for g in 0..groups {
        offsets[g + 1] += offsets[g];
    }
    let mut cursor = offsets.clone();
    let mut rows = vec![0u32; a.len()];
    for (row, &g) in a.iter().enumerate() {
        rows[cursor[g as usize]] = row as u32;
        cursor[g as usize] += 1;
    }
    let mut dense = vec![0u32; a.len()];
    let mut map: AHashMap<u64, u32> = AHashMap::new();
    let mut next = 0u32;
    for g in 0..groups {
        map.clear();
        for &row in &rows[offsets[g]..offsets[g + 1]] {
            let id = *map.entry(b[row as usize]).or_insert(next);
            if id == next {
                next += 1;
            }
            dense[row as usize] = id;
        }
    }
    Ok((PyArray1::from_vec(py, dense), next as usize))
}

/// Keys of texts (exactly the engine's), for anchors.
#[pyfunction]
#[pyo3(signature = (texts, canonicalizers, argument="anchor_obs"))]
pub fn text_keys<'py>(
    py: Python<'py>,
    texts: &Bound<'py, PyAny>,
    canonicalizers: Vec<String>,
    argument: &str,
) -> PyResult<Arr<'py, u64>> {
    let keyer = keyer(&canonicalizers)?;
    let keys = native::text_keys(py, texts, argument, None, &keyer, &canonicalizers, None)?;
    Ok(PyArray1::from_vec(py, keys))
}

/// Per-group count, mean and unbiased std (two passes, f64; NaN std for a
/// group of one, as torch gives). With `float32`, values are taken as float32
/// and the statistics rounded to float32, as torch computes them on a float32
/// tensor (its mean is a float32 sum divided by n; its std a float64 two-pass
/// rounded once).
#[pyfunction]
#[pyo3(signature = (groups, num_groups, values, float32=false))]
pub fn group_stats<'py>(
    py: Python<'py>,
    groups: &Bound<'py, PyAny>,
    num_groups: usize,
    values: &Bound<'py, PyAny>,
    float32: bool,
) -> PyResult<(Arr<'py, i64>, Arr<'py, f64>, Arr<'py, f64>)> {
    let g = u32s(groups, "groups", None)?;
    let mut x = convert::floats(values, "values", Some(g.len()))?;
    if let Some(row) = g.iter().position(|&id| id as usize >= num_groups) {
        return Err(Failure::input("groups", Some(row), "group id out of range").into());
    }
    if float32 {
        for v in &mut x {
            *v = *v as f32 as f64;
        }
    }
    let mut count = vec![0i64; num_groups];
    let mut sum = vec![0f64; num_groups];
    for (&id, &v) in g.iter().zip(&x) {
        count[id as usize] += 1;
        sum[id as usize] += v;
    }
    let mean: Vec<f64> = sum
        .iter()
        .zip(&count)
        .map(|(&s, &c)| if float32 { (s as f32 / c as f32) as f64 } else { s / c as f64 })
        .collect();
    let mut sq = vec![0f64; num_groups];
    // The deviations use the exact (f64) mean, as a float64 two-pass would.
    let exact_mean: Vec<f64> = sum.iter().zip(&count).map(|(&s, &c)| s / c as f64).collect();
    for (&id, &v) in g.iter().zip(&x) {
        let d = v - exact_mean[id as usize];
        sq[id as usize] += d * d;
    }
    let std: Vec<f64> = sq
        .iter()
        .zip(&count)
        .map(|(&s, &c)| {
            let sd = if c > 1 { (s / (c - 1) as f64).sqrt() } else { f64::NAN };
            if float32 { sd as f32 as f64 } else { sd }
        })
        .collect();
    Ok((PyArray1::from_vec(py, count), PyArray1::from_vec(py, mean), PyArray1::from_vec(py, std)))
}

/// Row sums of a [rows, L] token array (any dtype and strides), in f64.
#[pyfunction]
#[pyo3(signature = (tokens, argument="token_level_rewards", num_threads=None))]
pub fn row_sums<'py>(
    py: Python<'py>,
    tokens: &Bound<'py, PyAny>,
    argument: &str,
    num_threads: Option<usize>,
) -> PyResult<Arr<'py, f64>> {
    let sums = crate::tokens::row_sums(py, tokens, argument, num_threads)?;
    Ok(PyArray1::from_vec(py, sums))
}

/// GiGPO's discounted returns per trajectory, rows in step order. With
/// `float32`, the recurrence runs in float32 (NumPy 2's reading of the
/// reference); otherwise in f64, each result rounded once (NumPy 1's).
#[pyfunction]
#[pyo3(signature = (traj, rewards, gamma, float32=false))]
pub fn discounted_returns<'py>(
    py: Python<'py>,
    traj: &Bound<'py, PyAny>,
    rewards: &Bound<'py, PyAny>,
    gamma: f64,
    float32: bool,
) -> PyResult<Arr<'py, f32>> {
    let t = u32s(traj, "traj", None)?;
    let r = convert::floats(rewards, "rewards", Some(t.len()))?;
    let num = t.iter().copied().max().map_or(0, |m| m as usize + 1);
    let mut out = vec![0f32; t.len()];
    if float32 {
        let g = gamma as f32;
        let mut running = vec![0f32; num];
        for row in (0..t.len()).rev() {
            let k = t[row] as usize;
            running[k] = r[row] as f32 + g * running[k];
            out[row] = running[k];
        }
    } else {
        let mut running = vec![0f64; num];
        for row in (0..t.len()).rev() {
            let k = t[row] as usize;
            running[k] = r[row] + gamma * running[k];
            out[row] = running[k] as f32;
        }
    }
    Ok(PyArray1::from_vec(py, out))
}

/// G2PO phase one (`compute_group_aggregation_values`).
///
/// The engine's batch checks the rows (trajectories in one uid, equal episode
/// rewards, finite values) and hashes the anchors into its state keys; a node
/// is the rows of one uid with equal keys, as in the engine's G2PO. Nodes are
/// numbered per uid from 0 in the reference's order: trajectories by
/// their ids in Python's sorted order (`sorted_rank`), each
/// trajectory's rows in row order. A visit at position t of a trajectory of T
/// rows contributes `gamma^(T - t) * R` (R its first row's episode reward);
/// the node value is the mean over its visits, summed in that same order.
/// With `float32_terms` each contribution is a float32 product (NumPy 2's
/// reading of `0.95 ** k * np.float32(R)`); otherwise f64 (NumPy 1's). The
/// step after a trajectory's last row is -1 (episode reward ==
/// `success_reward`) or -2.
#[pyfunction]
#[pyo3(signature = (uid, traj, episode_reward, anchors, keys, canonicalizers, gamma, success_reward,
                    float32_terms))]
#[allow(clippy::too_many_arguments)]
pub fn g2po_phase_one<'py>(
    py: Python<'py>,
    uid: &Bound<'py, PyAny>,
    traj: &Bound<'py, PyAny>,
    episode_reward: &Bound<'py, PyAny>,
    anchors: Option<&Bound<'py, PyAny>>,
    keys: Option<&Bound<'py, PyAny>>,
    canonicalizers: Vec<String>,
    gamma: f64,
    success_reward: f64,
    float32_terms: bool,
) -> PyResult<(Arr<'py, f64>, Arr<'py, i64>, Arr<'py, i64>)> {
    let groups = convert::ids(uid, "uid", None)?;
    let n = groups.dense.len();
    let trajs = convert::ids(traj, "traj_uid", Some(n))?;
    let rank = sorted_rank(traj, &trajs)?;
    let reward = convert::floats(episode_reward, "episode_rewards", Some(n))?;
    let keyer = keyer(&canonicalizers)?;
    let given = match (anchors, keys) {
        (Some(a), _) => Some(native::text_keys(py, a, "anchor_obs", Some(n), &keyer, &canonicalizers, None)?),
        (None, Some(k)) => Some(convert::keys(k, "anchor_obs", Some(n))?),
        (None, None) => None,
    };

    let (values, node, next) = py.detach(|| {
        no_panic(|| {
            let Some(keys) = given else {
                return Err(Failure::input("anchor_obs", None, "no anchors given"));
            };
            let num_trajs = trajs.labels.len();
            let cols = DenseColumns {
                group_ids: groups.labels,
                traj_ids: trajs.labels,
                group: groups.dense,
                traj: trajs.dense,
                step: None,
                anchors: DenseAnchors::Keys(keys),
                reward: vec![0.0; n],
                episode_reward: reward,
                valid: vec![true; n],
                response_len: vec![1; n],
            };
            let batch = RolloutBatch::from_dense(cols).map_err(|e| {
                let mut f = from_engine(e, &|r| r);
                // Name the reference's arguments.
                f.argument = f.argument.map(|a| match a.as_str() {
                    "traj" | "step" => "traj_uid".into(),
                    "episode_reward" => "episode_rewards".into(),
                    "group" => "uid".into(),
                    other => other.into(),
                });
                f
            })?;
            let keys = batch.keys().expect("built from keys");
            Ok(phase_one_numbering(&batch, keys, &rank, num_trajs, gamma, success_reward, float32_terms))
        })
    })?;
    Ok((PyArray1::from_vec(py, values), PyArray1::from_vec(py, node), PyArray1::from_vec(py, next)))
}

/// The rank of each dense id in Python's sorted order of the distinct ids.
/// `str` ids sort by their UTF-8 bytes, which is Python's code-point order,
/// without a call into Python; any other ids are sorted by Python itself.
fn sorted_rank(column: &Bound<'_, PyAny>, ids: &convert::Ids) -> PyResult<Vec<u32>> {
    let n = ids.labels.len();
    let order: Vec<u32> = if ids.all_text {
        let mut order: Vec<u32> = (0..n as u32).collect();
        order.sort_unstable_by(|&a, &b| ids.labels[a as usize].as_bytes().cmp(ids.labels[b as usize].as_bytes()));
        order
    } else {
        let mut first = vec![usize::MAX; n];
        for (row, &id) in ids.dense.iter().enumerate() {
            if first[id as usize] == usize::MAX {
                first[id as usize] = row;
            }
        }
        let py = column.py();
        let distinct = pyo3::types::PyList::empty(py);
        for &row in &first {
            distinct.append(column.get_item(row)?)?;
        }
        let key = distinct.getattr("__getitem__")?;
        let kwargs = pyo3::types::PyDict::new(py);
        kwargs.set_item("key", key)?;
        let sorted = py
            .import("builtins")?
            .getattr("sorted")?
            .call((pyo3::types::PyRange::new(py, 0, n as isize)?,), Some(&kwargs))
            .map_err(|e| Failure::type_("traj_uid", None, format!("the trajectory ids cannot be sorted: {e}")))?;
        sorted.extract::<Vec<u32>>()?
    };
    let mut rank = vec![0u32; n];
    for (position, &id) in order.iter().enumerate() {
        rank[id as usize] = position as u32;
    }
    Ok(rank)
}

fn phase_one_numbering(
    batch: &RolloutBatch,
    keys: &[u64],
    rank: &[u32],
    num_trajs: usize,
    gamma: f64,
    success_reward: f64,
    float32_terms: bool,
) -> (Vec<f64>, Vec<i64>, Vec<i64>) {
    let n = batch.len();
    // Rows of each trajectory in row order (CSR).
    let mut offsets = vec![0usize; num_trajs + 1];
    for &t in batch.trajectories() {
        offsets[t as usize + 1] += 1;
    }
    for t in 0..num_trajs {
        offsets[t + 1] += offsets[t];
    }
    let mut cursor = offsets.clone();
    let mut rows_by_traj = vec![0u32; n];
    for (row, &t) in batch.trajectories().iter().enumerate() {
        rows_by_traj[cursor[t as usize]] = row as u32;
        cursor[t as usize] += 1;
    }
    // Trajectories of each group, in rank order.
    let mut trajs_of_group: Vec<Vec<u32>> = vec![Vec::new(); batch.num_groups()];
    for (t, &g) in batch.trajectory_groups().iter().enumerate() {
        trajs_of_group[g as usize].push(t as u32);
    }
    let mut node = vec![-1i64; n];
    let mut next = vec![0i64; n];
    let mut values = vec![0f64; n];
    // gamma^k for every distance k to a trajectory's end, computed once with
    // the same `powf` (a table, not repeated products, so the values are
    // unchanged).
    let longest = (0..num_trajs).map(|t| offsets[t + 1] - offsets[t]).max().unwrap_or(0);
    let discount: Vec<f64> = (0..=longest).map(|k| gamma.powf(k as f64)).collect();
    let mut renumber: AHashMap<u64, i64> = AHashMap::new();
    let mut sums: Vec<f64> = Vec::new();
    let mut counts: Vec<u32> = Vec::new();
    for trajs in &mut trajs_of_group {
        trajs.sort_by_key(|&t| rank[t as usize]);
        renumber.clear();
        sums.clear();
        counts.clear();
        for &t in trajs.iter() {
            for &row in &rows_by_traj[offsets[t as usize]..offsets[t as usize + 1]] {
                let fresh = renumber.len() as i64;
                let id = *renumber.entry(keys[row as usize]).or_insert(fresh);
                node[row as usize] = id;
            }
        }
        sums.resize(renumber.len(), 0.0);
        counts.resize(renumber.len(), 0);
        for &t in trajs.iter() {
            let rows = &rows_by_traj[offsets[t as usize]..offsets[t as usize + 1]];
            let len = rows.len();
            let r = batch.episode_rewards()[rows[0] as usize];
            for (pos, &row) in rows.iter().enumerate() {
                let discount = discount[len - pos];
                let term = if float32_terms { (discount as f32 * r as f32) as f64 } else { discount * r };
                let id = node[row as usize] as usize;
                sums[id] += term;
                counts[id] += 1;
                next[row as usize] = match rows.get(pos + 1) {
                    Some(&after) => node[after as usize],
                    None if batch.episode_rewards()[row as usize] == success_reward => -1,
                    None => -2,
                };
            }
        }
        for &t in trajs.iter() {
            for &row in &rows_by_traj[offsets[t as usize]..offsets[t as usize + 1]] {
                let id = node[row as usize] as usize;
                values[row as usize] = sums[id] / counts[id] as f64;
            }
        }
    }
    (values, node, next)
}

/// GiGPO's similarity step groups: within each uid, rows in row order join the
/// first cluster whose first member's text is at least `threshold` similar
/// (difflib's `SequenceMatcher.ratio`, the engine's implementation). Returns a
/// dense cluster id per row (numbered uid by uid in first-seen order) and the
/// count.
#[pyfunction]
pub fn similarity_groups<'py>(
    py: Python<'py>,
    uid: &Bound<'py, PyAny>,
    texts: &Bound<'py, PyAny>,
    threshold: f64,
) -> PyResult<(Arr<'py, u32>, usize)> {
    let u = u32s(uid, "index", None)?;
    let refs = convert::texts(texts, "anchor_obs", Some(u.len()))?;
    let (ids, count) = py.detach(|| {
        no_panic(|| {
            let groups = u.iter().copied().max().map_or(0, |m| m as usize + 1);
            let mut rows_of: Vec<Vec<u32>> = vec![Vec::new(); groups];
            for (row, &g) in u.iter().enumerate() {
                rows_of[g as usize].push(row as u32);
            }
            // SAFETY: the caller's array keeps every str alive.
            let local: Vec<(Vec<u32>, u32)> = rows_of
                .par_iter()
                .map(|rows| {
                    g2po::keys::similarity::cluster(
                        rows.iter().map(|&r| unsafe { refs[r as usize].as_str() }),
                        threshold,
                    )
                })
                .collect();
            let mut base = Vec::with_capacity(groups);
            let mut total = 0u32;
            for (_, n) in &local {
                base.push(total);
                total += n;
            }
            let mut ids = vec![0u32; u.len()];
            for (g, rows) in rows_of.iter().enumerate() {
                for (&r, &c) in rows.iter().zip(&local[g].0) {
                    ids[r as usize] = base[g] + c;
                }
            }
            Ok((ids, total as usize))
        })
    })?;
    Ok((PyArray1::from_vec(py, ids), count))
}

/// Truth values of a column: a bool array read in place, an integer or float
/// array (non-zero), or an object array of anything with a truth value (the
/// trainers' numpy bools), each distinct object asked once.
#[pyfunction]
#[pyo3(signature = (values, argument="is_action_valid"))]
pub fn truth<'py>(py: Python<'py>, values: &Bound<'py, PyAny>, argument: &str) -> PyResult<Arr<'py, bool>> {
    let arr = convert::array1(values, argument)?;
    if let Ok(objects) = arr.cast::<PyArray1<Py<PyAny>>>() {
        let ro = objects.readonly();
        let slice = ro.as_slice().expect("contiguous");
        let mut seen: AHashMap<usize, bool> = AHashMap::new();
        let mut out = Vec::with_capacity(slice.len());
        for (row, item) in slice.iter().enumerate() {
            let address = item.as_ptr() as usize;
            let v = match seen.get(&address) {
                Some(&v) => v,
                None => {
                    let v = item
                        .bind(py)
                        .is_truthy()
                        .map_err(|e| Failure::type_(argument, Some(row), format!("has no truth value: {e}")))?;
                    seen.insert(address, v);
                    v
                }
            };
            out.push(v);
        }
        return Ok(PyArray1::from_vec(py, out));
    }
    if let Ok(b) = arr.cast::<PyArray1<bool>>() {
        return Ok(PyArray1::from_vec(py, b.readonly().as_slice().expect("contiguous").to_vec()));
    }
    let f = convert::floats(&arr.clone().into_any(), argument, None).or_else(|_| {
        convert::counts(&arr.clone().into_any(), argument, None).map(|v| v.into_iter().map(f64::from).collect())
    })?;
    Ok(PyArray1::from_vec(py, f.into_iter().map(|x| x != 0.0).collect()))
}

/// Per-group count, mean and unbiased std of `x` over the rows where `use_row`
/// holds (all rows when `None`). Two passes in f64; a group of one has std NaN
/// (as torch gives). With `float32`, the values are taken as float32 and the
/// mean and std rounded to float32 (torch on a float32 tensor: a float32 sum
/// divided by n; a float64 two-pass std rounded once).
fn grouped_stats(
    groups: &[u32],
    num_groups: usize,
    x: &[f64],
    float32: bool,
    use_row: Option<&[bool]>,
) -> (Vec<u32>, Vec<f64>, Vec<f64>) {
    let value = |i: usize| if float32 { x[i] as f32 as f64 } else { x[i] };
    let used = |i: usize| use_row.is_none_or(|u| u[i]);
    let mut count = vec![0u32; num_groups];
    let mut sum = vec![0f64; num_groups];
    for (i, &g) in groups.iter().enumerate() {
        if used(i) {
            count[g as usize] += 1;
            sum[g as usize] += value(i);
        }
    }
    let exact: Vec<f64> = sum.iter().zip(&count).map(|(&s, &c)| s / c as f64).collect();
    let mut sq = vec![0f64; num_groups];
    for (i, &g) in groups.iter().enumerate() {
        if used(i) {
            let d = value(i) - exact[g as usize];
            sq[g as usize] += d * d;
        }
    }
    let mean =
        if float32 { sum.iter().zip(&count).map(|(&s, &c)| (s as f32 / c as f32) as f64).collect() } else { exact };
    let std = sq
        .iter()
        .zip(&count)
        .map(|(&s, &c)| {
            let sd = if c > 1 { (s / (c - 1) as f64).sqrt() } else { f64::NAN };
            if float32 { sd as f32 as f64 } else { sd }
        })
        .collect();
    (count, mean, std)
}

/// Standardisation of row values within their groups, in one pass after the
/// statistics: `(x - mean) / (std + epsilon)`, or `x - mean` with
/// `remove_std`. A group of one member uses std 1 and mean 0 (`single =
/// "zero_mean"`: verl's episode and GRPO rule) or its own value (`"self"`:
/// GiGPO's step rule, giving 0). `stats_rows` restricts the statistics to
/// some rows. With `reference`, everything is float32 as in the references.
#[pyfunction]
#[pyo3(signature = (groups, num_groups, values, epsilon, remove_std, single, reference, stats_rows=None))]
#[allow(clippy::too_many_arguments)]
pub fn grouped_norm<'py>(
    py: Python<'py>,
    groups: &Bound<'py, PyAny>,
    num_groups: usize,
    values: &Bound<'py, PyAny>,
    epsilon: f64,
    remove_std: bool,
    single: &str,
    reference: bool,
    stats_rows: Option<&Bound<'py, PyAny>>,
) -> PyResult<Arr<'py, f64>> {
    let g_col = convert::column(groups, "groups", None, u32s)?;
    let g: &[u32] = &g_col;
    let x_col = convert::column(values, "values", Some(g.len()), convert::floats)?;
    let x: &[f64] = &x_col;
    let mask = stats_rows.map(|m| convert::bools(m, "stats_rows", Some(g.len()))).transpose()?;
    if let Some(row) = g.iter().position(|&id| id as usize >= num_groups) {
        return Err(Failure::input("groups", Some(row), "group id out of range").into());
    }
    let zero_mean = match single {
        "zero_mean" => true,
        "self" => false,
        other => return Err(Failure::config("single", format!("unknown rule {other:?}")).into()),
    };
    let (count, mean, std) = grouped_stats(g, num_groups, x, reference, mask.as_deref());
    let out: Vec<f64> = g
        .iter()
        .zip(x)
        .map(|(&k, &v)| {
            let k = k as usize;
            let one = count[k] == 1;
            let m = if one { if zero_mean { 0.0 } else { v } } else { mean[k] };
            let s = if one { 1.0 } else { std[k] };
            if reference {
                let (v, m, s) = (v as f32, m as f32, s as f32);
                (if remove_std { v - m } else { (v - m) / (s + epsilon as f32) }) as f64
            } else if remove_std {
                v - m
            } else {
                (v - m) / (s + epsilon)
            }
        })
        .collect();
    Ok(PyArray1::from_vec(py, out))
}

/// G2PO's step part (node-centric + edge-centric) per row, from the ids and
/// values phase one returned, rows in any order and duplicated.
///
/// Node ids are per uid and dense (0..k), so a node is found by offset, not
/// hashed. Checks that all members of a node carry the same value and that
/// every next node occurs in the row's uid. Node-centric: x = V(next) -
/// penalty * [invalid], standardised among the rows leaving the same node (f64,
/// as the reference; a node of one row gets 0). Edge-centric: V(next) -
/// V(node) standardised over the uid; a uid of one row has no spread: 0, or
/// with `reference` the reference's NaN (its edge term is float32 there).
#[pyfunction]
#[pyo3(signature = (uid, num_uids, group_idx, next_group_idx, step_rewards, is_action_valid, epsilon, std_norm,
                    penalty, success_value, failure_value, reference))]
#[allow(clippy::too_many_arguments)]
pub fn g2po_step<'py>(
    py: Python<'py>,
    uid: &Bound<'py, PyAny>,
    num_uids: usize,
    group_idx: &Bound<'py, PyAny>,
    next_group_idx: &Bound<'py, PyAny>,
    step_rewards: &Bound<'py, PyAny>,
    is_action_valid: &Bound<'py, PyAny>,
    epsilon: f64,
    std_norm: bool,
    penalty: f64,
    success_value: f64,
    failure_value: f64,
    reference: bool,
) -> PyResult<Arr<'py, f64>> {
    // The columns are read in place (the compat layer passes them in these
    // dtypes): copying them costs a page fault per 4 KiB whenever the heap
    // has shrunk since the last call.
    let u_col = convert::column(uid, "index", None, u32s)?;
    let n = u_col.len();
    let node_col = convert::column(group_idx, "group_idx", Some(n), i64s)?;
    let next_col = convert::column(next_group_idx, "next_group_idx", Some(n), i64s)?;
    let value_col = convert::column(step_rewards, "step_rewards", Some(n), convert::floats)?;
    let valid_col = convert::column(is_action_valid, "is_action_valid", Some(n), convert::bools)?;
    let (u, node, next): (&[u32], &[i64], &[i64]) = (&u_col, &node_col, &next_col);
    let (value, valid): (&[f64], &[bool]) = (&value_col, &valid_col);
    if let Some(row) = u.iter().position(|&g| g as usize >= num_uids) {
        return Err(Failure::input("index", Some(row), "uid id out of range").into());
    }
    let step = py.detach(|| {
        no_panic(|| {
            if let Some(row) = node.iter().position(|&k| k < 0 || k >= u32::MAX as i64) {
                let k = node[row];
                return Err(Failure::input("group_idx", Some(row), format!("node id {k} is not in 0..2^32")));
            }
            let rule = StepRule { epsilon, std_norm, penalty, success_value, failure_value, reference };
            // Every statistic is within a uid, and the trainer's row order
            // scatters a uid's rows over the batch. So the rows are first
            // partitioned by uid (one sequential read of the columns; the
            // writes go to one open end per uid), then each uid runs on its
            // own contiguous rows with its nodes' columns in L1, and the
            // uids in parallel; the results go back to row order the same
            // way. (On one thread this measured no faster than row-order
            // passes with random access to all nodes' columns; it is what lets
            // the work split across threads.) A uid's rows keep their order,
            // so every sum is taken in the same order as before and the
            // results do not depend on the thread count.
            let mut start = vec![0usize; num_uids + 1];
            for &g in u {
                start[g as usize + 1] += 1;
            }
            for g in 0..num_uids {
                start[g + 1] += start[g];
            }
            let mut cursor = start[..num_uids].to_vec();
            // The two batch-sized buffers are kept per thread between calls:
            // fresh ones cost a page fault per 4 KiB whenever the heap has
            // shrunk since the last call (in a loop of calls alone, most of
            // the call once the work itself was blocked by uid).
            let mut scratch = STEP_SCRATCH.with(|s| s.take());
            let StepScratch { packed, sorted } = &mut scratch;
            packed.clear();
            packed.resize(n, StepRow::default());
            sorted.clear();
            sorted.resize(n, 0.0);
            for row in 0..n {
                let g = u[row] as usize;
                packed[cursor[g]] =
                    StepRow { value: value[row], next: next[row], node: node[row] as u32, valid: valid[row] };
                cursor[g] += 1;
            }
            let mut chunks = Vec::with_capacity(num_uids);
            let mut rest = sorted.as_mut_slice();
            for g in 0..num_uids {
                let (head, tail) = rest.split_at_mut(start[g + 1] - start[g]);
                chunks.push((g, head));
                rest = tail;
            }
            let errors: Vec<(usize, StepError)> = chunks
                .into_par_iter()
                .filter_map(|(g, out)| step_of_uid(&packed[start[g]..start[g + 1]], &rule, out).err().map(|e| (g, e)))
                .collect();
            if !errors.is_empty() {
                // The error the row-order passes reported: a disagreeing
                // node value anywhere before any unknown next node, each at
                // its first row.
                let row_of = |(g, e): &(usize, StepError)| {
                    let row = u.iter().enumerate().filter(|&(_, &x)| x as usize == *g).nth(e.index).map_or(0, |p| p.0);
                    (!e.mismatch, row, e.first_value)
                };
                let (unknown_next, row, first_value) =
                    errors.iter().map(row_of).min_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1))).expect("an error");
                return Err(if unknown_next {
                    Failure::input(
                        "next_group_idx",
                        Some(row),
                        format!("node {} does not occur in this row's uid (no row has it as group_idx)", next[row]),
                    )
                } else {
                    Failure::input(
                        "step_rewards",
                        Some(row),
                        format!(
                            "node {} of this row's uid has value {first_value} on an earlier row but {} here",
                            node[row], value[row]
                        ),
                    )
                });
            }
            let mut cursor = start[..num_uids].to_vec();
            let step = u
                .iter()
                .map(|&g| {
                    let at = &mut cursor[g as usize];
                    *at += 1;
                    sorted[*at - 1]
                })
                .collect::<Vec<f64>>();
            if n <= SCRATCH_KEPT_ROWS {
                STEP_SCRATCH.with(|s| s.set(scratch));
            }
            Ok(step)
        })
    })?;
    Ok(PyArray1::from_vec(py, step))
}

/// The batch-sized buffers of [`g2po_step`], reused by the next call on the
/// same thread (taken out while a call runs, so a call never shares them;
/// kept only up to [`SCRATCH_KEPT_ROWS`] rows).
#[derive(Default)]
struct StepScratch {
    packed: Vec<StepRow>,
    sorted: Vec<f64>,
}

/// The largest batch whose buffers [`g2po_step`] keeps for the next call
/// (24 + 8 bytes a row: 64 MiB); larger ones are freed after the call.
const SCRATCH_KEPT_ROWS: usize = 1 << 21;

thread_local! {
    static STEP_SCRATCH: std::cell::Cell<StepScratch> = std::cell::Cell::new(StepScratch::default());
}

/// One row of [`g2po_step`], as partitioned by uid.
#[derive(Clone, Copy, Default)]
struct StepRow {
    value: f64,
    next: i64,
    node: u32,
    valid: bool,
}

/// The scalar parameters of [`g2po_step`].
struct StepRule {
    epsilon: f64,
    std_norm: bool,
    penalty: f64,
    success_value: f64,
    failure_value: f64,
    reference: bool,
}

/// The first bad row of a uid (its index among the uid's rows): a node
/// value that disagrees with an earlier row's, or (`mismatch` false) a next
/// node no row of the uid has.
struct StepError {
    index: usize,
    mismatch: bool,
    first_value: f64,
}

/// One uid of [`g2po_step`]: its rows in row order in, their step values out.
fn step_of_uid(rows: &[StepRow], rule: &StepRule, out: &mut [f64]) -> Result<(), StepError> {
    let width = rows.iter().map(|r| r.node as usize + 1).max().unwrap_or(0);
    let mut node_value = vec![f64::NAN; width];
    let mut present = vec![false; width];
    for (index, r) in rows.iter().enumerate() {
        let k = r.node as usize;
        if !present[k] {
            present[k] = true;
            node_value[k] = r.value;
        } else if node_value[k].to_bits() != r.value.to_bits() {
            return Err(StepError { index, mismatch: true, first_value: node_value[k] });
        }
    }
    let mut target = Vec::with_capacity(rows.len());
    for (index, r) in rows.iter().enumerate() {
        target.push(match r.next {
            -1 => rule.success_value,
            -2 => rule.failure_value,
            k if k >= 0 && (k as usize) < width && present[k as usize] => node_value[k as usize],
            _ => return Err(StepError { index, mismatch: false, first_value: f64::NAN }),
        });
    }
    let local: Vec<u32> = rows.iter().map(|r| r.node).collect();
    let x: Vec<f64> = rows.iter().zip(&target).map(|(r, &t)| t - if r.valid { 0.0 } else { rule.penalty }).collect();
    let (count, mean, std) = grouped_stats(&local, width, &x, false, None);
    let gain: Vec<f64> = local.iter().zip(&target).map(|(&k, &t)| t - node_value[k as usize]).collect();
    let whole = vec![0u32; rows.len()];
    let (ucount, umean, ustd) = grouped_stats(&whole, 1, &gain, rule.reference, None);
    let (ucount, umean, ustd) = (ucount[0], umean[0], ustd[0]);
    let epsilon = rule.epsilon;
    for (i, slot) in out.iter_mut().enumerate() {
        let k = local[i] as usize;
        let nc = if count[k] > 1 {
            if rule.std_norm { (x[i] - mean[k]) / (std[k] + epsilon) } else { x[i] - mean[k] }
        } else {
            0.0
        };
        *slot = if rule.reference {
            let (v, m, s) = (gain[i] as f32, umean as f32, ustd as f32);
            let ec = if rule.std_norm { (v - m) / (s + epsilon as f32) } else { v - m };
            (nc as f32 + ec) as f64
        } else {
            let ec = if !rule.std_norm {
                gain[i] - umean
            } else if ucount > 1 {
                (gain[i] - umean) / (ustd + epsilon)
            } else {
                0.0
            };
            nc + ec
        };
    }
    Ok(())
}

/// State keys of anchor `str` objects, remembered by object identity.
///
/// GiGPO's phase one sees the batch in rollout order, where anchor texts sit
/// in memory roughly in row order; phase two gets the same `str` objects after
/// the trainer reordered the rows, where reading them again means a cache miss
/// per row. The cache hashes the texts once in phase one and answers phase two
/// by address. It holds a reference to every object it remembers, so an
/// address cannot be reused by another object while the cache lives.
#[pyclass(module = "g2po_rs._native", frozen)]
pub struct AnchorCache {
    /// One reference to each remembered object, private to the cache, so
    /// none can be freed (and its address reused) while the cache lives.
    _objects: Vec<Py<PyAny>>,
    key_of: AHashMap<usize, u64>,
}

#[pymethods]
impl AnchorCache {
    /// Hashes every `str` of `texts` (an object array) and remembers it.
    #[new]
    fn new(texts: &Bound<'_, PyAny>) -> PyResult<Self> {
        let keyer = keyer(&[])?;
        let py = texts.py();
        let rows = convert::array1(texts, "anchor_obs")?.shape()[0];
        let mut objects = Vec::with_capacity(rows);
        let mut key_of = AHashMap::with_capacity(rows);
        // The reference and the map entry are taken while the hashing pass has
        // the object in cache: a numpy copy of the array afterwards
        // (one incref per row) cost more than the hashing.
        convert::text_keys_visiting(
            texts,
            "anchor_obs",
            None,
            |t| keyer.key(t),
            |object, k| {
                if key_of.insert(object.as_ptr() as usize, k).is_none() {
                    objects.push(object.clone_ref(py));
                }
            },
        )?;
        Ok(Self { _objects: objects, key_of })
    }

    /// Keys of `texts`: remembered objects by address, others hashed.
    fn keys<'py>(&self, py: Python<'py>, texts: &Bound<'py, PyAny>) -> PyResult<Arr<'py, u64>> {
        let arr = convert::array1(texts, "anchor_obs")?;
        let objects = arr
            .cast::<PyArray1<Py<PyAny>>>()
            .map_err(|_| Failure::type_("anchor_obs", None, "expected an object array of str"))?;
        let ro = objects.readonly();
        let slice = ro.as_slice().expect("contiguous");
        let mut out = Vec::with_capacity(slice.len());
        let mut missing = Vec::new();
        for (row, item) in slice.iter().enumerate() {
            match self.key_of.get(&(item.as_ptr() as usize)) {
                Some(&k) => out.push(k),
                None => {
                    missing.push(row);
                    out.push(0);
                }
            }
        }
        if !missing.is_empty() {
            let keyer = keyer(&[])?;
            for row in missing {
                let item = slice[row].bind(py);
                let text = item.cast::<pyo3::types::PyString>().map_err(|_| {
                    let ty = item.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into());
                    Failure::type_("anchor_obs", Some(row), format!("expected str, got {ty}"))
                })?;
                let s = text.to_str().map_err(|_| {
                    Failure::input("anchor_obs", Some(row), "the text cannot be encoded as UTF-8 (lone surrogate)")
                })?;
                out[row] = keyer.key(s);
            }
        }
        Ok(PyArray1::from_vec(py, out))
    }

    /// Number of distinct objects remembered.
    fn __len__(&self) -> usize {
        self.key_of.len()
    }
}
