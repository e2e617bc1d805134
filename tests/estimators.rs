//! Hand-derived cases of the estimators beyond the references (SPEC 7-8): RLOO,
//! REINFORCE++-baseline, GRPO pass@k, G2PO on the history tree and G2PO with a
//! Bellman backup. Each includes one-row groups, equal scores, a 2-cycle and a
//! self-loop where they matter; the arithmetic is written out in comments.

use g2po::estimators::{BellmanMethod, bellman_values};
use g2po::graph::StateGraph;
use g2po::{
    AdvantageEstimator, Advantages, Anchor, Error, Estimator, EstimatorConfig, EstimatorKind, Normalization,
    RolloutBatch, StatsOver, Step,
};

const EPS: f64 = 1e-6;

fn step(obs: &str) -> Step<'_> {
    Step { anchor: Anchor::Text(obs), reward: 0.0, valid: true, response_len: 3 }
}

fn last(obs: &str, reward: f64) -> Step<'_> {
    Step { reward, ..step(obs) }
}

fn cfg(kind: EstimatorKind, norm: Normalization) -> EstimatorConfig {
    EstimatorConfig { norm, ..EstimatorConfig::new(kind) }
}

fn run(cfg: EstimatorConfig, batch: &RolloutBatch) -> Advantages {
    Estimator::new(cfg).unwrap().estimate(batch).unwrap()
}

fn assert_close(got: &[f32], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((g as f64 - w).abs() < 1e-5, "{what}[{i}]: got {g}, want {w} (all: {got:?})");
    }
}

/// One-step trajectories with the given episode rewards in one group each of `groups`.
fn one_step_groups(groups: &[&[f64]]) -> RolloutBatch {
    let mut b = RolloutBatch::builder();
    for (g, rewards) in groups.iter().enumerate() {
        for (t, &r) in rewards.iter().enumerate() {
            b.push_trajectory(&format!("g{g}"), &format!("g{g}/{t}"), r, [last("s", r)]).unwrap();
        }
    }
    b.build().unwrap()
}

// ---------------------------------------------------------------- RLOO

#[test]
fn rloo_is_the_score_minus_the_mean_of_the_others() {
    // Group 0: scores 10, 0, 4; n = 3, mean 14/3, A = s * 3/2 - mean * 3/2:
    //   15 - 7 = 8 (= 10 - mean(0, 4)), 0 - 7 = -7 (= 0 - 7), 6 - 7 = -1 (= 4 - 5).
    // Group 1: one row, A = s = 7. Group 2: equal scores, A = 0.
    let batch = one_step_groups(&[&[10.0, 0.0, 4.0], &[7.0], &[3.0, 3.0]]);
    for norm in [Normalization::MeanStd, Normalization::Mean] {
        let adv = run(cfg(EstimatorKind::Rloo, norm), &batch);
        assert_close(&adv.advantage, &[8.0, -7.0, -1.0, 7.0, 0.0, 0.0], "rloo (the mode is ignored)");
        assert_eq!(adv.episode, adv.advantage);
        assert!(adv.node.is_empty() && adv.step.is_empty());
    }
}

#[test]
fn rloo_over_step_rows_and_trajectories_with_a_penalty() {
    // A (R = 10): two rows, the second invalid (score 9.9); B (R = 0): one row.
    let mut b = RolloutBatch::builder();
    b.push_trajectory("g", "A", 10.0, [step("a"), Step { valid: false, ..last("b", 10.0) }]).unwrap();
    b.push_trajectory("g", "B", 0.0, [last("a", 0.0)]).unwrap();
    let batch = b.build().unwrap();
    // Rows: scores 10, 9.9, 0; n = 3, mean 19.9/3; A = 1.5 s - 1.5 mean:
    //   15 - 9.95 = 5.05, 14.85 - 9.95 = 4.9, 0 - 9.95 = -9.95.
    let adv = run(cfg(EstimatorKind::Rloo, Normalization::MeanStd), &batch);
    assert_close(&adv.advantage, &[5.05, 4.9, -9.95], "rows");
    // Trajectories: n = 2, mean of 10 and 0 = 5; A = 2 s - 2 * 5: 10, 9.8, -10.
    let c = EstimatorConfig { stats_over: StatsOver::Trajectories, ..cfg(EstimatorKind::Rloo, Normalization::Mean) };
    assert_close(&run(c, &batch).advantage, &[10.0, 9.8, -10.0], "trajectories");
}

