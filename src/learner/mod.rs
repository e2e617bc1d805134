//! GRPO learner (verl loss semantics) on candle tensors, for any policy that
//! implements [`TrainablePolicy`].
//!
//! Layout and dependencies (one way: `loss` <- `cuda` <- `learner` <- `policy`):
//! the loss mathematics, options and CPU reference live in [`crate::loss`]
//! (no tensor library); [`op`] wraps them as one candle op with a CPU and a
//! CUDA forward ([`FusedGrpoLoss`]); [`tensor`] states the same loss as
//! ordinary candle ops; [`trainable`] is what the learner asks of a policy;
//! [`update`] is the PPO-style optimisation loop (AdamW, global-norm
//! clipping, mini-batches, `target_kl` early stopping); [`critic`] is PPO's
//! value network with verl's clipped value loss.

pub mod critic;
pub mod error;
pub mod op;
pub mod tensor;
pub mod trainable;
pub mod update;

pub use crate::loss::{KlEstimator, LossAggregation, LossConfig, LossDiagnostics};
pub use error::LearnerError;
pub use op::{FusedGrpoLoss, LossConstants};
pub use tensor::{LossTensors, grpo_loss_tensors};
pub use trainable::{TokenBatch, TokenScores, TrainablePolicy};
pub use update::{Learner, LearnerConfig, UpdateBatch, UpdateRow, UpdateStats, clip_grad_norm};
