//! The optimisation loop: PPO epochs over shuffled mini-batches, AdamW and
//! global-norm gradient clipping (verl's actor update), for any
//! [`TrainablePolicy`].
//!
//! Why these choices: the update must be reproducible, so the shuffling uses
//! a ChaCha8 stream owned by the learner (seeded once, advanced by every
//! update) and the parameters are always visited in the policy's fixed order,
//! which fixes the floating-point summation order of the gradient norm. The
//! loss is either the fused op ([`FusedGrpoLoss`], on whatever device the
//! policy's tensors live) or the op-by-op tensor expression (`fused: false`);
//! the tests hold them equal, so the switch is a speed knob, not a semantic
//! one.
//!
//! Token layout: an [`UpdateBatch`] holds its per-token inputs (old
//! log-probabilities, advantages, response mask) as padded `[rows x max_len]`
//! arrays from [`crate::broadcast`]; a mini-batch is a selection of rows at the
//! full width, so the padded response length (seq-mean-token-sum-norm's
//! default divisor) is the batch's.

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, TensorId, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use ndarray::{Array2, Axis};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::error::{LearnerError, Result};
use super::op::{FusedGrpoLoss, LossConstants};
use super::tensor::{LossTensors, aggregate, grpo_loss_tensors};
use super::trainable::{TokenBatch, TokenScores, TrainablePolicy};
use crate::broadcast::Padded;
use crate::loss::{LossConfig, LossDiagnostics, validate_config};

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
    /// Early stopping of the PPO epochs (CleanRL's `target_kl`): after an
    /// epoch whose last mini-batch had a k3 approximate KL to the sampling
    /// policy (`approx_kl_old_k3`) above this, no further epoch runs.
    /// `None` always runs `ppo_epochs`.
    #[serde(default)]
    pub target_kl: Option<f64>,
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
            target_kl: None,
            fused: true,
            seed: 0,
        }
    }
}

impl LearnerConfig {
    /// candle's AdamW parameters for this configuration (every policy's
    /// learner builds its optimizer from these, so the LM and toy learners
    /// cannot drift apart).
    ///
    /// ```
    /// let c = g2po::learner::LearnerConfig::default();
    /// assert_eq!(c.adamw().lr, c.lr);
    /// assert_eq!((c.adamw().beta1, c.adamw().beta2), c.betas);
    /// ```
    pub fn adamw(&self) -> ParamsAdamW {
        ParamsAdamW {
            lr: self.lr,
            beta1: self.betas.0,
            beta2: self.betas.1,
            eps: self.eps,
            weight_decay: self.weight_decay,
        }
    }

    /// Checks every option.
    ///
    /// ```
    /// use g2po::learner::LearnerConfig;
    /// assert!(LearnerConfig::default().validate().is_ok());
    /// assert!(LearnerConfig { minibatch_size: 0, ..Default::default() }.validate().is_err());
    /// assert!(LearnerConfig { target_kl: Some(0.0), ..Default::default() }.validate().is_err());
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
        if let Some(t) = self.target_kl
            && !(t.is_finite() && t > 0.0)
        {
            return bad(format!("target_kl must be finite and > 0, got {t}"));
        }
        Ok(())
    }
}

/// One training row: an action taken in an observation.
///
/// ```
/// let r = g2po::learner::UpdateRow {
///     observation: "a hall".into(), action_tokens: vec![5, 1], old_logps: vec![-1.0, -0.5],
/// };
/// assert_eq!(r.action_tokens.len(), r.old_logps.len());
/// ```
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UpdateRow {
    /// The observation (prompt) the action was taken in.
    pub observation: String,
    /// The action's token ids (the policy's tokenisation).
    pub action_tokens: Vec<u32>,
    /// Per-token log-probabilities under the sampling policy.
    pub old_logps: Vec<f32>,
}

