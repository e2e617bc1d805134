//! The protocol server: this crate's environments behind AgentGym's HTTP calls.

use std::collections::HashMap;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use serde_json::{Value, json};

use super::wire::{IdBody, ResetBody, StepAnswer, StepBody};
use crate::{EnvError, EnvKind, Environment, Observation, make_env_with_seed};

/// Largest request body read.
const MAX_REQUEST_BYTES: u64 = 1 << 20;

/// Limits of an [`EnvServer`].
///
/// ```
/// let c = g2po_envs::agentgym::ServerConfig::default();
/// assert_eq!((c.max_instances, c.threads), (1024, 4));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerConfig {
    /// Most instances open at once; `POST /create` beyond it answers an error.
    pub max_instances: usize,
    /// Worker threads answering requests (instances step in parallel across threads).
    pub threads: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self { max_instances: 1024, threads: 4 }
    }
}

type Factory = dyn Fn(u64) -> Box<dyn Environment> + Send + Sync;

struct Instance {
    env: Box<dyn Environment>,
    last: Option<Observation>,
    done: bool,
}

#[derive(Default)]
struct Table {
    next_id: u64,
    open: HashMap<u64, Arc<Mutex<Instance>>>,
}

struct Shared {
    name: String,
    factory: Box<Factory>,
    config: ServerConfig,
    table: Mutex<Table>,
    created: AtomicU64,
    stop: AtomicBool,
}

/// An AgentGym protocol server for in-process environments.
///
/// Each `POST /create` builds a fresh environment (the id doubles as its environment seed,
/// which only [`crate::LowOverlap`] uses); the table of open instances is guarded by one
/// lock held only to allocate, look up or free an id, while each instance has its own lock,
/// so different instances step in parallel. At most [`ServerConfig::max_instances`] are open;
/// `POST /close` frees one. Observations are served as the environment's text plus an
/// `Available actions: [...]` line (JSON strings), step answers carry the `valid` and
/// `success` extensions, `score` is the step reward (1 on success), and `data_idx` is the
/// task seed. Errors are `{"error": "..."}` with status 200 (unknown id, a finished episode,
/// the instance limit), 400 (a body that is not the call's JSON), 404 or 405.
///
/// ```
/// use g2po_envs::agentgym::{AgentGymSpec, EnvServer, ServerConfig};
/// use g2po_envs::{EnvKind, Environment};
/// let server = EnvServer::start(EnvKind::Chain, "127.0.0.1:0", ServerConfig::default()).unwrap();
/// let spec: AgentGymSpec = server.url().parse().unwrap();
/// let mut env = spec.connect();
/// let obs = env.try_reset(0).unwrap();
/// assert_eq!(obs.text, "You are at position 0 of 6.");
/// assert!(env.try_step("forward").unwrap().valid);
/// drop(env); // closes the instance
/// assert_eq!(server.open_instances(), 0);
/// server.shutdown();
/// ```
pub struct EnvServer {
    shared: Arc<Shared>,
    http: Arc<tiny_http::Server>,
    workers: Vec<JoinHandle<()>>,
    addr: SocketAddr,
}

impl std::fmt::Debug for EnvServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvServer").field("name", &self.shared.name).field("addr", &self.addr).finish_non_exhaustive()
    }
}

impl EnvServer {
    /// Serves environments of `kind` on `addr` (`"127.0.0.1:0"` picks a free port; see
    /// [`EnvServer::local_addr`]).
    pub fn start(kind: EnvKind, addr: &str, config: ServerConfig) -> Result<Self, EnvError> {
        Self::start_with(kind.as_str(), move |seed| make_env_with_seed(kind, seed), addr, config)
    }

