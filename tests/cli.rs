//! The `g2po` binary end to end: advantages with --check on every vector file,
//! JSONL in and out, graph export, errors as exit codes with `file:LINE`
//! messages, outputs that are written whole or not at all, and the README's
//! command-line examples on the shipped `examples/rollouts.jsonl`.
#![cfg(feature = "cli")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_g2po"))
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn vectors_dir() -> PathBuf {
    std::env::var_os("G2PO_VECTORS").map(PathBuf::from).unwrap_or_else(|| manifest_dir().join("../shared/vectors"))
}

/// A folder of its own per test, removed when the test ends (also on panic).
fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("a temporary folder")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// One JSONL row; `extra` is spliced in before the closing brace.
fn row(traj: &str, step: u32, obs: &str, episode_reward: f64, extra: &str) -> String {
    format!(
        r#"{{"group": "g", "traj": "{traj}", "step": {step}, "obs": "{obs}", "reward": 0, "episode_reward": {episode_reward}, "is_action_valid": true, "response_len": 2{extra}}}"#
    )
}

fn good_rows() -> String {
    [row("a", 0, "s0", 10.0, ""), row("a", 1, "s1", 10.0, ""), row("b", 0, "s0", 0.0, "")].join("\n") + "\n"
}

/// Files in `dir` other than `keep`: what a failed write must not leave.
fn leftovers(dir: &Path, keep: &[&str]) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !keep.contains(&name.as_str()))
        .collect()
}

#[test]
fn check_passes_on_every_vector_file() {
    let dir = tempdir();
    let mut checked = 0;
    for entry in std::fs::read_dir(vectors_dir()).expect("vectors folder") {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let out = dir.path().join("check.jsonl");
        let status =
            bin().args(["advantages", "--check", "--input"]).arg(&path).arg("--output").arg(&out).output().unwrap();
        let stderr = stderr(&status);
        assert!(status.status.success(), "{}: {stderr}", path.display());
        assert!(stderr.contains("PASS"), "{stderr}");
        let rows = std::fs::read_to_string(&out).unwrap().lines().count();
        assert!(rows > 0);
        checked += 1;
    }
    assert!(checked > 0);
}

