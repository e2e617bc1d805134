//! The protocol client: one remote environment instance behind [`crate::Environment`].

use std::io::ErrorKind;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::canon::CanonState;
use super::wire::{Created, IdBody, ResetBody, StepAnswer, StepBody};
use super::{AgentGymSpec, Call, ProtocolError, ProtocolErrorKind};
use crate::{EnvError, Environment, Observation, StepOutcome, fnv1a64};

/// Largest answer body read (a guard against a garbled server streaming forever).
const MAX_BODY_BYTES: u64 = 16 << 20;

/// One environment instance on an AgentGym server.
///
/// The instance is created on the server at the first reset (`POST /create`), reset for
/// every task (`POST /reset` with `data_idx` = the task seed), stepped, and closed when the
/// client is dropped (`POST /close`) unless the server has stopped answering. Every failure
/// is an [`EnvError::Protocol`] naming the call; use [`Environment::try_reset`] and
/// [`Environment::try_step`], since the infallible forms panic on such a failure.
///
/// Observations: the server's text goes through the spec's [`super::Canonicaliser`]; the
/// admissible actions come from the text's `Available actions:` line; the `key` is the
/// FNV-1a hash of the canonical text and the actions (the protocol does not expose the true
/// state, so two states that read the same share a key). The raw text of the last answer is
/// [`AgentGymEnv::raw_observation`].
///
/// ```no_run
/// use g2po_envs::Environment;
/// use g2po_envs::agentgym::AgentGymSpec;
/// let spec: AgentGymSpec = "http://127.0.0.1:36001".parse().unwrap();
/// let mut env = spec.connect();
/// let obs = env.try_reset(0).unwrap();
/// let out = env.try_step(&obs.admissible[0]).unwrap();
/// println!("{} -> {}", obs.text, out.observation.text);
/// ```
pub struct AgentGymEnv {
    spec: AgentGymSpec,
    name: String,
    id: Option<u64>,
    /// A transport failure happened: the server is gone or hanging, so do not close on drop.
    broken: bool,
    canon: CanonState,
    raw: String,
    last: Option<Observation>,
    done: bool,
    success: bool,
}

impl std::fmt::Debug for AgentGymEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentGymEnv").field("spec", &self.spec).field("id", &self.id).finish_non_exhaustive()
    }
}

impl AgentGymEnv {
    /// A client for `spec` (no request is sent yet).
    pub fn new(spec: AgentGymSpec) -> Self {
        let name = format!("agentgym:{}", spec.base_url());
        Self {
            spec,
            name,
            id: None,
            broken: false,
            canon: CanonState::default(),
            raw: String::new(),
            last: None,
            done: false,
            success: false,
        }
    }

    /// The spec this client talks to.
    pub fn spec(&self) -> &AgentGymSpec {
        &self.spec
    }

    /// The server's instance id (`None` before the first reset or after close).
    pub fn id(&self) -> Option<u64> {
        self.id
    }

    /// The server's text of the last reset or step, before canonicalisation.
    pub fn raw_observation(&self) -> &str {
        &self.raw
    }

    /// `GET /`: the server's greeting (e.g. `"This is environment BabyAI."`).
    pub fn hello(&self) -> Result<String, EnvError> {
        let v = self.call(Call::Hello, "", None::<&()>)?;
        match v {
            Value::String(s) => Ok(s),
            other => Ok(other.to_string()),
        }
    }

    /// `POST /create`: allocates a server instance (done by the first reset if not before).
    pub fn create(&mut self) -> Result<u64, EnvError> {
        let v = self.call(Call::Create, "/create", Some(&Value::Null))?;
        let created: Created = self.parse(Call::Create, v)?;
        self.id = Some(created.id);
        Ok(created.id)
    }

    /// `GET /observation?id=N`: the server's current text (raw, not canonicalised).
    pub fn observation(&self) -> Result<String, EnvError> {
        let id = self.require_id(Call::Observation)?;
        match self.call(Call::Observation, &format!("/observation?id={id}"), None::<&()>)? {
            Value::String(s) => Ok(s),
            Value::Object(m) => match m.get("observation") {
                Some(Value::String(s)) => Ok(s.clone()),
                _ => Err(self.err(Call::Observation, ProtocolErrorKind::Malformed("no \"observation\" string".into()))),
            },
            other => Err(self.err(Call::Observation, ProtocolErrorKind::Malformed(format!("unexpected {other}")))),
        }
    }

