//! Token log-probabilities of candidate continuations of one prompt.
//!
//! The prompt is run once; the candidates are packed back to back into one
//! row of segments that each attend to the prompt's cache and to their own
//! earlier tokens only (`Llama::forward_segments`: no padding, and the
//! prompt's keys and values are not copied per candidate), and the output
//! embedding is applied only to the rows that predict a candidate token: the
//! prompt's last position (which predicts every candidate's first token, so
//! it is computed once) and each candidate's own positions but its last. In
//! [`Mode::Differentiable`] the same computation is the GRPO group step: the
//! prompt's graph is built once and every candidate's gradient flows back
//! into it.

use candle_core::{D, Tensor};

use super::error::{LmError, Result};
use super::lora::Lora;
use super::model::{Llama, Mode};

/// Per-token log-probabilities of a set of candidates after one prompt, as
/// `[candidates, max_len]` tensors (finite filler past each candidate's
/// length, zero in `logp`).
#[derive(Debug, Clone)]
pub struct CandidateLogps {
    /// `log p(token_j | prompt, token_<j)`; differentiable in
    /// [`Mode::Differentiable`].
    pub logp: Tensor,
    /// Entropy (nats) of the model's next-token distribution at each
    /// position, when requested.
    pub entropy: Option<Tensor>,
    /// Length of each candidate.
    pub lens: Vec<usize>,
}

impl CandidateLogps {
    /// Per-candidate log-probabilities on the host, each of its own length.
    pub fn to_rows(&self) -> Result<Vec<Vec<f32>>> {
        let rows = self.logp.to_vec2::<f32>()?;
        Ok(rows.into_iter().zip(&self.lens).map(|(r, &n)| r[..n].to_vec()).collect())
    }
}

fn check(model: &Llama, prompt: &[u32], candidates: &[&[u32]]) -> Result<()> {
    if prompt.is_empty() {
        return Err(LmError::BadInput("the prompt has no token".into()));
    }
    if candidates.is_empty() {
        return Err(LmError::BadInput("no candidate to score".into()));
    }
    if let Some(i) = candidates.iter().position(|c| c.is_empty()) {
        return Err(LmError::BadInput(format!("candidate {i} has no token")));
    }
    let vocab = model.config().vocab;
    if let Some(&t) = prompt.iter().chain(candidates.iter().flat_map(|c| c.iter())).find(|&&t| t as usize >= vocab) {
        return Err(LmError::BadInput(format!("token id {t} is outside the vocabulary of {vocab}")));
    }
    Ok(())
}