/// The rows of one update with their token-level inputs in the padded
/// `[rows x max_len]` layout of [`crate::broadcast`].
///
/// ```
/// use g2po::learner::{UpdateBatch, UpdateRow};
/// let row = |t: Vec<u32>| UpdateRow { observation: "s".into(), old_logps: vec![-1.0; t.len()], action_tokens: t };
/// let b = UpdateBatch::with_row_advantages(vec![row(vec![4, 1]), row(vec![1])], &[0.5, -1.0])?;
/// assert_eq!((b.len(), b.max_len()), (2, 2));
/// assert_eq!(b.advantages().as_slice().unwrap(), &[0.5, 0.5, -1.0, 0.0]);
/// assert_eq!(b.old_logps().as_slice().unwrap(), &[-1.0, -1.0, -1.0, 0.0]);
/// assert!(UpdateBatch::with_row_advantages(vec![], &[]).is_err());
/// # Ok::<(), g2po::learner::LearnerError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateBatch {
    rows: Vec<UpdateRow>,
    old_logps: Array2<f32>,
    advantages: Array2<f32>,
    mask: Array2<f32>,
}

impl UpdateBatch {
    /// The batch from its rows and their token-level advantages with the
    /// response mask (from [`crate::broadcast::padded`] for an engine
    /// estimate, or [`crate::broadcast::padded_rows`]); row `r` of
    /// `advantages` belongs to `rows[r]`. The padded width is `advantages`'.
    ///
    /// Errors: no rows, a row count that differs from `advantages`', a row
    /// whose token and log-probability counts differ or that is longer than
    /// the width, a mask entry other than 0 and 1, a mask selecting a
    /// position past its row's action or no token of its row.
    pub fn new(rows: Vec<UpdateRow>, advantages: Padded) -> Result<Self> {
        if rows.is_empty() {
            return Err(LearnerError::BadInput("empty update batch".into()));
        }
        let Padded { values: advantages, mask } = advantages;
        if advantages.nrows() != rows.len() || mask.dim() != advantages.dim() {
            return Err(LearnerError::BadInput(format!(
                "{} rows but advantages of shape {:?} and a mask of shape {:?}",
                rows.len(),
                advantages.dim(),
                mask.dim()
            )));
        }
        for (i, (r, m)) in rows.iter().zip(mask.rows()).enumerate() {
            if r.action_tokens.len() != r.old_logps.len() {
                return Err(LearnerError::BadInput(format!(
                    "row {i}: {} tokens but {} old log-probs",
                    r.action_tokens.len(),
                    r.old_logps.len()
                )));
            }
            if let Some((j, &v)) = m.iter().enumerate().find(|&(_, &v)| v != 0.0 && v != 1.0) {
                return Err(LearnerError::BadInput(format!("row {i}: mask entry {j} is {v}, expected 0 or 1")));
            }
            if let Some(j) = m.iter().enumerate().skip(r.action_tokens.len()).find(|&(_, &v)| v == 1.0).map(|(j, _)| j)
            {
                return Err(LearnerError::BadInput(format!(
                    "row {i}: the mask selects position {j}, past the action's {} tokens",
                    r.action_tokens.len()
                )));
            }
            if !m.iter().any(|&v| v == 1.0) {
                return Err(LearnerError::BadInput(format!("row {i}: the mask selects no token")));
            }
        }
        let old_logps =
            crate::broadcast::pad_ragged(rows.iter().map(|r| r.old_logps.as_slice()), Some(advantages.ncols()))?;
        Ok(Self { rows, old_logps, advantages, mask })
    }

