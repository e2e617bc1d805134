//! PPO with a learned critic at the turn level (SPEC 7; RAGEN's reading for
//! agents): the engine half, generalised advantage estimation over the steps
//! of each trajectory from the critic's values.
//!
//! Per trajectory, `delta_t = r_t + gamma * V(s_{t+1}) - V(s_t)` (V = 0 after
//! the last step), `A_t = sum_k (gamma * lambda)^k delta_{t+k}` (computed
//! backwards, `A_t = delta_t + gamma * lambda * A_{t+1}`), the returns
//! `A_t + V(s_t)` are the critic's regression targets, and the advantages are
//! whitened over the batch's response tokens as verl whitens PPO's
//! (`masked_whiten`: token-weighted mean, unbiased variance, `1e-8`), which
//! on the row layout is the token-count-weighted statistics of
//! [`super::reinforce_plus_plus_baseline`]. `r_t` is the step's env reward
//! (the episode reward on the last step in the peers' setting).
//!
//! The critic itself (a value network, the clipped value loss as verl does
//! it, explained variance) lives with the learner (`learner::critic`, feature
//! `learner`); this part needs only the values, so the engine stays free of
//! tensors.

use super::columns::ColumnSet;
use super::reinforce_plus_plus_baseline;
use crate::error::{Error, Result};
use crate::rollout::{MAX_ABS_REWARD, NO_NEXT, RolloutBatch};

/// No column: an [`super::Estimator`] refuses PPO before computing anything.
pub(super) const COLUMNS: ColumnSet = ColumnSet::NONE;

/// Turn-level GAE with its discount and trace parameter.
///
/// ```
/// use g2po::estimators::TurnGae;
/// let gae = TurnGae::new(0.95, 0.95)?;
/// let batch = g2po::doc_batch(); // win: hall -> door (10); lose: hall -> wall (0)
/// let out = gae.estimate(&batch, &[0.0; 4])?;
/// // With V = 0 the return of a step is its discounted future reward.
/// assert!((out.returns[0] - 0.95 * 0.95 * 10.0).abs() < 1e-4);
/// assert!(out.advantage[0] > 0.0 && out.advantage[2] < 0.0);
/// # Ok::<(), g2po::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TurnGae {
    gamma: f64,
    lambda: f64,
}

/// What [`TurnGae::estimate`] returns, one entry per row in row order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Gae {
    /// The advantage every response token of the row receives (whitened).
    pub advantage: Vec<f32>,
    /// `A_t` before whitening.
    pub raw_advantage: Vec<f32>,
    /// `A_t + V(s_t)`: the critic's targets.
    pub returns: Vec<f32>,
}

impl TurnGae {
    /// Checks `gamma` and `lambda` (both in `[0, 1]`).
    ///
    /// ```
    /// assert!(g2po::estimators::TurnGae::new(0.9, 1.5).is_err());
    /// ```
    pub fn new(gamma: f64, lambda: f64) -> Result<Self> {
        for (name, v) in [("gamma", gamma), ("gae_lambda", lambda)] {
            if !(v.is_finite() && (0.0..=1.0).contains(&v)) {
                return Err(Error::InvalidParameter { name, reason: "must lie in [0, 1]".into() });
            }
        }
        Ok(Self { gamma, lambda })
    }

    /// Advantages and returns of `batch` from the critic's value `values[r]`
    /// of each row's state.
    ///
    /// # Errors
    /// [`Error::LengthMismatch`] when `values` has another length than the
    /// batch, [`Error::NonFinite`] / [`Error::RewardOutOfRange`] for a value
    /// that is not finite or beyond [`MAX_ABS_REWARD`] (the results are
    /// `f32`), [`Error::TooFewTokens`] for a batch with fewer than two
    /// response tokens (the whitening's unbiased variance).
    pub fn estimate(&self, batch: &RolloutBatch, values: &[f32]) -> Result<Gae> {
        let n = batch.len();
        if values.len() != n {
            return Err(Error::LengthMismatch { field: "values", expected: n, found: values.len() });
        }
        for (row, &v) in values.iter().enumerate() {
            let value = f64::from(v);
            if !value.is_finite() {
                return Err(Error::NonFinite { row, field: "values", value });
            }
            if value.abs() > MAX_ABS_REWARD {
                return Err(Error::RewardOutOfRange { row, field: "values", value });
            }
        }
        reinforce_plus_plus_baseline::check(batch)?;
        let mut adv = vec![0f64; n];
        // A row's next step always comes later in row order: a reverse pass sees it first.
        for r in (0..n).rev() {
            let next = batch.next_rows()[r];
            let (next_value, next_adv) =
                if next == NO_NEXT { (0.0, 0.0) } else { (f64::from(values[next as usize]), adv[next as usize]) };
            let delta = batch.rewards()[r] + self.gamma * next_value - f64::from(values[r]);
            adv[r] = delta + self.gamma * self.lambda * next_adv;
        }
        if let Some(row) = adv.iter().zip(values).position(|(&a, &v)| !((a + f64::from(v)) as f32).is_finite()) {
            return Err(Error::InvalidParameter {
                name: "values",
                reason: format!("row {row}: the advantage or return leaves the f32 range"),
            });
        }
        let raw_advantage: Vec<f32> = adv.iter().map(|&a| a as f32).collect();
        let returns = adv.iter().zip(values).map(|(&a, &v)| (a + f64::from(v)) as f32).collect();
        let mut advantage = vec![0f32; n];
        reinforce_plus_plus_baseline::whiten(&raw_advantage, batch.response_lens().iter().copied(), &mut advantage);
        Ok(Gae { advantage, raw_advantage, returns })
    }
}
