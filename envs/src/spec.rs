//! Naming an environment: a built-in kind or a remote AgentGym server.

use std::fmt;
use std::str::FromStr;

use crate::agentgym::AgentGymSpec;
use crate::{EnvError, EnvKind, Environment, make_env_with_seed};

/// Prefix of a remote environment's spelling.
pub const AGENTGYM_PREFIX: &str = "agentgym:";

/// An environment to run: one of this crate's ([`EnvKind`]) or one served over the AgentGym
/// protocol (spelled `agentgym:http://HOST:PORT[/PATH][?OPTIONS]`, see [`AgentGymSpec`]).
///
/// Serialises as its spelling, so a configuration file can name either.
///
/// ```
/// use g2po_envs::{EnvKind, EnvSpec};
/// let local: EnvSpec = "household".parse().unwrap();
/// assert_eq!(local, EnvSpec::Builtin(EnvKind::Household));
/// let remote: EnvSpec = "agentgym:http://127.0.0.1:36001/textworld-express/coin".parse().unwrap();
/// assert!(matches!(remote, EnvSpec::AgentGym(_)));
/// assert_eq!(remote.to_string(), "agentgym:http://127.0.0.1:36001/textworld-express/coin");
/// assert!("agentgym:ftp://x".parse::<EnvSpec>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub enum EnvSpec {
    /// An environment of this crate, run in process.
    Builtin(EnvKind),
    /// An environment on an AgentGym protocol server.
    AgentGym(AgentGymSpec),
}

impl EnvSpec {
    /// A fresh environment instance. `env_seed` seeds the environment's own randomness
    /// (see [`make_env_with_seed`]); a remote instance is created on the server at its first
    /// reset, so this never contacts the server.
    ///
    /// ```
    /// use g2po_envs::{EnvKind, EnvSpec};
    /// let mut env = EnvSpec::Builtin(EnvKind::Chain).make(0);
    /// assert_eq!(env.try_reset(1).unwrap().key, 0);
    /// ```
    pub fn make(&self, env_seed: u64) -> Box<dyn Environment> {
        match self {
            EnvSpec::Builtin(kind) => make_env_with_seed(*kind, env_seed),
            EnvSpec::AgentGym(spec) => Box::new(spec.connect()),
        }
    }

    /// The built-in kind, if this is one.
    ///
    /// ```
    /// assert_eq!(g2po_envs::EnvSpec::from(g2po_envs::EnvKind::Chain).builtin(), Some(g2po_envs::EnvKind::Chain));
    /// ```
    pub fn builtin(&self) -> Option<EnvKind> {
        match self {
            EnvSpec::Builtin(k) => Some(*k),
            EnvSpec::AgentGym(_) => None,
        }
    }
}

impl From<EnvKind> for EnvSpec {
    fn from(kind: EnvKind) -> Self {
        EnvSpec::Builtin(kind)
    }
}

impl From<AgentGymSpec> for EnvSpec {
    fn from(spec: AgentGymSpec) -> Self {
        EnvSpec::AgentGym(spec)
    }
}

impl FromStr for EnvSpec {
    type Err = EnvError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_prefix(AGENTGYM_PREFIX) {
            Some(url) => url.parse().map(EnvSpec::AgentGym).map_err(|e| match e {
                EnvError::InvalidSpec { reason, .. } => EnvError::InvalidSpec { spec: s.to_string(), reason },
                other => other,
            }),
            None => s.parse().map(EnvSpec::Builtin),
        }
    }
}

impl fmt::Display for EnvSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnvSpec::Builtin(k) => write!(f, "{k}"),
            EnvSpec::AgentGym(s) => write!(f, "{AGENTGYM_PREFIX}{s}"),
        }
    }
}

impl serde::Serialize for EnvSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for EnvSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_roundtrip_through_serde() {
        for s in ["chain", "household-small", "agentgym:http://127.0.0.1:9/babyai?timeout=3"] {
            let spec: EnvSpec = s.parse().unwrap();
            assert_eq!(spec.to_string(), s);
            let json = serde_json::to_string(&spec).unwrap();
            assert_eq!(serde_json::from_str::<EnvSpec>(&json).unwrap(), spec);
        }
        assert!(matches!("maze".parse::<EnvSpec>(), Err(EnvError::UnknownEnv(_))));
        let e = "agentgym:127.0.0.1:9".parse::<EnvSpec>().unwrap_err();
        assert!(matches!(&e, EnvError::InvalidSpec { spec, .. } if spec == "agentgym:127.0.0.1:9"), "{e}");
    }
}
