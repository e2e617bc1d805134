//! G2PO (SPEC 3; arXiv 2606.22995): GRPO's episode part plus a node-centric
//! and an edge-centric term on the state graph of each task group.
//!
//! Visits of a node pool into its value `V(k)` = mean of `gamma^(T - t) * R_term`
//! over every visit, `R_term` the value of the terminal the visit's trajectory
//! ends in (its episode reward, or the fixed terminal value: the same
//! mapping for visits and terminals, so the two are on one scale); each step is an edge to the next row's node or to a
//! terminal. Node-centric: `V(k') - p * [invalid]` standardised among the rows
//! leaving the same node (one visit: 0). Edge-centric: the TD error
//! `V(k') - V(k)` standardised over all rows of the group (one row: 0).
//! `A = C_EP + w * (C_NC + C_EC)`.
//!
//! The per-row formulas that other back ends repeat (the CUDA stage inputs)
//! are the public-in-crate functions here, so they live in one place.

use super::columns::{Block, ColumnSet, FAILURE_TERMINAL, SUCCESS_TERMINAL};
use super::engine::{GroupContext, Scratch, mean_std};
use super::{EstimatorConfig, EstimatorKind, TerminalValues, g2po_bellman};
use crate::rollout::NO_NEXT;

/// The columns G2PO fills.
pub(super) const COLUMNS: ColumnSet = ColumnSet {
    step: true,
    node_centric: true,
    edge_centric: true,
    node: true,
    next_node: true,
    node_value: true,
    next_value: true,
    ..super::grpo::COLUMNS
};

/// Whether a trajectory with this episode reward ends in the success terminal.
pub(crate) fn is_success(episode_reward: f64) -> bool {
    episode_reward > 0.0
}

/// The value of the terminal a trajectory with this episode reward ends in.
pub(crate) fn terminal_value(cfg: &EstimatorConfig, episode_reward: f64) -> f64 {
    match cfg.terminal {
        TerminalValues::EpisodeReward => episode_reward,
        TerminalValues::Fixed { success, .. } if is_success(episode_reward) => success,
        TerminalValues::Fixed { failure, .. } => failure,
    }
}

/// Value of one visit: `gamma^(T - t) * R_term`, with `discount` = `gamma^(T - t)`
/// (computed by repeated multiplication, as every back end must, since `powi` may
/// differ in the last bit).
pub(crate) fn visit_value(cfg: &EstimatorConfig, discount: f64, episode_reward: f64) -> f64 {
    discount * terminal_value(cfg, episode_reward)
}

/// Writes the node- and edge-centric terms of one group (its episode part is
/// already in `out`). Node values are the Monte-Carlo means, or the Bellman
/// backup for [`EstimatorKind::G2poBellman`].
pub(super) fn graph_part(
    ctx: &GroupContext<'_>,
    rows: &[u32],
    start: u32,
    num_nodes: u32,
    out: &mut Block<'_>,
    s: &mut Scratch,
) {
    let b = ctx.batch;
    let cfg = ctx.cfg;
    let Scratch {
        node: nodes, value: next_value, node_value: values, stats, gamma_pow, gamma_pow_base, bellman, ..
    } = s;

    // Where each step leads: the next row's node, or a terminal and its value.
    next_value.clear();
    for (i, &r) in rows.iter().enumerate() {
        let r = r as usize;
        let next = b.next_rows()[r];
        if next == NO_NEXT {
            let reward = b.episode_rewards()[r];
            out.next_node[i] = if is_success(reward) { SUCCESS_TERMINAL } else { FAILURE_TERMINAL };
            next_value.push(terminal_value(cfg, reward));
        } else {
            out.next_node[i] = nodes[ctx.pos(next, start)] as i32;
            next_value.push(0.0); // the node's value, once known
        }
    }

    if cfg.kind == EstimatorKind::G2poBellman {
        let edges = g2po_bellman::Edges {
            num_nodes: num_nodes as usize,
            node: nodes,
            next: out.next_node,
            terminal: next_value,
        };
        g2po_bellman::solve(g2po_bellman::DEFAULT_METHOD, cfg.gamma, edges, bellman, values);
    } else {
        if gamma_pow.is_empty() || gamma_pow_base.to_bits() != cfg.gamma.to_bits() {
            gamma_pow.clear();
            gamma_pow.push(1.0);
            *gamma_pow_base = cfg.gamma;
        }
        for &r in rows {
            let traj = b.trajectories()[r as usize] as usize;
            let len = b.trajectory_lens()[traj] as usize;
            while gamma_pow.len() <= len {
                gamma_pow.push(gamma_pow[gamma_pow.len() - 1] * cfg.gamma);
            }
        }
        // Node values: mean of gamma^(T - t) * R_term over every visit.
        stats.accumulate(nodes, num_nodes as usize, |i| {
            let r = rows[i] as usize;
            let traj = b.trajectories()[r] as usize;
            let remaining = b.trajectory_lens()[traj] - b.steps()[r];
            visit_value(cfg, gamma_pow[remaining as usize], b.episode_rewards()[r])
        });
        values.clear();
        values.extend_from_slice(&stats.mean);
    }

    for (i, &k) in nodes.iter().enumerate() {
        if out.next_node[i] >= 0 {
            next_value[i] = values[out.next_node[i] as usize];
        }
        out.next_value[i] = next_value[i] as f32;
        out.node[i] = k as i32;
        out.node_value[i] = values[k as usize] as f32;
    }

    // Edge-centric: TD error standardised over the whole group graph.
    let td = |i: usize| next_value[i] - values[nodes[i] as usize];
    let (td_mean, td_std, n) = mean_std((0..rows.len()).map(td));
    // A one-row group has no spread to standardise by (the reference
    // yields NaN): no edge signal.
    let edge = |i: usize| if n > 1 { ctx.standardise(td(i), td_mean, td_std) } else { 0.0 };

    // Node-centric: next value minus penalty, standardised among the
    // rows leaving the same node.
    let x = |i: usize| next_value[i] - ctx.penalty(rows[i] as usize);
    stats.compute(nodes, num_nodes as usize, x);
    for (i, &node) in nodes.iter().enumerate() {
        let k = node as usize;
        let nc = if stats.count[k] > 1 { ctx.standardise(x(i), stats.mean[k], stats.std[k]) } else { 0.0 };
        let ec = edge(i);
        out.node_centric[i] = nc as f32;
        out.edge_centric[i] = ec as f32;
        out.step[i] = (nc + ec) as f32;
        out.advantage[i] = (out.episode[i] as f64 + cfg.step_weight * (nc + ec)) as f32;
    }
}
