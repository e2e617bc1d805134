//! The machinery every estimator shares: state grouping (keys -> dense node
//! ids per task group), per-thread scratch, the parallel pass over groups,
//! group statistics, and the scatter back into row order.
//!
//! The estimators themselves (one file each) only see one group at a time,
//! through a [`GroupContext`] and that group's output [`Block`].

use std::borrow::Cow;
use std::ops::Range;

use ahash::AHashMap;
use rayon::prelude::*;

use super::columns::{Block, ScatterBuffers};
use super::g2po_bellman::BellmanScratch;
use super::{
    Advantages, EstimatorConfig, EstimatorKind, Grouping, Normalization, g2po, g2po_tree, gigpo, grpo, grpo_passk,
    reinforce_plus_plus_baseline, rloo,
};
use crate::error::{Error, Result};
use crate::keys::StateKeyer;
use crate::keys::similarity;
use crate::rollout::{Anchor, RolloutBatch};

/// Batch-wide buffers of one [`super::Estimator`], kept across calls so that a
/// call with the shapes of an earlier one allocates nothing.
#[derive(Debug, Default)]
pub(super) struct Workspace {
    /// State keys of a text batch.
    keys: Vec<u64>,
    /// Position of each row within its group's block (non-contiguous batches).
    row_pos: Vec<u32>,
    /// Nodes / step groups per task group.
    node_counts: Vec<u32>,
    /// GiGPO's batch-wide renumbering: first global id of each group, id map.
    base: Vec<usize>,
    global: Vec<u32>,
    /// Spare columns for the scatter into row order.
    scatter: ScatterBuffers,
}

/// Groups whose rows add up to at most this many are processed one after the
/// other on one thread: splitting finer costs more than it gains.
const SEQUENTIAL_ROWS: usize = 2048;

/// Runs the estimator described by `cfg` over `batch` into `out`.
pub(super) fn estimate_into(
    cfg: &EstimatorConfig,
    keyer: &StateKeyer,
    batch: &RolloutBatch,
    out: &mut Advantages,
    ws: &mut Workspace,
) -> Result<()> {
    let uses_states = cfg.kind.uses_states();
    let similarity = match cfg.grouping {
        Grouping::Similarity { threshold } if uses_states => {
            if !batch.has_text() {
                return Err(Error::SimilarityNeedsText);
            }
            Some(threshold)
        }
        _ => None,
    };
    match cfg.kind {
        EstimatorKind::Ppo => {
            return Err(Error::InvalidParameter {
                name: "estimator",
                reason: "ppo needs the critic's values: use estimators::TurnGae (the trainer runs it with a critic)"
                    .into(),
            });
        }
        EstimatorKind::GrpoPassk => grpo_passk::check(batch)?,
        EstimatorKind::ReinforcePlusPlusBaseline => reinforce_plus_plus_baseline::check(batch)?,
        _ => {}
    }
    let Workspace { keys, row_pos, node_counts, base, global, scatter } = ws;
    let keys: &[u64] = match batch.keys() {
        _ if !uses_states || similarity.is_some() => &[],
        Some(own) => own,
        None => {
            keys.resize(batch.len(), 0);
            keys.par_iter_mut().with_min_len(1024).enumerate().for_each(|(row, key)| {
                if let Anchor::Text(text) = batch.anchor(row) {
                    *key = keyer.key(text);
                }
            });
            keys
        }
    };
    let contiguous = batch.groups_contiguous();
    if !contiguous {
        positions_in_group(batch, row_pos);
    }
    let row_pos = (!contiguous).then_some(row_pos.as_slice());
    let ctx = GroupContext { batch, cfg, keys, similarity, keyer, row_pos };

    out.reshape(cfg.kind.columns(), batch.len());
    node_counts.clear();
    node_counts.resize(batch.num_groups(), 0);
    process_groups(&ctx, 0..batch.num_groups(), out.whole(), node_counts);

    if cfg.kind == EstimatorKind::ReinforcePlusPlusBaseline {
        // Still in group (CSR) order: take the response lengths in that order.
        let lens = batch.rows_by_group().iter().map(|&r| batch.response_lens()[r as usize]);
        reinforce_plus_plus_baseline::whiten(&out.episode, lens, &mut out.advantage);
    }
    if cfg.kind == EstimatorKind::Gigpo {
        renumber_step_groups_batch_wide(batch, &mut out.node, node_counts, row_pos, base, global);
    }
    if !contiguous {
        out.scatter_to_rows(batch.rows_by_group(), scatter);
    }
    Ok(())
}

