//! The critic of turn-level PPO (SPEC 7): a value network over observations,
//! trained on the GAE returns with verl's clipped value loss.
//!
//! Design. verl trains PPO's critic as its own model beside the actor; so does
//! this module: a bag-of-words encoder like the toy policy's (mean word
//! embedding, one linear layer, tanh), reading the policy's own tokenisation
//! of the observation ([`Policy::tokenize_observation`]), and a linear value
//! head, with its own AdamW optimiser. Keeping it apart from the policy leaves
//! the policy's parameters, initialisation and optimiser exactly as they are
//! for every other estimator.
//!
//! The value loss is verl's `compute_value_loss` at one value per turn:
//! `v_clip = clamp(v, v_old - c, v_old + c)`,
//! `L = 0.5 * mean(max((v - R)^2, (v_clip - R)^2))`, with the clip fraction
//! `mean[(v_clip - R)^2 > (v - R)^2]`. The explained variance
//! `1 - Var(R - v_old) / Var(R)` is that of the values the advantages were
//! computed from (CleanRL's diagnostic).

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{AdamW, Embedding, Linear, Module, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::error::{LearnerError, Result};
use crate::policy::Policy;

/// Options of the critic.
///
/// ```
/// let c = g2po::learner::critic::CriticConfig::default();
/// assert_eq!((c.cliprange_value, c.epochs), (0.5, 4));
/// assert!(c.validate().is_ok());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CriticConfig {
    /// Width of the encoder.
    pub hidden: usize,
    /// AdamW learning rate.
    pub lr: f64,
    /// verl's `cliprange_value`: how far a new value may move from the old one
    /// before the clipped loss takes over.
    pub cliprange_value: f64,
    /// Full-batch gradient steps per update.
    pub epochs: usize,
}

impl Default for CriticConfig {
    fn default() -> Self {
        Self { hidden: 32, lr: 1e-2, cliprange_value: 0.5, epochs: 4 }
    }
}

impl CriticConfig {
    /// Checks every option.
    ///
    /// ```
    /// let c = g2po::learner::critic::CriticConfig { epochs: 0, ..Default::default() };
    /// assert!(c.validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(LearnerError::BadConfig(format!("critic: {m}")));
        if self.hidden == 0 || self.epochs == 0 {
            return bad("hidden and epochs must be positive");
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("lr must be finite and > 0");
        }
        if !(self.cliprange_value.is_finite() && self.cliprange_value > 0.0) {
            return bad("cliprange_value must be finite and > 0");
        }
        Ok(())
    }
}

/// What one critic update did.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct CriticStats {
    /// verl's clipped value loss at the first epoch (before any step).
    pub value_loss: f64,
    /// Fraction of rows where the clipped term was the larger (first epoch).
    pub value_clip_fraction: f64,
    /// `1 - Var(R - v_old) / Var(R)` of the values behind the advantages
    /// (0 when the returns have no spread).
    pub explained_variance: f64,
}

/// The value network (see the module docs).
pub struct Critic {
    config: CriticConfig,
    device: Device,
    emb: Embedding,
    proj: Linear,
    head: Linear,
    optimizer: AdamW,
}

