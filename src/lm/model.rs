//! A Llama decoder of our own on candle, with a fast and a differentiable
//! mode.
//!
//! Why our own and not `candle_transformers::models::{llama,
//! quantized_llama}`: those use candle-nn's fused `rms_norm`,
//! `softmax_last_dim` and `rope_i` (and the quantized matmul), which have no
//! backward, so gradients stop there silently; and they return only the last
//! position's logits. Here the same network runs in one of two modes:
//!
//! * [`Mode::Fast`] (rollouts, scoring, the old and reference log-probs):
//!   the fused kernels, the LoRA parameters detached, no graph;
//! * [`Mode::Differentiable`] (the loss): `rms_norm_slow`, the composite
//!   `softmax` and `rope_i_slow`, which have backward passes and match the
//!   fused kernels to ~1e-5, and [`super::frozen_matmul`] for the frozen
//!   weights so that no weight gradient of the base is ever formed. Blocks
//!   below the first adapter receive no gradient, so they run the fast
//!   kernels even in this mode.
//!
//! The KV cache is explicit ([`KvCache`]): a forward takes an optional
//! prefix cache and returns the cache extended by its own tokens. A prefix of
//! batch 1 is shared by every row of a batch, which is how the candidates of
//! one prompt are scored (and differentiated) on the prompt computed once.
//! The forward returns final-normed hidden states; [`Llama::logits`]
//! projects only the rows the caller needs (the tied 49,152-token output
//! embedding is the most expensive matmul of the model).
//!
//! Weights: the GGUF's tensors dequantized to f32 (the Q4_1-dequantized
//! SmolLM2, not the original bf16 model). Llama GGUFs store q/k permuted for
//! the interleaved rotary embedding, hence `rope_i` (as `quantized_llama`
//! does for architecture llama).

use candle_core::{D, DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::error::{LmError, Result};
use super::frozen::frozen_matmul;
use super::gguf::{GgufFile, block_tensor_names};
use super::lora::{Lora, Projection};

/// Shape hyper-parameters of a Llama model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// Vocabulary size.
    pub vocab: usize,
    /// Width of the residual stream.
    pub hidden: usize,
    /// Number of blocks.
    pub layers: usize,
    /// Attention (query) heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention; divides `heads`).
    pub kv_heads: usize,
    /// Width of the MLP.
    pub ffn: usize,
    /// Rotary embedding base.
    pub rope_base: f64,
    /// RMS-norm epsilon.
    pub rms_eps: f64,
    /// Longest sequence (positions of the rotary tables).
    pub context: usize,
}

impl LlamaConfig {
    /// Width of one head.
    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }

    /// A 2-block model of SmolLM2's proportions (grouped-query attention, 3
    /// query heads per key/value head) for tests that need no weights file.
    ///
    /// ```
    /// let c = g2po::lm::LlamaConfig::tiny();
    /// assert!(c.validate().is_ok());
    /// assert_eq!(c.heads / c.kv_heads, 3);
    /// ```
    pub fn tiny() -> Self {
        Self {
            vocab: 64,
            hidden: 24,
            layers: 2,
            heads: 6,
            kv_heads: 2,
            ffn: 40,
            rope_base: 10_000.0,
            rms_eps: 1e-5,
            context: 128,
        }
    }

    /// Checks the shape parameters.
    ///
    /// ```
    /// use g2po::lm::LlamaConfig;
    /// assert!(LlamaConfig { kv_heads: 4, ..LlamaConfig::tiny() }.validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<()> {
        let ok = self.vocab > 0
            && self.hidden > 0
            && self.layers > 0
            && self.heads > 0
            && self.kv_heads > 0
            && self.ffn > 0
            && self.context > 0
            && self.hidden.is_multiple_of(self.heads)
            && self.heads.is_multiple_of(self.kv_heads)
            && self.head_dim().is_multiple_of(2)
            && self.rope_base.is_finite()
            && self.rope_base > 1.0
            && self.rms_eps.is_finite()
            && self.rms_eps > 0.0;
        if ok { Ok(()) } else { Err(LmError::BadConfig(format!("inconsistent Llama configuration {self:?}"))) }
    }
}

