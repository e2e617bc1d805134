//! The GRPO loss on candle tensors: once as ordinary differentiable ops and
//! once as a [`CustomOp1`] around the fused slice implementation.
//!
//! Two paths exist on purpose. The op-by-op path is the executable
//! specification that candle's autograd differentiates for us; the fused path
//! is what training uses by default because it computes the exact per-token
//! derivative in one pass. Tests hold them equal (loss and gradient), so a bug
//! in either shows up as a disagreement. Both compute in `f64` regardless of
//! the input dtype, matching the fused reference, and both take the
//! aggregation weights from [`aggregation_weights`] so that mask handling
//! (0/1 check, empty rows, empty mask) lives in one place.

use std::sync::{Arc, Mutex};

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor};

use super::config::{KlEstimator, LossBuffers, LossConfig, LossDiagnostics, LossInputs};
use super::error::{LearnerError, Result};
use super::fused::{K3_CLAMP, LOG_RATIO_CLAMP, aggregation_weights, grpo_loss_cpu, validate_config};

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
        return Err(LearnerError::NonFinite { name, index });
    }
    Ok(v)
}

/// Aggregates a `[rows, max_len]` tensor with per-token weights (a linear,
/// differentiable reduction to a scalar).
///
/// ```
/// use candle_core::{Device, Tensor};
/// use g2po::learner::{LossAggregation, tensor::aggregate};
/// let x = Tensor::new(&[[1.0f64, 5.0], [2.0, 4.0]], &Device::Cpu).unwrap();
/// let mask = Tensor::new(&[[1.0f32, 0.0], [1.0, 1.0]], &Device::Cpu).unwrap();
/// let v = aggregate(&x, &mask, LossAggregation::SeqMeanTokenMean).unwrap();
/// // Row means 1 and 3, mean over rows 2.
/// assert!((v.to_scalar::<f64>().unwrap() - 2.0).abs() < 1e-12);
/// ```
pub fn aggregate(x: &Tensor, mask: &Tensor, aggregation: super::LossAggregation) -> Result<Tensor> {
    let (rows, max_len) = mask.dims2()?;
    let weights = weights_tensor(mask, rows, max_len, aggregation)?;
    Ok((x.to_dtype(DType::F64)? * weights)?.sum_all()?)
}

fn weights_tensor(mask: &Tensor, rows: usize, max_len: usize, aggregation: super::LossAggregation) -> Result<Tensor> {
    let m = host_values("mask", mask, rows, max_len)?;
    let w = aggregation_weights(&m, rows, max_len, aggregation)?;
    Ok(Tensor::from_vec(w, (rows, max_len), mask.device())?)
}

/// The GRPO loss of SPEC section 4 written as ordinary candle ops, so that
/// candle's autograd differentiates it. Returns the scalar loss (`f64`) and the
/// diagnostics (same definitions as [`grpo_loss_cpu`]).
///
/// ```
/// use candle_core::{Device, Tensor, Var};
/// use g2po::learner::{LossConfig, tensor::{LossTensors, grpo_loss_tensors}};
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

    let mut entropy_mean = 0.0;
    match t.entropy {
        Some(e) => {
            host_values("entropy", e, rows, max_len)?;
            let e = f64_of(e)?;
            entropy_mean = (&e * &mask)?.sum_all()?.to_scalar::<f64>()? / tokens;
            if config.entropy_coef != 0.0 {
                let ent_agg = (e * &weights)?.sum_all()?;
                loss = (loss - (ent_agg * config.entropy_coef)?)?;
            }
        }
        None if config.entropy_coef != 0.0 => {
            return Err(LearnerError::BadInput("entropy_coef != 0 but entropy is missing".into()));
        }
        None => {}
    }

    let masked_mean = |x: &Tensor| -> Result<f64> { Ok((x * &mask)?.sum_all()?.to_scalar::<f64>()? / tokens) };
    let diagnostics = LossDiagnostics {
        policy_loss: policy_loss.to_scalar::<f64>()?,
        clip_fraction: masked_mean(&clipped)?,
        dual_clip_fraction: masked_mean(&dual_active)?,
        approx_kl_old: -masked_mean(&log_ratio)?,
        kl_ref,
        entropy: entropy_mean,
    };
    Ok((loss, diagnostics))
}

