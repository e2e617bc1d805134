//! Building the G2PO stage inputs from a rollout batch and the CPU engine's node assignment.
//!
//! Node ids need hashing (or similarity clustering) of observations, which stays on the CPU;
//! the engine's [`Advantages`] already carries them, numbered per task group. This module turns
//! a batch plus that output into the flat, globally numbered arrays the GPU stages consume, so
//! the GPU path reuses exactly the engine's state fusion. Only what the kernels support is
//! accepted: G2PO (or G2PO on the history tree) with episode statistics over rows (the kernels have no per-trajectory
//! statistics); anything else is a [`CudaError::Unsupported`].

use super::{CudaError, StageInputs, StageParams};
use crate::estimators::{self, Advantages, EstimatorConfig, EstimatorKind, Normalization, StatsOver};
use crate::rollout::RolloutBatch;

/// Owned per-row arrays for [`StageInputs`] plus the matching [`StageParams`].
///
/// ```
/// use g2po::{AdvantageEstimator, Estimator, EstimatorConfig, EstimatorKind};
/// use g2po::cuda::{StageHost, StagePlan};
/// let batch = g2po::doc_batch();
/// let cfg = EstimatorConfig::new(EstimatorKind::G2po);
/// let adv = Estimator::new(cfg)?.estimate(&batch)?;
/// let host = StageHost::from_batch(&batch, &adv, &cfg)?;
/// assert_eq!(host.node.len(), batch.len());
/// assert!(StagePlan::new(&host.inputs()).is_ok());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct StageHost {
    /// Task group of each row.
    pub group: Vec<u32>,
    /// Global node id: per-group node offset + [`Advantages::node`].
    pub node: Vec<u32>,
    /// Global id of the next node, or -1 (success) / -2 (failure terminal).
    pub next_node: Vec<i32>,
    /// Value of the terminal after the row (episode reward or the fixed terminal value).
    pub terminal_value: Vec<f32>,
    /// `gamma^(T - t) * R_term` of the row's visit, `R_term` the value of the terminal its
    /// trajectory ends in (the same mapping as [`Self::terminal_value`]).
    pub visit_value: Vec<f32>,
    /// 1 where the action was invalid.
    pub invalid: Vec<u8>,
    /// `R - p * invalid`.
    pub score: Vec<f32>,
    /// Flat token offsets from the response lengths (`rows + 1` entries).
    pub token_offsets: Vec<u64>,
    /// Stage parameters taken from the estimator configuration.
    pub params: StageParams,
}

