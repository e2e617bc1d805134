//! The exact-truth table alone: how close each estimator's advantages come to
//! the true `Q - V` on the chain and the lost robot at group sizes 4, 8, 16
//! (see `g2po::train::truth::TruthTableConfig`).
//!
//! `cargo run --release --example truth_table -- [SEEDS]` (default 10)

use g2po::train::truth::{TruthTableConfig, run_truth_table, truth_markdown};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let seeds = std::env::args().nth(1).map(|s| s.parse()).transpose()?.unwrap_or(10);
    let started = std::time::Instant::now();
    let rows = run_truth_table(&TruthTableConfig::standard(seeds))?;
    print!("{}", truth_markdown(&rows));
    eprintln!("{seeds} seeds in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
