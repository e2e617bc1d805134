//! Fused GRPO loss (forward + backward): the CPU fused pass, the fused candle op the learner
//! applies (with candle's backward), and the same loss written as separate candle ops with
//! autograd, at 1M tokens (16M with `G2PO_BENCH_16M=1`, too slow for CI), plus the CUDA kernel
//! under the `cuda` feature (skipped without a GPU).
//!
//! Run: `cargo bench --bench loss` (add `--features cuda` for the GPU rows).

use std::hint::black_box;

use candle_core::{Device, Tensor, Var};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use g2po::loss::{LossBuffers, LossConfig};

#[path = "common/grpo_loss.rs"]
mod grpo_loss;
use grpo_loss::loss_candle_ops;

#[cfg(feature = "cuda")]
#[path = "../tests/support/gpu.rs"]
mod gpu_support;

/// Random inputs of the benchmarked size.
struct Batch(LossBuffers);

impl Batch {
    fn new(rows: usize, max_len: usize) -> Self {
        Self(grpo_loss::random_buffers(rows, max_len))
    }
}

/// The benchmarked configuration: default clipping with dual clip, k3 KL, token-mean.
fn config() -> LossConfig {
    grpo_loss::bench_config()
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
    // What the learner runs: the fused op (cpu_fwd) and its backward through candle.
    let op = g2po::learner::FusedGrpoLoss::from_buffers(batch.0.clone(), cfg).expect("op");
    group.bench_function("cpu_fused_op_with_backward", |b| {
        b.iter(|| {
            let (loss, _) = op.apply(logp.as_tensor()).expect("op");
            black_box(loss.backward().expect("backward"))
        })
    });
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
    let Some(gpu) = gpu_support::gpu_or_skip() else { return };
    // Host slices in, host vectors out: includes the PCIe copies.
    group.bench_function("gpu_fused_with_copies", |b| {
        b.iter(|| black_box(gpu.grpo_loss(&batch.0.view(), cfg).expect("gpu loss")))
    });
    // Device-resident tensors through the learner's fused op (its cuda_fwd): the kernel plus a
    // scalar read-back.
    let Some(dev) = gpu_support::candle_cuda_or_skip() else { return };
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
