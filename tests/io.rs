//! File reading and writing at scale: mapped large files, texts hashed while
//! parsing (`io::read_path_keyed`), the UTF-8 check per chunk, the windows of
//! chunks read in parallel with the fast row scanner, and the
//! pipelined JSONL writer, each against the plain path it must equal.

use std::io::Write;

use g2po::keys::StateKeyer;
use g2po::{AdvantageEstimator, Error, Estimator, EstimatorConfig, EstimatorKind, Grouping};
use serde_json::Value;

const EXAMPLE_ROWS: &str = include_str!("../examples/rollouts.jsonl");

/// The example rollouts repeated under renamed groups and trajectories until
/// the text is at least `bytes` long.
fn repeated_rows(bytes: usize) -> String {
    let mut out = String::new();
    let mut copy = 0;
    while out.len() < bytes {
        for line in EXAMPLE_ROWS.lines() {
            let mut row: Value = serde_json::from_str(line).unwrap();
            for field in ["group", "traj"] {
                let id = row[field].as_str().unwrap().to_owned();
                row[field] = Value::String(format!("copy{copy}/{id}"));
            }
            out.push_str(&row.to_string());
            out.push('\n');
        }
        copy += 1;
    }
    out
}

fn write_file(dir: &tempfile::TempDir, name: &str, text: &[u8]) -> std::path::PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn keyed_reading_estimates_like_reading_texts() {
    let dir = tempfile::tempdir().unwrap();
    // Over the size from which files are mapped, and several parse chunks.
    let text = repeated_rows(3 << 20);
    let path = write_file(&dir, "rows.jsonl", text.as_bytes());
    for text_env in [false, true] {
        for kind in [EstimatorKind::G2po, EstimatorKind::Gigpo, EstimatorKind::Grpo, EstimatorKind::G2poTree] {
            let keyer = if text_env { StateKeyer::text_env() } else { StateKeyer::new() };
            let estimator = Estimator::new(EstimatorConfig::new(kind)).unwrap().with_keyer(keyer);
            let keyed = g2po::io::read_path_keyed(&path, estimator.keyer()).unwrap();
            let texts = g2po::io::read_path(&path).unwrap();
            assert!(!keyed.batch.has_text() && texts.batch.has_text());
            assert_eq!(keyed.batch.len(), texts.batch.len());
            assert_eq!(keyed.line(keyed.batch.len() - 1), texts.line(texts.batch.len() - 1));
            let want = estimator.estimate(&texts.batch).unwrap();
            assert_eq!(estimator.estimate(&keyed.batch).unwrap(), want, "{kind:?}");
            // And the same keys the estimator would compute from the texts.
            let keys = keyed.batch.keys().unwrap();
            for row in [0, 1, keyed.batch.len() / 2, keyed.batch.len() - 1] {
                let g2po::Anchor::Text(obs) = texts.batch.anchor(row) else { panic!("text") };
                assert_eq!(keys[row], estimator.keyer().key(obs));
            }
        }
    }
}

#[test]
fn a_mapped_file_parses_like_its_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let text = repeated_rows(2 << 20);
    let path = write_file(&dir, "rows.jsonl", text.as_bytes());
    let mapped = g2po::io::read_path(&path).unwrap();
    let parsed = g2po::io::parse_str(&text, "rows.jsonl").unwrap();
    let estimator = Estimator::new(EstimatorConfig::new(EstimatorKind::G2po)).unwrap();
    assert_eq!(mapped.batch.len(), parsed.batch.len());
    assert_eq!(mapped.batch.group_ids(), parsed.batch.group_ids());
    assert_eq!(mapped.batch.traj_ids(), parsed.batch.traj_ids());
    assert_eq!(estimator.estimate(&mapped.batch).unwrap(), estimator.estimate(&parsed.batch).unwrap());
}

/// Rows spelled as Python's `json.dumps` writes them (spaces after `:` and
/// `,`), with an escape, a `null` and an unknown nested field here and there:
/// the fast row scanner reads some lines, serde_json the others.
fn respelled(text: &str) -> String {
    let mut out = String::new();
    for (n, line) in text.lines().enumerate() {
        let mut row: Value = serde_json::from_str(line).unwrap();
        match n % 4 {
            0 => row["obs"] = Value::String(format!("{} \"quoted\"\tand tabbed", row["obs"].as_str().unwrap())),
            1 => row["extra"] = serde_json::json!({"nested": [1, 2]}),
            2 => row["key"] = Value::Null,
            _ => {}
        }
        out.push_str(&serde_json::to_string_pretty(&row).unwrap().replace('\n', ""));
        out.push('\n');
    }
    out
}

