//! The learner: updates move probability toward positive advantages, both
//! loss paths give the same step, clipping bounds the step, statistics are
//! token-weighted, `target_kl` stops the epochs, determinism and input
//! errors.
#![cfg(feature = "learner")]

use candle_core::Device;
use g2po::learner::{
    KlEstimator, Learner, LearnerConfig, LearnerError, LossAggregation, LossConfig, UpdateBatch, UpdateRow, UpdateStats,
};
use g2po::loss::LossError;
use g2po::policy::{Policy, PolicyConfig};

const OBS: &str = "you are in a hall; a lamp is here";

fn new_policy(seed: u64) -> Policy {
    let c = PolicyConfig { vocab: 64, hidden: 16, max_action_tokens: 4, max_observation_tokens: 32 };
    Policy::new(&c, &Device::Cpu, seed).unwrap()
}

fn admissible() -> Vec<String> {
    ["take lamp", "go north", "go south", "wait"].iter().map(|s| s.to_string()).collect()
}

/// One row per admissible action with sampled-policy logps from `p`.
fn rows(p: &Policy) -> Vec<UpdateRow> {
    admissible()
        .iter()
        .map(|a| {
            let tokens = p.tokenize_action(a);
            let (lp, _) = p.token_logps(&[OBS], &[&tokens], tokens.len()).unwrap();
            UpdateRow {
                observation: OBS.into(),
                old_logps: lp.to_vec2::<f32>().unwrap().remove(0),
                action_tokens: tokens,
            }
        })
        .collect()
}

/// Advantage +1 for action `good`, -1/3 for the others (a zero-mean group).
fn advantages(good: usize) -> Vec<f32> {
    (0..admissible().len()).map(|i| if i == good { 1.0 } else { -1.0 / 3.0 }).collect()
}

