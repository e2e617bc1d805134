//! A small candle policy for text agents that behaves like an LLM choosing an
//! action by generating it.
//!
//! Design. Real agent policies are LLMs: the action is a token sequence and
//! the learner works on per-token log-probabilities. To exercise exactly that
//! code path on a CPU in seconds, this policy
//!
//! * hashes words of the text (alphanumeric runs, lower-cased, and single
//!   punctuation characters) into a fixed vocabulary with `ahash` under fixed
//!   seeds, so that no tokenizer file is needed and ids are reproducible
//!   (ahash's output is fixed for one build and target; it is not a portable
//!   file format);
//! * encodes the observation as a bag of words (mean embedding, one linear
//!   layer, tanh);
//! * generates each action token from a log-softmax over the vocabulary
//!   conditioned on the observation encoding and the previous action token
//!   (a first-order "language model"), ending every action with [`EOS`] so
//!   that an action is not scored like its own prefix;
//! * scores an admissible action by the sum of its token log-probabilities and
//!   samples among the admissible actions with probability proportional to
//!   `exp(score / temperature)`.
//!
//! It implements [`TrainablePolicy`]: [`Policy::score_tokens`](TrainablePolicy::score_tokens)
//! evaluates any number of (observation, action) rows of a [`TokenBatch`] in
//! one batched forward, encoding each distinct observation once, which is
//! what the learner differentiates. [`Policy::token_logps`] is the same for
//! plain slices.
//!
//! Parameters are initialised from a ChaCha8 stream seeded by the caller (not
//! candle's unseeded initialisers), so two policies built with one seed are
//! identical.

use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, D, DType, Device, Layout, Shape, Tensor, Var};
use candle_nn::{Embedding, Linear, Module, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::learner::{TokenBatch, TokenScores, TrainablePolicy};

/// What can go wrong in the toy policy.
///
/// ```
/// use g2po::policy::{Policy, PolicyConfig, PolicyError};
/// let bad = PolicyConfig { vocab: 2, ..PolicyConfig::default() };
/// assert!(matches!(Policy::new(&bad, &candle_core::Device::Cpu, 0), Err(PolicyError::BadConfig(_))));
/// ```
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A size is out of its domain.
    #[error("invalid policy configuration: {0}")]
    BadConfig(String),
    /// An argument is invalid (the message says which).
    #[error("invalid input: {0}")]
    BadInput(String),
    /// The rows do not fit the padded token layout.
    #[error(transparent)]
    Layout(#[from] crate::Error),
    /// A failure inside candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Shorthand for results of this module.
pub type Result<T, E = PolicyError> = std::result::Result<T, E>;

/// Token id that stands for "no previous action token" (start of an action).
pub const BOS: u32 = 0;
/// Token id that ends every action.
pub const EOS: u32 = 1;
/// Number of reserved ids before the hashed word buckets.
pub const RESERVED_TOKENS: u32 = 2;

/// Fixed ahash seeds: the tokenizer must map a word to the same id in every
/// run, so the hasher cannot be randomly keyed.
const HASH_SEEDS: [u64; 4] =
    [0x9e37_79b9_7f4a_7c15, 0xbf58_476d_1ce4_e5b9, 0x94d0_49bb_1331_11eb, 0x2545_f491_4f6c_dd1d];

/// Sizes of the policy.
///
/// ```
/// let c = g2po::policy::PolicyConfig::default();
/// assert_eq!(c.vocab, 4096);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PolicyConfig {
    /// Vocabulary size including the reserved ids (at least 3).
    pub vocab: usize,
    /// Width of embeddings and hidden states.
    pub hidden: usize,
    /// Most tokens of one action, [`EOS`] included (at least 1); longer
    /// actions are truncated.
    pub max_action_tokens: usize,
    /// Most observation words read (the rest are ignored), bounding the
    /// encoder's memory on long observations.
    pub max_observation_tokens: usize,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self { vocab: 4096, hidden: 64, max_action_tokens: 16, max_observation_tokens: 256 }
    }
}

/// One sampled action.
#[derive(Debug, Clone, PartialEq)]
pub struct Action {
    /// Index into the admissible list.
    pub index: usize,
    /// Token ids of the action ([`EOS`]-terminated).
    pub tokens: Vec<u32>,
    /// Per-token log-probabilities of `tokens` under the policy that sampled
    /// it (the learner's `logp_old`).
    pub logps: Vec<f32>,
}

/// The text policy (see the module docs).
pub struct Policy {
    config: PolicyConfig,
    device: Device,
    varmap: VarMap,
    obs_emb: Embedding,
    obs_proj: Linear,
    prev_emb: Embedding,
    out: Linear,
    hasher: ahash::RandomState,
}

