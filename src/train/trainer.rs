//! The training loop.

use std::time::Instant;

use g2po_envs::EnvSpec;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::config::{EVAL_SEED_BASE, TrainConfig, TrainError};
use super::rollouts::{RolloutSet, collect_rollouts_dropping, rollout_seed};
use super::truth::{TruthScore, TruthTable, score_advantages};
use crate::estimators::TurnGae;
use crate::learner::critic::{Critic, CriticConfig, CriticStats};
use crate::learner::{Learner, UpdateBatch, UpdateRow, UpdateStats};
use crate::policy::Policy;
use crate::{AdvantageEstimator, Advantages, Estimator, EstimatorConfig, EstimatorKind};

/// GAE's trace parameter of turn-level PPO in training (CleanRL's default; verl's is 1).
pub const PPO_GAE_LAMBDA: f64 = 0.95;

/// What one iteration did (one JSONL line of `g2po train`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct IterationLog {
    /// Iteration number, 1-based.
    pub iteration: usize,
    /// Horizon cap of this iteration's rollouts.
    pub horizon: usize,
    /// Fraction of this iteration's rollouts that succeeded (before the update).
    pub train_success: f64,
    /// Greedy success rate on the evaluation tasks after the update (`None` when not evaluated).
    pub eval_success: Option<f64>,
    /// Mean rollout length in steps.
    pub mean_length: f64,
    /// Learner diagnostics of the update.
    pub update: UpdateStats,
    /// Estimator advantages vs the exact ones (tabular environments only).
    pub truth: Option<TruthScore>,
    /// The critic's update (PPO only): value loss, value clip fraction, explained variance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub critic: Option<CriticStats>,
    /// Seconds since the run started.
    pub wall_s: f64,
    /// Training and evaluation tasks left out because their environment failed
    /// (a remote server that was dead, slow or garbled; always 0 in process).
    #[serde(default)]
    pub dropped_tasks: usize,
}

/// A training run: policy, learner, estimator and schedule.
pub struct Trainer {
    cfg: TrainConfig,
    policy: Policy,
    reference: Option<Policy>,
    learner: Learner,
    estimator: Estimator,
    /// PPO's value network (only for [`EstimatorKind::Ppo`]).
    critic: Option<Critic>,
    truth: Option<TruthTable>,
    task_rng: ChaCha8Rng,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

/// Greedy success rate of `policy` on `tasks` with turn cap `horizon`
/// (evaluation rollouts run in parallel; greedy play is deterministic).
/// A task whose environment fails is left out of the rate (see
/// [`evaluate_dropping`]).
///
/// ```
/// use g2po::policy::{Policy, PolicyConfig};
/// let p = Policy::new(&PolicyConfig { vocab: 64, hidden: 8, ..Default::default() }, &candle_core::Device::Cpu, 0).unwrap();
/// let chain = g2po_envs::EnvKind::Chain;
/// let rate = g2po::train::evaluate(&p, chain, &[0, 1], 10).unwrap();
/// // The mean of the per-task outcomes (greedy play is deterministic).
/// let one = |t| g2po::train::evaluate(&p, chain, &[t], 10).unwrap();
/// assert_eq!(rate, (one(0) + one(1)) / 2.0);
/// assert_eq!(g2po::train::evaluate(&p, chain, &[], 10).unwrap(), 0.0);
/// ```
pub fn evaluate(policy: &Policy, env: impl Into<EnvSpec>, tasks: &[u64], horizon: usize) -> Result<f64, TrainError> {
    evaluate_dropping(policy, env, tasks, horizon).map(|(rate, _)| rate)
}

/// [`evaluate`], also returning how many tasks were left out because their
/// environment failed; when every task fails, the first failure is the error.
///
/// ```
/// use g2po::policy::{Policy, PolicyConfig};
/// let p = Policy::new(&PolicyConfig { vocab: 64, hidden: 8, ..Default::default() }, &candle_core::Device::Cpu, 0).unwrap();
/// let (_, dropped) = g2po::train::evaluate_dropping(&p, g2po_envs::EnvKind::Chain, &[0], 10).unwrap();
/// assert_eq!(dropped, 0);
/// ```
pub fn evaluate_dropping(
    policy: &Policy,
    env: impl Into<EnvSpec>,
    tasks: &[u64],
    horizon: usize,
) -> Result<(f64, usize), TrainError> {
    if tasks.is_empty() {
        return Ok((0.0, 0));
    }
    let env = env.into();
    let policy = policy.memoized();
    let results: Vec<Result<bool, TrainError>> = tasks
        .par_iter()
        .map(|&task| -> Result<bool, TrainError> {
            let mut e = env.make(task);
            let mut obs = e.try_reset(task)?;
            for _ in 0..horizon {
                let i = policy.greedy(&obs.text, &obs.admissible)?;
                let out = e.try_step(&obs.admissible[i])?;
                if out.done {
                    return Ok(out.success);
                }
                obs = out.observation;
            }
            Ok(false)
        })
        .collect();
    let (mut wins, mut played, mut first_failure) = (0usize, 0usize, None);
    for r in results {
        match r {
            Ok(w) => {
                played += 1;
                wins += usize::from(w);
            }
            Err(TrainError::Env(e)) => first_failure = first_failure.or(Some(e)),
            Err(other) => return Err(other),
        }
    }
    match first_failure {
        Some(e) if played == 0 => Err(TrainError::Env(e)),
        _ => Ok((wins as f64 / played as f64, tasks.len() - played)),
    }
}

impl Trainer {
    /// Builds the policy (seeded by `cfg.seed`), learner, estimator and, on
    /// tabular environments with `cfg.truth`, the ground-truth table.
    ///
    /// ```
    /// let t = g2po::train::Trainer::new(g2po::train::TrainConfig::default()).unwrap();
    /// assert_eq!(t.config().rollouts_per_task, 8);
    /// assert!(g2po::train::Trainer::new(g2po::train::TrainConfig { iterations: 0, ..Default::default() }).is_err());
    /// ```
    pub fn new(cfg: TrainConfig) -> Result<Self, TrainError> {
        cfg.validate()?;
        if cfg.lm.is_some() {
            return Err(TrainError::BadConfig("TrainConfig::lm is set: train it with LmTrainer".into()));
        }
        let device = cfg.device.open()?;
        let policy = Policy::new(&cfg.policy, &device, cfg.seed)?;
        let reference = match cfg.learner.loss.kl {
            Some(_) => Some(policy.clone_frozen()?),
            None => None,
        };
        let mut lcfg = cfg.learner;
        lcfg.seed = rollout_seed(cfg.seed, u64::MAX, 0, 0);
        let learner = Learner::new(lcfg, &policy)?;
        let estimator = Estimator::new(EstimatorConfig::new(cfg.estimator))?;
        let critic = match cfg.estimator {
            EstimatorKind::Ppo => {
                Some(Critic::new(&policy, CriticConfig::default(), rollout_seed(cfg.seed, u64::MAX, 2, 0))?)
            }
            _ => None,
        };
        // Ground truth needs the exact tabular model: in-process environments only.
        let truth = if cfg.truth && cfg.agentgym.is_none() { TruthTable::new(cfg.env) } else { None };
        let task_rng = ChaCha8Rng::seed_from_u64(rollout_seed(cfg.seed, u64::MAX, 1, 0));
        Ok(Self { cfg, policy, reference, learner, estimator, critic, truth, task_rng })
    }

