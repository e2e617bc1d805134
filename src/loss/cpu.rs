//! The GRPO loss on plain slices: forward and backward in one pass. This is
//! the reference every other implementation (candle ops, the candle op, the
//! CUDA kernel) is held to.
//!
//! Why a hand-written fused loss when candle could differentiate the same
//! expression? The autograd path materialises a dozen `[rows, max_len]`
//! intermediates per mini-batch and walks them twice; the loss is elementwise
//! apart from one linear reduction, so the exact derivative per token is a few
//! branches. It works on flat `f32` slices (the kernel's layout) and
//! accumulates in `f64`, so that the reference is more accurate than what it
//! checks.

use super::config::{KlEstimator, LossAggregation, LossConfig, LossDiagnostics, LossInputs, LossOutput};
use super::error::LossError;

/// Bound on `logp - logp_old` (and on the k3 log-ratio) before exponentiating.
/// verl does not clamp; for |log-ratio| <= 20 the clamp changes nothing.
pub const LOG_RATIO_CLAMP: f64 = 20.0;
/// Bound on the k3 ("low_var_kl") estimate (verl clamps it to the same).
pub const K3_CLAMP: f64 = 10.0;

/// Checks that every option of `config` is in its domain.
///
/// ```
/// use g2po::loss::{LossAggregation, LossConfig, validate_config};
/// assert!(validate_config(&LossConfig::default()).is_ok());
/// assert!(validate_config(&LossConfig { dual_clip: Some(1.0), ..LossConfig::default() }).is_err());
/// let zero = LossConfig { aggregation: LossAggregation::SeqMeanTokenSumNorm { length: Some(0.0) }, ..LossConfig::default() };
/// assert!(validate_config(&zero).is_err());
/// ```
pub fn validate_config(config: &LossConfig) -> Result<(), LossError> {
    let bad = |m: String| Err(LossError::BadConfig(m));
    if !(config.clip_low.is_finite() && config.clip_low >= 0.0) {
        return bad(format!("clip_low must be finite and >= 0, got {}", config.clip_low));
    }
    if !(config.clip_high.is_finite() && config.clip_high >= 0.0) {
        return bad(format!("clip_high must be finite and >= 0, got {}", config.clip_high));
    }
    if let Some(c) = config.dual_clip
        && !(c.is_finite() && c > 1.0)
    {
        return bad(format!("dual_clip must be finite and > 1, got {c}"));
    }
    if let Some((_, beta)) = config.kl
        && !(beta.is_finite() && beta >= 0.0)
    {
        return bad(format!("KL coefficient must be finite and >= 0, got {beta}"));
    }
    if !config.entropy_coef.is_finite() {
        return bad(format!("entropy_coef must be finite, got {}", config.entropy_coef));
    }
    if let LossAggregation::SeqMeanTokenSumNorm { length: Some(length) } = config.aggregation
        && !(length.is_finite() && length > 0.0)
    {
        return bad(format!("seq-mean-token-sum-norm length must be finite and > 0, got {length}"));
    }
    Ok(())
}

/// `rows * max_len`, or a typed error when it cannot be addressed.
fn token_count(rows: usize, max_len: usize) -> Result<usize, LossError> {
    rows.checked_mul(max_len).ok_or(LossError::TooLarge { rows, max_len })
}

fn check_slice(name: &'static str, s: &[f32], expected: usize) -> Result<(), LossError> {
    if s.len() != expected {
        return Err(LossError::LengthMismatch { name, got: s.len(), expected });
    }
    if let Some(index) = s.iter().position(|v| !v.is_finite()) {
        return Err(LossError::NonFinite { name, index });
    }
    Ok(())
}

/// Checks a 0/1 mask of `rows * max_len` entries that selects at least one
/// token.
fn check_mask(mask: &[f32], n: usize) -> Result<(), LossError> {
    if mask.len() != n {
        return Err(LossError::LengthMismatch { name: "mask", got: mask.len(), expected: n });
    }
    if let Some(index) = mask.iter().position(|&m| m != 0.0 && m != 1.0) {
        return Err(LossError::BadMask { index, value: mask[index] });
    }
    if !mask.contains(&1.0) {
        return Err(LossError::EmptyMask);
    }
    Ok(())
}

