//! The GRPO loss written as ordinary candle ops, so that candle's autograd
//! differentiates it: the executable specification beside the fused op
//! ([`crate::learner::FusedGrpoLoss`]).
//!
//! Two paths exist on purpose. This one states the loss the way a PyTorch
//! implementation does and lets autograd find the gradient; the fused op is
//! what training uses by default because it computes the exact per-token
//! derivative in one pass. Tests hold them equal (loss and gradient) and both
//! to verl's own outputs, so a bug in either shows up as a disagreement. Both
//! compute in `f64` regardless of the input dtype, and both take the
//! aggregation weights from [`aggregation_weights`] so that mask handling
//! (0/1 check, empty rows, empty mask) lives in one place.

use candle_core::{DType, Tensor};

use super::error::{LearnerError, Result};
use crate::loss::{
    K3_CLAMP, KlEstimator, LOG_RATIO_CLAMP, LossAggregation, LossConfig, LossDiagnostics, LossError,
    aggregation_weights, validate_config,
};

/// Token-level loss inputs as `[rows, max_len]` tensors (any float dtype, one
/// device). `logp` is the tensor the loss is differentiated with respect to;
/// `entropy` may also carry a gradient (the entropy bonus then trains it).
#[derive(Debug, Clone, Copy)]
pub struct LossTensors<'a> {
    /// Log-probabilities under the current policy.
    pub logp: &'a Tensor,
    /// Log-probabilities under the sampling policy.
    pub logp_old: &'a Tensor,
    /// Log-probabilities under the reference policy (required with KL).
    pub logp_ref: Option<&'a Tensor>,
    /// Per-token advantages.
    pub advantages: &'a Tensor,
    /// Per-token entropy of the current policy (required when
    /// `entropy_coef != 0`).
    pub entropy: Option<&'a Tensor>,
    /// Response mask (0/1).
    pub mask: &'a Tensor,
}

/// Copies a `[rows, max_len]` tensor to a flat host vector, checking shape
/// and finiteness.
fn host_values(name: &'static str, t: &Tensor, rows: usize, max_len: usize) -> Result<Vec<f32>> {
    let dims = t.dims();
    if dims != [rows, max_len] {
        return Err(LearnerError::BadInput(format!(
            "tensor `{name}` has shape {dims:?}, expected [{rows}, {max_len}]"
        )));
    }
    let v = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    if let Some(index) = v.iter().position(|x| !x.is_finite()) {
        return Err(LossError::NonFinite { name, index }.into());
    }
    Ok(v)
}

/// Aggregates a `[rows, max_len]` tensor with per-token weights (a linear,
/// differentiable reduction to a scalar).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use g2po::learner::tensor::aggregate;
/// use g2po::loss::LossAggregation;
/// let x = Tensor::new(&[[1.0f64, 5.0], [2.0, 4.0]], &Device::Cpu).unwrap();
/// let mask = Tensor::new(&[[1.0f32, 0.0], [1.0, 1.0]], &Device::Cpu).unwrap();
/// let v = aggregate(&x, &mask, LossAggregation::SeqMeanTokenMean).unwrap();
/// // Row means 1 and 3, mean over rows 2.
/// assert!((v.to_scalar::<f64>().unwrap() - 2.0).abs() < 1e-12);
/// ```
pub fn aggregate(x: &Tensor, mask: &Tensor, aggregation: LossAggregation) -> Result<Tensor> {
    let (rows, max_len) = mask.dims2()?;
    let weights = weights_tensor(mask, rows, max_len, aggregation)?;
    Ok((x.to_dtype(DType::F64)? * weights)?.sum_all()?)
}

fn weights_tensor(mask: &Tensor, rows: usize, max_len: usize, aggregation: LossAggregation) -> Result<Tensor> {
    let m = host_values("mask", mask, rows, max_len)?;
    let w = aggregation_weights(&m, rows, max_len, aggregation)?;
    Ok(Tensor::from_vec(w, (rows, max_len), mask.device())?)
}