/// Computes the groups `groups`, whose output rows are `block`, splitting the
/// range in halves over rayon (`rayon::join` needs no allocation, unlike a
/// collected list of blocks).
fn process_groups(ctx: &GroupContext<'_>, groups: Range<usize>, mut block: Block<'_>, counts: &mut [u32]) {
    let offsets = ctx.batch.group_offsets();
    if groups.len() == 1 || offsets[groups.end] - offsets[groups.start] <= SEQUENTIAL_ROWS {
        for (group, count) in groups.zip(counts) {
            let mut own = block.split_off_front(offsets[group + 1] - offsets[group]);
            // Taken out of the thread-local, never borrowed across the group: user code
            // (a canonicaliser, the similarity search) may run rayon work on this thread,
            // which can start another group here; that one then gets a fresh scratch.
            let mut scratch = SCRATCH.take();
            *count = ctx.process(group, &mut own, &mut scratch);
            SCRATCH.set(scratch);
        }
        return;
    }
    let mid = groups.start + groups.len() / 2;
    let front = block.split_off_front(offsets[mid] - offsets[groups.start]);
    let (front_counts, back_counts) = counts.split_at_mut(mid - groups.start);
    rayon::join(
        || process_groups(ctx, groups.start..mid, front, front_counts),
        || process_groups(ctx, mid..groups.end, block, back_counts),
    );
}

/// Position of each row within its group's CSR block (non-contiguous batches).
fn positions_in_group(batch: &RolloutBatch, pos: &mut Vec<u32>) {
    pos.clear();
    pos.resize(batch.len(), 0);
    for g in 0..batch.num_groups() {
        for (i, &row) in batch.group_rows(g).iter().enumerate() {
            pos[row as usize] = i as u32;
        }
    }
}

/// GiGPO's step groups are numbered per batch in first-seen row order; the
/// parallel pass numbered them per group.
fn renumber_step_groups_batch_wide(
    batch: &RolloutBatch,
    node: &mut [i32],
    node_counts: &[u32],
    row_pos: Option<&[u32]>,
    base: &mut Vec<usize>,
    global: &mut Vec<u32>,
) {
    let offsets = batch.group_offsets();
    base.clear();
    base.push(0usize);
    for &c in node_counts {
        base.push(base[base.len() - 1] + c as usize);
    }
    global.clear();
    global.resize(base[base.len() - 1], u32::MAX);
    let mut next_id = 0u32;
    for (row, &g) in batch.groups().iter().enumerate() {
        let g = g as usize;
        let pos = offsets[g] + row_pos.map_or_else(|| row - offsets[g], |p| p[row] as usize);
        let slot = &mut global[base[g] + node[pos] as usize];
        if *slot == u32::MAX {
            *slot = next_id;
            next_id += 1;
        }
        node[pos] = *slot as i32;
    }
}

thread_local! {
    /// Each worker thread keeps its buffers across groups and across calls,
    /// so steady-state estimation allocates nothing per group. Only ever
    /// moved in and out (`take`/`set`), so a re-entrant use cannot conflict.
    static SCRATCH: std::cell::Cell<Scratch> = std::cell::Cell::new(Scratch::default());
}

/// Per-thread buffers (see [`SCRATCH`]).
#[derive(Debug, Default)]
pub(super) struct Scratch {
    pub(super) node_of_key: AHashMap<u64, u32>,
    pub(super) node: Vec<u32>,
    pub(super) value: Vec<f64>,
    pub(super) node_value: Vec<f64>,
    pub(super) stats: NodeStats,
    pub(super) traj_rewards: Vec<f64>,
    /// gamma^k for k = 0, 1, ...; grown on demand (gamma is fixed per estimate).
    pub(super) gamma_pow: Vec<f64>,
    /// The gamma `gamma_pow` was built for (scratch outlives one estimate).
    pub(super) gamma_pow_base: f64,
    /// Path keys of the history tree.
    pub(super) path: Vec<u64>,
    /// The Bellman solvers' buffers.
    pub(super) bellman: BellmanScratch,
}

/// Per-node count, sum, mean and unbiased std of a per-row quantity.
#[derive(Debug, Default)]
pub(super) struct NodeStats {
    pub(super) sum: Vec<f64>,
    pub(super) count: Vec<u32>,
    pub(super) mean: Vec<f64>,
    pub(super) std: Vec<f64>,
}

impl NodeStats {
    /// Counts and sums only (node values need no spread).
    pub(super) fn accumulate(&mut self, nodes: &[u32], num_nodes: usize, x: impl Fn(usize) -> f64) {
        self.sum.clear();
        self.sum.resize(num_nodes, 0.0);
        self.count.clear();
        self.count.resize(num_nodes, 0);
        for (i, &node) in nodes.iter().enumerate() {
            self.sum[node as usize] += x(i);
            self.count[node as usize] += 1;
        }
        self.mean.clear();
        self.mean.extend(self.sum.iter().zip(&self.count).map(|(&sum, &c)| sum / c as f64));
    }

    /// Means and unbiased stds (two passes; a single visit has std 0).
    pub(super) fn compute(&mut self, nodes: &[u32], num_nodes: usize, x: impl Fn(usize) -> f64) {
        self.accumulate(nodes, num_nodes, &x);
        self.std.clear();
        self.std.resize(num_nodes, 0.0);
        for (i, &node) in nodes.iter().enumerate() {
            let d = x(i) - self.mean[node as usize];
            self.std[node as usize] += d * d;
        }
        for (sq, &c) in self.std.iter_mut().zip(&self.count) {
            *sq = if c > 1 { (*sq / (c - 1) as f64).sqrt() } else { 0.0 };
        }
    }
}

