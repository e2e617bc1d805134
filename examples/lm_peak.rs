//! Peak resident memory of one SmolLM2 workload, in a process of its own
//! (the benchmark binary runs several, so its peak is theirs together).
//!
//! `cargo run --release --example lm_peak -- score|group-all|group-top4`
//! prints the resident set after loading the model and the peak after 3
//! repetitions of the workload (Linux `VmRSS` / `VmHWM`).

#[path = "../benchmarks/lm_common.rs"]
mod common;

use g2po::lm::{LmLearner, LoraConfig};

fn status_mb(field: &str) -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() {
    // As `g2po train` runs: freed blocks stay with the process instead of
    // being zero-filled again page by page on every step.
    g2po::train::retain_freed_memory();
    let which = std::env::args().nth(1).unwrap_or_else(|| "score".into());
    let base = common::load_base();
    let lora = match which.as_str() {
        "group-top4" => LoraConfig { top_layers: Some(4), ..LoraConfig::default() },
        "score" | "group-all" => LoraConfig::default(),
        other => panic!("unknown workload {other:?} (score, group-all, group-top4)"),
    };
    let p = common::policy(&base, lora);
    let (prompt, admissible) = common::decision(&p);
    let loaded = status_mb("VmRSS:");
    let start = std::time::Instant::now();
    if which == "score" {
        for _ in 0..3 {
            std::hint::black_box(p.score(&prompt, &admissible).unwrap());
        }
    } else {
        let batch = common::group_batch(&p, &prompt, &admissible);
        let mut learner = LmLearner::new(common::learner_config(), &p).unwrap();
        for _ in 0..3 {
            std::hint::black_box(learner.update(&p, None, &batch).unwrap());
        }
    }
    println!(
        "{which}: rss after load {loaded:.0} MB, peak {:.0} MB, 3 runs {:.2} s",
        status_mb("VmHWM:"),
        start.elapsed().as_secs_f64()
    );
}
