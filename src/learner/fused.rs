//! Fused GRPO loss on plain slices (forward and backward in one pass).

use super::config::{LossConfig, LossInputs, LossOutput};

/// Placeholder: the learner work replaces this with the real implementation.
pub fn grpo_loss_cpu(_inputs: &LossInputs<'_>, _config: &LossConfig) -> LossOutput {
    unimplemented!("fused CPU loss is being written")
}