/// Which kernels a forward uses (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Fused kernels, no graph: rollouts, scoring, old and reference log-probs.
    Fast,
    /// Differentiable composites and frozen-weight matmuls: the loss.
    Differentiable,
}

/// Keys and values of every block for the positions computed so far:
/// per block `[batch, kv_heads, len, head_dim]`.
#[derive(Debug, Clone)]
pub struct KvCache {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    len: usize,
    batch: usize,
}

impl KvCache {
    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is cached.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Rows of the cache (1 for a shared prompt).
    pub fn batch(&self) -> usize {
        self.batch
    }
}

struct Block {
    attn_norm: Tensor,
    /// q, k, v, o, gate, up, down, in [`Projection`] order, each stored
    /// transposed (`[in, out]`, contiguous): `x @ W^T` with a row-major
    /// `W^T` runs about twice as fast in candle's CPU matmul as against a
    /// transposed view of `W` at prompt lengths (measured 42 vs 96 ms for a
    /// 200 x 576 x 1536 product), because the view forces a repacking.
    proj: [Tensor; 7],
    ffn_norm: Tensor,
}

/// The model: frozen f32 weights and rotary tables (see the module docs).
pub struct Llama {
    config: LlamaConfig,
    device: Device,
    embed: Tensor,
    blocks: Vec<Block>,
    norm: Tensor,
    cos: Tensor,
    sin: Tensor,
}

impl std::fmt::Debug for Llama {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Llama").field("config", &self.config).field("device", &self.device).finish_non_exhaustive()
    }
}

/// Everything the model computes per block, with the kernels of one mode.
struct Ops {
    diff: bool,
    eps: f32,
}

impl Ops {
    fn rms_norm(&self, x: &Tensor, alpha: &Tensor) -> Result<Tensor> {
        Ok(if self.diff {
            candle_nn::ops::rms_norm_slow(x, alpha, self.eps)?
        } else {
            candle_nn::ops::rms_norm(&x.contiguous()?, alpha, self.eps)?
        })
    }

    fn softmax(&self, x: &Tensor) -> Result<Tensor> {
        Ok(if self.diff { candle_nn::ops::softmax(x, D::Minus1)? } else { candle_nn::ops::softmax_last_dim(x)? })
    }

    fn rope(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let x = x.contiguous()?;
        Ok(if self.diff {
            candle_nn::rotary_emb::rope_i_slow(&x, cos, sin)?
        } else {
            candle_nn::rotary_emb::rope_i(&x, cos, sin)?
        })
    }

    /// `x [m, in] @ wt` (`wt` = `W^T`, `[in, out]`) plus the adapter's delta.
    fn linear(&self, x: &Tensor, wt: &Tensor, adapter: Option<&super::lora::Adapter>) -> Result<Tensor> {
        let x = x.contiguous()?;
        let base = if self.diff { frozen_matmul(&x, wt)? } else { x.matmul(wt)? };
        Ok(match adapter {
            Some(a) => (base + a.delta(&x, self.diff)?)?,
            None => base,
        })
    }
}

/// `[len, dim / 2]` cosine and sine tables of the rotary embedding.
fn rope_tables(c: &LlamaConfig, device: &Device) -> Result<(Tensor, Tensor)> {
    let half = c.head_dim() / 2;
    let inv: Vec<f32> =
        (0..half).map(|i| (1.0 / c.rope_base.powf(2.0 * i as f64 / c.head_dim() as f64)) as f32).collect();
    let inv = Tensor::from_vec(inv, (1, half), device)?;
    let pos = Tensor::arange(0u32, c.context as u32, device)?.to_dtype(DType::F32)?.reshape((c.context, 1))?;
    let angles = pos.broadcast_mul(&inv)?;
    Ok((angles.cos()?, angles.sin()?))
}