    /// `POST /close`: frees the server instance. Closing twice, or before creating, is a no-op.
    pub fn close(&mut self) -> Result<(), EnvError> {
        let Some(id) = self.id.take() else {
            return Ok(());
        };
        match self.call(Call::Close, "/close", Some(&IdBody { id }))? {
            Value::Bool(true) => Ok(()),
            Value::Bool(false) => {
                Err(self.err(Call::Close, ProtocolErrorKind::Server(format!("the server did not close instance {id}"))))
            }
            // Some servers answer an object; anything but an error counts as closed.
            _ => Ok(()),
        }
    }

    fn require_id(&self, call: Call) -> Result<u64, EnvError> {
        self.id.ok_or_else(|| EnvError::InvalidParameter {
            name: "id",
            reason: format!("{call} before the instance was created (reset first)"),
        })
    }

    fn err(&self, call: Call, kind: ProtocolErrorKind) -> EnvError {
        EnvError::Protocol(ProtocolError { call, url: self.spec.base_url().to_string(), kind })
    }

    fn parse<T: DeserializeOwned>(&self, call: Call, v: Value) -> Result<T, EnvError> {
        serde_json::from_value(v).map_err(|e| self.err(call, ProtocolErrorKind::Malformed(e.to_string())))
    }

    /// One request: `body` `None` is a GET, else a POST of the JSON body (`null`: no body).
    fn call<B: Serialize>(&self, call: Call, path: &str, body: Option<&B>) -> Result<Value, EnvError> {
        let url = format!("{}{}", self.spec.base_url(), path);
        let agent = self.spec.agent();
        let sent = match body {
            None => agent.get(&url).call(),
            Some(b) => {
                let json = serde_json::to_value(b).expect("protocol bodies serialise");
                if json.is_null() { agent.post(&url).send_empty() } else { agent.post(&url).send_json(&json) }
            }
        };
        let mut resp = sent.map_err(|e| self.err(call, classify(e, true)))?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(MAX_BODY_BYTES)
            .read_to_string()
            .map_err(|e| self.err(call, classify(e, false)))?;
        let value: Option<Value> = serde_json::from_str(&text).ok();
        if let Some(Value::Object(m)) = &value
            && let Some(e) = m.get("error")
        {
            let msg = match e {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            return Err(self.err(call, ProtocolErrorKind::Server(msg)));
        }
        if status != 200 {
            return Err(self.err(call, ProtocolErrorKind::Status(status)));
        }
        value.ok_or_else(|| {
            let head: String = text.chars().take(80).collect();
            self.err(call, ProtocolErrorKind::Malformed(format!("not JSON: {head:?}")))
        })
    }

    /// Marks the client broken after a transport failure (see [`Drop`]).
    fn track<T>(&mut self, r: Result<T, EnvError>) -> Result<T, EnvError> {
        if let Err(EnvError::Protocol(p)) = &r
            && p.kind.is_transport()
        {
            self.broken = true;
        }
        r
    }

    fn observe(&mut self, call: Call, raw: String, terminal: bool) -> Result<Observation, EnvError> {
        let (text, admissible) = self.spec.canonicaliser().apply(&mut self.canon, &raw);
        self.raw = raw;
        if admissible.is_empty() && !terminal {
            return Err(self.err(call, ProtocolErrorKind::NoActions));
        }
        let mut bytes = text.clone().into_bytes();
        for a in &admissible {
            bytes.push(0x1f);
            bytes.extend_from_slice(a.as_bytes());
        }
        Ok(Observation { key: fnv1a64(&bytes), text, admissible })
    }

    fn reset_inner(&mut self, task_seed: u64) -> Result<Observation, EnvError> {
        let id = match self.id {
            Some(id) => id,
            None => self.create()?,
        };
        let v = self.call(Call::Reset, "/reset", Some(&ResetBody { id, data_idx: task_seed }))?;
        let ans: StepAnswer = self.parse(Call::Reset, v)?;
        self.canon = CanonState::default();
        self.last = None;
        let obs = self.observe(Call::Reset, ans.observation, false)?;
        self.done = false;
        self.success = false;
        self.last = Some(obs.clone());
        Ok(obs)
    }

    fn step_inner(&mut self, action: &str) -> Result<StepOutcome, EnvError> {
        let Some(last) = &self.last else {
            return Err(EnvError::InvalidParameter { name: "action", reason: "step before a successful reset".into() });
        };
        if self.done {
            return Ok(StepOutcome {
                observation: last.clone(),
                reward: 0.0,
                done: true,
                valid: false,
                success: self.success,
            });
        }
        let admissible_before = last.admissible.contains(&action.to_string());
        let id = self.require_id(Call::Step)?;
        let v = self.call(Call::Step, "/step", Some(&StepBody { id, action: action.to_string() }))?;
        let ans: StepAnswer = self.parse(Call::Step, v)?;
        let reward = ans.score.unwrap_or(ans.reward);
        if !reward.is_finite() {
            return Err(self.err(Call::Step, ProtocolErrorKind::Malformed(format!("non-finite score {reward}"))));
        }
        let success = ans.success.unwrap_or(ans.done && reward >= self.spec.success_score());
        let valid = ans.valid.unwrap_or(admissible_before);
        let observation = self.observe(Call::Step, ans.observation, ans.done)?;
        self.done = ans.done;
        self.success = ans.done && success;
        self.last = Some(observation.clone());
        Ok(StepOutcome { observation, reward, done: ans.done, valid, success: self.success })
    }
}

/// Maps a transport error; `sending` is true while the request was being made (a refused
/// connection then means nothing listens), false while the answer body was read.
fn classify(e: ureq::Error, sending: bool) -> ProtocolErrorKind {
    match e {
        ureq::Error::Timeout(_) => ProtocolErrorKind::Timeout,
        ureq::Error::HostNotFound => ProtocolErrorKind::Connect("host not found".into()),
        ureq::Error::ConnectionFailed => ProtocolErrorKind::Connect("connection failed".into()),
        ureq::Error::Io(io) => match io.kind() {
            ErrorKind::TimedOut | ErrorKind::WouldBlock => ProtocolErrorKind::Timeout,
            ErrorKind::ConnectionRefused | ErrorKind::AddrNotAvailable if sending => {
                ProtocolErrorKind::Connect(io.to_string())
            }
            _ => ProtocolErrorKind::Transport(io.to_string()),
        },
        ureq::Error::BodyExceedsLimit(n) => ProtocolErrorKind::Malformed(format!("answer longer than {n} bytes")),
        ureq::Error::Protocol(p) => ProtocolErrorKind::Malformed(format!("not HTTP: {p}")),
        other => ProtocolErrorKind::Transport(other.to_string()),
    }
}

impl Environment for AgentGymEnv {
    fn name(&self) -> &str {
        &self.name
    }

    /// # Panics
    /// When the server fails (use [`Environment::try_reset`]).
    fn reset(&mut self, task_seed: u64) -> Observation {
        self.try_reset(task_seed).unwrap_or_else(|e| panic!("AgentGymEnv::reset: {e} (use try_reset)"))
    }

    /// # Panics
    /// When the server fails (use [`Environment::try_step`]).
    fn step(&mut self, action: &str) -> StepOutcome {
        self.try_step(action).unwrap_or_else(|e| panic!("AgentGymEnv::step: {e} (use try_step)"))
    }

    fn try_reset(&mut self, task_seed: u64) -> Result<Observation, EnvError> {
        let r = self.reset_inner(task_seed);
        self.track(r)
    }

    fn try_step(&mut self, action: &str) -> Result<StepOutcome, EnvError> {
        let r = self.step_inner(action);
        self.track(r)
    }
}

impl Drop for AgentGymEnv {
    fn drop(&mut self) {
        // Best effort: a server that stopped answering would only make the drop wait for
        // the timeout, and a leaked instance is the server's bound to enforce.
        if !self.broken {
            let _ = self.close();
        }
    }
}
