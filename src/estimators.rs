//! The advantage estimators — GRPO, GiGPO and G2PO — behind one interface.
//!
//! Every estimator works group by group: a task group's rows never influence
//! another group, so groups are processed in parallel (rayon) and each group
//! sequentially, which makes results independent of the number of threads.
//! Within a group the work is a handful of linear passes over flat arrays
//! (state keys -> dense node ids, per-node sums, per-node and per-group
//! standardisation); the only hashing is one map from state key to node id,
//! reused across groups by each worker thread.
//!
//! Output columns are written in group order (the batch's CSR layout) and
//! permuted back to row order only when groups were interleaved in the input.
//!
//! Semantics follow the reference implementations (`../shared/SPEC.md`):
//! statistics use the unbiased standard deviation; a one-row group's episode
//! part uses mean 0 and std 1 (as verl does); a one-visit node or step group
//! gets a zero node/step part. One documented divergence: the reference's
//! edge-centric term of a group with a single row is NaN (an undefined std);
//! g2po gives 0.

use std::borrow::Cow;

use ahash::AHashMap;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::keys::StateKeyer;
use crate::keys::similarity;
use crate::rollout::{Anchor, NO_NEXT, RolloutBatch};

/// Which estimator.
///
/// ```
/// use g2po::EstimatorKind;
/// assert_eq!("g2po".parse::<EstimatorKind>().unwrap(), EstimatorKind::G2po);
/// assert_eq!(EstimatorKind::Gigpo.to_string(), "gigpo");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EstimatorKind {
    /// Trajectory-level group normalisation (DeepSeekMath, verl).
    Grpo,
    /// GRPO plus step groups of identical anchors (arXiv 2505.10978).
    Gigpo,
    /// GRPO plus node- and edge-centric terms on the state graph (arXiv 2606.22995).
    G2po,
}

impl std::fmt::Display for EstimatorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Grpo => "grpo",
            Self::Gigpo => "gigpo",
            Self::G2po => "g2po",
        })
    }
}

impl std::str::FromStr for EstimatorKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "grpo" => Ok(Self::Grpo),
            "gigpo" => Ok(Self::Gigpo),
            "g2po" => Ok(Self::G2po),
            other => Err(Error::InvalidParameter {
                name: "estimator",
                reason: format!("unknown estimator {other:?} (expected grpo, gigpo or g2po)"),
            }),
        }
    }
}

/// How a score is standardised within its group.
///
/// ```
/// use g2po::Normalization;
/// assert_eq!("mean_norm".parse::<Normalization>().unwrap(), Normalization::Mean);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Normalization {
    /// `(x - mean) / (std + epsilon)` ("mean_std_norm").
    #[serde(rename = "mean_std_norm")]
    MeanStd,
    /// `x - mean` ("mean_norm", the Dr.GRPO reading); the reference G2PO code
    /// then drops the std division in all three terms.
    #[serde(rename = "mean_norm")]
    Mean,
}

impl std::str::FromStr for Normalization {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "mean_std_norm" | "mean-std" | "mean_std" => Ok(Self::MeanStd),
            "mean_norm" | "mean" => Ok(Self::Mean),
            other => Err(Error::InvalidParameter {
                name: "mode",
                reason: format!("unknown normalisation {other:?} (expected mean_std_norm or mean_norm)"),
            }),
        }
    }
}

/// Over what the episode part's group statistics are taken.
///
/// ```
/// use g2po::StatsOver;
/// assert_eq!("trajectories".parse::<StatsOver>().unwrap(), StatsOver::Trajectories);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatsOver {
    /// Over step rows, so long trajectories weigh more (the peers' code).
    Rows,
    /// Over the N episode rewards, one per trajectory (the papers' reading).
    Trajectories,
}

