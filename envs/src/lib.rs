//! Environments for g2po experiments.
//!
//! Every environment speaks one small, object-safe protocol ([`Environment`]):
//! `reset(task_seed)` starts the task drawn from `task_seed`, `step(text)` applies an
//! action given as text. This is the shape an LLM agent sees (text in, text out), and it
//! is also enough for the graph estimators, because every [`Observation`] carries, next to
//! the text, an exact 64-bit `key` of the *true* underlying state. Estimators can thus be
//! run on exact states (key) or on what the model sees (text) and the two compared.
//!
//! Design rules shared by all environments (and why):
//! - **Deterministic.** The same construction, task seed and action sequence always give the
//!   same outcomes; all randomness comes from `rand_chacha::ChaCha8Rng` seeded explicitly.
//! - **Sparse reward.** `reward` is 1.0 on the successful step and 0 otherwise, matching the
//!   peers' 10/0 episode reward up to the trainer's rescaling.
//! - **No horizon inside.** The turn cap belongs to the trainer (it is a curriculum knob, see
//!   SPEC §5), so environments never truncate by themselves.
//! - **Invalid actions change nothing.** A text outside `admissible` returns `valid = false` and
//!   leaves the state (and its key) unchanged, so the estimators see a self-loop plus the
//!   invalid-action penalty, as in SPEC §2–3.
//!
//! The environments (SPEC §6):
//! - [`chain::Chain`] — states `0..=n`, `forward`/`stay`; the simplest sparse-reward MDP.
//! - [`lost_robot::LostRobot`] — a 10×10 grid with a wall and a gap: a short direct route and a
//!   long way around, so a short horizon separates them.
//! - [`household::Household`] — an ALFWorld-like text world with rooms, receptacles, objects,
//!   heat/cool/clean and place tasks; states repeat across rollouts.
//! - [`low_overlap::LowOverlap`] — an AppWorld-like API-call task whose observations carry
//!   fresh noise at every step, so states never repeat.
//!
//! Remote environments speak the AgentGym environment-server protocol ([`agentgym`]): a
//! client ([`agentgym::AgentGymEnv`]) that implements [`Environment`] over HTTP, and a
//! server ([`agentgym::EnvServer`]) that serves any of the environments above to AgentGym's
//! Python clients. [`EnvSpec`] names either kind (`household`, `agentgym:http://...`).
//!
//! The two tabular environments also implement [`tabular::Tabular`], from which
//! [`tabular::solve`] computes the exact finite-horizon values G2PO's node values estimate.
//!
//! ```
//! use g2po_envs::{make_env, EnvKind};
//! let mut env = make_env("chain".parse::<EnvKind>().unwrap());
//! let obs = env.reset(7);
//! assert_eq!(obs.text, "You are at position 0 of 6.");
//! let out = env.step("forward");
//! assert!(out.valid && !out.done);
//! ```

#![warn(missing_docs)]

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub mod agentgym;
pub mod chain;
pub mod household;
pub mod lost_robot;
pub mod low_overlap;
pub mod spec;
pub mod tabular;

pub use chain::Chain;
pub use household::{Household, TaskType};
pub use lost_robot::LostRobot;
pub use low_overlap::LowOverlap;
pub use spec::EnvSpec;
pub use tabular::{GroundTruth, Tabular, solve};

/// What the agent sees before acting.
///
/// `text` is the model's view; `key` is an exact key of the true underlying state (equal keys
/// ⇔ equal states within one environment and task); `admissible` lists the action texts that
/// are valid in this state.
///
/// ```
/// use g2po_envs::{Chain, Environment};
/// let mut env = Chain::new(3).unwrap();
/// let obs = env.reset(0);
/// assert_eq!(obs.key, 0);
/// assert_eq!(obs.admissible, vec!["forward".to_string(), "stay".to_string()]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observation {
    /// The text an LLM agent would read.
    pub text: String,
    /// Exact 64-bit key of the true state (see each environment for its encoding).
    pub key: u64,
    /// Action texts that are valid now; anything else is an invalid action.
    pub admissible: Vec<String>,
}

