//! LoRA adapters: the trained parameters of the language-model policy.
//!
//! An adapter on a projection `W [out, in]` adds `scale * B A x` with
//! `A [rank, in]`, `B [out, rank]` and `scale = alpha / rank` (Hu et al.,
//! 2021). `B` starts at zero, so a fresh policy is exactly the base model
//! (and exactly its reference); `A` starts uniform in `+-1/sqrt(in)` from a
//! ChaCha8 stream seeded by the caller, so two policies built with one seed
//! are identical. The base weights stay frozen tensors (never `Var`s), which
//! is what keeps their gradients from being computed at all (see
//! [`super::frozen`]).
//!
//! Which projections and which blocks carry adapters is configurable:
//! restricting them to the top blocks also makes the differentiable forward
//! cheaper, since the blocks below the first adapter run the fast kernels and
//! build no graph.

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::error::{LmError, Result};
use super::model::LlamaConfig;

/// A linear projection of a Llama block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Projection {
    /// Attention query.
    Q,
    /// Attention key.
    K,
    /// Attention value.
    V,
    /// Attention output.
    O,
    /// MLP gate.
    Gate,
    /// MLP up.
    Up,
    /// MLP down.
    Down,
}

impl Projection {
    /// All projections in block order.
    pub const ALL: [Projection; 7] = [
        Projection::Q,
        Projection::K,
        Projection::V,
        Projection::O,
        Projection::Gate,
        Projection::Up,
        Projection::Down,
    ];

    /// Short name (`q`, `k`, `v`, `o`, `gate`, `up`, `down`).
    ///
    /// ```
    /// assert_eq!(g2po::lm::Projection::Gate.as_str(), "gate");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Projection::Q => "q",
            Projection::K => "k",
            Projection::V => "v",
            Projection::O => "o",
            Projection::Gate => "gate",
            Projection::Up => "up",
            Projection::Down => "down",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    /// `(out, in)` of the projection's weight in a model of `config`.
    fn dims(self, c: &LlamaConfig) -> (usize, usize) {
        let kvd = c.kv_heads * c.head_dim();
        match self {
            Projection::Q | Projection::O => (c.hidden, c.hidden),
            Projection::K | Projection::V => (kvd, c.hidden),
            Projection::Gate | Projection::Up => (c.ffn, c.hidden),
            Projection::Down => (c.hidden, c.ffn),
        }
    }
}

impl fmt::Display for Projection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Projection {
    type Err = LmError;
    fn from_str(s: &str) -> Result<Self> {
        Projection::ALL.into_iter().find(|p| p.as_str() == s).ok_or_else(|| {
            LmError::BadConfig(format!("unknown projection {s:?} (expected q, k, v, o, gate, up or down)"))
        })
    }
}

/// Where the adapters go and how large they are.
///
/// ```
/// let c = g2po::lm::LoraConfig::default();
/// assert_eq!(c.rank, 8);
/// assert_eq!(c.targets.len(), 4); // q, k, v, o
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    /// Rank `r` of every adapter (at least 1).
    pub rank: usize,
    /// Scale numerator: the update is `alpha / rank * B A x`.
    pub alpha: f64,
    /// The adapted projections (non-empty, no repeats).
    pub targets: Vec<Projection>,
    /// Adapt only the top this many blocks (`None`: all blocks).
    pub top_layers: Option<usize>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            rank: 8,
            alpha: 16.0,
            targets: vec![Projection::Q, Projection::K, Projection::V, Projection::O],
            top_layers: None,
        }
    }
}

impl LoraConfig {
    /// Checks the options against a model with `layers` blocks.
    ///
    /// ```
    /// use g2po::lm::LoraConfig;
    /// assert!(LoraConfig::default().validate(30).is_ok());
    /// assert!(LoraConfig { rank: 0, ..Default::default() }.validate(30).is_err());
    /// assert!(LoraConfig { top_layers: Some(31), ..Default::default() }.validate(30).is_err());
    /// ```
    pub fn validate(&self, layers: usize) -> Result<()> {
        let bad = |m: String| Err(LmError::BadConfig(m));
        if self.rank == 0 {
            return bad("LoRA rank must be at least 1".into());
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return bad(format!("LoRA alpha must be finite and > 0, got {}", self.alpha));
        }
        let mut sorted = self.targets.clone();
        sorted.sort();
        sorted.dedup();
        if self.targets.is_empty() || sorted.len() != self.targets.len() {
            return bad(format!("LoRA targets must be a non-empty list without repeats, got {:?}", self.targets));
        }
        if let Some(n) = self.top_layers
            && (n == 0 || n > layers)
        {
            return bad(format!("LoRA top_layers must be in 1..={layers}, got {n}"));
        }
        Ok(())
    }

    /// The first block that carries adapters.
    fn first_layer(&self, layers: usize) -> usize {
        layers - self.top_layers.unwrap_or(layers)
    }
}

/// One adapter `(A, B)` with its scale.
#[derive(Debug, Clone)]
pub struct Adapter {
    a: Var,
    b: Var,
    scale: f64,
}

impl Adapter {
    /// `scale * (x A^T) B^T` for a 2-D `x` (`[m, in]`). With `track`
    /// false the parameters are detached, so no graph is recorded.
    pub(crate) fn delta(&self, x: &Tensor, track: bool) -> Result<Tensor> {
        let (a, b) = if track {
            (self.a.as_tensor().clone(), self.b.as_tensor().clone())
        } else {
            (self.a.as_tensor().detach(), self.b.as_tensor().detach())
        };
        Ok((x.matmul(&a.t()?)?.matmul(&b.t()?)? * self.scale)?)
    }