/// State shared between a [`FusedGrpoLoss`] handle and the op candle holds:
/// the forward pass leaves its gradient and diagnostics here, so the backward
/// pass needs no second evaluation.
#[derive(Debug, Default)]
struct FusedSlot {
    loss: Option<f64>,
    grad: Option<Vec<f32>>,
    diagnostics: Option<LossDiagnostics>,
}

/// The fused loss as a candle [`CustomOp1`] on `logp`: the forward runs
/// [`grpo_loss_cpu`], the backward returns its gradient times the incoming
/// gradient. The other inputs are constants of the op (they carry no
/// gradient; an entropy bonus that should train the entropy is added outside,
/// see [`aggregate`]).
///
/// ```
/// use candle_core::{Device, Var};
/// use g2po::learner::{LossBuffers, LossConfig, tensor::FusedGrpoLoss};
/// let logp = Var::new(&[[-1.0f32, -2.0]], &Device::Cpu).unwrap();
/// let op = FusedGrpoLoss::new(LossBuffers { rows: 1, max_len: 2, logp_old: vec![-1.0, -2.0],
///     advantages: vec![1.0, 1.0], mask: vec![1.0, 0.0], ..Default::default() }, LossConfig::default()).unwrap();
/// let (loss, _diag) = op.apply(logp.as_tensor()).unwrap();
/// let g = loss.backward().unwrap().get(&logp).unwrap().to_vec2::<f32>().unwrap();
/// assert_eq!(g, vec![vec![-1.0, 0.0]]);
/// ```
#[derive(Debug, Clone)]
pub struct FusedGrpoLoss {
    /// Every input but `logp` (which is the op's argument; left empty here).
    inputs: LossBuffers,
    config: LossConfig,
    slot: Arc<Mutex<FusedSlot>>,
}

impl FusedGrpoLoss {
    /// Builds the op from flat `rows * max_len` inputs (see [`LossInputs`] for
    /// which may be empty; `logp` is the op's argument and is ignored here).
    /// The configuration is validated here; the inputs when the op runs.
    ///
    /// ```
    /// use g2po::learner::{LossBuffers, LossConfig, tensor::FusedGrpoLoss};
    /// let bad = LossConfig { clip_low: -0.1, ..LossConfig::default() };
    /// let inputs = LossBuffers { rows: 1, max_len: 1, logp_old: vec![0.0], advantages: vec![1.0],
    ///     mask: vec![1.0], ..Default::default() };
    /// assert!(FusedGrpoLoss::new(inputs, bad).is_err());
    /// ```
    pub fn new(inputs: LossBuffers, config: LossConfig) -> Result<Self> {
        validate_config(&config)?;
        Ok(Self { inputs, config, slot: Arc::default() })
    }

    fn run(&self, logp: &[f32]) -> Result<super::LossOutput> {
        grpo_loss_cpu(&LossInputs { logp, ..self.inputs.view() }, &self.config)
    }

    /// Applies the loss to `logp` (`[rows, max_len]`), returning the scalar
    /// loss (differentiable with respect to `logp`, same dtype) and the
    /// diagnostics.
    ///
    /// On a CPU tensor this is the custom op. On other devices (the op has no
    /// device kernel here) the same fused value and gradient are attached
    /// through the linearisation `loss0 + sum(g * (logp - logp0))`, whose value
    /// is `loss0` and whose gradient is `g`.
    pub fn apply(self, logp: &Tensor) -> Result<(Tensor, LossDiagnostics)> {
        let dims = logp.dims();
        if dims != [self.inputs.rows, self.inputs.max_len] {
            return Err(LearnerError::BadInput(format!(
                "logp has shape {dims:?}, expected [{}, {}]",
                self.inputs.rows, self.inputs.max_len
            )));
        }
        if logp.device().is_cpu() {
            // Evaluate here rather than inside the op so that bad inputs come
            // back as typed errors (the op can only return candle errors); the
            // op's forward and backward then reuse this evaluation.
            let host = host_values("logp", logp, self.inputs.rows, self.inputs.max_len)?;
            let out = self.run(&host)?;
            let diagnostics = out.diagnostics;
            *lock(&self.slot) =
                FusedSlot { loss: Some(out.loss), grad: Some(out.grad_logp), diagnostics: Some(diagnostics) };
            let loss = logp.apply_op1(self)?;
            Ok((loss, diagnostics))
        } else {
            self.apply_linearised(logp)
        }
    }

