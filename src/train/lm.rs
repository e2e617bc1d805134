//! Training the SmolLM2 + LoRA policy ([`crate::lm`]) with the same loop as
//! [`super::Trainer`]: task groups, rollouts, advantages from the chosen
//! estimator, one GRPO update, greedy evaluation, one [`IterationLog`] per
//! iteration.
//!
//! What differs from the toy loop, and why:
//!
//! * the policy reads a ChatML prompt built from the recent turns of its
//!   episode ([`crate::lm::PromptConfig::history`]), not only the current
//!   observation; the prompt is what the update row stores, while the
//!   estimator still anchors rows on the observation text (or the state key),
//!   as with the toy policy;
//! * decisions are the expensive part, so within one iteration (the policy
//!   is fixed while it collects) the scores of a prompt are computed once and
//!   reused by every rollout that reaches the same prompt ([`ScoreMemo`]);
//!   the values are the same either way, so this changes no result. In the
//!   text worlds rollouts of a group revisit the same states, so this saves
//!   most of the scoring;
//! * rollouts run one after another (the model's matmuls use the threads);
//!   each has its own ChaCha8 stream from [`rollout_seed`], so results do not
//!   depend on the order or the thread count;
//! * the update is [`LmLearner`]: a prompt's actions are one GRPO group step
//!   on the prompt's shared cache;
//! * environments come from [`TrainConfig::env_spec`], so an AgentGym server
//!   works as with the toy loop, but a failing server ends the run with its
//!   error rather than dropping the task (a decision here costs seconds, so a
//!   retry policy is the caller's choice);
//! * no ground-truth score: the exact advantages need the policy's action
//!   probabilities at every tabular state, which is affordable for the toy
//!   policy only.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::config::{EVAL_SEED_BASE, TrainConfig, TrainError};
use super::rollouts::{CollectedRow, Rollout, RolloutSet, rollout_seed};
use super::trainer::IterationLog;
use crate::learner::{UpdateBatch, UpdateRow};
use crate::lm::{GgufFile, LmLearner, LmPolicyConfig, PromptContext, ScoredAction, SmolLmPolicy, default_gguf_path};
use crate::{AdvantageEstimator, Estimator, EstimatorConfig};

/// Options of the language-model policy in a training run
/// ([`TrainConfig::lm`]).
///
/// ```
/// let o = g2po::train::LmTrainOptions::default();
/// assert!(o.gguf.is_none()); // the setup script's cache
/// ```
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct LmTrainOptions {
    /// The GGUF file (`None`: [`default_gguf_path`]).
    pub gguf: Option<PathBuf>,
    /// Adapters, prompt and greedy rule.
    pub policy: LmPolicyConfig,
    /// Also evaluate the untrained policy (the base: LoRA starts at zero)
    /// before the first update, reported as [`LmProfile::eval_before`] of
    /// iteration 1: the "before" of a before/after comparison.
    #[serde(default)]
    pub eval_before: bool,
}

/// Scores of the prompts seen in one iteration (see the module docs).
#[derive(Debug, Default)]
pub struct ScoreMemo {
    scores: HashMap<String, Vec<ScoredAction>>,
    /// Decisions answered from the memo.
    pub hits: usize,
    /// Decisions that ran the model.
    pub misses: usize,
}

impl ScoreMemo {
    /// The scores of `admissible` after `prompt`, computed once. The prompt
    /// lists the admissible actions, so it is a complete key.
    pub fn score(
        &mut self,
        policy: &SmolLmPolicy,
        prompt: String,
        admissible: &[String],
    ) -> Result<&[ScoredAction], TrainError> {
        use std::collections::hash_map::Entry;
        match self.scores.entry(prompt) {
            Entry::Occupied(e) => {
                self.hits += 1;
                Ok(e.into_mut())
            }
            Entry::Vacant(e) => {
                self.misses += 1;
                let s = policy.score(e.key(), admissible)?;
                Ok(e.insert(s))
            }
        }
    }
}

/// Where one iteration's time went, and how much the memo saved.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LmProfile {
    /// Seconds collecting rollouts.
    pub rollout_s: f64,
    /// Seconds in the update.
    pub update_s: f64,
    /// Seconds evaluating.
    pub eval_s: f64,
    /// Rollout decisions answered from the memo.
    pub memo_hits: usize,
    /// Rollout decisions that ran the model (distinct prompts).
    pub memo_misses: usize,
    /// Iteration 1 with [`LmTrainOptions::eval_before`]: the greedy success
    /// rate of the untrained policy on the evaluation tasks, at the
    /// evaluation horizon (or the first curriculum cap).
    pub eval_before: Option<f64>,
}

/// A training run of the SmolLM2 policy (see the module docs).
pub struct LmTrainer {
    cfg: TrainConfig,
    policy: SmolLmPolicy,
    reference: Option<SmolLmPolicy>,
    learner: LmLearner,
    estimator: Estimator,
    task_rng: ChaCha8Rng,
    profile: LmProfile,
}

