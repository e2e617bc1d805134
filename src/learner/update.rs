//! The optimisation loop: PPO epochs over shuffled mini-batches, AdamW and
//! global-norm gradient clipping (verl's actor update on a small policy).
//!
//! Why these choices: the update must be reproducible, so the shuffling uses
//! a ChaCha8 stream owned by the learner (seeded once, advanced by every
//! update) and the parameters are always visited in name order, which fixes
//! the floating-point summation order of the gradient norm. The loss is either
//! the fused custom op or the op-by-op tensor expression (`fused`); the tests
//! hold them equal, so the switch is a speed knob, not a semantic one.

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, TensorId, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::config::{LossBuffers, LossConfig, LossDiagnostics};
use super::error::{LearnerError, Result};
use super::fused::validate_config;
use super::tensor::{FusedGrpoLoss, LossTensors, aggregate, grpo_loss_tensors};
use crate::policy::Policy;

/// Options of the learner.
///
/// ```
/// let c = g2po::learner::LearnerConfig::default();
/// assert!(c.fused);
/// assert_eq!(c.ppo_epochs, 1);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LearnerConfig {
    /// The policy loss.
    pub loss: LossConfig,
    /// AdamW learning rate.
    pub lr: f64,
    /// AdamW (decoupled) weight decay.
    pub weight_decay: f64,
    /// AdamW `(beta1, beta2)`.
    pub betas: (f64, f64),
    /// AdamW epsilon.
    pub eps: f64,
    /// Global gradient-norm bound (`f64::INFINITY` disables clipping).
    pub max_grad_norm: f64,
    /// Passes over the batch per update.
    pub ppo_epochs: usize,
    /// Rows per mini-batch (the last one of an epoch may be smaller).
    pub minibatch_size: usize,
    /// Use the fused loss (custom op) instead of the op-by-op expression.
    pub fused: bool,
    /// Seed of the mini-batch shuffling.
    pub seed: u64,
}

impl Default for LearnerConfig {
    fn default() -> Self {
        Self {
            loss: LossConfig::default(),
            lr: 1e-3,
            weight_decay: 0.01,
            betas: (0.9, 0.999),
            eps: 1e-8,
            max_grad_norm: 1.0,
            ppo_epochs: 1,
            minibatch_size: 256,
            fused: true,
            seed: 0,
        }
    }
}

impl LearnerConfig {
    /// Checks every option.
    ///
    /// ```
    /// use g2po::learner::LearnerConfig;
    /// assert!(LearnerConfig::default().validate().is_ok());
    /// assert!(LearnerConfig { minibatch_size: 0, ..Default::default() }.validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<()> {
        validate_config(&self.loss)?;
        let bad = |m: String| Err(LearnerError::BadConfig(m));
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("lr must be finite and > 0, got {}", self.lr));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!("weight_decay must be finite and >= 0, got {}", self.weight_decay));
        }
        let (b1, b2) = self.betas;
        if !((0.0..1.0).contains(&b1) && (0.0..1.0).contains(&b2)) {
            return bad(format!("betas must lie in [0, 1), got ({b1}, {b2})"));
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return bad(format!("eps must be finite and > 0, got {}", self.eps));
        }
        if self.max_grad_norm.is_nan() || self.max_grad_norm <= 0.0 {
            return bad(format!("max_grad_norm must be > 0, got {}", self.max_grad_norm));
        }
        if self.ppo_epochs == 0 || self.minibatch_size == 0 {
            return bad("ppo_epochs and minibatch_size must be positive".into());
        }
        Ok(())
    }
}

/// One training row: a step of a trajectory.
///
/// ```
/// let r = g2po::learner::UpdateRow {
///     observation: "a hall".into(), action_tokens: vec![5, 1], old_logps: vec![-1.0, -0.5], advantage: 0.3,
/// };
/// assert_eq!(r.action_tokens.len(), r.old_logps.len());
/// ```
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UpdateRow {
    /// The observation the action was taken in.
    pub observation: String,
    /// The action's token ids (the policy's tokenisation).
    pub action_tokens: Vec<u32>,
    /// Per-token log-probabilities under the sampling policy.
    pub old_logps: Vec<f32>,
    /// The row's advantage, broadcast to all its tokens.
    pub advantage: f32,
}

