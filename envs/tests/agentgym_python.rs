//! The AgentGym protocol against the Python server of `envs/servers/` (TextWorld-Express
//! and BabyAI from their registry packages). Each test starts the server on a free loopback
//! port and stops it. Without the servers' Python (see `envs/servers/setup-venv.sh`) the
//! tests skip, saying so, unless `G2PO_REQUIRE_ENV_SERVERS=1` (CI), where they fail.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::thread;

use common::{protocol, python_server, raw};
use g2po_envs::Environment;
use g2po_envs::agentgym::{AgentGymSpec, Call, Canonicaliser, ProtocolErrorKind};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

const COIN: &str = "/textworld-express/coin";
const COOKING: &str = "/textworld-express/cooking";
const BABYAI: &str = "/babyai/GoToRedBallGrey";

fn spec(base: &str, path: &str, options: &str) -> AgentGymSpec {
    format!("{base}{path}{options}").parse().unwrap()
}

/// A random episode's trace (texts, actions, outcomes), `steps` turns at most.
fn episode(env: &mut dyn Environment, task: u64, seed: u64, steps: usize) -> Vec<String> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut obs = env.try_reset(task).unwrap();
    let mut trace = vec![obs.text.clone()];
    for _ in 0..steps {
        let a = obs.admissible[rng.random_range(0..obs.admissible.len())].clone();
        let out = env.try_step(&a).unwrap();
        trace.push(format!("{a} -> {} {} {} {}", out.observation.text, out.valid, out.done, out.success));
        if out.done {
            break;
        }
        obs = out.observation;
    }
    trace
}

#[test]
fn every_endpoint_of_every_game() {
    let Some(server) = python_server(&[]) else { return };
    let base = server.url();
    let (st, hello) = raw("GET", &format!("{base}/"), None);
    assert!(st == 200 && hello.as_str().unwrap().contains("/textworld-express/coin"), "{hello}");
    for path in [COIN, COOKING, BABYAI] {
        let url = format!("{base}{path}");
        assert_eq!(raw("GET", &format!("{url}/"), None), (200, json!(format!("This is environment {}.", &path[1..]))));
        let (st, created) = raw("POST", &format!("{url}/create"), None);
        assert_eq!(st, 200, "{created}");
        let id = created["id"].as_u64().unwrap();
        let (_, reset) = raw("POST", &format!("{url}/reset"), Some(&json!({"id": id, "data_idx": 7}).to_string()));
        let text = reset["observation"].as_str().unwrap();
        assert!(text.starts_with("Your task:") || text.starts_with("Your goal:"), "{text}");
        assert!(text.contains("\nAvailable actions: ["), "{text}");
        assert_eq!((reset["done"].clone(), reset["score"].clone()), (json!(false), json!(0.0)));
        let (_, obs) = raw("GET", &format!("{url}/observation?id={id}"), None);
        assert_eq!(obs["observation"], reset["observation"]);
        let (_, stepped) =
            raw("POST", &format!("{url}/step"), Some(&json!({"id": id, "action": "look around"}).to_string()));
        assert!(stepped["observation"].is_string() && stepped["done"].is_boolean(), "{stepped}");
        let (_, bad) = raw("POST", &format!("{url}/step"), Some(&json!({"id": id, "action": "xyzzy"}).to_string()));
        assert_eq!(bad["valid"], json!(false), "{bad}");
        assert_eq!(raw("POST", &format!("{url}/close"), Some(&json!({"id": id}).to_string())), (200, json!(true)));
        assert_eq!(raw("POST", &format!("{url}/close"), Some(&json!({"id": id}).to_string())), (200, json!(false)));
    }
    // Through the client, with the games' canonicalisers inferred from the paths.
    for (path, canon) in [
        (COIN, Canonicaliser::TextWorldExpress),
        (COOKING, Canonicaliser::TextWorldExpress),
        (BABYAI, Canonicaliser::BabyAi),
    ] {
        let spec = spec(base, path, "");
        assert_eq!(spec.canonicaliser(), canon);
        let mut env = spec.connect();
        assert_eq!(env.hello().unwrap(), format!("This is environment {}.", &path[1..]));
        let trace = episode(&mut env, 3, 3, 10);
        assert!(trace.len() >= 2);
        assert!(!env.observation().unwrap().is_empty());
    }
}

