//! `RolloutBatch::from_dense` (the bindings' entry point) builds the same batch
//! as the validating builder and rejects what it rejects, naming the row.

use g2po::rollout::{DenseAnchors, DenseColumns};
use g2po::{AdvantageEstimator, Anchor, Error, Estimator, EstimatorConfig, EstimatorKind, RolloutBatch, StepRow};

/// Two groups, interleaved step-major (as a vectorised env emits rows).
fn dense() -> DenseColumns {
    // rows: (group, traj, key, episode_reward)
    let rows = [
        (0, 0, 1, 10.0),
        (1, 2, 7, 0.0),
        (0, 1, 1, 0.0),
        (0, 0, 2, 10.0),
        (1, 2, 8, 0.0),
        (0, 1, 3, 0.0),
        (1, 3, 7, 10.0),
        (0, 0, 2, 10.0),
    ];
    DenseColumns {
        group_ids: vec!["g0".into(), "g1".into()],
        traj_ids: vec!["a".into(), "b".into(), "c".into(), "d".into()],
        group: rows.iter().map(|r| r.0).collect(),
        traj: rows.iter().map(|r| r.1).collect(),
        step: None,
        anchors: DenseAnchors::Keys(rows.iter().map(|r| r.2).collect()),
        reward: rows.iter().map(|_| 0.0).collect(),
        episode_reward: rows.iter().map(|r| r.3).collect(),
        valid: (0..rows.len()).map(|i| i != 4).collect(),
        response_len: (0..rows.len() as u32).map(|i| i + 1).collect(),
    }
}

fn built_by_builder(cols: &DenseColumns) -> RolloutBatch {
    let mut b = RolloutBatch::builder();
    let mut next_step = vec![0u32; cols.traj_ids.len()];
    for row in 0..cols.group.len() {
        let t = cols.traj[row] as usize;
        let DenseAnchors::Keys(keys) = &cols.anchors else { unreachable!() };
        b.push_step(StepRow {
            group: &cols.group_ids[cols.group[row] as usize],
            traj: &cols.traj_ids[t],
            step: next_step[t],
            anchor: Anchor::Key(keys[row]),
            reward: cols.reward[row],
            episode_reward: cols.episode_reward[row],
            valid: cols.valid[row],
            response_len: cols.response_len[row],
        })
        .unwrap();
        next_step[t] += 1;
    }
    b.build().unwrap()
}

#[test]
fn same_batch_and_same_advantages_as_the_builder() {
    let cols = dense();
    let reference = built_by_builder(&cols);
    let batch = RolloutBatch::from_dense(cols).unwrap();
    assert_eq!(batch.steps(), reference.steps());
    assert_eq!(batch.next_rows(), reference.next_rows());
    assert_eq!(batch.rows_by_group(), reference.rows_by_group());
    assert_eq!(batch.group_offsets(), reference.group_offsets());
    assert_eq!(batch.trajectory_lens(), reference.trajectory_lens());
    assert_eq!(batch.groups_contiguous(), reference.groups_contiguous());
    for kind in [EstimatorKind::Grpo, EstimatorKind::Gigpo, EstimatorKind::G2po] {
        let e = Estimator::new(EstimatorConfig::new(kind)).unwrap();
        assert_eq!(e.estimate(&batch).unwrap(), e.estimate(&reference).unwrap(), "{kind}");
    }
}

#[test]
fn explicit_steps_are_checked() {
    let mut cols = dense();
    cols.step = Some(vec![0, 0, 0, 1, 1, 1, 0, 2]);
    assert!(RolloutBatch::from_dense(cols.clone()).is_ok());
    cols.step.as_mut().unwrap()[7] = 1; // traj "a" step 1 again
    let err = RolloutBatch::from_dense(cols.clone()).unwrap_err();
    assert!(matches!(err, Error::DuplicateStep { row: 7, step: 1, first_row: 3, .. }), "{err}");
    cols.step.as_mut().unwrap()[7] = 3;
    let err = RolloutBatch::from_dense(cols).unwrap_err();
    assert!(matches!(err, Error::StepOutOfOrder { row: 7, expected: 2, found: 3, .. }), "{err}");
}

#[test]
fn bad_columns_name_the_row() {
    let mut c = dense();
    c.episode_reward[5] = f64::NAN;
    assert!(matches!(
        RolloutBatch::from_dense(c).unwrap_err(),
        Error::NonFinite { row: 5, field: "episode_reward", .. }
    ));
    let mut c = dense();
    c.episode_reward[5] = 1.0;
    assert!(matches!(RolloutBatch::from_dense(c).unwrap_err(), Error::EpisodeRewardMismatch { row: 5, .. }));
    let mut c = dense();
    c.group[6] = 0; // traj "d" is new, so it may join g0 ...
    c.group[4] = 0; // ... but traj "c" started in g1
    assert!(matches!(RolloutBatch::from_dense(c).unwrap_err(), Error::TrajectoryInTwoGroups { row: 4, .. }));
    let mut c = dense();
    c.traj[2] = 9;
    assert!(matches!(RolloutBatch::from_dense(c).unwrap_err(), Error::IdOutOfRange { row: 2, field: "traj", .. }));
    let mut c = dense();
    c.valid.pop();
    assert!(matches!(RolloutBatch::from_dense(c).unwrap_err(), Error::LengthMismatch { field: "valid", .. }));
    let mut c = dense();
    c.traj_ids.push("unused".into());
    assert!(matches!(RolloutBatch::from_dense(c).unwrap_err(), Error::InvalidParameter { name: "traj_ids", .. }));
    let mut c = dense();
    c.anchors = DenseAnchors::Text { data: "hé".into(), ends: vec![2; 8] };
    assert!(matches!(RolloutBatch::from_dense(c).unwrap_err(), Error::InvalidParameter { name: "anchors", .. }));
    let empty = DenseColumns {
        group_ids: vec![],
        traj_ids: vec![],
        group: vec![],
        traj: vec![],
        step: None,
        anchors: DenseAnchors::Keys(vec![]),
        reward: vec![],
        episode_reward: vec![],
        valid: vec![],
        response_len: vec![],
    };
    assert!(matches!(RolloutBatch::from_dense(empty).unwrap_err(), Error::EmptyBatch));
}

#[test]
fn text_anchors_hash_like_the_builder() {
    let mut c = dense();
    let texts = ["s1", "s7", "s1", "s2", "s8", "s3", "s7", "s2"];
    c.anchors = DenseAnchors::texts(texts);
    let batch = RolloutBatch::from_dense(c).unwrap();
    assert_eq!(batch.anchor(3), Anchor::Text("s2"));
    let keyed = RolloutBatch::from_dense(dense()).unwrap();
    let e = Estimator::new(EstimatorConfig::new(EstimatorKind::G2po)).unwrap();
    // Same partition into states, so the same advantages.
    assert_eq!(e.estimate(&batch).unwrap().advantage, e.estimate(&keyed).unwrap().advantage);
}