/// The rows of one update.
///
/// ```
/// let b = g2po::learner::UpdateBatch::default();
/// assert!(b.rows.is_empty());
/// ```
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UpdateBatch {
    /// The rows.
    pub rows: Vec<UpdateRow>,
}

/// Means over the mini-batches of one update.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UpdateStats {
    /// Total loss.
    pub loss: f64,
    /// Policy-gradient part of the loss.
    pub policy_loss: f64,
    /// Fraction of tokens with the ratio clip active.
    pub clip_fraction: f64,
    /// Fraction of tokens with the dual-clip bound active.
    pub dual_clip_fraction: f64,
    /// Mean of `logp_old - logp`.
    pub approx_kl_old: f64,
    /// KL to the reference (0 without KL).
    pub kl_ref: f64,
    /// Mean token entropy.
    pub entropy: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Number of mini-batches (optimiser steps).
    pub minibatches: usize,
}

/// Scales the gradients of `vars` in place so that their global L2 norm is at
/// most `max_norm` (factor `max_norm / (norm + 1e-6)`, as in PyTorch's
/// `clip_grad_norm_`), returning the norm before clipping. Variables without a
/// gradient are skipped.
///
/// ```
/// use candle_core::{Device, Var};
/// use g2po::learner::clip_grad_norm;
/// let v = Var::new(&[3.0f32, 4.0], &Device::Cpu).unwrap();
/// let loss = (v.as_tensor() * v.as_tensor()).unwrap().sum_all().unwrap().affine(0.5, 0.0).unwrap();
/// let mut grads = loss.backward().unwrap(); // gradient (3, 4), norm 5
/// let norm = clip_grad_norm(&mut grads, &[v.clone()], 1.0).unwrap();
/// assert!((norm - 5.0).abs() < 1e-6);
/// let g = grads.get(&v).unwrap().to_vec1::<f32>().unwrap();
/// assert!((g[0] - 0.6).abs() < 1e-5 && (g[1] - 0.8).abs() < 1e-5);
/// ```
pub fn clip_grad_norm(grads: &mut GradStore, vars: &[Var], max_norm: f64) -> Result<f64> {
    let mut sq = 0.0f64;
    for v in vars {
        if let Some(g) = grads.get(v) {
            sq += g.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
        }
    }
    let norm = sq.sqrt();
    if norm.is_finite() && norm > max_norm {
        let scale = max_norm / (norm + 1e-6);
        for v in vars {
            if let Some(g) = grads.remove(v) {
                grads.insert(v, (g * scale)?);
            }
        }
    }
    Ok(norm)
}

/// The policy's parameters in name order, so that every pass over them
/// (norms, optimiser) has one fixed order.
fn sorted_vars(policy: &Policy) -> Vec<Var> {
    let data = policy.varmap().data().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut named: Vec<(&String, &Var)> = data.iter().collect();
    named.sort_by(|a, b| a.0.cmp(b.0));
    named.into_iter().map(|(_, v)| v.clone()).collect()
}

/// The GRPO learner: owns the optimiser state of one policy.
///
/// ```
/// use candle_core::Device;
/// use g2po::learner::{Learner, LearnerConfig, UpdateBatch, UpdateRow};
/// use g2po::policy::{Policy, PolicyConfig};
/// let policy = Policy::new(&PolicyConfig { vocab: 64, hidden: 8, ..Default::default() }, &Device::Cpu, 0).unwrap();
/// let mut learner = Learner::new(LearnerConfig::default(), &policy).unwrap();
/// let tokens = policy.tokenize_action("go north");
/// let (lp, _) = policy.token_logps(&["hall"], &[&tokens], tokens.len()).unwrap();
/// let old = lp.to_vec2::<f32>().unwrap().remove(0);
/// let batch = UpdateBatch { rows: vec![UpdateRow {
///     observation: "hall".into(), action_tokens: tokens, old_logps: old, advantage: 1.0 }] };
/// let stats = learner.update(&policy, None, &batch).unwrap();
/// assert_eq!(stats.minibatches, 1);
/// assert!(stats.policy_loss < 0.0); // on-policy with A = 1: loss is -1
/// ```
pub struct Learner {
    config: LearnerConfig,
    optimizer: AdamW,
    vars: Vec<Var>,
    var_ids: Vec<TensorId>,
    rng: ChaCha8Rng,
}

