//! The ablation writes a complete CSV, a summary table and PNG curves.
#![cfg(feature = "train")]

use g2po::EstimatorKind;
use g2po::curriculum::Curriculum;
use g2po::train::{AblationConfig, AblationSetting, run_ablation};
use g2po_envs::EnvKind;

#[test]
fn tiny_ablation_writes_every_artefact() {
    let out = std::env::temp_dir().join(format!("g2po-ablation-test-{}", std::process::id()));
    let mut cfg = AblationConfig::standard(out.clone(), 2, true);
    cfg.settings = vec![
        AblationSetting {
            name: "chain".into(),
            env: EnvKind::Chain,
            curriculum: Curriculum::Fixed(6),
            eval_horizon: 6,
            iterations: 3,
            tasks_per_iter: 1,
            eval_tasks: 1,
            temperature: 1.0,
            task_pool: None,
            eval_on_train_pool: false,
            agentgym: None,
        },
        AblationSetting {
            name: "low".into(),
            env: EnvKind::LowOverlap,
            curriculum: Curriculum::Stepwise { caps: vec![4, 8], stage_len: 1 },
            eval_horizon: 8,
            iterations: 2,
            tasks_per_iter: 1,
            eval_tasks: 1,
            temperature: 1.0,
            task_pool: None,
            eval_on_train_pool: false,
            agentgym: None,
        },
    ];
    cfg.estimators = vec![EstimatorKind::Grpo, EstimatorKind::G2po];
    cfg.base.rollouts_per_task = 4;
    let report = run_ablation(&cfg, |_, _| {}).unwrap();
    assert_eq!(report.runs.len(), 2 * 2 * 2);
    assert_eq!(report.summary.len(), 4);
    // Truth exists on the tabular chain only.
    assert!(report.summary.iter().all(|r| r.truth_pearson.is_some() == (r.setting == "chain")));
    let csv = std::fs::read_to_string(out.join("runs.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 2 * 2 * 3 + 2 * 2 * 2);
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(summary.contains("| chain | g2po |") && summary.contains("| low | grpo |"));
    for name in ["chain.png", "low.png"] {
        let bytes = std::fs::read(out.join(name)).unwrap();
        assert_eq!(&bytes[1..4], b"PNG");
    }
    // Horizons follow the curriculum.
    let low = report.runs.iter().find(|r| r.setting == "low").unwrap();
    assert_eq!(low.logs.iter().map(|l| l.horizon).collect::<Vec<_>>(), vec![4, 8]);
    std::fs::remove_dir_all(out).ok();
}

#[test]
fn bad_ablation_configs_are_rejected() {
    let cfg = AblationConfig::standard("unused".into(), 1, true);
    assert!(run_ablation(&cfg, |_, _| {}).is_err());
    let mut cfg = AblationConfig::standard("unused".into(), 2, true);
    cfg.estimators.clear();
    assert!(run_ablation(&cfg, |_, _| {}).is_err());
}

#[test]
fn intervals_use_student_t() {
    let (m, h) = g2po::train::ablation::mean_ci(&[0.0, 1.0, 0.0, 1.0, 0.5]);
    assert!((m - 0.5).abs() < 1e-12);
    let sd = (0.25f64 * 4.0 / 4.0).sqrt();
    assert!((h - 2.776 * sd / 5f64.sqrt()).abs() < 1e-9);
}
