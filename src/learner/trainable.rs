//! What the learner needs from a policy: [`TrainablePolicy`].
//!
//! The learner knows nothing about how a policy reads an observation or
//! produces an action; it needs exactly two things, and the trait asks for
//! exactly those:
//!
//! 1. the trainable parameters ([`TrainablePolicy::trainable_vars`]), which
//!    the optimiser updates, and
//! 2. per-token log-probabilities (and entropies) of given actions in given
//!    observations, as `[rows, max_len]` tensors differentiable with respect
//!    to those parameters ([`TrainablePolicy::score_tokens`]).
//!
//! The shape is an LLM's: an observation is a prompt (text), an action is a
//! token sequence in the policy's own tokenisation, and one GRPO step holds
//! one observation with its group of sampled actions, so many rows of a
//! [`TokenBatch`] share one observation. The batch lists each distinct
//! observation once ([`TokenBatch::observations`]) and maps rows onto them
//! ([`TokenBatch::row_observation`]), so that a policy encodes a prompt once
//! for its whole group (the toy policy encodes each observation once; an LM
//! can share the prompt's forward pass or KV cache). Action ids arrive
//! right-padded to `max_len` from [`crate::broadcast::pad_ragged`] (the one
//! padded layout of the crate), 0 past each action.
//!
//! Implementors: [`crate::policy::Policy`] (the toy text policy); an adapter
//! (LoRA) LM policy implements the same trait, returning only its adapter
//! weights as trainable and serving as its own frozen reference with the
//! adapters switched off (a second value of the same type). A PPO value head
//! would add its parameters to `trainable_vars` and its values through a
//! further method of its own; the policy loss needs nothing more.

use std::collections::HashMap;

use candle_core::{Tensor, Var};
use ndarray::Array2;

/// A policy the [`crate::learner::Learner`] can train.
///
/// Contract:
///
/// * [`trainable_vars`](Self::trainable_vars) returns the same variables, in
///   the same order, on every call (the learner's optimiser state is built
///   on them and it checks that an update gets the policy it was built for);
/// * [`score_tokens`](Self::score_tokens) returns `logp` of shape
///   `[batch.rows(), batch.max_len()]` on the policy's device: entry `[r, j]`
///   is `log pi(a_j | observation, a_<j)` for `j < batch.action_lens()[r]` and
///   any finite filler past the action (the learner masks it); `logp` must be
///   differentiable with respect to the trainable variables. With
///   `with_entropy` it also returns the entropy of the policy's next-token
///   distribution at each of those positions, same shape; without, it may
///   return `None` (the reference pass never asks for it).
///
/// A minimal implementation, a unigram policy (one logit per token id, no
/// dependence on the observation), trained by one learner update:
///
/// ```
/// use candle_core::{D, DType, Device, Tensor, Var};
/// use g2po::learner::{Learner, LearnerConfig, TokenBatch, TokenScores, TrainablePolicy, UpdateBatch, UpdateRow};
///
/// struct Unigram { logits: Var }
///
/// impl TrainablePolicy for Unigram {
///     type Error = candle_core::Error;
///     fn trainable_vars(&self) -> Vec<Var> { vec![self.logits.clone()] }
///     fn score_tokens(&self, batch: &TokenBatch<'_>, with_entropy: bool) -> candle_core::Result<TokenScores> {
///         let lp = candle_nn::ops::log_softmax(self.logits.as_tensor(), D::Minus1)?; // [vocab]
///         let ids = batch.action_ids().iter().copied().collect::<Vec<u32>>();
///         let ids = Tensor::from_vec(ids, batch.rows() * batch.max_len(), lp.device())?;
///         let logp = lp.index_select(&ids, 0)?.reshape((batch.rows(), batch.max_len()))?;
///         let entropy = if with_entropy {
///             let h = (lp.exp()? * &lp)?.sum_all()?.neg()?;
///             Some(h.broadcast_as((batch.rows(), batch.max_len()))?.contiguous()?)
///         } else { None };
///         Ok(TokenScores { logp, entropy })
///     }
/// }
///
/// let policy = Unigram { logits: Var::zeros(4, DType::F32, &Device::Cpu)? };
/// let mut learner = Learner::new(LearnerConfig { lr: 0.1, ..Default::default() }, &policy)?;
/// // Token 2 was good, token 3 bad; both sampled at probability 1/4.
/// let old = (0.25f32).ln();
/// let rows = vec![
///     UpdateRow { observation: "s".into(), action_tokens: vec![2], old_logps: vec![old] },
///     UpdateRow { observation: "s".into(), action_tokens: vec![3], old_logps: vec![old] },
/// ];
/// let batch = UpdateBatch::with_row_advantages(rows, &[1.0, -1.0])?;
/// learner.update(&policy, None, &batch)?;
/// let p = policy.logits.as_tensor().to_vec1::<f32>()?;
/// assert!(p[2] > p[0] && p[0] > p[3]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait TrainablePolicy {
    /// The policy's own error type; the learner wraps it in
    /// [`crate::learner::LearnerError::Policy`].
    type Error: std::error::Error + Send + Sync + 'static;

    /// The parameters the optimiser updates, in a fixed order.
    fn trainable_vars(&self) -> Vec<Var>;

    /// Per-token log-probabilities (and, with `with_entropy`, entropies) of
    /// the batch's actions as `[rows, max_len]` tensors; see the trait docs.
    fn score_tokens(&self, batch: &TokenBatch<'_>, with_entropy: bool) -> Result<TokenScores, Self::Error>;
}

