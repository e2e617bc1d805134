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
//! See `docs/architecture.md` for the data flow and `../shared/SPEC.md` for the
//! mathematics.

#[cfg(feature = "nvrtc")]
pub mod cuda;
pub mod learner;