    /// The batch with each row's advantage broadcast to all its tokens
    /// ([`crate::broadcast::padded_rows`]), padded to the longest action.
    pub fn with_row_advantages(rows: Vec<UpdateRow>, advantages: &[f32]) -> Result<Self> {
        let lens = rows
            .iter()
            .map(|r| u32::try_from(r.action_tokens.len()))
            .collect::<Result<Vec<u32>, _>>()
            .map_err(|_| LearnerError::BadInput("an action longer than u32::MAX tokens".into()))?;
        let padded = crate::broadcast::padded_rows(advantages, &lens, None)?;
        Self::new(rows, padded)
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Always `false`: a batch has at least one row.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The padded width.
    pub fn max_len(&self) -> usize {
        self.advantages.ncols()
    }

    /// The rows.
    pub fn rows(&self) -> &[UpdateRow] {
        &self.rows
    }

    /// `[rows x max_len]` old log-probabilities, 0 past each action.
    pub fn old_logps(&self) -> &Array2<f32> {
        &self.old_logps
    }

    /// `[rows x max_len]` token advantages.
    pub fn advantages(&self) -> &Array2<f32> {
        &self.advantages
    }

    /// `[rows x max_len]` response mask.
    pub fn mask(&self) -> &Array2<f32> {
        &self.mask
    }
}

/// What one update did: token-weighted means over its mini-batches.
///
/// In the JSONL log of `g2po train` the diagnostics appear flat beside `loss`
/// and `grad_norm` (`policy_loss`, `clip_fraction`, `approx_kl_old`,
/// `approx_kl_old_k3`, `kl_ref`, `entropy`, ...).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct UpdateStats {
    /// Total loss, mean over the mini-batches weighted by their tokens.
    pub loss: f64,
    /// The loss diagnostics, each a mean over the mini-batches weighted by
    /// their masked tokens (so every token counts once per epoch, whatever
    /// the mini-batch sizes).
    #[serde(flatten)]
    pub diagnostics: LossDiagnostics,
    /// Global gradient norm before clipping, mean over the optimiser steps.
    pub grad_norm: f64,
    /// Number of mini-batches (optimiser steps).
    pub minibatches: usize,
    /// PPO epochs run (fewer than `ppo_epochs` after an early stop).
    #[serde(default)]
    pub epochs: usize,
    /// Masked tokens over all mini-batches (the weights' sum).
    #[serde(default)]
    pub tokens: usize,
    /// Whether `target_kl` stopped the epochs early.
    #[serde(default)]
    pub early_stopped: bool,
}

/// `acc += w * d`, field by field: the one place the diagnostics are summed.
fn add_weighted(acc: &mut LossDiagnostics, d: &LossDiagnostics, w: f64) {
    let LossDiagnostics {
        policy_loss,
        clip_fraction,
        dual_clip_fraction,
        approx_kl_old,
        approx_kl_old_k3,
        kl_ref,
        entropy,
        entropy_loss,
    } = *d;
    acc.policy_loss += w * policy_loss;
    acc.clip_fraction += w * clip_fraction;
    acc.dual_clip_fraction += w * dual_clip_fraction;
    acc.approx_kl_old += w * approx_kl_old;
    acc.approx_kl_old_k3 += w * approx_kl_old_k3;
    acc.kl_ref += w * kl_ref;
    acc.entropy += w * entropy;
    acc.entropy_loss += w * entropy_loss;
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

/// The GRPO learner: owns the optimiser state of one policy.
///
/// ```
/// use candle_core::Device;
/// use g2po::learner::{Learner, LearnerConfig, UpdateBatch, UpdateRow};
/// use g2po::policy::{Policy, PolicyConfig};
/// let policy = Policy::new(&PolicyConfig { vocab: 64, hidden: 8, ..Default::default() }, &Device::Cpu, 0)?;
/// let mut learner = Learner::new(LearnerConfig::default(), &policy)?;
/// let tokens = policy.tokenize_action("go north");
/// let (lp, _) = policy.token_logps(&["hall"], &[&tokens], tokens.len())?;
/// let old = lp.to_vec2::<f32>()?.remove(0);
/// let row = UpdateRow { observation: "hall".into(), action_tokens: tokens, old_logps: old };
/// let stats = learner.update(&policy, None, &UpdateBatch::with_row_advantages(vec![row], &[1.0])?)?;
/// assert_eq!(stats.minibatches, 1);
/// // On-policy with A = 1 the surrogate is -A * ratio = -1 exactly.
/// assert!((stats.diagnostics.policy_loss + 1.0).abs() < 1e-6);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Learner {
    config: LearnerConfig,
    optimizer: AdamW,
    vars: Vec<Var>,
    var_ids: Vec<TensorId>,
    rng: ChaCha8Rng,
}

