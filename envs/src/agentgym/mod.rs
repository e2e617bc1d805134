//! The AgentGym environment-server protocol, both sides.
//!
//! AgentGym-RL drives every environment through one small HTTP + JSON protocol (SPEC §6):
//!
//! | call | request | answer |
//! |---|---|---|
//! | `GET /` | – | a JSON string naming the environment |
//! | `POST /create` | – | `{"id": int}` |
//! | `POST /reset` | `{"id", "data_idx"}` | `{"observation", "reward", "score", "done"}` |
//! | `POST /step` | `{"id", "action"}` | `{"observation", "reward", "score"?, "done"}` |
//! | `GET /observation?id=N` | – | `{"observation"}` (or the bare string) |
//! | `POST /close` | `{"id"}` | `true` / `false` |
//!
//! Errors come back as `{"error": "..."}`, usually with HTTP status 200. Each server keeps its
//! instances in a table keyed by an integer id. The admissible actions, where a server offers
//! them, sit in the observation text on an `Available actions: [...]` line (AgentGym's BabyAI
//! and ALFWorld servers do this); [`canon::split_actions`] parses them back out.
//!
//! This module has
//! - [`AgentGymEnv`], a client that implements [`crate::Environment`] over the protocol, with
//!   connect and request timeouts, every failure a typed [`ProtocolError`] naming the call, and
//!   a [`Canonicaliser`] that rewrites the server's text into the state text the estimators
//!   hash (move counters, goal-on-the-first-turn-only and action feedback otherwise make no
//!   state repeat);
//! - [`EnvServer`], a server for this crate's own environments, so AgentGym's Python clients
//!   can run them (`g2po serve-env --env household --port 36001`);
//! - [`ServerProcess`], which starts a server program (the Python server in `envs/servers/`,
//!   or `g2po serve-env`) on a free loopback port, waits until it answers and stops it when
//!   dropped: the fixture of the tests, benchmarks and the ablation.
//!
//! Extensions (optional answer fields a stock AgentGym client ignores): `"valid"` (the action
//! was admissible) and `"success"` (the episode ended in success). Without them the client
//! takes an action as valid when it was in the last admissible list, and an episode as won
//! when it ends with `score >= success_score` (1 by default).
//!
//! Crates: the client uses `ureq` (a small blocking HTTP/1.1 client with connect and global
//! timeouts; built without TLS, since environment servers are plain HTTP on the local
//! machine), the server `tiny_http` (a blocking HTTP/1.1 server whose listener several worker
//! threads can share; no async runtime). Neither reaches the engine-alone build of `g2po`.

pub mod canon;
mod client;
mod process;
mod server;
mod wire;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

pub use canon::{CanonState, Canonicaliser, split_actions};
pub use client::AgentGymEnv;
pub use process::{LISTENING, ServerProcess, find_env_python, python_server_script};
pub use server::{EnvServer, ServerConfig};

/// Which protocol call failed.
///
/// ```
/// assert_eq!(g2po_envs::agentgym::Call::Step.to_string(), "POST /step");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Call {
    /// `GET /`.
    Hello,
    /// `POST /create`.
    Create,
    /// `POST /reset`.
    Reset,
    /// `POST /step`.
    Step,
    /// `GET /observation`.
    Observation,
    /// `POST /close`.
    Close,
}

impl Call {
    /// The request line of the call (method and path).
    ///
    /// ```
    /// assert_eq!(g2po_envs::agentgym::Call::Create.as_str(), "POST /create");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Call::Hello => "GET /",
            Call::Create => "POST /create",
            Call::Reset => "POST /reset",
            Call::Step => "POST /step",
            Call::Observation => "GET /observation",
            Call::Close => "POST /close",
        }
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What went wrong in a protocol call.
///
/// ```
/// use g2po_envs::agentgym::ProtocolErrorKind;
/// assert!(ProtocolErrorKind::Timeout.is_transport());
/// assert!(!ProtocolErrorKind::Server("The id 3 is not valid.".into()).is_transport());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolErrorKind {
    /// No connection could be made (nothing listening, refused, unreachable).
    Connect(String),
    /// The server did not answer within the connect or request timeout.
    Timeout,
    /// The connection broke while the request or answer was under way.
    Transport(String),
    /// An HTTP status other than 200 without an `{"error"}` body.
    Status(u16),
    /// The server answered `{"error": "..."}`.
    Server(String),
    /// The answer is not the JSON the call expects.
    Malformed(String),
    /// The observation offers no admissible action (the client needs at least one).
    NoActions,
}

impl ProtocolErrorKind {
    /// Whether the server itself is unreachable or unresponsive (as opposed to answering
    /// something wrong): after such an error the client does not try to close the instance.
    ///
    /// ```
    /// assert!(g2po_envs::agentgym::ProtocolErrorKind::Connect("refused".into()).is_transport());
    /// ```
    pub fn is_transport(&self) -> bool {
        matches!(self, Self::Connect(_) | Self::Timeout | Self::Transport(_))
    }
}

