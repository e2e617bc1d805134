//! The estimator ablation as a library call (same as `g2po ablate`).
//!
//! `cargo run --release --example ablation -- [OUT] [SEEDS] [--quick]`

use g2po::train::{AblationConfig, run_ablation};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let rest: Vec<&String> = args.iter().filter(|a| *a != "--quick").collect();
    let out = rest.first().map_or("results/ablation", |s| s.as_str()).into();
    let seeds = rest.get(1).map(|s| s.parse()).transpose()?.unwrap_or(10);
    let cfg = AblationConfig::standard(out, seeds, quick);
    let report = run_ablation(&cfg, |done, total| eprintln!("run {done}/{total} done"))?;
    for row in &report.summary {
        println!(
            "{:<24} {:<28} final {:.3} ± {:.3}  train {:.3} ± {:.3}  auc {:.3} ± {:.3}",
            row.setting,
            row.estimator,
            row.final_mean,
            row.final_ci,
            row.train_mean,
            row.train_ci,
            row.auc_mean,
            row.auc_ci
        );
    }
    for p in &report.paired {
        println!(
            "{:<24} {:<28} final - grpo {:+.3} ± {:.3}  train - grpo {:+.3} ± {:.3}  wins/losses/ties {}/{}/{}",
            p.setting,
            p.estimator,
            p.final_diff,
            p.final_ci,
            p.train_diff,
            p.train_ci,
            p.train_wins,
            p.train_losses,
            p.train_ties
        );
    }
    eprintln!("{} runs in {:.0} s", report.runs.len(), report.wall_s);
    Ok(())
}