impl Learner {
    /// A learner for `policy` (whose parameters it will update).
    pub fn new(config: LearnerConfig, policy: &Policy) -> Result<Self> {
        config.validate()?;
        let vars = sorted_vars(policy);
        let params = ParamsAdamW {
            lr: config.lr,
            beta1: config.betas.0,
            beta2: config.betas.1,
            eps: config.eps,
            weight_decay: config.weight_decay,
        };
        let optimizer = AdamW::new(vars.clone(), params)?;
        Ok(Self {
            var_ids: vars.iter().map(|v| v.id()).collect(),
            vars,
            optimizer,
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &LearnerConfig {
        &self.config
    }

    /// One update: `ppo_epochs` passes over `batch` in shuffled mini-batches,
    /// one AdamW step per mini-batch after global-norm clipping. `reference`
    /// is required when the loss has a KL term.
    ///
    /// Errors: a policy other than the one the learner was built for, an empty
    /// batch, rows whose token and log-probability counts differ, a missing
    /// reference, invalid loss inputs, or a non-finite gradient norm (the
    /// step is then not applied).
    pub fn update(&mut self, policy: &Policy, reference: Option<&Policy>, batch: &UpdateBatch) -> Result<UpdateStats> {
        let ids: Vec<TensorId> = sorted_vars(policy).iter().map(|v| v.id()).collect();
        if ids != self.var_ids {
            return Err(LearnerError::BadInput("policy is not the one this learner was built for".into()));
        }
        if batch.rows.is_empty() {
            return Err(LearnerError::BadInput("empty update batch".into()));
        }
        for (i, r) in batch.rows.iter().enumerate() {
            if r.action_tokens.len() != r.old_logps.len() {
                return Err(LearnerError::BadInput(format!(
                    "row {i}: {} tokens but {} old log-probs",
                    r.action_tokens.len(),
                    r.old_logps.len()
                )));
            }
        }
        if self.config.loss.kl.is_some() && reference.is_none() {
            return Err(LearnerError::BadInput("the loss has a KL term but no reference policy was given".into()));
        }
        let mut sum = UpdateStats::default();
        let mut order: Vec<usize> = (0..batch.rows.len()).collect();
        for _ in 0..self.config.ppo_epochs {
            order.shuffle(&mut self.rng);
            for chunk in order.chunks(self.config.minibatch_size) {
                let rows: Vec<&UpdateRow> = chunk.iter().map(|&i| &batch.rows[i]).collect();
                let (diag, loss, norm) = self.step(policy, reference, &rows)?;
                sum.loss += loss;
                sum.policy_loss += diag.policy_loss;
                sum.clip_fraction += diag.clip_fraction;
                sum.dual_clip_fraction += diag.dual_clip_fraction;
                sum.approx_kl_old += diag.approx_kl_old;
                sum.kl_ref += diag.kl_ref;
                sum.entropy += diag.entropy;
                sum.grad_norm += norm;
                sum.minibatches += 1;
            }
        }
        let n = sum.minibatches as f64;
        Ok(UpdateStats {
            loss: sum.loss / n,
            policy_loss: sum.policy_loss / n,
            clip_fraction: sum.clip_fraction / n,
            dual_clip_fraction: sum.dual_clip_fraction / n,
            approx_kl_old: sum.approx_kl_old / n,
            kl_ref: sum.kl_ref / n,
            entropy: sum.entropy / n,
            grad_norm: sum.grad_norm / n,
            minibatches: sum.minibatches,
        })
    }

    /// One mini-batch: loss, backward, clip, AdamW step.
    fn step(
        &mut self,
        policy: &Policy,
        reference: Option<&Policy>,
        rows: &[&UpdateRow],
    ) -> Result<(LossDiagnostics, f64, f64)> {
        let n = rows.len();
        let max_len = rows.iter().map(|r| r.action_tokens.len()).max().unwrap_or(0).max(1);
        let obs: Vec<&str> = rows.iter().map(|r| r.observation.as_str()).collect();
        let acts: Vec<&[u32]> = rows.iter().map(|r| r.action_tokens.as_slice()).collect();
        let mut old = vec![0.0f32; n * max_len];
        let mut adv = vec![0.0f32; n * max_len];
        let mut mask = vec![0.0f32; n * max_len];
        for (i, r) in rows.iter().enumerate() {
            for j in 0..r.action_tokens.len() {
                old[i * max_len + j] = r.old_logps[j];
                adv[i * max_len + j] = r.advantage;
                mask[i * max_len + j] = 1.0;
            }
        }
        let (logp, entropy) = policy.token_logps(&obs, &acts, max_len)?;
        let reference_logp = match (self.config.loss.kl, reference) {
            (Some(_), Some(r)) => Some(r.token_logps(&obs, &acts, max_len)?.0.detach()),
            _ => None,
        };
        let device = logp.device().clone();
        let loss_config = self.config.loss;
        let (loss, diag) = if self.config.fused {
            let host = |t: &Tensor| t.detach().flatten_all().and_then(|t| t.to_vec1::<f32>());
            let ref_host = match (&reference_logp, device.is_cuda()) {
                (Some(t), false) => host(t)?,
                _ => Vec::new(),
            };
            let ent_host = if device.is_cuda() { Vec::new() } else { host(&entropy)? };
            // The op treats its other inputs as constants, so the entropy
            // bonus (which must train the entropy) is added outside it.
            let op_config = LossConfig { entropy_coef: 0.0, ..loss_config };
            let (mut loss, diag) = if device.is_cuda() {
                fused_on_cuda(&logp, &entropy, reference_logp.as_ref(), (n, max_len), (&old, &adv, &mask), op_config)?
            } else {
                FusedGrpoLoss::new(
                    LossBuffers {
                        rows: n,
                        max_len,
                        logp: Vec::new(),
                        logp_old: old,
                        logp_ref: ref_host,
                        advantages: adv,
                        entropy: ent_host,
                        mask: mask.clone(),
                    },
                    op_config,
                )?
                .apply(&logp)?
            };
            loss = loss.to_dtype(DType::F64)?;
            if loss_config.entropy_coef != 0.0 {
                let mask_t = Tensor::from_vec(mask, (n, max_len), &device)?;
                let ent = aggregate(&entropy, &mask_t, loss_config.aggregation)?;
                loss = (loss - (ent * loss_config.entropy_coef)?)?;
            }
            (loss, diag)
        } else {
            let t = |v: Vec<f32>| Tensor::from_vec(v, (n, max_len), &device);
            let (old_t, adv_t, mask_t) = (t(old)?, t(adv)?, t(mask)?);
            let inputs = LossTensors {
                logp: &logp,
                logp_old: &old_t,
                logp_ref: reference_logp.as_ref(),
                advantages: &adv_t,
                entropy: Some(&entropy),
                mask: &mask_t,
            };
            grpo_loss_tensors(&inputs, &loss_config)?
        };
        let loss_value = loss.to_scalar::<f64>()?;
        let mut grads = loss.backward()?;
        let norm = clip_grad_norm(&mut grads, &self.vars, self.config.max_grad_norm)?;
        if !norm.is_finite() {
            return Err(LearnerError::NonFiniteGradient(norm));
        }
        self.optimizer.step(&grads)?;
        Ok((diag, loss_value, norm))
    }
}

/// The fused loss on a CUDA device: the NVRTC kernel (`g2po::cuda`) wrapped as
/// a candle op, so logits, loss and gradient never leave the GPU.
#[cfg(feature = "cuda")]
fn fused_on_cuda(
    logp: &Tensor,
    entropy: &Tensor,
    reference_logp: Option<&Tensor>,
    shape: (usize, usize),
    (old, adv, mask): (&[f32], &[f32], &[f32]),
    config: LossConfig,
) -> Result<(Tensor, LossDiagnostics)> {
    let device = logp.device();
    let t = |v: &[f32]| Tensor::from_slice(v, shape, device);
    let op = crate::cuda::FusedGrpoLoss::new(
        t(old)?,
        reference_logp.cloned(),
        t(adv)?,
        Some(entropy.detach()),
        t(mask)?,
        config,
    )
    .map_err(|e| LearnerError::BadInput(e.to_string()))?;
    let loss = logp.apply_op1(op.clone())?;
    let diagnostics = op.diagnostics().unwrap_or_default();
    Ok((loss, diagnostics))
}

/// Without the `cuda` feature no tensor can live on a CUDA device.
#[cfg(not(feature = "cuda"))]
fn fused_on_cuda(
    _: &Tensor,
    _: &Tensor,
    _: Option<&Tensor>,
    _: (usize, usize),
    _: (&[f32], &[f32], &[f32]),
    _: LossConfig,
) -> Result<(Tensor, LossDiagnostics)> {
    Err(LearnerError::BadInput("a CUDA tensor in a build without the `cuda` feature".into()))
}