// ---------------------------------------------------------------- REINFORCE++-baseline

#[test]
fn reinforce_plus_plus_baseline_whitens_over_tokens() {
    // Group 0: scores 10, 0 (response lengths 1, 3); group 1: one row, score 5 (length 2).
    // Baselines: a = 10 - 5 = 5, 0 - 5 = -5; the one-row group has mean 0: a = 5.
    // Tokens: 1 x 5, 3 x -5, 2 x 5: L = 6, mu = (5 - 15 + 10) / 6 = 0,
    // var = (25 + 75 + 50) / 6 * 6 / 5 = 30 (unbiased over the tokens), A = a / sqrt(30 + 1e-8).
    let mut b = RolloutBatch::builder();
    b.push_trajectory("g0", "x", 10.0, [Step { response_len: 1, ..last("s", 10.0) }]).unwrap();
    b.push_trajectory("g0", "y", 0.0, [Step { response_len: 3, ..last("s", 0.0) }]).unwrap();
    b.push_trajectory("g1", "z", 5.0, [Step { response_len: 2, ..last("s", 5.0) }]).unwrap();
    let batch = b.build().unwrap();
    let adv = run(cfg(EstimatorKind::ReinforcePlusPlusBaseline, Normalization::MeanStd), &batch);
    assert_close(&adv.episode, &[5.0, -5.0, 5.0], "baseline-subtracted scores");
    let s = (30.0f64 + 1e-8).sqrt();
    assert_close(&adv.advantage, &[5.0 / s, -5.0 / s, 5.0 / s], "whitened");
    // Weighting by rows instead of tokens would give mu = 5/3 and other values.
    assert!((adv.advantage[0] as f64 - (5.0 - 5.0 / 3.0) / s).abs() > 0.1);

    // Equal scores: every a is 0, the whitened values too (no NaN at zero spread).
    let adv =
        run(cfg(EstimatorKind::ReinforcePlusPlusBaseline, Normalization::MeanStd), &one_step_groups(&[&[4.0, 4.0]]));
    assert_eq!(adv.advantage, vec![0.0, 0.0]);

    // One response token in the whole batch: the unbiased variance is undefined (verl raises).
    let mut b = RolloutBatch::builder();
    b.push_trajectory("g", "t", 1.0, [Step { response_len: 1, ..last("s", 1.0) }]).unwrap();
    b.push_trajectory("g", "u", 0.0, [Step { response_len: 0, ..last("s", 0.0) }]).unwrap();
    let err = Estimator::new(EstimatorConfig::new(EstimatorKind::ReinforcePlusPlusBaseline))
        .unwrap()
        .estimate(&b.build().unwrap())
        .unwrap_err();
    assert!(matches!(err, Error::TooFewTokens { found: 1, needed: 2 }), "{err:?}");
}

// ---------------------------------------------------------------- GRPO pass@k

