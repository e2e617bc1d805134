//! The training configuration and the training error type.

use super::device::{DeviceError, DeviceSpec};
use g2po_envs::agentgym::AgentGymSpec;
use g2po_envs::{EnvError, EnvKind, EnvSpec};

use crate::EstimatorKind;
use crate::curriculum::{Curriculum, CurriculumError};
use crate::learner::{LearnerConfig, LearnerError};
use crate::policy::{PolicyConfig, PolicyError};

/// Everything that can go wrong while training.
///
/// ```
/// use g2po::train::{TrainConfig, TrainError};
/// let cfg = TrainConfig { rollouts_per_task: 0, ..TrainConfig::default() };
/// assert!(matches!(cfg.validate(), Err(TrainError::BadConfig(_))));
/// ```
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A configuration value is out of range.
    #[error("invalid training configuration: {0}")]
    BadConfig(String),
    /// The advantage engine rejected the batch or its configuration.
    #[error(transparent)]
    Engine(#[from] crate::Error),
    /// The learner failed.
    #[error(transparent)]
    Learner(#[from] LearnerError),
    /// The policy failed (acting, scoring, construction).
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// An environment or the tabular solver failed.
    #[error(transparent)]
    Env(#[from] EnvError),
    /// The curriculum is invalid.
    #[error(transparent)]
    Curriculum(#[from] CurriculumError),
    /// Writing logs, tables or plots failed.
    #[error("i/o error on {path}: {source}")]
    Io {
        /// The file involved.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Drawing a plot failed.
    #[error("plotting failed: {0}")]
    Plot(String),
    /// The requested device cannot be used (no `cuda` feature, no driver, no GPU).
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The language-model policy failed (e.g. its weights were never fetched).
    #[error(transparent)]
    Lm(#[from] crate::lm::LmError),
}

/// A training run.
///
/// `eval_horizon`: evaluation runs the greedy policy with this turn cap; `None`
/// means "the curriculum's cap at this iteration". A fixed evaluation horizon
/// is what makes curves of different curricula comparable (the ablation
/// evaluates the lost robot at its long horizon in both settings).
///
/// ```
/// use g2po::train::TrainConfig;
/// let c = TrainConfig::default();
/// assert_eq!(c.rollouts_per_task, 8);
/// assert!(c.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainConfig {
    /// The environment.
    pub env: EnvKind,
    /// The advantage estimator (with [`crate::EstimatorConfig::new`] defaults).
    pub estimator: EstimatorKind,
    /// The horizon (turn-cap) schedule; iteration `i` (1-based) uses `horizon(i)`.
    pub curriculum: Curriculum,
    /// Number of iterations (one update each).
    pub iterations: usize,
    /// Task groups per iteration.
    pub tasks_per_iter: usize,
    /// Rollouts per task (the group size N).
    pub rollouts_per_task: usize,
    /// Number of held-out evaluation tasks (seeds `EVAL_SEED_BASE + j`); 0 disables evaluation.
    pub eval_tasks: usize,
    /// Evaluate every this many iterations (and always at the last one); at least 1.
    pub eval_every: usize,
    /// Turn cap of the evaluation (`None`: the current curriculum cap).
    pub eval_horizon: Option<usize>,
    /// Sampling temperature of the training rollouts (the ground truth uses
    /// the same). The policy scores an action by the sum of its token
    /// log-probabilities, so at temperature 1 an untrained policy all but
    /// never picks a long command (each extra token costs about `ln(vocab)`
    /// nats); a higher temperature restores exploration, like sampling an
    /// LLM at temperature. Evaluation is always greedy.
    pub temperature: f64,
    /// Sizes of the policy.
    pub policy: PolicyConfig,
    /// The learner (loss, optimiser); a KL term in its loss makes the trainer
    /// keep a frozen copy of the initial policy as the reference.
    pub learner: LearnerConfig,
    /// Seed of the policy initialisation, task sampling and rollouts.
    pub seed: u64,
    /// Anchor rows with the environment's exact state key instead of the observation text.
    pub anchor_from_key: bool,
    /// Score the estimator against the exact advantages on tabular environments each iteration.
    pub truth: bool,
    /// Where the policy, reference and optimizer state live (default CPU).
    pub device: DeviceSpec,
    /// `Some(p)`: training tasks are drawn (with replacement) from the fixed
    /// pool of task seeds `0..p`, so the same tasks come back across
    /// iterations, like a fixed training set (ALFWorld's); `None`: every task
    /// is a fresh seed.
    #[serde(default)]
    pub task_pool: Option<u64>,
    /// Evaluate on the first `eval_tasks` seeds of the training pool (needs
    /// `task_pool` with at least `eval_tasks` seeds) instead of held-out
    /// seeds: this measures how well the greedy policy solves the tasks it
    /// trains on, for worlds where a small policy cannot generalise to new
    /// layouts within the budget.
    #[serde(default)]
    pub eval_on_train_pool: bool,
    /// `Some`: train the SmolLM2 + LoRA policy ([`super::LmTrainer`]) with
    /// these options instead of the toy policy (`policy` is then unused).
    #[serde(default)]
    pub lm: Option<super::lm::LmTrainOptions>,
    /// `Some(server)`: rollouts and evaluation run on this AgentGym
    /// environment server (`env` is then not used, and there is no ground
    /// truth); `None`: on the in-process `env`. See [`TrainConfig::env_spec`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agentgym: Option<AgentGymSpec>,
}

/// First seed of the held-out evaluation tasks (training tasks are drawn below it).
pub const EVAL_SEED_BASE: u64 = 1 << 40;

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            env: EnvKind::Chain,
            estimator: EstimatorKind::G2po,
            curriculum: Curriculum::Fixed(8),
            iterations: 50,
            tasks_per_iter: 4,
            rollouts_per_task: 8,
            eval_tasks: 8,
            eval_every: 1,
            eval_horizon: None,
            temperature: 1.0,
            policy: PolicyConfig { vocab: 512, hidden: 32, ..PolicyConfig::default() },
            learner: LearnerConfig { lr: 1e-2, ..LearnerConfig::default() },
            seed: 0,
            anchor_from_key: false,
            truth: true,
            device: DeviceSpec::Cpu,
            task_pool: None,
            eval_on_train_pool: false,
            lm: None,
            agentgym: None,
        }
    }
}

impl TrainConfig {
    /// The environment the run uses: the AgentGym server when one is set, else `env`.
    ///
    /// ```
    /// use g2po::train::TrainConfig;
    /// use g2po_envs::{EnvKind, EnvSpec};
    /// assert_eq!(TrainConfig::default().env_spec(), EnvSpec::Builtin(EnvKind::Chain));
    /// let remote = TrainConfig { agentgym: Some("http://127.0.0.1:36001".parse().unwrap()), ..Default::default() };
    /// assert!(matches!(remote.env_spec(), EnvSpec::AgentGym(_)));
    /// ```
    pub fn env_spec(&self) -> EnvSpec {
        match &self.agentgym {
            Some(s) => EnvSpec::AgentGym(s.clone()),
            None => EnvSpec::Builtin(self.env),
        }
    }

    /// Points the run at `spec`: a built-in kind sets `env` and clears
    /// `agentgym`, a remote one sets `agentgym`.
    ///
    /// ```
    /// let mut c = g2po::train::TrainConfig::default();
    /// c.set_env("household".parse().unwrap());
    /// assert_eq!(c.env, g2po_envs::EnvKind::Household);
    /// ```
    pub fn set_env(&mut self, spec: EnvSpec) {
        match spec {
            EnvSpec::Builtin(k) => {
                self.env = k;
                self.agentgym = None;
            }
            EnvSpec::AgentGym(s) => self.agentgym = Some(s),
        }
    }

    /// Checks every option (the learner's and the curriculum's included).
    ///
    /// ```
    /// let c = g2po::train::TrainConfig { iterations: 0, ..Default::default() };
    /// assert!(c.validate().is_err());
    /// let c = g2po::train::TrainConfig { eval_on_train_pool: true, task_pool: Some(4), eval_tasks: 8, ..Default::default() };
    /// assert!(c.validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |m: &str| Err(TrainError::BadConfig(m.to_string()));
        if self.iterations == 0 {
            return bad("iterations must be positive");
        }
        if self.tasks_per_iter == 0 || self.rollouts_per_task == 0 {
            return bad("tasks_per_iter and rollouts_per_task must be positive");
        }
        if self.eval_every == 0 {
            return bad("eval_every must be positive");
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return bad("temperature must be finite and > 0");
        }
        if self.eval_horizon == Some(0) {
            return bad("eval_horizon must be positive");
        }
        if self.task_pool == Some(0) {
            return bad("task_pool must be positive");
        }
        if let Some(p) = self.task_pool
            && p >= EVAL_SEED_BASE
        {
            return bad("task_pool must stay below EVAL_SEED_BASE");
        }
        if self.eval_on_train_pool && self.task_pool.is_none_or(|p| p < self.eval_tasks as u64) {
            return bad("eval_on_train_pool needs a task_pool of at least eval_tasks seeds");
        }
        self.curriculum.validate()?;
        self.learner.validate()?;
        Ok(())
    }
}
