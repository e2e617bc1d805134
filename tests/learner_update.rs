//! The learner: updates move probability toward positive advantages, both
//! loss paths give the same step, clipping bounds the step, determinism and
//! input errors.
#![cfg(feature = "learner")]

use candle_core::Device;
use g2po::learner::{
    KlEstimator, Learner, LearnerConfig, LearnerError, LossAggregation, LossConfig, UpdateBatch, UpdateRow,
};
use g2po::policy::{Policy, PolicyConfig};

const OBS: &str = "you are in a hall; a lamp is here";

fn new_policy(seed: u64) -> Policy {
    let c = PolicyConfig { vocab: 64, hidden: 16, max_action_tokens: 4, max_observation_tokens: 32 };
    Policy::new(&c, &Device::Cpu, seed).unwrap()
}

fn admissible() -> Vec<String> {
    ["take lamp", "go north", "go south", "wait"].iter().map(|s| s.to_string()).collect()
}

/// One row per admissible action, sampled-policy logps from `p`; advantage
/// +1 for action `good`, -1/3 for the others (a zero-mean group).
fn batch(p: &Policy, good: usize) -> UpdateBatch {
    let rows = admissible()
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let tokens = p.tokenize_action(a);
            let (lp, _) = p.token_logps(&[OBS], &[&tokens], tokens.len()).unwrap();
            UpdateRow {
                observation: OBS.into(),
                old_logps: lp.to_vec2::<f32>().unwrap().remove(0),
                action_tokens: tokens,
                advantage: if i == good { 1.0 } else { -1.0 / 3.0 },
            }
        })
        .collect();
    UpdateBatch { rows }
}

fn params(p: &Policy) -> Vec<f32> {
    let data = p.varmap().data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    names.iter().flat_map(|n| data[*n].as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap()).collect()
}

fn config(fused: bool) -> LearnerConfig {
    LearnerConfig { lr: 0.01, ppo_epochs: 2, minibatch_size: 3, fused, ..LearnerConfig::default() }
}

#[test]
fn positive_advantage_raises_the_action_probability() {
    for fused in [true, false] {
        for good in [0, 2] {
            let p = new_policy(1);
            let before = p.action_probs(OBS, &admissible(), 1.0).unwrap()[good];
            let mut learner = Learner::new(config(fused), &p).unwrap();
            let b = batch(&p, good);
            let mut stats = Vec::new();
            for _ in 0..5 {
                stats.push(learner.update(&p, None, &b).unwrap());
            }
            let after = p.action_probs(OBS, &admissible(), 1.0).unwrap()[good];
            assert!(after > before + 0.05, "fused={fused} good={good}: {before} -> {after}");
            // 4 rows, mini-batches of 3, 2 epochs -> 4 optimiser steps per update.
            assert!(stats.iter().all(|s| s.minibatches == 4));
            // The data goes stale over the updates: the policy moves away from it.
            assert!(stats[4].approx_kl_old.abs() > stats[0].approx_kl_old.abs());
            assert!(stats[4].clip_fraction > 0.0, "the ratio leaves the trust region");
            assert!(stats[0].grad_norm > 0.0 && stats.iter().all(|s| s.entropy > 0.0), "{stats:?}");
            // Once every token is clipped, PPO stops pushing: no gradient.
            assert!(stats.iter().all(|s| s.clip_fraction < 1.0 || s.grad_norm == 0.0), "{stats:?}");
        }
    }
}

#[test]
fn fused_and_tensor_paths_take_the_same_steps() {
    let loss_configs = [
        LossConfig::default(),
        LossConfig {
            kl: Some((KlEstimator::K3, 0.01)),
            entropy_coef: 0.001,
            aggregation: LossAggregation::SeqMeanTokenMean,
            clip_high: 0.28,
            ..LossConfig::default()
        },
    ];
    for loss in loss_configs {
        let mut out = Vec::new();
        for fused in [true, false] {
            let p = new_policy(7);
            let reference = p.clone_frozen().unwrap();
            let mut learner = Learner::new(LearnerConfig { loss, ..config(fused) }, &p).unwrap();
            let b = batch(&p, 1);
            let mut stats = Vec::new();
            for _ in 0..3 {
                stats.push(learner.update(&p, Some(&reference), &b).unwrap());
            }
            out.push((params(&p), stats));
        }
        let (pa, sa) = &out[0];
        let (pb, sb) = &out[1];
        let max_diff = pa.iter().zip(pb).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(max_diff < 1e-4, "{loss:?}: parameters differ by {max_diff}");
        for (a, b) in sa.iter().zip(sb) {
            assert!((a.loss - b.loss).abs() < 1e-4 && (a.grad_norm - b.grad_norm).abs() < 1e-3 * (1.0 + a.grad_norm));
            assert!((a.kl_ref - b.kl_ref).abs() < 1e-6 && (a.entropy - b.entropy).abs() < 1e-5);
        }
        if loss.kl.is_some() {
            // Policy == reference at the first step (k3 >= 0), apart afterwards.
            assert!(sa[0].kl_ref >= 0.0 && sa[0].kl_ref < 0.05 && sa[2].kl_ref > sa[0].kl_ref, "{sa:?}");
        }
    }
}

