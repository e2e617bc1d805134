//! Hand-computed cases of the engine, the arithmetic written out in comments
//! (gamma = 0.95, p = 0.1, eps = 1e-6 unless said otherwise), plus the state
//! graph and the JSON input/output used without the CLI.

use g2po::graph::{NodeKind, StateGraph};
use g2po::keys::StateKeyer;
use g2po::{
    AdvantageEstimator, Advantages, Anchor, Estimator, EstimatorConfig, EstimatorKind, Normalization, RolloutBatch,
    StatsOver, Step, TerminalValues,
};
use serde_json::Value;

const EPS: f64 = 1e-6;

fn step(obs: &str) -> Step<'_> {
    Step { anchor: Anchor::Text(obs), reward: 0.0, valid: true, response_len: 3 }
}

/// The last step of a trajectory carries the episode reward.
fn last(obs: &str, reward: f64) -> Step<'_> {
    Step { reward, ..step(obs) }
}

fn run(cfg: EstimatorConfig, batch: &RolloutBatch) -> Advantages {
    Estimator::new(cfg).unwrap().estimate(batch).unwrap()
}

fn cfg(kind: EstimatorKind, norm: Normalization) -> EstimatorConfig {
    EstimatorConfig { norm, ..EstimatorConfig::new(kind) }
}

fn assert_all_close(got: &[f32], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((g as f64 - w).abs() < 1e-5, "{what}[{i}]: got {g}, want {w} (all: {got:?})");
    }
}

/// Group "task": A (success) s0 -> s1 -> success;
/// B (failure) s0 -> s2 -> s1 -> failure.
/// Rows: 0 A@s0, 1 A@s1, 2 B@s0, 3 B@s2, 4 B@s1.
fn good_move_batch() -> RolloutBatch {
    let mut b = RolloutBatch::builder();
    b.push_trajectory("task", "A", 10.0, [step("s0"), last("s1", 10.0)]).unwrap();
    b.push_trajectory("task", "B", 0.0, [step("s0"), step("s2"), last("s1", 0.0)]).unwrap();
    b.build().unwrap()
}

#[test]
fn g2po_credits_a_good_move_in_a_failed_rollout() {
    let batch = good_move_batch();
    // Visit values v = gamma^(T - t) * R:
    //   A (T = 2): row0 0.95^2 * 10 = 9.025, row1 0.95 * 10 = 9.5; B: all 0.
    // Nodes (first seen): s0 = 0 {row0, row2}, s1 = 1 {row1, row4}, s2 = 2 {row3}.
    //   V(s0) = (9.025 + 0) / 2 = 4.5125, V(s1) = (9.5 + 0) / 2 = 4.75, V(s2) = 0.
    // Next values: row0 -> s1 4.75, row1 -> success 10, row2 -> s2 0,
    //   row3 -> s1 4.75, row4 -> failure 0.
    // TD d = V(next) - V(node): [0.2375, 5.25, -4.5125, 4.75, -4.75], mean 0.195,
    //   unbiased sd 4.8196586.
    // Node-centric x = V(next): s0 {4.75, 0} -> +-2.375; s1 {10, 0} -> +-5; s2 alone -> 0.
    // Episode: scores [10, 10, 0, 0, 0], mean 4, sd sqrt(30) = 5.4772256.
    for norm in [Normalization::Mean, Normalization::MeanStd] {
        let adv = run(cfg(EstimatorKind::G2po, norm), &batch);
        assert_eq!(adv.node, vec![0, 1, 0, 2, 1]);
        assert_eq!(adv.next_node, vec![1, -1, 2, 1, -2]);
        assert_all_close(&adv.node_value, &[4.5125, 4.75, 4.5125, 0.0, 4.75], "node_value");
        let td = [0.2375, 5.25, -4.5125, 4.75, -4.75];
        let (td_sd, ep_sd) = (4.819658636770866, 30f64.sqrt());
        let (edge, node, episode): (Vec<f64>, Vec<f64>, Vec<f64>) = match norm {
            Normalization::Mean => (
                td.iter().map(|d| d - 0.195).collect(),
                vec![2.375, 5.0, -2.375, 0.0, -5.0],
                vec![6.0, 6.0, -4.0, -4.0, -4.0],
            ),
            Normalization::MeanStd => {
                // Two values a, b: (a - mean) / sd = +-(|a - b| / 2) / (|a - b| / sqrt 2) = +-1/sqrt 2.
                let h = 2.375 / (4.75 / 2f64.sqrt() + EPS);
                let k = 5.0 / (10.0 / 2f64.sqrt() + EPS);
                (
                    td.iter().map(|d| (d - 0.195) / (td_sd + EPS)).collect(),
                    vec![h, k, -h, 0.0, -k],
                    [10.0, 10.0, 0.0, 0.0, 0.0].iter().map(|s| (s - 4.0) / (ep_sd + EPS)).collect(),
                )
            }
        };
        assert_all_close(&adv.edge_centric, &edge, "edge_centric");
        assert_all_close(&adv.node_centric, &node, "node_centric");
        assert_all_close(&adv.episode, &episode, "episode");
        let total: Vec<f64> = (0..5).map(|i| episode[i] + node[i] + edge[i]).collect();
        assert_all_close(&adv.advantage, &total, "advantage");
        // Row 3 (B's move s2 -> s1, into the state A won from) gets positive
        // credit: mean_norm -4 + 0 + 4.555 = 0.555; mean_std -0.7303 + 0.9451 = 0.2148.
        assert!(adv.advantage[3] > 0.0, "{norm:?}: {}", adv.advantage[3]);
        // GRPO gives every row of the failed rollout the same negative value.
        let grpo = run(cfg(EstimatorKind::Grpo, norm), &batch);
        assert!(grpo.advantage[3] < 0.0 && grpo.advantage[3] == grpo.advantage[2]);
        // B's bad move s0 -> s2 is punished relative to A's s0 -> s1.
        assert!(adv.advantage[2] < grpo.advantage[2]);
    }
}