/// Checks `inputs` against `config`: the options ([`validate_config`]),
/// every slice `rows * max_len` long (`logp_ref` may be empty without a KL
/// term, `entropy` may be empty when `entropy_coef == 0`) and finite,
/// padding included, and a 0/1 mask selecting at least one token. Every
/// implementation of the loss accepts exactly the inputs this accepts.
///
/// ```
/// use g2po::loss::{LossConfig, LossError, LossInputs, validate_inputs};
/// let v = [0.0f32; 4];
/// let inputs = LossInputs { rows: 2, max_len: 2, logp: &v, logp_old: &v, logp_ref: &[],
///     advantages: &v, entropy: &[], mask: &[1.0, 1.0, 0.0, 1.0] };
/// assert!(validate_inputs(&inputs, &LossConfig::default()).is_ok());
/// let short = LossInputs { logp: &v[..3], ..inputs };
/// assert!(matches!(validate_inputs(&short, &LossConfig::default()), Err(LossError::LengthMismatch { name: "logp", .. })));
/// ```
pub fn validate_inputs(inputs: &LossInputs<'_>, config: &LossConfig) -> Result<(), LossError> {
    validate_config(config)?;
    let n = token_count(inputs.rows, inputs.max_len)?;
    check_slice("logp", inputs.logp, n)?;
    check_slice("logp_old", inputs.logp_old, n)?;
    check_slice("advantages", inputs.advantages, n)?;
    if config.kl.is_some() || !inputs.logp_ref.is_empty() {
        check_slice("logp_ref", inputs.logp_ref, n)?;
    }
    if config.entropy_coef != 0.0 || !inputs.entropy.is_empty() {
        check_slice("entropy", inputs.entropy, n)?;
    }
    check_mask(inputs.mask, n)
}

/// Per-token weights `w` such that the aggregation of `x` is `sum_i w_i x_i`;
/// zero where the mask is zero. Errors on a mask that is not 0/1 or is empty.
///
/// * token-mean: `1 / tokens`;
/// * seq-mean-token-sum: `1 / live rows` (rows with at least one token);
/// * seq-mean-token-mean: `1 / (live rows * tokens of the row)`;
/// * seq-mean-token-sum-norm: `1 / length` (no mean over rows).
///
/// ```
/// use g2po::loss::{LossAggregation, aggregation_weights};
/// // Two rows of length 2; the first has one token, the second two.
/// let mask = [1.0, 0.0, 1.0, 1.0];
/// let w = aggregation_weights(&mask, 2, 2, LossAggregation::TokenMean)?;
/// assert_eq!(w, vec![1.0 / 3.0, 0.0, 1.0 / 3.0, 1.0 / 3.0]);
/// let w = aggregation_weights(&mask, 2, 2, LossAggregation::SeqMeanTokenMean)?;
/// assert_eq!(w, vec![0.5, 0.0, 0.25, 0.25]);
/// // Dr. GRPO: every token weighs 1 / length, here the padded width 2.
/// let w = aggregation_weights(&mask, 2, 2, LossAggregation::SeqMeanTokenSumNorm { length: None })?;
/// assert_eq!(w, vec![0.5, 0.0, 0.5, 0.5]);
/// # Ok::<(), g2po::loss::LossError>(())
/// ```
pub fn aggregation_weights(
    mask: &[f32],
    rows: usize,
    max_len: usize,
    aggregation: LossAggregation,
) -> Result<Vec<f64>, LossError> {
    let n = token_count(rows, max_len)?;
    check_mask(mask, n)?;
    let counts: Vec<usize> = mask.chunks(max_len.max(1)).map(|r| r.iter().filter(|&&m| m == 1.0).count()).collect();
    let total: usize = counts.iter().sum();
    let live = counts.iter().filter(|&&c| c > 0).count() as f64;
    let mut w = vec![0.0; n];
    for (r, &count) in counts.iter().enumerate() {
        let per_token = match aggregation {
            LossAggregation::TokenMean => 1.0 / total as f64,
            LossAggregation::SeqMeanTokenSum => 1.0 / live,
            LossAggregation::SeqMeanTokenMean if count == 0 => 0.0,
            LossAggregation::SeqMeanTokenMean => 1.0 / (live * count as f64),
            LossAggregation::SeqMeanTokenSumNorm { length } => 1.0 / length.unwrap_or(max_len as f64),
        };
        for j in 0..max_len {
            if mask[r * max_len + j] == 1.0 {
                w[r * max_len + j] = per_token;
            }
        }
    }
    Ok(w)
}