#[test]
fn passk_credits_only_the_best_row() {
    // Group 0: scores 3, 7, 1: best row 1, gap 7 - 3 = 4; sd: mean 11/3, squares
    //   (4/9 + 100/9 + 64/9) / 2 = 28/3, sd = sqrt(28/3) = 3.0550505.
    // Group 1: scores 10, 0, 10: tied best, the first (row 3) wins with gap 10 - 10 = 0.
    // Group 2: equal scores: 0 everywhere.
    let batch = one_step_groups(&[&[3.0, 7.0, 1.0], &[10.0, 0.0, 10.0], &[2.0, 2.0]]);
    let adv = run(cfg(EstimatorKind::GrpoPassk, Normalization::Mean), &batch);
    assert_close(&adv.advantage, &[0.0, 4.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], "mean_norm");
    let adv = run(cfg(EstimatorKind::GrpoPassk, Normalization::MeanStd), &batch);
    let sd = (28.0f64 / 3.0).sqrt();
    assert_close(&adv.advantage, &[0.0, 4.0 / (sd + EPS), 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], "mean_std_norm");

    // Ties: 5, 9, 9, 2: the first 9 (row 1) gets 9 - 9 = 0, not the second.
    let adv = run(cfg(EstimatorKind::GrpoPassk, Normalization::Mean), &one_step_groups(&[&[5.0, 9.0, 9.0, 2.0]]));
    assert_eq!(adv.advantage, vec![0.0; 4]);
    // 5, 9, 8: row 1 gets 1.
    let adv = run(cfg(EstimatorKind::GrpoPassk, Normalization::Mean), &one_step_groups(&[&[5.0, 9.0, 8.0]]));
    assert_close(&adv.advantage, &[0.0, 1.0, 0.0], "gap to the second best");

    // A one-row group is an error naming the group; stats over trajectories are refused.
    let err = Estimator::new(EstimatorConfig::new(EstimatorKind::GrpoPassk))
        .unwrap()
        .estimate(&one_step_groups(&[&[1.0, 0.0], &[4.0]]))
        .unwrap_err();
    match err {
        Error::GroupTooSmall { group, rows: 1, needed: 2 } => assert_eq!(group, "g1"),
        other => panic!("{other:?}"),
    }
    let c = EstimatorConfig { stats_over: StatsOver::Trajectories, ..EstimatorConfig::new(EstimatorKind::GrpoPassk) };
    assert!(matches!(Estimator::new(c), Err(Error::InvalidParameter { name: "stats_over", .. })));
}

// ---------------------------------------------------------------- history tree

/// A: s0 -> s1 -> s0 -> s1 -> success (a 2-cycle), B: s0 -> s2 -> failure,
/// C: t0 -> t0 -> success (a self-loop) in a second group.
fn cyclic_batch() -> RolloutBatch {
    let mut b = RolloutBatch::builder();
    b.push_trajectory("g", "A", 10.0, [step("s0"), step("s1"), step("s0"), last("s1", 10.0)]).unwrap();
    b.push_trajectory("g", "B", 0.0, [step("s0"), last("s2", 0.0)]).unwrap();
    b.push_trajectory("h", "C", 10.0, [step("t0"), last("t0", 10.0)]).unwrap();
    b.build().unwrap()
}

#[test]
fn history_tree_unrolls_cycles_and_self_loops() {
    let batch = cyclic_batch();
    let tree = run(cfg(EstimatorKind::G2poTree, Normalization::Mean), &batch);
    // Paths: A (s0) (s0 s1) (s0 s1 s0) (s0 s1 s0 s1); B (s0) shared, (s0 s2).
    // C: (t0), (t0 t0): a new node, not a self-loop.
    assert_eq!(tree.node, vec![0, 1, 2, 3, 0, 4, 0, 1]);
    assert_eq!(tree.next_node, vec![1, 2, 3, -1, 4, -2, 1, -1]);
    // Values: V(s0) = (0.95^4 * 10 + 0.95^2 * 0) / 2; then 0.95^3 * 10, 0.95^2 * 10, 9.5; V(s0 s2) = 0.
    let g = 0.95f64;
    let v = [(g.powi(4) * 10.0) / 2.0, g.powi(3) * 10.0, g * g * 10.0, 9.5, 0.0];
    let rows = [0, 1, 2, 3, 0, 4];
    assert_close(&tree.node_value[..6], &rows.map(|k| v[k]), "tree values");
    assert_close(&tree.node_value[6..], &[g * g * 10.0, 9.5], "C's values");
    let stats = StateGraph::build(&batch, &tree, 0).unwrap().stats();
    assert_eq!((stats.states, stats.self_loops, stats.has_cycles), (5, 0, false));
    assert_eq!(StateGraph::build(&batch, &tree, 1).unwrap().stats().self_loops, 0);

    // The fused graph of G2PO has the cycle and the self-loop.
    let fused = run(cfg(EstimatorKind::G2po, Normalization::Mean), &batch);
    assert_eq!(fused.node, vec![0, 1, 0, 1, 0, 2, 0, 0]);
    assert!(StateGraph::build(&batch, &fused, 0).unwrap().stats().has_cycles);
    assert_eq!(StateGraph::build(&batch, &fused, 1).unwrap().stats().self_loops, 1);

    // Trajectories that share no prefix share no node: with distinct first states
    // the tree is G2PO without any fusion.
    let mut b = RolloutBatch::builder();
    b.push_trajectory("g", "A", 10.0, [step("a"), last("m", 10.0)]).unwrap();
    b.push_trajectory("g", "B", 0.0, [step("b"), last("m", 0.0)]).unwrap();
    let batch = b.build().unwrap();
    assert_eq!(run(cfg(EstimatorKind::G2po, Normalization::Mean), &batch).node, vec![0, 1, 2, 1]);
    let tree = run(cfg(EstimatorKind::G2poTree, Normalization::Mean), &batch);
    assert_eq!(tree.node, vec![0, 1, 2, 3]);
    // Every node has one visit: no node-centric signal.
    assert_eq!(tree.node_centric, vec![0.0; 4]);
}

