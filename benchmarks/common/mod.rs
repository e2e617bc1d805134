//! The synthetic workload shared by the benchmarks: G task groups x 8
//! rollouts x 50 steps, about half of the states shared within a group,
//! ALFWorld-like anchors of about 270 characters.

use g2po::{Anchor, RolloutBatch, StepRow};
use rand::{Rng, SeedableRng};

pub const ROLLOUTS: usize = 8;
pub const STEPS: usize = 50;
pub const SHARED_STATES: usize = 40;

pub fn observation(group: usize, state: usize) -> String {
    // About 270 characters, like an ALFWorld observation; the ids sit at the
    // end so hashing must read the whole text to tell states apart.
    let mut text = String::with_capacity(280);
    text.push_str(
        "You are in the middle of a room. Looking quickly around you, you see a cabinet 1, a countertop 1, \
         a drawer 2, a fridge 1, a garbagecan 1, a microwave 1, a shelf 3, a sinkbasin 1, a stoveburner 4, \
         and a toaster 1. Your task is to: put a clean mug in coffeemachine. ",
    );
    text.push_str(&format!("[task {group:05} state {state:07}]"));
    text
}

/// G groups x 8 rollouts x 50 steps; each step is a shared state of its group
/// with probability 1/2, else a state no other row visits.
pub fn synthetic(groups: usize, as_keys: bool, keyer: &g2po::keys::StateKeyer) -> RolloutBatch {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut b = RolloutBatch::builder();
    let mut unique = SHARED_STATES;
    for g in 0..groups {
        let group = format!("g{g}");
        for r in 0..ROLLOUTS {
            let traj = format!("g{g}/r{r}");
            let reward = if rng.random_bool(0.4) { 10.0 } else { 0.0 };
            for t in 0..STEPS {
                let state = if rng.random_bool(0.5) {
                    rng.random_range(0..SHARED_STATES)
                } else {
                    unique += 1;
                    unique
                };
                let text = observation(g, state);
                let anchor = if as_keys { Anchor::Key(keyer.key(&text)) } else { Anchor::Text(&text) };
                b.push_step(StepRow {
                    group: &group,
                    traj: &traj,
                    step: t as u32,
                    anchor,
                    reward: if t + 1 == STEPS { reward } else { 0.0 },
                    episode_reward: reward,
                    valid: rng.random_bool(0.95),
                    response_len: rng.random_range(10..60),
                })
                .expect("valid synthetic row");
            }
        }
    }
    b.build().expect("valid synthetic batch")
}