#[test]
fn g2po_step_weight_scales_node_and_edge_terms() {
    let batch = good_move_batch();
    let full = run(cfg(EstimatorKind::G2po, Normalization::Mean), &batch);
    let cfg_w = EstimatorConfig { step_weight: 0.8, ..cfg(EstimatorKind::G2po, Normalization::Mean) };
    let weighted = run(cfg_w, &batch);
    let want: Vec<f64> = (0..5).map(|i| full.episode[i] as f64 + 0.8 * full.step[i] as f64).collect();
    assert_all_close(&weighted.advantage, &want, "w = 0.8");
    assert_eq!(weighted.step, full.step);
}

/// A: s0 (reward 1) -> s1 (invalid) -> s2 (reward 10), R = 10;
/// B: s0 -> s1, R = 0. Rows 0-2 A, 3-4 B.
fn returns_batch() -> RolloutBatch {
    let mut b = RolloutBatch::builder();
    let invalid = Step { valid: false, ..step("s1") };
    b.push_trajectory("g", "A", 10.0, [Step { reward: 1.0, ..step("s0") }, invalid, last("s2", 10.0)]).unwrap();
    b.push_trajectory("g", "B", 0.0, [step("s0"), last("s1", 0.0)]).unwrap();
    b.build().unwrap()
}

#[test]
fn gigpo_step_returns_with_gamma() {
    let batch = returns_batch();
    // gamma = 0.95: G(A2) = 10; G(A1) = 0 + 0.95 * 10 = 9.5, minus p = 9.4;
    // G(A0) = 1 + 0.95 * 9.5 = 10.025 (the penalty does not propagate);
    // G(B1) = G(B0) = 0.
    // Step groups: s0 {A0, B0}, s1 {A1, B1}, s2 {A2}.
    // mean_norm step parts: s0 +-5.0125, s1 +-4.7, s2 0.
    // Episode: scores [10, 9.9, 10, 0, 0], mean 5.98.
    let adv = run(cfg(EstimatorKind::Gigpo, Normalization::Mean), &batch);
    assert_all_close(&adv.step_return, &[10.025, 9.4, 10.0, 0.0, 0.0], "returns");
    assert_eq!(adv.node, vec![0, 1, 2, 0, 1]);
    assert_all_close(&adv.step, &[5.0125, 4.7, 0.0, -5.0125, -4.7], "step");
    let episode = [4.02, 3.92, 4.02, -5.98, -5.98];
    assert_all_close(&adv.episode, &episode, "episode");
    let total: Vec<f64> = (0..5).map(|i| episode[i] + [5.0125, 4.7, 0.0, -5.0125, -4.7][i]).collect();
    assert_all_close(&adv.advantage, &total, "advantage");

    // mean_std: a pair standardises to +-(1/sqrt 2) (up to eps).
    let adv = run(cfg(EstimatorKind::Gigpo, Normalization::MeanStd), &batch);
    let h = std::f64::consts::FRAC_1_SQRT_2;
    assert_all_close(&adv.step, &[h, h, 0.0, -h, -h], "step mean_std");

    // gamma = 0.5: G(A1) = 0.5 * 10 - 0.1 = 4.9; G(A0) = 1 + 0.5 * 5 = 3.5.
    let half = EstimatorConfig { gamma: 0.5, ..cfg(EstimatorKind::Gigpo, Normalization::Mean) };
    let adv = run(half, &batch);
    assert_all_close(&adv.step_return, &[3.5, 4.9, 10.0, 0.0, 0.0], "returns gamma 0.5");
    // gamma = 0: G_t = r_t - p.
    let zero = EstimatorConfig { gamma: 0.0, ..cfg(EstimatorKind::Gigpo, Normalization::Mean) };
    assert_all_close(&run(zero, &batch).step_return, &[1.0, -0.1, 10.0, 0.0, 0.0], "returns gamma 0");
}

#[test]
fn g2po_gamma_changes_visit_values() {
    // Same batch, G2PO with gamma 0.5: A (T = 3) visits 0.5^3 * 10 = 1.25,
    // 0.5^2 * 10 = 2.5, 0.5 * 10 = 5; B all 0.
    // V(s0) = 0.625, V(s1) = 1.25, V(s2) = 5.
    let cfg_half = EstimatorConfig { gamma: 0.5, ..cfg(EstimatorKind::G2po, Normalization::Mean) };
    let adv = run(cfg_half, &returns_batch());
    assert_all_close(&adv.node_value, &[0.625, 1.25, 5.0, 0.625, 1.25], "V with gamma 0.5");
}

