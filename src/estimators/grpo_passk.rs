//! GRPO pass@k (SPEC 7; arXiv 2503.19595; verl `grpo_passk`).
//!
//! Only the best row of a task group gets a non-zero advantage:
//! `r_max - r_second_max` over the group's row scores, divided by
//! `sd_u + eps` ("mean_std_norm", `sd_u` the unbiased std of the scores) or
//! not ("mean_norm"). Among tied best rows the first in row order wins (and
//! gets 0, since then `r_second_max = r_max`). A group needs at least two
//! rows (verl raises otherwise): a typed error here. Statistics are over rows
//! only.

use super::columns::{Block, ColumnSet};
use super::engine::{GroupContext, mean_std};
use crate::error::{Error, Result};
use crate::rollout::RolloutBatch;

/// The columns pass@k fills (`episode` repeats `advantage`).
pub(super) const COLUMNS: ColumnSet = super::grpo::COLUMNS;

/// Every group must hold at least two rows.
pub(super) fn check(batch: &RolloutBatch) -> Result<()> {
    for g in 0..batch.num_groups() {
        let rows = batch.group_rows(g).len();
        if rows < 2 {
            return Err(Error::GroupTooSmall { group: batch.group_ids()[g].clone(), rows, needed: 2 });
        }
    }
    Ok(())
}

/// Writes one group's advantages.
pub(super) fn advantage(ctx: &GroupContext<'_>, rows: &[u32], out: &mut Block<'_>) {
    let (mut best, mut best_score) = (0usize, f64::NEG_INFINITY);
    for (i, &r) in rows.iter().enumerate() {
        let score = ctx.score(r as usize);
        // Strictly greater: the first of tied best rows wins.
        if score > best_score {
            (best, best_score) = (i, score);
        }
    }
    let second = rows
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != best)
        .map(|(_, &r)| ctx.score(r as usize))
        .fold(f64::NEG_INFINITY, f64::max);
    let gap = best_score - second;
    let a = match ctx.cfg.norm {
        super::Normalization::MeanStd => {
            let (_, std, _) = mean_std(rows.iter().map(|&r| ctx.score(r as usize)));
            let scale = std + ctx.cfg.epsilon;
            // epsilon = 0 and all scores equal: the gap is 0 too.
            if scale > 0.0 { gap / scale } else { 0.0 }
        }
        super::Normalization::Mean => gap,
    };
    out.advantage.fill(0.0);
    out.episode.fill(0.0);
    out.advantage[best] = a as f32;
    out.episode[best] = a as f32;
}