/// The result of one [`Environment::step`].
///
/// ```
/// use g2po_envs::{Chain, Environment};
/// let mut env = Chain::new(1).unwrap();
/// env.reset(0);
/// let out = env.step("forward");
/// assert_eq!((out.reward, out.done, out.valid, out.success), (1.0, true, true, true));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepOutcome {
    /// Observation after the action.
    pub observation: Observation,
    /// 1.0 on the step that reaches success, otherwise 0.
    pub reward: f64,
    /// The episode is over (success, or an irrecoverable failure).
    pub done: bool,
    /// The action was admissible; an invalid action leaves the state unchanged.
    pub valid: bool,
    /// The goal holds after this step.
    pub success: bool,
}

/// A text environment: deterministic given its construction and the task seed.
///
/// Object safe and `Send`, so a trainer can hold `Box<dyn Environment>` per worker.
/// After a step that returned `done`, further steps are invalid (`valid = false`,
/// state unchanged) until the next `reset`.
///
/// ```
/// use g2po_envs::{make_env, EnvKind, Environment};
/// let mut env: Box<dyn Environment> = make_env(EnvKind::LostRobot);
/// let obs = env.reset(0);
/// let out = env.step("dance");
/// assert!(!out.valid);
/// assert_eq!(out.observation.key, obs.key);
/// ```
pub trait Environment: Send {
    /// Short name of the environment (as in [`EnvKind`]'s `Display`).
    fn name(&self) -> &str;
    /// Starts the task identified by `task_seed` (layout/goal drawn from it) and returns the first observation.
    fn reset(&mut self, task_seed: u64) -> Observation;
    /// Applies an action given as text. A text that is not admissible is an invalid action: state unchanged, valid=false (text world: observation "Nothing happens.").
    fn step(&mut self, action: &str) -> StepOutcome;

    /// [`Environment::reset`] for environments that can fail (a remote server that is down,
    /// slow or garbled, see [`agentgym`]). In-process environments never fail, so the default
    /// forwards to `reset`; callers that may hold a remote environment use this form.
    ///
    /// ```
    /// use g2po_envs::{Chain, Environment};
    /// let mut env = Chain::new(2).unwrap();
    /// assert_eq!(env.try_reset(0).unwrap(), env.reset(0));
    /// ```
    fn try_reset(&mut self, task_seed: u64) -> Result<Observation, EnvError> {
        Ok(self.reset(task_seed))
    }

    /// [`Environment::step`] for environments that can fail; see [`Environment::try_reset`].
    ///
    /// ```
    /// use g2po_envs::{Chain, Environment};
    /// let mut env = Chain::new(1).unwrap();
    /// env.reset(0);
    /// assert!(env.try_step("forward").unwrap().success);
    /// ```
    fn try_step(&mut self, action: &str) -> Result<StepOutcome, EnvError> {
        Ok(self.step(action))
    }
}

