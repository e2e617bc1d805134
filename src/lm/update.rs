//! The GRPO update of the language-model policy, one prompt group at a time.
//!
//! Same loss and optimiser as [`crate::learner::Learner`] (verl semantics:
//! [`grpo_loss_tensors`], AdamW, global-norm clipping, shuffled
//! mini-batches from a ChaCha8 stream), with one difference that the size
//! of the model forces: a mini-batch is not differentiated in one graph.
//! Its rows are grouped by prompt, and each group is one GRPO group step
//! (the prompt run once with gradients, its actions batched on the prompt's
//! cache, backward), its gradient added to the mini-batch's. Only one group's
//! graph is alive at a time, so memory is bounded by the largest group rather
//! than by the mini-batch (the whole mini-batch at once would take ~2 GB per
//! distinct prompt here).
//!
//! The accumulation is exact: every aggregation of the loss is a weighted sum
//! of per-token terms whose weights depend only on the mask, so the
//! mini-batch loss is the sum of the group losses rescaled by the group's
//! share of the mini-batch's tokens (`token-mean`) or rows (the `seq-mean`
//! modes). The diagnostics are combined with the same shares.

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, TensorId, Var};
use candle_nn::{AdamW, Optimizer};
use ndarray::{Array2, Axis, s};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::error::{LmError, Result};
use super::policy::SmolLmPolicy;
use crate::learner::update::{MinibatchStep, run_epochs};
use crate::learner::{
    LearnerConfig, LearnerError, LossAggregation, LossDiagnostics, LossTensors, TrainablePolicy, UpdateBatch,
    UpdateStats, clip_grad_norm, grpo_loss_tensors,
};

/// The learner of a [`SmolLmPolicy`]: owns the optimiser state of its
/// adapters (see the module docs).
pub struct LmLearner {
    config: LearnerConfig,
    optimizer: AdamW,
    vars: Vec<Var>,
    var_ids: Vec<TensorId>,
    rng: ChaCha8Rng,
}

impl std::fmt::Debug for LmLearner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LmLearner").field("config", &self.config).field("vars", &self.vars.len()).finish()
    }
}

/// `acc += w * d`, field by field.
fn add_weighted(acc: &mut LossDiagnostics, d: &LossDiagnostics, token_w: f64, loss_w: f64) {
    acc.policy_loss += loss_w * d.policy_loss;
    acc.kl_ref += loss_w * d.kl_ref;
    acc.entropy_loss += loss_w * d.entropy_loss;
    acc.clip_fraction += token_w * d.clip_fraction;
    acc.dual_clip_fraction += token_w * d.dual_clip_fraction;
    acc.approx_kl_old += token_w * d.approx_kl_old;
    acc.approx_kl_old_k3 += token_w * d.approx_kl_old_k3;
    acc.entropy += token_w * d.entropy;
}

/// Rows `rows` and the first `width` columns of `a` as a tensor.
fn block(a: &Array2<f32>, rows: &[usize], width: usize, device: &Device) -> Result<Tensor> {
    let sel = a.select(Axis(0), rows);
    let sel = sel.slice(s![.., ..width]);
    Ok(Tensor::from_vec(sel.iter().copied().collect::<Vec<f32>>(), (rows.len(), width), device)?)
}

