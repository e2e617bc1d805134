//! The SmolLM2 + LoRA policy: admissible actions scored by the language
//! model, sampled with a temperature, trained through its token
//! log-probabilities.
//!
//! Why scoring instead of free generation: SmolLM2-135M's free-form replies
//! do not keep to the admissible format (see the project notes), while its
//! likelihood of each admissible command is informative. So, like the toy
//! policy of [`crate::policy`], an action's score is the sum of its token
//! log-probabilities (the command, then `<|im_end|>`), rollouts sample
//! `softmax(score / temperature)` over the admissible list, and the learner
//! differentiates the per-token log-probabilities of the chosen command. The
//! prompt of a decision is computed once and the admissible commands are
//! batched on its cache ([`candidate_logps`]).
//!
//! Greedy evaluation ([`GreedyRule`]): the summed score is the sampling
//! distribution's mode, which for an untrained model is dominated by length
//! (each extra token costs its surprisal), so evaluation by default takes the
//! argmax of the *mean* token log-probability instead (the length
//! normalisation of multiple-choice LM evaluation). Both rules agree once
//! training has concentrated the mass; they differ on the untrained model,
//! where the summed rule mostly picks the shortest command.
//!
//! The reference policy for the KL term is the same base with the adapters
//! off ([`SmolLmPolicy::reference`]); it shares the base weights (an `Arc`),
//! so it costs no memory.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::error::{LmError, Result};
use super::gguf::GgufFile;
use super::lora::{Lora, LoraConfig};
use super::model::{Llama, Mode};
use super::prompt::{PromptConfig, PromptContext};
use super::scoring::{CandidateLogps, candidate_logps};
use super::tokenizer::LmTokenizer;
use crate::policy::Action;

/// How greedy evaluation picks an admissible action (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GreedyRule {
    /// Argmax of the mean token log-probability (length-normalised).
    #[default]
    MeanLogProb,
    /// Argmax of the summed token log-probability (the sampling mode).
    SumLogProb,
}

/// Options of the policy.
///
/// ```
/// let c = g2po::lm::LmPolicyConfig::default();
/// assert_eq!(c.lora.rank, 8);
/// ```
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct LmPolicyConfig {
    /// The adapters.
    pub lora: LoraConfig,
    /// The prompt.
    pub prompt: PromptConfig,
    /// The greedy rule of evaluation.
    pub greedy: GreedyRule,
}

/// One admissible action's score.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredAction {
    /// Token ids (the command, then `<|im_end|>`).
    pub tokens: Vec<u32>,
    /// Their log-probabilities under the policy.
    pub logps: Vec<f32>,
    /// Sum of `logps`.
    pub score: f64,
}

impl ScoredAction {
    /// Mean token log-probability.
    pub fn mean(&self) -> f64 {
        self.score / self.tokens.len().max(1) as f64
    }
}

/// The policy (see the module docs).
pub struct SmolLmPolicy {
    model: Arc<Llama>,
    tokenizer: Arc<LmTokenizer>,
    lora: Option<Lora>,
    config: LmPolicyConfig,
    no_params: VarMap,
}

impl std::fmt::Debug for SmolLmPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmolLmPolicy").field("config", &self.config).field("lora", &self.lora).finish_non_exhaustive()
    }
}

impl SmolLmPolicy {
    /// Loads model and tokenizer from `file` onto `device` and adds fresh
    /// adapters seeded by `seed`.
    ///
    /// ```no_run
    /// use g2po::lm::{GgufFile, LmPolicyConfig, SmolLmPolicy};
    /// let file = GgufFile::open_default().unwrap();
    /// let p = SmolLmPolicy::load(&file, LmPolicyConfig::default(), &candle_core::Device::Cpu, 0).unwrap();
    /// assert_eq!(p.varmap().all_vars().len(), 2 * 4 * 30);
    /// ```
    pub fn load(file: &GgufFile, config: LmPolicyConfig, device: &Device, seed: u64) -> Result<Self> {
        let tokenizer = Arc::new(LmTokenizer::from_gguf(file)?);
        let model = Arc::new(Llama::load(file, device)?);
        Self::from_parts(model, tokenizer, config, seed)
    }

    /// A policy on an already loaded base (shared, not copied).
    pub fn from_parts(
        model: Arc<Llama>,
        tokenizer: Arc<LmTokenizer>,
        config: LmPolicyConfig,
        seed: u64,
    ) -> Result<Self> {
        if tokenizer.vocab_size() > model.config().vocab {
            return Err(LmError::BadConfig(format!(
                "tokenizer has {} tokens but the model only {}",
                tokenizer.vocab_size(),
                model.config().vocab
            )));
        }
        let lora = Lora::new(&config.lora, model.config(), model.device(), seed)?;
        Ok(Self { model, tokenizer, lora: Some(lora), config, no_params: VarMap::new() })
    }