#[test]
fn stats_over_trajectories_vs_rows() {
    // A (success): 3 rows, row 1 invalid; B (failure): 1 row.
    let mut b = RolloutBatch::builder();
    b.push_trajectory("g", "A", 10.0, [step("a"), Step { valid: false, ..step("b") }, last("c", 10.0)]).unwrap();
    b.push_trajectory("g", "B", 0.0, [last("a", 0.0)]).unwrap();
    let batch = b.build().unwrap();
    let episode = |over, norm| {
        let c = EstimatorConfig { stats_over: over, ..cfg(EstimatorKind::Grpo, norm) };
        run(c, &batch).episode
    };
    // Rows: scores [10, 9.9, 10, 0], mean 7.475; deviations 2.525, 2.425, 2.525, -7.475;
    // sd = sqrt((2.525^2 * 2 + 2.425^2 + 7.475^2) / 3) = sqrt(24.9675) = 4.99675.
    let sd_rows = ((2.525f64.powi(2) * 2.0 + 2.425f64.powi(2) + 7.475f64.powi(2)) / 3.0).sqrt();
    assert_all_close(&episode(StatsOver::Rows, Normalization::Mean), &[2.525, 2.425, 2.525, -7.475], "rows mean");
    let want: Vec<f64> = [2.525, 2.425, 2.525, -7.475].iter().map(|d| d / (sd_rows + EPS)).collect();
    assert_all_close(&episode(StatsOver::Rows, Normalization::MeanStd), &want, "rows mean_std");
    // Trajectories: episode rewards [10, 0], mean 5, sd sqrt(50) = 7.0711; the
    // row score still carries its own penalty: 9.9 - 5 = 4.9.
    assert_all_close(
        &episode(StatsOver::Trajectories, Normalization::Mean),
        &[5.0, 4.9, 5.0, -5.0],
        "trajectories mean",
    );
    let sd = 50f64.sqrt() + EPS;
    assert_all_close(
        &episode(StatsOver::Trajectories, Normalization::MeanStd),
        &[5.0 / sd, 4.9 / sd, 5.0 / sd, -5.0 / sd],
        "trajectories mean_std",
    );
}

#[test]
fn terminal_values_fixed() {
    // A: s0 -> success (R = 10, T = 1); B: s0 -> failure (R = 0).
    let mut b = RolloutBatch::builder();
    b.push_trajectory("g", "A", 10.0, [last("s0", 10.0)]).unwrap();
    b.push_trajectory("g", "B", 0.0, [last("s0", 0.0)]).unwrap();
    let batch = b.build().unwrap();
    let base = cfg(EstimatorKind::G2po, Normalization::Mean);
    // Episode reward terminals: V(s0) = (0.95 * 10 + 0) / 2 = 4.75; next values 10, 0;
    // td 5.25, -4.75 -> edge +-5; node-centric x = 10, 0 -> +-5.
    let adv = run(base, &batch);
    assert_eq!(adv.next_node, vec![-1, -2]);
    assert_all_close(&adv.node_value, &[4.75, 4.75], "V");
    assert_all_close(&adv.next_value, &[10.0, 0.0], "next value");
    assert_all_close(&adv.edge_centric, &[5.0, -5.0], "edge, episode-reward terminals");
    assert_all_close(&adv.node_centric, &[5.0, -5.0], "node, episode-reward terminals");
    // Fixed { success: 1, failure: -1 }: visits take the same mapping, 0.95 * 1 and
    // 0.95 * -1, so V(s0) = 0; next values 1, -1; td 1, -1 -> edge +-1; node-centric +-1.
    let fixed = EstimatorConfig { terminal: TerminalValues::Fixed { success: 1.0, failure: -1.0 }, ..base };
    let adv = run(fixed, &batch);
    assert_eq!(adv.next_node, vec![-1, -2]);
    assert_all_close(&adv.node_value, &[0.0, 0.0], "V fixed");
    assert_all_close(&adv.next_value, &[1.0, -1.0], "next value fixed");
    assert_all_close(&adv.edge_centric, &[1.0, -1.0], "edge, fixed terminals");
    assert_all_close(&adv.node_centric, &[1.0, -1.0], "node, fixed terminals");
    // Fixed { success: 10, failure: 0 } coincides with the reference reading here.
    let same = EstimatorConfig { terminal: TerminalValues::Fixed { success: 10.0, failure: 0.0 }, ..base };
    assert_eq!(run(same, &batch), run(base, &batch));
}