#[test]
fn windows_of_chunks_read_like_one_pass_whatever_the_spelling_and_the_pool() {
    // Enough lines for several windows of chunks on two threads.
    let text = repeated_rows(12 << 20);
    let dir = tempfile::tempdir().unwrap();
    let estimator = Estimator::new(EstimatorConfig::new(EstimatorKind::G2po)).unwrap();
    let compact = write_file(&dir, "compact.jsonl", text.as_bytes());
    let spaced = write_file(&dir, "spaced.jsonl", respelled(&text).as_bytes());
    let reference = g2po::io::read_path(&compact).unwrap();
    assert!(reference.batch.len() > 40_000, "{} rows", reference.batch.len());
    let expected = estimator.estimate(&reference.batch).unwrap();
    for threads in [1, 2, 3] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        for path in [&compact, &spaced] {
            let input = pool.install(|| g2po::io::read_path(path)).unwrap();
            assert_eq!(input.batch.group_ids(), reference.batch.group_ids());
            assert_eq!(input.batch.traj_ids(), reference.batch.traj_ids());
            assert_eq!(input.batch.steps(), reference.batch.steps());
            assert_eq!(input.batch.episode_rewards(), reference.batch.episode_rewards());
            let last = input.batch.len() - 1;
            assert_eq!(input.line(last), reference.line(last));
            // The respelled observations differ, so only the compact file
            // gives the same states.
            if path == &compact {
                assert_eq!(estimator.estimate(&input.batch).unwrap(), expected);
            }
        }
    }
}

#[test]
fn the_first_problem_in_the_file_is_reported_whichever_window_finds_it() {
    let text = repeated_rows(12 << 20);
    let lines: Vec<&str> = text.lines().collect();
    let dir = tempfile::tempdir().unwrap();
    let (early, late) = (lines.len() / 3, lines.len() - 5);
    // A step out of order early (found by the batch builder) and a syntax
    // error late (found by the parser, possibly first): the early one wins.
    let mut rows: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    rows[early] = rows[early].replacen("\"step\":", "\"step\":1", 1);
    rows[late] = "{\"group\": ".to_owned();
    let path = write_file(&dir, "two.jsonl", rows.join("\n").as_bytes());
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        let err = pool.install(|| g2po::io::read_path_keyed(&path, &StateKeyer::new())).unwrap_err();
        assert!(err.to_string().starts_with(&format!("{}:{}:", path.display(), early + 1)), "{err}");
        assert!(matches!(err, Error::InFile { ref error, .. } if matches!(**error, Error::StepOutOfOrder { .. })));
    }
    // The syntax error alone is reported at its line.
    rows[early] = lines[early].to_owned();
    let path = write_file(&dir, "one.jsonl", rows.join("\n").as_bytes());
    let err = g2po::io::read_path(&path).unwrap_err();
    assert!(matches!(err, Error::Parse { line, .. } if line == late + 1), "{err}");
}

#[test]
fn keyed_reading_rejects_mixed_anchors_at_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let rows = [
        r#"{"group": "g", "traj": "a", "step": 0, "obs": "hall", "reward": 0, "episode_reward": 0, "is_action_valid": true, "response_len": 1}"#,
        r#"{"group": "g", "traj": "a", "step": 1, "key": 7, "reward": 0, "episode_reward": 0, "is_action_valid": true, "response_len": 1}"#,
    ];
    let path = write_file(&dir, "mixed.jsonl", rows.join("\n").as_bytes());
    let keyed = g2po::io::read_path_keyed(&path, &StateKeyer::new()).unwrap_err();
    let plain = g2po::io::read_path(&path).unwrap_err();
    assert_eq!(keyed.to_string(), plain.to_string());
    assert!(keyed.to_string().contains("mixed.jsonl:2:"), "{keyed}");
    assert!(matches!(keyed, Error::InFile { ref error, .. } if matches!(**error, Error::MixedAnchors { row: 1 })));
    // Keys first, then a text: the same.
    let path = write_file(
        &dir,
        "mixed2.jsonl",
        format!("{}\n{}", rows[1].replace("\"step\": 1", "\"step\": 0"), rows[0].replace("\"step\": 0", "\"step\": 1"))
            .as_bytes(),
    );
    let keyed = g2po::io::read_path_keyed(&path, &StateKeyer::new()).unwrap_err();
    assert_eq!(keyed.to_string(), g2po::io::read_path(&path).unwrap_err().to_string());
}

#[test]
fn similarity_needs_the_texts_a_keyed_batch_does_not_keep() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_file(&dir, "rows.jsonl", EXAMPLE_ROWS.as_bytes());
    let estimator = Estimator::new(EstimatorConfig {
        grouping: Grouping::Similarity { threshold: 0.95 },
        ..EstimatorConfig::new(EstimatorKind::Gigpo)
    })
    .unwrap();
    let keyed = g2po::io::read_path_keyed(&path, estimator.keyer()).unwrap();
    assert!(matches!(estimator.estimate(&keyed.batch), Err(Error::SimilarityNeedsText)));
    assert!(estimator.estimate(&g2po::io::read_path(&path).unwrap().batch).is_ok());
}

