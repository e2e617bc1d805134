//! The AgentGym protocol: g2po's own server (`EnvServer`) against the client, and the
//! client against dead, silent and garbled servers. Loopback only.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{Fault, FaultyServer, dead_url, protocol, raw};
use g2po_envs::agentgym::{AgentGymSpec, Call, EnvServer, ProtocolErrorKind, ServerConfig};
use g2po_envs::{EnvError, EnvKind, Environment, Observation, StepOutcome, make_env_with_seed};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

fn server(kind: EnvKind, max_instances: usize) -> EnvServer {
    EnvServer::start(kind, "127.0.0.1:0", ServerConfig { max_instances, threads: 4 }).unwrap()
}

fn spec(url: &str) -> AgentGymSpec {
    url.parse().unwrap()
}

#[test]
fn every_endpoint_of_the_rust_server() {
    let s = server(EnvKind::Chain, 8);
    let base = s.url();
    assert_eq!(raw("GET", &format!("{base}/"), None), (200, json!("This is environment chain.")));
    let (st, created) = raw("POST", &format!("{base}/create"), None);
    assert_eq!(st, 200);
    let id = created["id"].as_u64().unwrap();
    let (st, reset) = raw("POST", &format!("{base}/reset"), Some(&json!({"id": id, "data_idx": 3}).to_string()));
    assert_eq!(st, 200);
    assert_eq!(reset["observation"], "You are at position 0 of 6.\nAvailable actions: [\"forward\",\"stay\"]");
    assert_eq!((reset["done"].clone(), reset["score"].clone()), (json!(false), json!(0.0)));
    let (_, stepped) = raw("POST", &format!("{base}/step"), Some(&json!({"id": id, "action": "forward"}).to_string()));
    assert_eq!(stepped["observation"], "You are at position 1 of 6.\nAvailable actions: [\"forward\",\"stay\"]");
    assert_eq!((stepped["valid"].clone(), stepped["done"].clone()), (json!(true), json!(false)));
    let (_, invalid) = raw("POST", &format!("{base}/step"), Some(&json!({"id": id, "action": "fly"}).to_string()));
    assert_eq!(invalid["valid"], json!(false));
    let (_, obs) = raw("GET", &format!("{base}/observation?id={id}"), None);
    assert_eq!(obs["observation"], stepped["observation"]);
    assert_eq!(s.open_instances(), 1);
    assert_eq!(raw("POST", &format!("{base}/close"), Some(&json!({"id": id}).to_string())), (200, json!(true)));
    assert_eq!(raw("POST", &format!("{base}/close"), Some(&json!({"id": id}).to_string())), (200, json!(false)));
    assert_eq!((s.open_instances(), s.created_instances()), (0, 1));

    // The client over the same calls.
    let mut env = spec(&base).connect();
    assert_eq!(env.hello().unwrap(), "This is environment chain.");
    let first = env.try_reset(3).unwrap();
    assert_eq!(first.admissible, ["forward", "stay"]);
    assert_eq!(env.observation().unwrap(), "You are at position 0 of 6.\nAvailable actions: [\"forward\",\"stay\"]");
    let mut last = None;
    for _ in 0..6 {
        last = Some(env.try_step("forward").unwrap());
    }
    let last = last.unwrap();
    assert!(last.done && last.success && last.valid && last.reward == 1.0);
    // After the end, steps are invalid no-ops (the trait's rule), without a call.
    let after = env.try_step("forward").unwrap();
    assert!(after.done && !after.valid && after.success);
    env.close().unwrap();
    assert_eq!(s.open_instances(), 0);
    env.close().unwrap(); // closing twice is a no-op
}