/// Splits text into lower-cased alphanumeric runs and single punctuation
/// characters; whitespace separates.
fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for ch in text.chars() {
        if ch.is_alphanumeric() {
            cur.extend(ch.to_lowercase());
        } else {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            if !ch.is_whitespace() {
                out.push(ch.to_string());
            }
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn validate(config: &PolicyConfig) -> Result<()> {
    if config.vocab < RESERVED_TOKENS as usize + 1 || config.vocab > u32::MAX as usize {
        return Err(PolicyError::BadConfig(format!("vocab must be in 3..=2^32-1, got {}", config.vocab)));
    }
    if config.hidden == 0 || config.max_action_tokens == 0 || config.max_observation_tokens == 0 {
        return Err(PolicyError::BadConfig(
            "hidden, max_action_tokens and max_observation_tokens must be positive".into(),
        ));
    }
    Ok(())
}

impl Policy {
    /// Builds a policy with parameters drawn from a ChaCha8 stream seeded by
    /// `seed`.
    ///
    /// ```
    /// use candle_core::Device;
    /// use g2po::policy::{Policy, PolicyConfig};
    /// let c = PolicyConfig { vocab: 64, hidden: 8, ..PolicyConfig::default() };
    /// let p = Policy::new(&c, &Device::Cpu, 7).unwrap();
    /// assert_eq!(p.varmap().all_vars().len(), 6);
    /// ```
    pub fn new(config: &PolicyConfig, device: &Device, seed: u64) -> Result<Self> {
        validate(config)?;
        let (v, h) = (config.vocab, config.hidden);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut uniform = |shape: &[usize], bound: f64| -> Result<Var> {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = (0..n).map(|_| (rng.random::<f64>() * 2.0 - 1.0) * bound).map(|x| x as f32).collect();
            Ok(Var::from_tensor(&Tensor::from_vec(data, shape, device)?)?)
        };
        let lin = 1.0 / (h as f64).sqrt();
        let varmap = VarMap::new();
        {
            let mut data = varmap.data().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            data.insert("obs_emb.weight".into(), uniform(&[v, h], 1.0)?);
            data.insert("obs_proj.weight".into(), uniform(&[h, h], lin)?);
            data.insert("obs_proj.bias".into(), uniform(&[h], lin)?);
            data.insert("prev_emb.weight".into(), uniform(&[v, h], 1.0)?);
            data.insert("out.weight".into(), uniform(&[v, h], lin)?);
            data.insert("out.bias".into(), Var::zeros(v, DType::F32, device)?);
        }
        Self::from_varmap(*config, device, varmap)
    }

    fn from_varmap(config: PolicyConfig, device: &Device, varmap: VarMap) -> Result<Self> {
        let (v, h) = (config.vocab, config.hidden);
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
        Ok(Self {
            obs_emb: candle_nn::embedding(v, h, vb.pp("obs_emb"))?,
            obs_proj: candle_nn::linear(h, h, vb.pp("obs_proj"))?,
            prev_emb: candle_nn::embedding(v, h, vb.pp("prev_emb"))?,
            out: candle_nn::linear(h, v, vb.pp("out"))?,
            config,
            device: device.clone(),
            varmap,
            hasher: ahash::RandomState::with_seeds(HASH_SEEDS[0], HASH_SEEDS[1], HASH_SEEDS[2], HASH_SEEDS[3]),
        })
    }

    /// The sizes this policy was built with.
    ///
    /// ```
    /// # use g2po::policy::{Policy, PolicyConfig};
    /// let c = PolicyConfig { vocab: 32, hidden: 4, ..PolicyConfig::default() };
    /// let p = Policy::new(&c, &candle_core::Device::Cpu, 0).unwrap();
    /// assert_eq!(p.config(), &c);
    /// ```
    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// The trainable parameters (what an optimiser updates).
    ///
    /// ```
    /// # use g2po::policy::{Policy, PolicyConfig};
    /// let p = Policy::new(&PolicyConfig { vocab: 32, hidden: 4, ..Default::default() }, &candle_core::Device::Cpu, 0).unwrap();
    /// assert!(p.varmap().data().lock().unwrap().contains_key("out.weight"));
    /// ```
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// A deep copy with its own parameters (for the frozen reference or the
    /// old policy): later updates of `self` do not change it.
    ///
    /// ```
    /// # use g2po::policy::{Policy, PolicyConfig};
    /// let p = Policy::new(&PolicyConfig { vocab: 32, hidden: 4, ..Default::default() }, &candle_core::Device::Cpu, 0).unwrap();
    /// let q = p.clone_frozen().unwrap();
    /// let a = ["go north".to_string(), "go south".to_string()];
    /// assert_eq!(p.greedy("a room", &a).unwrap(), q.greedy("a room", &a).unwrap());
    /// ```
    pub fn clone_frozen(&self) -> Result<Self> {
        let varmap = VarMap::new();
        {
            let src = self.varmap.data().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut dst = varmap.data().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for (name, var) in src.iter() {
                dst.insert(name.clone(), Var::from_tensor(&var.as_tensor().copy()?)?);
            }
        }
        Self::from_varmap(self.config, &self.device, varmap)
    }

    fn word_id(&self, word: &str) -> u32 {
        let buckets = (self.config.vocab - RESERVED_TOKENS as usize) as u64;
        RESERVED_TOKENS + (self.hasher.hash_one(word) % buckets) as u32
    }

    /// Token ids of an observation (at most `max_observation_tokens`).
    ///
    /// ```
    /// # use g2po::policy::{Policy, PolicyConfig};
    /// let p = Policy::new(&PolicyConfig { vocab: 4096, hidden: 4, ..Default::default() }, &candle_core::Device::Cpu, 0).unwrap();
    /// assert_eq!(p.tokenize_observation("You see a Key."), p.tokenize_observation("you  see a key ."));
    /// assert_eq!(p.tokenize_observation("You see a Key.").len(), 5);
    /// ```
    pub fn tokenize_observation(&self, text: &str) -> Vec<u32> {
        words(text).iter().take(self.config.max_observation_tokens).map(|w| self.word_id(w)).collect()
    }

    /// Token ids of an action: its words (at most `max_action_tokens - 1`)
    /// followed by [`EOS`].
    ///
    /// ```
    /// # use g2po::policy::{Policy, PolicyConfig, EOS};
    /// let p = Policy::new(&PolicyConfig { vocab: 4096, hidden: 4, ..Default::default() }, &candle_core::Device::Cpu, 0).unwrap();
    /// let t = p.tokenize_action("take key");
    /// assert_eq!(t.len(), 3);
    /// assert_eq!(*t.last().unwrap(), EOS);
    /// assert_eq!(p.tokenize_action(""), vec![EOS]);
    /// ```
    pub fn tokenize_action(&self, text: &str) -> Vec<u32> {
        let mut ids: Vec<u32> =
            words(text).iter().take(self.config.max_action_tokens - 1).map(|w| self.word_id(w)).collect();
        ids.push(EOS);
        ids
    }

    /// Encodes distinct observations as `[observations, hidden]`: the mean
    /// embedding of each one's words (zeros for an empty observation), one
    /// linear layer, tanh.
    fn encode_observations(&self, observations: &[&str]) -> Result<Tensor> {
        let words: Vec<Vec<u32>> = observations.iter().map(|o| self.tokenize_observation(o)).collect();
        // At least one column, so that an all-empty batch still has a shape.
        let width = words.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let ids = crate::broadcast::pad_ragged(words.iter().map(Vec::as_slice), Some(width))?;
        let lens: Vec<u32> = words.iter().map(|w| w.len() as u32).collect();
        let mut weights = crate::broadcast::response_mask(&lens, Some(width))?;
        for (mut row, &len) in weights.rows_mut().into_iter().zip(&lens) {
            if len > 0 {
                row /= len as f32;
            }
        }
        let u = observations.len();
        let ids = Tensor::from_vec(ids.iter().copied().collect::<Vec<u32>>(), (u, width), &self.device)?;
        let weights = Tensor::from_vec(weights.iter().copied().collect::<Vec<f32>>(), (u, width, 1), &self.device)?;
        let bag = self.obs_emb.forward(&ids)?.broadcast_mul(&weights)?.sum(1)?;
        Ok(self.obs_proj.forward(&bag)?.tanh()?)
    }

    /// Per-token log-probabilities and entropies of `(observation, action
    /// token ids)` rows as `[rows, max_len]` tensors, in one batched forward
    /// ([`TrainablePolicy::score_tokens`] on plain slices). The
    /// log-probabilities are differentiable with respect to the parameters.
    /// Positions past an action's length hold finite filler values; callers
    /// mask them.
    ///
    /// Errors: different numbers of observations and actions, no rows, an
    /// action longer than `max_len`, or a token id outside the vocabulary.
    ///
    /// ```
    /// # use g2po::policy::{Policy, PolicyConfig};
    /// let p = Policy::new(&PolicyConfig { vocab: 64, hidden: 8, ..Default::default() }, &candle_core::Device::Cpu, 1)?;
    /// let a = p.tokenize_action("open door");
    /// let b = p.tokenize_action("wait");
    /// let (logp, ent) = p.token_logps(&["hall", "hall"], &[&a, &b], 3)?;
    /// assert_eq!(logp.dims(), &[2, 3]);
    /// assert_eq!(ent.dims(), &[2, 3]);
    /// let v = logp.to_vec2::<f32>()?;
    /// assert!(v[0].iter().all(|&x| x < 0.0));
    /// assert!(p.token_logps(&["hall"], &[&a], 2).is_err()); // 3 tokens do not fit 2
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn token_logps(&self, observations: &[&str], actions: &[&[u32]], max_len: usize) -> Result<(Tensor, Tensor)> {
        if observations.len() != actions.len() {
            return Err(PolicyError::BadInput(format!(
                "{} observations but {} actions",
                observations.len(),
                actions.len()
            )));
        }
        let batch = TokenBatch::new(observations.iter().copied().zip(actions.iter().copied()), Some(max_len))?;
        let (logp, entropy) = self.forward(&batch)?;
        Ok((logp, entropy))
    }

    /// The batched forward up to the output layer: the hidden states as one
    /// `[rows * max_len, hidden]` matrix and the target ids, row-major
    /// `[rows, max_len]`.
    fn hidden(&self, batch: &TokenBatch<'_>) -> Result<(Tensor, Vec<u32>)> {
        let (rows, max_len) = (batch.rows(), batch.max_len());
        if max_len == 0 {
            return Err(PolicyError::BadInput("token scoring needs max_len > 0".into()));
        }
        let target = batch.action_ids();
        if let Some((i, &t)) = target.iter().enumerate().find(|&(_, &t)| t as usize >= self.config.vocab) {
            return Err(PolicyError::BadInput(format!(
                "token id {t} in action {} is outside the vocabulary of {}",
                i / max_len,
                self.config.vocab
            )));
        }
        // Each position is conditioned on the previous action token, BOS at
        // the start: the targets shifted right by one (past an action this
        // reads the padding, whose scores are masked).
        let mut prev = ndarray::Array2::from_elem((rows, max_len), BOS);
        prev.slice_mut(ndarray::s![.., 1..]).assign(&target.slice(ndarray::s![.., ..max_len - 1]));
        let flat = |a: &ndarray::Array2<u32>| a.iter().copied().collect::<Vec<u32>>();
        let enc = self.encode_observations(batch.observations())?;
        let row_map: Vec<u32> = batch.row_observation().iter().map(|&i| i as u32).collect();
        let row_map = Tensor::from_vec(row_map, rows, &self.device)?;
        let enc = enc.index_select(&row_map, 0)?.unsqueeze(1)?; // [rows, 1, h]
        let prev = Tensor::from_vec(flat(&prev), (rows, max_len), &self.device)?;
        let hidden = self.prev_emb.forward(&prev)?.broadcast_add(&enc)?.tanh()?; // [rows, L, h]
        // As one [rows * L, h] matrix: on a 3-D input `Linear` broadcasts its
        // weight to [rows, V, h], whose gradient candle then sums back over
        // the rows (a strided reduction that was a sixth of a step).
        let hidden = hidden.reshape((rows * max_len, self.config.hidden))?;
        Ok((hidden, flat(target)))
    }

    /// The batched forward: `[rows, max_len]` log-probabilities and entropies.
    ///
    /// On the CPU the log-softmax, the target's entry and the entropy are one
    /// op ([`TokenLogSoftmax`]) with its own backward: as separate candle ops
    /// they made and differentiated about ten `[rows, max_len, vocab]`
    /// tensors, most of a training step's time. Sampling and the learner both
    /// score through here, so the sampled log-probs are the learner's bit for
    /// bit. Other devices run candle's ops.
    fn forward(&self, batch: &TokenBatch<'_>) -> Result<(Tensor, Tensor)> {
        let (rows, max_len) = (batch.rows(), batch.max_len());
        let (hidden, target) = self.hidden(batch)?;
        if let (true, Some(bias)) = (self.device.is_cpu(), self.out.bias()) {
            // The output layer's bias goes into the op too: its gradient, a
            // column sum of the logits' gradient, is another strided
            // reduction in candle.
            let logits = hidden.matmul(&self.out.weight().t()?)?; // [rows * L, V], without the bias
            let target = Tensor::from_vec(target, rows * max_len, &self.device)?;
            let scores = logits.apply_op3(bias, &target, TokenLogSoftmax)?; // [rows * L, 2]
            let column = |c: usize| scores.narrow(1, c, 1)?.reshape((rows, max_len));
            return Ok((column(0)?, column(1)?));
        }
        let logits = self.out.forward(&hidden)?.reshape((rows, max_len, self.config.vocab))?;
        let target = Tensor::from_vec(target, (rows, max_len, 1), &self.device)?;
        let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let logp = log_probs.gather(&target, 2)?.squeeze(2)?;
        let entropy = (log_probs.exp()? * &log_probs)?.sum(D::Minus1)?.neg()?;
        Ok((logp, entropy))
    }

    /// Scores (sum of token log-probabilities) of every admissible action,
    /// with their tokens and per-token log-probabilities.
    fn score(&self, observation: &str, admissible: &[String]) -> Result<Vec<Scored>> {
        if admissible.is_empty() {
            return Err(PolicyError::BadInput("no admissible action".into()));
        }
        let tokens: Vec<Vec<u32>> = admissible.iter().map(|a| self.tokenize_action(a)).collect();
        let max_len = tokens.iter().map(Vec::len).max().unwrap_or(1);
        let refs: Vec<&[u32]> = tokens.iter().map(Vec::as_slice).collect();
        let batch = TokenBatch::new(refs.iter().map(|&a| (observation, a)), Some(max_len))?;
        let logp = self.forward(&batch)?.0.to_vec2::<f32>()?;
        Ok(tokens
            .into_iter()
            .zip(logp)
            .map(|(tokens, row)| {
                let logps = row[..tokens.len()].to_vec();
                Scored { score: logps.iter().map(|&x| f64::from(x)).sum(), tokens, logps }
            })
            .collect())
    }

    /// Samples an admissible action with probability proportional to
    /// `exp(score / temperature)`, where the score is the sum of the action's
    /// token log-probabilities. `temperature` must be finite and positive
    /// (use [`Policy::greedy`] for the argmax).
    ///
    /// ```
    /// use rand::SeedableRng;
    /// # use g2po::policy::{Policy, PolicyConfig};
    /// let p = Policy::new(&PolicyConfig { vocab: 64, hidden: 8, ..Default::default() }, &candle_core::Device::Cpu, 1).unwrap();
    /// let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    /// let acts = vec!["north".to_string(), "south".to_string()];
    /// let a = p.act("a hall", &acts, 1.0, &mut rng).unwrap();
    /// assert_eq!(a.tokens, p.tokenize_action(&acts[a.index]));
    /// // The log-probs the learner will use as logp_old are the policy's own.
    /// let (lp, _) = p.token_logps(&["a hall"], &[&a.tokens], a.tokens.len()).unwrap();
    /// assert_eq!(a.logps, lp.to_vec2::<f32>().unwrap()[0]);
    /// // The same seed draws the same action.
    /// let mut again = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    /// assert_eq!(p.act("a hall", &acts, 1.0, &mut again).unwrap(), a);
    /// ```
    pub fn act(
        &self,
        observation: &str,
        admissible: &[String],
        temperature: f64,
        rng: &mut impl Rng,
    ) -> Result<Action> {
        check_temperature(temperature)?;
        Ok(sample(&self.score(observation, admissible)?, temperature, rng))
    }

    /// Index of the highest-scoring admissible action (the first on ties).
    ///
    /// ```
    /// # use g2po::policy::{Policy, PolicyConfig};
    /// let p = Policy::new(&PolicyConfig { vocab: 64, hidden: 8, ..Default::default() }, &candle_core::Device::Cpu, 1).unwrap();
    /// let acts = ["north".to_string(), "south".to_string()];
    /// let i = p.greedy("a hall", &acts).unwrap();
    /// let probs = p.action_probs("a hall", &acts, 1.0).unwrap();
    /// assert!(probs[i] >= probs[1 - i]);
    /// assert!(p.greedy("a hall", &[]).is_err());
    /// ```
    pub fn greedy(&self, observation: &str, admissible: &[String]) -> Result<usize> {
        Ok(argmax(&self.score(observation, admissible)?))
    }

    /// A memo of this policy's action scores, for a stretch of time in which
    /// its parameters do not change (one iteration's rollouts, one
    /// evaluation): agents' rollouts revisit the same states, and a state's
    /// scores are a pure function of the parameters, the observation and the
    /// admissible actions, so each distinct state is scored once and the
    /// samples are the same as without the memo. It may be shared between
    /// threads.
    ///
    /// ```
    /// use rand::SeedableRng;
    /// # use g2po::policy::{Policy, PolicyConfig};
    /// let p = Policy::new(&PolicyConfig { vocab: 64, hidden: 8, ..Default::default() }, &candle_core::Device::Cpu, 1).unwrap();
    /// let acts = vec!["north".to_string(), "south".to_string()];
    /// let memo = p.memoized();
    /// let mut a = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    /// let mut b = a.clone();
    /// for _ in 0..4 {
    ///     assert_eq!(memo.act("a hall", &acts, 1.0, &mut a).unwrap(), p.act("a hall", &acts, 1.0, &mut b).unwrap());
    /// }
    /// assert_eq!(memo.greedy("a hall", &acts).unwrap(), p.greedy("a hall", &acts).unwrap());
    /// assert_eq!(memo.states(), 1); // scored once
    /// ```
    pub fn memoized(&self) -> MemoizedPolicy<'_> {
        MemoizedPolicy { policy: self, scores: Mutex::new(ahash::AHashMap::new()) }
    }

    /// Probabilities `softmax(score / temperature)` over the admissible
    /// actions (what [`Policy::act`] samples from).
    ///
    /// ```
    /// # use g2po::policy::{Policy, PolicyConfig};
    /// let p = Policy::new(&PolicyConfig { vocab: 64, hidden: 8, ..Default::default() }, &candle_core::Device::Cpu, 1).unwrap();
    /// let pr = p.action_probs("a hall", &["north".to_string(), "south".to_string()], 1.0).unwrap();
    /// assert!((pr.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    /// ```
    pub fn action_probs(&self, observation: &str, admissible: &[String], temperature: f64) -> Result<Vec<f64>> {
        check_temperature(temperature)?;
        Ok(softmax(&self.score(observation, admissible)?, temperature))
    }
}

/// See [`Policy::memoized`].
pub struct MemoizedPolicy<'p> {
    policy: &'p Policy,
    /// Keyed by the observation and the admissible actions, each length-prefixed
    /// (an unambiguous encoding whatever bytes the texts hold).
    scores: Mutex<ahash::AHashMap<Vec<u8>, Arc<[Scored]>>>,
}

