//! Exact finite-horizon ground truth for small tabular environments.
//!
//! G2PO's node value (SPEC §3) is a Monte-Carlo estimate: a visit at step `t` of a trajectory
//! of length `T` with episode reward `R` contributes `gamma^(T-t) · R`, so the last step gets
//! `gamma · R`, and a truncated trajectory (the trainer's turn cap) counts as failure. The
//! quantity that estimate converges to depends on how many turns the agent still had, so the
//! ground truth here is indexed by `(state, turns left)`:
//!
//! - `V(s, 0) = 0` (no turn left: truncated, failure);
//! - `Q(s, a, h) = gamma · success_value` if `a` reaches the goal, else `gamma · V(s', h-1)`;
//! - `V(s, h) = Σ_a π(a|s) · Q(s, a, h)`; goal states are terminal and have `V = Q = 0`
//!   (no action is ever taken there).
//!
//! The trainer holds rollouts as `(state key, step index)` pairs, so look-ups are offered by
//! key and `turns_left = horizon − step`.
//!
//! ```
//! use g2po_envs::{Chain, solve};
//! let env = Chain::new(2).unwrap();
//! let gt = solve(&env, &|_| vec![1.0, 0.0], 3, 0.5, 10.0).unwrap();
//! assert_eq!(gt.value(0, 3).unwrap(), 2.5); // two steps forward: 0.5^2 · 10
//! assert_eq!(gt.value(0, 1).unwrap(), 0.0); // one turn is not enough
//! ```

use std::collections::{HashMap, VecDeque};

use crate::EnvError;

/// A finite environment whose states can be enumerated by index `0..num_states()`.
///
/// Action indices refer to positions in `actions(s)`; the action texts are the same as the
/// [`crate::Environment`]'s admissible actions in that state.
///
/// ```
/// use g2po_envs::{Chain, Tabular};
/// let env = Chain::new(4).unwrap();
/// assert_eq!(env.num_states(), 5);
/// assert_eq!(env.transition(3, 0).unwrap(), (4, true));
/// assert!(env.is_goal(4));
/// ```
pub trait Tabular {
    /// Number of states (indices `0..num_states()`).
    fn num_states(&self) -> usize;
    /// Index of the environment's current state.
    fn state_index(&self) -> usize;
    /// Action texts available in state `s` (empty for an out-of-range `s`).
    fn actions(&self, s: usize) -> Vec<String>;
    /// Next state and whether it is the goal, for action index `action` in state `s`.
    fn transition(&self, s: usize, action: usize) -> Result<(usize, bool), EnvError>;
    /// The state `reset(task_seed)` starts in.
    fn start_state(&self, task_seed: u64) -> usize;
    /// The key [`crate::Observation::key`] carries in state `s` (`u64::MAX`, which no state
    /// uses, for an out-of-range `s`).
    fn observation_key(&self, s: usize) -> u64;
    /// Whether `s` is a goal (terminal, successful) state.
    fn is_goal(&self, s: usize) -> bool;
}

/// Exact `V[s][h]` and `Q[s][a][h]` for one policy, horizon, discount and success value.
///
/// ```
/// use g2po_envs::{Chain, solve};
/// let env = Chain::new(1).unwrap();
/// let gt = solve(&env, &|_| vec![0.5, 0.5], 2, 1.0, 1.0).unwrap();
/// // forward succeeds at once; stay leaves one turn, then forward succeeds with prob. 1/2
/// assert_eq!(gt.q_value(0, "forward", 2).unwrap(), 1.0);
/// assert_eq!(gt.q_value(0, "stay", 2).unwrap(), 0.5);
/// assert_eq!(gt.value(0, 2).unwrap(), 0.75);
/// assert_eq!(gt.advantage(0, "stay", 2).unwrap(), -0.25);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct GroundTruth {
    horizon: usize,
    gamma: f64,
    success_value: f64,
    /// `v[s][h]`, `h` in `0..=horizon`.
    v: Vec<Vec<f64>>,
    /// `q[s][a][h]`.
    q: Vec<Vec<Vec<f64>>>,
    actions: Vec<Vec<String>>,
    keys: Vec<u64>,
    by_key: HashMap<u64, usize>,
}

