//! Conformance of RLOO, REINFORCE++-baseline and GRPO pass@k to verl's
//! formulas (`core_algos.py`, SPEC 7), on the token layout verl uses.
//!
//! The reference below is written the way verl computes: a padded
//! `[rows x max_len]` token-reward matrix with the row score on the last
//! response token, scores = row sums, per-uid lists of scores, and for
//! REINFORCE++-baseline the broadcast to the tokens followed by `masked_whiten`
//! over the whole matrix (masked mean, unbiased masked variance with Bessel's
//! `n / (n - 1)` over the token count, `rsqrt(var + 1e-8)`). Only the tie rule
//! of pass@k is fixed here (first row in row order; `torch.topk` leaves ties
//! unspecified). The engine's row advantages, broadcast by
//! `g2po::broadcast::padded`, must match every token to 1e-4 on random batches.

use g2po::{AdvantageEstimator, Anchor, Estimator, EstimatorConfig, EstimatorKind, Normalization, RolloutBatch, Step};
use rand::{Rng, SeedableRng};

/// A random batch: 1-6 groups of 1-5 trajectories of 1-6 steps, rewards 10 or
/// 0 (or a random value), some invalid actions, 1-9 response tokens per row.
fn random_batch(rng: &mut impl Rng) -> RolloutBatch {
    let mut b = RolloutBatch::builder();
    for g in 0..rng.random_range(1..7) {
        for t in 0..rng.random_range(1..6) {
            let reward = match rng.random_range(0..3) {
                0 => 10.0,
                1 => 0.0,
                _ => rng.random_range(-3.0..8.0),
            };
            let len = rng.random_range(1..7);
            let steps: Vec<Step<'_>> = (0..len)
                .map(|i| Step {
                    anchor: Anchor::Key(rng.random_range(0..4)),
                    reward: if i + 1 == len { reward } else { 0.0 },
                    valid: rng.random_bool(0.8),
                    response_len: rng.random_range(1..10),
                })
                .collect();
            b.push_trajectory(&format!("uid{g}"), &format!("uid{g}/{t}"), reward, steps).unwrap();
        }
    }
    b.build().unwrap()
}

/// verl's inputs: token-level rewards (the score on the last response token),
/// the response mask, and the uid of each row.
struct Tokens {
    rewards: Vec<Vec<f64>>,
    mask: Vec<Vec<f64>>,
    index: Vec<u32>,
}

fn tokens(batch: &RolloutBatch, penalty: f64) -> Tokens {
    let width = *batch.response_lens().iter().max().unwrap() as usize;
    let mut t = Tokens { rewards: Vec::new(), mask: Vec::new(), index: batch.groups().to_vec() };
    for r in 0..batch.len() {
        let len = batch.response_lens()[r] as usize;
        let score = batch.episode_rewards()[r] - if batch.valid()[r] { 0.0 } else { penalty };
        let mut row = vec![0.0; width];
        row[len - 1] = score;
        t.rewards.push(row);
        t.mask.push((0..width).map(|j| if j < len { 1.0 } else { 0.0 }).collect());
    }
    t
}

fn by_uid(index: &[u32]) -> std::collections::BTreeMap<u32, Vec<usize>> {
    let mut m = std::collections::BTreeMap::<u32, Vec<usize>>::new();
    for (i, &u) in index.iter().enumerate() {
        m.entry(u).or_default().push(i);
    }
    m
}

fn broadcast(t: &Tokens, per_row: &[f64]) -> Vec<Vec<f64>> {
    t.mask.iter().zip(per_row).map(|(m, &a)| m.iter().map(|&x| x * a).collect()).collect()
}

/// verl `compute_rloo_outcome_advantage`.
fn verl_rloo(t: &Tokens) -> Vec<Vec<f64>> {
    let mut scores: Vec<f64> = t.rewards.iter().map(|r| r.iter().sum()).collect();
    for rows in by_uid(&t.index).values() {
        let n = rows.len() as f64;
        let mean = if rows.len() == 1 { 0.0 } else { rows.iter().map(|&i| scores[i]).sum::<f64>() / n };
        if rows.len() > 1 {
            for &i in rows {
                scores[i] = scores[i] * n / (n - 1.0) - mean * n / (n - 1.0);
            }
        }
    }
    broadcast(t, &scores)
}