/// Value and derivative (w.r.t. `logp`) of the clipped, optionally dual-clipped
/// surrogate of one token, plus whether the clip and the dual-clip bound were
/// active.
struct Surrogate {
    value: f64,
    grad: f64,
    clipped: bool,
    dual: bool,
    /// The clamped log-ratio `logp - logp_old`.
    log_ratio: f64,
    /// `exp(log_ratio)`.
    ratio: f64,
}

fn surrogate(logp: f64, logp_old: f64, adv: f64, config: &LossConfig) -> Surrogate {
    let raw = logp - logp_old;
    let log_ratio = raw.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP);
    let ratio = log_ratio.exp();
    // d ratio / d logp; zero where the clamp holds the log-ratio (torch's clamp
    // passes the gradient on the boundary itself, so does this).
    let d_ratio = if raw.abs() <= LOG_RATIO_CLAMP { ratio } else { 0.0 };
    let unclipped = -adv * ratio;
    let clipped_value = -adv * ratio.clamp(1.0 - config.clip_low, 1.0 + config.clip_high);
    // verl: pg_losses1 = max(pg_losses, pg_losses2); the clipped branch is the
    // active one (and constant in logp) only where it is strictly larger. On a
    // tie torch splits the gradient between two equal derivatives, which sums
    // to the unclipped one taken here.
    let clipped = clipped_value > unclipped;
    let (mut value, mut grad) = if clipped { (clipped_value, 0.0) } else { (unclipped, -adv * d_ratio) };
    let mut dual = false;
    if let Some(c) = config.dual_clip
        && adv < 0.0
    {
        let bound = -adv * c;
        if value > bound {
            dual = true;
            value = bound;
            grad = 0.0;
        }
    }
    Surrogate { value, grad, clipped, dual, log_ratio, ratio }
}

/// Value and derivative (w.r.t. `logp`) of one KL estimate to the reference.
fn kl_term(logp: f64, logp_ref: f64, estimator: KlEstimator) -> (f64, f64) {
    match estimator {
        KlEstimator::K1 => (logp - logp_ref, 1.0),
        KlEstimator::K2 => {
            let d = logp - logp_ref;
            (0.5 * d * d, d)
        }
        KlEstimator::K3 => {
            let raw_q = logp_ref - logp;
            let q = raw_q.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP);
            let raw_kl = q.exp() - q - 1.0;
            let kl = raw_kl.clamp(-K3_CLAMP, K3_CLAMP);
            // d/dlogp (e^q - q - 1) = (e^q - 1) * dq/dlogp = 1 - e^q, unless a
            // clamp is holding the value.
            let active = raw_q.abs() <= LOG_RATIO_CLAMP && raw_kl.abs() <= K3_CLAMP;
            (kl, if active { 1.0 - q.exp() } else { 0.0 })
        }
    }
}