#[test]
fn history_tree_is_g2po_where_states_never_repeat_across_prefixes() {
    // Identical prefixes fuse exactly as in G2PO when every state determines its
    // path (here: a state name encodes its whole history).
    let mut b = RolloutBatch::builder();
    b.push_trajectory("g", "A", 10.0, [step("r"), step("r.a"), last("r.a.x", 10.0)]).unwrap();
    b.push_trajectory("g", "B", 0.0, [step("r"), step("r.a"), last("r.a.y", 0.0)]).unwrap();
    b.push_trajectory("g", "C", 0.0, [step("r"), last("r.b", 0.0)]).unwrap();
    let batch = b.build().unwrap();
    for norm in [Normalization::Mean, Normalization::MeanStd] {
        let g2po = run(cfg(EstimatorKind::G2po, norm), &batch);
        let tree = run(cfg(EstimatorKind::G2poTree, norm), &batch);
        assert_eq!(tree, g2po, "{norm:?}");
    }
}

// ---------------------------------------------------------------- Bellman backup

#[test]
fn bellman_equals_monte_carlo_with_one_visit_per_node() {
    // Every state is visited once: the backup gamma * V(next) unrolls to gamma^(T - t) * R.
    let mut b = RolloutBatch::builder();
    b.push_trajectory("g", "A", 10.0, [step("a0"), step("a1"), last("a2", 10.0)]).unwrap();
    b.push_trajectory("g", "B", 0.0, [step("b0"), last("b1", 0.0)]).unwrap();
    b.push_trajectory("g", "C", 4.0, [step("c0"), step("c1"), Step { valid: false, ..last("c2", 4.0) }]).unwrap();
    b.push_trajectory("h", "D", 10.0, [last("d0", 10.0)]).unwrap();
    let batch = b.build().unwrap();
    for norm in [Normalization::Mean, Normalization::MeanStd] {
        for gamma in [0.5, 0.95, 1.0] {
            let c = |kind| EstimatorConfig { gamma, ..cfg(kind, norm) };
            let mc = run(c(EstimatorKind::G2po), &batch);
            let bellman = run(c(EstimatorKind::G2poBellman), &batch);
            for (col, a, b) in [
                ("node_value", &mc.node_value, &bellman.node_value),
                ("next_value", &mc.next_value, &bellman.next_value),
                ("advantage", &mc.advantage, &bellman.advantage),
            ] {
                for (i, (x, y)) in a.iter().zip(b.iter()).enumerate() {
                    assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0), "{norm:?} gamma {gamma} {col}[{i}]: {x} vs {y}");
                }
            }
        }
    }
}

