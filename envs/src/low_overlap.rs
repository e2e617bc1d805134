//! Low-overlap: an AppWorld-like API task whose observations never repeat.
//!
//! The task (drawn from the task seed) is a request in plain words, e.g. "Email the file
//! 'budget.xlsx' to Alice.", and solving it means calling the right APIs in the right order
//! (for that template: `login`, `search_files`, `attach_file`, `send_email`). The admissible
//! actions are always the same twelve API names. The right next call advances the progress;
//! any other API call is valid but answers with an error and changes nothing; a text that is
//! not an API name is invalid. Success when the last required call is made.
//!
//! Why it exists: in AppWorld every observation carries fresh content (ids, timestamps,
//! tokens), so identical anchors almost never occur, and G2PO's graph collapses to single-visit
//! nodes; its gain over GRPO falls under 3 points (SPEC §3, §6). Here each observation opens
//! with a request id and a timestamp drawn from the environment's own noise stream
//! (`ChaCha8Rng` seeded at construction and advanced by every reset and step, never
//! re-seeded by `reset`), and each API response carries a fresh token. So two rollouts of the
//! same task read differently at every step, yet the task — the request sentence and the
//! list of calls made so far — is the same and learnable.
//!
//! The `key` is a hash of (task seed, progress, per-observation nonce): like the text, it
//! never repeats (up to 64-bit hash collisions). An invalid action leaves the task's progress
//! unchanged but, like everything here, still returns fresh noise (and so a fresh key).
//! Determinism: the same construction seed and the same sequence of resets and steps give
//! the same observations.
//!
//! ```
//! use g2po_envs::{Environment, LowOverlap};
//! let mut env = LowOverlap::with_seed(1);
//! env.reset(0);
//! let plan = env.required_calls().to_vec();
//! let mut last = None;
//! for call in &plan { last = Some(env.step(call)); }
//! assert!(last.unwrap().success);
//! ```

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{Environment, Observation, StepOutcome, fnv1a64};

/// The API names, which are also the admissible actions (fixed order).
///
/// ```
/// assert!(g2po_envs::low_overlap::APIS.contains(&"login"));
/// ```
pub const APIS: [&str; 12] = [
    "login",
    "logout",
    "search_contacts",
    "search_files",
    "read_file",
    "attach_file",
    "compose_email",
    "send_email",
    "get_calendar",
    "create_event",
    "get_balance",
    "transfer_money",
];

const PEOPLE: [&str; 8] = ["Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "Heidi"];
const FILES: [&str; 6] = ["budget.xlsx", "notes.txt", "report.pdf", "slides.pptx", "photo.jpg", "plan.docx"];
const DAYS: [&str; 5] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday"];

/// One task template: its sentence is filled from the seed; its calls are fixed.
struct Template {
    calls: &'static [&'static str],
}

const TEMPLATES: [Template; 4] = [
    // Email the file F to P.
    Template { calls: &["login", "search_files", "attach_file", "send_email"] },
    // Schedule a meeting with P on D.
    Template { calls: &["login", "search_contacts", "get_calendar", "create_event"] },
    // Pay P N dollars.
    Template { calls: &["login", "get_balance", "search_contacts", "transfer_money"] },
    // Summarise the file F for P.
    Template { calls: &["login", "search_files", "read_file", "compose_email", "send_email"] },
];

/// An AppWorld-like API-call task with fresh noise in every observation.
///
/// ```
/// use g2po_envs::{Environment, LowOverlap};
/// let mut env = LowOverlap::default();
/// let a = env.reset(3);
/// let b = env.reset(3);
/// assert_ne!(a.text, b.text); // same task, fresh noise
/// assert_eq!(a.admissible, b.admissible);
/// ```
#[derive(Debug, Clone)]
pub struct LowOverlap {
    noise: ChaCha8Rng,
    task_seed: u64,
    goal: String,
    calls: Vec<String>,
    progress: usize,
    /// Fake clock (seconds), advanced by a random amount each step.
    clock: u64,
    last_response: String,
}

impl Default for LowOverlap {
    fn default() -> Self {
        LowOverlap::with_seed(0)
    }
}