/// Fixed terminals on another scale than the episode rewards: the visit values
/// take the terminal mapping too, so a winning final move keeps a positive edge
/// term (with visit values on the reward scale it would be 1 - 2.5 < 0).
#[test]
fn fixed_terminals_on_another_scale_than_the_rewards() {
    // A: s0 -> s1 -> success (R = 10); B: s0 -> s1 -> failure (R = 0); gamma = 0.5,
    // mean_norm, Fixed { success: 1, failure: 0 }.
    let mut b = RolloutBatch::builder();
    b.push_trajectory("g", "A", 10.0, [step("s0"), last("s1", 10.0)]).unwrap();
    b.push_trajectory("g", "B", 0.0, [step("s0"), last("s1", 0.0)]).unwrap();
    let batch = b.build().unwrap();
    let c = EstimatorConfig {
        gamma: 0.5,
        terminal: TerminalValues::Fixed { success: 1.0, failure: 0.0 },
        ..cfg(EstimatorKind::G2po, Normalization::Mean)
    };
    let adv = run(c, &batch);
    // Visit values 0.5^(T - t) * R_term: A0 0.25 * 1, A1 0.5 * 1, B 0.
    // V(s0) = 0.125, V(s1) = 0.25. Rows: 0 A@s0, 1 A@s1, 2 B@s0, 3 B@s1.
    assert_all_close(&adv.node_value, &[0.125, 0.25, 0.125, 0.25], "V");
    // Next values: s1 0.25, success 1, s1 0.25, failure 0.
    assert_all_close(&adv.next_value, &[0.25, 1.0, 0.25, 0.0], "next value");
    // TD: 0.125, 0.75, 0.125, -0.25; mean 0.1875.
    assert_all_close(&adv.edge_centric, &[-0.0625, 0.5625, -0.0625, -0.4375], "edge");
    // Node-centric: s0 {0.25, 0.25} -> 0, 0; s1 {1, 0} -> +0.5, -0.5.
    assert_all_close(&adv.node_centric, &[0.0, 0.5, 0.0, -0.5], "node");
    // Episode: scores 10, 10, 0, 0 -> +-5.
    assert_all_close(&adv.episode, &[5.0, 5.0, -5.0, -5.0], "episode");
    assert_all_close(&adv.advantage, &[4.9375, 6.0625, -5.0625, -5.9375], "advantage");
    assert!(adv.edge_centric[1] > 0.0, "the winning final move is credited");

    // The state graph shows the terminals at the values the estimator used.
    let g = StateGraph::build(&batch, &adv, 0).unwrap();
    for t in g.graph.node_weights().filter(|n| n.kind != NodeKind::State) {
        let want = if t.kind == NodeKind::Success { 1.0 } else { 0.0 };
        assert_eq!(t.value, want, "{:?}", t.kind);
    }
    assert!(g.to_dot().contains("success\\nV=1.000"), "{}", g.to_dot());
}

#[test]
fn text_env_keyer_fuses_states_that_differ_by_counters() {
    // The kitchen is visited by A at move 0 and by B at move 1; TextWorld
    // prints the counter, so the plain keyer sees two states.
    let kitchen0 = "-= Kitchen =-  0/3\nScore: 0  Moves: 0\nYou see a fridge.";
    let kitchen1 = "At turn 2: -= Kitchen =-  0/3\nScore: 0  Moves: 1\nYou  see a fridge.";
    let hall = "-= Hall =-  0/3\nScore: 0  Moves: 0\nA long hall.";
    let garden = "-= Garden =-  1/3\nScore: 1  Moves: 1\nFlowers.";
    let mut b = RolloutBatch::builder();
    b.push_trajectory("g", "A", 10.0, [step(kitchen0), last(garden, 10.0)]).unwrap();
    b.push_trajectory("g", "B", 0.0, [step(hall), last(kitchen1, 0.0)]).unwrap();
    let batch = b.build().unwrap();
    let keyer = StateKeyer::text_env();
    assert_eq!(keyer.key(kitchen0), keyer.key(kitchen1));
    assert_ne!(keyer.key(kitchen0), keyer.key(hall));
    assert_ne!(StateKeyer::new().key(kitchen0), StateKeyer::new().key(kitchen1));

    let base = cfg(EstimatorKind::G2po, Normalization::Mean);
    let plain = run(base, &batch);
    let fused = Estimator::new(base).unwrap().with_keyer(StateKeyer::text_env()).estimate(&batch).unwrap();
    // Plain: four single-visit nodes, no node-centric signal.
    assert_eq!(plain.node, vec![0, 1, 2, 3]);
    assert!(plain.node_centric.iter().all(|&x| x == 0.0));
    // text_env: the kitchen rows 0 and 3 share node 0.
    // V(kitchen) = (0.95^2 * 10 + 0) / 2 = 4.5125. Node-centric among its rows:
    // x(row0) = V(garden) = 9.5, x(row3) = failure 0 -> +-4.75.
    assert_eq!(fused.node, vec![0, 1, 2, 0]);
    assert_all_close(&fused.node_value, &[4.5125, 9.5, 0.0, 4.5125], "fused V");
    assert_all_close(&fused.node_centric, &[4.75, 0.0, 0.0, -4.75], "fused node-centric");
    // GiGPO step groups fuse the same way.
    let gigpo = Estimator::new(cfg(EstimatorKind::Gigpo, Normalization::Mean))
        .unwrap()
        .with_keyer(StateKeyer::text_env())
        .estimate(&batch)
        .unwrap();
    assert_eq!(gigpo.node, vec![0, 1, 2, 0]);
    // Returns: A0 = 9.5, B1 = 0 -> +-4.75 in the kitchen step group.
    assert_all_close(&gigpo.step, &[4.75, 0.0, 0.0, -4.75], "gigpo fused step");
}