    /// Serves environments built by `factory(instance id)` under the name `name`.
    pub fn start_with(
        name: &str,
        factory: impl Fn(u64) -> Box<dyn Environment> + Send + Sync + 'static,
        addr: &str,
        config: ServerConfig,
    ) -> Result<Self, EnvError> {
        if config.max_instances == 0 || config.threads == 0 {
            return Err(EnvError::InvalidParameter {
                name: "server config",
                reason: "max_instances and threads must be positive".into(),
            });
        }
        let http =
            tiny_http::Server::http(addr).map_err(|e| EnvError::Server(format!("cannot listen on {addr}: {e}")))?;
        let addr =
            http.server_addr().to_ip().ok_or_else(|| EnvError::Server(format!("{addr} is not an IP address")))?;
        let http = Arc::new(http);
        let shared = Arc::new(Shared {
            name: name.to_string(),
            factory: Box::new(factory),
            config,
            table: Mutex::new(Table::default()),
            created: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let workers = (0..config.threads)
            .map(|i| {
                let (http, shared) = (Arc::clone(&http), Arc::clone(&shared));
                std::thread::Builder::new()
                    .name(format!("agentgym-server-{i}"))
                    .spawn(move || worker(&http, &shared))
                    .map_err(|e| EnvError::Server(format!("cannot spawn a worker thread: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { shared, http, workers, addr })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://IP:PORT`, the base URL of the calls.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Instances open now.
    pub fn open_instances(&self) -> usize {
        lock(&self.shared.table).open.len()
    }

    /// Instances created since the start.
    pub fn created_instances(&self) -> u64 {
        self.shared.created.load(Ordering::Relaxed)
    }

    /// Blocks until the server stops (it does not by itself: this is `g2po serve-env`'s loop).
    pub fn wait(mut self) {
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }

    /// Stops answering, joins the workers and closes the listener. A client's idle
    /// keep-alive connection is left half open (no longer read), so its next call ends in
    /// its timeout rather than a reset; a killed server process resets it.
    pub fn shutdown(mut self) {
        self.stop_workers();
    }

    fn stop_workers(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for _ in 0..self.workers.len() {
            self.http.unblock();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl Drop for EnvServer {
    fn drop(&mut self) {
        self.stop_workers();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic inside one environment must not take the whole table down.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn worker(http: &tiny_http::Server, shared: &Shared) {
    while !shared.stop.load(Ordering::SeqCst) {
        let Ok(mut req) = http.recv() else {
            break;
        };
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let mut body = String::new();
        let read = req.as_reader().take(MAX_REQUEST_BYTES).read_to_string(&mut body);
        let (status, answer) = match read {
            Err(e) => (400, json!({ "error": format!("unreadable request body: {e}") })),
            Ok(_) => {
                let method = req.method().clone();
                let url = req.url().to_string();
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| route(shared, &method, &url, &body)))
                    .unwrap_or_else(|_| (500, json!({ "error": "the environment panicked" })))
            }
        };
        let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..])
            .expect("a static header is valid");
        let resp = tiny_http::Response::from_string(answer.to_string()).with_status_code(status).with_header(header);
        // The client may have given up (timeout); nothing to do about a failed reply.
        let _ = req.respond(resp);
    }
}

fn error(msg: impl Into<String>) -> (u16, Value) {
    (200, json!({ "error": msg.into() }))
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &str) -> Result<T, (u16, Value)> {
    serde_json::from_str(body).map_err(|e| (400, json!({ "error": format!("malformed request body: {e}") })))
}

fn route(shared: &Shared, method: &tiny_http::Method, url: &str, body: &str) -> (u16, Value) {
    use tiny_http::Method::{Get, Post};
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let result = match (method, path) {
        (Get, "/") => Ok((200, json!(format!("This is environment {}.", shared.name)))),
        (Post, "/create") => Ok(create(shared)),
        (Post, "/reset") => parse_body::<ResetBody>(body).map(|b| reset(shared, b)),
        (Post, "/step") => parse_body::<StepBody>(body).map(|b| step(shared, b)),
        (Get, "/observation") => Ok(observation(shared, query)),
        (Post, "/close") => parse_body::<IdBody>(body).map(|b| close(shared, b.id)),
        (_, "/" | "/create" | "/reset" | "/step" | "/observation" | "/close") => {
            Err((405, json!({ "error": format!("method {method} not allowed on {path}") })))
        }
        _ => Err((404, json!({ "error": format!("no such call: {path}") }))),
    };
    result.unwrap_or_else(|e| e)
}

fn create(shared: &Shared) -> (u16, Value) {
    let mut table = lock(&shared.table);
    if table.open.len() >= shared.config.max_instances {
        return error(format!(
            "too many instances: {} open (limit {}); close some first",
            table.open.len(),
            shared.config.max_instances
        ));
    }
    let id = table.next_id;
    table.next_id += 1;
    let env = (shared.factory)(id);
    table.open.insert(id, Arc::new(Mutex::new(Instance { env, last: None, done: false })));
    shared.created.fetch_add(1, Ordering::Relaxed);
    (200, json!({ "id": id }))
}

fn instance(shared: &Shared, id: u64) -> Result<Arc<Mutex<Instance>>, (u16, Value)> {
    lock(&shared.table).open.get(&id).cloned().ok_or_else(|| error(format!("The id {id} is not valid.")))
}

fn served_text(obs: &Observation) -> String {
    format!("{}\nAvailable actions: {}", obs.text, serde_json::to_string(&obs.admissible).expect("strings serialise"))
}

fn reset(shared: &Shared, b: ResetBody) -> (u16, Value) {
    let inst = match instance(shared, b.id) {
        Ok(i) => i,
        Err(e) => return e,
    };
    let mut inst = lock(&inst);
    let obs = inst.env.reset(b.data_idx);
    let ans = StepAnswer {
        observation: served_text(&obs),
        reward: 0.0,
        score: Some(0.0),
        done: false,
        valid: None,
        success: None,
        deleted: Some(false),
    };
    inst.last = Some(obs);
    inst.done = false;
    (200, serde_json::to_value(ans).expect("answers serialise"))
}

fn step(shared: &Shared, b: StepBody) -> (u16, Value) {
    let inst = match instance(shared, b.id) {
        Ok(i) => i,
        Err(e) => return e,
    };
    let mut inst = lock(&inst);
    if inst.last.is_none() {
        return error(format!("The id {} has not been reset.", b.id));
    }
    if inst.done {
        return error(format!("The task with environment {} has finished.", b.id));
    }
    let out = inst.env.step(&b.action);
    let ans = StepAnswer {
        observation: served_text(&out.observation),
        reward: out.reward,
        score: Some(out.reward),
        done: out.done,
        valid: Some(out.valid),
        success: Some(out.success),
        deleted: None,
    };
    inst.done = out.done;
    inst.last = Some(out.observation);
    (200, serde_json::to_value(ans).expect("answers serialise"))
}

fn observation(shared: &Shared, query: &str) -> (u16, Value) {
    let id = query.split('&').find_map(|kv| kv.strip_prefix("id=")).and_then(|v| v.parse::<u64>().ok());
    let Some(id) = id else {
        return (400, json!({ "error": "GET /observation needs ?id=N" }));
    };
    let inst = match instance(shared, id) {
        Ok(i) => i,
        Err(e) => return e,
    };
    let inst = lock(&inst);
    match &inst.last {
        Some(obs) => (200, json!({ "observation": served_text(obs) })),
        None => error(format!("The id {id} has not been reset.")),
    }
}

fn close(shared: &Shared, id: u64) -> (u16, Value) {
    (200, Value::Bool(lock(&shared.table).open.remove(&id).is_some()))
}
