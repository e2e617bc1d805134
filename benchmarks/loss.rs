//! Fused GRPO loss (forward + backward): the CPU fused pass against the same loss written as
//! separate candle ops with autograd, at 1M tokens (16M with `G2PO_BENCH_16M=1`, too slow for
//! CI), plus the CUDA kernel under the `cuda` feature (skipped without a GPU).
//!
//! Run: `cargo bench --bench loss` (add `--features cuda` for the GPU rows).

use std::hint::black_box;

use candle_core::{Device, Tensor, Var};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use g2po::loss::{KlEstimator, LossBuffers, LossConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Random inputs of the benchmarked size.
struct Batch(LossBuffers);

impl Batch {
    fn new(rows: usize, max_len: usize) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(42);
        let n = rows * max_len;
        let logp: Vec<f32> = (0..n).map(|_| rng.random_range(-5.0..-0.01)).collect();
        let logp_old = logp.iter().map(|l| l - rng.random_range(-0.3f32..0.3)).collect();
        let logp_ref = logp.iter().map(|l| l - rng.random_range(-0.5f32..0.5)).collect();
        let adv = (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect();
        let mut mask = vec![0.0f32; n];
        for r in 0..rows {
            let len = rng.random_range(max_len / 4..=max_len);
            mask[r * max_len..r * max_len + len].fill(1.0);
        }
        Self(LossBuffers { rows, max_len, logp, logp_old, logp_ref, advantages: adv, entropy: Vec::new(), mask })
    }
}

/// The benchmarked configuration: default clipping with dual clip, k3 KL, token-mean.
fn config() -> LossConfig {
    LossConfig { kl: Some((KlEstimator::K3, 0.01)), ..LossConfig::default() }
}

/// The same loss as separate candle ops; autograd gives the gradient (what an unfused
/// learner does). Returns (loss, d loss / d logp).
fn loss_candle_ops(
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
    let loss = ((tok * mask)?.sum_all()? / f64::from(mask.sum_all()?.to_scalar::<f32>()?))?;
    let grads = loss.backward()?;
    let grad = grads.get(lp).cloned().unwrap_or(lp.zeros_like()?);
    Ok((loss, grad))
}

fn bench_size(c: &mut Criterion, rows: usize, max_len: usize) {
    let batch = Batch::new(rows, max_len);
    let cfg = config();
    let n = rows * max_len;
    let label = format!("{}M_tokens", n >> 20);
    let mut group = c.benchmark_group(format!("grpo_loss/{label}"));
    group.throughput(Throughput::Elements(n as u64));
    group.sample_size(10);

    group.bench_function("cpu_fused", |b| b.iter(|| black_box(g2po::loss::grpo_loss_cpu(&batch.0.view(), &cfg))));

    let dev = Device::Cpu;
    let t = |v: &[f32]| Tensor::from_slice(v, (rows, max_len), &dev).expect("tensor");
    let logp = Var::from_tensor(&t(&batch.0.logp)).expect("var");
    let (old, rf, adv, mask) = (t(&batch.0.logp_old), t(&batch.0.logp_ref), t(&batch.0.advantages), t(&batch.0.mask));
    group.bench_function("cpu_candle_ops", |b| {
        b.iter(|| black_box(loss_candle_ops(&logp, &old, &rf, &adv, &mask, &cfg).expect("candle loss")))
    });

    #[cfg(feature = "cuda")]
    gpu_rows(&mut group, &batch, &cfg);
    group.finish();
}

#[cfg(feature = "cuda")]
fn gpu_rows(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    batch: &Batch,
    cfg: &LossConfig,
) {
    let gpu = match g2po::cuda::GpuContext::new(0) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("GPU benchmarks skipped: {e}");
            return;
        }
    };
    // Host slices in, host vectors out: includes the PCIe copies.
    group.bench_function("gpu_fused_with_copies", |b| {
        b.iter(|| black_box(gpu.grpo_loss(&batch.0.view(), cfg).expect("gpu loss")))
    });
    // Device-resident tensors through the learner's fused op (its cuda_fwd): the kernel plus a
    // scalar read-back.
    let Ok(dev) = Device::new_cuda(0) else { return };
    let t = |v: &[f32]| Tensor::from_slice(v, (batch.0.rows, batch.0.max_len), &dev).expect("tensor");
    let logp = t(&batch.0.logp);
    let op = g2po::learner::FusedGrpoLoss::new(
        g2po::learner::LossConstants {
            logp_old: t(&batch.0.logp_old),
            logp_ref: Some(t(&batch.0.logp_ref)),
            advantages: t(&batch.0.advantages),
            entropy: None,
            mask: t(&batch.0.mask),
        },
        *cfg,
    )
    .expect("op");
    group.bench_function("gpu_fused_device_resident", |b| {
        b.iter(|| {
            let (l, _) = op.apply(&logp).expect("op");
            black_box(l.to_scalar::<f32>().expect("scalar"))
        })
    });
}

fn benches(c: &mut Criterion) {
    bench_size(c, 1024, 1024);
    if std::env::var("G2PO_BENCH_16M").is_ok_and(|v| v == "1") {
        bench_size(c, 8192, 2048);
    }
}

criterion_group! {
    name = loss;
    // No plots: they need system fonts, which build machines and CI images may lack
    // (criterion then panics with FontUnavailable); the numbers are what matters here.
    config = Criterion::default().without_plots();
    targets = benches
}
criterion_main!(loss);
