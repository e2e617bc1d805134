//! GiGPO (SPEC 2; arXiv 2505.10978): GRPO's episode part plus a step part,
//! the discounted return standardised within its anchor (step) group.
//!
//! `G_t = r_t + gamma * G_{t+1}` backwards per trajectory, then minus `p` for
//! an invalid step (the penalty does not propagate); step groups are the rows
//! of one task group with the same state; a step group of one gets 0.
//! `A = A_E + w * A_S`.

use super::columns::{Block, ColumnSet};
use super::engine::{GroupContext, Scratch};
use crate::rollout::NO_NEXT;

/// The columns GiGPO fills.
pub(super) const COLUMNS: ColumnSet = ColumnSet { step: true, step_return: true, node: true, ..super::grpo::COLUMNS };

/// Writes the step part of one group (its episode part is already in `out`).
pub(super) fn step_part(
    ctx: &GroupContext<'_>,
    rows: &[u32],
    start: u32,
    num_nodes: u32,
    out: &mut Block<'_>,
    s: &mut Scratch,
) {
    let b = ctx.batch;
    let gamma = ctx.cfg.gamma;
    // Discounted returns, backwards: a row's next step always comes later
    // in row order, so a reverse pass sees it first.
    let returns = &mut s.value;
    returns.clear();
    returns.resize(rows.len(), 0.0);
    for (i, &r) in rows.iter().enumerate().rev() {
        let next = b.next_rows()[r as usize];
        let future = if next == NO_NEXT { 0.0 } else { returns[ctx.pos(next, start)] };
        returns[i] = b.rewards()[r as usize] + gamma * future;
    }
    // The penalty is applied after discounting, so it does not propagate.
    for (i, &r) in rows.iter().enumerate() {
        returns[i] -= ctx.penalty(r as usize);
    }
    let stats = &mut s.stats;
    stats.compute(&s.node, num_nodes as usize, |i| returns[i]);
    for (i, &node) in s.node.iter().enumerate() {
        let k = node as usize;
        let step = if stats.count[k] > 1 { ctx.standardise(returns[i], stats.mean[k], stats.std[k]) } else { 0.0 };
        out.step[i] = step as f32;
        out.step_return[i] = returns[i] as f32;
        out.node[i] = node as i32;
        out.advantage[i] = (out.episode[i] as f64 + ctx.cfg.step_weight * step) as f32;
    }
}
