//! The `g2po` binary end to end: advantages with --check on every vector file,
//! JSONL in and out, graph export, and errors as exit codes.
#![cfg(feature = "cli")]

use std::path::PathBuf;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_g2po"))
}

fn vectors_dir() -> PathBuf {
    std::env::var_os("G2PO_VECTORS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/vectors"))
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("g2po-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn check_passes_on_every_vector_file() {
    let mut checked = 0;
    for entry in std::fs::read_dir(vectors_dir()).expect("vectors folder") {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let out = temp("check.jsonl");
        let status =
            bin().args(["advantages", "--check", "--input"]).arg(&path).arg("--output").arg(&out).output().unwrap();
        let stderr = String::from_utf8_lossy(&status.stderr);
        assert!(status.status.success(), "{}: {stderr}", path.display());
        assert!(stderr.contains("PASS"), "{stderr}");
        let rows = std::fs::read_to_string(&out).unwrap().lines().count();
        assert!(rows > 0);
        checked += 1;
    }
    assert!(checked > 0);
}

#[test]
fn check_fails_when_flags_change_the_estimator() {
    let path = vectors_dir().join("g2po_mean_std_norm_random.json");
    let status = bin()
        .args(["advantages", "--check", "--step-weight", "0.5", "--output", "-", "--input"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(status.status.code(), Some(1), "{}", String::from_utf8_lossy(&status.stderr));
    assert!(String::from_utf8_lossy(&status.stderr).contains("FAIL"));
}

#[test]
fn jsonl_in_jsonl_out_in_input_order() {
    let input = temp("rows.jsonl");
    let rows = [
        r#"{"group": "g", "traj": "b", "step": 0, "obs": "s0", "reward": 0, "episode_reward": 0, "is_action_valid": true, "response_len": 2}"#,
        r#"{"group": "g", "traj": "a", "step": 0, "obs": "s0", "reward": 0, "episode_reward": 10, "is_action_valid": true, "response_len": 3}"#,
        r#"{"group": "g", "traj": "a", "step": 1, "obs": "s1", "reward": 10, "episode_reward": 10, "is_action_valid": true, "response_len": 1}"#,
    ];
    std::fs::write(&input, rows.join("\n")).unwrap();
    let out = bin().args(["advantages", "--estimator", "gigpo", "--input"]).arg(&input).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    // Row 0 (failed trajectory) is below row 1 (successful one) in the same state.
    assert!(lines[0]["advantage"].as_f64().unwrap() < lines[1]["advantage"].as_f64().unwrap());
    assert_eq!(lines[0]["step_group"], lines[1]["step_group"]);
}

#[test]
fn graph_exports_dot_and_json() {
    let path = vectors_dir().join("g2po_mean_std_norm_edge_cases.json");
    let dot = bin().args(["graph", "--group", "Ae-mixed", "--input"]).arg(&path).output().unwrap();
    assert!(dot.status.success());
    let dot = String::from_utf8(dot.stdout).unwrap();
    assert!(dot.starts_with("digraph") && dot.contains("->"));
    let json = bin().args(["graph", "--group", "Ae-mixed", "--format", "json", "--input"]).arg(&path).output().unwrap();
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(value["group"], "Ae-mixed");
    assert!(value["stats"]["states"].as_u64().unwrap() > 0);
}

#[test]
fn errors_are_reported_with_exit_code_2() {
    let input = temp("bad.jsonl");
    std::fs::write(&input, "{\"group\": \"g\", \"traj\": \"t\", \"step\": 0, \"obs\": \"s\", \"reward\": 0,\n")
        .unwrap();
    let out = bin().args(["advantages", "--input"]).arg(&input).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.jsonl:1:"));
    let unknown = bin()
        .args(["graph", "--group", "nope", "--input"])
        .arg(vectors_dir().join("g2po_mean_norm_random.json"))
        .output()
        .unwrap();
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("unknown group"));
}

#[test]
fn train_on_cuda_without_the_feature_is_a_clear_error() {
    let out = bin().args(["train", "--env", "chain", "--iterations", "1", "--device", "cuda"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !cfg!(feature = "cuda") {
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("`cuda` feature"), "{stderr}");
    } else if !out.status.success() {
        // A cuda build trains on a GPU when there is one, and says why not otherwise.
        assert_ne!(std::env::var("G2PO_REQUIRE_GPU").as_deref(), Ok("1"), "no GPU training: {stderr}");
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("is not usable on this machine"), "{stderr}");
    }
    let bad = bin().args(["train", "--device", "tpu"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown device"));
}