/// Group "g": A s0 -> s0 -> s1 -> s0 -> s2 -> success (a self-loop and the
/// cycle s0 -> s1 -> s0); B and C s0 -> s3 -> failure.
/// Group "h": D t0 -> t0 -> success (a self-loop only).
fn graph_batch() -> RolloutBatch {
    let mut b = RolloutBatch::builder();
    b.push_trajectory("g", "A", 10.0, [step("s0"), step("s0"), step("s1"), step("s0"), last("s2", 10.0)]).unwrap();
    b.push_trajectory("g", "B", 0.0, [step("s0"), last("s3", 0.0)]).unwrap();
    b.push_trajectory("g", "C", 0.0, [step("s0"), last("s3", 0.0)]).unwrap();
    b.push_trajectory("h", "D", 10.0, [step("t0"), last("t0", 10.0)]).unwrap();
    b.build().unwrap()
}

#[test]
fn graph_stats_self_loops_cycles_and_single_visits() {
    let batch = graph_batch();
    let adv = run(cfg(EstimatorKind::G2po, Normalization::MeanStd), &batch);
    let g = StateGraph::build(&batch, &adv, 0).unwrap();
    assert_eq!(g.group, "g");
    let s = g.stats();
    // States s0 (5 visits: A x3, B, C), s1, s2 (1 each), s3 (2); 9 rows.
    assert_eq!((s.states, s.terminals, s.rows), (4, 2, 9));
    // Distinct transitions: s0->s0, s0->s1, s1->s0, s0->s2, s2->success,
    // s0->s3 (x2), s3->failure (x2).
    assert_eq!(s.edges, 7);
    assert_eq!(s.self_loops, 1);
    assert!(s.has_cycles);
    // Single-visit states s1 and s2 hold 2 of the 9 rows.
    assert!((s.single_visit_fraction - 2.0 / 9.0).abs() < 1e-12);
    assert!((s.mean_visits_per_node - 9.0 / 4.0).abs() < 1e-12);

    let s0 = &g.graph[g.state_index(0).unwrap()];
    // V(s0) = 10 * (0.95^5 + 0.95^4 + 0.95^2) / 5 = 4.98157437...
    assert_eq!((s0.kind, s0.visits, s0.label.as_str()), (NodeKind::State, 5, "s0"));
    assert!((s0.value - 4.981574375).abs() < 1e-5);
    let s3 = &g.graph[g.state_index(3).unwrap()];
    assert_eq!((s3.visits, s3.label.as_str()), (2, "s3"));
    assert!(g.state_index(4).is_none());
    // Terminal nodes carry the mean episode reward of the steps entering them.
    let terminals: Vec<_> = g.graph.node_weights().filter(|n| n.kind != NodeKind::State).collect();
    assert_eq!(terminals.len(), 2);
    for t in terminals {
        match t.kind {
            NodeKind::Success => assert_eq!((t.id, t.value), (-1, 10.0)),
            NodeKind::Failure => assert_eq!((t.id, t.value), (-2, 0.0)),
            NodeKind::State => unreachable!(),
        }
    }
    // The doubled transition lists both rows and their mean advantage.
    let doubled: Vec<_> = g.graph.edge_weights().filter(|e| e.count == 2).collect();
    assert_eq!(doubled.len(), 2);
    let s0_s3 = doubled.iter().find(|e| e.rows == vec![5, 7]).expect("s0 -> s3 taken by rows 5 and 7");
    let mean = (adv.advantage[5] as f64 + adv.advantage[7] as f64) / 2.0;
    assert!((s0_s3.mean_advantage - mean).abs() < 1e-9);
    assert_eq!(g.graph.edge_weights().map(|e| e.count).sum::<u32>(), 9);

    // Group "h": a self-loop alone is not a cycle.
    let h = StateGraph::build(&batch, &adv, 1).unwrap().stats();
    assert_eq!((h.states, h.rows, h.edges, h.self_loops, h.has_cycles), (1, 2, 2, 1, false));
    assert_eq!(h.single_visit_fraction, 0.0);
}

