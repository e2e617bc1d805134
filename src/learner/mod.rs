//! GRPO learner (verl loss semantics) on candle tensors.

pub mod config;
pub mod fused;

pub use config::{KlEstimator, LossAggregation, LossConfig, LossDiagnostics, LossInputs, LossOutput};
