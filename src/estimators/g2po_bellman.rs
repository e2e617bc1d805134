//! G2PO with a Bellman backup over the fused graph (SPEC 8), instead of the
//! Monte-Carlo node value.
//!
//! The node values solve `V(k) = (1 / c_k) * sum over the c_k rows leaving k
//! of gamma * V(target)`, the target being the next row's node or a terminal,
//! whose value is fixed (the episode reward or the fixed terminal value, as in
//! G2PO). Cycles and self-loops are allowed. The system always has one
//! solution: every node lies on a trajectory that reaches a terminal, so the
//! transition counts restricted to the nodes are substochastic with spectral
//! radius below 1, even at `gamma = 1`. With one visit per node the backup
//! reproduces the Monte-Carlo value `gamma^(T - t) * R_term` exactly; with
//! many it pools information along paths as well as across visits. Every
//! other formula (node- and edge-centric terms, episode part) is G2PO's.
//!
//! Two solvers, measured against each other in `benchmarks/advantages.rs`
//! (`docs/benchmarks.md`):
//! - [`BellmanMethod::Iterative`], the flat path: Gauss-Seidel sweeps over the
//!   group's rows ordered by node (a CSR layout in reused buffers), in reverse
//!   first-seen order, each node's self-loops solved in closed form, until no
//!   value moves by more than [`TOLERANCE`] times `max(1, max |V|)` (at most
//!   [`MAX_SWEEPS`] sweeps).
//! - [`BellmanMethod::ExactScc`]: first every node visited once is expressed
//!   through the chain of single visits it starts (`V = gamma^j V(m)` or
//!   `gamma^j R_term`; such chains never cycle), then the nodes visited more
//!   than once form a petgraph graph whose strongly connected components
//!   (`tarjan_scc`, which yields them in reverse topological order) are each
//!   solved exactly by Gaussian elimination with partial pivoting once the
//!   components they lead to are known.
//!
//! The estimator uses [`DEFAULT_METHOD`], the faster of the two on the
//! benchmark workload (the exact one). Both reuse their buffers across
//! groups and calls (petgraph's `Graph::clear` keeps its capacity, and
//! `TarjanScc` its stacks).

use petgraph::graph::{DiGraph, NodeIndex};

use crate::error::{Error, Result};

/// Relative convergence tolerance of [`BellmanMethod::Iterative`].
pub const TOLERANCE: f64 = 1e-12;
/// Sweep cap of [`BellmanMethod::Iterative`].
pub const MAX_SWEEPS: usize = 100_000;

/// How the Bellman system of a group is solved.
///
/// ```
/// use g2po::estimators::BellmanMethod;
/// assert_ne!(BellmanMethod::Iterative, BellmanMethod::ExactScc);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BellmanMethod {
    /// Gauss-Seidel over flat arrays, to a relative tolerance of 1e-12 (at most 100,000 sweeps).
    Iterative,
    /// Exact, per strongly connected component of a petgraph graph.
    ExactScc,
}

/// The solver the `g2po_bellman` estimator uses: the exact one, 3.9x faster than
/// Gauss-Seidel on the benchmark workload (`docs/benchmarks.md`).
pub const DEFAULT_METHOD: BellmanMethod = BellmanMethod::ExactScc;

/// Reused buffers of the solvers.
#[derive(Debug)]
pub(super) struct BellmanScratch {
    /// CSR of rows by node: node k leaves through `by_node[start[k]..start[k + 1]]`.
    start: Vec<u32>,
    by_node: Vec<u32>,
    /// Position of a node inside its component (exact solver).
    local: Vec<u32>,
    matrix: Vec<f64>,
    rhs: Vec<f64>,
    /// `V = a * V(m) + b` of each node visited once (exact solver).
    chain: Vec<Option<(f64, f64, u32)>>,
    path: Vec<u32>,
    /// The reduced graph and Tarjan's buffers, cleared and reused (no allocation
    /// once grown).
    graph: DiGraph<u32, ()>,
    tarjan: petgraph::algo::TarjanScc<NodeIndex>,
}