#[test]
fn failed_check_names_the_rows_and_fields_that_disagree() {
    let path = vectors_dir().join("g2po_mean_std_norm_random.json");
    let status = bin()
        .args(["advantages", "--check", "--step-weight", "0.5", "--output", "-", "--input"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = stderr(&status);
    assert_eq!(status.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("FAIL"), "{stderr}");
    // Each disagreement: the file and line of the row, the field, expected
    // against computed.
    let detail = stderr
        .lines()
        .find(|l| l.contains("expected") && l.contains("computed") && l.contains("advantage"))
        .unwrap_or_else(|| panic!("no detail line in {stderr}"));
    let location = format!("{}:", path.display());
    assert!(detail.trim_start().starts_with(&location), "{detail}");
    assert!(detail.contains("(row "), "{detail}");
}

#[test]
fn check_on_jsonl_fails_before_writing_anything() {
    let dir = tempdir();
    let input = dir.path().join("rows.jsonl");
    std::fs::write(&input, good_rows()).unwrap();
    let output = dir.path().join("out.jsonl");
    let out =
        bin().args(["advantages", "--check", "--input"]).arg(&input).arg("--output").arg(&output).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--check needs a conformance-vector file"), "{}", stderr(&out));
    assert!(!output.exists());
    assert_eq!(leftovers(dir.path(), &["rows.jsonl"]), Vec::<String>::new());
}

#[test]
fn jsonl_in_jsonl_out_in_input_order() {
    let dir = tempdir();
    let input = dir.path().join("rows.jsonl");
    let rows = [
        row("b", 0, "s0", 0.0, ""),
        row("a", 0, "s0", 10.0, ""),
        r#"{"group": "g", "traj": "a", "step": 1, "obs": "s1", "reward": 10, "episode_reward": 10, "is_action_valid": true, "response_len": 1}"#.to_owned(),
    ];
    std::fs::write(&input, rows.join("\n")).unwrap();
    let out = bin().args(["advantages", "--estimator", "gigpo", "--input"]).arg(&input).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    // Row 0 (failed trajectory) is below row 1 (successful one) in the same state.
    assert!(lines[0]["advantage"].as_f64().unwrap() < lines[1]["advantage"].as_f64().unwrap());
    assert_eq!(lines[0]["step_group"], lines[1]["step_group"]);

    // G2PO's output carries where each step leads and that place's value.
    let out = bin().args(["advantages", "--estimator", "g2po", "--input"]).arg(&input).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let lines: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let field = |row: usize, name: &str| lines[row][name].as_f64().unwrap_or_else(|| panic!("row {row}: no {name}"));
    assert_eq!((field(0, "next_node"), field(0, "next_value")), (-2.0, 0.0)); // failure terminal
    assert_eq!(field(1, "next_node"), field(2, "node"));
    assert_eq!(field(1, "next_value"), field(2, "node_value"));
    assert_eq!((field(2, "next_node"), field(2, "next_value")), (-1.0, 10.0)); // success terminal
}

#[test]
fn output_equal_to_input_is_refused_by_any_path() {
    let dir = tempdir();
    let input = dir.path().join("rows.jsonl");
    std::fs::write(&input, good_rows()).unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let mut same = vec![
        input.clone(),
        dir.path().join(".").join("rows.jsonl"),
        dir.path().join("sub").join("..").join("rows.jsonl"),
    ];
    let hard = dir.path().join("hard.jsonl");
    std::fs::hard_link(&input, &hard).unwrap();
    same.push(hard);
    #[cfg(unix)]
    {
        let link = dir.path().join("link.jsonl");
        std::os::unix::fs::symlink(&input, &link).unwrap();
        same.push(link);
    }
    for output in &same {
        for command in [&["advantages"][..], &["graph", "--group", "g"][..]] {
            let out = bin().args(command).arg("--input").arg(&input).arg("--output").arg(output).output().unwrap();
            assert_eq!(out.status.code(), Some(2), "{command:?} {}: {}", output.display(), stderr(&out));
            assert!(stderr(&out).contains("is the input file"), "{}", stderr(&out));
            assert_eq!(std::fs::read_to_string(&input).unwrap(), good_rows(), "the rollouts were touched");
        }
    }
    // A different file is fine, and the input is left as it was.
    let out =
        bin().args(["advantages", "--input"]).arg(&input).arg("--output").arg(dir.path().join("adv.jsonl")).output();
    assert!(out.unwrap().status.success());
    assert_eq!(std::fs::read_to_string(&input).unwrap(), good_rows());
}

#[test]
fn a_failed_run_leaves_the_old_output_and_no_temporary_file() {
    let dir = tempdir();
    let input = dir.path().join("rows.jsonl");
    // Row 3's action is invalid, so the penalty applies.
    let rows = good_rows().replacen(
        "\"is_action_valid\": true, \"response_len\": 2}\n",
        "\"is_action_valid\": false, \"response_len\": 2}\n",
        3,
    );
    let rows = rows.replacen("\"is_action_valid\": false", "\"is_action_valid\": true", 2);
    assert_eq!(rows.matches("false").count(), 1);
    std::fs::write(&input, &rows).unwrap();
    let output = dir.path().join("adv.jsonl");
    std::fs::write(&output, "old\n").unwrap();
    // An output that would not be finite: refused before anything is written
    // (by the parameter check, or by the writer, which never writes `null`).
    for flags in [&["--step-weight", "1e308"][..], &["--invalid-penalty=-1e300", "--mode", "mean_norm"][..]] {
        let out = bin().args(["advantages", "--input"]).arg(&input).arg("--output").arg(&output).args(flags).output();
        let out = out.unwrap();
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {}", stderr(&out));
        assert_eq!(std::fs::read_to_string(&output).unwrap(), "old\n");
        assert_eq!(leftovers(dir.path(), &["rows.jsonl", "adv.jsonl"]), Vec::<String>::new());
    }
    // A successful run replaces it whole, with the old file's permissions.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&output, std::fs::Permissions::from_mode(0o640)).unwrap();
    }
    let out = bin().args(["advantages", "--input"]).arg(&input).arg("--output").arg(&output).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(&output).unwrap();
    assert_eq!(text.lines().count(), 3);
    assert!(!text.contains("null"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&output).unwrap().permissions().mode() & 0o777, 0o640);
    }
    assert_eq!(leftovers(dir.path(), &["rows.jsonl", "adv.jsonl"]), Vec::<String>::new());
}