#[test]
fn error_answers() {
    let Some(server) = python_server(&[]) else { return };
    let base = server.url();
    let coin = format!("{base}{COIN}");
    let post = |url: &str, body: &str| raw("POST", url, Some(body));
    assert_eq!(
        post(&format!("{coin}/step"), r#"{"id": 42, "action": "look around"}"#),
        (200, json!({"error": "The id 42 is not valid."}))
    );
    let id = post(&format!("{coin}/create"), "").1["id"].as_u64().unwrap();
    assert_eq!(
        post(&format!("{coin}/step"), &json!({"id": id, "action": "look around"}).to_string()),
        (200, json!({"error": format!("The id {id} has not been reset.")}))
    );
    // An instance belongs to its game: the BabyAI path does not know the coin's id.
    assert_eq!(
        post(&format!("{base}{BABYAI}/step"), &json!({"id": id, "action": "turn left"}).to_string()),
        (200, json!({"error": format!("The id {id} is not valid.")}))
    );
    let (st, e) = post(&format!("{coin}/step"), r#"{"id": 0, "action": "#);
    assert!(st == 400 && e["error"].as_str().unwrap().starts_with("malformed request body"), "{e}");
    let (st, e) = post(&format!("{coin}/reset"), &json!({"id": id, "data_idx": -1}).to_string());
    assert!(st == 400 && e["error"].is_string(), "{e}");
    let (st, e) = post(&format!("{base}/babyai/NoSuchLevel/create"), "");
    assert!(st == 404 && e["error"].as_str().unwrap().contains("unknown BabyAI level"), "{e}");
    let (st, e) = post(&format!("{base}/textworld-express/zork/create"), "");
    assert!(st == 404 && e["error"].is_string(), "{e}");
    let (st, e) = raw("GET", &format!("{coin}/create"), None);
    assert!(st == 405 && e["error"].is_string(), "{e}");

    // A finished episode: find a game whose coin lies in the first room, take it, step again.
    let mut env = spec(base, COIN, "").connect();
    let task = (0..200u64)
        .find(|&t| env.try_reset(t).unwrap().admissible.contains(&"take coin".to_string()))
        .expect("some game starts next to the coin");
    env.try_reset(task).unwrap();
    let won = env.try_step("take coin").unwrap();
    assert!(won.done && won.success && won.valid && won.reward == 1.0, "{won:?}");
    let id = env.id().unwrap();
    assert_eq!(
        post(&format!("{coin}/step"), &json!({"id": id, "action": "look around"}).to_string()),
        (200, json!({"error": format!("The task with environment {id} has finished.")}))
    );
    // The client itself treats steps after the end as invalid no-ops (no call).
    assert!(!env.try_step("look around").unwrap().valid);
}

#[test]
fn games_are_deterministic_per_data_idx() {
    let Some(server) = python_server(&[]) else { return };
    for path in [COIN, COOKING, BABYAI] {
        let spec = spec(server.url(), path, "");
        let (mut a, mut b) = (spec.connect(), spec.connect());
        assert_eq!(episode(&mut a, 11, 1, 30), episode(&mut b, 11, 1, 30), "{path}");
        let first = |env: &mut g2po_envs::agentgym::AgentGymEnv, t| env.try_reset(t).unwrap().text;
        assert_ne!(first(&mut a, 11), first(&mut a, 12), "{path}: two data_idx, one game");
    }
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill").args([sig, &pid.to_string()]).status().unwrap().success();
    assert!(ok, "kill {sig} {pid}");
}

#[test]
fn a_server_killed_mid_rollout_fails_the_next_call() {
    let Some(mut server) = python_server(&[]) else { return };
    let mut env = spec(server.url(), COIN, "?timeout=10").connect();
    let obs = env.try_reset(5).unwrap();
    env.try_step(&obs.admissible[0]).unwrap();
    server.kill();
    let e = protocol(env.try_step(&obs.admissible[0]).unwrap_err());
    assert_eq!(e.call, Call::Step);
    assert!(e.kind.is_transport(), "{e}");
    // A new client finds nothing listening.
    let e = protocol(spec(server.url(), COIN, "").connect().try_reset(0).unwrap_err());
    assert!(matches!(e.kind, ProtocolErrorKind::Connect(_)), "{e}");
}

#[test]
fn a_server_that_stops_answering_times_out() {
    let Some(server) = python_server(&[]) else { return };
    // The first BabyAI instance imports minigrid (seconds): warm up with the default timeout.
    spec(server.url(), BABYAI, "").connect().try_reset(1).unwrap();
    let mut env = spec(server.url(), BABYAI, "?timeout=0.5").connect();
    env.try_reset(1).unwrap();
    // SIGSTOP: the process keeps its sockets but never answers (a hung server).
    signal(server.pid(), "-STOP");
    let e = protocol(env.try_step("turn left").unwrap_err());
    signal(server.pid(), "-CONT");
    assert_eq!((e.call, e.kind.clone()), (Call::Step, ProtocolErrorKind::Timeout), "{e}");
    // Once it answers again, a new client works.
    assert!(spec(server.url(), BABYAI, "").connect().try_reset(1).is_ok());
}

#[test]
fn load_test_many_concurrent_instances_lose_no_episode_and_leak_none() {
    const LIMIT: usize = 16;
    let Some(server) = python_server(&["--max-instances", "16"]) else { return };
    let base = Arc::new(server.url().to_string());
    let jobs: Vec<_> = (0..LIMIT)
        .map(|c| {
            let base = Arc::clone(&base);
            thread::spawn(move || {
                let path = if c % 2 == 0 { COIN } else { BABYAI };
                let spec = spec(&base, path, "");
                (0..3u64)
                    .map(|e| {
                        let mut env = spec.connect();
                        let task = c as u64 * 10 + e;
                        (path, task, episode(&mut env, task, task, 20))
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let traces: Vec<_> = jobs.into_iter().flat_map(|j| j.join().unwrap()).collect();
    assert_eq!(traces.len(), LIMIT * 3, "an episode was lost");
    // Run one after another, every episode reads the same: concurrent instances in one JVM
    // and one Python process share no state.
    for (path, task, trace) in &traces {
        let mut env = spec(&base, path, "").connect();
        assert_eq!(&episode(&mut env, *task, *task, 20), trace, "{path} task {task}");
    }
    // Every instance was freed: the limit's worth can be open again, and no more.
    let spec = spec(&base, BABYAI, "");
    let mut open: Vec<_> = (0..LIMIT).map(|_| spec.connect()).collect();
    for env in &mut open {
        env.create().unwrap();
    }
    let e = protocol(spec.connect().create().unwrap_err());
    assert!(matches!(&e.kind, ProtocolErrorKind::Server(m) if m.contains("too many instances")), "{e}");
}
