//! The advantage estimators behind one interface: GRPO, GiGPO and G2PO (the
//! references), G2PO on the history tree and with a Bellman backup (SPEC 8),
//! and verl's RLOO, REINFORCE++-baseline and GRPO pass@k (SPEC 7).
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
//!
//! ## Layout
//!
//! One file per estimator holds its formulas, named after the estimator
//! (`grpo.rs`, `gigpo.rs`, `g2po.rs`, `g2po_tree.rs`, `g2po_bellman.rs`,
//! `rloo.rs`, `reinforce_plus_plus_baseline.rs`, `grpo_passk.rs`);
//! `config.rs` the options they share; `columns.rs`
//! the output columns, listed once; `engine.rs` what every estimator needs
//! around its formulas (state grouping, dense node ids, per-thread scratch,
//! the parallel pass over groups, the scatter back into row order).

mod columns;
mod config;
mod engine;
mod g2po;
mod g2po_bellman;
mod g2po_tree;
mod gigpo;
mod grpo;
mod grpo_passk;
mod ppo;
mod reinforce_plus_plus_baseline;
mod rloo;

#[cfg_attr(not(feature = "nvrtc"), allow(unused_imports))]
pub(crate) use g2po::{terminal_value, visit_value};

pub use columns::{Advantages, COLUMNS, FAILURE_TERMINAL, SUCCESS_TERMINAL};
pub use config::{EstimatorConfig, Grouping, MAX_ABS_STEP_WEIGHT, Normalization, StatsOver, TerminalValues};
pub use g2po_bellman::{BellmanMethod, bellman_values};
pub use ppo::{Gae, TurnGae};

use std::sync::Mutex;

use columns::ColumnSet;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::keys::StateKeyer;
use crate::rollout::RolloutBatch;

/// Which estimator. Each has one file in `src/estimators/` named after it.
///
/// ```
/// use g2po::EstimatorKind;
/// assert_eq!("g2po".parse::<EstimatorKind>().unwrap(), EstimatorKind::G2po);
/// assert_eq!(EstimatorKind::Gigpo.to_string(), "gigpo");
/// // verl's names, with `-` accepted for `_`.
/// assert_eq!("reinforce-plus-plus-baseline".parse::<EstimatorKind>().unwrap(), EstimatorKind::ReinforcePlusPlusBaseline);
/// assert_eq!(EstimatorKind::GrpoPassk.to_string(), "grpo_passk");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EstimatorKind {
    /// Trajectory-level group normalisation (DeepSeekMath, verl).
    Grpo,
    /// GRPO plus step groups of identical anchors (arXiv 2505.10978).
    Gigpo,
    /// GRPO plus node- and edge-centric terms on the state graph (arXiv 2606.22995).
    G2po,
    /// G2PO on the history tree: a node is a state with the path that led to
    /// it, so rollouts share nodes only along a common prefix (SPEC 8).
    G2poTree,
    /// G2PO whose node values are the Bellman backup over the fused graph
    /// instead of the Monte-Carlo mean of the visits (SPEC 8).
    G2poBellman,
    /// REINFORCE leave-one-out: the row score minus the mean of the others (arXiv 2402.14740).
    Rloo,
    /// REINFORCE++ with a group-mean baseline, whitened over the batch's
    /// response tokens (arXiv 2501.03262).
    ReinforcePlusPlusBaseline,
    /// GRPO pass@k: only the best row of a group gets an advantage (arXiv 2503.19595).
    GrpoPassk,
    /// PPO with a learned critic at the turn level: GAE over each trajectory's
    /// steps from the critic's values ([`TurnGae`]). It needs those values, so
    /// an [`Estimator`] alone refuses it; the trainer runs it with its critic.
    Ppo,
}

impl EstimatorKind {
    /// Every estimator, in the order the documentation lists them.
    ///
    /// ```
    /// assert!(g2po::EstimatorKind::ALL.contains(&g2po::EstimatorKind::G2po));
    /// assert_eq!(g2po::EstimatorKind::ALL.len(), 9);
    /// ```
    pub const ALL: [EstimatorKind; 9] = [
        Self::Grpo,
        Self::Gigpo,
        Self::G2po,
        Self::G2poTree,
        Self::G2poBellman,
        Self::Rloo,
        Self::ReinforcePlusPlusBaseline,
        Self::GrpoPassk,
        Self::Ppo,
    ];