/// Errors of this crate: bad parameters, bad maps, bad policies, bad look-ups.
///
/// ```
/// use g2po_envs::{EnvError, EnvKind};
/// let err = "maze".parse::<EnvKind>().unwrap_err();
/// assert_eq!(err, EnvError::UnknownEnv("maze".into()));
/// ```
#[derive(Debug, Clone, PartialEq, Error)]
pub enum EnvError {
    /// The name does not denote an environment kind.
    // Listed from `EnvKind::ALL`, so a new environment cannot be left out.
    #[error("unknown environment {0:?} (expected one of: {names})", names = EnvKind::ALL.map(EnvKind::as_str).join(", "))]
    UnknownEnv(String),
    /// A constructor parameter is out of range.
    #[error("invalid parameter {name}: {reason}")]
    InvalidParameter {
        /// Parameter name.
        name: &'static str,
        /// Why it was rejected.
        reason: String,
    },
    /// A grid map could not be parsed or is unusable.
    #[error("invalid map: {0}")]
    InvalidMap(String),
    /// A policy returned something that is not a distribution over the state's actions.
    #[error("invalid policy at state {state}: {reason}")]
    InvalidPolicy {
        /// State index where the policy was evaluated.
        state: usize,
        /// What was wrong.
        reason: String,
    },
    /// The discount is not in (0, 1] or a value is not finite.
    #[error("invalid solver argument: {0}")]
    InvalidSolverArgument(String),
    /// No state of the solved environment has this key.
    #[error("unknown state key {0}")]
    UnknownKey(u64),
    /// `turns_left` exceeds the solved horizon.
    #[error("turns left {turns_left} exceeds the solved horizon {horizon}")]
    TurnsLeftOutOfRange {
        /// Requested turns left.
        turns_left: usize,
        /// Horizon the ground truth was solved for.
        horizon: usize,
    },
    /// The action text is not one of the state's actions.
    #[error("action {action:?} is not available in state {state}")]
    UnknownAction {
        /// The action text.
        action: String,
        /// State index.
        state: usize,
    },
    /// A call to an AgentGym environment server failed (see [`agentgym::ProtocolError`]).
    #[error(transparent)]
    Protocol(#[from] agentgym::ProtocolError),
    /// An environment specification (`chain`, `agentgym:http://...`) could not be parsed.
    #[error("invalid environment spec {spec:?}: {reason}")]
    InvalidSpec {
        /// The spec as given.
        spec: String,
        /// What was wrong.
        reason: String,
    },
    /// The environment server could not be started or bound.
    #[error("environment server: {0}")]
    Server(String),
}

/// The environments this crate provides, by name.
///
/// Names: `chain`, `lost-robot`, `household`, `household-small`, `low-overlap`.
///
/// ```
/// use g2po_envs::EnvKind;
/// let k: EnvKind = "low-overlap".parse().unwrap();
/// assert_eq!(k, EnvKind::LowOverlap);
/// assert_eq!(k.to_string(), "low-overlap");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")] // same names as Display/FromStr
pub enum EnvKind {
    /// [`Chain`].
    Chain,
    /// [`LostRobot`].
    LostRobot,
    /// [`Household`].
    Household,
    /// The smaller [`Household::small`] world (the estimator ablation's household setting).
    HouseholdSmall,
    /// [`LowOverlap`].
    LowOverlap,
}

impl EnvKind {
    /// All kinds, in a fixed order.
    ///
    /// ```
    /// assert_eq!(g2po_envs::EnvKind::ALL.len(), 5);
    /// ```
    pub const ALL: [EnvKind; 5] =
        [EnvKind::Chain, EnvKind::LostRobot, EnvKind::Household, EnvKind::HouseholdSmall, EnvKind::LowOverlap];

    /// The canonical name (what `Display` prints and `FromStr` accepts).
    ///
    /// ```
    /// assert_eq!(g2po_envs::EnvKind::LostRobot.as_str(), "lost-robot");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            EnvKind::Chain => "chain",
            EnvKind::LostRobot => "lost-robot",
            EnvKind::Household => "household",
            EnvKind::HouseholdSmall => "household-small",
            EnvKind::LowOverlap => "low-overlap",
        }
    }
}

impl fmt::Display for EnvKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EnvKind {
    type Err = EnvError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EnvKind::ALL.into_iter().find(|k| k.as_str() == s).ok_or_else(|| EnvError::UnknownEnv(s.to_string()))
    }
}

/// Builds an environment of `kind` with default sizes.
///
/// Defaults: chain `n = 6`; the standard lost-robot map; household with 4 objects;
/// household-small as [`Household::small`];
/// low-overlap with noise seed 0. The low-overlap noise stream advances with every reset
/// and step, so rollouts run one after another on one instance never repeat; several
/// instances run side by side should get distinct seeds via [`make_env_with_seed`].
///
/// ```
/// use g2po_envs::{make_env, EnvKind};
/// for kind in EnvKind::ALL {
///     assert_eq!(make_env(kind).name(), kind.as_str());
/// }
/// ```
pub fn make_env(kind: EnvKind) -> Box<dyn Environment> {
    make_env_with_seed(kind, 0)
}

