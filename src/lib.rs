//! # g2po — graph-based advantage estimation for RL of LLM agents
//!
//! Agent trainers sample N rollouts per task and learn from one success bit at
//! the end of dozens of turns. GRPO treats those rollouts as strangers; G2PO
//! fuses the identical states they walk through into one graph per task group,
//! pools every visit into a node value and scores each action as an edge by its
//! TD error standardised over the whole graph. This crate computes GRPO, GiGPO
//! and G2PO advantages exactly (matching the reference implementations) and
//! fast, and ships a small GRPO learner, a horizon curriculum and environments
//! to experiment with.
//!
//! ```
//! use g2po::{AdvantageEstimator, Anchor, Estimator, EstimatorConfig, EstimatorKind, RolloutBatch, Step};
//! let step = |obs, reward| Step { anchor: Anchor::Text(obs), reward, valid: true, response_len: 4 };
//! let mut b = RolloutBatch::builder();
//! b.push_trajectory("task", "a", 10.0, [step("hall", 0.0), step("door", 10.0)])?;
//! b.push_trajectory("task", "b", 0.0, [step("hall", 0.0), step("wall", 0.0)])?;
//! let batch = b.build()?;
//! let adv = Estimator::new(EstimatorConfig::new(EstimatorKind::G2po))?.estimate(&batch)?;
//! assert!(adv.advantage[0] > adv.advantage[2]); // hall -> door beats hall -> wall
//! let tokens = g2po::broadcast::flat(&adv, &batch)?;
//! assert_eq!(tokens.values.len(), 16);
//! # Ok::<(), g2po::Error>(())
//! ```
//!
//! See `docs/architecture.md` for the data flow and `../shared/SPEC.md` for the
//! mathematics.
//!
//! ## Features
//!
//! The engine (everything above: [`rollout`], [`keys`], [`estimators`],
//! [`broadcast`], [`graph`], [`io`], [`curriculum`], and the GRPO loss on
//! plain slices, [`loss`]) is always built and
//! depends on no tensor library, CLI or environment crate; depend on
//! `g2po = { version = "0.1", default-features = false }` to get only that.
//!
//! | feature | adds |
//! |---|---|
//! | `learner` | the GRPO learner and the toy policy on candle (CPU) |
//! | `lm` | `learner` + the SmolLM2 + LoRA policy ([`lm`]; weights from `scripts/fetch-smollm2.sh`) |
//! | `train` | `lm` + rollouts, trainer, ground truth, ablation over `g2po-envs` |
//! | `cli` (default) | `train` + the `g2po` program |
//! | `nvrtc` | the CUDA kernels of `kernels/`, compiled at run time by NVRTC (no tensor library) |
//! | `cuda` | `nvrtc` + `learner` + candle's CUDA backend |

pub mod broadcast;
#[cfg(feature = "nvrtc")]
pub mod cuda;
pub mod curriculum;
pub mod error;
pub mod estimators;
pub mod graph;
pub mod io;
pub mod keys;
#[cfg(feature = "learner")]
pub mod learner;
#[cfg(feature = "lm")]
pub mod lm;
pub mod loss;
#[cfg(feature = "learner")]
pub mod policy;
pub mod rollout;
#[cfg(feature = "train")]
pub mod train;

pub use error::{Error, Result};
pub use estimators::{
    AdvantageEstimator, Advantages, Estimator, EstimatorConfig, EstimatorKind, Grouping, Normalization, StatsOver,
    TerminalValues,
};
pub use rollout::{Anchor, BatchBuilder, RolloutBatch, Step, StepRow};

/// A two-trajectory batch used by the documentation examples: in group
/// "task", "win" goes hall -> door (success), "lose" goes hall -> wall.
#[doc(hidden)]
pub fn doc_batch() -> RolloutBatch {
    let step = |obs, reward, len| Step { anchor: Anchor::Text(obs), reward, valid: true, response_len: len };
    let mut b = RolloutBatch::builder();
    b.push_trajectory("task", "win", 10.0, [step("hall", 0.0, 3), step("door", 10.0, 2)]).expect("valid doc batch");
    b.push_trajectory("task", "lose", 0.0, [step("hall", 0.0, 3), step("wall", 0.0, 4)]).expect("valid doc batch");
    b.build().expect("valid doc batch")
}