#[test]
fn bellman_fixed_point_on_a_cyclic_graph_by_hand() {
    // A: s0 -> s1 -> s0 -> success (R = 10, a 2-cycle s0 <-> s1); B: s1 -> s1 -> failure (a self-loop).
    // gamma = 0.5. Rows: 0 A@s0, 1 A@s1, 2 A@s0, 3 B@s1, 4 B@s1.
    // Edges out of s0: s1 (row 0), success (row 2); out of s1: s0 (row 1), s1 (row 3), failure (row 4).
    //   V0 = 0.5 (V1 + 10) / 2,   V1 = 0.5 (V0 + V1 + 0) / 3  =>  V1 = V0 / 5,  19 V0 = 50:
    //   V0 = 50/19, V1 = 10/19 (Monte-Carlo would give 3.125 and 0.8333).
    let mut b = RolloutBatch::builder();
    b.push_trajectory("g", "A", 10.0, [step("s0"), step("s1"), last("s0", 10.0)]).unwrap();
    b.push_trajectory("g", "B", 0.0, [step("s1"), last("s1", 0.0)]).unwrap();
    let batch = b.build().unwrap();
    let c = EstimatorConfig { gamma: 0.5, ..cfg(EstimatorKind::G2poBellman, Normalization::Mean) };
    let adv = run(c, &batch);
    let (v0, v1) = (50.0 / 19.0, 10.0 / 19.0);
    assert_eq!(adv.node, vec![0, 1, 0, 1, 1]);
    assert_eq!(adv.next_node, vec![1, 0, -1, 1, -2]);
    assert_close(&adv.node_value, &[v0, v1, v0, v1, v1], "V");
    assert_close(&adv.next_value, &[v1, v0, 10.0, v1, 0.0], "next value");
    // TD: -40/19, 40/19, 140/19, 0, -10/19; mean 26/19.
    let edge: Vec<f64> = [-66.0, 14.0, 114.0, -26.0, -36.0].iter().map(|x| x / 19.0).collect();
    assert_close(&adv.edge_centric, &edge, "edge");
    // Node-centric: s0 {V1, 10} -> mean (V1 + 10) / 2; s1 {V0, V1, 0}.
    let m0 = (v1 + 10.0) / 2.0;
    let m1 = (v0 + v1) / 3.0;
    assert_close(&adv.node_centric, &[v1 - m0, v0 - m1, 10.0 - m0, v1 - m1, -m1], "node");
    let mc = run(EstimatorConfig { kind: EstimatorKind::G2po, ..c }, &batch);
    assert_close(&mc.node_value[..2], &[3.125, 2.5 / 3.0], "Monte-Carlo differs");

    // Both solvers, through the public function, hit the same fixed point.
    let next = [1, 0, -1, 1, -2];
    let terminal = [0.0, 0.0, 10.0, 0.0, 0.0];
    for method in [BellmanMethod::Iterative, BellmanMethod::ExactScc] {
        let v = bellman_values(2, &[0, 1, 0, 1, 1], &next, &terminal, 0.5, method).unwrap();
        assert!((v[0] - v0).abs() < 1e-12 && (v[1] - v1).abs() < 1e-12, "{method:?}: {v:?}");
    }
}

#[test]
fn bellman_self_loop_and_gamma_one() {
    // A single node looping on itself k times before a terminal worth 10 (gamma = 1):
    // V = (k V + 10) / (k + 1), so V = 10 whatever k.
    for method in [BellmanMethod::Iterative, BellmanMethod::ExactScc] {
        let v = bellman_values(1, &[0, 0, 0, 0], &[0, 0, 0, -1], &[0.0, 0.0, 0.0, 10.0], 1.0, method).unwrap();
        assert!((v[0] - 10.0).abs() < 1e-9, "{method:?}: {v:?}");
    }
    // A node with no path to a terminal has no Bellman value: a typed error.
    let err = bellman_values(2, &[0, 1], &[1, 0], &[0.0, 0.0], 0.9, BellmanMethod::ExactScc).unwrap_err();
    assert!(matches!(err, Error::BadAdvantages { column: "node", .. }), "{err:?}");
    let err = bellman_values(1, &[0, 3], &[-1, -1], &[1.0, 1.0], 0.9, BellmanMethod::Iterative).unwrap_err();
    assert!(matches!(err, Error::BadAdvantages { row: 1, column: "node", .. }), "{err:?}");
}