/// Like [`make_env`], with a seed for the environment's own randomness.
///
/// Only [`LowOverlap`] has randomness beyond the task seed (its per-step noise); for the
/// other kinds the seed is ignored, since their observations must depend on the state only.
///
/// ```
/// use g2po_envs::{make_env_with_seed, EnvKind};
/// let mut a = make_env_with_seed(EnvKind::LowOverlap, 1);
/// let mut b = make_env_with_seed(EnvKind::LowOverlap, 2);
/// assert_ne!(a.reset(5).text, b.reset(5).text);
/// ```
pub fn make_env_with_seed(kind: EnvKind, env_seed: u64) -> Box<dyn Environment> {
    match kind {
        EnvKind::Chain => Box::new(Chain::default()),
        EnvKind::LostRobot => Box::new(LostRobot::default()),
        EnvKind::Household => Box::new(Household::default()),
        EnvKind::HouseholdSmall => Box::new(Household::small()),
        EnvKind::LowOverlap => Box::new(LowOverlap::with_seed(env_seed)),
    }
}

/// The exact tabular model of `kind`, with the same default sizes as [`make_env`], for
/// computing ground truth with [`solve`]; `None` for the text worlds, which are not tabular.
///
/// ```
/// use g2po_envs::{make_tabular, EnvKind};
/// assert_eq!(make_tabular(EnvKind::Chain).unwrap().num_states(), 7);
/// assert!(make_tabular(EnvKind::Household).is_none());
/// ```
pub fn make_tabular(kind: EnvKind) -> Option<Box<dyn Tabular>> {
    match kind {
        EnvKind::Chain => Some(Box::new(Chain::default())),
        EnvKind::LostRobot => Some(Box::new(LostRobot::default())),
        EnvKind::Household | EnvKind::HouseholdSmall | EnvKind::LowOverlap => None,
    }
}

/// 64-bit FNV-1a over bytes: a stable, dependency-free hash for state keys.
///
/// Stable across platforms and Rust versions (unlike `DefaultHasher`), so keys can be
/// stored and compared between runs.
///
/// ```
/// assert_eq!(g2po_envs::fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
/// assert_ne!(g2po_envs::fnv1a64(b"a"), g2po_envs::fnv1a64(b"b"));
/// ```
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_roundtrip_and_errors() {
        for k in EnvKind::ALL {
            assert_eq!(k.to_string().parse::<EnvKind>().unwrap(), k);
        }
        let err = "Chain".parse::<EnvKind>().unwrap_err();
        assert!(matches!(err, EnvError::UnknownEnv(_)));
        for k in EnvKind::ALL {
            assert!(err.to_string().contains(k.as_str()), "{err} does not list {k}");
        }
    }

    #[test]
    fn make_env_names_and_invalid_action() {
        for k in EnvKind::ALL {
            let mut env = make_env(k);
            assert_eq!(env.name(), k.as_str());
            let obs = env.reset(3);
            assert!(!obs.admissible.is_empty());
            let out = env.step("definitely not an action");
            assert!(!out.valid);
            assert!(!out.done);
            assert_eq!(out.reward, 0.0);
            if k != EnvKind::LowOverlap {
                assert_eq!(out.observation.key, obs.key);
            }
        }
    }

    #[test]
    fn make_tabular_agrees_with_make_env() {
        for k in [EnvKind::Chain, EnvKind::LostRobot] {
            let t = make_tabular(k).unwrap();
            let mut env = make_env(k);
            let obs = env.reset(0);
            assert_eq!(obs.key, t.observation_key(t.start_state(0)));
            assert_eq!(obs.admissible, t.actions(t.start_state(0)));
        }
    }

    fn _object_safe(_: &dyn Environment) {}
}