impl LowOverlap {
    /// A new environment whose noise stream is seeded by `env_seed`. Instances run side by
    /// side should get distinct seeds; one instance never repeats itself.
    ///
    /// ```
    /// use g2po_envs::{Environment, LowOverlap};
    /// let (mut a, mut b) = (LowOverlap::with_seed(4), LowOverlap::with_seed(4));
    /// assert_eq!(a.reset(1), b.reset(1)); // deterministic
    /// ```
    pub fn with_seed(env_seed: u64) -> Self {
        let mut env = LowOverlap {
            noise: ChaCha8Rng::seed_from_u64(env_seed),
            task_seed: 0,
            goal: String::new(),
            calls: Vec::new(),
            progress: 0,
            clock: 0,
            last_response: String::new(),
        };
        env.load_task(0);
        env
    }

    /// The API calls that solve the current task, in order (an expert plan).
    ///
    /// ```
    /// use g2po_envs::{Environment, LowOverlap};
    /// let mut env = LowOverlap::default();
    /// env.reset(0);
    /// assert_eq!(env.required_calls()[0], "login");
    /// ```
    pub fn required_calls(&self) -> &[String] {
        &self.calls
    }

    /// How many of the required calls have been made.
    ///
    /// ```
    /// use g2po_envs::{Environment, LowOverlap};
    /// let mut env = LowOverlap::default();
    /// env.reset(0);
    /// env.step("login");
    /// assert_eq!(env.progress(), 1);
    /// env.step("logout"); // wrong call: valid, no progress
    /// assert_eq!(env.progress(), 1);
    /// ```
    pub fn progress(&self) -> usize {
        self.progress
    }

    /// The current request sentence.
    ///
    /// ```
    /// use g2po_envs::{Environment, LowOverlap};
    /// let mut env = LowOverlap::default();
    /// let obs = env.reset(2);
    /// assert!(obs.text.contains(env.goal_text()));
    /// ```
    pub fn goal_text(&self) -> &str {
        &self.goal
    }

    fn load_task(&mut self, task_seed: u64) {
        let mut rng = ChaCha8Rng::seed_from_u64(task_seed);
        let t = rng.random_range(0..TEMPLATES.len());
        let person = PEOPLE[rng.random_range(0..PEOPLE.len())];
        let file = FILES[rng.random_range(0..FILES.len())];
        self.goal = match t {
            0 => format!("Email the file '{file}' to {person}."),
            1 => format!("Schedule a meeting with {person} on {}.", DAYS[rng.random_range(0..DAYS.len())]),
            2 => format!("Pay {person} {} dollars.", 5 * rng.random_range(1..=40u32)),
            _ => format!("Summarise the file '{file}' for {person}."),
        };
        self.calls = TEMPLATES[t].calls.iter().map(|c| c.to_string()).collect();
        self.task_seed = task_seed;
        self.progress = 0;
    }

    fn observe(&mut self) -> Observation {
        let nonce = self.noise.next_u64();
        self.clock += self.noise.random_range(1..=90u64);
        let (h, m, s) = ((self.clock / 3600) % 24, (self.clock / 60) % 60, self.clock % 60);
        let made = if self.progress == 0 { "none".to_string() } else { self.calls[..self.progress].join(", ") };
        let text = format!(
            "[request {nonce:016x} at {h:02}:{m:02}:{s:02}]\nTask: {}\nCalls made: {made}\nLast response: {}",
            self.goal, self.last_response
        );
        let mut bytes = Vec::with_capacity(24);
        bytes.extend_from_slice(&self.task_seed.to_le_bytes());
        bytes.extend_from_slice(&(self.progress as u64).to_le_bytes());
        bytes.extend_from_slice(&nonce.to_le_bytes());
        Observation { text, key: fnv1a64(&bytes), admissible: APIS.iter().map(|a| a.to_string()).collect() }
    }

    fn token(&mut self) -> String {
        format!("{:08x}", self.noise.next_u32())
    }
}

impl Environment for LowOverlap {
    fn name(&self) -> &str {
        "low-overlap"
    }

    fn reset(&mut self, task_seed: u64) -> Observation {
        self.load_task(task_seed);
        // A fresh session start time: part of the noise, so it differs per rollout.
        self.clock = self.noise.random_range(0..86_400u64);
        self.last_response = "none".into();
        self.observe()
    }

