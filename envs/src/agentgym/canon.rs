//! From a server's observation text to the state text the estimators hash.
//!
//! Graph estimators fuse identical observations into one node, so the same state must read
//! the same in every rollout of a task. Servers print things that are not the state:
//! - a move counter (`Moves: 7`) that differs at every step, so no state ever repeats;
//! - the goal only on the first observation (AgentGym's `Your goal: ...`), so the start
//!   state never matches itself when revisited;
//! - the feedback of the last action (`You open the door.`), which depends on how the state
//!   was reached, not on the state;
//! - the admissible actions in an order that may vary.
//!
//! A [`Canonicaliser`] removes these per game, keeping everything that describes the state.
//! It is applied by the client to every observation of an episode with a [`CanonState`]
//! (the goal of the episode), so the goal can be carried to every turn: the policy keeps
//! seeing it, and the start state is recognised when revisited. The measured effect on the
//! overlap of 8 rollouts of one task is in `docs/environments.md`.

use std::fmt;
use std::str::FromStr;

/// Labels of the admissible-actions line, compared case-insensitively.
const ACTION_LABELS: [&str; 3] = ["available actions:", "admissible actions:", "valid actions:"];

/// Prefixes of a goal line that a server prints on the first observation only.
const GOAL_PREFIXES: [&str; 2] = ["Your goal:", "Your task:"];

/// How the client rewrites a server's observations.
///
/// ```
/// use g2po_envs::agentgym::{CanonState, Canonicaliser};
/// let mut st = CanonState::default();
/// let first = "Your goal: go to the red ball\nYou see a wall.\nAvailable actions: [\"turn left\", \"move forward\"]";
/// let (text, actions) = Canonicaliser::BabyAi.apply(&mut st, first);
/// assert_eq!(text, "Your goal: go to the red ball\nYou see a wall.");
/// assert_eq!(actions, vec!["move forward".to_string(), "turn left".to_string()]);
/// // Later observations get the goal back.
/// let (text, _) = Canonicaliser::BabyAi.apply(&mut st, "You see a wall.\nAvailable actions: [\"turn left\"]");
/// assert_eq!(text, "Your goal: go to the red ball\nYou see a wall.");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Canonicaliser {
    /// The server's text exactly (the actions are still parsed, in the server's order).
    Raw,
    /// The actions line removed, lines trimmed and blank-line runs collapsed (actions in the
    /// server's order). For servers whose text is already a function of the state, such as
    /// g2po's own ([`super::EnvServer`]): the client then sees what an in-process run sees.
    #[default]
    Basic,
    /// [`Canonicaliser::Basic`] with the actions sorted, plus: the `Your task:` line kept on every turn, the move
    /// counter of the status line (`Score: 0.50  Moves: 7` -> `Score: 0.50`) removed, and
    /// the action feedback (the paragraphs before the `You are in ...` room description)
    /// dropped. For the TextWorld-Express server in `envs/servers/`.
    TextWorldExpress,
    /// [`Canonicaliser::Basic`] with the actions sorted, plus the `Your goal:` line kept on every turn. For BabyAI
    /// servers (AgentGym's layout).
    BabyAi,
}

impl Canonicaliser {
    /// All canonicalisers.
    pub const ALL: [Canonicaliser; 4] =
        [Canonicaliser::Raw, Canonicaliser::Basic, Canonicaliser::TextWorldExpress, Canonicaliser::BabyAi];

    /// The name (what `Display` prints and `FromStr` accepts).
    ///
    /// ```
    /// assert_eq!(g2po_envs::agentgym::Canonicaliser::TextWorldExpress.as_str(), "textworld-express");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Canonicaliser::Raw => "raw",
            Canonicaliser::Basic => "basic",
            Canonicaliser::TextWorldExpress => "textworld-express",
            Canonicaliser::BabyAi => "babyai",
        }
    }

    /// The canonicaliser a server URL suggests: a path with `textworld-express` or `babyai`
    /// gets that game's, anything else [`Canonicaliser::Basic`].
    ///
    /// ```
    /// use g2po_envs::agentgym::Canonicaliser;
    /// assert_eq!(Canonicaliser::infer("http://127.0.0.1:1/babyai/GoToLocal"), Canonicaliser::BabyAi);
    /// assert_eq!(Canonicaliser::infer("http://127.0.0.1:1"), Canonicaliser::Basic);
    /// ```
    pub fn infer(url: &str) -> Canonicaliser {
        let path = url.strip_prefix("http://").and_then(|r| r.split_once('/')).map_or("", |(_, p)| p);
        let path = path.to_ascii_lowercase();
        if path.contains("textworld-express") {
            Canonicaliser::TextWorldExpress
        } else if path.contains("babyai") {
            Canonicaliser::BabyAi
        } else {
            Canonicaliser::Basic
        }
    }

    /// Rewrites one observation; returns the state text and the admissible actions.
    /// `state` carries the episode's goal between turns: reset it at each episode start.
    pub fn apply(self, state: &mut CanonState, raw: &str) -> (String, Vec<String>) {
        let (without, actions) = split_actions(raw);
        let mut actions = actions.unwrap_or_default();
        if self == Canonicaliser::Raw {
            return (raw.to_string(), actions);
        }
        if self != Canonicaliser::Basic {
            // These games list their actions in an order that varies between visits.
            actions.sort();
            actions.dedup();
        }
        let mut sections = sections(&without);
        if matches!(self, Canonicaliser::TextWorldExpress | Canonicaliser::BabyAi) {
            sticky_goal(state, &mut sections);
        }
        if self == Canonicaliser::TextWorldExpress {
            twx_state(&mut sections);
        }
        let sep = if self == Canonicaliser::BabyAi { "\n" } else { "\n\n" };
        let text = sections.iter().map(|s| s.join("\n")).collect::<Vec<_>>().join(sep);
        (text, actions)
    }
}