/// Token log-probabilities of every candidate after `prompt`, with the
/// prompt computed once and the candidates batched on its cache (see the
/// module docs). `entropy` also returns the next-token entropies.
///
/// Errors: an empty prompt or candidate list, an empty candidate, a token
/// outside the vocabulary, or more positions than the context.
///
/// ```
/// use candle_core::Device;
/// use g2po::lm::{candidate_logps, Llama, LlamaConfig, Mode};
/// let m = Llama::random(LlamaConfig::tiny(), &Device::Cpu, 0).unwrap();
/// let out = candidate_logps(&m, None, &[1, 2, 3], &[&[4, 5], &[6]], Mode::Fast, false).unwrap();
/// assert_eq!(out.logp.dims(), &[2, 2]);
/// let rows = out.to_rows().unwrap();
/// assert_eq!((rows[0].len(), rows[1].len()), (2, 1));
/// assert!(rows.iter().flatten().all(|&x| x < 0.0));
/// ```
pub fn candidate_logps(
    model: &Llama,
    lora: Option<&Lora>,
    prompt: &[u32],
    candidates: &[&[u32]],
    mode: Mode,
    entropy: bool,
) -> Result<CandidateLogps> {
    check(model, prompt, candidates)?;
    let device = model.device();
    let n = candidates.len();
    let lens: Vec<usize> = candidates.iter().map(|c| c.len()).collect();
    let p = prompt.len();
    let prompt_t = Tensor::from_slice(prompt, (1, p), device)?;
    let (hidden, cache) = model.forward(&prompt_t, None, lora, mode)?;
    let hidden_dim = model.config().hidden;
    let last = hidden.narrow(1, p - 1, 1)?.reshape((1, hidden_dim))?;
    // Row 0 is the prompt's last position; candidate c's position j > 0 is
    // predicted by row 1 + offset[c] + j - 1. The candidates' tokens but
    // their last run as segments of one row on the prompt's cache, so there
    // is no padding and the prompt's keys and values are not copied per
    // candidate.
    let mut rows = vec![last];
    let mut offsets = Vec::with_capacity(n);
    let mut packed = Vec::new();
    let mut segments = Vec::with_capacity(n);
    for cand in candidates {
        offsets.push(packed.len());
        packed.extend_from_slice(&cand[..cand.len() - 1]);
        if cand.len() > 1 {
            segments.push(cand.len() - 1);
        }
    }
    let max_len = lens.iter().copied().max().unwrap_or(1);
    if !packed.is_empty() {
        let width = packed.len();
        let ids = Tensor::from_vec(packed, (1, width), device)?;
        let h = model.forward_segments(&ids, &cache, lora, mode, &segments)?;
        rows.push(h.reshape((width, hidden_dim))?);
    }
    let rows = Tensor::cat(&rows, 0)?;
    let logits = model.logits(&rows, mode)?;
    let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let vocab = model.config().vocab;
    let mut flat = vec![0u32; n * max_len];
    let mut row_of = vec![0u32; n * max_len];
    let mut mask = vec![0f32; n * max_len];
    for (c, cand) in candidates.iter().enumerate() {
        for (j, &t) in cand.iter().enumerate() {
            let r = if j == 0 { 0 } else { 1 + offsets[c] + j - 1 };
            flat[c * max_len + j] = (r * vocab) as u32 + t;
            row_of[c * max_len + j] = r as u32;
            mask[c * max_len + j] = 1.0;
        }
    }
    if rows.dim(0)? * vocab > u32::MAX as usize {
        return Err(LmError::BadInput("too many candidate tokens for one batch".into()));
    }
    let flat = Tensor::from_vec(flat, n * max_len, device)?;
    let mask = Tensor::from_vec(mask, (n, max_len), device)?;
    let logp = (log_probs.flatten_all()?.index_select(&flat, 0)?.reshape((n, max_len))? * &mask)?;
    let entropy = if entropy {
        let per_row = (log_probs.exp()? * &log_probs)?.sum(D::Minus1)?.neg()?;
        let row_of = Tensor::from_vec(row_of, n * max_len, device)?;
        Some(per_row.index_select(&row_of, 0)?.reshape((n, max_len))?)
    } else {
        None
    };
    Ok(CandidateLogps { logp, entropy, lens })
}

/// The same log-probabilities without any cache sharing: each candidate is
/// appended to the prompt and the whole sequence runs from scratch, logits at
/// every position. The reference the cached path is tested against; slow.
///
/// ```
/// use candle_core::Device;
/// use g2po::lm::{candidate_logps, sequence_logps, Llama, LlamaConfig, Mode};
/// let m = Llama::random(LlamaConfig::tiny(), &Device::Cpu, 0).unwrap();
/// let cached = candidate_logps(&m, None, &[1, 2, 3], &[&[4, 5]], Mode::Fast, false).unwrap().to_rows().unwrap();
/// let full = sequence_logps(&m, None, &[1, 2, 3], &[4, 5]).unwrap();
/// assert!(cached[0].iter().zip(&full).all(|(a, b)| (a - b).abs() < 1e-4));
/// ```
pub fn sequence_logps(model: &Llama, lora: Option<&Lora>, prompt: &[u32], candidate: &[u32]) -> Result<Vec<f32>> {
    check(model, prompt, &[candidate])?;
    let seq: Vec<u32> = prompt.iter().chain(candidate).copied().collect();
    let len = seq.len();
    let t = Tensor::from_vec(seq, (1, len), model.device())?;
    let (hidden, _) = model.forward(&t, None, lora, Mode::Fast)?;
    let hidden = hidden.reshape((len, model.config().hidden))?;
    let log_probs = candle_nn::ops::log_softmax(&model.logits(&hidden, Mode::Fast)?, D::Minus1)?.to_vec2::<f32>()?;
    Ok(candidate.iter().enumerate().map(|(j, &tok)| log_probs[prompt.len() - 1 + j][tok as usize]).collect())
}
