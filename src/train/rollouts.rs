//! Parallel, deterministic rollout collection.
//!
//! Each rollout owns its environment instance and its random stream
//! ([`rollout_seed`] of run seed, iteration, task and rollout index), and
//! rayon writes it into its own slot, so the collected set does not depend on
//! the number of threads or on scheduling.

use g2po_envs::{EnvError, EnvSpec};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::config::TrainError;
use crate::policy::{MemoizedPolicy, Policy};
use crate::{Anchor, RolloutBatch, Step};

/// Episode reward of a success (0 for failure or truncation), the peers' scale.
pub const SUCCESS_REWARD: f64 = 10.0;

/// One step of a collected rollout.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectedRow {
    /// Observation text the action was chosen from.
    pub observation: String,
    /// Exact environment state key of that observation.
    pub key: u64,
    /// The chosen action's text.
    pub action: String,
    /// Its token ids.
    pub tokens: Vec<u32>,
    /// Per-token log-probabilities under the sampling policy.
    pub logps: Vec<f32>,
    /// Whether the environment accepted the action.
    pub valid: bool,
    /// Turns left before this step (the horizon cap minus the step index).
    pub turns_left: usize,
}

/// One trajectory.
#[derive(Debug, Clone, PartialEq)]
pub struct Rollout {
    /// Task seed (the group).
    pub task: u64,
    /// Steps in order.
    pub rows: Vec<CollectedRow>,
    /// Whether the goal was reached before the cap.
    pub success: bool,
}

/// The rollouts of one iteration, task by task, rollout by rollout.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutSet {
    /// Trajectories, grouped: task `t`'s rollouts are `t * n .. (t + 1) * n`.
    pub rollouts: Vec<Rollout>,
    /// Rollouts per task.
    pub per_task: usize,
    /// Horizon cap used.
    pub horizon: usize,
}