impl fmt::Display for ProtocolErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "cannot connect: {e}"),
            Self::Timeout => f.write_str("no answer within the timeout"),
            Self::Transport(e) => write!(f, "connection failed: {e}"),
            Self::Status(s) => write!(f, "HTTP status {s}"),
            Self::Server(e) => write!(f, "the server answered error: {e}"),
            Self::Malformed(e) => write!(f, "malformed answer: {e}"),
            Self::NoActions => f.write_str("the observation lists no admissible action"),
        }
    }
}

/// A failed protocol call: which call, to which server, and what went wrong.
///
/// ```
/// use g2po_envs::agentgym::{Call, ProtocolError, ProtocolErrorKind};
/// let e = ProtocolError { call: Call::Step, url: "http://127.0.0.1:1".into(), kind: ProtocolErrorKind::Timeout };
/// assert_eq!(e.to_string(), "agentgym POST /step at http://127.0.0.1:1: no answer within the timeout");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("agentgym {call} at {url}: {kind}")]
pub struct ProtocolError {
    /// The call.
    pub call: Call,
    /// The server's base URL.
    pub url: String,
    /// What went wrong.
    pub kind: ProtocolErrorKind,
}

/// Default connect timeout.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default timeout of a whole request (connect, send, answer).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Where an AgentGym environment lives and how to talk to it.
///
/// Spelling: `http://HOST:PORT[/PATH][?OPTION=VALUE&...]`; the calls go to `BASE/create`,
/// `BASE/step`, ... where `BASE` is the URL without its options (AgentGym's own servers
/// answer at the root; the Python server in `envs/servers/` serves several games under
/// paths such as `/textworld-express/coin`). Options:
/// - `canon=raw|basic|textworld-express|babyai`: the [`Canonicaliser`] (default: inferred
///   from the path, [`Canonicaliser::infer`]);
/// - `timeout=SECONDS`, `connect_timeout=SECONDS`: request and connect timeouts (defaults
///   [`DEFAULT_REQUEST_TIMEOUT`], [`DEFAULT_CONNECT_TIMEOUT`]);
/// - `success_score=X`: an episode that ends with `score >= X` is a success when the server
///   does not say (default 1).
///
/// Only `http://` is supported: environment servers run on the local machine.
///
/// ```
/// use g2po_envs::agentgym::{AgentGymSpec, Canonicaliser};
/// let s: AgentGymSpec = "http://127.0.0.1:36001/textworld-express/coin?timeout=5".parse().unwrap();
/// assert_eq!(s.base_url(), "http://127.0.0.1:36001/textworld-express/coin");
/// assert_eq!(s.canonicaliser(), Canonicaliser::TextWorldExpress);
/// assert_eq!(s.request_timeout().as_secs(), 5);
/// assert_eq!(s.to_string(), "http://127.0.0.1:36001/textworld-express/coin?timeout=5");
/// assert!("https://example.org".parse::<AgentGymSpec>().is_err());
/// ```
#[derive(Clone)]
pub struct AgentGymSpec {
    text: String,
    base: String,
    canon: Canonicaliser,
    connect_timeout: Duration,
    request_timeout: Duration,
    success_score: f64,
    agent: ureq::Agent,
}

impl AgentGymSpec {
    /// The base URL the calls are appended to.
    pub fn base_url(&self) -> &str {
        &self.base
    }
    /// The canonicaliser of the observations.
    pub fn canonicaliser(&self) -> Canonicaliser {
        self.canon
    }
    /// The connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }
    /// The timeout of one whole request.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }
    /// The score at or above which a finished episode counts as a success.
    pub fn success_score(&self) -> f64 {
        self.success_score
    }
    /// The same spec with another canonicaliser (e.g. [`Canonicaliser::Raw`] to see the
    /// server's text unchanged).
    ///
    /// ```
    /// use g2po_envs::agentgym::{AgentGymSpec, Canonicaliser};
    /// let s: AgentGymSpec = "http://127.0.0.1:9/babyai".parse().unwrap();
    /// assert_eq!(s.with_canonicaliser(Canonicaliser::Raw).canonicaliser(), Canonicaliser::Raw);
    /// ```
    pub fn with_canonicaliser(&self, canon: Canonicaliser) -> Self {
        let mut s = self.clone();
        s.canon = canon;
        s.text = s.render();
        s
    }
    /// A client for one environment instance (no request is sent until the first reset).
    pub fn connect(&self) -> AgentGymEnv {
        AgentGymEnv::new(self.clone())
    }
    /// The HTTP agent shared by every client of this spec (one connection pool).
    pub(crate) fn agent(&self) -> &ureq::Agent {
        &self.agent
    }