impl std::fmt::Debug for LmTrainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LmTrainer").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

/// One LM rollout: the toy's row data plus the prompt of every step.
struct LmRollout {
    rollout: Rollout,
    prompts: Vec<String>,
}

impl LmTrainer {
    /// Loads the model (from `cfg.lm`'s GGUF, default the setup script's
    /// cache) onto `cfg.device`, adds adapters seeded by `cfg.seed`, and
    /// builds learner and estimator. A KL term in the loss makes the
    /// reference the base with the adapters off.
    ///
    /// Errors: an invalid configuration, `cfg.lm` unset, a missing or
    /// corrupt GGUF ([`crate::lm::LmError`]), an unusable device.
    pub fn new(cfg: TrainConfig) -> Result<Self, TrainError> {
        cfg.validate()?;
        let opts = cfg.lm.clone().ok_or_else(|| TrainError::BadConfig("LmTrainer needs TrainConfig::lm".into()))?;
        // PPO needs a value head on the model; said before the weights load and a whole
        // rollout phase runs, not at the first estimate.
        if cfg.estimator == crate::EstimatorKind::Ppo {
            return Err(TrainError::BadConfig(
                "the SmolLM2 policy has no critic: ppo is not available with --policy smollm2".into(),
            ));
        }
        let device = cfg.device.open()?;
        let path = opts.gguf.clone().unwrap_or_else(default_gguf_path);
        let file = GgufFile::open(&path)?;
        let policy = SmolLmPolicy::load(&file, opts.policy.clone(), &device, cfg.seed)?;
        let reference = cfg.learner.loss.kl.map(|_| policy.reference());
        let mut lcfg = cfg.learner;
        lcfg.seed = rollout_seed(cfg.seed, u64::MAX, 0, 0);
        let learner = LmLearner::new(lcfg, &policy)?;
        let estimator = Estimator::new(EstimatorConfig::new(cfg.estimator))?;
        let task_rng = ChaCha8Rng::seed_from_u64(rollout_seed(cfg.seed, u64::MAX, 1, 0));
        Ok(Self { cfg, policy, reference, learner, estimator, task_rng, profile: LmProfile::default() })
    }

    /// The configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// The current policy.
    pub fn policy(&self) -> &SmolLmPolicy {
        &self.policy
    }

    /// The profile of the last iteration.
    pub fn profile(&self) -> LmProfile {
        self.profile
    }

    /// The evaluation task seeds (as [`super::Trainer::eval_tasks`]).
    pub fn eval_tasks(&self) -> Vec<u64> {
        let base = if self.cfg.eval_on_train_pool { 0 } else { EVAL_SEED_BASE };
        (0..self.cfg.eval_tasks as u64).map(|j| base + j).collect()
    }

    fn draw_tasks(&mut self) -> Vec<u64> {
        let top = self.cfg.task_pool.unwrap_or(EVAL_SEED_BASE);
        (0..self.cfg.tasks_per_iter).map(|_| self.task_rng.random_range(0..top)).collect()
    }

    /// Greedy success rate of the current policy on `tasks` with turn cap
    /// `horizon`.
    pub fn evaluate(&self, tasks: &[u64], horizon: usize) -> Result<f64, TrainError> {
        evaluate_lm(&self.policy, &self.cfg, tasks, horizon)
    }

    /// Runs one iteration (1-based) and returns its log.
    pub fn step(&mut self, iteration: usize, started: Instant) -> Result<IterationLog, TrainError> {
        let horizon = self.cfg.curriculum.horizon(iteration as u64);
        let wants_before =
            iteration == 1 && self.cfg.eval_tasks > 0 && self.cfg.lm.as_ref().is_some_and(|o| o.eval_before);
        let eval_before = if wants_before {
            Some(self.evaluate(&self.eval_tasks(), self.cfg.eval_horizon.unwrap_or(horizon))?)
        } else {
            None
        };
        let tasks = self.draw_tasks();
        let cfg = &self.cfg;
        let clock = Instant::now();
        let mut memo = ScoreMemo::default();
        let mut rollouts = Vec::with_capacity(tasks.len() * cfg.rollouts_per_task);
        for (t, &task) in tasks.iter().enumerate() {
            for r in 0..cfg.rollouts_per_task {
                let seed = rollout_seed(cfg.seed, iteration as u64, t as u64, r as u64);
                rollouts.push(run_one(&self.policy, cfg, task, horizon, seed, &mut memo)?);
            }
        }
        let prompts: Vec<String> = rollouts.iter().flat_map(|r| r.prompts.iter().cloned()).collect();
        let set = RolloutSet {
            rollouts: rollouts.into_iter().map(|r| r.rollout).collect(),
            per_task: cfg.rollouts_per_task,
            horizon,
        };
        let rollout_s = clock.elapsed().as_secs_f64();
        let batch = set.batch(cfg.anchor_from_key)?;
        let adv = self.estimator.estimate(&batch)?;
        let tokens = crate::broadcast::padded(&adv, &batch, None)?;
        let rows = set
            .rows()
            .zip(prompts)
            .map(|(r, prompt)| UpdateRow {
                observation: prompt,
                action_tokens: r.tokens.clone(),
                old_logps: r.logps.clone(),
            })
            .collect();
        let update = UpdateBatch::new(rows, tokens)?;
        let clock = Instant::now();
        let stats = self.learner.update(&self.policy, self.reference.as_ref(), &update)?;
        let update_s = clock.elapsed().as_secs_f64();
        let clock = Instant::now();
        let cfg = &self.cfg;
        let eval_success =
            if cfg.eval_tasks > 0 && (iteration.is_multiple_of(cfg.eval_every) || iteration == cfg.iterations) {
                let h = cfg.eval_horizon.unwrap_or(horizon);
                Some(self.evaluate(&self.eval_tasks(), h)?)
            } else {
                None
            };
        self.profile = LmProfile {
            rollout_s,
            update_s,
            eval_s: clock.elapsed().as_secs_f64(),
            memo_hits: memo.hits,
            memo_misses: memo.misses,
            eval_before,
        };
        Ok(IterationLog {
            iteration,
            horizon,
            train_success: set.success_rate(),
            eval_success,
            mean_length: set.mean_length(),
            update: stats,
            truth: None,
            critic: None,
            wall_s: started.elapsed().as_secs_f64(),
            dropped_tasks: 0,
        })
    }