/// What [`TrainablePolicy::score_tokens`] returns.
#[derive(Debug, Clone)]
pub struct TokenScores {
    /// `[rows, max_len]` log-probabilities of the action tokens.
    pub logp: Tensor,
    /// `[rows, max_len]` next-token entropies, when asked for.
    pub entropy: Option<Tensor>,
}

/// The rows a policy scores: distinct observations, the observation of each
/// row, and each row's action token ids right-padded to `max_len`.
///
/// ```
/// use g2po::learner::TokenBatch;
/// let (a, b) = ([5u32, 1], [7u32]);
/// let batch = TokenBatch::new([("hall", &a[..]), ("hall", &b[..]), ("door", &b[..])], None)?;
/// assert_eq!((batch.rows(), batch.max_len()), (3, 2));
/// assert_eq!(batch.observations(), &["hall", "door"]);
/// assert_eq!(batch.row_observation(), &[0, 0, 1]);
/// assert_eq!(batch.action_ids().as_slice().unwrap(), &[5, 1, 7, 0, 7, 0]);
/// assert_eq!(batch.action(1), &[7]);
/// assert!(TokenBatch::new([("hall", &a[..])], Some(1)).is_err()); // never cut
/// # Ok::<(), g2po::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBatch<'a> {
    observations: Vec<&'a str>,
    row_observation: Vec<usize>,
    action_ids: Array2<u32>,
    action_lens: Vec<u32>,
}

impl<'a> TokenBatch<'a> {
    /// Builds the batch from `(observation, action token ids)` rows, padded to
    /// `max_len` (default: the longest action).
    ///
    /// Errors: no rows ([`crate::Error::EmptyBatch`]), an action longer than
    /// `max_len` ([`crate::Error::ResponseTooLong`]), a layout too large to
    /// allocate.
    pub fn new<I>(rows: I, max_len: Option<usize>) -> crate::Result<Self>
    where
        I: IntoIterator<Item = (&'a str, &'a [u32])>,
    {
        let mut observations = Vec::new();
        let mut index: HashMap<&'a str, usize> = HashMap::new();
        let mut row_observation = Vec::new();
        let mut actions = Vec::new();
        for (observation, action) in rows {
            let next = observations.len();
            let id = *index.entry(observation).or_insert_with(|| {
                observations.push(observation);
                next
            });
            row_observation.push(id);
            actions.push(action);
        }
        if actions.is_empty() {
            return Err(crate::Error::EmptyBatch);
        }
        let action_ids = crate::broadcast::pad_ragged(actions.iter().copied(), max_len)?;
        let action_lens = actions
            .iter()
            .map(|a| u32::try_from(a.len()))
            .collect::<Result<Vec<u32>, _>>()
            .map_err(|_| crate::Error::LayoutTooLarge { rows: actions.len(), max_len: action_ids.ncols() })?;
        Ok(Self { observations, row_observation, action_ids, action_lens })
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.row_observation.len()
    }

    /// The padded width.
    pub fn max_len(&self) -> usize {
        self.action_ids.ncols()
    }

    /// The distinct observations, in first-seen order.
    pub fn observations(&self) -> &[&'a str] {
        &self.observations
    }

    /// Per row, the index of its observation in [`Self::observations`].
    pub fn row_observation(&self) -> &[usize] {
        &self.row_observation
    }

    /// `[rows, max_len]` action token ids, 0 past each action.
    pub fn action_ids(&self) -> &Array2<u32> {
        &self.action_ids
    }

    /// Per row, the number of action tokens.
    pub fn action_lens(&self) -> &[u32] {
        &self.action_lens
    }

    /// The token ids of row `row`'s action.
    ///
    /// # Panics
    /// If `row >= self.rows()` (as slice indexing does).
    pub fn action(&self, row: usize) -> &[u32] {
        let len = self.action_lens[row] as usize;
        let ids = self.action_ids.as_slice().expect("standard layout");
        &ids[row * self.max_len()..row * self.max_len() + len]
    }
}
