//! GRPO (SPEC 1; DeepSeekMath, verl): the row score standardised over its
//! task group. Its value is also the episode part of GiGPO and G2PO.
//!
//! `A = (s - mean_u) / (sd_u + eps)` ("mean_std_norm") or `s - mean_u`
//! ("mean_norm"), with `s = R - p * [invalid]`, the statistics over the
//! group's step rows (or over its episode rewards with
//! [`StatsOver::Trajectories`]); a one-row group uses mean 0 and sd 1, as verl does.

use super::StatsOver;
use super::columns::{Block, ColumnSet};
use super::engine::{GroupContext, Scratch, mean_std};

/// The columns GRPO fills.
pub(super) const COLUMNS: ColumnSet = ColumnSet { advantage: true, episode: true, ..ColumnSet::NONE };

/// Mean and std of the episode statistics of a group (one-row groups: 0, 1).
pub(super) fn episode_stats(ctx: &GroupContext<'_>, rows: &[u32], s: &mut Scratch) -> (f64, f64) {
    let b = ctx.batch;
    let (mean, std, n) = match ctx.cfg.stats_over {
        StatsOver::Rows => mean_std(rows.iter().map(|&r| ctx.score(r as usize))),
        StatsOver::Trajectories => {
            s.traj_rewards.clear();
            s.traj_rewards
                .extend(rows.iter().filter(|&&r| b.steps()[r as usize] == 0).map(|&r| b.episode_rewards()[r as usize]));
            mean_std(s.traj_rewards.iter().copied())
        }
    };
    if n == 1 { (0.0, 1.0) } else { (mean, std) }
}

/// Writes the episode part (GRPO's advantage) of one group into `episode`
/// and `advantage`.
pub(super) fn episode(ctx: &GroupContext<'_>, rows: &[u32], out: &mut Block<'_>, s: &mut Scratch) {
    let (mean, std) = episode_stats(ctx, rows, s);
    for (i, &r) in rows.iter().enumerate() {
        let e = ctx.standardise(ctx.score(r as usize), mean, std);
        out.episode[i] = e as f32;
        out.advantage[i] = e as f32;
    }
}
