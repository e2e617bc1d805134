//! Options of the GRPO policy loss (SPEC section 4) and the plain-slice types
//! shared by the CPU reference, the candle op and the CUDA kernel.

use serde::{Deserialize, Serialize};

/// Estimator of the KL divergence to the frozen reference policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KlEstimator {
    /// `logp - logp_ref`.
    K1,
    /// `0.5 * (logp - logp_ref)^2`.
    K2,
    /// verl's "low_var_kl": `exp(q) - q - 1`, `q = logp_ref - logp` clamped to
    /// [-20, 20], the result clamped to [-10, 10].
    K3,
}

/// How per-token losses are reduced to one number (verl's `loss_agg_mode`).
///
/// Every mode is a linear reduction `sum_ij w_ij * x_ij` over the masked
/// tokens with weights that depend only on the mask
/// ([`crate::loss::aggregation_weights`]).
///
/// ```
/// use g2po::loss::LossAggregation;
/// // The fixed length of seq-mean-token-sum-norm defaults to the padded width.
/// assert_eq!(LossAggregation::SeqMeanTokenSumNorm { length: None }.sum_norm_length(512), Some(512.0));
/// assert_eq!(LossAggregation::SeqMeanTokenSumNorm { length: Some(4.0) }.sum_norm_length(512), Some(4.0));
/// assert_eq!(LossAggregation::TokenMean.sum_norm_length(512), None);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LossAggregation {
    /// Sum over all masked tokens of the mini-batch divided by their count.
    TokenMean,
    /// Per sequence the sum over its tokens, then the mean over sequences.
    /// (In both seq-mean modes, rows without any masked token are left out of
    /// the mean over sequences, as in current verl.)
    SeqMeanTokenSum,
    /// Per sequence the mean over its tokens, then the mean over sequences.
    SeqMeanTokenMean,
    /// Dr. GRPO's constant normaliser (verl): the sum over sequences of their
    /// token sums, divided by a fixed length. There is no mean over
    /// sequences: the loss scales with the number of rows.
    SeqMeanTokenSumNorm {
        /// The fixed normaliser (newer verl's `loss_scale_factor`); `None`
        /// means the padded response length of the inputs (`max_len`), as
        /// verl does without `loss_scale_factor`. Give a constant (e.g. the
        /// configured maximum response length) to keep the scale fixed when
        /// the padded width varies between mini-batches.
        #[serde(default)]
        length: Option<f64>,
    },
}

impl LossAggregation {
    /// The divisor of [`LossAggregation::SeqMeanTokenSumNorm`] for inputs
    /// padded to `max_len` (`None` for the other modes).
    pub fn sum_norm_length(&self, max_len: usize) -> Option<f64> {
        match *self {
            Self::SeqMeanTokenSumNorm { length } => Some(length.unwrap_or(max_len as f64)),
            _ => None,
        }
    }
}

/// All options of the clipped GRPO surrogate with KL and entropy terms.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossConfig {
    /// Lower clip range: the ratio is clipped at `1 - clip_low`.
    pub clip_low: f64,
    /// Upper clip range: the ratio is clipped at `1 + clip_high` (clip-higher
    /// uses `clip_high > clip_low`).
    pub clip_high: f64,
    /// Dual-clip constant `c` (> 1) for negative advantages; `None` disables it.
    pub dual_clip: Option<f64>,
    /// KL penalty to the reference policy: estimator and coefficient beta.
    pub kl: Option<(KlEstimator, f64)>,
    /// Entropy bonus coefficient (the loss subtracts `coef * entropy`).
    pub entropy_coef: f64,
    /// Reduction of per-token terms.
    pub aggregation: LossAggregation,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            clip_low: 0.2,
            clip_high: 0.2,
            dual_clip: Some(3.0),
            kl: None,
            entropy_coef: 0.0,
            aggregation: LossAggregation::TokenMean,
        }
    }
}

/// Token-level inputs of the fused loss, as flat `[rows x max_len]` row-major
/// slices of equal length (`rows * max_len`).
#[derive(Debug, Clone, Copy)]
pub struct LossInputs<'a> {
    /// Number of sequences (rows).
    pub rows: usize,
    /// Padded length of each row.
    pub max_len: usize,
    /// Log-probabilities under the current policy.
    pub logp: &'a [f32],
    /// Log-probabilities under the policy that sampled the data.
    pub logp_old: &'a [f32],
    /// Log-probabilities under the frozen reference policy (used when
    /// `LossConfig::kl` is set; may be empty otherwise).
    pub logp_ref: &'a [f32],
    /// Per-token advantages.
    pub advantages: &'a [f32],
    /// Per-token entropy of the current policy (used when `entropy_coef != 0`;
    /// may be empty otherwise). Its gradient is not part of the fused output.
    pub entropy: &'a [f32],
    /// Response mask: 1 for response tokens, 0 for prompt and padding.
    pub mask: &'a [f32],
}