impl MemoizedPolicy<'_> {
    /// [`Policy::act`] through the memo.
    ///
    /// ```
    /// use rand::SeedableRng;
    /// # use g2po::policy::{Policy, PolicyConfig};
    /// let p = Policy::new(&PolicyConfig { vocab: 64, hidden: 8, ..Default::default() }, &candle_core::Device::Cpu, 1).unwrap();
    /// let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    /// assert!(p.memoized().act("a hall", &["north".to_string()], 0.0, &mut rng).is_err());
    /// ```
    pub fn act(
        &self,
        observation: &str,
        admissible: &[String],
        temperature: f64,
        rng: &mut impl Rng,
    ) -> Result<Action> {
        check_temperature(temperature)?;
        Ok(sample(&self.score(observation, admissible)?, temperature, rng))
    }

    /// [`Policy::greedy`] through the memo.
    ///
    /// ```
    /// # use g2po::policy::{Policy, PolicyConfig};
    /// let p = Policy::new(&PolicyConfig { vocab: 64, hidden: 8, ..Default::default() }, &candle_core::Device::Cpu, 1).unwrap();
    /// assert!(p.memoized().greedy("a hall", &[]).is_err());
    /// ```
    pub fn greedy(&self, observation: &str, admissible: &[String]) -> Result<usize> {
        Ok(argmax(&self.score(observation, admissible)?))
    }

    /// How many distinct states have been scored.
    ///
    /// ```
    /// # use g2po::policy::{Policy, PolicyConfig};
    /// let p = Policy::new(&PolicyConfig { vocab: 64, hidden: 8, ..Default::default() }, &candle_core::Device::Cpu, 1).unwrap();
    /// assert_eq!(p.memoized().states(), 0);
    /// ```
    pub fn states(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ahash::AHashMap<Vec<u8>, Arc<[Scored]>>> {
        // A panic elsewhere cannot leave a half-written entry: inserts are single calls.
        self.scores.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn score(&self, observation: &str, admissible: &[String]) -> Result<Arc<[Scored]>> {
        let texts = std::iter::once(observation).chain(admissible.iter().map(String::as_str));
        let mut key = Vec::with_capacity(texts.clone().map(|t| 8 + t.len()).sum());
        for text in texts {
            key.extend_from_slice(&(text.len() as u64).to_le_bytes());
            key.extend_from_slice(text.as_bytes());
        }
        if let Some(hit) = self.lock().get(&key) {
            return Ok(Arc::clone(hit));
        }
        // Scored outside the lock; two threads may score one state at once,
        // with the same result.
        let scored: Arc<[Scored]> = self.policy.score(observation, admissible)?.into();
        self.lock().insert(key, Arc::clone(&scored));
        Ok(scored)
    }
}

/// Samples an index from `softmax(score / temperature)` with one uniform draw.
fn sample(scored: &[Scored], temperature: f64, rng: &mut impl Rng) -> Action {
    let index = inverse_cdf(&softmax(scored, temperature), rng.random::<f64>());
    let Scored { tokens, logps, .. } = scored.get(index).cloned().unwrap_or_default();
    Action { index, tokens, logps }
}

/// The index that the uniform draw `u` in [0, 1) picks from `probs` (which
/// sum to 1): the first whose cumulative probability exceeds `u`, the last
/// when rounding leaves `u` above the total. Both policies sample with it, so
/// one seed draws the same way in each.
pub(crate) fn inverse_cdf(probs: &[f64], mut u: f64) -> usize {
    for (i, p) in probs.iter().enumerate() {
        if u < *p {
            return i;
        }
        u -= p;
    }
    probs.len().saturating_sub(1)
}

/// The first index of the highest score.
fn argmax(scored: &[Scored]) -> usize {
    let mut best = 0;
    for (i, s) in scored.iter().enumerate() {
        if s.score > scored[best].score {
            best = i;
        }
    }
    best
}

/// One admissible action's score, tokens and per-token log-probabilities.
#[derive(Default, Clone)]
struct Scored {
    score: f64,
    tokens: Vec<u32>,
    logps: Vec<f32>,
}

fn check_temperature(temperature: f64) -> Result<()> {
    if temperature.is_finite() && temperature > 0.0 {
        Ok(())
    } else {
        Err(PolicyError::BadInput(format!("temperature must be finite and > 0, got {temperature}")))
    }
}

/// `softmax(score / temperature)`, shifted by the maximum for stability.
fn softmax(scored: &[Scored], temperature: f64) -> Vec<f64> {
    let z: Vec<f64> = scored.iter().map(|s| s.score / temperature).collect();
    let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = z.iter().map(|x| (x - max).exp()).collect();
    let total: f64 = w.iter().sum();
    w.into_iter().map(|x| x / total).collect()
}

impl TrainablePolicy for Policy {
    type Error = PolicyError;

    /// Every parameter, in name order (a fixed order, as the trait requires).
    fn trainable_vars(&self) -> Vec<Var> {
        let data = self.varmap.data().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut named: Vec<(&String, &Var)> = data.iter().collect();
        named.sort_by(|a, b| a.0.cmp(b.0));
        named.into_iter().map(|(_, v)| v.clone()).collect()
    }

    /// One batched forward; the entropy comes out of the same pass, so it is
    /// returned only when asked for but costs nothing extra.
    fn score_tokens(&self, batch: &TokenBatch<'_>, with_entropy: bool) -> Result<TokenScores> {
        let (logp, entropy) = self.forward(batch)?;
        Ok(TokenScores { logp, entropy: with_entropy.then_some(entropy) })
    }
}

/// `[n, 2]` = (log-probability of the target token, entropy of the
/// distribution) per row of the logits `x + b` (`[n, vocab]` f32 `x`, the
/// `[vocab]` bias `b`) with `[n]` u32 targets.
///
/// Forward: one pass for the row maximum `m` and one that sums
/// `e_j = exp(x_j + b_j - m)` and `e_j (x_j + b_j - m)`, so with `S = sum e_j`,
/// `ln Z = m + ln S`, `logp_t = x_t + b_t - ln Z` and
/// `H = ln S - sum e_j (x_j + b_j - m) / S` (sums in f64). Backward, with
/// `p_k = exp(x_k + b_k - ln Z)` recomputed from the output
/// (`ln Z = x_t + b_t - logp_t`, one exp per entry):
/// `dL/dx_k = g_logp (1[k = t] - p_k) - g_H p_k (ln p_k + H)`, and `dL/db` its
/// column sums.
struct TokenLogSoftmax;

/// The row-major f32 slice of a contiguous CPU tensor argument.
fn cpu_f32<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((start, end))) => Ok(&v[start..end]),
        _ => candle_core::bail!("token-log-softmax: {what} must be contiguous f32"),
    }
}

