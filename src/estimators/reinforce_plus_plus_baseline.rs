//! REINFORCE++-baseline (SPEC 7; arXiv 2501.03262; verl
//! `reinforce_plus_plus_baseline`).
//!
//! Per task group, `a = s - mean_u(s)` (mean 0 for a one-row group; the mean
//! over episode rewards with [`StatsOver::Trajectories`]); `a` is broadcast
//! to the row's response tokens and whitened over ALL response tokens of the
//! batch: `(x - mu) / sqrt(var + 1e-8)`, `mu` and the unbiased `var` taken over
//! the tokens (Bessel `L / (L - 1)` for `L` tokens), as verl's `masked_whiten`.
//!
//! Every token of a row carries the same `a` before whitening, so the token
//! statistics are the row values weighted by their response lengths, and the
//! whitened value is again the same on every token of the row: the engine
//! computes exactly the token layout's statistics (summing per row, weight =
//! token count) and stores the per-row result, which [`crate::broadcast`]
//! spreads to the tokens. `tests/estimators_verl.rs` checks this against a
//! literal masked whitening of the padded token matrix. `episode` holds `a`
//! before whitening. A row without response tokens gets the whitened value of
//! its `a` but contributes nothing to the statistics.

use super::StatsOver;
use super::columns::{Block, ColumnSet};
use super::engine::{GroupContext, Scratch, mean_std};
use crate::error::{Error, Result};
use crate::rollout::RolloutBatch;

/// The columns REINFORCE++-baseline fills.
pub(super) const COLUMNS: ColumnSet = super::grpo::COLUMNS;

/// verl's whitening epsilon.
const WHITEN_EPSILON: f64 = 1e-8;

/// The batch must hold at least two response tokens (verl raises otherwise:
/// the unbiased variance of one token divides by zero).
pub(super) fn check(batch: &RolloutBatch) -> Result<()> {
    let tokens: u64 = batch.response_lens().iter().map(|&l| u64::from(l)).sum();
    if tokens < 2 {
        return Err(Error::TooFewTokens { found: tokens as usize, needed: 2 });
    }
    Ok(())
}

/// Writes one group's baseline-subtracted scores into `episode` (the batch
/// whitening comes after every group, in [`whiten`]).
pub(super) fn baseline(ctx: &GroupContext<'_>, rows: &[u32], out: &mut Block<'_>, s: &mut Scratch) {
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
    let mean = if n == 1 { 0.0 } else { mean };
    for (i, &r) in rows.iter().enumerate() {
        out.episode[i] = (ctx.score(r as usize) - mean) as f32;
    }
}

/// Whitens `episode` over the batch's response tokens into `advantage`
/// (both columns in the same order as `lens`).
pub(super) fn whiten(episode: &[f32], lens: impl Iterator<Item = u32> + Clone, advantage: &mut [f32]) {
    let (mut tokens, mut sum) = (0f64, 0f64);
    for (&a, len) in episode.iter().zip(lens.clone()) {
        tokens += f64::from(len);
        sum += f64::from(len) * f64::from(a);
    }
    let mu = sum / tokens;
    let mut sq = 0f64;
    for (&a, len) in episode.iter().zip(lens) {
        let d = f64::from(a) - mu;
        sq += f64::from(len) * d * d;
    }
    let var = sq / tokens * (tokens / (tokens - 1.0));
    let scale = 1.0 / (var + WHITEN_EPSILON).sqrt();
    for (out, &a) in advantage.iter_mut().zip(episode) {
        *out = ((f64::from(a) - mu) * scale) as f32;
    }
}