#[test]
fn graph_dot_and_json_exports() {
    let batch = graph_batch();
    let adv = run(cfg(EstimatorKind::G2po, Normalization::MeanStd), &batch);
    let g = StateGraph::build(&batch, &adv, 0).unwrap();

    let dot = g.to_dot();
    assert!(dot.starts_with("digraph \"g\" {\n"), "{dot}");
    assert!(dot.trim_end().ends_with('}'));
    assert!(dot.contains("rankdir=LR;"));
    assert_eq!(dot.matches("shape=ellipse").count(), 4);
    assert_eq!(dot.matches("shape=box").count(), 2);
    assert_eq!(dot.matches(" -> ").count(), 7);
    assert!(dot.contains("s0\\nV=4.982 n=5"), "{dot}");
    assert!(dot.contains("success\\nV=10.000") && dot.contains("failure\\nV=0.000"), "{dot}");
    assert_eq!(dot.matches("[label=\"x2 ").count(), 2);
    assert_eq!(dot.matches("[label=\"x1 ").count(), 5);

    let json = g.to_json();
    assert_eq!(json["group"], "g");
    assert_eq!(json["stats"]["states"], 4);
    assert_eq!(json["stats"]["self_loops"], 1);
    assert_eq!(json["stats"]["has_cycles"], true);
    let nodes = json["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 6);
    assert_eq!(nodes.iter().filter(|n| n["kind"] == "state").count(), 4);
    assert!(nodes.iter().any(|n| n["kind"] == "success" && n["id"] == -1));
    assert!(nodes.iter().any(|n| n["kind"] == "failure" && n["id"] == -2));
    let edges = json["edges"].as_array().unwrap();
    assert_eq!(edges.len(), 7);
    let find = |from: i64, to: i64| edges.iter().find(|e| e["from"] == from && e["to"] == to);
    assert_eq!(find(0, 0).expect("self-loop s0 -> s0")["rows"], serde_json::json!([0]));
    assert_eq!(find(0, 3).expect("s0 -> s3")["count"], 2);
    assert_eq!(find(3, -2).expect("s3 -> failure")["rows"], serde_json::json!([6, 8]));
    assert_eq!(find(2, -1).expect("s2 -> success")["count"], 1);
    assert!(find(1, 0).is_some() && find(0, 1).is_some() && find(0, 2).is_some());
    // The JSON text parses back (floats up to serde_json's parse rounding,
    // see write_jsonl_parses_back_and_compares).
    let back: Value = serde_json::from_str(&serde_json::to_string(&json).unwrap()).unwrap();
    assert_eq!(
        (&back["group"], &back["stats"]["edges"], &back["nodes"][0]["label"]),
        (&json["group"], &json["stats"]["edges"], &json["nodes"][0]["label"])
    );
    assert_eq!(back["edges"].as_array().unwrap().len(), 7);
}

#[test]
fn graph_labels_of_key_batches_and_escaping() {
    let mut b = RolloutBatch::builder();
    b.push_trajectory(
        "q\"uote",
        "A",
        10.0,
        [Step { anchor: Anchor::Key(0xabc), reward: 10.0, valid: true, response_len: 1 }],
    )
    .unwrap();
    let batch = b.build().unwrap();
    let adv = run(cfg(EstimatorKind::G2po, Normalization::Mean), &batch);
    let g = StateGraph::build(&batch, &adv, 0).unwrap();
    assert_eq!(g.graph[g.state_index(0).unwrap()].label, "0x0000000000000abc");
    assert!(g.to_dot().starts_with("digraph \"q\\\"uote\" {"));
}

// ---------------------------------------------------------------- IO without the CLI

fn jsonl_lines(adv: &Advantages) -> Vec<Value> {
    let mut out = Vec::new();
    g2po::io::write_jsonl(adv, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.ends_with('\n'));
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn write_jsonl_parses_back_and_compares() {
    let batch = good_move_batch();
    for kind in [EstimatorKind::Grpo, EstimatorKind::Gigpo, EstimatorKind::G2po] {
        let adv = run(cfg(kind, Normalization::MeanStd), &batch);
        let rows = jsonl_lines(&adv);
        assert_eq!(rows.len(), batch.len());
        for (r, row) in rows.iter().enumerate() {
            // The f32 values come back exactly. (As f64 they may differ in
            // the last bit: serde_json parses long decimals without its
            // `float_roundtrip` feature, so compare below uses 1e-12, not 0.)
            assert_eq!(row["advantage"].as_f64().unwrap() as f32, adv.advantage[r]);
            assert_eq!(row["episode_advantage"].as_f64().unwrap() as f32, adv.episode[r]);
        }
        match kind {
            EstimatorKind::Grpo => assert!(rows[0].get("step_advantage").is_none()),
            EstimatorKind::Gigpo => {
                assert_eq!(rows[3]["step_group"], 2);
                assert!(rows[0].get("step_return").is_some() && rows[0].get("next_node").is_none());
            }
            EstimatorKind::G2po => {
                assert_eq!(rows[4]["next_node"], -2);
                assert_eq!(rows[3]["node"], 2);
                assert!(rows[0].get("node_value").is_some() && rows[0].get("edge_centric").is_some());
            }
            other => unreachable!("{other} is not in this test"),
        }
        // Against itself: exact up to the parse rounding of the f64 text.
        let c = g2po::io::compare(&adv, &rows);
        assert!(c.passes(1e-12), "{kind}: {c:?}");
        // Without the text round trip the comparison is exact.
        let direct: Vec<Value> = (0..adv.len()).map(|r| g2po::io::row_json(&adv, r)).collect();
        assert!(g2po::io::compare(&adv, &direct).passes(0.0));
        assert_eq!(c.compared, rows.iter().map(|r| r.as_object().unwrap().len()).sum::<usize>());

        // A perturbed value fails at 1e-4 and is located.
        let mut bad = rows.clone();
        let v = bad[2]["advantage"].as_f64().unwrap();
        bad[2]["advantage"] = Value::from(v + 1e-3);
        let c = g2po::io::compare(&adv, &bad);
        assert!(!c.passes(1e-4));
        assert!(c.passes(2e-3));
        assert!((c.max_abs_error - 1e-3).abs() < 1e-9);
        assert_eq!(c.worst, Some((2, "advantage".to_string())));

        // A missing row and an unknown field are problems.
        let c = g2po::io::compare(&adv, &rows[..4]);
        assert!(!c.passes(1.0) && !c.problems.is_empty());
        let mut extra = rows.clone();
        extra[0]["no_such_field"] = Value::from(1.0);
        assert!(!g2po::io::compare(&adv, &extra).passes(1.0));
    }
    // A wrong node id is an id mismatch, whatever the tolerance.
    let adv = run(cfg(EstimatorKind::G2po, Normalization::MeanStd), &batch);
    let mut rows = jsonl_lines(&adv);
    rows[1]["node"] = Value::from(7);
    let c = g2po::io::compare(&adv, &rows);
    assert_eq!(c.id_mismatches, vec![(1, "node".to_string(), 7, 1)]);
    assert!(!c.passes(f64::INFINITY));
}

#[test]
fn jsonl_rows_and_vector_documents_parse_to_the_same_batch() {
    let batch = good_move_batch();
    // Serialise the batch as JSONL rows (ids as integers and strings mixed).
    let mut lines = Vec::new();
    for r in 0..batch.len() {
        let Anchor::Text(obs) = batch.anchor(r) else { unreachable!() };
        lines.push(serde_json::json!({
            "group": batch.group_ids()[batch.groups()[r] as usize],
            "traj": batch.traj_ids()[batch.trajectories()[r] as usize],
            "step": batch.steps()[r],
            "obs": obs,
            "reward": batch.rewards()[r],
            "episode_reward": batch.episode_rewards()[r],
            "is_action_valid": batch.valid()[r],
            "response_len": batch.response_lens()[r],
            "ignored_extra": "x",
        }));
    }
    let text: String = lines.iter().map(|l| format!("{l}\n\n")).collect();
    let input = g2po::io::parse_str(&text, "rows.jsonl").unwrap();
    assert!(input.header.is_none());
    let base = cfg(EstimatorKind::G2po, Normalization::Mean);
    let want = run(base, &batch);
    assert_eq!(run(base, &input.batch), want);

    // The same rows as a vector document with params and expected rows.
    let expected: Vec<Value> = (0..want.len()).map(|r| g2po::io::row_json(&want, r)).collect();
    let doc = serde_json::json!({
        "estimator": "g2po",
        "case": "hand",
        "params": {"gamma": 0.95, "epsilon": 1e-6, "mode": "mean_norm", "step_advantage_w": 1.0,
                   "invalid_action_penalty": 0.1, "stats_over": "rows", "enable_similarity": false},
        "steps": lines,
        "expected": expected,
    });
    let path = std::env::temp_dir().join(format!("g2po-engine-test-{}.json", std::process::id()));
    std::fs::write(&path, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    let input = g2po::io::read_path(&path);
    std::fs::remove_file(&path).unwrap();
    let input = input.unwrap();
    let header = input.header.expect("a vector document");
    assert_eq!(header.case.as_deref(), Some("hand"));
    assert_eq!(header.config, base);
    let adv = run(header.config, &input.batch);
    assert!(g2po::io::compare(&adv, &header.expected).passes(1e-12));

    // Similarity in the params switches the grouping.
    let mut sim = doc.clone();
    sim["params"]["enable_similarity"] = Value::from(true);
    sim["params"]["similarity_thresh"] = Value::from(0.9);
    let input = g2po::io::parse_str(&sim.to_string(), "sim.json").unwrap();
    assert_eq!(input.header.unwrap().config.grouping, g2po::Grouping::Similarity { threshold: 0.9 });
}

/// Rows of two groups interleaved step-major (as a vectorised environment over
/// two tasks emits them): g1/A@0, g2/C@0, g1/A@1, g2/C@1, g1/B@0.
#[test]
fn gigpo_on_interleaved_groups() {
    let mut b = RolloutBatch::builder();
    let row = |group, traj, step, obs, r: f64| g2po::StepRow {
        group,
        traj,
        step,
        anchor: Anchor::Text(obs),
        reward: r,
        episode_reward: if traj == "B" { 0.0 } else { 10.0 },
        valid: true,
        response_len: 1,
    };
    b.push_step(row("g1", "A", 0, "s0", 0.0)).unwrap();
    b.push_step(row("g2", "C", 0, "s0", 0.0)).unwrap();
    b.push_step(row("g1", "A", 1, "s1", 10.0)).unwrap();
    b.push_step(row("g2", "C", 1, "s1", 10.0)).unwrap();
    b.push_step(row("g1", "B", 0, "s0", 0.0)).unwrap();
    let batch = b.build().unwrap();
    assert!(!batch.groups_contiguous());
    let adv = run(cfg(EstimatorKind::Gigpo, Normalization::Mean), &batch);
    // Step groups batch-wide in first-seen row order: g1/s0 = 0, g2/s0 = 1,
    // g1/s1 = 2, g2/s1 = 3; B's s0 joins g1/s0.
    assert_eq!(adv.node, vec![0, 1, 2, 3, 0]);
    // Returns: A0 = 9.5, C0 = 9.5, A1 = 10, C1 = 10, B0 = 0; g1/s0 {9.5, 0} -> +-4.75.
    assert_all_close(&adv.step_return, &[9.5, 9.5, 10.0, 10.0, 0.0], "returns");
    assert_all_close(&adv.step, &[4.75, 0.0, 0.0, 0.0, -4.75], "step");
}

/// `estimate_into` reuses buffers without leaking stale values: every
/// combination of estimator and batch size, run in sequence into one
/// `Advantages`, equals a fresh `estimate`.
#[test]
fn estimate_into_reuses_buffers_without_stale_values() {
    use g2po::{AdvantageEstimator, Anchor, Estimator, EstimatorConfig, EstimatorKind, RolloutBatch, Step};
    let batch_of = |trajs: usize, len: usize| {
        let mut b = RolloutBatch::builder();
        let names = ["a", "b", "c", "d"];
        for t in 0..trajs {
            let reward = if t % 2 == 0 { 10.0 } else { 0.0 };
            let steps = (0..len).map(|i| Step {
                anchor: Anchor::Text(names[(i + t) % names.len()]),
                reward: if i + 1 == len { reward } else { 0.0 },
                valid: i % 3 != 1,
                response_len: 2,
            });
            b.push_trajectory(&format!("g{}", t % 2), &t.to_string(), reward, steps).unwrap();
        }
        b.build().unwrap()
    };
    let batches = [batch_of(6, 7), batch_of(3, 2), batch_of(8, 9)];
    let kinds = [EstimatorKind::G2po, EstimatorKind::Grpo, EstimatorKind::Gigpo, EstimatorKind::G2po];
    let mut reused = g2po::Advantages::default();
    for batch in &batches {
        for kind in kinds {
            let estimator = Estimator::new(EstimatorConfig::new(kind)).unwrap();
            estimator.estimate_into(batch, &mut reused).unwrap();
            assert_eq!(reused, estimator.estimate(batch).unwrap(), "{kind} on {} rows", batch.len());
        }
    }
}

/// The per-thread scratch outlives a call: a later call with another gamma
/// must not reuse powers of the earlier gamma.
#[test]
fn gamma_change_between_calls_is_respected() {
    use g2po::{AdvantageEstimator, Anchor, Estimator, EstimatorConfig, EstimatorKind, RolloutBatch, Step};
    let mut b = RolloutBatch::builder();
    let steps = ["x", "y", "z"].map(|s| Step { anchor: Anchor::Text(s), reward: 0.0, valid: true, response_len: 1 });
    b.push_trajectory("g", "t", 10.0, steps).unwrap();
    let batch = b.build().unwrap();
    for gamma in [0.95, 0.5, 0.95, 0.1] {
        let cfg = EstimatorConfig { gamma, ..EstimatorConfig::new(EstimatorKind::G2po) };
        let adv = Estimator::new(cfg).unwrap().estimate(&batch).unwrap();
        // Single visits: V = gamma^(T - t) * R with T = 3.
        for (t, v) in adv.node_value.iter().enumerate() {
            let want = gamma.powi(3 - t as i32) * 10.0;
            assert!((*v as f64 - want).abs() < 1e-5, "gamma {gamma}, step {t}: {v} vs {want}");
        }
    }
}

/// A canonicaliser that runs rayon work lets the worker thread pick up another
/// group's job while the first group is still in progress (here forced with
/// `rayon::yield_now`); the engine's per-thread scratch must survive that re-entry.
#[test]
fn canonicalizer_using_rayon_re_enters_the_engine_safely() {
    use std::borrow::Cow;
    struct YieldingLowercase;
    impl g2po::keys::Canonicalize for YieldingLowercase {
        fn canonicalize<'a>(&self, text: &'a str) -> Cow<'a, str> {
            // Runs whatever job is queued on this worker: another group of the batch.
            let _ = rayon::yield_now();
            let parts: Vec<String> = text.split(' ').collect::<Vec<_>>().par_iter().map(|w| w.to_lowercase()).collect();
            Cow::Owned(parts.join(" "))
        }
    }
    use rayon::prelude::*;
    // More rows than the engine processes on one thread without splitting (2048),
    // so the second half of the groups is queued while the first is processed.
    let mut b = RolloutBatch::builder();
    for g in 0..1024 {
        let group = format!("g{g}");
        b.push_trajectory(&group, &format!("{g}/a"), 10.0, [step("The Hall"), last("the door", 10.0)]).unwrap();
        b.push_trajectory(&group, &format!("{g}/b"), 0.0, [step("the hall"), last("The Wall", 0.0)]).unwrap();
    }
    let batch = b.build().unwrap();
    let similarity = EstimatorConfig {
        grouping: g2po::Grouping::Similarity { threshold: 0.95 },
        ..cfg(EstimatorKind::G2po, Normalization::MeanStd)
    };
    let plain = Estimator::new(similarity).unwrap().with_keyer(StateKeyer::new().with(g2po::keys::CollapseWhitespace));
    let yielding = Estimator::new(similarity).unwrap().with_keyer(StateKeyer::new().with(YieldingLowercase));
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        let adv = pool.install(|| yielding.estimate(&batch)).unwrap();
        // Lowercasing fuses "The Hall" with "the hall": both rows of node 0 in every group.
        for g in 0..1024 {
            assert_eq!(&adv.node[4 * g..4 * g + 4], &[0, 1, 0, 2], "group {g}");
        }
        let unfused = plain.estimate(&batch).unwrap();
        assert_eq!(&unfused.node[..4], &[0, 1, 2, 3]);
    }
}