#[test]
fn row_errors_say_file_and_line() {
    let dir = tempdir();
    let input = dir.path().join("rows.jsonl");
    // Line 2 is blank; line 4 repeats trajectory a's step 0 from line 1.
    let text = [row("a", 0, "s0", 10.0, ""), String::new(), row("b", 0, "s0", 0.0, ""), row("a", 0, "s1", 10.0, "")];
    std::fs::write(&input, text.join("\n")).unwrap();
    let out = bin().args(["advantages", "--input"]).arg(&input).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let want = format!("error: {}:4: trajectory \"a\" step 0 already appeared on line 1", input.display());
    assert_eq!(stderr(&out).trim_end(), want);
    // A missing field, at its line, with no 0-based row index.
    std::fs::write(&input, format!("{}\n{}\n", row("a", 0, "s0", 0.0, ""), r#"{"group": "g", "traj": "c"}"#)).unwrap();
    let out = bin().args(["advantages", "--input"]).arg(&input).output().unwrap();
    assert_eq!(stderr(&out).trim_end(), format!("error: {}:2: missing field \"step\"", input.display()));
}

#[test]
fn messages_say_what_was_expected() {
    let dir = tempdir();
    let input = dir.path().join("rows.json");
    let run = |text: &str| {
        std::fs::write(&input, text).unwrap();
        let out = bin().args(["advantages", "--input"]).arg(&input).output().unwrap();
        (out.status.code(), stderr(&out))
    };
    let leaks = ["untagged enum", "RawRow", "variant"];
    let cases: [(String, &str); 5] = [
        (format!("[{}]", row("a", 0, "s", 0.0, "")), "JSON array; expected JSONL (one row object per line)"),
        (
            row("a", 0, "s", 0.0, "").replace("\"g\"", "1.5"),
            "field \"group\" must be a string or an integer, got the number 1.5",
        ),
        ("5\n".into(), "expected a row object such as {\"group\""),
        (row("a", 0, "s", 0.0, ", \"key\": 7"), ":1: both \"obs\" and \"key\" are given"),
        (row("a", 0, "s", 0.0, "").replace(", \"response_len\": 2", ""), ":1: missing field \"response_len\""),
    ];
    for (text, want) in &cases {
        let (code, message) = run(text);
        assert_eq!(code, Some(2), "{text}: {message}");
        assert!(message.contains(want), "{text}: {message}");
        assert!(leaks.iter().all(|l| !message.contains(l)), "{message}");
        assert!(message.contains(&format!("{}:", input.display())), "{message}");
    }
    // A UTF-8 byte order mark is accepted, in JSONL and in a vector file.
    let (code, message) = run(&format!("\u{feff}{}", good_rows()));
    assert_eq!(code, Some(0), "{message}");
    let vector = std::fs::read_to_string(vectors_dir().join("g2po_mean_norm_random.json")).unwrap();
    std::fs::write(&input, format!("\u{feff}{vector}")).unwrap();
    let out = bin().args(["advantages", "--check", "--output", "-", "--input"]).arg(&input).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn summary_computes_only_what_it_prints() {
    let dir = tempdir();
    let input = dir.path().join("rows.jsonl");
    std::fs::write(&input, good_rows()).unwrap();
    let summary = |flags: &[&str]| {
        let out = bin().args(["advantages", "--output", "-", "--input"]).arg(&input).args(flags).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        stderr(&out)
    };
    assert_eq!(summary(&["--summary-groups", "0"]), "");
    // GRPO has no states: the summary says what GRPO used, nothing more.
    let grpo = summary(&["--estimator", "grpo"]);
    assert!(grpo.contains("group g: 3 rows, 2 trajectories") && !grpo.contains("states"), "{grpo}");
    let gigpo = summary(&["--estimator", "gigpo"]);
    assert!(gigpo.contains("2 step groups") && !gigpo.contains("edges"), "{gigpo}");
    let g2po = summary(&[]);
    assert!(g2po.contains("2 states") && g2po.contains("edges"), "{g2po}");
}

#[test]
fn graph_exports_dot_and_json_and_rejects_other_estimators() {
    let path = vectors_dir().join("g2po_mean_std_norm_edge_cases.json");
    let dot = bin().args(["graph", "--group", "Ae-mixed", "--input"]).arg(&path).output().unwrap();
    assert!(dot.status.success());
    let dot = String::from_utf8(dot.stdout).unwrap();
    assert!(dot.starts_with("digraph") && dot.contains("->"));
    let json = bin().args(["graph", "--group", "Ae-mixed", "--format", "json", "--input"]).arg(&path).output().unwrap();
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(value["group"], "Ae-mixed");
    assert!(value["stats"]["states"].as_u64().unwrap() > 0);
    for other in ["grpo", "gigpo"] {
        let out = bin().args(["graph", "--group", "Ae-mixed", "--estimator", other, "--input"]).arg(&path).output();
        let out = out.unwrap();
        assert_eq!(out.status.code(), Some(2));
        assert!(stderr(&out).contains("draws G2PO's state graph"), "{}", stderr(&out));
        assert!(out.stdout.is_empty());
    }
    let explicit = bin().args(["graph", "--group", "Ae-mixed", "--estimator", "g2po", "--input"]).arg(&path).output();
    assert!(explicit.unwrap().status.success());

    // From JSONL, the nodes are labelled with their observations (the graph
    // reads texts even where `advantages` hashes them while parsing).
    let rows = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/rollouts.jsonl");
    let dot = bin().args(["graph", "--group", "task-3", "--input"]).arg(&rows).output().unwrap();
    assert!(dot.status.success(), "{}", stderr(&dot));
    assert!(String::from_utf8(dot.stdout).unwrap().contains("label=\"You are in the hallway."));
}

#[test]
fn errors_are_reported_with_exit_code_2() {
    let dir = tempdir();
    let input = dir.path().join("bad.jsonl");
    std::fs::write(&input, "{\"group\": \"g\", \"traj\": \"t\", \"step\": 0, \"obs\": \"s\", \"reward\": 0,\n")
        .unwrap();
    let out = bin().args(["advantages", "--input"]).arg(&input).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("bad.jsonl:1: the line ends inside the row object"), "{}", stderr(&out));
    let unknown = bin()
        .args(["graph", "--group", "nope", "--input"])
        .arg(vectors_dir().join("g2po_mean_norm_random.json"))
        .output()
        .unwrap();
    assert_eq!(unknown.status.code(), Some(2));
    assert!(stderr(&unknown).contains("unknown group"));
}

#[test]
fn negative_numbers_are_values() {
    let dir = tempdir();
    let input = dir.path().join("rows.jsonl");
    std::fs::write(&input, good_rows()).unwrap();
    let out = bin().args(["advantages", "--invalid-penalty", "-0.5", "--input"]).arg(&input).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // Parsed as a value, then refused by the range check, which names it.
    for gamma in [["--gamma", "-1"].as_slice(), &["--gamma=-1"]] {
        let out = bin().arg("advantages").args(gamma).arg("--input").arg(&input).output().unwrap();
        let stderr = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("gamma") && !stderr.contains("unexpected argument"), "{stderr}");
    }
}

#[test]
fn train_arguments_are_checked_in_user_terms() {
    let out = bin().args(["train", "--env", "nope"]).output().unwrap();
    let stderr_text = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr_text}");
    for name in ["chain", "lost-robot", "household", "household-small", "low-overlap"] {
        assert!(stderr_text.contains(name), "{name} missing: {stderr_text}");
    }
    for flag in ["--tasks", "--rollouts", "--iterations", "--eval-horizon", "--task-pool"] {
        let out = bin().args(["train", "--env", "chain", flag, "0"]).output().unwrap();
        let stderr = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(flag) && stderr.contains("at least 1"), "{flag}: {stderr}");
        assert!(!stderr.contains("_per_") && !stderr.contains("task_pool"), "{flag}: internal names: {stderr}");
    }
    // A negative value reaches the range check instead of reading as a flag.
    let out = bin().args(["train", "--env", "chain", "--iterations", "1", "--temperature", "-1"]).output().unwrap();
    let stderr = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("temperature") && !stderr.contains("unexpected argument"), "{stderr}");
}