impl fmt::Display for Canonicaliser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Canonicaliser {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Canonicaliser::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| format!("unknown canonicaliser {s:?} (expected raw, basic, textworld-express or babyai)"))
    }
}

/// What a canonicaliser remembers within one episode.
///
/// ```
/// let st = g2po_envs::agentgym::CanonState::default();
/// assert!(st.goal().is_none());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CanonState {
    goal: Option<String>,
}

impl CanonState {
    /// The goal line seen on this episode's first observation, if any.
    pub fn goal(&self) -> Option<&str> {
        self.goal.as_deref()
    }
}

/// Blank-line separated paragraphs, each as trimmed non-empty lines. A server that puts its
/// goal or status on a line of its own inside a paragraph gets it split off, so the other
/// steps can find it.
fn sections(text: &str) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = Vec::new();
    let mut cur: Vec<String> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
        } else if GOAL_PREFIXES.iter().any(|p| line.starts_with(p)) {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            out.push(vec![line.to_string()]);
        } else {
            cur.push(line.to_string());
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn is_goal(section: &[String]) -> bool {
    section.len() == 1 && GOAL_PREFIXES.iter().any(|p| section[0].starts_with(p))
}

/// Remembers the goal of the episode's first observation and puts it first on later ones.
fn sticky_goal(state: &mut CanonState, sections: &mut Vec<Vec<String>>) {
    match sections.iter().position(|s| is_goal(s)) {
        Some(i) => {
            let goal = sections.remove(i);
            state.goal = Some(goal[0].clone());
            sections.insert(0, goal);
        }
        None => {
            if let Some(g) = &state.goal {
                sections.insert(0, vec![g.clone()]);
            }
        }
    }
}

/// TextWorld-Express: drop the feedback paragraphs before the room description and the move
/// counter of the status line.
fn twx_state(sections: &mut Vec<Vec<String>>) {
    let start = usize::from(sections.first().is_some_and(|s| is_goal(s)));
    if let Some(look) = sections.iter().skip(start).position(|s| s[0].starts_with("You are in ")) {
        sections.drain(start..start + look);
    }
    for s in sections.iter_mut() {
        for line in s.iter_mut() {
            if let Some(cut) = line.find("Moves:")
                && line.starts_with("Score:")
            {
                line.truncate(cut);
                let kept = line.trim_end().to_string();
                *line = kept;
            }
        }
    }
}

/// The fraction of observations that also occur in another rollout: the overlap measure of
/// `docs/environments.md` (over the rollouts of one task; 0 when no state ever repeats across
/// rollouts, 1 when every observation is seen by at least two rollouts).
///
/// ```
/// use g2po_envs::agentgym::canon::shared_fraction;
/// let r = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
/// // "a" is in both rollouts, "b" and "c" in one each: 2 of 4 observations are shared.
/// assert_eq!(shared_fraction(&[r(&["a", "b"]), r(&["a", "c"])]), 0.5);
/// assert_eq!(shared_fraction(&[]), 0.0);
/// ```
pub fn shared_fraction(rollouts: &[Vec<String>]) -> f64 {
    use std::collections::HashMap;
    // text -> (last rollout it was seen in, number of distinct rollouts that saw it)
    let mut seen_in: HashMap<&str, (usize, usize)> = HashMap::new();
    for (i, r) in rollouts.iter().enumerate() {
        for t in r {
            let e = seen_in.entry(t.as_str()).or_insert((i, 1));
            if e.0 != i {
                *e = (i, e.1 + 1);
            }
        }
    }
    let total: usize = rollouts.iter().map(Vec::len).sum();
    if total == 0 {
        return 0.0;
    }
    let shared = rollouts.iter().flatten().filter(|t| seen_in[t.as_str()].1 >= 2).count();
    shared as f64 / total as f64
}

/// Splits the admissible-actions line off an observation.
///
/// Finds the last line that starts with `Available actions:` (or `Admissible actions:`,
/// `Valid actions:`; any case) and parses what follows: a JSON list, a Python list
/// (single-quoted strings), or comma-separated words. Returns the text without that line
/// and the actions, or the text unchanged and `None` when there is no such line.
///
/// ```
/// use g2po_envs::agentgym::split_actions;
/// let (t, a) = split_actions("You see a key.\nAvailable actions: ['pick up key', \"turn left\"]");
/// assert_eq!(t, "You see a key.");
/// assert_eq!(a.unwrap(), vec!["pick up key".to_string(), "turn left".to_string()]);
/// let (_, a) = split_actions("AVAILABLE ACTIONS: go to desk 1, look");
/// assert_eq!(a.unwrap(), vec!["go to desk 1".to_string(), "look".to_string()]);
/// assert_eq!(split_actions("no list here").1, None);
/// ```
pub fn split_actions(text: &str) -> (String, Option<Vec<String>>) {
    let lines: Vec<&str> = text.lines().collect();
    let found = lines.iter().enumerate().rev().find_map(|(i, line)| {
        let lower = line.trim_start().to_ascii_lowercase();
        ACTION_LABELS.iter().find(|l| lower.starts_with(*l)).map(|l| (i, line.trim_start()[l.len()..].trim()))
    });
    let Some((at, list)) = found else {
        return (text.to_string(), None);
    };
    let actions = parse_list(list);
    let mut rest: Vec<&str> = lines[..at].to_vec();
    rest.extend_from_slice(&lines[at + 1..]);
    (rest.join("\n").trim_end().to_string(), Some(actions))
}

fn parse_list(s: &str) -> Vec<String> {
    if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        if let Ok(v) = serde_json::from_str::<Vec<String>>(s) {
            return v;
        }
        return parse_quoted(inner);
    }
    s.split(',').map(str::trim).filter(|a| !a.is_empty()).map(str::to_string).collect()
}