    /// The estimators an [`Estimator`] computes from a batch alone (all but PPO,
    /// which needs a critic).
    ///
    /// ```
    /// use g2po::EstimatorKind;
    /// assert!(!EstimatorKind::FROM_BATCH.contains(&EstimatorKind::Ppo));
    /// assert_eq!(EstimatorKind::FROM_BATCH.len() + 1, EstimatorKind::ALL.len());
    /// ```
    pub const FROM_BATCH: [EstimatorKind; 8] = [
        Self::Grpo,
        Self::Gigpo,
        Self::G2po,
        Self::G2poTree,
        Self::G2poBellman,
        Self::Rloo,
        Self::ReinforcePlusPlusBaseline,
        Self::GrpoPassk,
    ];

    /// The estimator's name (verl's name where verl has one).
    ///
    /// ```
    /// assert_eq!(g2po::EstimatorKind::Rloo.name(), "rloo");
    /// ```
    pub const fn name(self) -> &'static str {
        match self {
            Self::Grpo => "grpo",
            Self::Gigpo => "gigpo",
            Self::G2po => "g2po",
            Self::G2poTree => "g2po_tree",
            Self::G2poBellman => "g2po_bellman",
            Self::Rloo => "rloo",
            Self::ReinforcePlusPlusBaseline => "reinforce_plus_plus_baseline",
            Self::GrpoPassk => "grpo_passk",
            Self::Ppo => "ppo",
        }
    }

    /// Whether the estimator fuses rows into states (needs keys or text).
    pub(crate) fn uses_states(self) -> bool {
        matches!(self, Self::Gigpo | Self::G2po | Self::G2poTree | Self::G2poBellman)
    }

    /// The output columns the estimator fills.
    pub(crate) fn columns(self) -> ColumnSet {
        match self {
            Self::Grpo => grpo::COLUMNS,
            Self::Gigpo => gigpo::COLUMNS,
            Self::G2po | Self::G2poTree | Self::G2poBellman => g2po::COLUMNS,
            Self::Rloo => rloo::COLUMNS,
            Self::ReinforcePlusPlusBaseline => reinforce_plus_plus_baseline::COLUMNS,
            Self::GrpoPassk => grpo_passk::COLUMNS,
            Self::Ppo => ppo::COLUMNS,
        }
    }
}

impl std::fmt::Display for EstimatorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for EstimatorKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let wanted = s.to_ascii_lowercase().replace('-', "_");
        Self::ALL.into_iter().find(|k| k.name() == wanted).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|k| k.name()).collect();
            Error::InvalidParameter {
                name: "estimator",
                reason: format!("unknown estimator {s:?} (expected one of {})", names.join(", ")),
            }
        })
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
    /// reused. For the built-in [`Estimator`] with exact keys (precomputed, or
    /// text hashed by a keyer whose canonicalisers borrow), a trainer that
    /// keeps one `Estimator` and one `Advantages` allocates nothing per step
    /// once the buffers have met the batch's shapes: on one worker thread, the
    /// second call with the same shapes allocates nothing (measured in
    /// `tests/allocations.rs`); in a larger pool, each worker's scratch grows
    /// on the first groups it processes. Similarity grouping allocates per
    /// group (its matchers). On error `out` is unspecified.
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
    /// Batch-wide buffers reused across calls (a concurrent call uses its own).
    workspace: Mutex<engine::Workspace>,
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
        Ok(Self { config, keyer: StateKeyer::new(), workspace: Mutex::default() })
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
        self.config.kind.name()
    }

    fn estimate_into(&self, batch: &RolloutBatch, out: &mut Advantages) -> Result<()> {
        // A second thread estimating with the same estimator at the same time
        // gets its own buffers instead of waiting.
        let mut own = None;
        let mut guard = self.workspace.try_lock().ok();
        let ws = match guard.as_deref_mut() {
            Some(ws) => ws,
            None => own.insert(engine::Workspace::default()),
        };
        engine::estimate_into(&self.config, &self.keyer, batch, out, ws)
    }
}