/// The rows of one group's graph: row `i` leaves node `node[i]` for node
/// `next[i]` (when `>= 0`) or for a terminal worth `terminal[i]` (when
/// `next[i] < 0`).
pub(super) struct Edges<'a> {
    pub(super) num_nodes: usize,
    pub(super) node: &'a [u32],
    pub(super) next: &'a [i32],
    pub(super) terminal: &'a [f64],
}

impl Default for BellmanScratch {
    fn default() -> Self {
        Self {
            start: Vec::new(),
            by_node: Vec::new(),
            local: Vec::new(),
            matrix: Vec::new(),
            rhs: Vec::new(),
            chain: Vec::new(),
            path: Vec::new(),
            graph: DiGraph::new(),
            tarjan: petgraph::algo::TarjanScc::new(),
        }
    }
}

/// Node values of one group's graph into `values`. Inputs are trusted
/// (checked by [`bellman_values`] for outside callers).
pub(super) fn solve(
    method: BellmanMethod,
    gamma: f64,
    edges: Edges<'_>,
    s: &mut BellmanScratch,
    values: &mut Vec<f64>,
) {
    let Edges { num_nodes, node, next, terminal } = edges;
    values.clear();
    values.resize(num_nodes, 0.0);
    // Rows by node (counting sort, stable).
    s.start.clear();
    s.start.resize(num_nodes + 1, 0);
    for &k in node {
        s.start[k as usize + 1] += 1;
    }
    for k in 0..num_nodes {
        s.start[k + 1] += s.start[k];
    }
    s.by_node.clear();
    s.by_node.resize(node.len(), 0);
    s.local.clear();
    s.local.extend_from_slice(&s.start[..num_nodes]);
    for (i, &k) in node.iter().enumerate() {
        let slot = &mut s.local[k as usize];
        s.by_node[*slot as usize] = i as u32;
        *slot += 1;
    }
    match method {
        BellmanMethod::Iterative => gauss_seidel(gamma, num_nodes, next, terminal, s, values),
        BellmanMethod::ExactScc => exact_scc(gamma, num_nodes, next, terminal, s, values),
    }
}

fn gauss_seidel(gamma: f64, num_nodes: usize, next: &[i32], terminal: &[f64], s: &BellmanScratch, v: &mut [f64]) {
    for _ in 0..MAX_SWEEPS {
        let (mut moved, mut largest) = (0f64, 1f64);
        // Later-seen states tend to lie closer to the terminals: sweeping them
        // first propagates terminal values through a tree or DAG in one sweep.
        for k in (0..num_nodes).rev() {
            let rows = &s.by_node[s.start[k] as usize..s.start[k + 1] as usize];
            let (mut rest, mut self_loops) = (0f64, 0f64);
            for &i in rows {
                match next[i as usize] {
                    t if t < 0 => rest += terminal[i as usize],
                    t if t as usize == k => self_loops += 1.0,
                    t => rest += v[t as usize],
                }
            }
            // V = gamma (self * V + rest) / c, solved for V.
            let new = gamma * rest / (rows.len() as f64 - gamma * self_loops);
            moved = moved.max((new - v[k]).abs());
            largest = largest.max(new.abs());
            v[k] = new;
        }
        if moved <= TOLERANCE * largest {
            return;
        }
    }
}

/// `V(k) = a * V(m) + b` for a node visited once (`m` a node visited more
/// than once, or [`NO_NODE`] when the chain ends in a terminal).
const NO_NODE: u32 = u32::MAX;