/// The GRPO loss of SPEC section 4 written as ordinary candle ops, so that
/// candle's autograd differentiates it. Returns the scalar loss (`f64`) and the
/// diagnostics (same definitions as [`crate::loss::grpo_loss_cpu`]).
///
/// ```
/// use candle_core::{Device, Tensor, Var};
/// use g2po::learner::tensor::{LossTensors, grpo_loss_tensors};
/// use g2po::loss::LossConfig;
/// let dev = Device::Cpu;
/// let logp = Var::new(&[[-1.0f32, -2.0]], &dev).unwrap();
/// let old = Tensor::new(&[[-1.0f32, -2.0]], &dev).unwrap();
/// let adv = Tensor::new(&[[1.0f32, 1.0]], &dev).unwrap();
/// let mask = Tensor::new(&[[1.0f32, 0.0]], &dev).unwrap();
/// let t = LossTensors { logp: logp.as_tensor(), logp_old: &old, logp_ref: None,
///     advantages: &adv, entropy: None, mask: &mask };
/// let (loss, diag) = grpo_loss_tensors(&t, &LossConfig::default()).unwrap();
/// assert!((loss.to_scalar::<f64>().unwrap() + 1.0).abs() < 1e-12);
/// let g = loss.backward().unwrap().get(&logp).unwrap().to_vec2::<f32>().unwrap();
/// assert_eq!(g, vec![vec![-1.0, 0.0]]);
/// assert_eq!(diag.clip_fraction, 0.0);
/// ```
pub fn grpo_loss_tensors(t: &LossTensors<'_>, config: &LossConfig) -> Result<(Tensor, LossDiagnostics)> {
    validate_config(config)?;
    let (rows, max_len) = t.logp.dims2()?;
    // Host copies only for validation and diagnostics-free checks; the loss
    // itself stays on the tensors' device.
    host_values("logp", t.logp, rows, max_len)?;
    host_values("logp_old", t.logp_old, rows, max_len)?;
    host_values("advantages", t.advantages, rows, max_len)?;
    let weights = weights_tensor(t.mask, rows, max_len, config.aggregation)?;
    let f64_of = |x: &Tensor| x.to_dtype(DType::F64);
    let mask = f64_of(t.mask)?;
    let tokens = mask.sum_all()?.to_scalar::<f64>()?;
    let logp = f64_of(t.logp)?;
    let adv = f64_of(t.advantages)?;
    let neg_adv = adv.neg()?;

    let log_ratio = (&logp - f64_of(t.logp_old)?)?.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)?;
    let ratio = log_ratio.exp()?;
    let pg1 = (&neg_adv * &ratio)?;
    let pg2 = (&neg_adv * ratio.clamp(1.0 - config.clip_low, 1.0 + config.clip_high)?)?;
    let mut pg = pg1.maximum(&pg2)?;
    let clipped = pg2.gt(&pg1)?.to_dtype(DType::F64)?;
    let mut dual_active = pg.zeros_like()?;
    if let Some(c) = config.dual_clip {
        let bound = neg_adv.affine(c, 0.0)?;
        let negative = adv.lt(0.0)?;
        dual_active = (negative.to_dtype(DType::F64)? * pg.gt(&bound)?.to_dtype(DType::F64)?)?;
        pg = negative.where_cond(&pg.minimum(&bound)?, &pg)?;
    }
    let policy_loss = (&pg * &weights)?.sum_all()?;
    let mut loss = policy_loss.clone();

    let mut kl_ref = 0.0;
    if let Some((estimator, beta)) = config.kl {
        let r = t.logp_ref.ok_or_else(|| LearnerError::BadInput("KL is configured but logp_ref is missing".into()))?;
        host_values("logp_ref", r, rows, max_len)?;
        let d = (&logp - f64_of(r)?)?;
        let kl = match estimator {
            KlEstimator::K1 => d,
            KlEstimator::K2 => (d.sqr()? * 0.5)?,
            KlEstimator::K3 => {
                let q = d.neg()?.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)?;
                ((q.exp()? - &q)? - 1.0)?.clamp(-K3_CLAMP, K3_CLAMP)?
            }
        };
        let kl_agg = (kl * &weights)?.sum_all()?;
        kl_ref = kl_agg.to_scalar::<f64>()?;
        loss = (loss + (kl_agg * beta)?)?;
    }

    let (mut entropy_mean, mut entropy_loss) = (0.0, 0.0);
    match t.entropy {
        Some(e) => {
            host_values("entropy", e, rows, max_len)?;
            let e = f64_of(e)?;
            entropy_mean = (&e * &mask)?.sum_all()?.to_scalar::<f64>()? / tokens;
            let ent_agg = (e * &weights)?.sum_all()?;
            entropy_loss = ent_agg.to_scalar::<f64>()?;
            if config.entropy_coef != 0.0 {
                loss = (loss - (ent_agg * config.entropy_coef)?)?;
            }
        }
        None if config.entropy_coef != 0.0 => {
            return Err(LearnerError::BadInput("entropy_coef != 0 but entropy is missing".into()));
        }
        None => {}
    }

    let masked_mean = |x: &Tensor| -> Result<f64> { Ok((x * &mask)?.sum_all()?.to_scalar::<f64>()? / tokens) };
    let k3_old = ((&ratio - 1.0)? - &log_ratio)?;
    let diagnostics = LossDiagnostics {
        policy_loss: policy_loss.to_scalar::<f64>()?,
        clip_fraction: masked_mean(&clipped)?,
        dual_clip_fraction: masked_mean(&dual_active)?,
        approx_kl_old: -masked_mean(&log_ratio)?,
        approx_kl_old_k3: masked_mean(&k3_old)?,
        kl_ref,
        entropy: entropy_mean,
        entropy_loss,
    };
    Ok((loss, diagnostics))
}