impl LmLearner {
    /// A learner for `policy`'s adapters.
    ///
    /// Errors: an invalid configuration, or a policy without parameters (the
    /// reference).
    pub fn new(config: LearnerConfig, policy: &SmolLmPolicy) -> Result<Self> {
        config.validate()?;
        let vars = policy.trainable_vars();
        if vars.is_empty() {
            return Err(LmError::BadInput("the policy has no trainable parameters (is it the reference?)".into()));
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

    /// One update with [`crate::learner::Learner::update`]'s semantics: up to
    /// `ppo_epochs` passes over `batch` in shuffled mini-batches, one AdamW
    /// step per mini-batch after global-norm clipping, `target_kl` early
    /// stopping, statistics weighted by tokens. `reference` is required when
    /// the loss has a KL term. Each row's `observation` is the prompt its
    /// action was chosen after.
    ///
    /// Errors: a policy other than the learner's, a missing reference,
    /// invalid loss inputs, or a non-finite gradient norm (the step is then
    /// not applied).
    pub fn update(
        &mut self,
        policy: &SmolLmPolicy,
        reference: Option<&SmolLmPolicy>,
        batch: &UpdateBatch,
    ) -> Result<UpdateStats> {
        let ids: Vec<TensorId> = policy.trainable_vars().iter().map(|v| v.id()).collect();
        if ids != self.var_ids {
            return Err(LmError::BadInput("policy is not the one this learner was built for".into()));
        }
        if self.config.loss.kl.is_some() && reference.is_none() {
            return Err(LmError::BadInput("the loss has a KL term but no reference policy was given".into()));
        }
        let config = self.config;
        // The driver borrows the generator while each step borrows the
        // learner: the generator goes back whatever the outcome.
        let mut rng = self.rng.clone();
        let stats = run_epochs(&config, batch.len(), &mut rng, |chunk| self.step(policy, reference, batch, chunk));
        self.rng = rng;
        stats
    }

    /// One mini-batch (rows `chunk` of `batch`): one group step per prompt
    /// with accumulated gradients, clip, AdamW.
    fn step(
        &mut self,
        policy: &SmolLmPolicy,
        reference: Option<&SmolLmPolicy>,
        batch: &UpdateBatch,
        chunk: &[usize],
    ) -> Result<MinibatchStep> {
        let rows = batch.rows();
        let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
        for &i in chunk {
            let p = rows[i].observation.as_str();
            match groups.iter_mut().find(|(q, _)| *q == p) {
                Some((_, members)) => members.push(i),
                None => groups.push((p, vec![i])),
            }
        }
        let mask = batch.mask();
        let count = |idx: &[usize]| idx.iter().map(|&i| mask.row(i).iter().filter(|&&m| m == 1.0).count()).sum();
        let total_tokens: usize = count(chunk);
        let loss_config = self.config.loss;
        let mut diagnostics = LossDiagnostics::default();
        let mut loss_value = 0.0;
        let mut acc: Option<GradStore> = None;
        for (prompt, members) in &groups {
            let token_share = count(members) as f64 / total_tokens as f64;
            let loss_share = match loss_config.aggregation {
                LossAggregation::TokenMean => token_share,
                _ => members.len() as f64 / chunk.len() as f64,
            };
            let acts: Vec<&[u32]> = members.iter().map(|&i| rows[i].action_tokens.as_slice()).collect();
            let out = policy.group_logps(prompt, &acts)?;
            let width = out.logp.dim(1)?;
            let device = out.logp.device().clone();
            let mask_t = block(mask, members, width, &device)?;
            let old_t = block(batch.old_logps(), members, width, &device)?;
            let adv_t = block(batch.advantages(), members, width, &device)?;
            let reference_logp = match (loss_config.kl, reference) {
                (Some(_), Some(r)) => Some(r.fast_logps(prompt, &acts)?),
                _ => None,
            };
            let inputs = LossTensors {
                logp: &out.logp,
                logp_old: &old_t,
                logp_ref: reference_logp.as_ref(),
                advantages: &adv_t,
                entropy: out.entropy.as_ref(),
                mask: &mask_t,
            };
            let (loss, d) = grpo_loss_tensors(&inputs, &loss_config)?;
            let loss = (loss * loss_share)?;
            loss_value += loss.to_scalar::<f64>()?;
            add_weighted(&mut diagnostics, &d, token_share, loss_share);
            let grads = loss.backward()?;
            acc = Some(match acc {
                None => grads,
                Some(mut a) => {
                    for v in &self.vars {
                        if let Some(g) = grads.get(v) {
                            let sum = match a.get(v) {
                                Some(prev) => (prev + g)?,
                                None => g.clone(),
                            };
                            a.insert(v, sum);
                        }
                    }
                    a
                }
            });
        }
        let mut grads = acc.ok_or_else(|| LmError::BadInput("empty mini-batch".into()))?;
        let grad_norm = clip_grad_norm(&mut grads, &self.vars, self.config.max_grad_norm)?;
        if !grad_norm.is_finite() {
            return Err(LmError::from(LearnerError::NonFiniteGradient(grad_norm)));
        }
        self.optimizer.step(&grads)?;
        Ok(MinibatchStep { loss: loss_value, diagnostics, grad_norm, tokens: total_tokens })
    }
}

impl SmolLmPolicy {
    /// Per-token log-probabilities `[actions, max_len]` of `actions` after
    /// `prompt` in fast mode (no graph): the reference and old log-probs.
    pub fn fast_logps(&self, prompt: &str, actions: &[&[u32]]) -> Result<Tensor> {
        let ids = self.tokenizer().encode(prompt)?;
        let out =
            super::scoring::candidate_logps(self.model(), self.lora(), &ids, actions, super::model::Mode::Fast, false)?;
        Ok(out.logp.to_dtype(DType::F32)?)
    }
}