    fn render(&self) -> String {
        let mut opts = Vec::new();
        if self.canon != Canonicaliser::infer(&self.base) {
            opts.push(format!("canon={}", self.canon));
        }
        if self.request_timeout != DEFAULT_REQUEST_TIMEOUT {
            opts.push(format!("timeout={}", self.request_timeout.as_secs_f64()));
        }
        if self.connect_timeout != DEFAULT_CONNECT_TIMEOUT {
            opts.push(format!("connect_timeout={}", self.connect_timeout.as_secs_f64()));
        }
        if self.success_score != 1.0 {
            opts.push(format!("success_score={}", self.success_score));
        }
        if opts.is_empty() { self.base.clone() } else { format!("{}?{}", self.base, opts.join("&")) }
    }
}

fn build_agent(connect: Duration, request: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_connect(Some(connect))
        .timeout_global(Some(request))
        // Statuses are read by the client itself: AgentGym servers put errors in the body.
        .http_status_as_error(false)
        .max_idle_connections_per_host(64)
        .build()
        .into()
}

impl FromStr for AgentGymSpec {
    type Err = crate::EnvError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason: String| crate::EnvError::InvalidSpec { spec: s.to_string(), reason };
        let (base, query) = s.split_once('?').unwrap_or((s, ""));
        let rest = base.strip_prefix("http://").ok_or_else(|| {
            bad("the URL must start with http:// (environment servers are plain HTTP on this machine)".into())
        })?;
        let host = rest.split('/').next().unwrap_or("");
        if host.is_empty() {
            return Err(bad("the URL has no host".into()));
        }
        let base = base.trim_end_matches('/').to_string();
        let mut spec = AgentGymSpec {
            text: String::new(),
            canon: Canonicaliser::infer(&base),
            base,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            success_score: 1.0,
            agent: build_agent(DEFAULT_CONNECT_TIMEOUT, DEFAULT_REQUEST_TIMEOUT),
        };
        let seconds = |key: &str, v: &str| -> Result<Duration, crate::EnvError> {
            v.parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x > 0.0 && *x < 1e6)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| bad(format!("{key} must be a positive number of seconds, got {v:?}")))
        };
        for opt in query.split('&').filter(|o| !o.is_empty()) {
            let (key, value) = opt.split_once('=').ok_or_else(|| bad(format!("option {opt:?} has no value")))?;
            match key {
                "canon" => spec.canon = value.parse().map_err(|e: String| bad(e))?,
                "timeout" => spec.request_timeout = seconds(key, value)?,
                "connect_timeout" => spec.connect_timeout = seconds(key, value)?,
                "success_score" => {
                    spec.success_score = value
                        .parse::<f64>()
                        .ok()
                        .filter(|x| x.is_finite())
                        .ok_or_else(|| bad(format!("success_score must be a finite number, got {value:?}")))?
                }
                other => {
                    return Err(bad(format!(
                        "unknown option {other:?} (expected canon, timeout, connect_timeout or success_score)"
                    )));
                }
            }
        }
        spec.agent = build_agent(spec.connect_timeout, spec.request_timeout);
        spec.text = spec.render();
        Ok(spec)
    }
}

impl fmt::Display for AgentGymSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for AgentGymSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AgentGymSpec({:?})", self.text)
    }
}

/// Two specs are equal when they spell the same server and options (the HTTP agent is a
/// connection pool, not part of the identity).
impl PartialEq for AgentGymSpec {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl serde::Serialize for AgentGymSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> serde::Deserialize<'de> for AgentGymSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_options_roundtrip_and_errors() {
        let s: AgentGymSpec =
            "http://127.0.0.1:5/x/?canon=raw&timeout=2.5&connect_timeout=1&success_score=0.5".parse().unwrap();
        assert_eq!(s.base_url(), "http://127.0.0.1:5/x");
        assert_eq!(s.canonicaliser(), Canonicaliser::Raw);
        assert_eq!(s.request_timeout(), Duration::from_millis(2500));
        assert_eq!(s.connect_timeout(), Duration::from_secs(1));
        assert_eq!(s.success_score(), 0.5);
        let again: AgentGymSpec = s.to_string().parse().unwrap();
        assert_eq!(again, s);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<AgentGymSpec>(&json).unwrap(), s);
        for bad in [
            "127.0.0.1:5",
            "http://",
            "http://h?timeout=0",
            "http://h?timeout=abc",
            "http://h?canon=fancy",
            "http://h?colour=blue",
            "http://h?timeout",
            "http://h?success_score=nan",
        ] {
            assert!(matches!(bad.parse::<AgentGymSpec>(), Err(crate::EnvError::InvalidSpec { .. })), "{bad}");
        }
    }
}