    /// The configuration.
    ///
    /// ```
    /// let t = g2po::train::Trainer::new(g2po::train::TrainConfig { seed: 4, ..Default::default() }).unwrap();
    /// assert_eq!(t.config().seed, 4);
    /// ```
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// The current policy.
    ///
    /// ```
    /// let t = g2po::train::Trainer::new(g2po::train::TrainConfig::default()).unwrap();
    /// assert_eq!(t.policy().config().vocab, 512);
    /// ```
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The evaluation task seeds: held out (`EVAL_SEED_BASE + j`, disjoint
    /// from the training tasks, which are drawn below `EVAL_SEED_BASE`), or,
    /// with `eval_on_train_pool`, the first seeds `0..eval_tasks` of the
    /// training pool.
    ///
    /// ```
    /// use g2po::train::{TrainConfig, Trainer};
    /// let t = Trainer::new(TrainConfig { eval_tasks: 3, ..Default::default() }).unwrap();
    /// assert_eq!(t.eval_tasks().len(), 3);
    /// let cfg = TrainConfig { eval_tasks: 2, task_pool: Some(5), eval_on_train_pool: true, ..Default::default() };
    /// assert_eq!(Trainer::new(cfg).unwrap().eval_tasks(), vec![0, 1]);
    /// ```
    pub fn eval_tasks(&self) -> Vec<u64> {
        let base = if self.cfg.eval_on_train_pool { 0 } else { EVAL_SEED_BASE };
        (0..self.cfg.eval_tasks as u64).map(|j| base + j).collect()
    }

    /// Draws the next iteration's `tasks_per_iter` training task seeds from
    /// the run's task stream (advancing it): uniform below `EVAL_SEED_BASE`,
    /// so they never meet the held-out evaluation seeds, or, with
    /// `task_pool = Some(p)`, uniform in the fixed pool `0..p`.
    ///
    /// ```
    /// use g2po::train::{TrainConfig, Trainer};
    /// let mut t = Trainer::new(TrainConfig { task_pool: Some(3), tasks_per_iter: 50, ..Default::default() }).unwrap();
    /// let tasks = t.draw_tasks();
    /// assert_eq!(tasks.len(), 50);
    /// assert!(tasks.iter().all(|&s| s < 3));
    /// assert_eq!(tasks.iter().collect::<std::collections::HashSet<_>>().len(), 3);
    /// ```
    pub fn draw_tasks(&mut self) -> Vec<u64> {
        let top = self.cfg.task_pool.unwrap_or(EVAL_SEED_BASE);
        (0..self.cfg.tasks_per_iter).map(|_| self.task_rng.random_range(0..top)).collect()
    }

    /// Runs one iteration (1-based `iteration`) and returns its log.
    ///
    /// ```
    /// use g2po::train::{TrainConfig, Trainer};
    /// let mut t = Trainer::new(TrainConfig { iterations: 1, tasks_per_iter: 1, rollouts_per_task: 2, eval_tasks: 1, ..Default::default() }).unwrap();
    /// let log = t.step(1, std::time::Instant::now()).unwrap();
    /// assert_eq!(log.iteration, 1);
    /// assert!(log.truth.is_some()); // the chain is tabular
    /// ```
    pub fn step(&mut self, iteration: usize, started: Instant) -> Result<IterationLog, TrainError> {
        let tasks = self.draw_tasks();
        let cfg = &self.cfg;
        let horizon = cfg.curriculum.horizon(iteration as u64);
        let env = cfg.env_spec();
        let (set, dropped) = collect_rollouts_dropping(
            &self.policy,
            env.clone(),
            &tasks,
            cfg.rollouts_per_task,
            horizon,
            cfg.temperature,
            cfg.seed,
            iteration as u64,
        )?;
        let batch = set.batch(cfg.anchor_from_key)?;
        // PPO: GAE from the critic's values of the rollouts' states; the critic
        // trains on the returns after the policy update.
        let mut critic_targets = None;
        let adv = match &self.critic {
            Some(critic) => {
                let observations: Vec<&str> = set.rows().map(|r| r.observation.as_str()).collect();
                let values = critic.values(&self.policy, &observations)?;
                let gae = TurnGae::new(self.estimator.config().gamma, PPO_GAE_LAMBDA)?.estimate(&batch, &values)?;
                critic_targets = Some((values, gae.returns));
                Advantages { advantage: gae.advantage, episode: gae.raw_advantage, ..Default::default() }
            }
            None => self.estimator.estimate(&batch)?,
        };
        let truth = match &self.truth {
            Some(table) if adv.advantage.len() >= 2 => {
                Some(truth_score(table, &self.policy, cfg.temperature, &set, &adv.advantage)?)
            }
            _ => None,
        };
        // The engine's padded token layout: each row's advantage on its
        // action tokens, with the response mask.
        let tokens = crate::broadcast::padded(&adv, &batch, None)?;
        let rows = set
            .rows()
            .map(|r| UpdateRow {
                observation: r.observation.clone(),
                action_tokens: r.tokens.clone(),
                old_logps: r.logps.clone(),
            })
            .collect();
        let update = UpdateBatch::new(rows, tokens)?;
        let stats = self.learner.update(&self.policy, self.reference.as_ref(), &update)?;
        let critic = match (self.critic.as_mut(), critic_targets) {
            (Some(critic), Some((values, returns))) => {
                let observations: Vec<&str> = set.rows().map(|r| r.observation.as_str()).collect();
                Some(critic.update(&self.policy, &observations, &values, &returns)?)
            }
            _ => None,
        };
        let mut dropped_tasks = dropped.len();
        let eval_success =
            if cfg.eval_tasks > 0 && (iteration.is_multiple_of(cfg.eval_every) || iteration == cfg.iterations) {
                let h = cfg.eval_horizon.unwrap_or(horizon);
                let (rate, left_out) = evaluate_dropping(&self.policy, env, &self.eval_tasks(), h)?;
                dropped_tasks += left_out;
                Some(rate)
            } else {
                None
            };
        Ok(IterationLog {
            iteration,
            horizon,
            train_success: set.success_rate(),
            eval_success,
            mean_length: set.mean_length(),
            update: stats,
            truth,
            critic,
            wall_s: started.elapsed().as_secs_f64(),
            dropped_tasks,
        })
    }

    /// Runs all iterations, calling `on_log` after each; returns the logs.
    ///
    /// ```
    /// use g2po::train::{TrainConfig, Trainer};
    /// let cfg = TrainConfig { iterations: 2, tasks_per_iter: 1, rollouts_per_task: 2, eval_tasks: 1, ..Default::default() };
    /// let mut seen = 0;
    /// let logs = Trainer::new(cfg).unwrap().run(|_| seen += 1).unwrap();
    /// assert_eq!((logs.len(), seen), (2, 2));
    /// ```
    pub fn run(mut self, mut on_log: impl FnMut(&IterationLog)) -> Result<Vec<IterationLog>, TrainError> {
        let started = Instant::now();
        let mut logs = Vec::with_capacity(self.cfg.iterations);
        for i in 1..=self.cfg.iterations {
            let log = self.step(i, started)?;
            on_log(&log);
            logs.push(log);
        }
        Ok(logs)
    }
}

/// Scores `advantages` (batch order of `set`) against the exact advantages of
/// `policy` (sampling at `temperature`) at the set's horizon cap.
fn truth_score(
    table: &TruthTable,
    policy: &Policy,
    temperature: f64,
    set: &RolloutSet,
    advantages: &[f32],
) -> Result<TruthScore, TrainError> {
    let probs = table.policy_probs(policy, temperature)?;
    let gt = table.solve(&probs, set.horizon)?;
    let truth = table.true_advantages(&gt, set.rows())?;
    score_advantages(advantages, &truth)
}
