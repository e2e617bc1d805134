//! RLOO, REINFORCE leave-one-out (SPEC 7; arXiv 2402.14740; verl `rloo`).
//!
//! With `n` the rows of the task group (or its trajectories with
//! [`StatsOver::Trajectories`]) and `m` the mean score over them:
//! `A = s * n / (n - 1) - m * n / (n - 1)`, which is `s` minus the mean of the
//! other `n - 1` scores; a group with `n = 1` gets `A = s`. There is no
//! standardisation (the mode is ignored), as in verl.

use super::StatsOver;
use super::columns::{Block, ColumnSet};
use super::engine::{GroupContext, Scratch, mean_std};

/// The columns RLOO fills (`episode` repeats `advantage`).
pub(super) const COLUMNS: ColumnSet = super::grpo::COLUMNS;

/// Writes one group's advantages.
pub(super) fn advantage(ctx: &GroupContext<'_>, rows: &[u32], out: &mut Block<'_>, s: &mut Scratch) {
    let b = ctx.batch;
    let (mean, _, n) = match ctx.cfg.stats_over {
        StatsOver::Rows => mean_std(rows.iter().map(|&r| ctx.score(r as usize))),
        StatsOver::Trajectories => {
            s.traj_rewards.clear();
            s.traj_rewards
                .extend(rows.iter().filter(|&&r| b.steps()[r as usize] == 0).map(|&r| b.episode_rewards()[r as usize]));
            mean_std(s.traj_rewards.iter().copied())
        }
    };
    let scale = if n > 1 { n as f64 / (n - 1) as f64 } else { 1.0 };
    for (i, &r) in rows.iter().enumerate() {
        let score = ctx.score(r as usize);
        let a = if n > 1 { score * scale - mean * scale } else { score };
        out.advantage[i] = a as f32;
        out.episode[i] = a as f32;
    }
}
