//! PPO's critic: verl's clipped value loss, explained variance, and PPO runs in
//! the trainer with its critic logged.
#![cfg(feature = "train")]

use g2po::learner::critic::{Critic, CriticConfig, explained_variance};
use g2po::policy::{Policy, PolicyConfig};

fn policy() -> Policy {
    Policy::new(&PolicyConfig { vocab: 64, hidden: 8, ..Default::default() }, &candle_core::Device::Cpu, 3).unwrap()
}

#[test]
fn clipped_value_loss_as_verl() {
    let p = policy();
    let obs = ["a hall", "a door", "a wall"];
    // One epoch at a tiny learning rate: the loss reported is the first epoch's,
    // computed from the current values (all 0 at initialisation).
    let mut c =
        Critic::new(&p, CriticConfig { epochs: 1, lr: 1e-6, cliprange_value: 0.5, ..Default::default() }, 0).unwrap();
    assert_eq!(c.values(&p, &obs).unwrap(), vec![0.0; 3]);
    // Old values 0, 2, -3 with returns 1, 1, 1 and v = 0:
    //   row 0: v_clip = clamp(0, -0.5, 0.5) = 0: (0 - 1)^2 = 1 both, not clipped;
    //   row 1: v_clip = clamp(0, 1.5, 2.5) = 1.5: max(1, 0.25) = 1, clipped term smaller;
    //   row 2: v_clip = clamp(0, -3.5, -2.5) = -2.5: max(1, 12.25) = 12.25, clipped term larger.
    // L = 0.5 * (1 + 1 + 12.25) / 3 = 2.375; clip fraction 1/3.
    let stats = c.update(&p, &obs, &[0.0, 2.0, -3.0], &[1.0, 1.0, 1.0]).unwrap();
    assert!((stats.value_loss - 2.375).abs() < 1e-5, "{stats:?}");
    assert!((stats.value_clip_fraction - 1.0 / 3.0).abs() < 1e-6, "{stats:?}");
    // Explained variance of the old values against the returns (constant returns: 0).
    assert_eq!(stats.explained_variance, 0.0);
    assert!((explained_variance(&[1.0, 2.0], &[1.0, 3.0]) - (1.0 - 0.25 / 1.0)).abs() < 1e-12);
    // Bad input is a typed error, never a panic.
    assert!(c.update(&p, &obs, &[0.0; 2], &[1.0; 3]).is_err());
    assert!(c.update(&p, &obs, &[0.0, f32::NAN, 0.0], &[1.0; 3]).is_err());
    assert!(Critic::new(&p, CriticConfig { cliprange_value: 0.0, ..Default::default() }, 0).is_err());
}

#[test]
fn critic_fits_its_returns() {
    // A vocabulary wide enough that the four rooms' words do not share hash buckets.
    let p = Policy::new(&PolicyConfig { vocab: 4096, hidden: 8, ..Default::default() }, &candle_core::Device::Cpu, 3)
        .unwrap();
    let obs = ["the kitchen", "the garden", "the cellar", "the attic"];
    let returns = [4.0f32, -2.0, 1.0, 0.0];
    let mut c = Critic::new(&p, CriticConfig::default(), 1).unwrap();
    let mut ev = Vec::new();
    for _ in 0..60 {
        let old = c.values(&p, &obs).unwrap();
        ev.push(c.update(&p, &obs, &old, &returns).unwrap().explained_variance);
    }
    assert!(ev[0].abs() < 1e-9, "initial values are 0: {}", ev[0]);
    assert!(*ev.last().unwrap() > 0.9, "explained variance after training: {ev:?}");
}

#[test]
fn ppo_trains_with_its_critic_logged() {
    use g2po::EstimatorKind;
    use g2po::train::{TrainConfig, Trainer};
    let cfg = TrainConfig {
        estimator: EstimatorKind::Ppo,
        iterations: 3,
        tasks_per_iter: 2,
        rollouts_per_task: 4,
        eval_tasks: 1,
        ..Default::default()
    };
    let logs = Trainer::new(cfg).unwrap().run(|_| {}).unwrap();
    assert_eq!(logs.len(), 3);
    for l in &logs {
        let c = l.critic.expect("PPO logs its critic");
        assert!(c.value_loss.is_finite() && c.explained_variance.is_finite() && c.explained_variance <= 1.0);
        assert!(l.truth.is_some(), "the chain is tabular: PPO is scored against the truth too");
    }
    // Other estimators have no critic.
    let grpo = TrainConfig { estimator: EstimatorKind::Grpo, iterations: 1, eval_tasks: 1, ..Default::default() };
    assert!(Trainer::new(grpo).unwrap().run(|_| {}).unwrap()[0].critic.is_none());
}
