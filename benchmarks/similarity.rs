//! GiGPO's similarity clustering (`keys::similarity::cluster`) on one group
//! of distinct ALFWorld-like observations of about 270 characters.
//!
//! Run: `cargo bench --bench similarity` (`G2PO_BENCH_QUICK=1` for a short
//! run; `G2PO_BENCH_UNPRUNED=1` also times the unpruned definition once at
//! 2,000 texts, which takes minutes).
//!
//! The observations follow `tests/data/make_difflib_fixtures.py`: a room with
//! 9 to 12 receptacles drawn from 13 kinds, numbered 1 to 4, and one of six
//! tasks, every text distinct. Pairs score about 0.5 to 0.9, so at the
//! thresholds GiGPO uses (0.9, 0.95) almost every text opens its own cluster:
//! the worst case for the greedy loop, which compares each new text with every
//! representative before it (n^2 / 2 pairs).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use g2po::keys::similarity::{cluster, cluster_unpruned};
use g2po::{AdvantageEstimator, Anchor, Estimator, EstimatorConfig, EstimatorKind, Grouping, Step};
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

const OBJECTS: [&str; 13] = [
    "cabinet",
    "countertop",
    "drawer",
    "fridge",
    "garbagecan",
    "microwave",
    "shelf",
    "sinkbasin",
    "stoveburner",
    "toaster",
    "coffeemachine",
    "diningtable",
    "sidetable",
];
const TASKS: [&str; 6] = [
    "put a clean apple in fridge.",
    "heat some egg and put it in countertop.",
    "put two cellphone in sofa.",
    "examine the book with the desklamp.",
    "cool some lettuce and put it in diningtable.",
    "put a hot potato in garbagecan.",
];

fn observations(n: usize, seed: u64) -> Vec<String> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let count = rng.random_range(9..=12);
        let objects: Vec<String> =
            OBJECTS.choose_multiple(&mut rng, count).map(|o| format!("a {o} {}", rng.random_range(1..=4))).collect();
        let (last, rest) = objects.split_last().expect("nine or more");
        let text = format!(
            "You are in the middle of a room. Looking quickly around you, you see {}, and {last}. Your task is to: {}",
            rest.join(", "),
            TASKS.choose(&mut rng).expect("six tasks")
        );
        if seen.insert(text.clone()) {
            out.push(text);
        }
    }
    out
}

fn main() {
    let quick = std::env::var_os("G2PO_BENCH_QUICK").is_some();
    let mut criterion = Criterion::default().without_plots().configure_from_args().sample_size(10);
    if quick {
        criterion = criterion.warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2));
    }
    let texts = observations(8000, 11);
    let mean_len = texts.iter().map(|t| t.chars().count()).sum::<usize>() as f64 / texts.len() as f64;
    for threshold in [0.95, 0.9] {
        let (_, clusters) = cluster(texts.iter().map(String::as_str), threshold);
        eprintln!("8000 texts, mean {mean_len:.0} chars, threshold {threshold}: {clusters} clusters");
    }

    let mut group = criterion.benchmark_group("similarity/cluster");
    for n in [2000, 8000] {
        for threshold in [0.95, 0.9] {
            group.bench_with_input(BenchmarkId::new(format!("t={threshold}"), n), &n, |b, &n| {
                b.iter(|| cluster(texts[..n].iter().map(String::as_str), threshold))
            });
        }
    }
    group.finish();

    // The same texts through the estimator: one task group of 8,000 rows
    // (160 rollouts of 50 steps), GiGPO with similarity grouping.
    let mut builder = g2po::RolloutBatch::builder();
    for (r, chunk) in texts.chunks(50).enumerate() {
        let reward = if r % 3 == 0 { 10.0 } else { 0.0 };
        let last = chunk.len() - 1;
        let steps = chunk.iter().enumerate().map(|(t, text)| Step {
            anchor: Anchor::Text(text),
            reward: if t == last { reward } else { 0.0 },
            valid: true,
            response_len: 8,
        });
        builder.push_trajectory("g", &format!("r{r}"), reward, steps).expect("valid rollout");
    }
    let batch = builder.build().expect("valid batch");
    let estimator = Estimator::new(EstimatorConfig {
        grouping: Grouping::Similarity { threshold: 0.95 },
        ..EstimatorConfig::new(EstimatorKind::Gigpo)
    })
    .expect("valid config");
    let mut group = criterion.benchmark_group("similarity/gigpo_estimate");
    group
        .bench_function("one group of 8000 rows, t=0.95", |b| b.iter(|| estimator.estimate(&batch).expect("estimate")));
    group.finish();
    criterion.final_summary();

    if std::env::var_os("G2PO_BENCH_UNPRUNED").is_some() {
        for n in [500, 2000] {
            let start = Instant::now();
            let plain = cluster_unpruned(texts[..n].iter().map(String::as_str), 0.95);
            let elapsed = start.elapsed();
            assert_eq!(plain, cluster(texts[..n].iter().map(String::as_str), 0.95));
            eprintln!("unpruned definition, {n} texts, t=0.95: {:.2} s (one run)", elapsed.as_secs_f64());
        }
    }
}