/// The two solvers agree on random cyclic graphs (many revisits, gamma up to 1).
#[test]
fn bellman_solvers_agree_on_random_cyclic_graphs() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    for case in 0..200 {
        let nodes = rng.random_range(1..12usize);
        let trajs = rng.random_range(1..6usize);
        let gamma = [0.0, 0.5, 0.95, 1.0][case % 4];
        let (mut node, mut next, mut terminal) = (Vec::new(), Vec::new(), Vec::new());
        let mut seen = vec![false; nodes];
        for _ in 0..trajs {
            let len = rng.random_range(1..15usize);
            let mut k = rng.random_range(0..nodes);
            for t in 0..len {
                seen[k] = true;
                node.push(k as u32);
                if t + 1 == len {
                    next.push(-1 - rng.random_range(0..2));
                    terminal.push(rng.random_range(-10.0..10.0));
                } else {
                    k = rng.random_range(0..nodes);
                    next.push(k as i32);
                    terminal.push(0.0);
                }
            }
        }
        // Renumber to the visited nodes only (every node must have rows).
        let map: Vec<usize> = seen
            .iter()
            .scan(0, |c, &s| {
                Some(if s {
                    *c += 1;
                    *c - 1
                } else {
                    usize::MAX
                })
            })
            .collect();
        let used = seen.iter().filter(|&&s| s).count();
        let node: Vec<u32> = node.iter().map(|&k| map[k as usize] as u32).collect();
        let next: Vec<i32> = next.iter().map(|&k| if k < 0 { k } else { map[k as usize] as i32 }).collect();
        let a = bellman_values(used, &node, &next, &terminal, gamma, BellmanMethod::Iterative).unwrap();
        let b = bellman_values(used, &node, &next, &terminal, gamma, BellmanMethod::ExactScc).unwrap();
        for (k, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!((x - y).abs() < 1e-8 * x.abs().max(1.0), "case {case} node {k}: {x} vs {y}");
        }
    }
}

// ---------------------------------------------------------------- PPO (turn-level GAE)

#[test]
fn turn_gae_by_hand() {
    use g2po::estimators::TurnGae;
    // doc batch: win hall -> door (reward 10 on the last step), lose hall -> wall (0);
    // rows 0 win@hall, 1 win@door, 2 lose@hall, 3 lose@wall; response lengths 3, 2, 3, 4.
    let batch = g2po::doc_batch();
    let values = [1.0f32, 2.0, 0.5, 0.0];
    let out = TurnGae::new(0.5, 0.5).unwrap().estimate(&batch, &values).unwrap();
    // win1: delta = 10 + 0 - 2 = 8, A = 8;  win0: delta = 0 + 0.5 * 2 - 1 = 0, A = 0 + 0.25 * 8 = 2.
    // lose1: delta = 0 - 0 = 0, A = 0;      lose0: delta = 0 + 0 - 0.5 = -0.5, A = -0.5.
    assert_close(&out.raw_advantage, &[2.0, 8.0, -0.5, 0.0], "A");
    assert_close(&out.returns, &[3.0, 10.0, 0.0, 0.0], "returns = A + V");
    // Whitened over the 12 response tokens (token-weighted, unbiased).
    let (lens, raw) = ([3.0, 2.0, 3.0, 4.0], [2.0, 8.0, -0.5, 0.0]);
    let mu = lens.iter().zip(&raw).map(|(l, a)| l * a).sum::<f64>() / 12.0;
    let var = lens.iter().zip(&raw).map(|(l, a)| l * (a - mu) * (a - mu)).sum::<f64>() / 11.0;
    let want: Vec<f64> = raw.iter().map(|a| (a - mu) / (var + 1e-8).sqrt()).collect();
    assert_close(&out.advantage, &want, "whitened");
    // lambda = 0: one-step TD errors; lambda = 1, gamma = 1: return minus value.
    let td = TurnGae::new(0.5, 0.0).unwrap().estimate(&batch, &values).unwrap();
    assert_close(&td.raw_advantage, &[0.0, 8.0, -0.5, 0.0], "TD(0)");
    let mc = TurnGae::new(1.0, 1.0).unwrap().estimate(&batch, &values).unwrap();
    assert_close(&mc.raw_advantage, &[9.0, 8.0, -0.5, 0.0], "Monte-Carlo minus V");
    // The estimator alone refuses PPO (it needs the values); bad values are typed errors.
    let err = Estimator::new(EstimatorConfig::new(EstimatorKind::Ppo)).unwrap().estimate(&batch).unwrap_err();
    assert!(matches!(err, Error::InvalidParameter { name: "estimator", .. }), "{err:?}");
    let gae = TurnGae::new(0.9, 0.9).unwrap();
    assert!(matches!(gae.estimate(&batch, &[0.0; 3]), Err(Error::LengthMismatch { field: "values", .. })));
    assert!(matches!(
        gae.estimate(&batch, &[0.0, f32::NAN, 0.0, 0.0]),
        Err(Error::NonFinite { row: 1, field: "values", .. })
    ));
    assert!(matches!(TurnGae::new(0.9, -0.1), Err(Error::InvalidParameter { name: "gae_lambda", .. })));
}