impl std::str::FromStr for StatsOver {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "rows" => Ok(Self::Rows),
            "trajectories" | "trajs" => Ok(Self::Trajectories),
            other => Err(Error::InvalidParameter {
                name: "stats_over",
                reason: format!("unknown value {other:?} (expected rows or trajectories)"),
            }),
        }
    }
}

/// How rows are fused into states (GiGPO step groups, G2PO nodes).
///
/// ```
/// use g2po::Grouping;
/// let g = Grouping::Similarity { threshold: 0.95 };
/// assert_ne!(g, Grouping::Exact);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Grouping {
    /// Identical state keys (after canonicalisation).
    Exact,
    /// GiGPO's greedy difflib clustering of anchor texts within each group.
    Similarity {
        /// A row joins the first cluster whose first member is at least this similar.
        threshold: f64,
    },
}

/// Values of G2PO's terminal nodes.
///
/// ```
/// use g2po::TerminalValues;
/// let t = TerminalValues::Fixed { success: 1.0, failure: 0.0 };
/// assert_ne!(t, TerminalValues::EpisodeReward);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TerminalValues {
    /// The terminal after a trajectory's last step is worth its episode reward
    /// (10 on success, 0 on failure in the peers): the reference reading.
    EpisodeReward,
    /// Fixed values for the success terminal (episode reward > 0) and the
    /// failure terminal.
    Fixed {
        /// Value of the success terminal.
        success: f64,
        /// Value of the failure/truncation terminal.
        failure: f64,
    },
}

/// Every option of the three estimators (SPEC sections 1-3). Fields that an
/// estimator does not use are ignored by it.
///
/// ```
/// use g2po::{EstimatorConfig, EstimatorKind, Normalization};
/// let cfg = EstimatorConfig { norm: Normalization::Mean, ..EstimatorConfig::new(EstimatorKind::G2po) };
/// assert_eq!(cfg.gamma, 0.95);
/// assert!(cfg.validate().is_ok());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EstimatorConfig {
    /// The estimator.
    pub kind: EstimatorKind,
    /// Discount (GiGPO returns, G2PO visit values). Default 0.95.
    pub gamma: f64,
    /// Added to the std before dividing. Default 1e-6.
    pub epsilon: f64,
    /// Standardisation mode. Default mean_std_norm.
    pub norm: Normalization,
    /// Weight w of the step part (GiGPO) or of node+edge terms (G2PO). Default 1.
    pub step_weight: f64,
    /// Penalty p subtracted for an invalid action. Default 0.1.
    pub invalid_penalty: f64,
    /// Statistics of the episode part over rows or trajectories. Default rows.
    pub stats_over: StatsOver,
    /// State fusion. Default exact keys.
    pub grouping: Grouping,
    /// G2PO terminal values. Default: the episode reward.
    pub terminal: TerminalValues,
}

impl EstimatorConfig {
    /// The peers' defaults for `kind`.
    ///
    /// ```
    /// let cfg = g2po::EstimatorConfig::new(g2po::EstimatorKind::Gigpo);
    /// assert_eq!((cfg.epsilon, cfg.invalid_penalty, cfg.step_weight), (1e-6, 0.1, 1.0));
    /// ```
    pub fn new(kind: EstimatorKind) -> Self {
        Self {
            kind,
            gamma: 0.95,
            epsilon: 1e-6,
            norm: Normalization::MeanStd,
            step_weight: 1.0,
            invalid_penalty: 0.1,
            stats_over: StatsOver::Rows,
            grouping: Grouping::Exact,
            terminal: TerminalValues::EpisodeReward,
        }
    }