#[test]
fn train_on_cuda_without_the_feature_is_a_clear_error() {
    let out = bin().args(["train", "--env", "chain", "--iterations", "1", "--device", "cuda"]).output().unwrap();
    let stderr = stderr(&out);
    // A cuda build may have a GPU; this checks the default, CPU-only build.
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

// ---------------------------------------------------------------- README

/// The `advantages` and `graph` commands of the README's "Command line"
/// section, as written there.
fn readme_commands() -> Vec<String> {
    let readme = std::fs::read_to_string(manifest_dir().join("README.md")).unwrap();
    let section = readme.split("\n## Command line").nth(1).expect("a \"Command line\" section");
    let section = section.split("\n## ").next().unwrap();
    let block = section.split("```sh\n").nth(1).expect("a sh block").split("```").next().unwrap();
    block
        .lines()
        .filter(|l| l.starts_with("cargo run --release -- advantages") || l.starts_with("cargo run --release -- graph"))
        .map(str::to_owned)
        .collect()
}

/// A README path, where this checkout has it: the vectors may live in the
/// repository or beside it.
fn resolve(arg: &str) -> PathBuf {
    let path = manifest_dir().join(arg);
    if path.exists() {
        return path;
    }
    let name = Path::new(arg).file_name().unwrap();
    for dir in [manifest_dir().join("tests/data/vectors"), vectors_dir()] {
        if dir.join(name).exists() {
            return dir.join(name);
        }
    }
    path
}

#[test]
fn readme_command_line_examples_run_as_written() {
    let commands = readme_commands();
    assert!(commands.len() >= 3, "{commands:?}");
    assert!(commands.iter().any(|c| c.contains("examples/rollouts.jsonl") && c.contains("advantages")));
    assert!(commands.iter().any(|c| c.contains("graph") && c.contains("| dot")));
    let dir = tempdir();
    let has_dot = Command::new("dot").arg("-V").output().is_ok_and(|o| o.status.success());
    for command in &commands {
        let (g2po_part, rest) = command.split_once(" | ").map_or((command.as_str(), None), |(a, b)| (a, Some(b)));
        let args: Vec<&str> = g2po_part.trim_start_matches("cargo run --release -- ").split_whitespace().collect();
        let mut run = bin();
        run.current_dir(dir.path());
        let mut previous = "";
        for arg in &args {
            // Inputs are the repository's files; outputs land in the test's folder.
            if previous == "--input" {
                run.arg(resolve(arg));
            } else {
                run.arg(arg);
            }
            previous = arg;
        }
        let out = run.output().unwrap();
        assert!(out.status.success(), "{command}: {}", stderr(&out));
        if args.contains(&"--check") {
            assert!(stderr(&out).contains("PASS"), "{command}: {}", stderr(&out));
        }
        if let Some(pos) = args.iter().position(|a| *a == "--output") {
            let written = std::fs::read_to_string(dir.path().join(args[pos + 1])).unwrap();
            assert!(written.lines().count() > 100, "{command}: {} rows", written.lines().count());
        }
        if let Some(pipe) = rest {
            let dot = String::from_utf8(out.stdout).unwrap();
            assert!(dot.starts_with("digraph") && dot.contains("->"), "{command}");
            let (dot_command, target) = pipe.split_once(" > ").expect("dot ... > file");
            if has_dot {
                let mut words = dot_command.split_whitespace();
                let mut child = Command::new(words.next().unwrap())
                    .args(words)
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .unwrap();
                use std::io::Write;
                child.stdin.take().unwrap().write_all(dot.as_bytes()).unwrap();
                let image = child.wait_with_output().unwrap();
                assert!(image.status.success() && image.stdout.starts_with(b"\x89PNG"), "{pipe}");
                std::fs::write(dir.path().join(target.trim()), image.stdout).unwrap();
            } else {
                eprintln!("graphviz `dot` is not installed: checked the DOT text only for `{pipe}`");
            }
        }
    }
}

#[test]
fn shipped_rollouts_have_overlapping_states_in_every_group() {
    let input = g2po::io::read_path(manifest_dir().join("examples/rollouts.jsonl")).unwrap();
    let batch = &input.batch;
    assert!(batch.num_groups() >= 2 && batch.len() >= 100);
    let keys = g2po::keys::StateKeyer::new().batch_keys(batch);
    for group in 0..batch.num_groups() {
        let rows = batch.group_rows(group);
        let distinct: std::collections::HashSet<u64> = rows.iter().map(|&r| keys[r as usize]).collect();
        assert!(distinct.len() * 2 < rows.len(), "group {group}: {} states for {} rows", distinct.len(), rows.len());
        let rewards: std::collections::HashSet<u64> =
            rows.iter().map(|&r| batch.episode_rewards()[r as usize].to_bits()).collect();
        assert!(rewards.len() > 1, "group {group} has no success or no failure");
    }
    assert!(batch.group_ids().iter().any(|g| g == "task-7"), "the README draws group task-7");
}