impl std::fmt::Debug for Learner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Learner").field("config", &self.config).finish_non_exhaustive()
    }
}

/// One mini-batch's outcome.
/// One mini-batch step's outcome, as [`run_epochs`] sums it.
pub(crate) struct MinibatchStep {
    pub loss: f64,
    pub diagnostics: LossDiagnostics,
    pub grad_norm: f64,
    pub tokens: usize,
}

/// The update loop both learners share (the toy policy's [`Learner`] and the
/// language model's `lm::LmLearner`): up to `ppo_epochs` passes over `rows`
/// rows in mini-batches shuffled by `rng`, `step` called once per mini-batch
/// with its row indices, stopping after an epoch whose last mini-batch's k3
/// approximate KL exceeded `target_kl` (CleanRL's rule). Loss and
/// diagnostics are averaged over tokens, the gradient norm over mini-batches.
pub(crate) fn run_epochs<E>(
    config: &LearnerConfig,
    rows: usize,
    rng: &mut ChaCha8Rng,
    mut step: impl FnMut(&[usize]) -> std::result::Result<MinibatchStep, E>,
) -> std::result::Result<UpdateStats, E> {
    let mut stats = UpdateStats::default();
    let mut sum = LossDiagnostics::default();
    let mut grad_norm_sum = 0.0;
    let mut order: Vec<usize> = (0..rows).collect();
    for _ in 0..config.ppo_epochs {
        order.shuffle(rng);
        let mut last_kl = 0.0;
        for chunk in order.chunks(config.minibatch_size) {
            let step = step(chunk)?;
            let w = step.tokens as f64;
            stats.loss += w * step.loss;
            add_weighted(&mut sum, &step.diagnostics, w);
            stats.tokens += step.tokens;
            grad_norm_sum += step.grad_norm;
            stats.minibatches += 1;
            last_kl = step.diagnostics.approx_kl_old_k3;
        }
        stats.epochs += 1;
        if config.target_kl.is_some_and(|t| last_kl > t) {
            stats.early_stopped = stats.epochs < config.ppo_epochs;
            break;
        }
    }
    let total = stats.tokens as f64;
    stats.loss /= total;
    add_weighted(&mut stats.diagnostics, &sum, 1.0 / total);
    stats.grad_norm = grad_norm_sum / stats.minibatches as f64;
    Ok(stats)
}

fn policy_error<E: std::error::Error + Send + Sync + 'static>(e: E) -> LearnerError {
    LearnerError::Policy(Box::new(e))
}

/// A `[rows, max_len]` f32 tensor of `a` on `device`.
fn tensor_of(a: &Array2<f32>, device: &Device) -> Result<Tensor> {
    Ok(Tensor::from_vec(a.iter().copied().collect::<Vec<f32>>(), a.dim(), device)?)
}

fn check_scores(what: &str, t: &Tensor, shape: (usize, usize)) -> Result<()> {
    if t.dims() != [shape.0, shape.1] {
        return Err(LearnerError::BadInput(format!(
            "the policy returned {what} of shape {:?}, expected [{}, {}]",
            t.dims(),
            shape.0,
            shape.1
        )));
    }
    Ok(())
}