/// Quoted strings separated by commas, either quote, backslash escapes (Python's repr).
fn parse_quoted(inner: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\'' && c != '"' {
            continue;
        }
        let mut item = String::new();
        while let Some(d) = chars.next() {
            match d {
                '\\' => {
                    if let Some(e) = chars.next() {
                        item.push(match e {
                            'n' => '\n',
                            't' => '\t',
                            other => other,
                        });
                    }
                }
                q if q == c => break,
                other => item.push(other),
            }
        }
        out.push(item);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWX_FIRST: &str = "Your task: find the coin.\n\nYou are in the kitchen. You see a stove. \nTo the North you see a closed door.\n\nInventory: empty\n\nScore: 0.00  Moves: 0\n\nAvailable actions: [\"move north\", \"look around\", \"open door to north\"]";
    const TWX_LATER: &str = "You open the door.\n\nYou are in the kitchen. You see a stove.\nTo the North you see a closed door.\n\nInventory: empty\n\nScore: 0.00  Moves: 4\n\nAvailable actions: [\"open door to north\", \"move north\", \"look around\"]";

    #[test]
    fn twx_revisit_reads_the_same() {
        let mut st = CanonState::default();
        let (a, acts_a) = Canonicaliser::TextWorldExpress.apply(&mut st, TWX_FIRST);
        let (b, acts_b) = Canonicaliser::TextWorldExpress.apply(&mut st, TWX_LATER);
        assert_eq!(a, b);
        assert_eq!(acts_a, acts_b);
        assert_eq!(
            a,
            "Your task: find the coin.\n\nYou are in the kitchen. You see a stove.\nTo the North you see a closed door.\n\nInventory: empty\n\nScore: 0.00"
        );
        // Without canonicalisation the two differ (counter, feedback, goal).
        let mut raw = CanonState::default();
        assert_ne!(Canonicaliser::Raw.apply(&mut raw, TWX_FIRST).0, Canonicaliser::Raw.apply(&mut raw, TWX_LATER).0);
        let mut basic = CanonState::default();
        assert_ne!(
            Canonicaliser::Basic.apply(&mut basic, TWX_FIRST).0,
            Canonicaliser::Basic.apply(&mut basic, TWX_LATER).0
        );
    }

    #[test]
    fn raw_keeps_text_and_order() {
        let mut st = CanonState::default();
        let (t, a) = Canonicaliser::Raw.apply(&mut st, TWX_LATER);
        assert_eq!(t, TWX_LATER);
        assert_eq!(a[0], "open door to north");
    }

    #[test]
    fn goal_of_one_episode_does_not_leak_into_the_next() {
        let mut st = CanonState::default();
        Canonicaliser::BabyAi.apply(&mut st, "Your goal: pick up the key\nx\nAvailable actions: [\"a\"]");
        let mut fresh = CanonState::default();
        let (t, _) = Canonicaliser::BabyAi.apply(&mut fresh, "x\nAvailable actions: [\"a\"]");
        assert_eq!(t, "x");
    }

    #[test]
    fn action_lists_in_every_spelling() {
        assert_eq!(parse_list(r#"["a \"b\"", "c"]"#), vec!["a \"b\"", "c"]);
        assert_eq!(parse_list(r"['it\'s', 'x']"), vec!["it's", "x"]);
        assert_eq!(parse_list("[]"), Vec::<String>::new());
        assert_eq!(parse_list("a, b ,, c"), vec!["a", "b", "c"]);
        let (t, a) = split_actions("x\nvalid actions: [\"go\"]\ntrailer");
        assert_eq!((t.as_str(), a.unwrap()), ("x\ntrailer", vec!["go".to_string()]));
    }
}