    /// Checks every option's domain.
    ///
    /// ```
    /// let mut cfg = g2po::EstimatorConfig::new(g2po::EstimatorKind::G2po);
    /// cfg.gamma = 1.5;
    /// assert!(cfg.validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<()> {
        let bad = |name: &'static str, reason: &str| Err(Error::InvalidParameter { name, reason: reason.to_owned() });
        if !(self.gamma.is_finite() && (0.0..=1.0).contains(&self.gamma)) {
            return bad("gamma", "must lie in [0, 1]");
        }
        if !(self.epsilon.is_finite() && self.epsilon >= 0.0) {
            return bad("epsilon", "must be finite and >= 0");
        }
        if !self.step_weight.is_finite() {
            return bad("step_weight", "must be finite");
        }
        if !self.invalid_penalty.is_finite() {
            return bad("invalid_penalty", "must be finite");
        }
        if let Grouping::Similarity { threshold } = self.grouping
            && !(0.0..=1.0).contains(&threshold)
        {
            return bad("similarity_thresh", "must lie in [0, 1]");
        }
        if let TerminalValues::Fixed { success, failure } = self.terminal
            && !(success.is_finite() && failure.is_finite())
        {
            return bad("terminal", "terminal values must be finite");
        }
        Ok(())
    }
}

/// Per-row output of an estimator, one entry per batch row in row order.
///
/// Columns an estimator does not produce are empty: GRPO fills `advantage`
/// and `episode`; GiGPO adds `step`, `step_return` and `node` (its step
/// group, numbered in first-seen row order across the batch); G2PO adds
/// `step` (= node-centric + edge-centric), `node_centric`, `edge_centric`,
/// `node` (numbered per task group in first-seen row order), `next_node` (a
/// node, or -1 for the success terminal, -2 for the failure terminal) and
/// `node_value`.
///
/// ```
/// use g2po::{AdvantageEstimator, Estimator, EstimatorConfig, EstimatorKind};
/// let batch = g2po::doc_batch();
/// let adv = Estimator::new(EstimatorConfig::new(EstimatorKind::G2po))?.estimate(&batch)?;
/// assert_eq!(adv.len(), batch.len());
/// assert_eq!(adv.next_node[1], -1); // the winning trajectory ends in success
/// # Ok::<(), g2po::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Advantages {
    /// The advantage every response token of the row receives.
    pub advantage: Vec<f32>,
    /// Episode (GRPO) part.
    pub episode: Vec<f32>,
    /// Step part before weighting (GiGPO step part; G2PO node + edge).
    pub step: Vec<f32>,
    /// G2PO node-centric part.
    pub node_centric: Vec<f32>,
    /// G2PO edge-centric part.
    pub edge_centric: Vec<f32>,
    /// GiGPO discounted return after the invalid penalty.
    pub step_return: Vec<f32>,
    /// G2PO node id / GiGPO step group id.
    pub node: Vec<i32>,
    /// G2PO node the step leads to (-1 success, -2 failure terminal).
    pub next_node: Vec<i32>,
    /// G2PO pooled value V of the row's node.
    pub node_value: Vec<f32>,
}

/// Id of the success terminal in [`Advantages::next_node`].
pub const SUCCESS_TERMINAL: i32 = -1;
/// Id of the failure/truncation terminal in [`Advantages::next_node`].
pub const FAILURE_TERMINAL: i32 = -2;

impl Advantages {
    /// Number of rows.
    ///
    /// ```
    /// assert_eq!(g2po::Advantages::default().len(), 0);
    /// ```
    pub fn len(&self) -> usize {
        self.advantage.len()
    }

