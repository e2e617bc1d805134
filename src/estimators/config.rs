//! The options every estimator shares: normalisation, statistics, state
//! fusion, terminal values and their validation. One [`EstimatorConfig`]
//! describes any estimator; fields an estimator does not use are ignored.

use serde::{Deserialize, Serialize};

use super::EstimatorKind;
use crate::error::{Error, Result};
use crate::rollout::MAX_ABS_REWARD;

/// Largest accepted `|step_weight|`: with rewards bounded by
/// [`MAX_ABS_REWARD`], the weighted step terms stay within the `f32` range.
pub const MAX_ABS_STEP_WEIGHT: f64 = 1e6;

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

/// Every option of the estimators (SPEC sections 1-3, 7, 8). Fields that an
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
        // Bounds that keep every result finite in f32 (see MAX_ABS_REWARD).
        if !(self.step_weight.is_finite() && self.step_weight.abs() <= MAX_ABS_STEP_WEIGHT) {
            return bad("step_weight", "must be finite with |w| <= 1e6 (results are f32)");
        }
        if !(self.invalid_penalty.is_finite() && self.invalid_penalty.abs() <= MAX_ABS_REWARD) {
            return bad("invalid_penalty", "must be finite with |p| <= 1e30 (results are f32)");
        }
        if self.kind == EstimatorKind::GrpoPassk && self.stats_over != StatsOver::Rows {
            return bad("stats_over", "grpo_passk compares rows (verl's reading): stats_over must be rows");
        }
        if let Grouping::Similarity { threshold } = self.grouping
            && !(0.0..=1.0).contains(&threshold)
        {
            return bad("similarity_thresh", "must lie in [0, 1]");
        }
        if let TerminalValues::Fixed { success, failure } = self.terminal
            && !([success, failure].iter().all(|v| v.is_finite() && v.abs() <= MAX_ABS_REWARD))
        {
            return bad("terminal", "terminal values must be finite with magnitude <= 1e30 (results are f32)");
        }
        Ok(())
    }
}
