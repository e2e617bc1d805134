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
    if let Some(t) = cfg.truth.as_mut() {
        t.estimators = cfg.estimators.clone();
    }
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
    // Paired differences to GRPO: one row per (setting, other estimator), seeds all paired.
    assert_eq!(report.paired.len(), 2);
    for p in &report.paired {
        assert_eq!((p.estimator, p.n, p.train_wins + p.train_losses + p.train_ties), (EstimatorKind::G2po, 2, 2));
        let mine = |e| {
            report
                .runs
                .iter()
                .filter(move |r| r.setting == p.setting && r.estimator == e)
                .map(|r| r.final_train_success())
        };
        let d: Vec<f64> = mine(EstimatorKind::G2po).zip(mine(EstimatorKind::Grpo)).map(|(a, g)| a - g).collect();
        assert!((p.train_diff - (d[0] + d[1]) / 2.0).abs() < 1e-12);
    }
    assert!(summary.contains("Paired difference to GRPO"));
    // The exact-truth table: chain and lost robot, every estimator scored.
    assert_eq!(report.truth.len(), 2 * 2);
    assert!(report.truth.iter().all(|r| r.n == 2 && r.pearson.0.is_finite()));
    let truth = std::fs::read_to_string(out.join("truth.md")).unwrap();
    assert!(truth.contains("| chain | 4 | g2po |") && truth.contains("best"));
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
