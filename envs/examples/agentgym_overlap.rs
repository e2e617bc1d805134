//! Overlap of observations across rollouts of one task, before and after canonicalisation.
//!
//! For each game and each of `--tasks` tasks, 8 uniformly random rollouts of up to
//! `--steps` turns are played once over the protocol; the servers' raw texts are then put
//! through every canonicaliser, and the fraction of observations that occur in another
//! rollout of the same task is averaged over the tasks (the figures of
//! `docs/environments.md`). Starts the Python server (needs the servers' Python, see
//! `envs/servers/setup-venv.sh`) and a g2po server for household-small; loopback only.
//!
//! ```sh
//! cargo run --release -p g2po-envs --example agentgym_overlap -- --tasks 10 --steps 30
//! ```

use g2po_envs::agentgym::canon::shared_fraction;
use g2po_envs::agentgym::{AgentGymSpec, CanonState, Canonicaliser, EnvServer, ServerConfig, ServerProcess};
use g2po_envs::{EnvKind, Environment as _};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const ROLLOUTS: usize = 8;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map_or(default, |v| v.parse().expect(name))
}

/// Raw observation texts of `ROLLOUTS` random rollouts of `task`.
fn rollouts(spec: &AgentGymSpec, task: u64, steps: usize) -> Vec<Vec<String>> {
    let raw = spec.with_canonicaliser(Canonicaliser::Raw);
    (0..ROLLOUTS)
        .map(|r| {
            let mut env = raw.connect();
            let mut rng = ChaCha8Rng::seed_from_u64(task * 1000 + r as u64);
            let mut obs = env.try_reset(task).expect("reset");
            let mut texts = vec![env.raw_observation().to_string()];
            for _ in 0..steps {
                let a = obs.admissible[rng.random_range(0..obs.admissible.len())].clone();
                let out = env.try_step(&a).expect("step");
                if out.done {
                    break; // the terminal observation is no anchor
                }
                texts.push(env.raw_observation().to_string());
                obs = out.observation;
            }
            texts
        })
        .collect()
}

fn canonical(canon: Canonicaliser, rollouts: &[Vec<String>]) -> Vec<Vec<String>> {
    rollouts
        .iter()
        .map(|r| {
            let mut st = CanonState::default();
            r.iter().map(|t| canon.apply(&mut st, t).0).collect()
        })
        .collect()
}

fn main() {
    let (tasks, steps) = (arg("--tasks", 10) as u64, arg("--steps", 30));
    let python = g2po_envs::agentgym::find_env_python().expect("no servers' Python: run envs/servers/setup-venv.sh");
    let py = ServerProcess::python_server(&python, &[]).expect("python server");
    let own = EnvServer::start(EnvKind::HouseholdSmall, "127.0.0.1:0", ServerConfig::default()).expect("server");
    let games = [
        ("textworld-express/coin", format!("{}/textworld-express/coin", py.url())),
        ("textworld-express/cooking", format!("{}/textworld-express/cooking", py.url())),
        ("babyai/GoToRedBallGrey", format!("{}/babyai/GoToRedBallGrey", py.url())),
        ("babyai/GoToLocal", format!("{}/babyai/GoToLocal", py.url())),
        ("household-small (g2po serve-env)", own.url()),
    ];
    println!("{ROLLOUTS} random rollouts per task, up to {steps} turns, {tasks} tasks; mean (min-max) over tasks\n");
    println!("| game | raw | basic | game's canonicaliser | canonicaliser |");
    println!("|---|---|---|---|---|");
    for (name, url) in games {
        let spec: AgentGymSpec = url.parse().expect("spec");
        let own_canon = spec.canonicaliser();
        let mut cols = vec![Vec::new(); 3];
        for task in 0..tasks {
            let r = rollouts(&spec, task, steps);
            for (c, canon) in [Canonicaliser::Raw, Canonicaliser::Basic, own_canon].into_iter().enumerate() {
                cols[c].push(shared_fraction(&canonical(canon, &r)));
            }
        }
        let fmt = |v: &[f64]| {
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            let (lo, hi) = v.iter().fold((1f64, 0f64), |(lo, hi), &x| (lo.min(x), hi.max(x)));
            format!("{mean:.3} ({lo:.2}-{hi:.2})")
        };
        println!("| {name} | {} | {} | {} | {own_canon} |", fmt(&cols[0]), fmt(&cols[1]), fmt(&cols[2]));
    }
}