    /// Whether there are no rows.
    ///
    /// ```
    /// assert!(g2po::Advantages::default().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.advantage.is_empty()
    }

    /// Shapes every column for `n` rows of `kind`, reusing capacity. Stale
    /// values are left in place: the estimators overwrite every entry of the
    /// columns they produce, and the others are emptied.
    fn reshape(&mut self, kind: EstimatorKind, n: usize) {
        let (gigpo, g2po) = (kind == EstimatorKind::Gigpo, kind == EstimatorKind::G2po);
        fn shape<T: Copy + Default>(col: &mut Vec<T>, on: bool, n: usize) {
            if on { col.resize(n, T::default()) } else { col.clear() }
        }
        shape(&mut self.advantage, true, n);
        shape(&mut self.episode, true, n);
        shape(&mut self.step, gigpo || g2po, n);
        shape(&mut self.node_centric, g2po, n);
        shape(&mut self.edge_centric, g2po, n);
        shape(&mut self.step_return, gigpo, n);
        shape(&mut self.node, gigpo || g2po, n);
        shape(&mut self.next_node, g2po, n);
        shape(&mut self.node_value, g2po, n);
    }

    fn blocks(&mut self, offsets: &[usize]) -> Vec<Block<'_>> {
        let mut rest = Block {
            advantage: &mut self.advantage,
            episode: &mut self.episode,
            step: &mut self.step,
            node_centric: &mut self.node_centric,
            edge_centric: &mut self.edge_centric,
            step_return: &mut self.step_return,
            node: &mut self.node,
            next_node: &mut self.next_node,
            node_value: &mut self.node_value,
        };
        offsets.windows(2).map(|w| rest.split_off_front(w[1] - w[0])).collect()
    }

    /// Reorders every column from group (CSR) order into row order.
    fn scatter_to_rows(&mut self, rows_by_group: &[u32]) {
        fn scatter<T: Copy + Default>(col: &mut Vec<T>, order: &[u32]) {
            if col.is_empty() {
                return;
            }
            let mut out = vec![T::default(); col.len()];
            for (value, &row) in col.iter().zip(order) {
                out[row as usize] = *value;
            }
            *col = out;
        }
        for col in [
            &mut self.advantage,
            &mut self.episode,
            &mut self.step,
            &mut self.node_centric,
            &mut self.edge_centric,
            &mut self.step_return,
            &mut self.node_value,
        ] {
            scatter(col, rows_by_group);
        }
        scatter(&mut self.node, rows_by_group);
        scatter(&mut self.next_node, rows_by_group);
    }
}

/// The output columns of one group (CSR order), split off [`Advantages`].
struct Block<'a> {
    advantage: &'a mut [f32],
    episode: &'a mut [f32],
    step: &'a mut [f32],
    node_centric: &'a mut [f32],
    edge_centric: &'a mut [f32],
    step_return: &'a mut [f32],
    node: &'a mut [i32],
    next_node: &'a mut [i32],
    node_value: &'a mut [f32],
}

impl<'a> Block<'a> {
    fn split_off_front(&mut self, n: usize) -> Block<'a> {
        fn take<'a, T>(s: &mut &'a mut [T], n: usize) -> &'a mut [T] {
            if s.is_empty() {
                return &mut [];
            }
            let (front, back) = std::mem::take(s).split_at_mut(n);
            *s = back;
            front
        }
        Block {
            advantage: take(&mut self.advantage, n),
            episode: take(&mut self.episode, n),
            step: take(&mut self.step, n),
            node_centric: take(&mut self.node_centric, n),
            edge_centric: take(&mut self.edge_centric, n),
            step_return: take(&mut self.step_return, n),
            node: take(&mut self.node, n),
            next_node: take(&mut self.next_node, n),
            node_value: take(&mut self.node_value, n),
        }
    }
}

/// The one interface of every advantage estimator.
///
/// ```
/// use g2po::{AdvantageEstimator, Estimator, EstimatorConfig, EstimatorKind};
/// let estimators: Vec<Box<dyn AdvantageEstimator>> = vec![
///     Box::new(Estimator::new(EstimatorConfig::new(EstimatorKind::Grpo))?),
///     Box::new(Estimator::new(EstimatorConfig::new(EstimatorKind::G2po))?),
/// ];
/// let batch = g2po::doc_batch();
/// for e in &estimators {
///     assert_eq!(e.estimate(&batch)?.len(), batch.len());
/// }
/// # Ok::<(), g2po::Error>(())
/// ```
pub trait AdvantageEstimator: Send + Sync {
    /// Short name ("grpo", "gigpo", "g2po", ...).
    fn name(&self) -> &str;
    /// Per-row advantages of a batch, written into `out`, whose buffers are
    /// reused: a trainer that keeps one `Advantages` allocates nothing per
    /// step once the buffers have grown. On error `out` is unspecified.
    fn estimate_into(&self, batch: &RolloutBatch, out: &mut Advantages) -> Result<()>;