/// The seed of one rollout's random stream: a SplitMix64-style mix of the
/// run seed, iteration, task index and rollout index.
///
/// ```
/// use g2po::train::rollout_seed;
/// assert_eq!(rollout_seed(1, 2, 3, 4), rollout_seed(1, 2, 3, 4));
/// assert_ne!(rollout_seed(1, 2, 3, 4), rollout_seed(1, 2, 4, 3));
/// ```
pub fn rollout_seed(seed: u64, iteration: u64, task: u64, rollout: u64) -> u64 {
    let mut h = 0x9e37_79b9_7f4a_7c15u64;
    for x in [seed, iteration, task, rollout] {
        h = mix(h ^ x.wrapping_mul(0xbf58_476d_1ce4_e5b9));
    }
    h
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Runs `per_task` rollouts of every task in `tasks` with `policy` sampling at
/// temperature `temperature`, each until done or `horizon` turns (reaching the
/// cap is a truncation, a failure). `stream` distinguishes the call
/// (iteration number) in the seeds. `env` is a built-in [`g2po_envs::EnvKind`]
/// or any [`EnvSpec`] (a remote AgentGym server); a task whose environment
/// fails is dropped whole, see [`collect_rollouts_dropping`].
///
/// ```
/// use g2po::policy::{Policy, PolicyConfig};
/// use g2po::train::collect_rollouts;
/// use g2po_envs::EnvKind;
/// let p = Policy::new(&PolicyConfig { vocab: 64, hidden: 8, ..Default::default() }, &candle_core::Device::Cpu, 0).unwrap();
/// let set = collect_rollouts(&p, EnvKind::Chain, &[0, 1], 3, 4, 1.0, 7, 1).unwrap();
/// assert_eq!(set.rollouts.len(), 6);
/// assert!(set.rollouts.iter().all(|r| !r.rows.is_empty() && r.rows.len() <= 4));
/// ```
#[allow(clippy::too_many_arguments)]
pub fn collect_rollouts(
    policy: &Policy,
    env: impl Into<EnvSpec>,
    tasks: &[u64],
    per_task: usize,
    horizon: usize,
    temperature: f64,
    seed: u64,
    stream: u64,
) -> Result<RolloutSet, TrainError> {
    collect_rollouts_dropping(policy, env, tasks, per_task, horizon, temperature, seed, stream).map(|(set, _)| set)
}

/// A task whose rollouts were dropped because its environment failed.
#[derive(Debug, Clone, PartialEq)]
pub struct DroppedTask {
    /// The task seed.
    pub task: u64,
    /// The first failure among its rollouts (e.g. a server that timed out).
    pub error: EnvError,
}

/// [`collect_rollouts`], also returning the tasks it dropped.
///
/// When an environment fails (a remote server that is dead, slow or
/// garbled: [`EnvError::Protocol`]) during any rollout of a task, every
/// rollout of that task is dropped, so no partial trajectory and no group
/// short of rollouts reaches a batch; the other tasks are kept. When every
/// task fails, the first failure is the error. Policy errors are not dropped.
///
/// ```
/// use g2po::policy::{Policy, PolicyConfig};
/// use g2po::train::collect_rollouts_dropping;
/// let p = Policy::new(&PolicyConfig { vocab: 64, hidden: 8, ..Default::default() }, &candle_core::Device::Cpu, 0).unwrap();
/// let (set, dropped) = collect_rollouts_dropping(&p, g2po_envs::EnvKind::Chain, &[0], 2, 3, 1.0, 0, 0).unwrap();
/// assert_eq!((set.rollouts.len(), dropped.len()), (2, 0));
/// ```
#[allow(clippy::too_many_arguments)]
pub fn collect_rollouts_dropping(
    policy: &Policy,
    env: impl Into<EnvSpec>,
    tasks: &[u64],
    per_task: usize,
    horizon: usize,
    temperature: f64,
    seed: u64,
    stream: u64,
) -> Result<(RolloutSet, Vec<DroppedTask>), TrainError> {
    if horizon == 0 || per_task == 0 || tasks.is_empty() {
        return Err(TrainError::BadConfig(
            "rollouts need a positive horizon, at least one task and one rollout per task".into(),
        ));
    }
    let env = env.into();
    let policy = policy.memoized();
    let results: Vec<Result<Rollout, TrainError>> = (0..tasks.len() * per_task)
        .into_par_iter()
        .map(|slot| {
            let (t, r) = (slot / per_task, slot % per_task);
            let s = rollout_seed(seed, stream, t as u64, r as u64);
            run_one(&policy, &env, tasks[t], horizon, temperature, s)
        })
        .collect();
    let mut rollouts = Vec::with_capacity(results.len());
    let mut dropped = Vec::new();
    let mut results = results.into_iter();
    for &task in tasks {
        let group: Vec<_> = results.by_ref().take(per_task).collect();
        let mut kept = Vec::with_capacity(per_task);
        let mut failure = None;
        for r in group {
            match r {
                Ok(rollout) => kept.push(rollout),
                Err(TrainError::Env(e)) => failure = failure.or(Some(e)),
                Err(other) => return Err(other),
            }
        }
        match failure {
            None => rollouts.extend(kept),
            Some(error) => dropped.push(DroppedTask { task, error }),
        }
    }
    if rollouts.is_empty()
        && let Some(first) = dropped.first()
    {
        return Err(TrainError::Env(first.error.clone()));
    }
    Ok((RolloutSet { rollouts, per_task, horizon }, dropped))
}

fn run_one(
    policy: &MemoizedPolicy<'_>,
    spec: &EnvSpec,
    task: u64,
    horizon: usize,
    temperature: f64,
    seed: u64,
) -> Result<Rollout, TrainError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // The env seed only matters for low-overlap's noise; deriving it from the
    // rollout seed keeps parallel rollouts distinct and reproducible.
    let mut env = spec.make(seed);
    let mut obs = env.try_reset(task)?;
    let mut rows = Vec::new();
    let mut success = false;
    for t in 0..horizon {
        let act = policy.act(&obs.text, &obs.admissible, temperature, &mut rng)?;
        let action = obs.admissible[act.index].clone();
        let out = env.try_step(&action)?;
        rows.push(CollectedRow {
            observation: std::mem::take(&mut obs.text),
            key: obs.key,
            action,
            tokens: act.tokens,
            logps: act.logps,
            valid: out.valid,
            turns_left: horizon - t,
        });
        obs = out.observation;
        if out.done {
            success = out.success;
            break;
        }
    }
    Ok(Rollout { task, rows, success })
}