fn batch(p: &Policy, good: usize) -> UpdateBatch {
    UpdateBatch::with_row_advantages(rows(p), &advantages(good)).unwrap()
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
            let d: Vec<_> = stats.iter().map(|s| s.diagnostics).collect();
            assert!(d[4].approx_kl_old.abs() > d[0].approx_kl_old.abs());
            assert!(d[4].approx_kl_old_k3 > d[0].approx_kl_old_k3 && d.iter().all(|d| d.approx_kl_old_k3 >= 0.0));
            assert!(d[4].clip_fraction > 0.0, "the ratio leaves the trust region");
            assert!(stats[0].grad_norm > 0.0 && d.iter().all(|d| d.entropy > 0.0), "{stats:?}");
            // Once every token is clipped, PPO stops pushing: no gradient.
            assert!(stats.iter().all(|s| s.diagnostics.clip_fraction < 1.0 || s.grad_norm == 0.0), "{stats:?}");
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
            let (a, b) = (a.diagnostics, b.diagnostics);
            assert!((a.kl_ref - b.kl_ref).abs() < 1e-6 && (a.entropy - b.entropy).abs() < 1e-5);
            assert!((a.entropy_loss - b.entropy_loss).abs() < 1e-5);
            assert!((a.approx_kl_old_k3 - b.approx_kl_old_k3).abs() < 1e-6);
        }
        if loss.kl.is_some() {
            // Policy == reference at the first step (k3 >= 0), apart afterwards.
            let (first, last) = (sa[0].diagnostics.kl_ref, sa[2].diagnostics.kl_ref);
            assert!((0.0..0.05).contains(&first) && last > first, "{sa:?}");
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
fn kl_to_an_identical_reference_is_zero_until_the_policy_moves() {
    let p = new_policy(5);
    let reference = p.clone_frozen().unwrap();
    let loss = LossConfig { kl: Some((KlEstimator::K3, 0.01)), ..LossConfig::default() };
    // One mini-batch, one epoch: the first update sees the initial policy only.
    let c = LearnerConfig { loss, lr: 0.05, ppo_epochs: 1, minibatch_size: 64, ..LearnerConfig::default() };
    let mut learner = Learner::new(c, &p).unwrap();
    let b = batch(&p, 1);
    let first = learner.update(&p, Some(&reference), &b).unwrap();
    assert_eq!(first.diagnostics.kl_ref, 0.0, "identical policies: exactly zero");
    let second = learner.update(&p, Some(&reference), &b).unwrap();
    assert!(second.diagnostics.kl_ref > 0.0, "{second:?}");
}

/// Rows of different lengths, each in its own mini-batch: the update's
/// statistics must weigh each mini-batch by its tokens. With a vanishing
/// learning rate every mini-batch sees the initial (sampling) policy, where
/// the surrogate of a token is exactly -A, so the weighted policy loss is
/// `-sum(n_r A_r) / sum(n_r)` while an unweighted mean would be `-mean(A_r)`.
#[test]
fn statistics_are_token_weighted_means_over_minibatches() {
    let p = new_policy(2);
    let rows = rows(&p);
    let lens: Vec<f64> = rows.iter().map(|r| r.action_tokens.len() as f64).collect();
    assert!(lens.iter().any(|&l| l != lens[0]), "the test needs rows of different lengths: {lens:?}");
    let adv = [1.0f32, -2.0, 0.5, 3.0];
    let batch = UpdateBatch::with_row_advantages(rows, &adv).unwrap();
    let c = LearnerConfig { lr: 1e-12, ppo_epochs: 1, minibatch_size: 1, max_grad_norm: f64::INFINITY, ..config(true) };
    let stats = Learner::new(c, &p).unwrap().update(&p, None, &batch).unwrap();
    let tokens: f64 = lens.iter().sum();
    let weighted = -lens.iter().zip(adv).map(|(n, a)| n * f64::from(a)).sum::<f64>() / tokens;
    let unweighted = -adv.iter().map(|&a| f64::from(a)).sum::<f64>() / adv.len() as f64;
    assert!((weighted - unweighted).abs() > 0.1, "the case must tell the two apart");
    assert!((stats.diagnostics.policy_loss - weighted).abs() < 1e-6, "{} vs {weighted}", stats.diagnostics.policy_loss);
    assert!((stats.loss - weighted).abs() < 1e-6);
    assert_eq!(stats.tokens, tokens as usize);
    assert_eq!((stats.minibatches, stats.epochs, stats.early_stopped), (4, 1, false));
}

#[test]
fn target_kl_stops_the_epochs_early() {
    let run = |target_kl: Option<f64>| {
        let p = new_policy(4);
        let c = LearnerConfig { lr: 0.05, ppo_epochs: 10, minibatch_size: 2, target_kl, ..LearnerConfig::default() };
        let mut learner = Learner::new(c, &p).unwrap();
        learner.update(&p, None, &batch(&p, 0)).unwrap()
    };
    let full = run(None);
    assert_eq!((full.epochs, full.minibatches, full.early_stopped), (10, 20, false));
    let loose = run(Some(1e9));
    assert_eq!((loose.epochs, loose.minibatches, loose.early_stopped), (10, 20, false));
    // The first epoch's second mini-batch already sees a moved policy, so its
    // k3 is positive: a tiny target stops after that epoch.
    let tight = run(Some(1e-9));
    assert_eq!((tight.epochs, tight.minibatches, tight.early_stopped), (1, 2, true), "{tight:?}");
    // Stopping early changes the outcome (fewer steps, the data less stale).
    assert!(tight.diagnostics.approx_kl_old_k3 < full.diagnostics.approx_kl_old_k3);
}

#[test]
fn stats_serialise_flat() {
    let p = new_policy(6);
    let stats = Learner::new(config(true), &p).unwrap().update(&p, None, &batch(&p, 0)).unwrap();
    let json = serde_json::to_value(stats).unwrap();
    for key in
        ["loss", "policy_loss", "clip_fraction", "approx_kl_old", "approx_kl_old_k3", "kl_ref", "entropy", "grad_norm"]
    {
        assert!(json[key].is_number(), "{key} missing in {json}");
    }
    assert!(json.get("diagnostics").is_none());
    let back: UpdateStats = serde_json::from_value(json).unwrap();
    assert_eq!(back, stats);
}

#[test]
fn update_input_errors() {
    let p = new_policy(0);
    let other = new_policy(0);
    let mut learner = Learner::new(config(true), &p).unwrap();
    let good = batch(&p, 0);
    assert!(matches!(learner.update(&other, None, &good), Err(LearnerError::BadInput(_))), "foreign policy");
    assert!(matches!(UpdateBatch::with_row_advantages(vec![], &[]), Err(LearnerError::BadInput(_))));
    let mut bad = rows(&p);
    bad[1].old_logps.pop();
    assert!(matches!(UpdateBatch::with_row_advantages(bad, &advantages(0)), Err(LearnerError::BadInput(_))));
    assert!(matches!(UpdateBatch::with_row_advantages(rows(&p), &[1.0]), Err(LearnerError::Layout(_))));
    let mut nan = advantages(0);
    nan[0] = f32::NAN;
    let bad = UpdateBatch::with_row_advantages(rows(&p), &nan).unwrap();
    assert!(matches!(learner.update(&p, None, &bad), Err(LearnerError::Loss(LossError::NonFinite { .. }))));
    let mut empty = rows(&p);
    empty[2].action_tokens.clear();
    empty[2].old_logps.clear();
    assert!(matches!(UpdateBatch::with_row_advantages(empty, &advantages(0)), Err(LearnerError::BadInput(_))));
    // A mask past the action, or not 0/1.
    let lens: Vec<u32> = rows(&p).iter().map(|r| r.action_tokens.len() as u32 + 1).collect();
    let wide = g2po::broadcast::padded_rows(&advantages(0), &lens, None).unwrap();
    assert!(matches!(UpdateBatch::new(rows(&p), wide), Err(LearnerError::BadInput(_))));
    let mut half =
        g2po::broadcast::padded_rows(&advantages(0), &lens.iter().map(|l| l - 1).collect::<Vec<_>>(), None).unwrap();
    half.mask[[0, 0]] = 0.5;
    assert!(matches!(UpdateBatch::new(rows(&p), half), Err(LearnerError::BadInput(_))));
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
        LearnerConfig { target_kl: Some(f64::NAN), ..config(true) },
    ] {
        assert!(matches!(Learner::new(c, &p), Err(LearnerError::BadConfig(_))));
    }
    let bad_loss = LearnerConfig { loss: LossConfig { dual_clip: Some(0.9), ..LossConfig::default() }, ..config(true) };
    assert!(matches!(Learner::new(bad_loss, &p), Err(LearnerError::Loss(LossError::BadConfig(_)))));
}
