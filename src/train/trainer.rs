//! The training loop.

use std::time::Instant;

use g2po_envs::{EnvKind, make_env_with_seed};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::config::{EVAL_SEED_BASE, TrainConfig, TrainError};
use super::rollouts::{RolloutSet, collect_rollouts, rollout_seed};
use super::truth::{TruthScore, TruthTable, score_advantages};
use crate::learner::{Learner, UpdateBatch, UpdateRow, UpdateStats};
use crate::policy::Policy;
use crate::{AdvantageEstimator, Estimator, EstimatorConfig};

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
    /// Seconds since the run started.
    pub wall_s: f64,
}

/// A training run: policy, learner, estimator and schedule.
pub struct Trainer {
    cfg: TrainConfig,
    policy: Policy,
    reference: Option<Policy>,
    learner: Learner,
    estimator: Estimator,
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
///
/// ```
/// use g2po::policy::{Policy, PolicyConfig};
/// let p = Policy::new(&PolicyConfig { vocab: 64, hidden: 8, ..Default::default() }, &candle_core::Device::Cpu, 0).unwrap();
/// let rate = g2po::train::evaluate(&p, g2po_envs::EnvKind::Chain, &[0, 1], 10).unwrap();
/// assert!((0.0..=1.0).contains(&rate));
/// ```
pub fn evaluate(policy: &Policy, env: EnvKind, tasks: &[u64], horizon: usize) -> Result<f64, TrainError> {
    if tasks.is_empty() {
        return Ok(0.0);
    }
    let wins = tasks
        .par_iter()
        .map(|&task| -> Result<bool, TrainError> {
            let mut e = make_env_with_seed(env, task);
            let mut obs = e.reset(task);
            for _ in 0..horizon {
                let i = policy.greedy(&obs.text, &obs.admissible)?;
                let out = e.step(&obs.admissible[i]);
                if out.done {
                    return Ok(out.success);
                }
                obs = out.observation;
            }
            Ok(false)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(wins.iter().filter(|&&w| w).count() as f64 / tasks.len() as f64)
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
        let truth = if cfg.truth { TruthTable::new(cfg.env) } else { None };
        let task_rng = ChaCha8Rng::seed_from_u64(rollout_seed(cfg.seed, u64::MAX, 1, 0));
        Ok(Self { cfg, policy, reference, learner, estimator, truth, task_rng })
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
        let set = collect_rollouts(
            &self.policy,
            cfg.env,
            &tasks,
            cfg.rollouts_per_task,
            horizon,
            cfg.temperature,
            cfg.seed,
            iteration as u64,
        )?;
        let batch = set.batch(cfg.anchor_from_key)?;
        let adv = self.estimator.estimate(&batch)?;
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
        let eval_success =
            if cfg.eval_tasks > 0 && (iteration.is_multiple_of(cfg.eval_every) || iteration == cfg.iterations) {
                let h = cfg.eval_horizon.unwrap_or(horizon);
                Some(evaluate(&self.policy, cfg.env, &self.eval_tasks(), h)?)
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
            wall_s: started.elapsed().as_secs_f64(),
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