/// Solves the finite-horizon policy evaluation exactly by backward induction.
///
/// `policy(s)` must return probabilities over `env.actions(s)` (non-negative, finite, summing
/// to 1 within 1e-6); it is not called on goal states. `gamma` must lie in `(0, 1]` and
/// `success_value` be finite. Cost: `O(horizon · Σ_s |actions(s)|)`.
///
/// ```
/// use g2po_envs::{Chain, solve};
/// let env = Chain::new(6).unwrap();
/// let gt = solve(&env, &|_| vec![1.0, 0.0], 10, 0.95, 10.0).unwrap();
/// assert!((gt.value(3, 5).unwrap() - 0.95f64.powi(3) * 10.0).abs() < 1e-12);
/// assert!(solve(&env, &|_| vec![1.0], 10, 0.95, 10.0).is_err());
/// ```
pub fn solve(
    env: &dyn Tabular,
    policy: &dyn Fn(usize) -> Vec<f64>,
    horizon: usize,
    gamma: f64,
    success_value: f64,
) -> Result<GroundTruth, EnvError> {
    if !(gamma > 0.0 && gamma <= 1.0) {
        return Err(EnvError::InvalidSolverArgument(format!("gamma must be in (0, 1], got {gamma}")));
    }
    if !success_value.is_finite() {
        return Err(EnvError::InvalidSolverArgument(format!("success_value must be finite, got {success_value}")));
    }
    let n = env.num_states();
    let actions: Vec<Vec<String>> = (0..n).map(|s| env.actions(s)).collect();
    let keys: Vec<u64> = (0..n).map(|s| env.observation_key(s)).collect();
    let mut by_key = HashMap::with_capacity(n);
    for (s, &k) in keys.iter().enumerate() {
        if by_key.insert(k, s).is_some() {
            return Err(EnvError::InvalidSolverArgument(format!("two states share the key {k}")));
        }
    }
    // Transitions and policy are fixed over h, so tabulate them once.
    let mut trans: Vec<Vec<(usize, bool)>> = Vec::with_capacity(n);
    let mut probs: Vec<Vec<f64>> = Vec::with_capacity(n);
    for (s, acts) in actions.iter().enumerate() {
        if env.is_goal(s) {
            trans.push(Vec::new());
            probs.push(Vec::new());
            continue;
        }
        let t = (0..acts.len()).map(|a| env.transition(s, a)).collect::<Result<Vec<_>, _>>()?;
        // A buggy implementation must not make the solver index out of bounds.
        if let Some(&(next, _)) = t.iter().find(|(next, _)| *next >= n) {
            return Err(EnvError::InvalidSolverArgument(format!(
                "transition from state {s} leads to {next}, beyond {n} states"
            )));
        }
        let p = policy(s);
        check_distribution(s, &p, acts.len())?;
        trans.push(t);
        probs.push(p);
    }
    let mut v = vec![vec![0.0; horizon + 1]; n];
    let mut q: Vec<Vec<Vec<f64>>> = actions.iter().map(|a| vec![vec![0.0; horizon + 1]; a.len()]).collect();
    for h in 1..=horizon {
        for s in 0..n {
            if env.is_goal(s) {
                continue;
            }
            let mut vs = 0.0;
            for (a, &(next, success)) in trans[s].iter().enumerate() {
                let qa = if success { gamma * success_value } else { gamma * v[next][h - 1] };
                q[s][a][h] = qa;
                vs += probs[s][a] * qa;
            }
            v[s][h] = vs;
        }
    }
    Ok(GroundTruth { horizon, gamma, success_value, v, q, actions, keys, by_key })
}

fn check_distribution(s: usize, p: &[f64], len: usize) -> Result<(), EnvError> {
    let bad = |reason: String| Err(EnvError::InvalidPolicy { state: s, reason });
    if p.len() != len {
        return bad(format!("{} probabilities for {len} actions", p.len()));
    }
    if let Some(x) = p.iter().find(|x| !x.is_finite() || **x < 0.0) {
        return bad(format!("probability {x} is negative or not finite"));
    }
    let sum: f64 = p.iter().sum();
    if (sum - 1.0).abs() > 1e-6 {
        return bad(format!("probabilities sum to {sum}, not 1"));
    }
    Ok(())
}

