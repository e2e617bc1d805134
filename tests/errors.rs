//! Every bad input gives the right typed error, naming the row and the field,
//! and never a panic; degenerate but valid input gives the documented values.

use g2po::rollout::{AnchorColumn, Columns};
use g2po::{
    AdvantageEstimator, Anchor, Error, Estimator, EstimatorConfig, EstimatorKind, Grouping, Normalization,
    RolloutBatch, Step, StepRow,
};

const KINDS: [EstimatorKind; 3] = [EstimatorKind::Grpo, EstimatorKind::Gigpo, EstimatorKind::G2po];
const NORMS: [Normalization; 2] = [Normalization::MeanStd, Normalization::Mean];

fn row<'a>(group: &'a str, traj: &'a str, step: u32, obs: &'a str) -> StepRow<'a> {
    StepRow {
        group,
        traj,
        step,
        anchor: Anchor::Text(obs),
        reward: 0.0,
        episode_reward: 0.0,
        valid: true,
        response_len: 2,
    }
}

fn step(obs: &str) -> Step<'_> {
    Step { anchor: Anchor::Text(obs), reward: 0.0, valid: true, response_len: 2 }
}

fn estimate(kind: EstimatorKind, norm: Normalization, batch: &RolloutBatch) -> g2po::Advantages {
    Estimator::new(EstimatorConfig { norm, ..EstimatorConfig::new(kind) }).unwrap().estimate(batch).unwrap()
}

/// One JSONL line with every field; `patch` edits the object first.
fn jsonl_line(traj: &str, step: i64, patch: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) -> String {
    let mut obj = serde_json::json!({
        "group": "g", "traj": traj, "step": step, "obs": "room", "reward": 0.0,
        "episode_reward": 0.0, "is_action_valid": true, "response_len": 3,
    });
    patch(obj.as_object_mut().unwrap());
    obj.to_string()
}

/// Row errors from a file come as `InFile` (`file:LINE: ...`); the typed
/// reason, with the row's index, is inside.
fn parse(text: &str) -> Result<g2po::io::Input, Error> {
    g2po::io::parse_str(text, "input.jsonl").map_err(|e| match e {
        Error::InFile { source_name, line, message, error } => {
            assert_eq!(source_name, "input.jsonl");
            assert!(line >= 1 && !message.starts_with("row "), "{message}");
            *error
        }
        other => other,
    })
}

// ---------------------------------------------------------------- batch shape

#[test]
fn empty_batch() {
    assert!(matches!(RolloutBatch::builder().build(), Err(Error::EmptyBatch)));
    assert!(matches!(parse(""), Err(Error::EmptyBatch)));
    assert!(matches!(parse("\n  \n"), Err(Error::EmptyBatch)));
    let cols = Columns {
        group: &[],
        traj: &[],
        step: &[],
        anchor: AnchorColumn::Keys(&[]),
        reward: &[],
        episode_reward: &[],
        valid: &[],
        response_len: &[],
    };
    assert!(matches!(RolloutBatch::from_columns(cols), Err(Error::EmptyBatch)));
}

#[test]
fn empty_trajectory() {
    let mut b = RolloutBatch::builder();
    let err = b.push_trajectory("g", "t", 10.0, Vec::<Step>::new()).unwrap_err();
    match err {
        Error::EmptyTrajectory { group, traj } => assert_eq!((group.as_str(), traj.as_str()), ("g", "t")),
        other => panic!("{other:?}"),
    }
    assert!(b.is_empty());
}

#[test]
fn mismatched_column_lengths() {
    let good = Columns {
        group: &[0, 0, 0],
        traj: &[0, 0, 1],
        step: &[0, 1, 0],
        anchor: AnchorColumn::Keys(&[1, 2, 1]),
        reward: &[0.0, 10.0, 0.0],
        episode_reward: &[10.0, 10.0, 0.0],
        valid: &[true, true, false],
        response_len: &[3, 4, 5],
    };
    let batch = RolloutBatch::from_columns(good).unwrap();
    assert_eq!((batch.len(), batch.num_trajectories()), (3, 2));
    let texts = ["a", "b"];
    let cases: Vec<(&str, Columns)> = vec![
        ("traj", Columns { traj: &[0, 0], ..good }),
        ("step", Columns { step: &[0, 1, 0, 0], ..good }),
        ("anchor", Columns { anchor: AnchorColumn::Keys(&[1]), ..good }),
        ("anchor", Columns { anchor: AnchorColumn::Text(&texts), ..good }),
        ("reward", Columns { reward: &[], ..good }),
        ("episode_reward", Columns { episode_reward: &[10.0], ..good }),
        ("valid", Columns { valid: &[true; 4], ..good }),
        ("response_len", Columns { response_len: &[1, 2], ..good }),
    ];
    for (field, cols) in cases {
        let found = match cols.anchor {
            AnchorColumn::Keys(k) => k.len(),
            AnchorColumn::Text(t) => t.len(),
        };
        match RolloutBatch::from_columns(cols) {
            Err(Error::LengthMismatch { field: f, expected: 3, found: n }) => {
                assert_eq!(f, field);
                if field == "anchor" {
                    assert_eq!(n, found);
                }
            }
            other => panic!("{field}: {other:?}"),
        }
    }
    // Column batches are validated row by row like the builder.
    let dup = Columns { step: &[0, 0, 0], ..good };
    assert!(matches!(RolloutBatch::from_columns(dup), Err(Error::DuplicateStep { row: 1, step: 0, first_row: 0, .. })));
}