    /// The reference policy: the same base, adapters off, no parameters.
    pub fn reference(&self) -> Self {
        Self {
            model: Arc::clone(&self.model),
            tokenizer: Arc::clone(&self.tokenizer),
            lora: None,
            config: self.config.clone(),
            no_params: VarMap::new(),
        }
    }

    /// A snapshot with its own copy of the adapters (later updates of `self`
    /// do not change it); the base is shared.
    pub fn clone_frozen(&self) -> Result<Self> {
        Ok(Self {
            model: Arc::clone(&self.model),
            tokenizer: Arc::clone(&self.tokenizer),
            lora: self.lora.as_ref().map(Lora::clone_frozen).transpose()?,
            config: self.config.clone(),
            no_params: VarMap::new(),
        })
    }

    /// The trainable parameters: the adapters (empty for the reference).
    pub fn varmap(&self) -> &VarMap {
        self.lora.as_ref().map_or(&self.no_params, Lora::varmap)
    }

    /// The base model.
    pub fn model(&self) -> &Llama {
        &self.model
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &LmTokenizer {
        &self.tokenizer
    }

    /// The adapters (`None` for the reference).
    pub fn lora(&self) -> Option<&Lora> {
        self.lora.as_ref()
    }

    /// The options.
    pub fn config(&self) -> &LmPolicyConfig {
        &self.config
    }

    /// The ChatML prompt of a decision ([`PromptConfig::render`]).
    pub fn render(&self, ctx: &PromptContext<'_>) -> String {
        self.config.prompt.render(ctx)
    }

    /// Token ids of a command as an assistant reply: its tokens, then
    /// `<|im_end|>`.
    pub fn tokenize_action(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self.tokenizer.encode(text)?;
        ids.push(self.tokenizer.im_end());
        Ok(ids)
    }

    /// Scores of every admissible action after `prompt` (fast mode).
    ///
    /// Errors: no admissible action, an empty prompt.
    pub fn score(&self, prompt: &str, admissible: &[String]) -> Result<Vec<ScoredAction>> {
        if admissible.is_empty() {
            return Err(LmError::BadInput("no admissible action".into()));
        }
        let prompt_ids = self.tokenizer.encode(prompt)?;
        let tokens = admissible.iter().map(|a| self.tokenize_action(a)).collect::<Result<Vec<_>>>()?;
        let refs: Vec<&[u32]> = tokens.iter().map(Vec::as_slice).collect();
        let out = candidate_logps(&self.model, self.lora.as_ref(), &prompt_ids, &refs, Mode::Fast, false)?;
        Ok(tokens
            .into_iter()
            .zip(out.to_rows()?)
            .map(|(tokens, logps)| ScoredAction { score: logps.iter().map(|&x| f64::from(x)).sum(), tokens, logps })
            .collect())
    }

    /// Samples an admissible action with probability `softmax(score /
    /// temperature)` from already computed scores.
    pub fn sample(scored: Vec<ScoredAction>, temperature: f64, rng: &mut impl Rng) -> Result<Action> {
        let index = crate::policy::inverse_cdf(&softmax(&scored, temperature)?, rng.random::<f64>());
        let s = scored.into_iter().nth(index).ok_or_else(|| LmError::BadInput("no admissible action".into()))?;
        Ok(Action { index, tokens: s.tokens, logps: s.logps })
    }

    /// Scores and samples (see [`SmolLmPolicy::sample`]).
    pub fn act(&self, prompt: &str, admissible: &[String], temperature: f64, rng: &mut impl Rng) -> Result<Action> {
        check_temperature(temperature)?;
        Self::sample(self.score(prompt, admissible)?, temperature, rng)
    }

    /// The greedy choice among already computed scores under the policy's
    /// [`GreedyRule`] (the first on ties).
    pub fn pick_greedy(&self, scored: &[ScoredAction]) -> usize {
        let key = |s: &ScoredAction| match self.config.greedy {
            GreedyRule::MeanLogProb => s.mean(),
            GreedyRule::SumLogProb => s.score,
        };
        let mut best = 0;
        for (i, s) in scored.iter().enumerate() {
            if key(s) > key(&scored[best]) {
                best = i;
            }
        }
        best
    }

    /// Index of the greedy admissible action (see [`GreedyRule`]).
    pub fn greedy(&self, prompt: &str, admissible: &[String]) -> Result<usize> {
        Ok(self.pick_greedy(&self.score(prompt, admissible)?))
    }

    /// `softmax(score / temperature)` over the admissible actions.
    pub fn action_probs(&self, prompt: &str, admissible: &[String], temperature: f64) -> Result<Vec<f64>> {
        softmax(&self.score(prompt, admissible)?, temperature)
    }

    /// The GRPO group step's forward: per-token log-probabilities and
    /// entropies of `actions` after `prompt`, differentiable with respect to
    /// the adapters; the prompt's graph is built once and shared.
    pub fn group_logps(&self, prompt: &str, actions: &[&[u32]]) -> Result<CandidateLogps> {
        let prompt_ids = self.tokenizer.encode(prompt)?;
        candidate_logps(&self.model, self.lora.as_ref(), &prompt_ids, actions, Mode::Differentiable, true)
    }

    /// Per-token log-probabilities and entropies of `rows` (prompt, action
    /// tokens) as `[rows, max_len]` tensors, differentiable with respect to
    /// the adapters. Rows are grouped by prompt: each distinct prompt runs
    /// once and its actions are batched on its cache. Positions past an
    /// action's length hold zeros; callers mask them.
    ///
    /// Errors: different numbers of prompts and actions, no rows, an action
    /// longer than `max_len` or empty.
    pub fn token_logps(&self, prompts: &[&str], actions: &[&[u32]], max_len: usize) -> Result<(Tensor, Tensor)> {
        if prompts.len() != actions.len() {
            return Err(LmError::BadInput(format!("{} prompts but {} actions", prompts.len(), actions.len())));
        }
        if prompts.is_empty() || max_len == 0 {
            return Err(LmError::BadInput("token_logps needs at least one row and max_len > 0".into()));
        }
        if let Some((i, a)) = actions.iter().enumerate().find(|(_, a)| a.len() > max_len) {
            return Err(LmError::BadInput(format!("action {i} has {} tokens > max_len {max_len}", a.len())));
        }
        let mut order: Vec<&str> = Vec::new();
        let mut members: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, &p) in prompts.iter().enumerate() {
            members
                .entry(p)
                .or_insert_with(|| {
                    order.push(p);
                    Vec::new()
                })
                .push(i);
        }
        let (mut logps, mut entropies, mut placed) = (Vec::new(), Vec::new(), Vec::new());
        for p in order {
            let rows = &members[p];
            let acts: Vec<&[u32]> = rows.iter().map(|&i| actions[i]).collect();
            let out = self.group_logps(p, &acts)?;
            let width = out.logp.dim(1)?;
            let pad = |t: Tensor| t.pad_with_zeros(1, 0, max_len - width);
            logps.push(pad(out.logp)?);
            entropies.push(pad(out.entropy.ok_or_else(|| LmError::BadInput("no entropy".into()))?)?);
            placed.extend(rows.iter().copied());
        }
        // `placed[k]` is the row stored at position k; invert it.
        let mut inverse = vec![0u32; placed.len()];
        for (k, &row) in placed.iter().enumerate() {
            inverse[row] = k as u32;
        }
        let inverse = Tensor::from_vec(inverse, prompts.len(), self.model.device())?;
        let logp = Tensor::cat(&logps, 0)?.index_select(&inverse, 0)?;
        let entropy = Tensor::cat(&entropies, 0)?.index_select(&inverse, 0)?;
        Ok((logp, entropy))
    }
}