/// verl `compute_reinforce_plus_plus_baseline_outcome_advantage`.
fn verl_reinforce_pp_baseline(t: &Tokens) -> Vec<Vec<f64>> {
    let mut scores: Vec<f64> = t.rewards.iter().map(|r| r.iter().sum()).collect();
    for rows in by_uid(&t.index).values() {
        let mean = if rows.len() == 1 { 0.0 } else { rows.iter().map(|&i| scores[i]).sum::<f64>() / rows.len() as f64 };
        for &i in rows {
            scores[i] -= mean;
        }
    }
    let values = broadcast(t, &scores);
    // verl_F.masked_whiten(values, mask): masked mean, unbiased masked var.
    let cells = || values.iter().flatten().zip(t.mask.iter().flatten());
    let mask_sum: f64 = t.mask.iter().flatten().sum();
    let mean = cells().map(|(v, m)| v * m).sum::<f64>() / mask_sum;
    let var = cells().map(|(v, m)| (v - mean).powi(2) * m).sum::<f64>() / mask_sum * (mask_sum / (mask_sum - 1.0));
    let rsqrt = 1.0 / (var + 1e-8).sqrt();
    values
        .iter()
        .zip(&t.mask)
        .map(|(row, m)| row.iter().zip(m).map(|(v, mm)| (v - mean) * rsqrt * mm).collect())
        .collect()
}

/// verl `compute_grpo_passk_outcome_advantage` (ties: the first row).
fn verl_passk(t: &Tokens, eps: f64, norm_by_std: bool) -> Vec<Vec<f64>> {
    let scores: Vec<f64> = t.rewards.iter().map(|r| r.iter().sum()).collect();
    let mut adv = vec![0.0; scores.len()];
    for rows in by_uid(&t.index).values() {
        let mut order = rows.clone();
        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
        let (i_max, r_max, r_second) = (order[0], scores[order[0]], scores[order[1]]);
        let mut a = r_max - r_second;
        if norm_by_std {
            let n = rows.len() as f64;
            let m = rows.iter().map(|&i| scores[i]).sum::<f64>() / n;
            let std = (rows.iter().map(|&i| (scores[i] - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
            a /= std + eps;
        }
        adv[i_max] = a;
    }
    broadcast(t, &adv)
}

fn assert_tokens_match(kind: EstimatorKind, norm: Normalization, batch: &RolloutBatch, want: &[Vec<f64>]) {
    let adv = Estimator::new(EstimatorConfig { norm, ..EstimatorConfig::new(kind) }).unwrap().estimate(batch).unwrap();
    let padded = g2po::broadcast::padded(&adv, batch, None).unwrap();
    assert_eq!(padded.values.dim(), (want.len(), want[0].len()));
    for (r, row) in want.iter().enumerate() {
        for (j, &w) in row.iter().enumerate() {
            let got = padded.values[[r, j]] as f64;
            assert!((got - w).abs() < 1e-4, "{kind} {norm:?} row {r} token {j}: engine {got}, verl {w}");
        }
    }
}

#[test]
fn rloo_reinforce_pp_and_passk_match_verl_on_the_token_layout() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2026);
    for _ in 0..300 {
        let batch = random_batch(&mut rng);
        let t = tokens(&batch, 0.1);
        for norm in [Normalization::MeanStd, Normalization::Mean] {
            assert_tokens_match(EstimatorKind::Rloo, norm, &batch, &verl_rloo(&t));
            assert_tokens_match(
                EstimatorKind::ReinforcePlusPlusBaseline,
                norm,
                &batch,
                &verl_reinforce_pp_baseline(&t),
            );
            if (0..batch.num_groups()).all(|g| batch.group_rows(g).len() >= 2) {
                let want = verl_passk(&t, 1e-6, norm == Normalization::MeanStd);
                assert_tokens_match(EstimatorKind::GrpoPassk, norm, &batch, &want);
            }
        }
    }
}
