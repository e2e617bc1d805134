//! `g2po train` writes one JSONL line per iteration; bad input is a clear error.
#![cfg(feature = "cli")]

use std::process::Command;

#[test]
fn train_writes_one_jsonl_line_per_iteration() {
    let log = std::env::temp_dir().join(format!("g2po-train-cli-{}.jsonl", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_g2po"))
        .args(["train", "--env", "chain", "--estimator", "gigpo", "--curriculum", "stepwise:4,6@1"])
        .args(["--iterations", "3", "--tasks", "1", "--rollouts", "4", "--eval-tasks", "1", "--log"])
        .arg(&log)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    let horizons: Vec<u64> = lines.iter().map(|l| l["horizon"].as_u64().unwrap()).collect();
    assert_eq!(horizons, vec![4, 6, 6]);
    for l in &lines {
        assert!(l["update"]["grad_norm"].as_f64().unwrap().is_finite());
        // The diagnostics sit flat in `update` (the log format readers rely on).
        assert!(l["update"]["policy_loss"].is_number() && l["update"]["clip_fraction"].is_number());
        assert!(l["update"]["approx_kl_old_k3"].as_f64().unwrap() >= 0.0);
        assert!(l["truth"]["pearson"].is_number());
        assert!(l["eval_success"].is_number());
    }
    std::fs::remove_file(log).ok();
}

#[test]
fn train_rejects_bad_input_with_a_message() {
    // (arguments, a word the message must contain). Exit code 2 is the CLI's
    // usage-error code (clap's and ours); a panic would exit 101.
    for (args, word) in [
        (vec!["train", "--env", "maze"], "maze"),
        (vec!["train", "--curriculum", "zigzag:3"], "zigzag"),
        (vec!["train", "--env", "chain", "--temperature", "0", "--iterations", "1"], "temperature"),
        (vec!["train", "--env", "chain", "--rollouts", "0", "--iterations", "1"], "rollouts"),
        (vec!["train", "--env", "household-small", "--eval-on-train-pool", "--iterations", "1"], "pool"),
        (vec!["train", "--env", "household-small", "--task-pool", "0", "--iterations", "1"], "pool"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_g2po")).args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
        assert!(stderr.contains(word), "{args:?}: the message does not name `{word}`: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn train_on_the_small_household_with_a_task_pool() {
    let log = std::env::temp_dir().join(format!("g2po-train-cli-pool-{}.jsonl", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_g2po"))
        .args(["train", "--env", "household-small", "--task-pool", "2", "--eval-on-train-pool", "--eval-tasks", "2"])
        .args(["--iterations", "2", "--tasks", "1", "--rollouts", "2", "--curriculum", "fixed:6", "--log"])
        .arg(&log)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.lines().count(), 2);
    std::fs::remove_file(log).ok();
}