fn check_temperature(temperature: f64) -> Result<()> {
    if temperature.is_finite() && temperature > 0.0 {
        Ok(())
    } else {
        Err(LmError::BadInput(format!("temperature must be finite and > 0, got {temperature}")))
    }
}

fn softmax(scored: &[ScoredAction], temperature: f64) -> Result<Vec<f64>> {
    check_temperature(temperature)?;
    if scored.is_empty() {
        return Err(LmError::BadInput("no admissible action".into()));
    }
    let z: Vec<f64> = scored.iter().map(|s| s.score / temperature).collect();
    let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !max.is_finite() {
        return Err(LmError::BadInput("non-finite action scores".into()));
    }
    let w: Vec<f64> = z.iter().map(|x| (x - max).exp()).collect();
    let total: f64 = w.iter().sum();
    Ok(w.into_iter().map(|x| x / total).collect())
}

impl crate::learner::TrainablePolicy for SmolLmPolicy {
    type Error = LmError;

    /// The adapters' `A` and `B` in name order (`blk.<layer>.<proj>.lora_a/b`);
    /// none for the reference.
    fn trainable_vars(&self) -> Vec<candle_core::Var> {
        let data = self.varmap().data().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut named: Vec<(&String, &candle_core::Var)> = data.iter().collect();
        named.sort_by(|a, b| a.0.cmp(b.0));
        named.into_iter().map(|(_, v)| v.clone()).collect()
    }

    /// One group step per distinct observation (prompt), its actions batched
    /// on the prompt's cache ([`SmolLmPolicy::token_logps`]). Every group's
    /// graph stays alive until the learner's backward, so the learner's
    /// mini-batch bounds the memory; [`super::LmLearner`] runs one group at a
    /// time instead.
    fn score_tokens(
        &self,
        batch: &crate::learner::TokenBatch<'_>,
        _with_entropy: bool,
    ) -> Result<crate::learner::TokenScores> {
        let prompts: Vec<&str> = batch.row_observation().iter().map(|&o| batch.observations()[o]).collect();
        let actions: Vec<&[u32]> = (0..batch.rows()).map(|r| batch.action(r)).collect();
        let (logp, entropy) = self.token_logps(&prompts, &actions, batch.max_len())?;
        Ok(crate::learner::TokenScores { logp, entropy: Some(entropy) })
    }
}