impl RolloutSet {
    /// Fraction of successful rollouts.
    ///
    /// ```
    /// use g2po::train::{Rollout, RolloutSet};
    /// let r = |success| Rollout { task: 0, rows: vec![], success };
    /// let s = RolloutSet { rollouts: vec![r(true), r(false)], per_task: 2, horizon: 3 };
    /// assert_eq!(s.success_rate(), 0.5);
    /// ```
    pub fn success_rate(&self) -> f64 {
        if self.rollouts.is_empty() {
            return 0.0;
        }
        self.rollouts.iter().filter(|r| r.success).count() as f64 / self.rollouts.len() as f64
    }

    /// Mean number of steps per rollout.
    ///
    /// ```
    /// use g2po::train::{Rollout, RolloutSet};
    /// let s = RolloutSet { rollouts: vec![Rollout { task: 0, rows: vec![], success: false }], per_task: 1, horizon: 3 };
    /// assert_eq!(s.mean_length(), 0.0);
    /// ```
    pub fn mean_length(&self) -> f64 {
        if self.rollouts.is_empty() {
            return 0.0;
        }
        self.rollouts.iter().map(|r| r.rows.len()).sum::<usize>() as f64 / self.rollouts.len() as f64
    }

    /// All rows in batch order (trajectory by trajectory).
    ///
    /// ```
    /// use g2po::train::{Rollout, RolloutSet};
    /// let s = RolloutSet { rollouts: vec![], per_task: 1, horizon: 3 };
    /// assert_eq!(s.rows().count(), 0);
    /// ```
    pub fn rows(&self) -> impl Iterator<Item = &CollectedRow> {
        self.rollouts.iter().flat_map(|r| r.rows.iter())
    }

    /// The advantage-engine batch: group = task, episode reward 10 on success
    /// else 0, placed as the step reward of the last step; anchors are the
    /// observation texts, or the exact state keys with `anchor_from_key`.
    ///
    /// ```
    /// use g2po::policy::{Policy, PolicyConfig};
    /// use g2po::train::collect_rollouts;
    /// let p = Policy::new(&PolicyConfig { vocab: 64, hidden: 8, ..Default::default() }, &candle_core::Device::Cpu, 0).unwrap();
    /// let set = collect_rollouts(&p, g2po_envs::EnvKind::Chain, &[0], 4, 3, 1.0, 0, 0).unwrap();
    /// let batch = set.batch(false).unwrap();
    /// assert_eq!(batch.len(), set.rows().count());
    /// assert_eq!(batch.num_groups(), 1);
    /// ```
    pub fn batch(&self, anchor_from_key: bool) -> Result<RolloutBatch, TrainError> {
        let mut b = RolloutBatch::builder();
        for (i, r) in self.rollouts.iter().enumerate() {
            let group = format!("task-{}-{}", i / self.per_task, r.task);
            let traj = format!("{group}/{}", i % self.per_task);
            let episode = if r.success { SUCCESS_REWARD } else { 0.0 };
            let last = r.rows.len().saturating_sub(1);
            let steps = r.rows.iter().enumerate().map(|(t, row)| Step {
                anchor: if anchor_from_key { Anchor::Key(row.key) } else { Anchor::Text(&row.observation) },
                reward: if t == last { episode } else { 0.0 },
                valid: row.valid,
                response_len: row.tokens.len() as u32,
            });
            b.push_trajectory(&group, &traj, episode, steps)?;
        }
        Ok(b.build()?)
    }
}
