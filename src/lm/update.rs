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
use candle_core::{DType, Tensor, TensorId, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::error::{LmError, Result};
use super::policy::SmolLmPolicy;
use crate::learner::{
    LearnerConfig, LearnerError, LossAggregation, LossDiagnostics, LossTensors, UpdateBatch, UpdateRow, UpdateStats,
    clip_grad_norm, grpo_loss_tensors,
};

fn sorted_vars(policy: &SmolLmPolicy) -> Vec<Var> {
    let data = policy.varmap().data().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut named: Vec<(&String, &Var)> = data.iter().collect();
    named.sort_by(|a, b| a.0.cmp(b.0));
    named.into_iter().map(|(_, v)| v.clone()).collect()
}

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

impl LmLearner {
    /// A learner for `policy`'s adapters.
    ///
    /// Errors: an invalid configuration, or a policy without parameters (the
    /// reference).
    pub fn new(config: LearnerConfig, policy: &SmolLmPolicy) -> Result<Self> {
        config.validate()?;
        let vars = sorted_vars(policy);
        if vars.is_empty() {
            return Err(LmError::BadInput("the policy has no trainable parameters (is it the reference?)".into()));
        }
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
    /// one AdamW step per mini-batch after global-norm clipping; `reference`
    /// is required when the loss has a KL term. Each row's `observation` is
    /// the prompt its action was chosen after.
    ///
    /// Errors: a policy other than the learner's, an empty batch, rows whose
    /// token and log-probability counts differ or that have no token, a
    /// missing reference, invalid loss inputs, or a non-finite gradient norm
    /// (the step is then not applied).
    pub fn update(
        &mut self,
        policy: &SmolLmPolicy,
        reference: Option<&SmolLmPolicy>,
        batch: &UpdateBatch,
    ) -> Result<UpdateStats> {
        let ids: Vec<TensorId> = sorted_vars(policy).iter().map(|v| v.id()).collect();
        if ids != self.var_ids {
            return Err(LmError::BadInput("policy is not the one this learner was built for".into()));
        }
        if batch.rows.is_empty() {
            return Err(LmError::BadInput("empty update batch".into()));
        }
        for (i, r) in batch.rows.iter().enumerate() {
            if r.action_tokens.is_empty() || r.action_tokens.len() != r.old_logps.len() {
                return Err(LmError::BadInput(format!(
                    "row {i}: {} tokens and {} old log-probs (need equal, at least 1)",
                    r.action_tokens.len(),
                    r.old_logps.len()
                )));
            }
        }
        if self.config.loss.kl.is_some() && reference.is_none() {
            return Err(LmError::BadInput("the loss has a KL term but no reference policy was given".into()));
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

    /// One mini-batch: group steps with accumulated gradients, clip, AdamW.
    fn step(
        &mut self,
        policy: &SmolLmPolicy,
        reference: Option<&SmolLmPolicy>,
        rows: &[&UpdateRow],
    ) -> Result<(LossDiagnostics, f64, f64)> {
        let mut groups: Vec<(&str, Vec<&UpdateRow>)> = Vec::new();
        for r in rows {
            match groups.iter_mut().find(|(p, _)| *p == r.observation) {
                Some((_, members)) => members.push(r),
                None => groups.push((&r.observation, vec![r])),
            }
        }
        let total_tokens: usize = rows.iter().map(|r| r.action_tokens.len()).sum();
        let total_rows = rows.len();
        let loss_config = self.config.loss;
        let mut diag = LossDiagnostics::default();
        let mut loss_value = 0.0;
        let mut acc: Option<GradStore> = None;
        for (prompt, members) in &groups {
            let tokens: usize = members.iter().map(|r| r.action_tokens.len()).sum();
            let token_share = tokens as f64 / total_tokens as f64;
            let loss_share = match loss_config.aggregation {
                LossAggregation::TokenMean => token_share,
                _ => members.len() as f64 / total_rows as f64,
            };
            let acts: Vec<&[u32]> = members.iter().map(|r| r.action_tokens.as_slice()).collect();
            let out = policy.group_logps(prompt, &acts)?;
            let (n, max_len) = out.logp.dims2()?;
            let device = out.logp.device().clone();
            let mut old = vec![0f32; n * max_len];
            let mut adv = vec![0f32; n * max_len];
            let mut mask = vec![0f32; n * max_len];
            for (i, r) in members.iter().enumerate() {
                for j in 0..r.action_tokens.len() {
                    old[i * max_len + j] = r.old_logps[j];
                    adv[i * max_len + j] = r.advantage;
                    mask[i * max_len + j] = 1.0;
                }
            }
            let t = |v: Vec<f32>| Tensor::from_vec(v, (n, max_len), &device);
            let (old, adv, mask) = (t(old)?, t(adv)?, t(mask)?);
            let reference_logp = match (loss_config.kl, reference) {
                (Some(_), Some(r)) => Some(r.fast_logps(prompt, &acts)?),
                _ => None,
            };
            let inputs = LossTensors {
                logp: &out.logp,
                logp_old: &old,
                logp_ref: reference_logp.as_ref(),
                advantages: &adv,
                entropy: out.entropy.as_ref(),
                mask: &mask,
            };
            let (loss, d) = grpo_loss_tensors(&inputs, &loss_config)?;
            let loss = (loss * loss_share)?;
            loss_value += loss.to_scalar::<f64>()?;
            diag.policy_loss += d.policy_loss * loss_share;
            diag.kl_ref += d.kl_ref * loss_share;
            diag.clip_fraction += d.clip_fraction * token_share;
            diag.dual_clip_fraction += d.dual_clip_fraction * token_share;
            diag.approx_kl_old += d.approx_kl_old * token_share;
            diag.entropy += d.entropy * token_share;
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
        let norm = clip_grad_norm(&mut grads, &self.vars, self.config.max_grad_norm)?;
        if !norm.is_finite() {
            return Err(LmError::from(LearnerError::NonFiniteGradient(norm)));
        }
        self.optimizer.step(&grads)?;
        Ok((diag, loss_value, norm))
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