impl StageHost {
    /// Builds the stage inputs of `batch` from the CPU G2PO output `adv` (which supplies the
    /// node ids) and the configuration `config` it was computed with.
    ///
    /// # Errors
    /// [`CudaError::Unsupported`] unless `config` is G2PO or G2PO on the history tree with
    /// `stats_over = rows`;
    /// [`CudaError::InvalidInput`] when `adv` does not belong to `batch` (lengths, missing
    /// node columns, a next node outside its group's range) or `config` is invalid.
    ///
    /// ```
    /// use g2po::{AdvantageEstimator, Estimator, EstimatorConfig, EstimatorKind, StatsOver};
    /// let batch = g2po::doc_batch();
    /// let cfg = EstimatorConfig::new(EstimatorKind::G2po);
    /// let adv = Estimator::new(cfg)?.estimate(&batch)?;
    /// let trajs = EstimatorConfig { stats_over: StatsOver::Trajectories, ..cfg };
    /// assert!(g2po::cuda::StageHost::from_batch(&batch, &adv, &trajs).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_batch(batch: &RolloutBatch, adv: &Advantages, config: &EstimatorConfig) -> Result<Self, CudaError> {
        let bad = |m: String| Err(CudaError::InvalidInput(m));
        // The history tree only changes the node ids, which come from `adv`; the Bellman
        // backup's values are not what the stages compute (Monte-Carlo means).
        if !matches!(config.kind, EstimatorKind::G2po | EstimatorKind::G2poTree) {
            return Err(CudaError::Unsupported(format!("GPU stages compute G2PO (or g2po_tree), not {}", config.kind)));
        }
        if config.stats_over != StatsOver::Rows {
            return Err(CudaError::Unsupported(
                "GPU stages take episode statistics over rows only (stats_over = trajectories)".into(),
            ));
        }
        config.validate().map_err(|e| CudaError::InvalidInput(e.to_string()))?;
        let n = batch.len();
        if adv.node.len() != n || adv.next_node.len() != n {
            return bad(format!(
                "advantages have {} node ids and {} next ids for a batch of {n} rows (not G2PO output of it?)",
                adv.node.len(),
                adv.next_node.len()
            ));
        }
        // Nodes are numbered per task group from 0: the group's count is its largest id + 1.
        let groups = batch.groups();
        let mut count = vec![0u64; batch.num_groups()];
        for (r, &id) in adv.node.iter().enumerate() {
            let Ok(id) = u64::try_from(id) else { return bad(format!("node[{r}] = {id} is negative")) };
            let c = &mut count[groups[r] as usize];
            *c = (*c).max(id + 1);
        }
        let mut offset = Vec::with_capacity(count.len());
        let mut total = 0u64;
        for c in &count {
            offset.push(total);
            total += c;
        }
        if u32::try_from(total).is_err() {
            return bad("more than u32::MAX nodes".into());
        }
        let global = |r: usize, id: u64| (offset[groups[r] as usize] + id) as u32;
        let node: Vec<u32> = (0..n).map(|r| global(r, adv.node[r] as u64)).collect();
        let mut next_node = Vec::with_capacity(n);
        for (r, &nx) in adv.next_node.iter().enumerate() {
            if nx >= 0 {
                if nx as u64 >= count[groups[r] as usize] {
                    return bad(format!("next_node[{r}] = {nx} is not a node of its task group"));
                }
                next_node.push(global(r, nx as u64) as i32);
            } else if nx == -1 || nx == -2 {
                next_node.push(nx);
            } else {
                return bad(format!("next_node[{r}] = {nx}; terminals are -1 and -2"));
            }
        }
        let reward = batch.episode_rewards();
        // The engine's own terminal mapping, so both back ends fuse the same graph.
        let terminal_value = reward.iter().map(|&rw| estimators::terminal_value(config, rw) as f32).collect();
        let (trajs, lens, steps) = (batch.trajectories(), batch.trajectory_lens(), batch.steps());
        let visit_value = (0..n)
            .map(|r| {
                let remaining = lens[trajs[r] as usize] - steps[r];
                // Repeated multiplication, as the engine's gamma table does (powi may differ
                // in the last bit).
                let g = (0..remaining).fold(1.0f64, |acc, _| acc * config.gamma);
                estimators::visit_value(config, g, reward[r]) as f32
            })
            .collect();
        let invalid: Vec<u8> = batch.valid().iter().map(|&v| u8::from(!v)).collect();
        let score =
            (0..n).map(|r| (reward[r] - if invalid[r] == 1 { config.invalid_penalty } else { 0.0 }) as f32).collect();
        let mut token_offsets = Vec::with_capacity(n + 1);
        token_offsets.push(0u64);
        for &len in batch.response_lens() {
            token_offsets.push(token_offsets[token_offsets.len() - 1] + u64::from(len));
        }
        let params = StageParams {
            epsilon: config.epsilon as f32,
            mean_norm: config.norm == Normalization::Mean,
            weight: config.step_weight as f32,
            invalid_penalty: config.invalid_penalty as f32,
        };
        Ok(Self {
            group: groups.to_vec(),
            node,
            next_node,
            terminal_value,
            visit_value,
            invalid,
            score,
            token_offsets,
            params,
        })
    }

    /// Borrowed view for [`super::GpuContext::g2po_stages`] and [`super::StagePlan::new`].
    ///
    /// ```
    /// # use g2po::{AdvantageEstimator, Estimator, EstimatorConfig, EstimatorKind};
    /// # let batch = g2po::doc_batch();
    /// # let cfg = EstimatorConfig::new(EstimatorKind::G2po);
    /// # let adv = Estimator::new(cfg)?.estimate(&batch)?;
    /// let host = g2po::cuda::StageHost::from_batch(&batch, &adv, &cfg)?;
    /// assert_eq!(host.inputs().token_offsets.len(), batch.len() + 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn inputs(&self) -> StageInputs<'_> {
        StageInputs {
            group: &self.group,
            node: &self.node,
            next_node: &self.next_node,
            terminal_value: &self.terminal_value,
            visit_value: &self.visit_value,
            invalid: &self.invalid,
            score: &self.score,
            token_offsets: &self.token_offsets,
        }
    }
}