impl GroundTruth {
    /// The horizon solved for (largest valid `turns_left`).
    ///
    /// ```
    /// # use g2po_envs::{Chain, solve};
    /// let gt = solve(&Chain::new(2).unwrap(), &|_| vec![1.0, 0.0], 7, 1.0, 1.0).unwrap();
    /// assert_eq!(gt.horizon(), 7);
    /// ```
    pub fn horizon(&self) -> usize {
        self.horizon
    }

    /// The discount used.
    ///
    /// ```
    /// # use g2po_envs::{Chain, solve};
    /// let gt = solve(&Chain::new(2).unwrap(), &|_| vec![1.0, 0.0], 3, 0.9, 1.0).unwrap();
    /// assert_eq!(gt.gamma(), 0.9);
    /// ```
    pub fn gamma(&self) -> f64 {
        self.gamma
    }

    /// The value of reaching the goal (the episode reward `R` of a success).
    ///
    /// ```
    /// # use g2po_envs::{Chain, solve};
    /// let gt = solve(&Chain::new(2).unwrap(), &|_| vec![1.0, 0.0], 3, 0.9, 10.0).unwrap();
    /// assert_eq!(gt.success_value(), 10.0);
    /// ```
    pub fn success_value(&self) -> f64 {
        self.success_value
    }

    /// Number of states.
    ///
    /// ```
    /// # use g2po_envs::{Chain, solve};
    /// let gt = solve(&Chain::new(2).unwrap(), &|_| vec![1.0, 0.0], 3, 0.9, 1.0).unwrap();
    /// assert_eq!(gt.num_states(), 3);
    /// ```
    pub fn num_states(&self) -> usize {
        self.v.len()
    }

    /// The action texts of state `s`, in the order of `q`'s action index.
    ///
    /// ```
    /// # use g2po_envs::{Chain, solve};
    /// let gt = solve(&Chain::new(2).unwrap(), &|_| vec![1.0, 0.0], 3, 0.9, 1.0).unwrap();
    /// assert_eq!(gt.actions(0).unwrap(), ["forward", "stay"]);
    /// ```
    pub fn actions(&self, s: usize) -> Result<&[String], EnvError> {
        self.actions.get(s).map(Vec::as_slice).ok_or(EnvError::UnknownKey(s as u64))
    }

    /// The state index carrying observation key `key`.
    ///
    /// ```
    /// # use g2po_envs::{Chain, solve};
    /// let gt = solve(&Chain::new(2).unwrap(), &|_| vec![1.0, 0.0], 3, 0.9, 1.0).unwrap();
    /// assert_eq!(gt.state_of_key(1).unwrap(), 1);
    /// assert!(gt.state_of_key(99).is_err());
    /// ```
    pub fn state_of_key(&self, key: u64) -> Result<usize, EnvError> {
        self.by_key.get(&key).copied().ok_or(EnvError::UnknownKey(key))
    }

    /// The observation key of state index `s`.
    ///
    /// ```
    /// # use g2po_envs::{Chain, solve};
    /// let gt = solve(&Chain::new(2).unwrap(), &|_| vec![1.0, 0.0], 3, 0.9, 1.0).unwrap();
    /// assert_eq!(gt.key_of_state(2).unwrap(), 2);
    /// ```
    pub fn key_of_state(&self, s: usize) -> Result<u64, EnvError> {
        self.keys.get(s).copied().ok_or(EnvError::UnknownKey(s as u64))
    }

    fn check_h(&self, turns_left: usize) -> Result<(), EnvError> {
        if turns_left > self.horizon {
            return Err(EnvError::TurnsLeftOutOfRange { turns_left, horizon: self.horizon });
        }
        Ok(())
    }

    /// `V(s, h)` by state index.
    ///
    /// ```
    /// # use g2po_envs::{Chain, solve};
    /// let gt = solve(&Chain::new(2).unwrap(), &|_| vec![1.0, 0.0], 3, 0.5, 1.0).unwrap();
    /// assert_eq!(gt.v(1, 1).unwrap(), 0.5);
    /// assert!(gt.v(1, 4).is_err());
    /// ```
    pub fn v(&self, s: usize, turns_left: usize) -> Result<f64, EnvError> {
        self.check_h(turns_left)?;
        self.v.get(s).map(|row| row[turns_left]).ok_or(EnvError::UnknownKey(s as u64))
    }