    /// Runs all iterations, calling `on_log` after each; returns the logs.
    pub fn run(self, mut on_log: impl FnMut(&IterationLog)) -> Result<Vec<IterationLog>, TrainError> {
        self.run_profiled(|log, _| on_log(log))
    }

    /// [`LmTrainer::run`], also handing each iteration's [`LmProfile`] to
    /// the callback.
    pub fn run_profiled(
        mut self,
        mut on_log: impl FnMut(&IterationLog, &LmProfile),
    ) -> Result<Vec<IterationLog>, TrainError> {
        let started = Instant::now();
        let mut logs = Vec::with_capacity(self.cfg.iterations);
        for i in 1..=self.cfg.iterations {
            let log = self.step(i, started)?;
            on_log(&log, &self.profile);
            logs.push(log);
        }
        Ok(logs)
    }
}

/// Greedy success rate of `policy` on `tasks` with turn cap `horizon`.
///
/// Errors: a policy or environment failure.
pub fn evaluate_lm(policy: &SmolLmPolicy, cfg: &TrainConfig, tasks: &[u64], horizon: usize) -> Result<f64, TrainError> {
    if tasks.is_empty() {
        return Ok(0.0);
    }
    let mut memo = ScoreMemo::default();
    let mut wins = 0usize;
    for &task in tasks {
        let mut env = cfg.env_spec().make(task);
        let mut obs = env.try_reset(task)?;
        let mut history: Vec<(String, String)> = Vec::new();
        for _ in 0..horizon {
            let prompt = policy.render(&PromptContext {
                history: &history,
                observation: &obs.text,
                admissible: &obs.admissible,
            });
            let scored = memo.score(policy, prompt, &obs.admissible)?;
            let i = policy.pick_greedy(scored);
            let action = obs.admissible[i].clone();
            let out = env.try_step(&action)?;
            if out.done {
                wins += usize::from(out.success);
                break;
            }
            history.push((std::mem::take(&mut obs.text), action));
            obs = out.observation;
        }
    }
    Ok(wins as f64 / tasks.len() as f64)
}

fn run_one(
    policy: &SmolLmPolicy,
    cfg: &TrainConfig,
    task: u64,
    horizon: usize,
    seed: u64,
    memo: &mut ScoreMemo,
) -> Result<LmRollout, TrainError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut env = cfg.env_spec().make(seed);
    let mut obs = env.try_reset(task)?;
    let mut rows = Vec::new();
    let mut prompts = Vec::new();
    let mut history: Vec<(String, String)> = Vec::new();
    let mut success = false;
    for t in 0..horizon {
        let prompt =
            policy.render(&PromptContext { history: &history, observation: &obs.text, admissible: &obs.admissible });
        let scored = memo.score(policy, prompt.clone(), &obs.admissible)?.to_vec();
        let act = SmolLmPolicy::sample(scored, cfg.temperature, &mut rng)?;
        let action = obs.admissible[act.index].clone();
        let out = env.try_step(&action)?;
        history.push((obs.text.clone(), action.clone()));
        rows.push(CollectedRow {
            observation: std::mem::take(&mut obs.text),
            key: obs.key,
            action,
            tokens: act.tokens,
            logps: act.logps,
            valid: out.valid,
            turns_left: horizon - t,
        });
        prompts.push(prompt);
        obs = out.observation;
        if out.done {
            success = out.success;
            break;
        }
    }
    Ok(LmRollout { rollout: Rollout { task, rows, success }, prompts })
}