impl Llama {
    /// Loads every tensor of `file` (dequantized to f32) onto `device`.
    ///
    /// Errors: [`LmError::CorruptWeights`] when the metadata, a tensor's
    /// shape or its data is wrong; [`LmError::Io`] on a read failure.
    ///
    /// ```no_run
    /// use g2po::lm::{GgufFile, Llama};
    /// let model = Llama::load(&GgufFile::open_default().unwrap(), &candle_core::Device::Cpu).unwrap();
    /// assert_eq!(model.config().vocab, 49_152);
    /// ```
    pub fn load(file: &GgufFile, device: &Device) -> Result<Self> {
        let config = file.config()?;
        let mut reader = file.reader()?;
        let mut read = |name: &str| file.read_f32(&mut reader, name, device);
        let embed = read("token_embd.weight")?;
        let norm = read("output_norm.weight")?;
        let mut blocks = Vec::with_capacity(config.layers);
        for layer in 0..config.layers {
            let [attn_norm, q, k, v, o, ffn_norm, gate, up, down] = block_tensor_names(layer);
            blocks.push(Block {
                attn_norm: read(&attn_norm)?,
                proj: [read(&q)?, read(&k)?, read(&v)?, read(&o)?, read(&gate)?, read(&up)?, read(&down)?],
                ffn_norm: read(&ffn_norm)?,
            });
        }
        Self::from_parts(config, device, embed, blocks, norm)
    }

    /// A model of shape `config` with random weights from a ChaCha8 stream
    /// seeded by `seed` (normal-ish scale `1/sqrt(in)`, norms near 1): for
    /// tests of the mechanics that need no weights file.
    ///
    /// ```
    /// use g2po::lm::{LlamaConfig, Llama};
    /// let m = Llama::random(LlamaConfig::tiny(), &candle_core::Device::Cpu, 3).unwrap();
    /// assert_eq!(m.config().layers, 2);
    /// ```
    pub fn random(config: LlamaConfig, device: &Device, seed: u64) -> Result<Self> {
        config.validate()?;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut init = |shape: (usize, usize), bound: f64| -> Result<Tensor> {
            let data: Vec<f32> =
                (0..shape.0 * shape.1).map(|_| ((rng.random::<f64>() * 2.0 - 1.0) * bound) as f32).collect();
            Ok(Tensor::from_vec(data, shape, device)?)
        };
        let c = config;
        let kvd = c.kv_heads * c.head_dim();
        let embed = init((c.vocab, c.hidden), 1.0)?;
        let norm = (init((1, c.hidden), 0.1)? + 1.0)?.flatten_all()?;
        let mut blocks = Vec::with_capacity(c.layers);
        for _ in 0..c.layers {
            let (sd, sf) = (3f64.sqrt() / (c.hidden as f64).sqrt(), 3f64.sqrt() / (c.ffn as f64).sqrt());
            blocks.push(Block {
                attn_norm: (init((1, c.hidden), 0.1)? + 1.0)?.flatten_all()?,
                proj: [
                    init((c.hidden, c.hidden), sd)?,
                    init((kvd, c.hidden), sd)?,
                    init((kvd, c.hidden), sd)?,
                    init((c.hidden, c.hidden), sd)?,
                    init((c.ffn, c.hidden), sd)?,
                    init((c.ffn, c.hidden), sd)?,
                    init((c.hidden, c.ffn), sf)?,
                ],
                ffn_norm: (init((1, c.hidden), 0.1)? + 1.0)?.flatten_all()?,
            });
        }
        Self::from_parts(config, device, embed, blocks, norm)
    }

    /// Assembles the model from `[out, in]` projection weights (GGUF's
    /// layout), storing them transposed (see [`Block::proj`]).
    fn from_parts(
        config: LlamaConfig,
        device: &Device,
        embed: Tensor,
        blocks: Vec<Block>,
        norm: Tensor,
    ) -> Result<Self> {
        let (cos, sin) = rope_tables(&config, device)?;
        let mut blocks = blocks;
        for b in &mut blocks {
            for w in &mut b.proj {
                *w = w.t()?.contiguous()?;
            }
        }
        Ok(Self { config, device: device.clone(), embed, blocks, norm, cos, sin })
    }

