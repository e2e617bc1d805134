//! The G2PO advantage stages on the GPU against the CPU engine, at about 1M
//! and 10M rows (2,560 and 25,600 groups of the shared synthetic workload,
//! precomputed keys).
//!
//! Run: `cargo bench --features nvrtc --bench stages` (`G2PO_BENCH_10M=1` adds
//! the 10M-row size). GPU rows need a GPU and libnvrtc; without them they are
//! skipped with a message (a failure with `G2PO_REQUIRE_GPU=1`). The CPU engine row always runs. The GPU is timed
//! end to end from host arrays (upload, kernels, download), which is what a
//! CPU trainer would pay; the host-side node ids come from the CPU engine and
//! are not part of the GPU time.

use criterion::{Criterion, Throughput};
use g2po::cuda::StageHost;
use g2po::{AdvantageEstimator, Estimator, EstimatorConfig, EstimatorKind};

#[path = "common/mod.rs"]
mod common;
#[path = "../tests/support/gpu.rs"]
mod gpu_support;

fn main() {
    let mut criterion = Criterion::default().without_plots().sample_size(10).configure_from_args();
    let keyer = g2po::keys::StateKeyer::new();
    let gpu = gpu_support::gpu_or_skip();
    let mut sizes = vec![2_560];
    if std::env::var("G2PO_BENCH_10M").is_ok_and(|v| v == "1") {
        sizes.push(25_600);
    }
    for groups in sizes {
        let batch = common::synthetic(groups, true, &keyer);
        let config = EstimatorConfig::new(EstimatorKind::G2po);
        let estimator = Estimator::new(config).expect("config");
        let mut cpu_out = estimator.estimate(&batch).expect("estimate");
        let mut group = criterion.benchmark_group(format!("g2po_stages/{}k_rows", batch.len() / 1000));
        group.throughput(Throughput::Elements(batch.len() as u64));
        group.bench_function("cpu_engine", |b| b.iter(|| estimator.estimate_into(&batch, &mut cpu_out).expect("cpu")));
        if let Some(gpu) = &gpu {
            let host = StageHost::from_batch(&batch, &cpu_out, &config).expect("stage inputs");
            group.bench_function("gpu_stages_with_copies", |b| {
                b.iter(|| gpu.g2po_stages(&host.inputs(), &host.params).expect("gpu"))
            });
        }
        group.finish();
    }
    criterion.final_summary();
}