// ---------------------------------------------------------------- row values

#[test]
fn non_finite_rewards() {
    for (field, value) in [
        ("reward", f64::NAN),
        ("reward", f64::INFINITY),
        ("episode_reward", f64::NAN),
        ("episode_reward", f64::NEG_INFINITY),
    ] {
        let mut b = RolloutBatch::builder();
        b.push_step(row("g", "t", 0, "s")).unwrap();
        let mut bad = row("g", "t", 1, "s");
        if field == "reward" {
            bad.reward = value;
        } else {
            bad.episode_reward = value;
        }
        match b.push_step(bad) {
            Err(Error::NonFinite { row: 1, field: f, value: v }) => {
                assert_eq!(f, field);
                assert!(v.is_nan() == value.is_nan() && (v.is_nan() || v == value));
            }
            other => panic!("{field}={value}: {other:?}"),
        }
        assert_eq!(b.len(), 1);
    }
    // Through push_trajectory the episode reward is checked on the first row.
    let mut b = RolloutBatch::builder();
    let err = b.push_trajectory("g", "t", f64::NAN, [step("s")]).unwrap_err();
    assert!(matches!(err, Error::NonFinite { row: 0, field: "episode_reward", .. }));
}

/// Results are f32: inputs and parameters whose results would overflow it are
/// rejected with a typed error naming the row or parameter; at the accepted
/// extremes every estimator's every column is finite.
#[test]
fn results_are_always_finite_f32() {
    // Rewards beyond 1e30 (1e39 is finite in f64 but not in f32).
    for field in ["reward", "episode_reward"] {
        let mut b = RolloutBatch::builder();
        b.push_step(row("g", "t", 0, "s")).unwrap();
        let mut bad = row("g", "t", 1, "s");
        if field == "reward" {
            bad.reward = -1e39
        } else {
            bad.episode_reward = 1e39
        }
        match b.push_step(bad) {
            Err(Error::RewardOutOfRange { row: 1, field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: {other:?}"),
        }
    }
    // Each reward in range, but their sum (which bounds the discounted return) is not.
    let mut b = RolloutBatch::builder();
    let big = Step { reward: 6e29, ..step("s") };
    match b.push_trajectory("g", "t", 0.0, [big, big, big]) {
        Err(Error::ReturnOutOfRange { row: 1, traj, sum }) => assert_eq!((traj.as_str(), sum), ("t", 1.2e30)),
        other => panic!("{other:?}"),
    }
    // Parameters.
    let base = EstimatorConfig::new(EstimatorKind::G2po);
    for (name, cfg) in [
        ("step_weight", EstimatorConfig { step_weight: 1e308, ..base }),
        ("step_weight", EstimatorConfig { step_weight: -2e6, ..base }),
        ("invalid_penalty", EstimatorConfig { invalid_penalty: -1e300, ..base }),
        ("terminal", EstimatorConfig { terminal: g2po::TerminalValues::Fixed { success: 1e31, failure: 0.0 }, ..base }),
    ] {
        match Estimator::new(cfg) {
            Err(Error::InvalidParameter { name: n, .. }) => assert_eq!(n, name),
            other => panic!("{name}: {other:?}"),
        }
    }
    // The accepted extremes: rewards of +-1e30 summing to 1e30 per trajectory,
    // w = 1e6, p = 1e30, gamma = 1, both modes: every column finite.
    let extremes = |one_row_group: bool| {
        let mut b = RolloutBatch::builder();
        for (t, r) in [("a", 1e30), ("b", -1e30), ("c", 1e30), ("d", 0.0)] {
            let steps = [Step { valid: false, ..step("x") }, Step { reward: r, ..step("y") }];
            b.push_trajectory("g", t, r, steps).unwrap();
        }
        if one_row_group {
            b.push_trajectory("one", "e", -1e30, [Step { reward: -1e30, valid: false, ..step("z") }]).unwrap();
        }
        b.build().unwrap()
    };
    for kind in g2po::EstimatorKind::FROM_BATCH {
        // pass@k needs two rows per group.
        let batch = extremes(kind != EstimatorKind::GrpoPassk);
        for norm in NORMS {
            for stats_over in [g2po::StatsOver::Rows, g2po::StatsOver::Trajectories] {
                let cfg = EstimatorConfig {
                    norm,
                    stats_over,
                    gamma: 1.0,
                    step_weight: -1e6,
                    invalid_penalty: 1e30,
                    ..EstimatorConfig::new(kind)
                };
                let Ok(estimator) = Estimator::new(cfg) else { continue };
                let adv = estimator.estimate(&batch).unwrap();
                for (name, col) in [
                    ("advantage", &adv.advantage),
                    ("episode", &adv.episode),
                    ("step", &adv.step),
                    ("node_centric", &adv.node_centric),
                    ("edge_centric", &adv.edge_centric),
                    ("step_return", &adv.step_return),
                    ("node_value", &adv.node_value),
                    ("next_value", &adv.next_value),
                ] {
                    assert!(col.iter().all(|x| x.is_finite()), "{kind} {norm:?} {stats_over:?} {name}: {col:?}");
                }
            }
        }
    }
}

#[test]
fn negative_response_len_and_step_in_jsonl() {
    let text = [
        jsonl_line("t", 0, |_| {}),
        jsonl_line("t", 1, |o| {
            o.insert("response_len".into(), (-4).into());
        }),
    ]
    .join("\n");
    assert!(matches!(parse(&text), Err(Error::Negative { row: 1, field: "response_len", value: -4 })));
    let text = [jsonl_line("t", 0, |_| {}), jsonl_line("u", -1, |_| {})].join("\n");
    assert!(matches!(parse(&text), Err(Error::Negative { row: 1, field: "step", value: -1 })));
    // Too large for u32: rejected rather than truncated.
    let text = jsonl_line("t", 1 << 40, |_| {});
    assert!(matches!(parse(&text), Err(Error::InvalidParameter { name: "step", .. })));
}

#[test]
fn duplicate_step() {
    let mut b = RolloutBatch::builder();
    b.push_step(row("g", "t", 0, "a")).unwrap();
    b.push_step(row("g", "t", 1, "b")).unwrap();
    b.push_step(row("g", "u", 0, "a")).unwrap();
    match b.push_step(row("g", "t", 1, "c")) {
        Err(Error::DuplicateStep { row: 3, traj, step: 1, first_row: 1 }) => assert_eq!(traj, "t"),
        other => panic!("{other:?}"),
    }
    match b.push_step(row("g", "t", 0, "c")) {
        Err(Error::DuplicateStep { row: 3, step: 0, first_row: 0, .. }) => {}
        other => panic!("{other:?}"),
    }
    // The same through JSONL.
    let text = [jsonl_line("t", 0, |_| {}), jsonl_line("t", 0, |_| {})].join("\n");
    assert!(matches!(parse(&text), Err(Error::DuplicateStep { row: 1, step: 0, first_row: 0, .. })));
}

#[test]
fn steps_out_of_order() {
    // A gap: 0 then 2.
    let mut b = RolloutBatch::builder();
    b.push_step(row("g", "t", 0, "a")).unwrap();
    match b.push_step(row("g", "t", 2, "b")) {
        Err(Error::StepOutOfOrder { row: 1, traj, expected: 1, found: 2 }) => assert_eq!(traj, "t"),
        other => panic!("{other:?}"),
    }
    // A trajectory starting at step 1.
    match b.push_step(row("g", "u", 1, "b")) {
        Err(Error::StepOutOfOrder { row: 1, traj, expected: 0, found: 1 }) => assert_eq!(traj, "u"),
        other => panic!("{other:?}"),
    }
    let text = jsonl_line("t", 1, |_| {});
    assert!(matches!(parse(&text), Err(Error::StepOutOfOrder { row: 0, expected: 0, found: 1, .. })));
}

#[test]
fn trajectory_in_two_groups() {
    let mut b = RolloutBatch::builder();
    b.push_step(row("g1", "t", 0, "a")).unwrap();
    b.push_step(row("g2", "x", 0, "a")).unwrap();
    for other_group in ["g2", "g3"] {
        match b.push_step(row(other_group, "t", 1, "b")) {
            Err(Error::TrajectoryInTwoGroups { row: 2, traj, first_group, group }) => {
                assert_eq!((traj.as_str(), first_group.as_str(), group.as_str()), ("t", "g1", other_group));
            }
            other => panic!("{other:?}"),
        }
    }
    let batch = b.build().unwrap();
    // The rejected row for the unseen group "g3" must not have registered it.
    assert_eq!(batch.group_ids(), &["g1", "g2"]);

    // The same right after the trajectory's previous row (the builder's
    // shortcut for a repeated trajectory id must still check the group).
    let mut b = RolloutBatch::builder();
    b.push_step(row("g1", "t", 0, "a")).unwrap();
    match b.push_step(row("g2", "t", 1, "b")) {
        Err(Error::TrajectoryInTwoGroups { row: 1, first_group, group, .. }) => {
            assert_eq!((first_group.as_str(), group.as_str()), ("g1", "g2"));
        }
        other => panic!("{other:?}"),
    }
    // And a rejected row leaves the shortcut pointing at the last good row.
    b.push_step(row("g1", "t", 1, "b")).unwrap();
    assert!(matches!(b.push_step(row("g1", "t", 1, "b")), Err(Error::DuplicateStep { row: 2, .. })));
    b.push_step(row("g1", "u", 0, "a")).unwrap();
    b.push_step(row("g1", "t", 2, "c")).unwrap();
    let batch = b.build().unwrap();
    assert_eq!(batch.trajectories(), &[0, 0, 1, 0]);
    assert_eq!(batch.steps(), &[0, 1, 0, 2]);
}

#[test]
fn episode_reward_mismatch() {
    let mut b = RolloutBatch::builder();
    b.push_step(StepRow { episode_reward: 10.0, ..row("g", "t", 0, "a") }).unwrap();
    match b.push_step(StepRow { episode_reward: 0.0, ..row("g", "t", 1, "b") }) {
        Err(Error::EpisodeRewardMismatch { row: 1, traj, expected, found }) => {
            assert_eq!((traj.as_str(), expected, found), ("t", 10.0, 0.0));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn mixed_anchors() {
    let mut b = RolloutBatch::builder();
    b.push_step(row("g", "t", 0, "a")).unwrap();
    let keyed = StepRow { anchor: Anchor::Key(5), ..row("g", "t", 1, "") };
    assert!(matches!(b.push_step(keyed), Err(Error::MixedAnchors { row: 1 })));
    let mut b = RolloutBatch::builder();
    b.push_step(StepRow { anchor: Anchor::Key(5), ..row("g", "t", 0, "") }).unwrap();
    assert!(matches!(b.push_step(row("g", "t", 1, "a")), Err(Error::MixedAnchors { row: 1 })));
    // JSONL: "key" on one line, "obs" on the next.
    let text = [
        jsonl_line("t", 0, |o| {
            o.remove("obs");
            o.insert("key".into(), 7.into());
        }),
        jsonl_line("t", 1, |_| {}),
    ]
    .join("\n");
    assert!(matches!(parse(&text), Err(Error::MixedAnchors { row: 1 })));
}

#[test]
fn missing_fields_in_jsonl() {
    for field in ["group", "traj", "step", "reward", "episode_reward", "is_action_valid", "response_len", "obs"] {
        let text = [
            jsonl_line("t", 0, |_| {}),
            jsonl_line("t", 1, |o| {
                o.remove(field);
            }),
        ]
        .join("\n");
        match parse(&text) {
            Err(Error::MissingField { row: 1, field: f }) => assert_eq!(f, field),
            other => panic!("{field}: {other:?}"),
        }
    }
    // Same inside a vector file.
    let doc = format!(
        r#"{{"estimator": "grpo", "steps": [{}]}}"#,
        jsonl_line("t", 0, |o| {
            o.remove("reward");
        })
    );
    assert!(matches!(parse(&doc), Err(Error::MissingField { row: 0, field: "reward" })));
}

// ---------------------------------------------------------------- malformed files

fn parse_error_line(text: &str) -> (usize, String) {
    match parse(text) {
        Err(Error::Parse { source_name, line, message }) => {
            assert_eq!(source_name, "input.jsonl");
            (line, message)
        }
        other => panic!("expected a parse error for {text:?}, got {other:?}"),
    }
}

#[test]
fn malformed_json() {
    let good = jsonl_line("t", 0, |_| {});
    // A truncated third line.
    let truncated = &jsonl_line("t", 2, |_| {})[..30];
    let text = format!("{good}\n{}\n{truncated}\n", jsonl_line("t", 1, |_| {}));
    assert_eq!(parse_error_line(&text).0, 3);
    // A NaN literal (not JSON).
    let nan = good.replace("\"reward\":0.0", "\"reward\":NaN");
    assert_ne!(nan, good, "the replacement must hit");
    assert_eq!(parse_error_line(&format!("{nan}\n")).0, 1);
    // A number out of f64 range.
    let huge = good.replace("\"episode_reward\":0.0", "\"episode_reward\":1e999");
    assert_ne!(huge, good);
    let (line, message) = parse_error_line(&format!("{}\n{huge}", jsonl_line("u", 0, |_| {})));
    assert_eq!(line, 2);
    assert!(!message.is_empty());
    // Wrong types.
    let wrong = good.replace("\"is_action_valid\":true", "\"is_action_valid\":\"yes\"");
    assert_ne!(wrong, good);
    assert_eq!(parse_error_line(&wrong).0, 1);
    // Garbage and a lone bracket.
    assert_eq!(parse_error_line("not json").0, 1);
    assert_eq!(parse_error_line("[1, 2]").0, 1);
}

#[test]
fn vector_file_errors() {
    let row0 = jsonl_line("t", 0, |_| {});
    // steps not an array.
    let (_, message) = parse_error_line(r#"{"estimator": "g2po", "steps": {"a": 1}}"#);
    assert!(message.contains("steps"), "{message}");
    // expected not an array.
    let (_, message) = parse_error_line(&format!(r#"{{"steps": [{row0}], "expected": 3}}"#));
    assert!(message.contains("expected"), "{message}");
    // A row of the wrong shape names its index.
    let (_, message) = parse_error_line(r#"{"steps": [5]}"#);
    assert!(message.contains("steps[0]"), "{message}");
    // Trailing content after the vector object.
    parse_error_line(&format!(r#"{{"steps": [{row0}]}} {{"x": 1}}"#));
    // Unknown estimator name.
    match parse(&format!(r#"{{"estimator": "dqn", "steps": [{row0}]}}"#)) {
        Err(Error::InvalidParameter { name: "estimator", reason }) => assert!(reason.contains("dqn")),
        other => panic!("{other:?}"),
    }
    // Unknown normalisation and stats_over.
    match parse(&format!(r#"{{"params": {{"mode": "zscore"}}, "steps": [{row0}]}}"#)) {
        Err(Error::InvalidParameter { name: "mode", .. }) => {}
        other => panic!("{other:?}"),
    }
    match parse(&format!(r#"{{"params": {{"stats_over": "tokens"}}, "steps": [{row0}]}}"#)) {
        Err(Error::InvalidParameter { name: "stats_over", .. }) => {}
        other => panic!("{other:?}"),
    }
    // An empty steps array is an empty batch.
    assert!(matches!(parse(r#"{"steps": []}"#), Err(Error::EmptyBatch)));
    // A missing file is an Io error naming the path.
    match g2po::io::read_path("/nonexistent/dir/rows.jsonl") {
        Err(e @ Error::Io { .. }) => assert!(e.to_string().contains("/nonexistent/dir/rows.jsonl")),
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------- configuration

#[test]
fn unknown_names() {
    for bad in ["dqn", "", "g2po ", "g2po+"] {
        assert!(matches!(bad.parse::<EstimatorKind>(), Err(Error::InvalidParameter { name: "estimator", .. })));
    }
    assert!(matches!("zscore".parse::<Normalization>(), Err(Error::InvalidParameter { name: "mode", .. })));
    assert!(matches!("tokens".parse::<g2po::StatsOver>(), Err(Error::InvalidParameter { name: "stats_over", .. })));
}

#[test]
fn invalid_config_values() {
    let base = EstimatorConfig::new(EstimatorKind::G2po);
    let cases: Vec<(&str, EstimatorConfig)> = vec![
        ("gamma", EstimatorConfig { gamma: 1.5, ..base }),
        ("gamma", EstimatorConfig { gamma: -0.1, ..base }),
        ("gamma", EstimatorConfig { gamma: f64::NAN, ..base }),
        ("epsilon", EstimatorConfig { epsilon: -1e-6, ..base }),
        ("epsilon", EstimatorConfig { epsilon: f64::INFINITY, ..base }),
        ("step_weight", EstimatorConfig { step_weight: f64::NAN, ..base }),
        ("invalid_penalty", EstimatorConfig { invalid_penalty: f64::INFINITY, ..base }),
        ("similarity_thresh", EstimatorConfig { grouping: Grouping::Similarity { threshold: 2.0 }, ..base }),
        ("similarity_thresh", EstimatorConfig { grouping: Grouping::Similarity { threshold: -0.5 }, ..base }),
        ("similarity_thresh", EstimatorConfig { grouping: Grouping::Similarity { threshold: f64::NAN }, ..base }),
        (
            "terminal",
            EstimatorConfig { terminal: g2po::TerminalValues::Fixed { success: f64::NAN, failure: 0.0 }, ..base },
        ),
    ];
    for (name, cfg) in cases {
        match Estimator::new(cfg) {
            Err(Error::InvalidParameter { name: n, reason }) => {
                assert_eq!(n, name);
                assert!(!reason.is_empty());
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    // The boundaries are valid.
    for cfg in [
        EstimatorConfig { gamma: 0.0, ..base },
        EstimatorConfig { gamma: 1.0, ..base },
        EstimatorConfig { grouping: Grouping::Similarity { threshold: 1.0 }, ..base },
    ] {
        assert!(Estimator::new(cfg).is_ok());
    }
}

#[test]
fn similarity_mode_needs_text() {
    let mut b = RolloutBatch::builder();
    b.push_step(StepRow { anchor: Anchor::Key(1), ..row("g", "t", 0, "") }).unwrap();
    let batch = b.build().unwrap();
    for kind in [EstimatorKind::Gigpo, EstimatorKind::G2po] {
        let cfg = EstimatorConfig { grouping: Grouping::Similarity { threshold: 0.9 }, ..EstimatorConfig::new(kind) };
        assert!(matches!(Estimator::new(cfg).unwrap().estimate(&batch), Err(Error::SimilarityNeedsText)));
    }
    // GRPO never looks at states, so the grouping option is irrelevant to it.
    let cfg = EstimatorConfig {
        grouping: Grouping::Similarity { threshold: 0.9 },
        ..EstimatorConfig::new(EstimatorKind::Grpo)
    };
    assert!(Estimator::new(cfg).unwrap().estimate(&batch).is_ok());
}

#[test]
fn padded_broadcast_too_narrow() {
    let batch = g2po::doc_batch(); // response lengths 3, 2, 3, 4
    let adv = estimate(EstimatorKind::G2po, Normalization::MeanStd, &batch);
    match g2po::broadcast::padded(&adv, &batch, Some(3)) {
        Err(Error::ResponseTooLong { row: 3, len: 4, max_len: 3 }) => {}
        other => panic!("{other:?}"),
    }
    match g2po::broadcast::padded(&adv, &batch, Some(2)) {
        Err(Error::ResponseTooLong { row: 0, len: 3, max_len: 2 }) => {}
        other => panic!("{other:?}"),
    }
    assert!(g2po::broadcast::padded(&adv, &batch, Some(4)).is_ok());
    // Advantages of another batch (wrong length).
    let mut short = adv.clone();
    short.advantage.pop();
    assert!(matches!(
        g2po::broadcast::flat(&short, &batch),
        Err(Error::LengthMismatch { field: "advantage", expected: 4, found: 3 })
    ));
    assert!(matches!(g2po::broadcast::padded(&short, &batch, None), Err(Error::LengthMismatch { .. })));
}

#[test]
fn graph_needs_g2po_output_and_a_known_group() {
    let batch = g2po::doc_batch();
    for kind in [EstimatorKind::Grpo, EstimatorKind::Gigpo] {
        let adv = estimate(kind, Normalization::MeanStd, &batch);
        assert!(matches!(
            g2po::graph::StateGraph::build(&batch, &adv, 0),
            Err(Error::InvalidParameter { name: "advantages", .. })
        ));
    }
    let adv = estimate(EstimatorKind::G2po, Normalization::MeanStd, &batch);
    match g2po::graph::StateGraph::build(&batch, &adv, 5) {
        Err(Error::UnknownGroup(g)) => assert_eq!(g, "5"),
        other => panic!("{other:?}"),
    }
}

/// A hand-built `Advantages` with ids no estimator produces is a typed error naming
/// the row and column, never an index panic.
#[test]
fn graph_of_hand_built_advantages_with_bad_ids() {
    let batch = g2po::doc_batch(); // 4 rows, one group: hall, door | hall, wall
    let good = estimate(EstimatorKind::G2po, Normalization::MeanStd, &batch);
    assert!(g2po::graph::StateGraph::build(&batch, &good, 0).is_ok());
    type Patch = fn(&mut g2po::Advantages);
    let cases: [(&str, Patch, usize, &str); 5] = [
        ("negative node", |a| a.node[2] = -3, 2, "node"),
        ("node id skipping ids", |a| a.node[1] = 7, 1, "node"),
        ("next node outside the group", |a| a.next_node[0] = 9, 0, "next_node"),
        ("next node below the terminals", |a| a.next_node[3] = -7, 3, "next_node"),
        ("huge node id", |a| a.node[0] = i32::MAX, 0, "node"),
    ];
    for (what, patch, want_row, want_column) in cases {
        let mut adv = good.clone();
        patch(&mut adv);
        match g2po::graph::StateGraph::build(&batch, &adv, 0) {
            Err(Error::BadAdvantages { row, column, .. }) => {
                assert_eq!((row, column), (want_row, want_column), "{what}")
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    // A column of the wrong length (e.g. advantages of another batch).
    let mut short = good.clone();
    short.advantage.pop();
    assert!(matches!(
        g2po::graph::StateGraph::build(&batch, &short, 0),
        Err(Error::InvalidParameter { name: "advantages", .. })
    ));
    let mut hand =
        g2po::Advantages { node: good.node.clone(), next_node: good.next_node.clone(), ..Default::default() };
    hand.advantage = good.advantage.clone();
    hand.node_value = good.node_value.clone();
    assert!(matches!(
        g2po::graph::StateGraph::build(&batch, &hand, 0),
        Err(Error::InvalidParameter { name: "advantages", .. })
    ));
}

// ---------------------------------------------------------------- builder atomicity

#[test]
fn builder_unchanged_after_rejected_rows() {
    let mut b = RolloutBatch::builder();
    b.push_step(StepRow { episode_reward: 10.0, ..row("g", "t", 0, "hall") }).unwrap();
    // Each of these fails at a different check; none may leave a trace.
    let rejected = [
        StepRow { reward: f64::NAN, ..row("new-group", "new-traj", 0, "x") },
        StepRow { anchor: Anchor::Key(3), ..row("new-group", "new-traj", 0, "") },
        row("new-group", "new-traj", 1, "x"),
        row("new-group", "t", 1, "x"),
        StepRow { episode_reward: 0.0, ..row("g", "t", 1, "x") },
        StepRow { episode_reward: 10.0, ..row("g", "t", 0, "x") },
        StepRow { episode_reward: 10.0, ..row("g", "t", 3, "x") },
    ];
    for bad in rejected {
        assert!(b.push_step(bad).is_err(), "{bad:?} should be rejected");
        assert_eq!(b.len(), 1);
    }
    b.push_step(StepRow { episode_reward: 10.0, reward: 10.0, ..row("g", "t", 1, "door") }).unwrap();
    b.push_step(row("g", "u", 0, "hall")).unwrap();
    let batch = b.build().unwrap();
    assert_eq!(batch.len(), 3);
    assert_eq!(batch.group_ids(), &["g"]);
    assert_eq!(batch.traj_ids(), &["t", "u"]);
    assert_eq!(batch.steps(), &[0, 1, 0]);
    assert_eq!(batch.next_rows(), &[1, g2po::rollout::NO_NEXT, g2po::rollout::NO_NEXT]);
    assert_eq!(batch.trajectory_lens(), &[2, 1]);
    assert_eq!(batch.trajectory_rewards(), &[10.0, 0.0]);
    assert_eq!(batch.rewards(), &[0.0, 10.0, 0.0]);
    assert!(batch.has_text());
    let anchors: Vec<_> = (0..3).map(|r| batch.anchor(r)).collect();
    assert_eq!(anchors, vec![Anchor::Text("hall"), Anchor::Text("door"), Anchor::Text("hall")]);
    assert_eq!(batch.group_rows(0), &[0, 1, 2]);
    // And the estimators run on it.
    for kind in KINDS {
        assert_eq!(estimate(kind, Normalization::MeanStd, &batch).len(), 3);
    }
}

#[test]
fn push_trajectory_is_atomic() {
    let mut b = RolloutBatch::builder();
    let bad = Step { reward: f64::INFINITY, ..step("b") };
    let err = b.push_trajectory("g", "t", 0.0, [step("a"), bad]).unwrap_err();
    assert!(matches!(err, Error::NonFinite { row: 1, field: "reward", .. }));
    assert_eq!(b.len(), 0, "the rejected trajectory left rows behind");
    // After fixing the step, the same trajectory id can be pushed again.
    b.push_trajectory("g", "t", 0.0, [step("a"), step("b")]).unwrap();
    assert_eq!(b.build().unwrap().trajectory_lens(), &[2]);
}

// ---------------------------------------------------------------- degenerate valid input

#[test]
fn group_with_one_row() {
    // One row, success, valid: score 10. Episode part with m = 0, sd = 1:
    // mean_std: 10 / (1 + 1e-6); mean_norm: 10. Node/step/edge parts 0.
    let mut b = RolloutBatch::builder();
    b.push_trajectory("g", "t", 10.0, [Step { reward: 10.0, ..step("s") }]).unwrap();
    let batch = b.build().unwrap();
    for norm in NORMS {
        let want = match norm {
            Normalization::MeanStd => (10.0 / (1.0 + 1e-6)) as f32,
            Normalization::Mean => 10.0,
        };
        for kind in KINDS {
            let adv = estimate(kind, norm, &batch);
            assert_eq!(adv.episode, vec![want], "{kind} {norm:?}");
            assert_eq!(adv.advantage, vec![want], "{kind} {norm:?}");
        }
        let gigpo = estimate(EstimatorKind::Gigpo, norm, &batch);
        assert_eq!((gigpo.step.clone(), gigpo.step_return.clone()), (vec![0.0], vec![10.0]));
        let g2po = estimate(EstimatorKind::G2po, norm, &batch);
        assert_eq!(g2po.edge_centric, vec![0.0]);
        assert_eq!(g2po.node_centric, vec![0.0]);
        assert_eq!(g2po.next_node, vec![g2po::estimators::SUCCESS_TERMINAL]);
        // V = gamma^1 * 10.
        assert!((g2po.node_value[0] - 9.5).abs() < 1e-6);
    }
    // An invalid single row: score 10 - 0.1.
    let mut b = RolloutBatch::builder();
    b.push_trajectory("g", "t", 10.0, [Step { valid: false, ..step("s") }]).unwrap();
    let adv = estimate(EstimatorKind::Grpo, Normalization::Mean, &b.build().unwrap());
    assert!((adv.advantage[0] - 9.9).abs() < 1e-6);
}

#[test]
fn group_with_one_trajectory() {
    // One successful trajectory s0 -> s1 -> s0 (revisit), all valid:
    // scores 10, 10, 10 -> mean 10, sd 0 -> episode part 0 in both modes.
    let mut b = RolloutBatch::builder();
    b.push_trajectory("g", "t", 10.0, [step("s0"), step("s1"), Step { reward: 10.0, ..step("s0") }]).unwrap();
    let batch = b.build().unwrap();
    for norm in NORMS {
        let grpo = estimate(EstimatorKind::Grpo, norm, &batch);
        assert_eq!(grpo.advantage, vec![0.0; 3]);
        // GiGPO: returns 9.025, 9.5, 10; step group s0 = {9.025, 10}, mean 9.5125.
        let gigpo = estimate(EstimatorKind::Gigpo, norm, &batch);
        assert_eq!(gigpo.node, vec![0, 1, 0]);
        let want = match norm {
            // sd = 0.975 / sqrt(2) = 0.68943; (9.025 - 9.5125) / sd = -1/sqrt(2).
            Normalization::MeanStd => [-std::f64::consts::FRAC_1_SQRT_2, 0.0, std::f64::consts::FRAC_1_SQRT_2],
            Normalization::Mean => [-0.4875, 0.0, 0.4875],
        };
        for (got, want) in gigpo.step.iter().zip(want) {
            assert!((*got as f64 - want).abs() < 1e-5, "{norm:?} {:?}", gigpo.step);
        }
        // G2PO: s0 visits v = 0.95^3*10 = 8.57375 and 0.95*10 = 9.5 -> V(s0) = 9.036875;
        // V(s1) = 0.95^2*10 = 9.025. Next values: row0 -> s1 9.025, row1 -> s0 9.036875,
        // row2 -> success 10. Node-centric on s0: x = 9.025 and 10, mean 9.5125.
        let g2po = estimate(EstimatorKind::G2po, norm, &batch);
        assert_eq!(g2po.node, vec![0, 1, 0]);
        assert_eq!(g2po.next_node, vec![1, 0, -1]);
        assert!((g2po.node_value[0] as f64 - 9.036875).abs() < 1e-5);
        assert!((g2po.node_value[1] as f64 - 9.025).abs() < 1e-5);
        for (got, want) in g2po.node_centric.iter().zip(want) {
            assert!((*got as f64 - want).abs() < 1e-5, "{norm:?} {:?}", g2po.node_centric);
        }
        assert!(g2po.edge_centric.iter().all(|x| x.is_finite()));
    }
}

#[test]
fn all_rewards_equal_give_zero_spread() {
    // Two groups; every trajectory fails, all actions valid, states repeat.
    let mut b = RolloutBatch::builder();
    for g in ["g1", "g2"] {
        for t in 0..3 {
            let traj = format!("{g}-{t}");
            b.push_trajectory(g, &traj, 0.0, [step("a"), step("b"), step("a")]).unwrap();
        }
    }
    let batch = b.build().unwrap();
    for norm in NORMS {
        for kind in KINDS {
            let adv = estimate(kind, norm, &batch);
            // Every standardised quantity has zero spread: 0, never NaN.
            for col in [&adv.advantage, &adv.episode, &adv.step, &adv.node_centric, &adv.edge_centric] {
                assert!(col.iter().all(|&x| x == 0.0), "{kind} {norm:?}: {col:?}");
            }
            if kind == EstimatorKind::G2po {
                assert!(adv.node_value.iter().all(|&v| v == 0.0));
            }
        }
    }
    // All succeed with identical trajectories a -> b: the episode part is 0,
    // GiGPO's step groups {9.5 x3} and {10 x3} and G2PO's nodes have no
    // spread (0 up to rounding), but G2PO's edge term still separates the
    // rows: td(a) = V(b) - V(a) = 9.5 - 9.025 = 0.475, td(b) = 10 - 9.5 = 0.5.
    let mut b = RolloutBatch::builder();
    for t in 0..3 {
        b.push_trajectory("g", &t.to_string(), 10.0, [step("a"), Step { reward: 10.0, ..step("b") }]).unwrap();
    }
    let batch = b.build().unwrap();
    for norm in NORMS {
        for kind in KINDS {
            let adv = estimate(kind, norm, &batch);
            assert!(adv.episode.iter().all(|&x| x == 0.0));
            // GiGPO's step part, G2PO's node-centric part (empty for GRPO).
            let spreadless = if kind == EstimatorKind::G2po { &adv.node_centric } else { &adv.step };
            assert!(spreadless.iter().all(|&x| x.abs() < 1e-6), "{kind} {norm:?}: {spreadless:?}");
        }
        let g2po = estimate(EstimatorKind::G2po, norm, &batch);
        // Rows alternate a, b: edge terms are -e, +e, -e, +e, ... with
        // mean_norm e = 0.0125 (td mean 0.4875) and mean_std e = 0.0125 / sd,
        // sd = sqrt(6 * 0.0125^2 / 5).
        let e = match norm {
            Normalization::Mean => 0.0125,
            Normalization::MeanStd => 0.0125 / ((6.0 * 0.0125f64.powi(2) / 5.0).sqrt() + 1e-6),
        };
        for (i, &x) in g2po.edge_centric.iter().enumerate() {
            let want = if i % 2 == 0 { -e } else { e };
            assert!((x as f64 - want).abs() < 1e-5, "{norm:?}: {:?}", g2po.edge_centric);
        }
    }
}

/// epsilon = 0 passes validation, but then a zero-spread group divides 0 by 0.
#[test]
fn zero_epsilon_never_gives_nan() {
    let mut b = RolloutBatch::builder();
    for t in 0..2 {
        b.push_trajectory("g", &t.to_string(), 0.0, [step("a"), step("b")]).unwrap();
    }
    let batch = b.build().unwrap();
    for kind in KINDS {
        let cfg = EstimatorConfig { epsilon: 0.0, ..EstimatorConfig::new(kind) };
        match Estimator::new(cfg) {
            Err(Error::InvalidParameter { name: "epsilon", .. }) => {}
            Err(other) => panic!("{other:?}"),
            Ok(e) => {
                let adv = e.estimate(&batch).unwrap();
                assert!(adv.advantage.iter().all(|x| x.is_finite()), "{kind}: {:?}", adv.advantage);
            }
        }
    }
}

/// Finite but huge rewards overflow the group sums (1e308 + 1e308 = inf), and
/// the standardisation then yields NaN for every estimator.
#[test]
fn huge_finite_rewards_never_give_nan() {
    let mut b = RolloutBatch::builder();
    b.push_trajectory("g", "x", 1e308, [step("a"), step("a")]).unwrap_or_default();
    b.push_trajectory("g", "y", 1e308, [step("a")]).unwrap_or_default();
    let Ok(batch) = b.build() else { return }; // rejecting the input is an acceptable fix
    for kind in KINDS {
        let adv = estimate(kind, Normalization::MeanStd, &batch);
        assert!(adv.advantage.iter().all(|x| x.is_finite()), "{kind}: {:?}", adv.advantage);
    }
}

/// A vector file whose `estimator` or a `params` value has the wrong JSON type
/// is read with the defaults instead, silently.
#[test]
fn vector_params_of_the_wrong_type_are_errors() {
    let row0 = jsonl_line("t", 0, |_| {});
    for doc in [
        format!(r#"{{"estimator": 5, "steps": [{row0}]}}"#),
        format!(r#"{{"params": {{"gamma": "0.5"}}, "steps": [{row0}]}}"#),
        format!(r#"{{"params": {{"mode": 1}}, "steps": [{row0}]}}"#),
        format!(r#"{{"params": {{"enable_similarity": "yes"}}, "steps": [{row0}]}}"#),
    ] {
        assert!(parse(&doc).is_err(), "accepted {doc}");
    }
}
