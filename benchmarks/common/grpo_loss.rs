//! The GRPO loss workload shared by `benchmarks/loss.rs` (CPU, criterion) and
//! `benchmarks/gpu.rs` (the device figures): random inputs, the benchmarked configuration, and
//! the same loss written as separate candle ops with autograd for the gradient (what an unfused
//! learner does; the baseline of the fused op). The unfused form covers the benchmarked options
//! (clipping, optional dual clip, optional k3 KL, token-mean), not every option.

use candle_core::{Tensor, Var};
use g2po::loss::{KlEstimator, LossBuffers, LossConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Random inputs, `rows x max_len`, seed 42: ratios within the clip range and beyond it, mixed
/// signs of advantage, right padding of a random length (1/4 to all of `max_len`) per row.
pub fn random_buffers(rows: usize, max_len: usize) -> LossBuffers {
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let n = rows * max_len;
    let logp: Vec<f32> = (0..n).map(|_| rng.random_range(-5.0..-0.01)).collect();
    let logp_old = logp.iter().map(|l| l - rng.random_range(-0.3f32..0.3)).collect();
    let logp_ref = logp.iter().map(|l| l - rng.random_range(-0.5f32..0.5)).collect();
    let advantages = (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect();
    let mut mask = vec![0.0f32; n];
    for r in 0..rows {
        let len = rng.random_range(max_len / 4..=max_len);
        mask[r * max_len..r * max_len + len].fill(1.0);
    }
    LossBuffers { rows, max_len, logp, logp_old, logp_ref, advantages, entropy: Vec::new(), mask }
}

/// The benchmarked configuration: default clipping with dual clip, k3 KL, token-mean.
pub fn bench_config() -> LossConfig {
    LossConfig { kl: Some((KlEstimator::K3, 0.01)), ..LossConfig::default() }
}

/// Loss and d loss / d logp, on whatever device the tensors are on. The token count stays a
/// tensor, so on a GPU nothing is copied back to the host.
pub fn loss_candle_ops(
    logp: &Var,
    old: &Tensor,
    rf: &Tensor,
    adv: &Tensor,
    mask: &Tensor,
    c: &LossConfig,
) -> candle_core::Result<(Tensor, Tensor)> {
    let lp = logp.as_tensor();
    let rho = (lp - old)?.clamp(-20f32, 20f32)?.exp()?;
    let neg_adv = adv.neg()?;
    let pg1 = (&neg_adv * &rho)?;
    let rho_c = rho.clamp((1.0 - c.clip_low) as f32, (1.0 + c.clip_high) as f32)?;
    let pg2 = (&neg_adv * rho_c)?;
    let mut pg = pg1.maximum(&pg2)?;
    if let Some(dc) = c.dual_clip {
        let pg3 = neg_adv.affine(dc, 0.0)?;
        let dual = pg.minimum(&pg3)?;
        pg = adv.lt(0f32)?.where_cond(&dual, &pg)?;
    }
    let mut tok = pg;
    if let Some((_, beta)) = c.kl {
        let q = (rf - lp)?.clamp(-20f32, 20f32)?;
        let k3 = ((q.exp()? - &q)? - 1.0)?.clamp(-10f32, 10f32)?;
        tok = (tok + k3.affine(beta, 0.0)?)?;
    }
    let loss = (tok * mask)?.sum_all()?.broadcast_div(&mask.sum_all()?)?;
    let grads = loss.backward()?;
    let grad = grads.get(lp).cloned().unwrap_or(lp.zeros_like()?);
    Ok((loss, grad))
}