    /// Per-row advantages of a batch, in new buffers.
    fn estimate(&self, batch: &RolloutBatch) -> Result<Advantages> {
        let mut out = Advantages::default();
        self.estimate_into(batch, &mut out)?;
        Ok(out)
    }
}

/// The built-in estimators, chosen by [`EstimatorConfig::kind`].
///
/// ```
/// use g2po::{AdvantageEstimator, Estimator, EstimatorConfig, EstimatorKind};
/// use g2po::keys::StateKeyer;
/// let e = Estimator::new(EstimatorConfig::new(EstimatorKind::Gigpo))?.with_keyer(StateKeyer::text_env());
/// assert_eq!(e.name(), "gigpo");
/// # Ok::<(), g2po::Error>(())
/// ```
#[derive(Debug)]
pub struct Estimator {
    config: EstimatorConfig,
    keyer: StateKeyer,
}

impl Estimator {
    /// An estimator with a validated configuration and the plain keyer.
    ///
    /// ```
    /// let mut cfg = g2po::EstimatorConfig::new(g2po::EstimatorKind::Grpo);
    /// cfg.epsilon = -1.0;
    /// assert!(g2po::Estimator::new(cfg).is_err());
    /// ```
    pub fn new(config: EstimatorConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self { config, keyer: StateKeyer::new() })
    }

    /// Replaces the keyer that turns anchor text into state keys.
    ///
    /// ```
    /// let e = g2po::Estimator::new(g2po::EstimatorConfig::new(g2po::EstimatorKind::G2po))?
    ///     .with_keyer(g2po::keys::StateKeyer::text_env());
    /// # Ok::<(), g2po::Error>(())
    /// ```
    pub fn with_keyer(mut self, keyer: StateKeyer) -> Self {
        self.keyer = keyer;
        self
    }

    /// The configuration.
    ///
    /// ```
    /// let e = g2po::Estimator::new(g2po::EstimatorConfig::new(g2po::EstimatorKind::G2po))?;
    /// assert_eq!(e.config().kind, g2po::EstimatorKind::G2po);
    /// # Ok::<(), g2po::Error>(())
    /// ```
    pub fn config(&self) -> &EstimatorConfig {
        &self.config
    }

    /// The keyer.
    ///
    /// ```
    /// let e = g2po::Estimator::new(g2po::EstimatorConfig::new(g2po::EstimatorKind::G2po))?;
    /// assert_eq!(e.keyer().key("x"), g2po::keys::StateKeyer::new().key("x"));
    /// # Ok::<(), g2po::Error>(())
    /// ```
    pub fn keyer(&self) -> &StateKeyer {
        &self.keyer
    }
}

impl AdvantageEstimator for Estimator {
    fn name(&self) -> &str {
        match self.config.kind {
            EstimatorKind::Grpo => "grpo",
            EstimatorKind::Gigpo => "gigpo",
            EstimatorKind::G2po => "g2po",
        }
    }