fn exact_scc(gamma: f64, num_nodes: usize, next: &[i32], terminal: &[f64], s: &mut BellmanScratch, v: &mut [f64]) {
    let visits = |k: usize, s: &BellmanScratch| s.start[k + 1] - s.start[k];
    // 1. A node visited once has one way out, so its value is gamma times its
    //    target's: follow such chains (they never cycle: a cycle would visit
    //    its nodes twice) to a node visited more than once or to a terminal.
    s.chain.clear();
    s.chain.resize(num_nodes, None);
    for k in 0..num_nodes {
        if visits(k, s) != 1 || s.chain[k].is_some() {
            continue;
        }
        s.path.clear();
        let mut cur = k;
        let mut base = loop {
            if visits(cur, s) != 1 {
                break (1.0, 0.0, cur as u32);
            }
            if let Some(known) = s.chain[cur] {
                break known;
            }
            s.path.push(cur as u32);
            let row = s.by_node[s.start[cur] as usize] as usize;
            match next[row] {
                t if t < 0 => break (0.0, terminal[row], NO_NODE),
                t => cur = t as usize,
            }
        };
        // The innermost chain node's target is `base`; each node is gamma times its target.
        for &u in s.path.iter().rev() {
            base = (gamma * base.0, gamma * base.1, base.2);
            s.chain[u as usize] = Some(base);
        }
    }
    // The value of row i's target as a * V(m) + b.
    let target = |i: usize, s: &BellmanScratch| -> (f64, f64, u32) {
        match next[i] {
            t if t < 0 => (0.0, terminal[i], NO_NODE),
            t => s.chain[t as usize].unwrap_or((1.0, 0.0, t as u32)),
        }
    };
    // 2. The nodes visited more than once, on a petgraph graph of the reduced edges.
    let mut graph = std::mem::take(&mut s.graph);
    graph.clear();
    s.local.clear();
    s.local.resize(num_nodes, NO_NODE);
    for k in 0..num_nodes {
        if visits(k, s) > 1 {
            s.local[k] = graph.add_node(k as u32).index() as u32;
        }
    }
    for k in 0..num_nodes {
        if visits(k, s) <= 1 {
            continue;
        }
        for &i in &s.by_node[s.start[k] as usize..s.start[k + 1] as usize] {
            let (a, _, m) = target(i as usize, s);
            if m != NO_NODE && a != 0.0 {
                graph.add_edge(NodeIndex::new(s.local[k] as usize), NodeIndex::new(s.local[m as usize] as usize), ());
            }
        }
    }
    // 3. Components sinks first (Tarjan's order), each solved exactly once the
    //    components it leads to are known.
    const SOLVED: u32 = u32::MAX - 1;
    s.local.fill(NO_NODE); // from here: position in the open component, or SOLVED
    let mut tarjan = std::mem::replace(&mut s.tarjan, petgraph::algo::TarjanScc::new());
    tarjan.run(&graph, |component| {
        let q = component.len();
        for (j, n) in component.iter().enumerate() {
            s.local[graph[*n] as usize] = j as u32;
        }
        s.matrix.clear();
        s.matrix.resize(q * q, 0.0);
        s.rhs.clear();
        s.rhs.resize(q, 0.0);
        // Row j: c_k V(k) - gamma * sum a V(m in component) = gamma * sum (b + a V(m outside)).
        for (j, n) in component.iter().enumerate() {
            let k = graph[*n] as usize;
            for &i in &s.by_node[s.start[k] as usize..s.start[k + 1] as usize] {
                s.matrix[j * q + j] += 1.0;
                let (a, b, m) = target(i as usize, s);
                s.rhs[j] += gamma * b;
                if m != NO_NODE && a != 0.0 {
                    match s.local[m as usize] {
                        SOLVED => s.rhs[j] += gamma * a * v[m as usize],
                        local => s.matrix[j * q + local as usize] -= gamma * a,
                    }
                }
            }
        }
        gaussian_elimination(q, &mut s.matrix, &mut s.rhs);
        for (j, n) in component.iter().enumerate() {
            let k = graph[*n] as usize;
            v[k] = s.rhs[j];
            s.local[k] = SOLVED;
        }
    });
    s.tarjan = tarjan;
    s.graph = graph;
    // 4. Back to the nodes visited once.
    for k in 0..num_nodes {
        if let Some((a, b, m)) = s.chain[k] {
            v[k] = b + if m == NO_NODE { 0.0 } else { a * v[m as usize] };
        }
    }
}

/// Solves `a x = b` in place (`b` becomes `x`), partial pivoting. The
/// matrices here are nonsingular M-matrices (see the module docs).
fn gaussian_elimination(q: usize, a: &mut [f64], b: &mut [f64]) {
    for col in 0..q {
        let pivot = (col..q).max_by(|&x, &y| a[x * q + col].abs().total_cmp(&a[y * q + col].abs())).unwrap_or(col);
        if pivot != col {
            for c in 0..q {
                a.swap(col * q + c, pivot * q + c);
            }
            b.swap(col, pivot);
        }
        let d = a[col * q + col];
        for row in col + 1..q {
            let f = a[row * q + col] / d;
            if f != 0.0 {
                for c in col..q {
                    a[row * q + c] -= f * a[col * q + c];
                }
                b[row] -= f * b[col];
            }
        }
    }
    for col in (0..q).rev() {
        let mut x = b[col];
        for c in col + 1..q {
            x -= a[col * q + c] * b[c];
        }
        b[col] = x / a[col * q + col];
    }
}

