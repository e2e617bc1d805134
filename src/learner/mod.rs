//! GRPO learner (verl loss semantics) on candle tensors.
//!
//! Layout: [`config`] holds the loss options and the plain-slice types shared
//! with the CUDA kernel; [`fused`] is the one-pass CPU loss (the reference);
//! [`tensor`] the same loss as candle ops and as a custom op; [`update`] the
//! PPO-style optimisation loop (AdamW, global-norm clipping, mini-batches).

pub mod config;
pub mod error;
pub mod fused;
pub mod tensor;
pub mod update;

pub use config::{KlEstimator, LossAggregation, LossBuffers, LossConfig, LossDiagnostics, LossInputs, LossOutput};
pub use error::LearnerError;
pub use fused::grpo_loss_cpu;
pub use tensor::{FusedGrpoLoss, LossTensors, grpo_loss_tensors};
pub use update::{Learner, LearnerConfig, UpdateBatch, UpdateRow, UpdateStats, clip_grad_norm};
