//! Quickstart: four rollouts of one grid task, scored by GRPO, GiGPO and G2PO.
//!
//! The agent starts in the hall and must reach the charging dock. Rollouts 0
//! and 3 succeed through hall -> corridor -> lab -> dock. Rollout 1 makes the
//! same two good moves, then turns into the storeroom and runs out of turns.
//! Rollout 2 goes the wrong way from the start.
//!
//! GRPO gives every step of rollout 1 the same negative advantage. G2PO pools
//! the visits of all four rollouts: the corridor and the lab have high values
//! because successful rollouts pass through them, so the good moves of the
//! failed rollout 1 (hall -> corridor, corridor -> lab) get a positive graph
//! term on top of the episode's penalty (hall -> corridor ends up positive
//! overall), while its real mistake (lab -> storeroom) takes the blame.
//!
//! Run: `cargo run --release --example quickstart`

use g2po::{AdvantageEstimator, Anchor, Estimator, EstimatorConfig, EstimatorKind, RolloutBatch, Step};

fn main() -> g2po::Result<()> {
    let rollouts: [(&str, f64, &[&str]); 4] = [
        ("0", 10.0, &["hall", "corridor", "lab"]),
        ("1", 0.0, &["hall", "corridor", "lab", "storeroom", "storeroom"]),
        ("2", 0.0, &["hall", "garden", "shed", "garden"]),
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

    println!("{:<4} {:<4} {:<28} {:>8} {:>8} {:>8}   G2PO node value", "traj", "step", "move", "GRPO", "GiGPO", "G2PO");
    for row in 0..batch.len() {
        let traj = &batch.traj_ids()[batch.trajectories()[row] as usize];
        let here = match batch.anchor(row) {
            Anchor::Text(t) => t,
            Anchor::Key(_) => unreachable!("this example uses text anchors"),
        };
        let next = match batch.next_rows()[row] {
            g2po::rollout::NO_NEXT if batch.episode_rewards()[row] > 0.0 => "DOCK (success)".to_owned(),
            g2po::rollout::NO_NEXT => "(out of turns)".to_owned(),
            n => match batch.anchor(n as usize) {
                Anchor::Text(t) => t.to_owned(),
                Anchor::Key(_) => unreachable!(),
            },
        };
        let failed = batch.episode_rewards()[row] == 0.0;
        let mark = if failed && g2po.step[row] > 0.0 { "  <- good move credited in a failed rollout" } else { "" };
        println!(
            "{:<4} {:<4} {:<28} {:>8.3} {:>8.3} {:>8.3}   {:.3}{mark}",
            traj,
            batch.steps()[row],
            format!("{here} -> {next}"),
            grpo.advantage[row],
            gigpo.advantage[row],
            g2po.advantage[row],
            g2po.node_value[row],
        );
    }
    Ok(())
}