#[test]
fn error_answers_of_the_rust_server() {
    let s = server(EnvKind::Chain, 8);
    let base = s.url();
    let post = |path: &str, body: &str| raw("POST", &format!("{base}{path}"), Some(body));
    assert_eq!(post("/step", r#"{"id": 99, "action": "forward"}"#), (200, json!({"error": "The id 99 is not valid."})));
    assert_eq!(post("/reset", r#"{"id": 99, "data_idx": 0}"#), (200, json!({"error": "The id 99 is not valid."})));
    let id = post("/create", "").1["id"].as_u64().unwrap();
    assert_eq!(
        post("/step", &json!({"id": id, "action": "forward"}).to_string()),
        (200, json!({"error": format!("The id {id} has not been reset.")}))
    );
    post("/reset", &json!({"id": id, "data_idx": 0}).to_string());
    for _ in 0..6 {
        post("/step", &json!({"id": id, "action": "forward"}).to_string());
    }
    assert_eq!(
        post("/step", &json!({"id": id, "action": "forward"}).to_string()),
        (200, json!({"error": format!("The task with environment {id} has finished.")}))
    );
    let (st, e) = post("/step", r#"{"id": 0, "action": "#);
    assert_eq!(st, 400);
    assert!(e["error"].as_str().unwrap().starts_with("malformed request body"), "{e}");
    let (st, e) = post("/reset", r#"{"id": "zero"}"#);
    assert!(st == 400 && e["error"].is_string(), "{e}");
    let (st, e) = raw("GET", &format!("{base}/teleport"), None);
    assert!(st == 404 && e["error"].is_string());
    let (st, e) = raw("GET", &format!("{base}/create"), None);
    assert!(st == 405 && e["error"].is_string());
    let (st, e) = raw("GET", &format!("{base}/observation"), None);
    assert!(st == 400 && e["error"].is_string());

    // The client turns them into typed errors naming the call.
    let mut env = spec(&base).connect();
    env.try_reset(0).unwrap();
    let stolen = env.id().unwrap();
    assert_eq!(post("/close", &json!({"id": stolen}).to_string()).1, json!(true));
    let e = protocol(env.try_step("forward").unwrap_err());
    assert_eq!(e.call, Call::Step);
    assert_eq!(e.kind, ProtocolErrorKind::Server(format!("The id {stolen} is not valid.")));
    assert_eq!(e.url, base);
    assert!(e.to_string().contains("POST /step"), "{e}");
}

#[test]
fn the_client_sees_what_an_in_process_run_sees() {
    let s = server(EnvKind::HouseholdSmall, 8);
    let spec = spec(&s.url());
    for task in [0u64, 5, 11] {
        let mut remote = spec.connect();
        let mut local = make_env_with_seed(EnvKind::HouseholdSmall, 0);
        let mut rng = ChaCha8Rng::seed_from_u64(task);
        let (r, l) = (remote.try_reset(task).unwrap(), local.reset(task));
        assert_eq!((&r.text, &r.admissible), (&l.text, &l.admissible));
        let mut obs = l;
        for _ in 0..40 {
            // Mostly admissible actions, sometimes an invalid one.
            let action = if rng.random_bool(0.1) {
                "dance".to_string()
            } else {
                obs.admissible[rng.random_range(0..obs.admissible.len())].clone()
            };
            let (r, l) = (remote.try_step(&action).unwrap(), local.step(&action));
            assert_eq!(
                (&r.observation.text, &r.observation.admissible),
                (&l.observation.text, &l.observation.admissible)
            );
            assert_eq!((r.valid, r.done, r.success, r.reward), (l.valid, l.done, l.success, l.reward));
            if l.done {
                break;
            }
            obs = l.observation;
        }
    }
}

#[test]
fn instances_are_bounded_and_closed_ones_freed() {
    let s = server(EnvKind::Chain, 3);
    let spec = spec(&s.url());
    let mut envs: Vec<_> = (0..3).map(|_| spec.connect()).collect();
    for e in &mut envs {
        e.try_reset(0).unwrap();
    }
    let mut extra = spec.connect();
    let e = protocol(extra.try_reset(0).unwrap_err());
    assert_eq!(e.call, Call::Create);
    assert!(matches!(&e.kind, ProtocolErrorKind::Server(m) if m.contains("too many instances")), "{e}");
    envs.pop(); // dropping a client closes its instance
    extra.try_reset(0).unwrap();
    assert_eq!(s.open_instances(), 3);
    drop(envs);
    drop(extra);
    assert_eq!(s.open_instances(), 0);
}

/// One random episode: the trajectory of (action, observation) texts.
fn episode(env: &mut dyn Environment, task: u64, seed: u64, steps: usize) -> Result<Vec<String>, EnvError> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut obs: Observation = env.try_reset(task)?;
    let mut trace = vec![obs.text.clone()];
    for _ in 0..steps {
        let a = obs.admissible[rng.random_range(0..obs.admissible.len())].clone();
        let out: StepOutcome = env.try_step(&a)?;
        trace.push(format!("{a} -> {} {} {}", out.observation.text, out.done, out.success));
        if out.done {
            break;
        }
        obs = out.observation;
    }
    Ok(trace)
}

#[test]
fn load_test_many_concurrent_instances_lose_no_episode_and_leak_none() {
    const CLIENTS: usize = 32;
    const EPISODES: usize = 8;
    let s = server(EnvKind::HouseholdSmall, CLIENTS);
    let spec = Arc::new(spec(&s.url()));
    let finished = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (spec, finished) = (Arc::clone(&spec), Arc::clone(&finished));
            std::thread::spawn(move || {
                let mut traces = Vec::new();
                for e in 0..EPISODES {
                    let mut env = spec.connect(); // a fresh instance per episode
                    let (task, seed) = ((c * EPISODES + e) as u64 % 16, (c * 1000 + e) as u64);
                    traces.push((task, seed, episode(&mut env, task, seed, 25).unwrap()));
                    finished.fetch_add(1, Ordering::SeqCst);
                }
                traces
            })
        })
        .collect();
    let traces: Vec<_> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    assert_eq!(finished.load(Ordering::SeqCst), CLIENTS * EPISODES);
    assert_eq!(traces.len(), CLIENTS * EPISODES);
    // Every episode is exactly what the environment gives in process: no mixed-up instances.
    for (task, seed, trace) in &traces {
        let mut local = make_env_with_seed(EnvKind::HouseholdSmall, 0);
        assert_eq!(&episode(local.as_mut(), *task, *seed, 25).unwrap(), trace);
    }
    assert_eq!(s.open_instances(), 0, "an instance leaked");
    assert_eq!(s.created_instances(), (CLIENTS * EPISODES) as u64);
}

#[test]
fn a_dead_server_is_a_connect_error_naming_the_call() {
    let url = dead_url();
    let mut env = spec(&url).connect();
    let e = protocol(env.try_reset(0).unwrap_err());
    assert_eq!(e.call, Call::Create);
    assert!(matches!(e.kind, ProtocolErrorKind::Connect(_)), "{e}");
    assert!(env.hello().is_err());
}

#[test]
fn a_server_that_never_answers_times_out() {
    let silent = FaultyServer::start(Fault::Silent);
    let mut env = silent.spec("?timeout=0.3&connect_timeout=0.3").connect();
    let e = protocol(env.try_reset(0).unwrap_err());
    assert_eq!((e.call, e.kind.clone()), (Call::Create, ProtocolErrorKind::Timeout), "{e}");
}

#[test]
fn garbled_answers_are_typed_errors() {
    type Expect = fn(&ProtocolErrorKind) -> bool;
    let cases: [(Fault, Expect); 6] = [
        (Fault::Body("{not json"), |k| matches!(k, ProtocolErrorKind::Malformed(m) if m.contains("not JSON"))),
        (Fault::Body(r#"{"id": "seven"}"#), |k| matches!(k, ProtocolErrorKind::Malformed(_))),
        (Fault::Body(r#"[1, 2, 3]"#), |k| matches!(k, ProtocolErrorKind::Malformed(_))),
        (Fault::Body(r#"{"error": "boom"}"#), |k| *k == ProtocolErrorKind::Server("boom".into())),
        (Fault::Status(502), |k| *k == ProtocolErrorKind::Status(502)),
        (Fault::NotHttp, |k| matches!(k, ProtocolErrorKind::Malformed(_) | ProtocolErrorKind::Transport(_))),
    ];
    for (fault, expected) in cases {
        let srv = FaultyServer::start(fault);
        let mut env = srv.spec("?timeout=2").connect();
        let e = protocol(env.try_reset(0).unwrap_err());
        assert_eq!(e.call, Call::Create);
        assert!(expected(&e.kind), "{e}");
    }
}

#[test]
fn an_observation_without_actions_is_an_error() {
    struct Mute;
    impl Environment for Mute {
        fn name(&self) -> &str {
            "mute"
        }
        fn reset(&mut self, _: u64) -> Observation {
            Observation { text: "Nothing to do.".into(), key: 0, admissible: vec![] }
        }
        fn step(&mut self, _: &str) -> StepOutcome {
            StepOutcome { observation: self.reset(0), reward: 0.0, done: false, valid: false, success: false }
        }
    }
    let s = EnvServer::start_with("mute", |_| Box::new(Mute), "127.0.0.1:0", ServerConfig::default()).unwrap();
    let mut env = spec(&s.url()).connect();
    let e = protocol(env.try_reset(0).unwrap_err());
    assert_eq!((e.call, e.kind), (Call::Reset, ProtocolErrorKind::NoActions));
}

#[test]
fn a_panicking_environment_is_an_error_answer_and_the_server_lives_on() {
    struct Fragile(g2po_envs::Chain);
    impl Environment for Fragile {
        fn name(&self) -> &str {
            "fragile"
        }
        fn reset(&mut self, seed: u64) -> Observation {
            assert_ne!(seed, 13, "task 13 is cursed");
            self.0.reset(seed)
        }
        fn step(&mut self, a: &str) -> StepOutcome {
            self.0.step(a)
        }
    }
    let fragile = |_| Box::new(Fragile(g2po_envs::Chain::new(3).unwrap())) as Box<dyn Environment>;
    let s = EnvServer::start_with("fragile", fragile, "127.0.0.1:0", ServerConfig::default()).unwrap();
    let spec = spec(&s.url());
    let e = protocol(spec.connect().try_reset(13).unwrap_err());
    assert_eq!(e.call, Call::Reset);
    assert_eq!(e.kind, ProtocolErrorKind::Server("the environment panicked".into()));
    assert!(spec.connect().try_reset(1).is_ok());
}

#[test]
fn a_server_stopped_mid_rollout_fails_the_next_call() {
    let s = server(EnvKind::Chain, 8);
    // An in-process shutdown leaves the client's idle keep-alive connection half open (the
    // server stops reading it), so the next call waits for its timeout; a killed process
    // resets it instead (tested against `g2po serve-env` and the Python server).
    let mut env = spec(&format!("{}?timeout=1", s.url())).connect();
    env.try_reset(0).unwrap();
    env.try_step("forward").unwrap();
    s.shutdown();
    let e = protocol(env.try_step("forward").unwrap_err());
    assert_eq!(e.call, Call::Step);
    assert!(e.kind.is_transport(), "{e}");
    // Dropping a client after a transport failure sends nothing more (it would only wait).
    drop(env);
}