/// The Bellman node values of one graph, for callers with their own graph
/// (and for measuring the two solvers). Row `i` leaves node `node[i]`
/// (`0..num_nodes`) for node `next[i]` (when `>= 0`) or for a terminal worth
/// `terminal[i]` (when `next[i] < 0`; other rows' `terminal` entries are
/// ignored).
///
/// # Errors
/// [`Error::LengthMismatch`] for columns of different lengths,
/// [`Error::BadAdvantages`] for a node id out of range or a node without a
/// path to a terminal (the system would be singular), and
/// [`Error::InvalidParameter`] for `gamma` outside `[0, 1]`.
///
/// ```
/// use g2po::estimators::{bellman_values, BellmanMethod};
/// // Node 0 loops on itself once, then moves to node 1, which ends in a terminal worth 10.
/// let v = bellman_values(2, &[0, 0, 1], &[0, 1, -1], &[0.0, 0.0, 10.0], 0.5, BellmanMethod::ExactScc)?;
/// // V(1) = 0.5 * 10 = 5; V(0) = 0.5 * (V(0) + V(1)) / 2, so V(0) = 5 / 3.
/// assert!((v[1] - 5.0).abs() < 1e-12 && (v[0] - 5.0 / 3.0).abs() < 1e-12);
/// # Ok::<(), g2po::Error>(())
/// ```
pub fn bellman_values(
    num_nodes: usize,
    node: &[u32],
    next: &[i32],
    terminal: &[f64],
    gamma: f64,
    method: BellmanMethod,
) -> Result<Vec<f64>> {
    for (field, len) in [("next", next.len()), ("terminal", terminal.len())] {
        if len != node.len() {
            return Err(Error::LengthMismatch { field, expected: node.len(), found: len });
        }
    }
    if !(gamma.is_finite() && (0.0..=1.0).contains(&gamma)) {
        return Err(Error::InvalidParameter { name: "gamma", reason: "must lie in [0, 1]".into() });
    }
    let bad = |row: usize, column, reason: String| Error::BadAdvantages { row, column, reason };
    for (i, (&k, &t)) in node.iter().zip(next).enumerate() {
        if k as usize >= num_nodes {
            return Err(bad(i, "node", format!("node {k} of {num_nodes}")));
        }
        if t >= 0 && t as usize >= num_nodes {
            return Err(bad(i, "next_node", format!("node {t} of {num_nodes}")));
        }
        if t < 0 && !terminal[i].is_finite() {
            return Err(bad(i, "terminal", format!("terminal value {} is not finite", terminal[i])));
        }
    }
    // Every node must reach a terminal: walk the reversed edges back from them.
    let mut reaches = vec![false; num_nodes];
    let mut into: Vec<Vec<u32>> = vec![Vec::new(); num_nodes];
    let mut stack = Vec::new();
    for (&k, &t) in node.iter().zip(next) {
        if t < 0 {
            if !reaches[k as usize] {
                reaches[k as usize] = true;
                stack.push(k);
            }
        } else {
            into[t as usize].push(k);
        }
    }
    while let Some(k) = stack.pop() {
        for &p in &into[k as usize] {
            if !reaches[p as usize] {
                reaches[p as usize] = true;
                stack.push(p);
            }
        }
    }
    if let Some(k) = (0..num_nodes).find(|&k| !reaches[k]) {
        let row = node.iter().position(|&n| n as usize == k).unwrap_or(0);
        return Err(bad(row, "node", format!("node {k} has no path to a terminal (or no rows)")));
    }
    let mut values = Vec::new();
    let edges = Edges { num_nodes, node, next, terminal };
    solve(method, gamma, edges, &mut BellmanScratch::default(), &mut values);
    Ok(values)
}