    fn estimate_into(&self, batch: &RolloutBatch, out: &mut Advantages) -> Result<()> {
        let cfg = &self.config;
        let uses_states = cfg.kind != EstimatorKind::Grpo;
        let similarity = match cfg.grouping {
            Grouping::Similarity { threshold } if uses_states => {
                if !batch.has_text() {
                    return Err(Error::SimilarityNeedsText);
                }
                Some(threshold)
            }
            _ => None,
        };
        let keys: Cow<'_, [u64]> =
            if uses_states && similarity.is_none() { self.keyer.batch_keys(batch) } else { Cow::Borrowed(&[]) };
        let row_pos = (!batch.groups_contiguous()).then(|| positions_in_group(batch));
        let ctx = GroupContext { batch, cfg, keys: &keys, similarity, keyer: &self.keyer, row_pos: row_pos.as_deref() };

        out.reshape(cfg.kind, batch.len());
        let offsets = batch.group_offsets();
        let blocks = out.blocks(offsets);
        let node_counts: Vec<u32> = blocks
            .into_par_iter()
            .enumerate()
            .map(|(group, mut block)| SCRATCH.with_borrow_mut(|scratch| ctx.process(group, &mut block, scratch)))
            .collect();

        if cfg.kind == EstimatorKind::Gigpo {
            renumber_step_groups_batch_wide(batch, &mut out.node, &node_counts, row_pos.as_deref());
        }
        if !batch.groups_contiguous() {
            out.scatter_to_rows(batch.rows_by_group());
        }
        Ok(())
    }
}

/// Position of each row within its group's CSR block (non-contiguous batches).
fn positions_in_group(batch: &RolloutBatch) -> Vec<u32> {
    let mut pos = vec![0u32; batch.len()];
    for g in 0..batch.num_groups() {
        for (i, &row) in batch.group_rows(g).iter().enumerate() {
            pos[row as usize] = i as u32;
        }
    }
    pos
}