#[test]
fn gradient_clipping_bounds_the_step() {
    // AdamW's first step is lr * g / (|g| + eps) per coordinate, i.e. about lr
    // whatever the gradient scale; clipping the global norm to 1e-10 makes the
    // clipped coordinates far smaller than eps = 1e-8, so every coordinate
    // moves by at most lr * 1e-10 / 1e-8 = lr / 100.
    let lr = 0.01;
    let run = |max_grad_norm: f64| {
        let p = new_policy(3);
        let before = params(&p);
        let c =
            LearnerConfig { lr, weight_decay: 0.0, max_grad_norm, ppo_epochs: 1, minibatch_size: 64, ..config(true) };
        let mut learner = Learner::new(c, &p).unwrap();
        let stats = learner.update(&p, None, &batch(&p, 0)).unwrap();
        let step = params(&p).iter().zip(&before).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        (stats, step)
    };
    let (free, free_step) = run(f64::INFINITY);
    let (clipped, clipped_step) = run(1e-10);
    // The reported norm is the one before clipping (same data, same weights).
    assert!((free.grad_norm - clipped.grad_norm).abs() < 1e-9 * free.grad_norm);
    assert!(clipped.grad_norm > 1e-10);
    assert!(free_step > 0.5 * lr as f32, "{free_step}");
    assert!(clipped_step <= (lr / 100.0) as f32 * 1.01, "{clipped_step}");
}

#[test]
fn updates_are_deterministic() {
    let run = || {
        let p = new_policy(11);
        let mut learner = Learner::new(LearnerConfig { minibatch_size: 1, seed: 42, ..config(true) }, &p).unwrap();
        let b = batch(&p, 3);
        let s = learner.update(&p, None, &b).unwrap();
        (params(&p), s)
    };
    let (pa, sa) = run();
    let (pb, sb) = run();
    assert_eq!(pa, pb);
    assert_eq!(sa, sb);
    assert_eq!(sa.minibatches, 8);
}

#[test]
fn update_input_errors() {
    let p = new_policy(0);
    let other = new_policy(0);
    let mut learner = Learner::new(config(true), &p).unwrap();
    let good = batch(&p, 0);
    assert!(matches!(learner.update(&other, None, &good), Err(LearnerError::BadInput(_))), "foreign policy");
    assert!(matches!(learner.update(&p, None, &UpdateBatch::default()), Err(LearnerError::BadInput(_))));
    let mut bad = good.clone();
    bad.rows[1].old_logps.pop();
    assert!(matches!(learner.update(&p, None, &bad), Err(LearnerError::BadInput(_))));
    let mut bad = good.clone();
    bad.rows[0].advantage = f32::NAN;
    assert!(matches!(learner.update(&p, None, &bad), Err(LearnerError::NonFinite { .. })));
    let mut bad = good.clone();
    for r in &mut bad.rows {
        r.action_tokens.clear();
        r.old_logps.clear();
    }
    assert!(matches!(learner.update(&p, None, &bad), Err(LearnerError::EmptyMask)));
    let kl = LearnerConfig {
        loss: LossConfig { kl: Some((KlEstimator::K1, 0.1)), ..LossConfig::default() },
        ..config(true)
    };
    let mut with_kl = Learner::new(kl, &p).unwrap();
    assert!(matches!(with_kl.update(&p, None, &good), Err(LearnerError::BadInput(_))), "missing reference");
    for c in [
        LearnerConfig { lr: 0.0, ..config(true) },
        LearnerConfig { betas: (1.0, 0.999), ..config(true) },
        LearnerConfig { max_grad_norm: 0.0, ..config(true) },
        LearnerConfig { ppo_epochs: 0, ..config(true) },
        LearnerConfig { loss: LossConfig { dual_clip: Some(0.9), ..LossConfig::default() }, ..config(true) },
    ] {
        assert!(matches!(Learner::new(c, &p), Err(LearnerError::BadConfig(_))));
    }
}
