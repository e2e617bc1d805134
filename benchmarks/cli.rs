//! The command line's file path end to end: a JSONL rollout file in, a JSONL
//! advantages file out, split into read, estimate and write, plus the whole
//! `g2po advantages` process.
//!
//! Workload: the advantage benchmark's batch at G = 256 (256 groups x 8
//! rollouts x 50 steps = 102,400 rows, observations of about 270 characters;
//! `benchmarks/common`), written as JSONL (about 43 MB). G2PO with default
//! options.
//!
//! Run: `cargo bench --bench cli` (`G2PO_BENCH_QUICK=1` for a short run;
//! `G2PO_BENCH_WRITE_INPUT=rows.jsonl` only writes the input file there, for
//! profiling `g2po advantages` by hand).

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use criterion::Criterion;
use g2po::{AdvantageEstimator, Anchor, Estimator, EstimatorConfig, EstimatorKind, RolloutBatch};

#[path = "common/mod.rs"]
mod common;
use common::synthetic;

/// The batch's rows as JSONL, in the field names `g2po::io` reads.
fn write_rows(batch: &RolloutBatch, path: &std::path::Path) {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).expect("create the input file"));
    for row in 0..batch.len() {
        let Anchor::Text(obs) = batch.anchor(row) else { unreachable!("text anchors") };
        let line = serde_json::json!({
            "group": batch.group_ids()[batch.groups()[row] as usize],
            "traj": batch.traj_ids()[batch.trajectories()[row] as usize],
            "step": batch.steps()[row],
            "obs": obs,
            "reward": batch.rewards()[row],
            "episode_reward": batch.episode_rewards()[row],
            "is_action_valid": batch.valid()[row],
            "response_len": batch.response_lens()[row],
        });
        serde_json::to_writer(&mut out, &line).expect("write a row");
        out.write_all(b"\n").expect("write a row");
    }
    out.flush().expect("flush the input file");
}

fn main() {
    let quick = std::env::var_os("G2PO_BENCH_QUICK").is_some();
    let mut criterion = Criterion::default().without_plots().configure_from_args().sample_size(20);
    if quick {
        criterion =
            criterion.sample_size(10).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2));
    }
    let dir = tempfile::tempdir().expect("a temporary folder");
    let input = dir.path().join("rows.jsonl");
    let output = dir.path().join("advantages.jsonl");
    let batch = synthetic(256, false, &g2po::keys::StateKeyer::new());
    write_rows(&batch, &input);
    // For profiling the binary by hand: leave the input file and stop.
    if let Some(keep) = std::env::var_os("G2PO_BENCH_WRITE_INPUT") {
        std::fs::copy(&input, &keep).expect("copy the input file");
        eprintln!("wrote {}", std::path::Path::new(&keep).display());
        return;
    }
    let estimator = Estimator::new(EstimatorConfig::new(EstimatorKind::G2po)).expect("valid config");
    let parsed = g2po::io::read_path_keyed(&input, estimator.keyer()).expect("read");
    let adv = estimator.estimate(&parsed.batch).expect("estimate");
    // As the command line writes (its buffer lets the writer's windows pass
    // straight through), but in place: `File::create` truncates the last
    // iteration's file, which costs what replacing it costs the command.
    let write = |adv: &g2po::Advantages| {
        let mut out = std::io::BufWriter::with_capacity(64 << 10, std::fs::File::create(&output).expect("create"));
        g2po::io::write_jsonl(adv, &mut out).expect("write");
        out.flush().expect("flush");
    };
    write(&adv);
    eprintln!(
        "{} rows; input {:.1} MB, output {:.1} MB",
        batch.len(),
        std::fs::metadata(&input).unwrap().len() as f64 / 1e6,
        std::fs::metadata(&output).unwrap().len() as f64 / 1e6
    );

    let mut group = criterion.benchmark_group("cli/G=256");
    // What the command line does for an exact-key estimator: texts hashed
    // while parsing. `read_texts` keeps the texts in the batch.
    let keyer = estimator.keyer();
    group.bench_function("read", |b| b.iter(|| g2po::io::read_path_keyed(&input, keyer).expect("read")));
    group.bench_function("read_texts", |b| b.iter(|| g2po::io::read_path(&input).expect("read")));
    group.bench_function("estimate", |b| b.iter(|| estimator.estimate(&parsed.batch).expect("estimate")));
    group.bench_function("write", |b| b.iter(|| write(&adv)));
    group.bench_function("read_estimate_write", |b| {
        b.iter(|| {
            let input = g2po::io::read_path_keyed(&input, keyer).expect("read");
            write(&estimator.estimate(&input.batch).expect("estimate"));
        })
    });
    let run = || {
        let status = Command::new(env!("CARGO_BIN_EXE_g2po"))
            .args(["advantages", "--summary-groups", "0", "--input"])
            .arg(&input)
            .arg("--output")
            .arg(&output)
            .status()
            .expect("run g2po");
        assert!(status.success());
    };
    // The output replaces the last iteration's (the old file's pages and
    // blocks are freed inside the command's rename)...
    group.bench_function("process", |b| b.iter(run));
    // ...or is new: the old one is deleted outside the timing.
    group.bench_function("process_new_output", |b| {
        b.iter_batched(
            || {
                let _ = std::fs::remove_file(&output);
            },
            |()| run(),
            criterion::BatchSize::PerIteration,
        )
    });
    group.finish();
    criterion.final_summary();
}