    /// The shape parameters.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// Every frozen weight of the base (embedding, norms, projections): none
    /// of them is a `Var`, so no optimiser can touch them, and a test can
    /// check that a backward pass produced no gradient for any of them.
    pub fn frozen_tensors(&self) -> Vec<&Tensor> {
        let mut out = vec![&self.embed, &self.norm];
        for b in &self.blocks {
            out.push(&b.attn_norm);
            out.push(&b.ffn_norm);
            out.extend(b.proj.iter());
        }
        out
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Runs `tokens` (`[batch, len]`, u32) after an optional `prefix` cache
    /// (batch 1, shared by all rows, or batch `batch`) with optional LoRA
    /// adapters, returning the final-normed hidden states `[batch, len,
    /// hidden]` and the cache of prefix plus tokens.
    ///
    /// Rows of a batch may be right-padded: attention is causal, so a
    /// position never sees the padding after it, and the caller ignores the
    /// outputs at padded positions.
    ///
    /// Errors: an empty batch, token ids outside the vocabulary, a prefix of
    /// another batch size, or more positions than the model's context.
    pub fn forward(
        &self,
        tokens: &Tensor,
        prefix: Option<&KvCache>,
        lora: Option<&Lora>,
        mode: Mode,
    ) -> Result<(Tensor, KvCache)> {
        self.forward_in(tokens, prefix, lora, mode, Layout::Causal)
    }

    /// [`Llama::forward`] of one row holding several independent
    /// continuations of `prefix` back to back (`segments`: their lengths):
    /// each segment's tokens see the prefix and the earlier tokens of their
    /// own segment, at the positions they would have alone. Equals running
    /// each segment as its own row after the prefix, without the padding of
    /// a batch and without copying the prefix's keys and values per row.
    pub(crate) fn forward_segments(
        &self,
        tokens: &Tensor,
        prefix: &KvCache,
        lora: Option<&Lora>,
        mode: Mode,
        segments: &[usize],
    ) -> Result<Tensor> {
        let (batch, len) = tokens.dims2()?;
        if batch != 1 || prefix.batch != 1 || segments.iter().sum::<usize>() != len || segments.contains(&0) {
            return Err(LmError::BadInput(format!(
                "segments {segments:?} of a [{batch}, {len}] row after a prefix of batch {}",
                prefix.batch
            )));
        }
        Ok(self.forward_in(tokens, Some(prefix), lora, mode, Layout::Segments(segments))?.0)
    }

    fn forward_in(
        &self,
        tokens: &Tensor,
        prefix: Option<&KvCache>,
        lora: Option<&Lora>,
        mode: Mode,
        layout: Layout<'_>,
    ) -> Result<(Tensor, KvCache)> {
        let (batch, len) = tokens.dims2()?;
        let c = &self.config;
        if batch == 0 || len == 0 {
            return Err(LmError::BadInput("forward needs at least one row and one token".into()));
        }
        let past = prefix.map_or(0, KvCache::len);
        let reach = match layout {
            Layout::Causal => len,
            Layout::Segments(lens) => lens.iter().copied().max().unwrap_or(0),
        };
        if past + reach > c.context {
            return Err(LmError::BadInput(format!("{} positions exceed the context of {}", past + len, c.context)));
        }
        if let Some(p) = prefix
            && p.batch != 1
            && p.batch != batch
        {
            return Err(LmError::BadInput(format!("a prefix cache of batch {} for a batch of {batch}", p.batch)));
        }
        let max_id = tokens.flatten_all()?.max(0)?.to_scalar::<u32>()?;
        if max_id as usize >= c.vocab {
            return Err(LmError::BadInput(format!("token id {max_id} is outside the vocabulary of {}", c.vocab)));
        }
        if let Some(l) = lora
            && l.adapters_len() != c.layers
        {
            return Err(LmError::BadInput("LoRA adapters built for another model".into()));
        }
        let (cos, sin, mask) = match layout {
            Layout::Causal => {
                (self.cos.narrow(0, past, len)?, self.sin.narrow(0, past, len)?, causal_mask(len, past, &self.device)?)
            }
            Layout::Segments(lens) => {
                let positions: Vec<u32> = lens.iter().flat_map(|&n| (past..past + n).map(|p| p as u32)).collect();
                let positions = Tensor::from_vec(positions, len, &self.device)?;
                let (cos, sin) = (self.cos.index_select(&positions, 0)?, self.sin.index_select(&positions, 0)?);
                (cos, sin, segment_mask(lens, past, &self.device)?)
            }
        };
        let mut x = self.embed.index_select(&tokens.flatten_all()?, 0)?.reshape((batch, len, c.hidden))?;
        let mut keys = Vec::with_capacity(c.layers);
        let mut values = Vec::with_capacity(c.layers);
        for (layer, block) in self.blocks.iter().enumerate() {
            let past_kv = prefix.map(|p| (&p.keys[layer], &p.values[layer]));
            // A block needs the differentiable kernels only if a gradient can
            // reach it: from its own adapters or from below (the residual
            // stream or the prefix cache).
            let diff = mode == Mode::Differentiable
                && (x.track_op()
                    || lora.is_some_and(|l| l.adapts(layer))
                    || past_kv.is_some_and(|(k, v)| k.track_op() || v.track_op()));
            let ops = Ops { diff, eps: c.rms_eps as f32 };
            let adapter = |p: Projection| lora.and_then(|l| l.adapter(layer, p));
            let h = ops.rms_norm(&x, &block.attn_norm)?;
            let (attn, k, v) = self.attention(&ops, block, &h, past_kv, (&cos, &sin, &mask), &adapter)?;
            x = (x + attn)?;
            let h = ops.rms_norm(&x, &block.ffn_norm)?.reshape((batch * len, c.hidden))?;
            let gate = ops.linear(&h, &block.proj[4], adapter(Projection::Gate))?;
            let up = ops.linear(&h, &block.proj[5], adapter(Projection::Up))?;
            let act = (candle_nn::ops::silu(&gate)? * up)?;
            let down = ops.linear(&act, &block.proj[6], adapter(Projection::Down))?;
            x = (x + down.reshape((batch, len, c.hidden))?)?;
            keys.push(k);
            values.push(v);
        }
        let ops = Ops { diff: mode == Mode::Differentiable && x.track_op(), eps: c.rms_eps as f32 };
        let out = ops.rms_norm(&x, &self.norm)?;
        Ok((out, KvCache { keys, values, len: past + len, batch }))
    }

    /// Grouped-query self-attention of one block; returns the block's output
    /// and its full keys and values (prefix and new positions).
    #[allow(clippy::type_complexity)]
    fn attention<'a>(
        &self,
        ops: &Ops,
        block: &Block,
        h: &Tensor,
        past: Option<(&Tensor, &Tensor)>,
        (cos, sin, mask): (&Tensor, &Tensor, &Tensor),
        adapter: &dyn Fn(Projection) -> Option<&'a super::lora::Adapter>,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let c = &self.config;
        let (batch, len, _) = h.dims3()?;
        let (hd, kvh) = (c.head_dim(), c.kv_heads);
        let rep = c.heads / kvh;
        let h2 = h.reshape((batch * len, c.hidden))?;
        let heads = |t: Tensor, n: usize| t.reshape((batch, len, n, hd))?.transpose(1, 2);
        let q = heads(ops.linear(&h2, &block.proj[0], adapter(Projection::Q))?, c.heads)?;
        let k = heads(ops.linear(&h2, &block.proj[1], adapter(Projection::K))?, kvh)?;
        let v = heads(ops.linear(&h2, &block.proj[2], adapter(Projection::V))?, kvh)?.contiguous()?;
        let q = ops.rope(&q, cos, sin)?;
        let k = ops.rope(&k, cos, sin)?;
        let (k, v) = match past {
            Some((pk, pv)) => {
                let widen = |t: &Tensor| -> Result<Tensor> {
                    let (b, n, p, d) = t.dims4()?;
                    Ok(if b == batch { t.clone() } else { t.broadcast_as((batch, n, p, d))?.contiguous()? })
                };
                (Tensor::cat(&[&widen(pk)?, &k], 2)?, Tensor::cat(&[&widen(pv)?, &v], 2)?)
            }
            None => (k, v),
        };
        let total = k.dim(2)?;
        // Query head i reads key/value head i / rep: fold the rep query heads
        // of a key/value head into its rows instead of repeating keys.
        let q = q.reshape((batch, kvh, rep * len, hd))?;
        let scores = (q.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?;
        let scores = scores.reshape((batch, kvh, rep, len, total))?.broadcast_add(mask)?;
        let probs = ops.softmax(&scores)?.reshape((batch, kvh, rep * len, total))?;
        let out = probs.matmul(&v)?.reshape((batch, c.heads, len, hd))?.transpose(1, 2)?;
        let out = out.reshape((batch * len, c.hidden))?;
        let out = ops.linear(&out, &block.proj[3], adapter(Projection::O))?.reshape((batch, len, c.hidden))?;
        Ok((out, k, v))
    }

    /// Logits `[rows, vocab]` of hidden states `[rows, hidden]` (from
    /// [`Llama::forward`]) through the tied output embedding.
    pub fn logits(&self, hidden: &Tensor, mode: Mode) -> Result<Tensor> {
        let hidden = hidden.contiguous()?;
        Ok(if mode == Mode::Differentiable && hidden.track_op() {
            frozen_matmul(&hidden, &self.embed.t()?)?
        } else {
            hidden.matmul(&self.embed.t()?)?
        })
    }
}

/// How the new tokens of a forward pass see each other.
#[derive(Clone, Copy)]
enum Layout<'a> {
    /// One sequence continuing the prefix.
    Causal,
    /// Independent sequences of these lengths, each continuing the prefix.
    Segments(&'a [usize]),
}

/// `[len, past + len]` for segments of `lens` packed in one row: 0 where a
/// token may attend (the whole prefix, and its own segment up to itself),
/// `-inf` elsewhere.
fn segment_mask(lens: &[usize], past: usize, device: &Device) -> Result<Tensor> {
    let len: usize = lens.iter().sum();
    let total = past + len;
    let mut data = vec![f32::NEG_INFINITY; len * total];
    let mut start = 0;
    for &n in lens {
        for i in start..start + n {
            let row = &mut data[i * total..(i + 1) * total];
            row[..past].fill(0.0);
            row[past + start..=past + i].fill(0.0);
        }
        start += n;
    }
    Ok(Tensor::from_vec(data, (len, total), device)?)
}

/// `[len, past + len]`: 0 where position `past + i` may attend to `j`
/// (`j <= past + i`), `-inf` elsewhere.
fn causal_mask(len: usize, past: usize, device: &Device) -> Result<Tensor> {
    let total = past + len;
    let data: Vec<f32> =
        (0..len).flat_map(|i| (0..total).map(move |j| if j <= past + i { 0.0 } else { f32::NEG_INFINITY })).collect();
    Ok(Tensor::from_vec(data, (len, total), device)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Packed segments give each continuation exactly what it gets as its
    /// own row after the prefix, in both modes; lengths that do not add up
    /// are a typed error.
    #[test]
    fn segments_equal_separate_rows() {
        let model = Llama::random(LlamaConfig::tiny(), &Device::Cpu, 7).unwrap();
        let prompt = Tensor::from_vec(vec![3u32, 9, 27, 4], (1, 4), &Device::Cpu).unwrap();
        let (_, cache) = model.forward(&prompt, None, None, Mode::Fast).unwrap();
        let segments: [&[u32]; 3] = [&[5, 6, 7], &[12], &[40, 41]];
        let packed: Vec<u32> = segments.concat();
        let ids = Tensor::from_vec(packed.clone(), (1, packed.len()), &Device::Cpu).unwrap();
        for mode in [Mode::Fast, Mode::Differentiable] {
            let out = model.forward_segments(&ids, &cache, None, mode, &[3, 1, 2]).unwrap();
            let out = out.squeeze(0).unwrap().to_vec2::<f32>().unwrap();
            let mut at = 0;
            for seg in segments {
                let row = Tensor::from_slice(seg, (1, seg.len()), &Device::Cpu).unwrap();
                let (alone, _) = model.forward(&row, Some(&cache), None, mode).unwrap();
                for (a, b) in alone.squeeze(0).unwrap().to_vec2::<f32>().unwrap().iter().zip(&out[at..]) {
                    let diff = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max);
                    assert!(diff < 1e-5, "{diff}");
                }
                at += seg.len();
            }
        }
        for bad in [&[3, 1][..], &[3, 1, 3], &[3, 0, 1, 2]] {
            let err = model.forward_segments(&ids, &cache, None, Mode::Fast, bad).unwrap_err();
            assert!(matches!(err, LmError::BadInput(_)), "{err}");
        }
    }
}
