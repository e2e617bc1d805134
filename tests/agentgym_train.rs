//! Training over the AgentGym protocol: `g2po serve-env`, the trainer on a remote
//! environment (g2po's own server and the Python server of `envs/servers/`), and tasks
//! dropped whole when their server fails. Loopback only. The Python-server tests skip,
//! saying so, without the servers' Python unless `G2PO_REQUIRE_ENV_SERVERS=1`.

use std::process::Command;
use std::time::Duration;

use g2po::EstimatorKind;
use g2po::policy::{Policy, PolicyConfig};
use g2po::train::{TrainConfig, TrainError, Trainer, collect_rollouts_dropping};
use g2po_envs::agentgym::{AgentGymSpec, Call, EnvServer, ProtocolErrorKind, ServerConfig, ServerProcess};
use g2po_envs::{Chain, EnvError, EnvKind, Environment, Observation, StepOutcome};

fn small(env: EnvKind, estimator: EstimatorKind) -> TrainConfig {
    TrainConfig {
        env,
        estimator,
        curriculum: g2po::curriculum::Curriculum::Fixed(12),
        iterations: 2,
        tasks_per_iter: 2,
        rollouts_per_task: 4,
        eval_tasks: 2,
        temperature: 10.0,
        policy: PolicyConfig { vocab: 256, hidden: 16, ..PolicyConfig::default() },
        ..TrainConfig::default()
    }
}

fn serve_env(kind: &str) -> ServerProcess {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_g2po"));
    cmd.args(["serve-env", "--env", kind, "--port", "0"]);
    ServerProcess::spawn(cmd, Duration::from_secs(30)).expect("g2po serve-env starts")
}

fn protocol(e: TrainError) -> g2po_envs::agentgym::ProtocolError {
    match e {
        TrainError::Env(EnvError::Protocol(p)) => p,
        other => panic!("expected a protocol error, got {other:?}"),
    }
}

#[test]
fn training_over_the_protocol_equals_training_in_process() {
    let server = EnvServer::start(EnvKind::HouseholdSmall, "127.0.0.1:0", ServerConfig::default()).unwrap();
    for estimator in [EstimatorKind::Grpo, EstimatorKind::Gigpo, EstimatorKind::G2po] {
        let local = small(EnvKind::HouseholdSmall, estimator);
        let remote = TrainConfig { agentgym: Some(server.url().parse().unwrap()), ..local.clone() };
        let a = Trainer::new(local).unwrap().run(|_| {}).unwrap();
        let b = Trainer::new(remote).unwrap().run(|_| {}).unwrap();
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(
                (x.train_success, x.eval_success, x.mean_length),
                (y.train_success, y.eval_success, y.mean_length)
            );
            assert_eq!(x.update, y.update, "{estimator}: the same rollouts must give the same update");
            assert_eq!(y.dropped_tasks, 0);
        }
    }
    assert_eq!(server.open_instances(), 0, "rollouts leaked instances");
}

#[test]
fn serve_env_answers_the_protocol_and_a_killed_one_fails_typed() {
    let mut server = serve_env("household");
    let spec: AgentGymSpec = format!("{}?timeout=10", server.url()).parse().unwrap();
    let mut env = spec.connect();
    assert_eq!(env.hello().unwrap(), "This is environment household.");
    let obs = env.try_reset(3).unwrap();
    assert!(obs.text.starts_with("You are in the hallway."), "{}", obs.text);
    env.try_step(&obs.admissible[0]).unwrap();
    server.kill();
    let e = match env.try_step(&obs.admissible[0]).unwrap_err() {
        EnvError::Protocol(p) => p,
        other => panic!("{other:?}"),
    };
    assert_eq!(e.call, Call::Step);
    assert!(e.kind.is_transport(), "{e}");
}