/// The GRPO loss: value, gradient with respect to `logp` and diagnostics, per
/// SPEC section 4 (verl semantics; see the [module docs](crate::loss) for
/// which verl reading each option follows).
///
/// Total loss = `agg(pg) + beta * agg(kl) - entropy_coef * agg(entropy)`, where
/// `pg` is the clipped (and, for negative advantages, dual-clipped) surrogate
/// and `agg` the configured linear reduction ([`aggregation_weights`]). The
/// entropy is an input and is not differentiated here.
///
/// Errors: whatever [`validate_inputs`] rejects, and a result that is not
/// finite although the inputs are ([`LossError::NonFiniteResult`]).
///
/// ```
/// use g2po::loss::{LossConfig, LossInputs, grpo_loss_cpu};
/// let (logp, old, adv, mask) = ([-1.0f32, -2.0], [-1.0f32, -2.0], [1.0f32, 1.0], [1.0f32, 0.0]);
/// let inputs = LossInputs {
///     rows: 1, max_len: 2, logp: &logp, logp_old: &old, logp_ref: &[],
///     advantages: &adv, entropy: &[], mask: &mask,
/// };
/// let out = grpo_loss_cpu(&inputs, &LossConfig::default())?;
/// // On-policy (ratio 1) with A = 1: loss -1, gradient -1 on the masked token.
/// assert!((out.loss + 1.0).abs() < 1e-12);
/// assert_eq!(out.grad_logp, vec![-1.0, 0.0]);
/// # Ok::<(), g2po::loss::LossError>(())
/// ```
pub fn grpo_loss_cpu(inputs: &LossInputs<'_>, config: &LossConfig) -> Result<LossOutput, LossError> {
    validate_inputs(inputs, config)?;
    let n = inputs.logp.len();
    let w = aggregation_weights(inputs.mask, inputs.rows, inputs.max_len, config.aggregation)?;
    let tokens = inputs.mask.iter().filter(|&&m| m == 1.0).count() as f64;

    let mut grad = vec![0.0f32; n];
    let (mut pg_sum, mut kl_sum, mut ent_agg, mut ent_mean) = (0.0, 0.0, 0.0, 0.0);
    let (mut clipped, mut dual, mut approx_k1, mut approx_k3) = (0.0, 0.0, 0.0, 0.0);
    for i in 0..n {
        if inputs.mask[i] != 1.0 {
            continue;
        }
        let logp = f64::from(inputs.logp[i]);
        let s = surrogate(logp, f64::from(inputs.logp_old[i]), f64::from(inputs.advantages[i]), config);
        pg_sum += w[i] * s.value;
        let mut g = s.grad;
        if let Some((estimator, beta)) = config.kl {
            let (k, dk) = kl_term(logp, f64::from(inputs.logp_ref[i]), estimator);
            kl_sum += w[i] * k;
            g += beta * dk;
        }
        if !inputs.entropy.is_empty() {
            let e = f64::from(inputs.entropy[i]);
            ent_agg += w[i] * e;
            ent_mean += e;
        }
        clipped += f64::from(u8::from(s.clipped));
        dual += f64::from(u8::from(s.dual));
        approx_k1 -= s.log_ratio;
        approx_k3 += (s.ratio - 1.0) - s.log_ratio;
        grad[i] = (w[i] * g) as f32;
    }
    let beta = config.kl.map_or(0.0, |(_, b)| b);
    let loss = pg_sum + beta * kl_sum - config.entropy_coef * ent_agg;
    check_result(loss, &grad)?;
    Ok(LossOutput {
        loss,
        grad_logp: grad,
        diagnostics: LossDiagnostics {
            policy_loss: pg_sum,
            clip_fraction: clipped / tokens,
            dual_clip_fraction: dual / tokens,
            approx_kl_old: approx_k1 / tokens,
            approx_kl_old_k3: approx_k3 / tokens,
            kl_ref: kl_sum,
            entropy: ent_mean / tokens,
            entropy_loss: ent_agg,
        },
    })
}

/// The promise of finite results: a loss or gradient entry that overflowed
/// is an error, never a value.
pub(crate) fn check_result(loss: f64, grad: &[f32]) -> Result<(), LossError> {
    if !loss.is_finite() {
        return Err(LossError::NonFiniteResult { what: "loss", value: loss });
    }
    if let Some(g) = grad.iter().find(|g| !g.is_finite()) {
        return Err(LossError::NonFiniteResult { what: "gradient", value: f64::from(*g) });
    }
    Ok(())
}