fn cpu_u32<'a>(storage: &'a CpuStorage, layout: &Layout) -> candle_core::Result<&'a [u32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::U32(v), Some((start, end))) => Ok(&v[start..end]),
        _ => candle_core::bail!("token-log-softmax: targets must be contiguous u32"),
    }
}

/// Borrows a CPU tensor's f32 data for `f`.
fn with_cpu_f32<T>(t: &Tensor, f: impl FnOnce(&[f32]) -> candle_core::Result<T>) -> candle_core::Result<T> {
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(storage) = &*storage else {
        candle_core::bail!("token-log-softmax: a CPU op got a tensor on {:?}", t.device());
    };
    f(cpu_f32(storage, layout, "an argument")?)
}

impl CustomOp3 for TokenLogSoftmax {
    fn name(&self) -> &'static str {
        "token-log-softmax"
    }

    fn cpu_fwd(
        &self,
        logits: &CpuStorage,
        logits_layout: &Layout,
        bias: &CpuStorage,
        bias_layout: &Layout,
        targets: &CpuStorage,
        targets_layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, vocab) = logits_layout.shape().dims2()?;
        let x = cpu_f32(logits, logits_layout, "logits")?;
        let b = cpu_f32(bias, bias_layout, "bias")?;
        let targets = cpu_u32(targets, targets_layout)?;
        if targets.len() != n || b.len() != vocab || vocab == 0 {
            candle_core::bail!(
                "token-log-softmax: {} targets and {} biases for {n} rows of {vocab} logits",
                targets.len(),
                b.len()
            );
        }
        let mut out = Vec::with_capacity(2 * n);
        let mut row_logits = vec![0f32; vocab];
        for (row, &t) in x.chunks_exact(vocab).zip(targets) {
            if t as usize >= vocab {
                candle_core::bail!("token-log-softmax: target {t} outside the vocabulary of {vocab}");
            }
            for ((z, &v), &c) in row_logits.iter_mut().zip(row).zip(b) {
                *z = v + c;
            }
            let max = row_logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let (mut sum, mut weighted) = (0f64, 0f64);
            for &z in &row_logits {
                let d = z - max;
                let e = f64::from(d.exp());
                sum += e;
                weighted += e * f64::from(d);
            }
            let log_sum = sum.ln();
            out.push((f64::from(row_logits[t as usize] - max) - log_sum) as f32);
            out.push((log_sum - weighted / sum) as f32);
        }
        Ok((CpuStorage::F32(out), Shape::from((n, 2))))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        bias: &Tensor,
        targets: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, vocab) = logits.dims2()?;
        let host = |t: &Tensor| t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>();
        let (res, grad_res, b) = (host(res)?, host(grad_res)?, host(bias)?);
        let targets = targets.to_vec1::<u32>()?;
        let mut grad = vec![0f32; n * vocab];
        let mut grad_bias = vec![0f64; vocab];
        with_cpu_f32(logits, |x| {
            for (i, (row, out)) in x.chunks_exact(vocab).zip(grad.chunks_exact_mut(vocab)).enumerate() {
                let t = targets[i] as usize;
                let (logp, entropy) = (res[2 * i], res[2 * i + 1]);
                let (g_logp, g_entropy) = (grad_res[2 * i], grad_res[2 * i + 1]);
                let log_z = row[t] + b[t] - logp;
                for ((g, &v), &c) in out.iter_mut().zip(row).zip(&b) {
                    let log_p = v + c - log_z;
                    let p = log_p.exp();
                    *g = -g_logp * p - g_entropy * p * (log_p + entropy);
                }
                out[t] += g_logp;
                for (acc, &g) in grad_bias.iter_mut().zip(out.iter()) {
                    *acc += f64::from(g);
                }
            }
            Ok(())
        })?;
        let grad_bias: Vec<f32> = grad_bias.into_iter().map(|g| g as f32).collect();
        Ok((
            Some(Tensor::from_vec(grad, (n, vocab), logits.device())?),
            Some(Tensor::from_vec(grad_bias, vocab, bias.device())?.to_dtype(bias.dtype())?),
            None,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fused op against candle's own ops and autograd on the same logits.
    #[test]
    fn token_log_softmax_matches_candle_ops_and_their_gradient() -> candle_core::Result<()> {
        let (n, vocab) = (6, 13);
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        // Spread-out logits, one row with a dominant entry.
        let mut values: Vec<f32> = (0..n * vocab).map(|_| rng.random_range(-6.0f32..6.0)).collect();
        values[2 * vocab + 4] = 40.0;
        let targets: Vec<u32> = vec![0, 12, 4, 7, 3, 3];
        let logits = Var::from_vec(values, (n, vocab), &Device::Cpu)?;
        let bias = Var::from_vec((0..vocab).map(|j| 0.3 * j as f32 - 1.0).collect::<Vec<f32>>(), vocab, &Device::Cpu)?;
        let target = Tensor::from_vec(targets.clone(), n, &Device::Cpu)?;
        let weights = |seed: u64| -> candle_core::Result<Tensor> {
            let mut r = ChaCha8Rng::seed_from_u64(seed);
            Tensor::from_vec((0..n).map(|_| r.random_range(-1.0f32..1.0)).collect::<Vec<_>>(), n, &Device::Cpu)
        };
        let (a, b) = (weights(1)?, weights(2)?);

        let fused = logits.as_tensor().apply_op3(bias.as_tensor(), &target, TokenLogSoftmax)?;
        let (logp, entropy) = (fused.narrow(1, 0, 1)?.squeeze(1)?, fused.narrow(1, 1, 1)?.squeeze(1)?);
        let fused_loss = ((&logp * &a)?.sum_all()? + (&entropy * &b)?.sum_all()?)?;
        let fused_grads = fused_loss.backward()?;
        let fused_grad = fused_grads.get(&logits).expect("a gradient").to_vec2::<f32>()?;
        let fused_bias_grad = fused_grads.get(&bias).expect("a gradient").to_vec1::<f32>()?;

        let log_probs = candle_nn::ops::log_softmax(&logits.as_tensor().broadcast_add(bias.as_tensor())?, D::Minus1)?;
        let ops_logp = log_probs.gather(&target.unsqueeze(1)?, 1)?.squeeze(1)?;
        let ops_entropy = (log_probs.exp()? * &log_probs)?.sum(D::Minus1)?.neg()?;
        let ops_loss = ((&ops_logp * &a)?.sum_all()? + (&ops_entropy * &b)?.sum_all()?)?;
        let ops_grads = ops_loss.backward()?;
        let ops_grad = ops_grads.get(&logits).expect("a gradient").to_vec2::<f32>()?;
        let ops_bias_grad = ops_grads.get(&bias).expect("a gradient").to_vec1::<f32>()?;

        let close = |x: &[f32], y: &[f32], what: &str| {
            for (i, (u, v)) in x.iter().zip(y).enumerate() {
                assert!((u - v).abs() <= 1e-5 * (1.0 + v.abs()), "{what}[{i}]: fused {u} vs ops {v}");
            }
        };
        close(&logp.to_vec1()?, &ops_logp.to_vec1()?, "logp");
        close(&entropy.to_vec1()?, &ops_entropy.to_vec1()?, "entropy");
        for (row, (f, o)) in fused_grad.iter().zip(&ops_grad).enumerate() {
            close(f, o, &format!("grad row {row}"));
        }
        close(&fused_bias_grad, &ops_bias_grad, "bias grad");
        // A gradient row of logp alone sums to 0 (softmax), and so does the entropy's.
        assert!(fused_grad.iter().all(|r| r.iter().sum::<f32>().abs() < 1e-5));

        // Bad shapes are errors, not panics.
        let short = Tensor::from_vec(vec![0u32; n - 1], n - 1, &Device::Cpu)?;
        assert!(logits.as_tensor().apply_op3(bias.as_tensor(), &short, TokenLogSoftmax).is_err());
        let outside = Tensor::from_vec(vec![vocab as u32; n], n, &Device::Cpu)?;
        assert!(logits.as_tensor().apply_op3(bias.as_tensor(), &outside, TokenLogSoftmax).is_err());
        Ok(())
    }
}