/// Owned token-level loss inputs: the storage behind a [`LossInputs`] view,
/// for callers (benchmarks, tests, data loaders) that build the arrays
/// themselves.
///
/// ```
/// use g2po::loss::LossBuffers;
/// let b = LossBuffers { rows: 1, max_len: 2, logp: vec![-1.0; 2], logp_old: vec![-1.0; 2],
///     advantages: vec![1.0; 2], mask: vec![1.0, 0.0], ..Default::default() };
/// assert_eq!(b.view().mask, &[1.0, 0.0]);
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LossBuffers {
    /// Number of sequences (rows).
    pub rows: usize,
    /// Padded length of each row.
    pub max_len: usize,
    /// See [`LossInputs::logp`].
    pub logp: Vec<f32>,
    /// See [`LossInputs::logp_old`].
    pub logp_old: Vec<f32>,
    /// See [`LossInputs::logp_ref`].
    pub logp_ref: Vec<f32>,
    /// See [`LossInputs::advantages`].
    pub advantages: Vec<f32>,
    /// See [`LossInputs::entropy`].
    pub entropy: Vec<f32>,
    /// See [`LossInputs::mask`].
    pub mask: Vec<f32>,
}

impl LossBuffers {
    /// The borrowed view the loss functions take.
    ///
    /// ```
    /// let b = g2po::loss::LossBuffers::default();
    /// assert_eq!(b.view().rows, 0);
    /// ```
    pub fn view(&self) -> LossInputs<'_> {
        LossInputs {
            rows: self.rows,
            max_len: self.max_len,
            logp: &self.logp,
            logp_old: &self.logp_old,
            logp_ref: &self.logp_ref,
            advantages: &self.advantages,
            entropy: &self.entropy,
            mask: &self.mask,
        }
    }
}

/// Diagnostics of one loss evaluation, all over masked tokens. The verl
/// names are in parentheses.
///
/// ```
/// use g2po::loss::{LossConfig, LossInputs, grpo_loss_cpu};
/// // One token whose ratio rose from 1 to e^0.1 with advantage 1.
/// let inputs = LossInputs { rows: 1, max_len: 1, logp: &[-0.9], logp_old: &[-1.0], logp_ref: &[],
///     advantages: &[1.0], entropy: &[], mask: &[1.0] };
/// let d = grpo_loss_cpu(&inputs, &LossConfig::default())?.diagnostics;
/// assert!((d.approx_kl_old + 0.1).abs() < 1e-6); // k1 is negative here...
/// let k3 = (0.1f64.exp() - 1.0) - 0.1;
/// assert!((d.approx_kl_old_k3 - k3).abs() < 1e-6); // ...k3 never is
/// # Ok::<(), g2po::loss::LossError>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LossDiagnostics {
    /// The policy-gradient part of the loss, aggregated (`pg_loss`).
    pub policy_loss: f64,
    /// Fraction of masked tokens whose clipped term was the active one
    /// (strictly larger than the unclipped one; `pg_clipfrac`).
    pub clip_fraction: f64,
    /// Fraction of masked tokens that have a negative advantage and where the
    /// dual-clip bound was active (`pg_clipfrac_lower`; the denominator is
    /// all masked tokens, not only the negative-advantage ones).
    pub dual_clip_fraction: f64,
    /// Approximate KL to the sampling policy, k1: mean over masked tokens of
    /// `logp_old - logp` (`ppo_kl`). Unbiased but noisy, and can be negative.
    pub approx_kl_old: f64,
    /// Approximate KL to the sampling policy, k3: mean over masked tokens of
    /// `(rho - 1) - log rho` with `rho = exp(logp - logp_old)` (CleanRL's
    /// `approx_kl`). Never negative; what `target_kl` early stopping reads.
    #[serde(default)]
    pub approx_kl_old_k3: f64,
    /// KL to the reference policy with the configured estimator, aggregated
    /// like the loss (`kl_loss`); 0 when no KL is configured.
    pub kl_ref: f64,
    /// Mean entropy over masked tokens (0 when no entropy was given).
    pub entropy: f64,
    /// The entropy aggregated like the loss, the term the entropy bonus
    /// multiplies (`entropy_loss`; equal to `entropy` under token-mean).
    #[serde(default)]
    pub entropy_loss: f64,
}

/// Result of the fused loss: the scalar, its gradient with respect to `logp`
/// (same layout as the inputs) and the diagnostics.
#[derive(Debug, Clone, PartialEq)]
pub struct LossOutput {
    /// The total loss.
    pub loss: f64,
    /// d loss / d logp, `rows * max_len` entries, zero where the mask is zero.
    pub grad_logp: Vec<f32>,
    /// Diagnostics.
    pub diagnostics: LossDiagnostics,
}
