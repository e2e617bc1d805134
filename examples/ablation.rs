//! The estimator ablation as a library call (same as `g2po ablate`).
//!
//! `cargo run --release --example ablation -- [OUT] [SEEDS] [--quick] [--setting NAME]...`
//!
//! `--setting NAME` keeps only the named settings of the standard ablation
//! (repeatable); the exact-truth table is computed either way.

use g2po::train::{AblationConfig, retain_freed_memory, run_ablation};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // As `g2po ablate` does: the learner's large tensors would otherwise be
    // re-faulted from the kernel on every allocation.
    retain_freed_memory();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let mut only = Vec::new();
    let mut rest: Vec<&String> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => {}
            "--setting" => only.push(it.next().ok_or("--setting needs a name")?.clone()),
            _ => rest.push(a),
        }
    }
    let out = rest.first().map_or("results/ablation", |s| s.as_str()).into();
    let seeds = rest.get(1).map(|s| s.parse()).transpose()?.unwrap_or(10);
    let mut cfg = AblationConfig::standard(out, seeds, quick);
    if !only.is_empty() {
        if let Some(unknown) = only.iter().find(|n| !cfg.settings.iter().any(|s| &s.name == *n)) {
            let names: Vec<&str> = cfg.settings.iter().map(|s| s.name.as_str()).collect();
            return Err(format!("unknown setting {unknown:?} (expected one of {})", names.join(", ")).into());
        }
        cfg.settings.retain(|s| only.contains(&s.name));
    }
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