impl std::fmt::Debug for Critic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Critic").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Critic {
    /// A critic for observations tokenised by `policy`, its parameters drawn from
    /// a ChaCha8 stream seeded by `seed` (the value head starts at zero, so the
    /// first values are 0).
    ///
    /// ```
    /// use g2po::learner::critic::{Critic, CriticConfig};
    /// use g2po::policy::{Policy, PolicyConfig};
    /// let p = Policy::new(&PolicyConfig { vocab: 64, hidden: 8, ..Default::default() }, &candle_core::Device::Cpu, 0)?;
    /// let c = Critic::new(&p, CriticConfig::default(), 0)?;
    /// assert_eq!(c.values(&p, &["a hall", "a door"])?, vec![0.0, 0.0]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(policy: &Policy, config: CriticConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        // The policy's device, read off its parameters.
        let device = policy.varmap().all_vars().first().map_or(Device::Cpu, |v| v.device().clone());
        let (v, h) = (policy.config().vocab, config.hidden);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut uniform = |shape: &[usize], bound: f64| -> Result<Var> {
            let n: usize = shape.iter().product();
            let data: Vec<f32> = (0..n).map(|_| ((rng.random::<f64>() * 2.0 - 1.0) * bound) as f32).collect();
            Ok(Var::from_tensor(&Tensor::from_vec(data, shape, &device)?)?)
        };
        let lin = 1.0 / (h as f64).sqrt();
        let varmap = VarMap::new();
        {
            let mut data = varmap.data().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            data.insert("emb.weight".into(), uniform(&[v, h], 1.0)?);
            data.insert("proj.weight".into(), uniform(&[h, h], lin)?);
            data.insert("proj.bias".into(), uniform(&[h], lin)?);
            data.insert("head.weight".into(), Var::zeros((1, h), DType::F32, &device)?);
            data.insert("head.bias".into(), Var::zeros(1, DType::F32, &device)?);
        }
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
        let emb = candle_nn::embedding(v, h, vb.pp("emb"))?;
        let proj = candle_nn::linear(h, h, vb.pp("proj"))?;
        let head = candle_nn::linear(h, 1, vb.pp("head"))?;
        let optimizer =
            AdamW::new(varmap.all_vars(), ParamsAdamW { lr: config.lr, weight_decay: 0.0, ..Default::default() })?;
        Ok(Self { config, device, emb, proj, head, optimizer })
    }

    /// The configuration.
    pub fn config(&self) -> &CriticConfig {
        &self.config
    }

    /// `[rows]` values of `observations`, differentiable.
    fn forward(&self, policy: &Policy, observations: &[&str]) -> Result<Tensor> {
        if observations.is_empty() {
            return Err(LearnerError::BadInput("the critic needs at least one observation".into()));
        }
        let words: Vec<Vec<u32>> = observations.iter().map(|o| policy.tokenize_observation(o)).collect();
        let width = words.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let (mut ids, mut weights) = (Vec::with_capacity(words.len() * width), Vec::with_capacity(words.len() * width));
        for w in &words {
            let share = if w.is_empty() { 0.0 } else { 1.0 / w.len() as f32 };
            for j in 0..width {
                ids.push(w.get(j).copied().unwrap_or(0));
                weights.push(if j < w.len() { share } else { 0.0 });
            }
        }
        let u = words.len();
        let ids = Tensor::from_vec(ids, (u, width), &self.device)?;
        let weights = Tensor::from_vec(weights, (u, width, 1), &self.device)?;
        let bag = self.emb.forward(&ids)?.broadcast_mul(&weights)?.sum(1)?;
        let hidden = self.proj.forward(&bag)?.tanh()?;
        Ok(self.head.forward(&hidden)?.squeeze(1)?)
    }

    /// The value of each observation.
    pub fn values(&self, policy: &Policy, observations: &[&str]) -> Result<Vec<f32>> {
        Ok(self.forward(policy, observations)?.to_vec1::<f32>()?)
    }

    /// Trains on `returns` for [`CriticConfig::epochs`] full-batch steps of the
    /// clipped value loss around `old_values` (the values the advantages came
    /// from).
    ///
    /// Errors: columns of different lengths, no rows, a non-finite input or loss.
    ///
    /// ```
    /// use g2po::learner::critic::{Critic, CriticConfig};
    /// use g2po::policy::{Policy, PolicyConfig};
    /// let p = Policy::new(&PolicyConfig { vocab: 64, hidden: 8, ..Default::default() }, &candle_core::Device::Cpu, 0)?;
    /// let mut c = Critic::new(&p, CriticConfig::default(), 0)?;
    /// let obs = ["a hall", "a door"];
    /// let old = c.values(&p, &obs)?;
    /// let stats = c.update(&p, &obs, &old, &[1.0, -1.0])?;
    /// assert!((stats.value_loss - 0.5).abs() < 1e-6); // 0.5 * mean(1, 1)
    /// assert!(c.values(&p, &obs)?[0] > 0.0); // moved toward its return
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn update(
        &mut self,
        policy: &Policy,
        observations: &[&str],
        old_values: &[f32],
        returns: &[f32],
    ) -> Result<CriticStats> {
        let n = observations.len();
        if old_values.len() != n || returns.len() != n || n == 0 {
            return Err(LearnerError::BadInput(format!(
                "critic update: {n} observations, {} old values, {} returns (need equal, non-zero)",
                old_values.len(),
                returns.len()
            )));
        }
        if old_values.iter().chain(returns).any(|x| !x.is_finite()) {
            return Err(LearnerError::BadInput("critic update: non-finite value or return".into()));
        }
        let stats = CriticStats { explained_variance: explained_variance(old_values, returns), ..Default::default() };
        let old = Tensor::from_slice(old_values, n, &self.device)?;
        let target = Tensor::from_slice(returns, n, &self.device)?;
        let c = self.config.cliprange_value;
        let mut first = None;
        for _ in 0..self.config.epochs {
            let v = self.forward(policy, observations)?;
            let clipped = v.clamp(&(&old - c)?, &(&old + c)?)?;
            let l1 = (&v - &target)?.sqr()?;
            let l2 = (&clipped - &target)?.sqr()?;
            let loss = (l1.maximum(&l2)?.mean_all()? * 0.5)?;
            let value = f64::from(loss.to_scalar::<f32>()?);
            if !value.is_finite() {
                return Err(LearnerError::BadInput(format!("critic update: value loss {value} is not finite")));
            }
            if first.is_none() {
                let frac = l2.gt(&l1)?.to_dtype(DType::F32)?.mean_all()?.to_scalar::<f32>()?;
                first = Some((value, f64::from(frac)));
            }
            let grads = loss.backward()?;
            self.optimizer.step(&grads)?;
        }
        let (value_loss, value_clip_fraction) = first.unwrap_or_default();
        Ok(CriticStats { value_loss, value_clip_fraction, ..stats })
    }
}

/// `1 - Var(returns - values) / Var(returns)` (0 when the returns are constant).
///
/// ```
/// use g2po::learner::critic::explained_variance;
/// assert_eq!(explained_variance(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0]), 1.0);
/// assert_eq!(explained_variance(&[0.0, 0.0], &[1.0, 1.0]), 0.0);
/// ```
pub fn explained_variance(values: &[f32], returns: &[f32]) -> f64 {
    let var = |x: &mut dyn Iterator<Item = f64>| {
        let v: Vec<f64> = x.collect();
        let m = v.iter().sum::<f64>() / v.len().max(1) as f64;
        v.iter().map(|a| (a - m).powi(2)).sum::<f64>() / v.len().max(1) as f64
    };
    let total = var(&mut returns.iter().map(|&r| f64::from(r)));
    if total <= 0.0 {
        return 0.0;
    }
    1.0 - var(&mut returns.iter().zip(values).map(|(&r, &v)| f64::from(r) - f64::from(v))) / total
}
