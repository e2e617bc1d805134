//! The chain MDP: the smallest sparse-reward problem.
//!
//! States `0..=n`, start at 0, actions `forward` (s → s+1) and `stay` (s → s). Reaching `n`
//! is success (reward 1, done). Every state repeats across rollouts and the optimal policy
//! is "always forward", so it is the sanity check for estimators: with the always-forward
//! policy the exact value is `gamma^(n−s) · R` when enough turns are left and 0 otherwise.
//! The task seed plays no part (there is one task); the key of state `s` is `s` itself.
//!
//! ```
//! use g2po_envs::{Chain, Environment};
//! let mut env = Chain::new(2).unwrap();
//! env.reset(0);
//! assert!(!env.step("forward").done);
//! assert!(env.step("forward").success);
//! ```

use crate::tabular::Tabular;
use crate::{EnvError, Environment, Observation, StepOutcome};

const ACTIONS: [&str; 2] = ["forward", "stay"];

/// Chain of `n + 1` states with a goal at the end.
///
/// ```
/// use g2po_envs::{Chain, Environment};
/// let mut env = Chain::default();
/// assert_eq!(env.length(), 6);
/// assert_eq!(env.reset(0).text, "You are at position 0 of 6.");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    n: usize,
    pos: usize,
}

impl Default for Chain {
    fn default() -> Self {
        Chain { n: 6, pos: 0 }
    }
}

impl Chain {
    /// A chain whose goal is `n` forward steps away; `n` must be at least 1.
    ///
    /// ```
    /// use g2po_envs::Chain;
    /// assert!(Chain::new(3).is_ok());
    /// assert!(Chain::new(0).is_err());
    /// ```
    pub fn new(n: usize) -> Result<Self, EnvError> {
        if n == 0 {
            return Err(EnvError::InvalidParameter {
                name: "n",
                reason: "the chain needs at least one step to its goal".into(),
            });
        }
        Ok(Chain { n, pos: 0 })
    }

    /// Number of forward steps from the start to the goal.
    ///
    /// ```
    /// assert_eq!(g2po_envs::Chain::new(4).unwrap().length(), 4);
    /// ```
    pub fn length(&self) -> usize {
        self.n
    }

    fn observe(&self, s: usize) -> Observation {
        Observation {
            text: format!("You are at position {s} of {}.", self.n),
            key: s as u64,
            admissible: ACTIONS.iter().map(|a| a.to_string()).collect(),
        }
    }
}

impl Environment for Chain {
    fn name(&self) -> &str {
        "chain"
    }

    fn reset(&mut self, _task_seed: u64) -> Observation {
        self.pos = 0;
        self.observe(0)
    }

    fn step(&mut self, action: &str) -> StepOutcome {
        let at_goal = self.pos == self.n;
        let idx = ACTIONS.iter().position(|a| *a == action);
        match idx {
            Some(a) if !at_goal => {
                let (next, success) = self.transition(self.pos, a).unwrap_or((self.pos, false));
                self.pos = next;
                StepOutcome {
                    observation: self.observe(next),
                    reward: if success { 1.0 } else { 0.0 },
                    done: success,
                    valid: true,
                    success,
                }
            }
            _ => StepOutcome {
                observation: self.observe(self.pos),
                reward: 0.0,
                done: at_goal,
                valid: false,
                success: at_goal,
            },
        }
    }
}

impl Tabular for Chain {
    fn num_states(&self) -> usize {
        self.n + 1
    }

    fn state_index(&self) -> usize {
        self.pos
    }

    fn actions(&self, s: usize) -> Vec<String> {
        if s > self.n {
            return Vec::new();
        }
        ACTIONS.iter().map(|a| a.to_string()).collect()
    }

    fn transition(&self, s: usize, action: usize) -> Result<(usize, bool), EnvError> {
        if s > self.n {
            return Err(EnvError::UnknownKey(s as u64));
        }
        let next = match action {
            0 => (s + 1).min(self.n),
            1 => s,
            _ => {
                return Err(EnvError::UnknownAction { action: format!("#{action}"), state: s });
            }
        };
        Ok((next, next == self.n))
    }

    fn start_state(&self, _task_seed: u64) -> usize {
        0
    }

    fn observation_key(&self, s: usize) -> u64 {
        if s > self.n { u64::MAX } else { s as u64 }
    }

    fn is_goal(&self, s: usize) -> bool {
        s == self.n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optimal_solution_succeeds_at_step_n() {
        let mut env = Chain::new(5).unwrap();
        let obs = env.reset(123);
        assert_eq!(obs.key, 0);
        for i in 1..=5 {
            let out = env.step("forward");
            assert!(out.valid);
            assert_eq!(out.observation.key, i as u64);
            assert_eq!(out.done, i == 5);
            assert_eq!(out.success, i == 5);
            assert_eq!(out.reward, if i == 5 { 1.0 } else { 0.0 });
        }
        // Stepping after the end is invalid and changes nothing.
        let out = env.step("forward");
        assert!(!out.valid && out.done && out.reward == 0.0);
        assert_eq!(env.state_index(), 5);
    }

    #[test]
    fn stay_and_invalid_leave_state() {
        let mut env = Chain::default();
        env.reset(0);
        env.step("forward");
        let s = env.step("stay");
        assert!(s.valid && !s.done);
        assert_eq!(s.observation.text, "You are at position 1 of 6.");
        let bad = env.step("Forward");
        assert!(!bad.valid);
        assert_eq!(bad.observation, s.observation);
        assert_eq!(env.state_index(), 1);
    }

    #[test]
    fn deterministic_and_matches_tabular() {
        let run = |seed| {
            let mut env = Chain::new(3).unwrap();
            let mut v = vec![env.reset(seed)];
            for a in ["stay", "forward", "x", "forward"] {
                v.push(env.step(a).observation);
            }
            v
        };
        assert_eq!(run(1), run(1));
        assert_eq!(run(1), run(2)); // one task only
        let mut env = Chain::new(3).unwrap();
        for s in 0..3 {
            env.pos = s;
            for (a, name) in ACTIONS.iter().enumerate() {
                let mut e = env.clone();
                let out = e.step(name);
                let (next, succ) = env.transition(s, a).unwrap();
                assert_eq!((e.state_index(), out.success), (next, succ));
                assert_eq!(out.observation.key, env.observation_key(next));
            }
        }
        assert!(env.transition(0, 2).is_err());
        assert!(env.transition(4, 0).is_err());
        assert_eq!(env.observation_key(9), u64::MAX);
    }
}