    /// The down-projection `A` (`[rank, in]`).
    pub fn a(&self) -> &Var {
        &self.a
    }

    /// The up-projection `B` (`[out, rank]`), zero at initialisation.
    pub fn b(&self) -> &Var {
        &self.b
    }
}

/// The adapters of a whole model, with their parameters in a [`VarMap`]
/// named `blk.<layer>.<projection>.lora_a` / `.lora_b`.
pub struct Lora {
    config: LoraConfig,
    varmap: VarMap,
    adapters: Vec<[Option<Adapter>; 7]>,
}

impl fmt::Debug for Lora {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lora").field("config", &self.config).field("parameters", &self.parameter_count()).finish()
    }
}

impl Lora {
    /// Fresh adapters for a model of `model` shape: `B = 0`, `A` drawn from
    /// a ChaCha8 stream seeded by `seed` (visited in block, projection order).
    ///
    /// ```
    /// use g2po::lm::{LlamaConfig, Lora, LoraConfig};
    /// let model = LlamaConfig::tiny();
    /// let lora = Lora::new(&LoraConfig::default(), &model, &candle_core::Device::Cpu, 0).unwrap();
    /// assert_eq!(lora.varmap().all_vars().len(), 2 * 4 * model.layers);
    /// ```
    pub fn new(config: &LoraConfig, model: &LlamaConfig, device: &Device, seed: u64) -> Result<Self> {
        config.validate(model.layers)?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let varmap = VarMap::new();
        let first = config.first_layer(model.layers);
        let scale = config.alpha / config.rank as f64;
        let mut adapters: Vec<[Option<Adapter>; 7]> = (0..model.layers).map(|_| Default::default()).collect();
        {
            let mut data = varmap.data().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for (layer, slots) in adapters.iter_mut().enumerate().skip(first) {
                for p in Projection::ALL {
                    if !config.targets.contains(&p) {
                        continue;
                    }
                    let (out, inp) = p.dims(model);
                    let bound = 1.0 / (inp as f64).sqrt();
                    let data_a: Vec<f32> =
                        (0..config.rank * inp).map(|_| ((rng.random::<f64>() * 2.0 - 1.0) * bound) as f32).collect();
                    let a = Var::from_tensor(&Tensor::from_vec(data_a, (config.rank, inp), device)?)?;
                    let b = Var::zeros((out, config.rank), DType::F32, device)?;
                    data.insert(format!("blk.{layer:02}.{p}.lora_a"), a.clone());
                    data.insert(format!("blk.{layer:02}.{p}.lora_b"), b.clone());
                    slots[p.index()] = Some(Adapter { a, b, scale });
                }
            }
        }
        Ok(Self { config: config.clone(), varmap, adapters })
    }

    /// The configuration.
    pub fn config(&self) -> &LoraConfig {
        &self.config
    }

    /// The trainable parameters (what an optimiser updates).
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// Number of trainable scalars.
    ///
    /// ```
    /// use g2po::lm::{LlamaConfig, Lora, LoraConfig, Projection};
    /// let c = LoraConfig { rank: 2, targets: vec![Projection::Q], top_layers: Some(1), ..Default::default() };
    /// let model = LlamaConfig::tiny();
    /// let lora = Lora::new(&c, &model, &candle_core::Device::Cpu, 0).unwrap();
    /// assert_eq!(lora.parameter_count(), 2 * model.hidden * 2);
    /// ```
    pub fn parameter_count(&self) -> usize {
        self.varmap.all_vars().iter().map(|v| v.elem_count()).sum()
    }

    /// The adapter on projection `p` of block `layer`, if any.
    pub fn adapter(&self, layer: usize, p: Projection) -> Option<&Adapter> {
        self.adapters.get(layer).and_then(|s| s[p.index()].as_ref())
    }

    /// Whether block `layer` carries any adapter.
    pub fn adapts(&self, layer: usize) -> bool {
        self.adapters.get(layer).is_some_and(|s| s.iter().any(Option::is_some))
    }

    /// A deep copy with its own parameters: later updates of `self` do not
    /// change it (the sampling policy's snapshot).
    pub fn clone_frozen(&self) -> Result<Self> {
        let varmap = VarMap::new();
        let mut adapters: Vec<[Option<Adapter>; 7]> = (0..self.adapters.len()).map(|_| Default::default()).collect();
        {
            let mut data = varmap.data().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for (layer, slots) in self.adapters.iter().enumerate() {
                for p in Projection::ALL {
                    if let Some(ad) = &slots[p.index()] {
                        let a = Var::from_tensor(&ad.a.as_tensor().copy()?)?;
                        let b = Var::from_tensor(&ad.b.as_tensor().copy()?)?;
                        data.insert(format!("blk.{layer:02}.{p}.lora_a"), a.clone());
                        data.insert(format!("blk.{layer:02}.{p}.lora_b"), b.clone());
                        adapters[layer][p.index()] = Some(Adapter { a, b, scale: ad.scale });
                    }
                }
            }
        }
        Ok(Self { config: self.config.clone(), varmap, adapters })
    }
}

impl Lora {
    pub(crate) fn adapters_len(&self) -> usize {
        self.adapters.len()
    }
}
