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

use candle_core::{D, DType, Device, Tensor, Var};
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

    /// The batched forward: `[rows, max_len]` log-probabilities and entropies.
    fn forward(&self, batch: &TokenBatch<'_>) -> Result<(Tensor, Tensor)> {
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
        let logits = self.out.forward(&hidden)?; // [rows, L, V]
        let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
        let target = Tensor::from_vec(flat(target), (rows, max_len, 1), &self.device)?;
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
        let obs = vec![observation; tokens.len()];
        let refs: Vec<&[u32]> = tokens.iter().map(Vec::as_slice).collect();
        let (logp, _) = self.token_logps(&obs, &refs, max_len)?;
        let logp = logp.to_vec2::<f32>()?;
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
        let scored = self.score(observation, admissible)?;
        let probs = softmax(&scored, temperature);
        let mut u = rng.random::<f64>();
        let mut index = probs.len() - 1;
        for (i, p) in probs.iter().enumerate() {
            if u < *p {
                index = i;
                break;
            }
            u -= p;
        }
        let Scored { tokens, logps, .. } = scored.into_iter().nth(index).unwrap_or_default();
        Ok(Action { index, tokens, logps })
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
        let scored = self.score(observation, admissible)?;
        let mut best = 0;
        for (i, s) in scored.iter().enumerate() {
            if s.score > scored[best].score {
                best = i;
            }
        }
        Ok(best)
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

/// One admissible action's score, tokens and per-token log-probabilities.
#[derive(Default)]
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

    /// One batched forward; the entropy comes with it at no extra pass, so
    /// it is returned whether asked for or not.
    fn score_tokens(&self, batch: &TokenBatch<'_>, _with_entropy: bool) -> Result<TokenScores> {
        let (logp, entropy) = self.forward(batch)?;
        Ok(TokenScores { logp, entropy: Some(entropy) })
    }
}