    fn step(&mut self, action: &str) -> StepOutcome {
        let finished = self.progress == self.calls.len();
        let is_api = APIS.contains(&action);
        let valid = is_api && !finished;
        if !valid {
            self.last_response = format!("{{\"error\": \"unknown command\", \"trace\": \"{}\"}}", self.token());
        } else if self.calls[self.progress] == action {
            self.progress += 1;
            self.last_response =
                format!("{{\"status\": \"ok\", \"api\": \"{action}\", \"result_id\": \"{}\"}}", self.token());
        } else {
            self.last_response = format!(
                "{{\"status\": \"error\", \"api\": \"{action}\", \"message\": \"not applicable now\", \"trace\": \"{}\"}}",
                self.token()
            );
        }
        let success = self.progress == self.calls.len();
        StepOutcome {
            observation: self.observe(),
            reward: if valid && success { 1.0 } else { 0.0 },
            done: success,
            valid,
            success,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn expert_plan_succeeds_for_every_template() {
        let mut env = LowOverlap::with_seed(9);
        let mut lens = HashSet::new();
        for seed in 0..40 {
            env.reset(seed);
            let plan = env.required_calls().to_vec();
            lens.insert(plan.len());
            for (i, c) in plan.iter().enumerate() {
                let out = env.step(c);
                assert!(out.valid);
                assert_eq!(env.progress(), i + 1);
                let last = i + 1 == plan.len();
                assert_eq!((out.done, out.success), (last, last));
                assert_eq!(out.reward, if last { 1.0 } else { 0.0 });
                assert!(out.observation.text.contains("\"status\": \"ok\""));
            }
            // After success, any step is invalid and pays nothing.
            let out = env.step("login");
            assert!(!out.valid && out.done && out.reward == 0.0);
        }
        assert_eq!(lens, HashSet::from([4, 5]));
    }

    #[test]
    fn wrong_and_invalid_calls_keep_progress() {
        let mut env = LowOverlap::default();
        env.reset(1);
        let first = env.required_calls()[0].clone();
        let wrong = APIS.iter().find(|a| **a != first).unwrap();
        let out = env.step(wrong);
        assert!(out.valid && !out.done);
        assert_eq!(env.progress(), 0);
        assert!(out.observation.text.contains("not applicable now"));
        let out = env.step("rm -rf /");
        assert!(!out.valid && !out.done && out.reward == 0.0);
        assert_eq!(env.progress(), 0);
        assert!(out.observation.text.contains("unknown command"));
        assert!(env.step(&first).valid);
        assert_eq!(env.progress(), 1);
    }

    #[test]
    fn texts_and_keys_never_repeat_across_rollouts() {
        let mut env = LowOverlap::with_seed(3);
        let mut texts = HashSet::new();
        let mut keys = HashSet::new();
        let mut n = 0;
        for _rollout in 0..8 {
            let obs = env.reset(7);
            let plan = env.required_calls().to_vec();
            let mut all = vec![obs];
            // Mix right, wrong and invalid calls: the same action sequence every rollout.
            for c in ["logout", "nonsense"].iter().map(|s| s.to_string()).chain(plan) {
                all.push(env.step(&c).observation);
            }
            for o in all {
                assert!(texts.insert(o.text.clone()), "repeated text {}", o.text);
                assert!(keys.insert(o.key));
                n += 1;
            }
        }
        assert_eq!(texts.len(), n);
    }

    #[test]
    fn deterministic_and_same_task_per_seed() {
        let run = |env_seed| {
            let mut env = LowOverlap::with_seed(env_seed);
            let mut v = vec![env.reset(5)];
            for a in ["login", "bad", "send_email"] {
                v.push(env.step(a).observation);
            }
            v
        };
        assert_eq!(run(2), run(2));
        assert_ne!(run(2), run(3));
        let mut env = LowOverlap::default();
        env.reset(5);
        let (goal, calls) = (env.goal_text().to_string(), env.required_calls().to_vec());
        env.step("login");
        env.reset(5);
        assert_eq!(env.goal_text(), goal);
        assert_eq!(env.required_calls(), calls);
        assert_eq!(env.progress(), 0);
        let goals: HashSet<String> = (0..30)
            .map(|s| {
                env.reset(s);
                env.goal_text().to_string()
            })
            .collect();
        assert!(goals.len() > 20);
    }
}
