//! Writes `examples/rollouts.jsonl`, the small rollout file the README's
//! command-line examples read.
//!
//! The rollouts come from `household-small` (envs/), the three-room text world
//! of the ablation: two tasks (task seeds 3 and 7), eight rollouts each, at most
//! 20 turns. The policy is random over the admissible commands, and one
//! command in ten is a malformed one (an invalid action, state unchanged), as
//! an untrained language model produces. Every rollout of a task starts in the
//! same hallway and walks through the same few rooms and receptacles, so the
//! states overlap heavily: what the graph estimators need. A success scores
//! 10 (the peers' scale) on its last step.
//!
//! Run: `cargo run --release --example make_rollouts [-- OUTPUT]` (default
//! `examples/rollouts.jsonl`). The output is deterministic.

use std::io::Write;

use g2po_envs::{EnvKind, make_env};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const TASKS: [u64; 2] = [3, 7];
const ROLLOUTS: u64 = 8;
const HORIZON: usize = 20;
const SUCCESS_REWARD: f64 = 10.0;

/// One line of the file, fields in the order the README lists them.
#[derive(serde::Serialize)]
struct Row<'a> {
    group: &'a str,
    traj: &'a str,
    step: usize,
    obs: &'a str,
    reward: f64,
    episode_reward: f64,
    is_action_valid: bool,
    response_len: usize,
}

fn main() -> std::io::Result<()> {
    let path = std::env::args().nth(1).unwrap_or_else(|| "examples/rollouts.jsonl".into());
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path)?);
    let (mut rows, mut successes) = (0, 0);
    for task in TASKS {
        for rollout in 0..ROLLOUTS {
            let mut rng = ChaCha8Rng::seed_from_u64(task * 1_000 + rollout);
            let mut env = make_env(EnvKind::HouseholdSmall);
            let mut obs = env.reset(task);
            let mut steps = Vec::new();
            let mut success = false;
            for _ in 0..HORIZON {
                let action = if rng.random_bool(0.1) {
                    "grab everything".to_owned()
                } else {
                    obs.admissible[rng.random_range(0..obs.admissible.len())].clone()
                };
                let outcome = env.step(&action);
                steps.push((std::mem::take(&mut obs.text), outcome.valid, action));
                obs = outcome.observation;
                if outcome.done {
                    success = outcome.success;
                    break;
                }
            }
            let episode_reward = if success { SUCCESS_REWARD } else { 0.0 };
            successes += usize::from(success);
            let last = steps.len() - 1;
            for (step, (text, valid, action)) in steps.into_iter().enumerate() {
                let row = Row {
                    group: &format!("task-{task}"),
                    traj: &format!("task-{task}/{rollout}"),
                    step,
                    obs: &text,
                    reward: if step == last { episode_reward } else { 0.0 },
                    episode_reward,
                    is_action_valid: valid,
                    // A stand-in for the response's token count.
                    response_len: action.split_whitespace().count() + 1,
                };
                serde_json::to_writer(&mut out, &row)?;
                out.write_all(b"\n")?;
                rows += 1;
            }
        }
    }
    out.flush()?;
    eprintln!("{path}: {rows} rows, {} rollouts, {successes} successes", TASKS.len() as u64 * ROLLOUTS);
    Ok(())
}
