//! The trainer learns the chain: greedy success goes from 0 to 1.
#![cfg(feature = "train")]

use g2po::EstimatorKind;
use g2po::curriculum::Curriculum;
use g2po::train::{TrainConfig, Trainer};
use g2po_envs::EnvKind;

fn chain_config(estimator: EstimatorKind, seed: u64) -> TrainConfig {
    // Chain of 6 with a cap of exactly 6 turns: only "forward" every time
    // succeeds, so an untrained policy almost never does (about 2^-6).
    TrainConfig {
        env: EnvKind::Chain,
        estimator,
        curriculum: Curriculum::Fixed(6),
        iterations: 25,
        tasks_per_iter: 2,
        rollouts_per_task: 8,
        eval_tasks: 1,
        eval_horizon: Some(6),
        seed,
        ..TrainConfig::default()
    }
}

#[test]
fn g2po_learns_the_chain() {
    let logs = Trainer::new(chain_config(EstimatorKind::G2po, 3)).unwrap().run(|_| {}).unwrap();
    let first = &logs[0];
    let last5: f64 = logs[logs.len() - 5..].iter().map(|l| l.train_success).sum::<f64>() / 5.0;
    assert!(first.train_success <= 0.2, "untrained success {}", first.train_success);
    assert_eq!(logs.last().unwrap().eval_success, Some(1.0));
    assert!(last5 >= 0.8, "late training success {last5}");
    assert!(logs.iter().all(|l| l.update.grad_norm.is_finite()));
}

#[test]
fn runs_are_reproducible() {
    let cfg = TrainConfig { iterations: 3, ..chain_config(EstimatorKind::Gigpo, 9) };
    let strip = |v: Vec<g2po::train::IterationLog>| -> Vec<_> {
        v.into_iter()
            .map(|l| (l.train_success, l.mean_length, l.update.diagnostics.policy_loss, l.truth.map(|t| t.pearson)))
            .collect()
    };
    let a = strip(Trainer::new(cfg.clone()).unwrap().run(|_| {}).unwrap());
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let b = strip(pool.install(|| Trainer::new(cfg).unwrap().run(|_| {}).unwrap()));
    assert_eq!(a, b);
}

#[test]
fn bad_configs_are_typed_errors() {
    use g2po::train::TrainError;
    let base = chain_config(EstimatorKind::Grpo, 0);
    for cfg in [
        TrainConfig { temperature: 0.0, ..base.clone() },
        TrainConfig { temperature: f64::NAN, ..base.clone() },
        TrainConfig { tasks_per_iter: 0, ..base.clone() },
        TrainConfig { eval_every: 0, ..base.clone() },
        TrainConfig { eval_horizon: Some(0), ..base.clone() },
    ] {
        assert!(matches!(Trainer::new(cfg), Err(TrainError::BadConfig(_))));
    }
    let bad_curriculum = TrainConfig { curriculum: Curriculum::Fixed(0), ..base.clone() };
    assert!(matches!(Trainer::new(bad_curriculum), Err(TrainError::Curriculum(_))));
    let mut bad_learner = base;
    bad_learner.learner.lr = -1.0;
    assert!(matches!(Trainer::new(bad_learner), Err(TrainError::Learner(_))));
}

#[test]
fn kl_reference_is_the_frozen_initial_policy() {
    let mut cfg = TrainConfig { iterations: 3, ..chain_config(EstimatorKind::G2po, 1) };
    cfg.learner.loss.kl = Some((g2po::learner::KlEstimator::K3, 0.01));
    // One mini-batch and one epoch per update (at most 2 x 8 x 6 = 96 rows),
    // so the first update is evaluated at the initial policy.
    assert!(cfg.learner.minibatch_size >= 96 && cfg.learner.ppo_epochs == 1);
    let logs = Trainer::new(cfg).unwrap().run(|_| {}).unwrap();
    // The reference is a copy of the initial policy: exactly no KL at first...
    assert_eq!(logs[0].update.diagnostics.kl_ref, 0.0);
    // ...and a positive one once the policy has moved (k3 > 0 off the reference).
    for l in &logs[1..] {
        assert!(l.update.diagnostics.kl_ref > 0.0, "iteration {}: {:?}", l.iteration, l.update);
    }
}