    /// `Q(s, a, h)` by state and action index.
    ///
    /// ```
    /// # use g2po_envs::{Chain, solve};
    /// let gt = solve(&Chain::new(2).unwrap(), &|_| vec![1.0, 0.0], 3, 0.5, 1.0).unwrap();
    /// assert_eq!(gt.q(1, 1, 2).unwrap(), 0.25); // stay, then forward
    /// ```
    pub fn q(&self, s: usize, a: usize, turns_left: usize) -> Result<f64, EnvError> {
        self.check_h(turns_left)?;
        let row = self.q.get(s).ok_or(EnvError::UnknownKey(s as u64))?;
        row.get(a).map(|r| r[turns_left]).ok_or_else(|| EnvError::UnknownAction { action: format!("#{a}"), state: s })
    }

    /// `V` of the state with observation key `key`, with `turns_left = horizon − step`.
    ///
    /// ```
    /// # use g2po_envs::{Chain, solve};
    /// let gt = solve(&Chain::new(2).unwrap(), &|_| vec![1.0, 0.0], 3, 0.5, 1.0).unwrap();
    /// assert_eq!(gt.value(0, 2).unwrap(), 0.25);
    /// ```
    pub fn value(&self, key: u64, turns_left: usize) -> Result<f64, EnvError> {
        let s = self.state_of_key(key)?;
        self.v(s, turns_left)
    }

    /// `Q` of action text `action` in the state with key `key`.
    ///
    /// ```
    /// # use g2po_envs::{Chain, solve};
    /// let gt = solve(&Chain::new(2).unwrap(), &|_| vec![1.0, 0.0], 3, 0.5, 1.0).unwrap();
    /// assert_eq!(gt.q_value(1, "forward", 1).unwrap(), 0.5);
    /// assert!(gt.q_value(1, "jump", 1).is_err());
    /// ```
    pub fn q_value(&self, key: u64, action: &str, turns_left: usize) -> Result<f64, EnvError> {
        let s = self.state_of_key(key)?;
        let a = self.actions[s]
            .iter()
            .position(|x| x == action)
            .ok_or_else(|| EnvError::UnknownAction { action: action.to_string(), state: s })?;
        self.q(s, a, turns_left)
    }

    /// Advantage `A(s, a, h) = Q(s, a, h) − V(s, h)` by key and action text.
    ///
    /// ```
    /// # use g2po_envs::{Chain, solve};
    /// let gt = solve(&Chain::new(1).unwrap(), &|_| vec![0.5, 0.5], 1, 1.0, 1.0).unwrap();
    /// assert_eq!(gt.advantage(0, "forward", 1).unwrap(), 0.5);
    /// ```
    pub fn advantage(&self, key: u64, action: &str, turns_left: usize) -> Result<f64, EnvError> {
        Ok(self.q_value(key, action, turns_left)? - self.value(key, turns_left)?)
    }
}

/// Fewest steps from each state to a goal (`None` where the goal is unreachable; 0 on goals).
///
/// Breadth-first search backwards over the reversed transition graph.
///
/// ```
/// use g2po_envs::{Chain, tabular::distances_to_goal};
/// assert_eq!(distances_to_goal(&Chain::new(3).unwrap()), vec![Some(3), Some(2), Some(1), Some(0)]);
/// ```
pub fn distances_to_goal(env: &dyn Tabular) -> Vec<Option<usize>> {
    let n = env.num_states();
    let mut preds: Vec<Vec<usize>> = vec![Vec::new(); n];
    for s in 0..n {
        if env.is_goal(s) {
            continue;
        }
        for a in 0..env.actions(s).len() {
            if let Ok((next, _)) = env.transition(s, a)
                && next < n
            {
                preds[next].push(s);
            }
        }
    }
    let mut dist = vec![None; n];
    let mut queue = VecDeque::new();
    for (s, d) in dist.iter_mut().enumerate() {
        if env.is_goal(s) {
            *d = Some(0);
            queue.push_back(s);
        }
    }
    while let Some(s) = queue.pop_front() {
        let d = dist[s].unwrap_or(0);
        for &p in &preds[s] {
            if dist[p].is_none() {
                dist[p] = Some(d + 1);
                queue.push_back(p);
            }
        }
    }
    dist
}