/// What one group's computation reads: the batch, the configuration and the
/// batch-wide inputs computed before the parallel pass.
pub(super) struct GroupContext<'a> {
    pub(super) batch: &'a RolloutBatch,
    pub(super) cfg: &'a EstimatorConfig,
    keys: &'a [u64],
    similarity: Option<f64>,
    keyer: &'a StateKeyer,
    row_pos: Option<&'a [u32]>,
}

/// Mean and unbiased standard deviation (two passes). One element: std 0.
pub(super) fn mean_std(values: impl Iterator<Item = f64> + Clone) -> (f64, f64, usize) {
    let (mut sum, mut n) = (0.0, 0usize);
    for v in values.clone() {
        sum += v;
        n += 1;
    }
    let mean = sum / n as f64;
    if n < 2 {
        return (mean, 0.0, n);
    }
    let sq: f64 = values.map(|v| (v - mean) * (v - mean)).sum();
    (mean, (sq / (n - 1) as f64).sqrt(), n)
}

impl GroupContext<'_> {
    /// `(x - mean) / (std + epsilon)` or `x - mean`, by the configured mode.
    pub(super) fn standardise(&self, x: f64, mean: f64, std: f64) -> f64 {
        match self.cfg.norm {
            Normalization::MeanStd => {
                let scale = std + self.cfg.epsilon;
                // epsilon = 0 with zero spread: every x equals the mean.
                if scale > 0.0 { (x - mean) / scale } else { 0.0 }
            }
            Normalization::Mean => x - mean,
        }
    }

    /// Position within this group's block of a row of the group.
    pub(super) fn pos(&self, row: u32, group_start: u32) -> usize {
        match self.row_pos {
            Some(p) => p[row as usize] as usize,
            None => (row - group_start) as usize,
        }
    }

    /// Row score `s = R - p * [invalid]` (SPEC 1).
    pub(super) fn score(&self, row: usize) -> f64 {
        self.batch.episode_rewards()[row] - self.penalty(row)
    }

    /// The invalid-action penalty of a row (0 when valid).
    pub(super) fn penalty(&self, row: usize) -> f64 {
        if self.batch.valid()[row] { 0.0 } else { self.cfg.invalid_penalty }
    }

    /// Computes one group's columns; returns its number of nodes/step groups.
    fn process(&self, group: usize, out: &mut Block<'_>, s: &mut Scratch) -> u32 {
        let rows = self.batch.group_rows(group);
        match self.cfg.kind {
            EstimatorKind::Rloo => rloo::advantage(self, rows, out, s),
            EstimatorKind::ReinforcePlusPlusBaseline => reinforce_plus_plus_baseline::baseline(self, rows, out, s),
            EstimatorKind::GrpoPassk => grpo_passk::advantage(self, rows, out),
            _ => grpo::episode(self, rows, out, s),
        }
        if !self.cfg.kind.uses_states() {
            return 0;
        }
        let num_nodes = self.assign_nodes(rows, s);
        let start = rows[0];
        if self.cfg.kind == EstimatorKind::Gigpo {
            gigpo::step_part(self, rows, start, num_nodes, out, s);
        } else {
            g2po::graph_part(self, rows, start, num_nodes, out, s);
        }
        num_nodes
    }

    /// Dense node ids in first-seen row order into `s.node`: states by exact key
    /// or similarity cluster; for the history tree, states with their paths.
    fn assign_nodes(&self, rows: &[u32], s: &mut Scratch) -> u32 {
        s.node.clear();
        let tree = self.cfg.kind == EstimatorKind::G2poTree;
        if let Some(threshold) = self.similarity {
            let texts: Vec<Cow<'_, str>> = rows
                .iter()
                .map(|&r| match self.batch.anchor(r as usize) {
                    Anchor::Text(t) => self.keyer.canonical(t),
                    Anchor::Key(_) => unreachable!("similarity requires text, checked in estimate"),
                })
                .collect();
            let (ids, n) = similarity::cluster(texts.iter().map(|t| t.as_ref()), threshold);
            if !tree {
                s.node.extend(ids);
                return n;
            }
            s.path.clear();
            s.path.extend(ids.iter().map(|&c| u64::from(c)));
        } else if tree {
            s.path.clear();
            s.path.extend(rows.iter().map(|&r| self.keys[r as usize]));
        }
        let keys: &[u64] = if tree {
            g2po_tree::path_keys(self, rows, &mut s.path);
            &s.path
        } else {
            &[]
        };
        s.node_of_key.clear();
        for (i, &r) in rows.iter().enumerate() {
            let key = if tree { keys[i] } else { self.keys[r as usize] };
            let next = s.node_of_key.len() as u32;
            let id = *s.node_of_key.entry(key).or_insert(next);
            s.node.push(id);
        }
        s.node_of_key.len() as u32
    }
}
