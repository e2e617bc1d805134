//! Quickstart: four rollouts of one grid task, scored by GRPO, GiGPO and G2PO.
//!
//! The task: a robot starts in the hall and must reach the charging dock within
//! five moves. The reward is sparse, as in the agent benchmarks: 10 for
//! reaching the dock, 0 for running out of moves, and nothing in between.
//! Rollouts 0 and 3 succeed through hall -> corridor -> lab -> dock. Rollout 1
//! makes the same two good moves, then turns into the storeroom and runs out
//! of moves. Rollout 2 goes the wrong way from the start.
//!
//! GRPO gives every step of rollout 1 the same negative advantage. G2PO pools
//! the visits of all four rollouts into one graph: the corridor and the lab
//! have high values because successful rollouts pass through them, so the good
//! moves of the failed rollout 1 (hall -> corridor, corridor -> lab) get a
//! positive graph term on top of the episode's penalty, while its real mistake
//! (lab -> storeroom) takes the blame. The rows marked with `<-` are those
//! where G2PO's credit differs from GRPO's in sign or by more than half a
//! standard unit.
//!
//! Run: `cargo run --release --example quickstart`

use g2po::{AdvantageEstimator, Anchor, Estimator, EstimatorConfig, EstimatorKind, RolloutBatch, Step};

/// How far G2PO's credit must move from GRPO's (in standardised units) to be
/// worth pointing at.
const CLEAR_DIFFERENCE: f32 = 0.5;

fn main() -> g2po::Result<()> {
    let rollouts: [(&str, f64, &[&str]); 4] = [
        ("0", 10.0, &["hall", "corridor", "lab"]),
        ("1", 0.0, &["hall", "corridor", "lab", "storeroom", "storeroom"]),
        ("2", 0.0, &["hall", "garden", "shed", "garden", "shed"]),
        ("3", 10.0, &["hall", "corridor", "lab"]),
    ];
    let mut builder = RolloutBatch::builder();
    for (id, reward, states) in rollouts {
        let last = states.len() - 1;
        let steps = states.iter().enumerate().map(|(t, s)| Step {
            anchor: Anchor::Text(s),
            reward: if t == last { reward } else { 0.0 },
            valid: true,
            response_len: 8,
        });
        builder.push_trajectory("reach-dock", id, reward, steps)?;
    }
    let batch = builder.build()?;

    let run = |kind| -> g2po::Result<g2po::Advantages> { Estimator::new(EstimatorConfig::new(kind))?.estimate(&batch) };
    let (grpo, gigpo, g2po) = (run(EstimatorKind::Grpo)?, run(EstimatorKind::Gigpo)?, run(EstimatorKind::G2po)?);

    println!("Task 'reach-dock': reward 10 at the dock, 0 when out of moves; 4 rollouts, gamma 0.95.");
    println!("G2PO = episode term (= GRPO) + node-centric + edge-centric; V = pooled value of the state moved from.\n");
    println!(
        "{:<4} {:<4} {:<28} {:>7} {:>7} {:>7} {:>7} {:>7} {:>6}",
        "traj", "step", "move", "GRPO", "GiGPO", "G2PO", "node", "edge", "V"
    );
    for row in 0..batch.len() {
        let traj = &batch.traj_ids()[batch.trajectories()[row] as usize];
        let next = match batch.next_rows()[row] {
            g2po::rollout::NO_NEXT if batch.episode_rewards()[row] > 0.0 => "DOCK (+10)".to_owned(),
            g2po::rollout::NO_NEXT => "(out of moves)".to_owned(),
            n => text(&batch, n as usize).to_owned(),
        };
        let (before, after) = (grpo.advantage[row], g2po.advantage[row]);
        let differs = before.signum() != after.signum() || (after - before).abs() > CLEAR_DIFFERENCE;
        let mark = match (differs, after > before) {
            (false, _) => "",
            (true, true) => "  <- G2PO credits this move",
            (true, false) => "  <- G2PO blames this move",
        };
        println!(
            "{:<4} {:<4} {:<28} {:>7.3} {:>7.3} {:>7.3} {:>7.3} {:>7.3} {:>6.2}{mark}",
            traj,
            batch.steps()[row],
            format!("{} -> {next}", text(&batch, row)),
            before,
            gigpo.advantage[row],
            after,
            g2po.node_centric[row],
            g2po.edge_centric[row],
            g2po.node_value[row],
        );
    }
    Ok(())
}

fn text(batch: &RolloutBatch, row: usize) -> &str {
    match batch.anchor(row) {
        Anchor::Text(t) => t,
        Anchor::Key(_) => "(key)",
    }
}
