//! The GRPO policy loss (SPEC section 4) exactly as verl computes it, on plain
//! slices: options, inputs, diagnostics and the CPU reference with its exact
//! gradient.
//!
//! This module has no tensor library and no GPU code, so that the candle
//! learner ([`crate::learner`], feature `learner`) and the CUDA kernel host
//! (`crate::cuda`, feature `nvrtc`) both build on it without knowing about
//! each other: `loss` <- `cuda` <- `learner` <- `policy` <- `train`.
//!
//! # Which verl reading each option follows
//!
//! The peer is verl's `compute_policy_loss`, `agg_loss` and `kl_penalty`
//! (`verl/trainer/ppo/core_algos.py`, at the verl-agent commit named in
//! `tests/data/vectors_loss/`), combined as verl's actor does:
//! `loss = pg_loss - entropy_coeff * entropy_loss + kl_loss_coef * kl_loss`.
//! The conformance test (`tests/learner_loss_vectors.rs`) reproduces verl's
//! outputs for every option to 1e-6 relative, gradient included.
//!
//! | option | verl | here |
//! |---|---|---|
//! | ratio | `exp(log_prob - old_log_prob)` | same, the log-ratio clamped to [-20, 20] |
//! | clip, clip-higher | `max(-A rho, -A clip(rho, 1 - clip_ratio_low, 1 + clip_ratio_high))` | same ([`LossConfig::clip_low`], [`LossConfig::clip_high`]) |
//! | dual clip | `min(that, -A clip_ratio_c)` where `A < 0` | same ([`LossConfig::dual_clip`]; `None` disables it, verl cannot) |
//! | `pg_clipfrac`, `pg_clipfrac_lower`, `ppo_kl` | masked means over all response tokens | same ([`LossDiagnostics`]) |
//! | `kl_penalty` k1, k2 (`mse`), k3 (`low_var_kl`) | k3 = `exp(q) - q - 1`, `q = ref - logp`, result clamped to [-10, 10] | same, `q` also clamped to [-20, 20] |
//! | token-mean | `sum(x m) / sum(m)` over the mini-batch | same |
//! | seq-mean-token-sum | mean over rows of `sum_t(x m)` | same, rows without a token left out of the mean (newer verl; the verl-agent version counts them) |
//! | seq-mean-token-mean | mean over rows of `sum_t(x m) / sum_t(m)` | same, rows without a token left out (the verl-agent version divides 0 by 0 there) |
//! | seq-mean-token-sum-norm | `sum over rows of sum_t(x m) / loss_mask.shape[-1]` | same; the divisor is `length` (newer verl's `loss_scale_factor`), default the padded width |
//!
//! Where we clamp and verl does not: the log-ratio `logp - logp_old` and the
//! k3 exponent `logp_ref - logp` are clamped to [-20, 20] before `exp`, so that
//! a policy that drifted far never produces inf or NaN. For |log-ratio| <= 20
//! (a probability ratio below 4.8e8, every realistic input) the clamp changes
//! nothing, value or gradient; beyond it the gradient through the clamp is 0.
//! The k3 result clamp to [-10, 10] is verl's own. Rows without any response
//! token are left out of the sequence means, so padding rows never change the
//! loss scale; with every row holding a token (as verl assumes) this is verl's
//! value.
//!
//! Every implementation accepts exactly what [`validate_inputs`] accepts and
//! returns a typed [`LossError`] otherwise; results are always finite.

mod config;
mod cpu;
mod error;

pub use config::{KlEstimator, LossAggregation, LossBuffers, LossConfig, LossDiagnostics, LossInputs, LossOutput};
#[cfg(feature = "nvrtc")]
pub(crate) use cpu::check_result;
pub use cpu::{K3_CLAMP, LOG_RATIO_CLAMP, aggregation_weights, grpo_loss_cpu, validate_config, validate_inputs};
pub use error::LossError;
