//! Training loop: rollouts, advantages, updates, evaluation, ground truth and
//! the estimator ablation.
//!
//! Design. One iteration is the whole agent-RL step at toy scale: sample
//! `tasks_per_iter` task seeds, run `rollouts_per_task` rollouts of each (one
//! task = one group, as in the peers), build a [`crate::RolloutBatch`], score
//! it with the chosen estimator, broadcast the row advantages to the action
//! tokens and take one [`crate::learner::Learner`] update. Everything random
//! is drawn from ChaCha8 streams seeded by a hash of (run seed, iteration,
//! task, rollout), and rollouts are collected with rayon into slots indexed by
//! (task, rollout), so a run is bit-for-bit the same on 1 or 16 threads.
//!
//! Rewards follow the peers' scale: the episode reward is 10 on success and 0
//! on failure or truncation (reaching the horizon cap), and it sits on the last
//! step of the trajectory. [`truth`] scores the estimators' advantages against
//! the exact finite-horizon advantages of the sampling policy on the tabular
//! environments; [`ablation`] runs the GRPO / GiGPO / G2PO comparison.

pub mod ablation;
pub mod config;
pub mod device;
pub mod lm;
pub mod memory;
pub mod rollouts;
pub mod trainer;
pub mod truth;

pub use ablation::{AblationConfig, AblationReport, AblationSetting, run_ablation};
pub use config::{TrainConfig, TrainError};
pub use device::{DeviceError, DeviceSpec};
pub use lm::{LmProfile, LmTrainOptions, LmTrainer, ScoreMemo, evaluate_lm};
pub use memory::retain_freed_memory;
pub use rollouts::{
    CollectedRow, DroppedTask, Rollout, RolloutSet, collect_rollouts, collect_rollouts_dropping, rollout_seed,
};
pub use trainer::{IterationLog, Trainer, evaluate, evaluate_dropping};
pub use truth::{TruthScore, TruthTable, score_advantages};