/// A shortest-path (optimal) policy table: in each state, uniform over the actions that
/// lead one step closer to a goal; uniform over all actions where the goal is unreachable.
///
/// `table[s]` is a distribution over `env.actions(s)`, ready for [`solve`]
/// (`&|s| table[s].clone()`).
///
/// ```
/// use g2po_envs::{Chain, tabular::shortest_path_policy};
/// let t = shortest_path_policy(&Chain::new(2).unwrap());
/// assert_eq!(t[0], vec![1.0, 0.0]);
/// ```
pub fn shortest_path_policy(env: &dyn Tabular) -> Vec<Vec<f64>> {
    let dist = distances_to_goal(env);
    (0..env.num_states())
        .map(|s| {
            let k = env.actions(s).len();
            let good: Vec<bool> = (0..k)
                .map(|a| match (dist[s], env.transition(s, a)) {
                    (Some(d), Ok((next, _))) => d > 0 && dist.get(next) == Some(&Some(d - 1)),
                    _ => false,
                })
                .collect();
            let m = good.iter().filter(|&&g| g).count();
            if m == 0 {
                vec![1.0 / k.max(1) as f64; k]
            } else {
                good.iter().map(|&g| if g { 1.0 / m as f64 } else { 0.0 }).collect()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Chain, LostRobot};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn chain_always_forward_closed_form() {
        let n = 6;
        let env = Chain::new(n).unwrap();
        let (gamma, r) = (0.95, 10.0);
        let h_max = 9;
        let gt = solve(&env, &|_| vec![1.0, 0.0], h_max, gamma, r).unwrap();
        for s in 0..n {
            for h in 0..=h_max {
                let want = if h >= n - s { gamma.powi((n - s) as i32) * r } else { 0.0 };
                let got = gt.value(env.observation_key(s), h).unwrap();
                assert!((got - want).abs() < 1e-12, "s={s} h={h}: {got} vs {want}");
            }
        }
        // Goal state: terminal, value 0.
        assert_eq!(gt.v(n, h_max).unwrap(), 0.0);
        // Advantage of staying is negative when forward can still make it.
        assert!(gt.advantage(0, "stay", 7).unwrap() < 0.0);
        // ... and zero when neither can (too few turns).
        assert_eq!(gt.advantage(0, "stay", 3).unwrap(), 0.0);
    }

    /// Simulates the uniform policy with `h` turns from `s`, returning gamma^k · R on success
    /// after k steps, 0 otherwise: the per-visit quantity G2PO averages.
    fn mc_value(env: &dyn Tabular, s0: usize, h: usize, gamma: f64, r: f64, n: usize) -> f64 {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let mut total = 0.0;
        for _ in 0..n {
            let mut s = s0;
            for k in 1..=h {
                let a = rng.random_range(0..env.actions(s).len());
                let (next, success) = env.transition(s, a).unwrap();
                if success {
                    total += gamma.powi(k as i32) * r;
                    break;
                }
                s = next;
            }
        }
        total / n as f64
    }

    #[test]
    fn uniform_policy_matches_monte_carlo() {
        let env = Chain::new(4).unwrap();
        let gt = solve(&env, &|_| vec![0.5, 0.5], 8, 0.9, 10.0).unwrap();
        for (s, h) in [(0, 8), (1, 5), (2, 3), (0, 4)] {
            let mc = mc_value(&env, s, h, 0.9, 10.0, 40_000);
            let exact = gt.v(s, h).unwrap();
            assert!((mc - exact).abs() < 0.08, "s={s} h={h}: mc {mc} exact {exact}");
        }
        let robot = LostRobot::default();
        let k = robot.actions(0).len();
        let gt = solve(&robot, &|_| vec![1.0 / k as f64; k], 30, 0.97, 1.0).unwrap();
        let start = robot.start_state(0);
        let exact = gt.v(start, 30).unwrap();
        let mc = mc_value(&robot, start, 30, 0.97, 1.0, 40_000);
        assert!(exact > 0.0);
        assert!((mc - exact).abs() < 0.01, "mc {mc} exact {exact}");
    }

    #[test]
    fn lost_robot_optimal_value_positive_iff_enough_turns() {
        let env = LostRobot::default();
        let table = shortest_path_policy(&env);
        let gt = solve(&env, &|s| table[s].clone(), 25, 0.95, 10.0).unwrap();
        let start = env.start_state(0);
        let d = distances_to_goal(&env)[start].unwrap();
        assert_eq!(d, 8);
        for h in 0..=25 {
            let v = gt.v(start, h).unwrap();
            assert_eq!(v > 0.0, h >= d, "h={h} v={v}");
            if h >= d {
                assert!((v - 0.95f64.powi(d as i32) * 10.0).abs() < 1e-9);
            }
        }
    }

    #[test]
    fn bad_inputs_are_typed_errors() {
        let env = Chain::new(2).unwrap();
        let fwd = |_: usize| vec![1.0, 0.0];
        assert!(matches!(solve(&env, &fwd, 3, 0.0, 1.0), Err(EnvError::InvalidSolverArgument(_))));
        assert!(matches!(solve(&env, &fwd, 3, 1.5, 1.0), Err(EnvError::InvalidSolverArgument(_))));
        assert!(matches!(solve(&env, &fwd, 3, f64::NAN, 1.0), Err(EnvError::InvalidSolverArgument(_))));
        assert!(matches!(solve(&env, &fwd, 3, 0.9, f64::INFINITY), Err(EnvError::InvalidSolverArgument(_))));
        for bad in [vec![0.5, 0.4], vec![1.5, -0.5], vec![f64::NAN, 1.0], vec![1.0]] {
            let b = bad.clone();
            assert!(matches!(solve(&env, &move |_| b.clone(), 3, 0.9, 1.0), Err(EnvError::InvalidPolicy { .. })));
        }
        let gt = solve(&env, &fwd, 3, 0.9, 1.0).unwrap();
        assert_eq!(gt.value(0, 4), Err(EnvError::TurnsLeftOutOfRange { turns_left: 4, horizon: 3 }));
        assert_eq!(gt.value(77, 1), Err(EnvError::UnknownKey(77)));
        assert!(matches!(gt.q_value(0, "back", 1), Err(EnvError::UnknownAction { .. })));
        assert!(gt.q(0, 2, 1).is_err());
        assert!(gt.v(3, 1).is_err());
    }

    /// A deliberately broken tabular env: configurable keys and an out-of-range transition.
    struct Broken {
        dup_keys: bool,
    }
    impl Tabular for Broken {
        fn num_states(&self) -> usize {
            2
        }
        fn state_index(&self) -> usize {
            0
        }
        fn actions(&self, _: usize) -> Vec<String> {
            vec!["go".into()]
        }
        fn transition(&self, _: usize, _: usize) -> Result<(usize, bool), EnvError> {
            Ok((5, false))
        }
        fn start_state(&self, _: u64) -> usize {
            0
        }
        fn observation_key(&self, s: usize) -> u64 {
            if self.dup_keys { 1 } else { s as u64 }
        }
        fn is_goal(&self, _: usize) -> bool {
            false
        }
    }

    #[test]
    fn broken_tabular_envs_are_rejected() {
        let p = |_: usize| vec![1.0];
        for dup_keys in [true, false] {
            assert!(matches!(solve(&Broken { dup_keys }, &p, 2, 0.9, 1.0), Err(EnvError::InvalidSolverArgument(_))));
        }
        let b = Broken { dup_keys: false };
        assert_eq!(distances_to_goal(&b), vec![None, None]);
        assert_eq!(shortest_path_policy(&b), vec![vec![1.0], vec![1.0]]);
    }

    #[test]
    fn horizon_zero_is_all_zero() {
        let env = Chain::new(1).unwrap();
        let gt = solve(&env, &|_| vec![1.0, 0.0], 0, 0.9, 1.0).unwrap();
        assert_eq!(gt.value(0, 0).unwrap(), 0.0);
    }
}