#[test]
fn serve_env_that_stops_answering_times_out() {
    let server = serve_env("chain");
    let mut env = format!("{}?timeout=0.5", server.url()).parse::<AgentGymSpec>().unwrap().connect();
    env.try_reset(0).unwrap();
    let pid = server.pid().to_string();
    assert!(Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    let e = env.try_step("forward").unwrap_err();
    assert!(Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
    match e {
        EnvError::Protocol(p) => assert_eq!((p.call, p.kind), (Call::Step, ProtocolErrorKind::Timeout)),
        other => panic!("{other:?}"),
    }
}

/// A chain whose task 13 fails on the server: at reset, or (`at_step`) mid-trajectory.
struct Cursed {
    chain: Chain,
    task: u64,
    steps: usize,
    at_step: Option<usize>,
}

impl Environment for Cursed {
    fn name(&self) -> &str {
        "cursed"
    }
    fn reset(&mut self, task: u64) -> Observation {
        self.task = task;
        self.steps = 0;
        assert!(task != 13 || self.at_step.is_some(), "task 13 fails at reset");
        self.chain.reset(task)
    }
    fn step(&mut self, action: &str) -> StepOutcome {
        self.steps += 1;
        assert!(self.task != 13 || Some(self.steps) != self.at_step, "task 13 fails mid-trajectory");
        self.chain.step(action)
    }
}

#[test]
fn a_task_whose_server_fails_is_dropped_whole() {
    let policy =
        Policy::new(&PolicyConfig { vocab: 64, hidden: 8, ..Default::default() }, &candle_core::Device::Cpu, 0)
            .unwrap();
    for at_step in [None, Some(3)] {
        let factory = move |_| {
            Box::new(Cursed { chain: Chain::new(20).unwrap(), task: 0, steps: 0, at_step }) as Box<dyn Environment>
        };
        let server = EnvServer::start_with("cursed", factory, "127.0.0.1:0", ServerConfig::default()).unwrap();
        let spec: AgentGymSpec = server.url().parse().unwrap();
        let (set, dropped) = collect_rollouts_dropping(&policy, spec, &[1, 13, 2], 4, 10, 1.0, 0, 0).unwrap();
        assert_eq!(dropped.len(), 1);
        assert_eq!(dropped[0].task, 13);
        let EnvError::Protocol(p) = &dropped[0].error else { panic!("{:?}", dropped[0].error) };
        assert_eq!(p.call, if at_step.is_none() { Call::Reset } else { Call::Step });
        assert_eq!(p.kind, ProtocolErrorKind::Server("the environment panicked".into()));
        // Only whole groups of the surviving tasks reach the batch.
        assert_eq!(set.rollouts.len(), 8);
        assert!(set.rollouts.iter().all(|r| r.task != 13));
        assert!(set.rollouts.iter().all(|r| r.rows.len() == 10), "the chain of 20 never ends in 10 turns");
        let batch = set.batch(false).unwrap();
        assert_eq!(batch.num_groups(), 2);
        drop(server);
    }
}

#[test]
fn a_dead_server_stops_training_with_an_error_naming_the_call() {
    let url = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let cfg = TrainConfig { agentgym: Some(url.parse().unwrap()), ..small(EnvKind::Chain, EstimatorKind::G2po) };
    let e = protocol(Trainer::new(cfg).unwrap().run(|_| {}).unwrap_err());
    assert_eq!(e.call, Call::Create);
    assert!(matches!(e.kind, ProtocolErrorKind::Connect(_)), "{e}");
    // The CLI says the same and exits 2.
    let out = Command::new(env!("CARGO_BIN_EXE_g2po"))
        .args(["train", "--env", &format!("agentgym:{url}"), "--iterations", "1", "--tasks", "1", "--rollouts", "2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("agentgym POST /create at") && stderr.contains("cannot connect"), "{stderr}");
}

fn python_server() -> Option<ServerProcess> {
    let python = g2po_envs::agentgym::find_env_python();
    match python {
        Some(p) => Some(ServerProcess::python_server(&p, &[]).expect("the Python server starts")),
        None if std::env::var("G2PO_REQUIRE_ENV_SERVERS").as_deref() == Ok("1") => {
            panic!("G2PO_REQUIRE_ENV_SERVERS=1 but no Python with the servers' packages")
        }
        None => {
            eprintln!("SKIP: no Python with textworld-express and minigrid (envs/servers/setup-venv.sh makes one)");
            None
        }
    }
}

#[test]
fn train_cli_on_textworld_express_and_babyai_with_every_estimator() {
    let Some(server) = python_server() else { return };
    let dir = std::env::temp_dir().join(format!("g2po-agentgym-train-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let runs = [
        ("textworld-express/coin", "grpo"),
        ("textworld-express/coin", "gigpo"),
        ("textworld-express/coin", "g2po"),
        ("babyai/GoToRedBallGrey", "g2po"),
    ];
    for (path, estimator) in runs {
        let log = dir.join(format!("{}-{estimator}.jsonl", path.replace('/', "-")));
        let out = Command::new(env!("CARGO_BIN_EXE_g2po"))
            .args(["train", "--env", &format!("agentgym:{}/{path}", server.url()), "--estimator", estimator])
            .args(["--iterations", "2", "--tasks", "2", "--rollouts", "4", "--eval-tasks", "2"])
            .args(["--curriculum", "fixed:15", "--temperature", "5", "--log"])
            .arg(&log)
            .env("CANDLE_NUM_THREADS", "1")
            .output()
            .unwrap();
        assert!(out.status.success(), "{path} {estimator}: {}", String::from_utf8_lossy(&out.stderr));
        let text = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        for l in &lines {
            assert_eq!(l["dropped_tasks"], 0, "{l}");
            assert!(l["mean_length"].as_f64().unwrap() >= 1.0);
            assert!(l["update"]["policy_loss"].as_f64().unwrap().is_finite());
            assert!(l["truth"].is_null(), "no ground truth over the protocol");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_textworld_express_ablation_setting_runs_and_reports() {
    let Some(server) = python_server() else { return };
    let out = std::env::temp_dir().join(format!("g2po-agentgym-ablation-{}", std::process::id()));
    let mut cfg = g2po::train::AblationConfig::textworld_express(out.clone(), 2, true, server.url()).unwrap();
    cfg.settings.truncate(1); // the coin collector; the cooking world runs the same code
    cfg.estimators = vec![EstimatorKind::Grpo, EstimatorKind::G2po]; // every estimator: the CLI test
    cfg.base.rollouts_per_task = 2;
    cfg.base.policy = PolicyConfig { vocab: 256, hidden: 16, ..PolicyConfig::default() };
    let report = g2po::train::run_ablation(&cfg, |_, _| {}).unwrap();
    assert_eq!(report.runs.len(), 2 * 2);
    assert!(report.runs.iter().all(|r| r.logs.iter().all(|l| l.dropped_tasks == 0)));
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(summary.contains("| twx-coin | g2po |"), "{summary}");
    assert!(summary.contains("agentgym:http://127.0.0.1:"), "{summary}");
    assert!(out.join("twx-coin.png").exists());
    let _ = std::fs::remove_dir_all(&out);
}