/// GiGPO's step groups are numbered per batch in first-seen row order; the
/// parallel pass numbered them per group.
fn renumber_step_groups_batch_wide(
    batch: &RolloutBatch,
    node: &mut [i32],
    node_counts: &[u32],
    row_pos: Option<&[u32]>,
) {
    let offsets = batch.group_offsets();
    let mut base = Vec::with_capacity(node_counts.len() + 1);
    base.push(0usize);
    for &c in node_counts {
        base.push(base.last().unwrap() + c as usize);
    }
    let mut global = vec![u32::MAX; *base.last().unwrap()];
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
    /// so steady-state estimation allocates nothing per group.
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// Per-thread buffers (see [`SCRATCH`]).
#[derive(Default)]
struct Scratch {
    node_of_key: AHashMap<u64, u32>,
    node: Vec<u32>,
    value: Vec<f64>,
    node_value: Vec<f64>,
    stats: NodeStats,
    traj_rewards: Vec<f64>,
    /// gamma^k for k = 0, 1, ...; grown on demand (gamma is fixed per estimate).
    gamma_pow: Vec<f64>,
    /// The gamma `gamma_pow` was built for (scratch outlives one estimate).
    gamma_pow_base: f64,
}

/// Per-node count, sum, mean and unbiased std of a per-row quantity.
#[derive(Default)]
struct NodeStats {
    sum: Vec<f64>,
    count: Vec<u32>,
    mean: Vec<f64>,
    std: Vec<f64>,
}

impl NodeStats {
    /// Counts and sums only (node values need no spread).
    fn accumulate(&mut self, nodes: &[u32], num_nodes: usize, x: impl Fn(usize) -> f64) {
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
    fn compute(&mut self, nodes: &[u32], num_nodes: usize, x: impl Fn(usize) -> f64) {
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

struct GroupContext<'a> {
    batch: &'a RolloutBatch,
    cfg: &'a EstimatorConfig,
    keys: &'a [u64],
    similarity: Option<f64>,
    keyer: &'a StateKeyer,
    row_pos: Option<&'a [u32]>,
}

/// Mean and unbiased standard deviation (two passes). One element: std 0.
fn mean_std(values: impl Iterator<Item = f64> + Clone) -> (f64, f64, usize) {
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
    fn standardise(&self, x: f64, mean: f64, std: f64) -> f64 {
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
    fn pos(&self, row: u32, group_start: u32) -> usize {
        match self.row_pos {
            Some(p) => p[row as usize] as usize,
            None => (row - group_start) as usize,
        }
    }

    fn score(&self, row: usize) -> f64 {
        let b = self.batch;
        b.episode_rewards()[row] - if b.valid()[row] { 0.0 } else { self.cfg.invalid_penalty }
    }

    fn penalty(&self, row: usize) -> f64 {
        if self.batch.valid()[row] { 0.0 } else { self.cfg.invalid_penalty }
    }

    /// Computes one group's columns; returns its number of nodes/step groups.
    fn process(&self, group: usize, out: &mut Block<'_>, s: &mut Scratch) -> u32 {
        let b = self.batch;
        let rows = b.group_rows(group);
        let cfg = self.cfg;

        // Episode part (GRPO's advantage).
        let (mean, std, n) = match cfg.stats_over {
            StatsOver::Rows => mean_std(rows.iter().map(|&r| self.score(r as usize))),
            StatsOver::Trajectories => {
                s.traj_rewards.clear();
                s.traj_rewards.extend(
                    rows.iter().filter(|&&r| b.steps()[r as usize] == 0).map(|&r| b.episode_rewards()[r as usize]),
                );
                mean_std(s.traj_rewards.iter().copied())
            }
        };
        let (mean, std) = if n == 1 { (0.0, 1.0) } else { (mean, std) };
        for (i, &r) in rows.iter().enumerate() {
            let e = self.standardise(self.score(r as usize), mean, std);
            out.episode[i] = e as f32;
            out.advantage[i] = e as f32;
        }
        if cfg.kind == EstimatorKind::Grpo {
            return 0;
        }

        let num_nodes = self.assign_nodes(rows, s);
        let start = rows[0];
        match cfg.kind {
            EstimatorKind::Gigpo => self.gigpo(rows, start, num_nodes, out, s),
            EstimatorKind::G2po => self.g2po(rows, start, num_nodes, out, s),
            EstimatorKind::Grpo => unreachable!("handled above"),
        }
        num_nodes
    }

    /// Dense node ids in first-seen row order into `s.node`.
    fn assign_nodes(&self, rows: &[u32], s: &mut Scratch) -> u32 {
        s.node.clear();
        if let Some(threshold) = self.similarity {
            let texts: Vec<Cow<'_, str>> = rows
                .iter()
                .map(|&r| match self.batch.anchor(r as usize) {
                    Anchor::Text(t) => self.keyer.canonical(t),
                    Anchor::Key(_) => unreachable!("similarity requires text, checked in estimate"),
                })
                .collect();
            let (ids, n) = similarity::cluster(texts.iter().map(|t| t.as_ref()), threshold);
            s.node.extend(ids);
            return n;
        }
        s.node_of_key.clear();
        for &r in rows {
            let next = s.node_of_key.len() as u32;
            let id = *s.node_of_key.entry(self.keys[r as usize]).or_insert(next);
            s.node.push(id);
        }
        s.node_of_key.len() as u32
    }

    fn gigpo(&self, rows: &[u32], start: u32, num_nodes: u32, out: &mut Block<'_>, s: &mut Scratch) {
        let b = self.batch;
        let gamma = self.cfg.gamma;
        // Discounted returns, backwards: a row's next step always comes later
        // in row order, so a reverse pass sees it first.
        let returns = &mut s.value;
        returns.clear();
        returns.resize(rows.len(), 0.0);
        for (i, &r) in rows.iter().enumerate().rev() {
            let next = b.next_rows()[r as usize];
            let future = if next == NO_NEXT { 0.0 } else { returns[self.pos(next, start)] };
            returns[i] = b.rewards()[r as usize] + gamma * future;
        }
        // The penalty is applied after discounting, so it does not propagate.
        for (i, &r) in rows.iter().enumerate() {
            returns[i] -= self.penalty(r as usize);
        }
        let stats = &mut s.stats;
        stats.compute(&s.node, num_nodes as usize, |i| returns[i]);
        for (i, &node) in s.node.iter().enumerate() {
            let k = node as usize;
            let step = if stats.count[k] > 1 { self.standardise(returns[i], stats.mean[k], stats.std[k]) } else { 0.0 };
            out.step[i] = step as f32;
            out.step_return[i] = returns[i] as f32;
            out.node[i] = node as i32;
            out.advantage[i] = (out.episode[i] as f64 + self.cfg.step_weight * step) as f32;
        }
    }

    fn g2po(&self, rows: &[u32], start: u32, num_nodes: u32, out: &mut Block<'_>, s: &mut Scratch) {
        let b = self.batch;
        let cfg = self.cfg;
        let gamma_pow = &mut s.gamma_pow;
        if gamma_pow.is_empty() || s.gamma_pow_base.to_bits() != cfg.gamma.to_bits() {
            gamma_pow.clear();
            gamma_pow.push(1.0);
            s.gamma_pow_base = cfg.gamma;
        }
        for &r in rows {
            let traj = b.trajectories()[r as usize] as usize;
            let len = b.trajectory_lens()[traj] as usize;
            while gamma_pow.len() <= len {
                gamma_pow.push(gamma_pow[gamma_pow.len() - 1] * cfg.gamma);
            }
        }
        let nodes = &s.node;
        let stats = &mut s.stats;
        // Node values: mean of gamma^(T - t) * R over every visit.
        stats.accumulate(nodes, num_nodes as usize, |i| {
            let r = rows[i] as usize;
            let traj = b.trajectories()[r] as usize;
            let remaining = b.trajectory_lens()[traj] - b.steps()[r];
            gamma_pow[remaining as usize] * b.episode_rewards()[r]
        });
        let values = &mut s.node_value;
        values.clear();
        values.extend_from_slice(&stats.mean);

        // Value of where each step leads: the next row's node or a terminal.
        let next_value = &mut s.value;
        next_value.clear();
        for (i, &r) in rows.iter().enumerate() {
            let r = r as usize;
            let next = b.next_rows()[r];
            let (next_node, value) = if next == NO_NEXT {
                let reward = b.episode_rewards()[r];
                let success = reward > 0.0;
                let value = match cfg.terminal {
                    TerminalValues::EpisodeReward => reward,
                    TerminalValues::Fixed { success: v, .. } if success => v,
                    TerminalValues::Fixed { failure, .. } => failure,
                };
                (if success { SUCCESS_TERMINAL } else { FAILURE_TERMINAL }, value)
            } else {
                let node = nodes[self.pos(next, start)];
                (node as i32, values[node as usize])
            };
            out.next_node[i] = next_node;
            next_value.push(value);
            out.node[i] = nodes[i] as i32;
            out.node_value[i] = values[nodes[i] as usize] as f32;
        }

        // Edge-centric: TD error standardised over the whole group graph.
        let td = |i: usize| next_value[i] - values[nodes[i] as usize];
        let (td_mean, td_std, n) = mean_std((0..rows.len()).map(td));
        // A one-row group has no spread to standardise by (the reference
        // yields NaN): no edge signal.
        let edge = |i: usize| if n > 1 { self.standardise(td(i), td_mean, td_std) } else { 0.0 };

        // Node-centric: next value minus penalty, standardised among the
        // rows leaving the same node.
        let x = |i: usize| next_value[i] - self.penalty(rows[i] as usize);
        stats.compute(nodes, num_nodes as usize, x);
        for (i, &node) in nodes.iter().enumerate() {
            let k = node as usize;
            let nc = if stats.count[k] > 1 { self.standardise(x(i), stats.mean[k], stats.std[k]) } else { 0.0 };
            let ec = edge(i);
            out.node_centric[i] = nc as f32;
            out.edge_centric[i] = ec as f32;
            out.step[i] = (nc + ec) as f32;
            out.advantage[i] = (out.episode[i] as f64 + cfg.step_weight * (nc + ec)) as f32;
        }
    }
}
