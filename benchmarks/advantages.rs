//! Throughput and memory of the advantage engine on synthetic batches shaped
//! like the workload: G groups x 8 rollouts x 50 steps, about half of
//! the states shared within a group, anchors of about 270 characters.
//!
//! Run: `cargo bench --bench advantages` (set `G2PO_BENCH_QUICK=1` for a short
//! run). After the timings it prints the extra heap memory one estimate
//! allocates per row, measured with a counting allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use criterion::{BenchmarkId, Criterion, Throughput};
use g2po::estimators::{BellmanMethod, bellman_values};
use g2po::{AdvantageEstimator, Estimator, EstimatorConfig, EstimatorKind, RolloutBatch};

/// Counts live heap bytes and their peak, so the bench can report the extra
/// memory of one estimate.
struct Counting;
static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed) + layout.size() as isize;
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            let delta = new_size as isize - layout.size() as isize;
            let live = LIVE.fetch_add(delta, Ordering::Relaxed) + delta;
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[path = "common/mod.rs"]
mod common;
use common::synthetic;

fn extra_bytes_per_row(estimator: &Estimator, batch: &RolloutBatch) -> f64 {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let adv = estimator.estimate(batch).expect("estimate");
    let peak = PEAK.load(Ordering::Relaxed);
    drop(adv);
    (peak - before) as f64 / batch.len() as f64
}

/// The G2PO graphs of every group of `batch` as one graph with global node ids.
fn global_graph(batch: &RolloutBatch, adv: &g2po::Advantages) -> (Vec<u32>, Vec<i32>, Vec<f64>, usize) {
    let mut offset = vec![0u32; batch.num_groups() + 1];
    for (r, &g) in batch.groups().iter().enumerate() {
        offset[g as usize + 1] = offset[g as usize + 1].max(adv.node[r] as u32 + 1);
    }
    for g in 0..batch.num_groups() {
        offset[g + 1] += offset[g];
    }
    let group = |r: usize| offset[batch.groups()[r] as usize];
    let node = (0..batch.len()).map(|r| group(r) + adv.node[r] as u32).collect();
    let next = (0..batch.len())
        .map(|r| if adv.next_node[r] < 0 { adv.next_node[r] } else { (group(r) + adv.next_node[r] as u32) as i32 })
        .collect();
    let terminal = adv.next_value.iter().map(|&v| f64::from(v)).collect();
    (node, next, terminal, offset[batch.num_groups()] as usize)
}

fn main() {
    let quick = std::env::var_os("G2PO_BENCH_QUICK").is_some();
    // No plots: this machine has no fonts for criterion's plotters backend.
    let mut criterion = Criterion::default().without_plots().configure_from_args();
    if quick {
        criterion = criterion
            .sample_size(10)
            .warm_up_time(std::time::Duration::from_millis(300))
            .measurement_time(std::time::Duration::from_secs(1));
    }
    let keyer = g2po::keys::StateKeyer::new();
    let sizes: &[usize] = if quick { &[16, 256] } else { &[16, 64, 256, 1024] };
    let mut memory = Vec::new();
    for &groups in sizes {
        let text = synthetic(groups, false, &keyer);
        let keys = synthetic(groups, true, &keyer);
        let rows = text.len() as u64;
        let mut group = criterion.benchmark_group(format!("advantages/G={groups}"));
        group.throughput(Throughput::Elements(rows));
        for (name, kind, batch) in [
            ("g2po_text", EstimatorKind::G2po, &text),
            ("g2po_keys", EstimatorKind::G2po, &keys),
            ("gigpo_text", EstimatorKind::Gigpo, &text),
            ("gigpo_keys", EstimatorKind::Gigpo, &keys),
            ("grpo", EstimatorKind::Grpo, &keys),
            ("g2po_tree_keys", EstimatorKind::G2poTree, &keys),
            ("g2po_bellman_keys", EstimatorKind::G2poBellman, &keys),
            ("rloo", EstimatorKind::Rloo, &keys),
            ("reinforce_pp_baseline", EstimatorKind::ReinforcePlusPlusBaseline, &keys),
            ("grpo_passk", EstimatorKind::GrpoPassk, &keys),
        ] {
            let estimator = Estimator::new(EstimatorConfig::new(kind)).expect("config");
            group.bench_with_input(BenchmarkId::from_parameter(name), batch, |b, batch| {
                b.iter(|| estimator.estimate(batch).expect("estimate"))
            });
            memory.push((groups, name, extra_bytes_per_row(&estimator, batch)));
        }
        group.finish();

        // The Bellman backup's two solvers on the batch's fused graphs (all groups as one
        // graph of disjoint components, global node ids): Gauss-Seidel on flat arrays vs
        // exact solves per strongly connected component of a petgraph graph.
        let adv =
            Estimator::new(EstimatorConfig::new(EstimatorKind::G2po)).expect("config").estimate(&keys).expect("g2po");
        let (node, next, terminal, num_nodes) = global_graph(&keys, &adv);
        let mut group = criterion.benchmark_group(format!("bellman_solvers/G={groups}"));
        group.throughput(Throughput::Elements(rows));
        for (name, method) in
            [("iterative_flat", BellmanMethod::Iterative), ("exact_scc_petgraph", BellmanMethod::ExactScc)]
        {
            group.bench_function(name, |b| {
                b.iter(|| bellman_values(num_nodes, &node, &next, &terminal, 0.95, method).expect("solve"))
            });
        }
        group.finish();
    }
    criterion.final_summary();
    println!("\nextra heap memory of one estimate (peak bytes per row):");
    for (groups, name, bytes) in memory {
        println!("  G={groups:<5} {name:<21} {bytes:>7.1} B/row");
    }
}