impl Learner {
    /// A learner for `policy` (whose trainable variables it will update).
    ///
    /// Errors: an invalid configuration, a policy without trainable variables.
    pub fn new<P: TrainablePolicy>(config: LearnerConfig, policy: &P) -> Result<Self> {
        config.validate()?;
        let vars = policy.trainable_vars();
        if vars.is_empty() {
            return Err(LearnerError::BadInput("the policy has no trainable variables".into()));
        }
        let optimizer = AdamW::new(vars.clone(), config.adamw())?;
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

    /// One update: up to `ppo_epochs` passes over `batch` in shuffled
    /// mini-batches, one AdamW step per mini-batch after global-norm
    /// clipping, stopping early after an epoch whose last mini-batch's k3
    /// approximate KL exceeded `target_kl` (CleanRL's rule). `reference` is
    /// required when the loss has a KL term.
    ///
    /// Errors: a policy other than the one the learner was built for, a
    /// missing reference, a policy that fails or returns tensors of the wrong
    /// shape, invalid loss inputs, or a non-finite gradient norm (the step is
    /// then not applied).
    pub fn update<P: TrainablePolicy>(
        &mut self,
        policy: &P,
        reference: Option<&P>,
        batch: &UpdateBatch,
    ) -> Result<UpdateStats> {
        let ids: Vec<TensorId> = policy.trainable_vars().iter().map(|v| v.id()).collect();
        if ids != self.var_ids {
            return Err(LearnerError::BadInput("policy is not the one this learner was built for".into()));
        }
        if self.config.loss.kl.is_some() && reference.is_none() {
            return Err(LearnerError::BadInput("the loss has a KL term but no reference policy was given".into()));
        }
        let config = self.config;
        // The driver borrows the generator while each step borrows the
        // learner: the generator goes back whatever the outcome.
        let mut rng = self.rng.clone();
        let stats = run_epochs(&config, batch.len(), &mut rng, |chunk| self.step(policy, reference, batch, chunk));
        self.rng = rng;
        stats
    }

    /// One mini-batch (the rows `chunk` of `batch`): loss, backward, clip,
    /// AdamW step.
    fn step<P: TrainablePolicy>(
        &mut self,
        policy: &P,
        reference: Option<&P>,
        batch: &UpdateBatch,
        chunk: &[usize],
    ) -> Result<MinibatchStep> {
        let shape = (chunk.len(), batch.max_len());
        let rows = batch.rows();
        let tokens = TokenBatch::new(
            chunk.iter().map(|&i| (rows[i].observation.as_str(), rows[i].action_tokens.as_slice())),
            Some(batch.max_len()),
        )?;
        let TokenScores { logp, entropy } = policy.score_tokens(&tokens, true).map_err(policy_error)?;
        check_scores("logp", &logp, shape)?;
        let entropy = entropy.ok_or_else(|| LearnerError::BadInput("the policy returned no entropy".into()))?;
        check_scores("entropy", &entropy, shape)?;
        let reference_logp = match (self.config.loss.kl, reference) {
            (Some(_), Some(r)) => {
                let logp = r.score_tokens(&tokens, false).map_err(policy_error)?.logp.detach();
                check_scores("reference logp", &logp, shape)?;
                Some(logp)
            }
            _ => None,
        };
        let device = logp.device().clone();
        let mask = batch.mask().select(Axis(0), chunk);
        let masked_tokens = mask.iter().filter(|&&m| m == 1.0).count();
        let mask_t = tensor_of(&mask, &device)?;
        let old_t = tensor_of(&batch.old_logps().select(Axis(0), chunk), &device)?;
        let adv_t = tensor_of(&batch.advantages().select(Axis(0), chunk), &device)?;
        let loss_config = self.config.loss;
        let (loss, diagnostics) = if self.config.fused {
            // The op treats its other inputs as constants, so the entropy
            // bonus (which must train the entropy) is added outside it.
            let op_config = LossConfig { entropy_coef: 0.0, ..loss_config };
            let constants = LossConstants {
                logp_old: old_t,
                logp_ref: reference_logp,
                advantages: adv_t,
                entropy: Some(entropy.detach()),
                mask: mask_t.clone(),
            };
            let (loss, diagnostics) = FusedGrpoLoss::new(constants, op_config)?.apply(&logp)?;
            let mut loss = loss.to_dtype(DType::F64)?;
            if loss_config.entropy_coef != 0.0 {
                let ent = aggregate(&entropy, &mask_t, loss_config.aggregation)?;
                loss = (loss - (ent * loss_config.entropy_coef)?)?;
            }
            (loss, diagnostics)
        } else {
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
        let grad_norm = clip_grad_norm(&mut grads, &self.vars, self.config.max_grad_norm)?;
        if !grad_norm.is_finite() {
            return Err(LearnerError::NonFiniteGradient(grad_norm));
        }
        self.optimizer.step(&grads)?;
        Ok(MinibatchStep { loss: loss_value, diagnostics, grad_norm, tokens: masked_tokens })
    }
}