    /// The device-independent form of [`FusedGrpoLoss::apply`]: evaluates the
    /// fused loss on a host copy of `logp` and returns
    /// `loss0 + sum(g * (logp - detach(logp)))`, whose value is the fused loss
    /// and whose gradient with respect to `logp` is the fused gradient.
    ///
    /// ```
    /// use candle_core::{Device, Var};
    /// use g2po::learner::{LossBuffers, LossConfig, tensor::FusedGrpoLoss};
    /// let logp = Var::new(&[[-1.0f32, -2.0]], &Device::Cpu).unwrap();
    /// let op = FusedGrpoLoss::new(LossBuffers { rows: 1, max_len: 2, logp_old: vec![-1.0, -2.0],
    ///     advantages: vec![1.0, 1.0], mask: vec![1.0, 1.0], ..Default::default() }, LossConfig::default()).unwrap();
    /// let (loss, _) = op.apply_linearised(logp.as_tensor()).unwrap();
    /// assert!((loss.to_scalar::<f32>().unwrap() + 1.0).abs() < 1e-6);
    /// let g = loss.backward().unwrap().get(&logp).unwrap().to_vec2::<f32>().unwrap();
    /// assert_eq!(g, vec![vec![-0.5, -0.5]]);
    /// ```
    pub fn apply_linearised(self, logp: &Tensor) -> Result<(Tensor, LossDiagnostics)> {
        let host = host_values("logp", logp, self.inputs.rows, self.inputs.max_len)?;
        let out = self.run(&host)?;
        let g = Tensor::from_vec(out.grad_logp, (self.inputs.rows, self.inputs.max_len), logp.device())?
            .to_dtype(logp.dtype())?;
        let detached = logp.detach();
        let lin = ((logp - &detached)? * g)?.sum_all()?;
        let loss = (lin + out.loss)?;
        Ok((loss, out.diagnostics))
    }
}

fn lock(slot: &Mutex<FusedSlot>) -> std::sync::MutexGuard<'_, FusedSlot> {
    // A poisoned slot only means another thread panicked mid-update; the data
    // is plain values, still usable.
    slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl CustomOp1 for FusedGrpoLoss {
    fn name(&self) -> &'static str {
        "fused-grpo-loss"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("fused-grpo-loss needs a contiguous logp".into()))?;
        let is_f64 = match storage {
            CpuStorage::F32(_) => false,
            CpuStorage::F64(_) => true,
            other => {
                return Err(candle_core::Error::UnsupportedDTypeForOp(other.dtype(), "fused-grpo-loss"));
            }
        };
        let mut slot = lock(&self.slot);
        let loss = match slot.loss {
            // Filled by `apply` for exactly this `logp`.
            Some(loss) => loss,
            None => {
                let logp: Vec<f32> = match storage {
                    CpuStorage::F64(v) => v[start..end].iter().map(|&x| x as f32).collect(),
                    CpuStorage::F32(v) => v[start..end].to_vec(),
                    _ => Vec::new(),
                };
                let out = self.run(&logp).map_err(candle_core::Error::wrap)?;
                slot.grad = Some(out.grad_logp);
                slot.diagnostics = Some(out.diagnostics);
                slot.loss = Some(out.loss);
                out.loss
            }
        };
        let storage = if is_f64 { CpuStorage::F64(vec![loss]) } else { CpuStorage::F32(vec![loss as f32]) };
        Ok((storage, Shape::from(())))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let cached = lock(&self.slot).grad.clone();
        let grad = match cached {
            Some(g) => g,
            None => {
                let host = arg.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
                self.run(&host).map_err(candle_core::Error::wrap)?.grad_logp
            }
        };
        let g = Tensor::from_vec(grad, arg.shape(), arg.device())?.to_dtype(arg.dtype())?;
        Ok(Some(g.broadcast_mul(&grad_res.to_dtype(arg.dtype())?)?))
    }
}
