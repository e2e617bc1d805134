//! Rollout throughput over the AgentGym protocol against the same environment in process.
//!
//! One sample = one rollout: reset, then a fixed random sequence of admissible actions
//! (seeded, so every sample plays the same steps; the throughput is in steps per second,
//! reset included in the time). `household-small` runs in process and through g2po's own
//! server on loopback; the Python server's games (TextWorld-Express coin, BabyAI) run over
//! the protocol when the servers' Python is found (`envs/servers/setup-venv.sh`), and their
//! in-process speed is `envs/servers/bench_inprocess.py`'s.
//!
//! ```sh
//! RAYON_NUM_THREADS=1 cargo bench -p g2po-envs --bench agentgym
//! ```

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use g2po_envs::agentgym::{AgentGymSpec, EnvServer, ServerConfig, ServerProcess, find_env_python};
use g2po_envs::{EnvKind, Environment, make_env};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const TURNS: usize = 30;

/// Plays one rollout; returns the number of steps taken.
fn rollout(env: &mut dyn Environment, task: u64) -> usize {
    let mut rng = ChaCha8Rng::seed_from_u64(task);
    let mut obs = env.try_reset(task).expect("reset");
    for t in 0..TURNS {
        let a = obs.admissible[rng.random_range(0..obs.admissible.len())].clone();
        let out = env.try_step(&a).expect("step");
        if out.done {
            return t + 1;
        }
        obs = out.observation;
    }
    TURNS
}

fn bench_env(c: &mut Criterion, name: &str, mut env: Box<dyn Environment>, task: u64) {
    let steps = rollout(env.as_mut(), task);
    let mut g = c.benchmark_group("rollout");
    g.throughput(Throughput::Elements(steps as u64));
    g.sample_size(20);
    g.bench_function(name, |b| b.iter(|| black_box(rollout(env.as_mut(), task))));
    g.finish();
}

fn benches(c: &mut Criterion) {
    bench_env(c, "household-small/in-process", make_env(EnvKind::HouseholdSmall), 3);
    let server = EnvServer::start(EnvKind::HouseholdSmall, "127.0.0.1:0", ServerConfig::default()).unwrap();
    let spec: AgentGymSpec = server.url().parse().unwrap();
    bench_env(c, "household-small/protocol", Box::new(spec.connect()), 3);
    let Some(python) = find_env_python() else {
        eprintln!("SKIP: the Python server's games (no servers' Python; see envs/servers/setup-venv.sh)");
        return;
    };
    let py = ServerProcess::python_server(&python, &[]).expect("python server");
    for path in ["textworld-express/coin", "textworld-express/cooking", "babyai/GoToRedBallGrey"] {
        let spec: AgentGymSpec = format!("{}/{path}", py.url()).parse().unwrap();
        bench_env(c, &format!("{path}/protocol"), Box::new(spec.connect()), 3);
    }
}

criterion_group!(agentgym, benches);
criterion_main!(agentgym);