#[test]
fn invalid_utf8_is_a_parse_error_at_its_line_in_small_and_mapped_files() {
    let dir = tempfile::tempdir().unwrap();
    for size in [0, 2 << 20] {
        let mut text = repeated_rows(size).into_bytes();
        let bad_line = 1 + text.iter().filter(|&&b| b == b'\n').count();
        text.extend_from_slice(
            b"{\"group\": \"g\", \"traj\": \"t\", \"step\": 0, \"obs\": \"caf\xE9\", \"reward\": 0, \"episode_reward\": 0, \
              \"is_action_valid\": true, \"response_len\": 1}\n",
        );
        text.extend_from_slice(EXAMPLE_ROWS.lines().next().unwrap().as_bytes());
        let path = write_file(&dir, "bad.jsonl", &text);
        for err in
            [g2po::io::read_path(&path).unwrap_err(), g2po::io::read_path_keyed(&path, &StateKeyer::new()).unwrap_err()]
        {
            match err {
                Error::Parse { line, ref message, .. } => {
                    assert_eq!(line, bad_line, "{err}");
                    assert!(message.contains("column"), "{err}");
                }
                other => panic!("expected a parse error, got {other}"),
            }
        }
    }
}

/// A writer that fails after `room` bytes.
struct FailingWriter {
    room: usize,
}

impl Write for FailingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.room == 0 {
            return Err(std::io::Error::other("disk full"));
        }
        let n = buf.len().min(self.room);
        self.room -= n;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn pipelined_writing_equals_the_rows_and_stops_at_a_writer_error() {
    // Enough rows for several windows of formatted chunks.
    let text = repeated_rows(12 << 20);
    let input = g2po::io::parse_str(&text, "rows.jsonl").unwrap();
    let estimator = Estimator::new(EstimatorConfig::new(EstimatorKind::G2po)).unwrap();
    let adv = estimator.estimate(&input.batch).unwrap();
    assert!(adv.len() > 40_000, "{} rows", adv.len());
    let mut out = Vec::new();
    g2po::io::write_jsonl(&adv, &mut out).unwrap();
    let lines: Vec<&str> = std::str::from_utf8(&out).unwrap().lines().collect();
    assert_eq!(lines.len(), adv.len());
    for row in (0..adv.len()).step_by(997).chain([adv.len() - 1]) {
        let written: Value = serde_json::from_str(lines[row]).unwrap();
        assert_eq!(written, g2po::io::row_json(&adv, row), "row {row}");
    }
    // The same bytes whatever the pool size.
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let mut single = Vec::new();
    one.install(|| g2po::io::write_jsonl(&adv, &mut single)).unwrap();
    assert_eq!(single, out);
    for room in [0, 100, out.len() / 2] {
        let err = g2po::io::write_jsonl(&adv, FailingWriter { room }).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
    }
}

#[test]
fn ids_read_from_a_file_equal_the_builders_whatever_their_order() {
    use g2po::{Anchor, RolloutBatch, StepRow};
    // Rows a trajectory at a time, then interleaved, then a trajectory
    // repeated right after itself under another group (an error).
    let rows: Vec<(&str, &str, u32)> = vec![
        ("g1", "a", 0),
        ("g1", "a", 1),
        ("g1", "b", 0),
        ("g2", "c", 0),
        ("g1", "b", 1),
        ("g2", "c", 1),
        ("g2", "d", 0),
        ("g1", "a", 2),
        ("g2", "d", 1),
    ];
    let line = |(g, t, s): (&str, &str, u32)| {
        format!(
            r#"{{"group": "{g}", "traj": "{t}", "step": {s}, "key": {s}, "reward": 0, "episode_reward": 0, "is_action_valid": true, "response_len": 1}}"#
        )
    };
    let text: Vec<String> = rows.iter().copied().map(line).collect();
    let read = g2po::io::parse_str(&text.join("\n"), "rows.jsonl").unwrap().batch;
    let mut b = RolloutBatch::builder();
    for &(group, traj, step) in &rows {
        b.push_step(StepRow {
            group,
            traj,
            step,
            anchor: Anchor::Key(step as u64),
            reward: 0.0,
            episode_reward: 0.0,
            valid: true,
            response_len: 1,
        })
        .unwrap();
    }
    let built = b.build().unwrap();
    assert_eq!(read.groups(), built.groups());
    assert_eq!(read.trajectories(), built.trajectories());
    assert_eq!(read.group_ids(), built.group_ids());
    assert_eq!(read.traj_ids(), built.traj_ids());

    let mut bad = text.clone();
    bad.push(line(("g2", "d", 2)).replace("\"g2\"", "\"g1\""));
    let err = g2po::io::parse_str(&bad.join("\n"), "rows.jsonl").unwrap_err();
    assert!(
        matches!(err, Error::InFile { line: 10, ref error, .. } if matches!(**error, Error::TrajectoryInTwoGroups { .. })),
        "{err}"
    );
}
