//! The lost robot: a grid with a short direct route and a long way around.
//!
//! The default map (10 × 10, `S` start, `G` charging station, `#` wall):
//!
//! ```text
//!    0123456789
//! 0  ..........
//! 1  ...S......
//! 2  ..........
//! 3  ..........
//! 4  ..........
//! 5  ###.#####.
//! 6  ..........
//! 7  ..........
//! 8  ....G.....
//! 9  ..........
//! ```
//!
//! The wall across row 5 has a one-cell gap at column 3, straight below the start; the only
//! other passage is the open end at column 9. Through the gap the shortest path is 8 steps
//! (7 south, 1 east); around the wall's end it is 18 (6 east, 7 south, 5 west). So with a
//! turn cap below 18 only trajectories that find the gap can succeed, and every success
//! passes the same few states: that is what makes the graph estimators' credit assignment
//! visible here (SPEC §6).
//!
//! Choices: all four moves are always admissible; a move into a wall or off the grid is a
//! *valid* action that leaves the state unchanged (a self-loop, which G2PO handles without
//! a special case). Only texts other than `north/south/east/west` are invalid. The task seed
//! plays no part: there is one task (fixed start), which keeps the exact ground truth a
//! single table. The key of the cell at (row, column) is `row · width + column`.
//!
//! ```
//! use g2po_envs::{Environment, LostRobot};
//! let mut env = LostRobot::default();
//! let obs = env.reset(0);
//! assert!(obs.text.starts_with("You are at row 1, column 3."));
//! for a in ["south"; 7] { env.step(a); }
//! assert!(env.step("east").success);
//! ```

use crate::tabular::Tabular;
use crate::{EnvError, Environment, Observation, StepOutcome};

/// The default map (see the module docs).
///
/// ```
/// assert_eq!(g2po_envs::lost_robot::DEFAULT_MAP.lines().count(), 10);
/// ```
pub const DEFAULT_MAP: &str = "\
..........
...S......
..........
..........
..........
###.#####.
..........
..........
....G.....
..........";

const MOVES: [(&str, isize, isize); 4] = [("north", -1, 0), ("south", 1, 0), ("east", 0, 1), ("west", 0, -1)];

/// A grid world with walls, one start and one charging station (goal).
///
/// ```
/// use g2po_envs::{Environment, LostRobot};
/// let mut env = LostRobot::from_ascii("S.#\n..G").unwrap();
/// env.reset(0);
/// assert!(!env.step("dance").valid);
/// assert_eq!(env.step("east").observation.key, 1);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostRobot {
    width: usize,
    height: usize,
    /// `wall[r * width + c]`.
    wall: Vec<bool>,
    start: (usize, usize),
    goal: (usize, usize),
    /// Free cells (cell ids) in row-major order: state index → cell id.
    cells: Vec<usize>,
    /// Cell id → state index (`usize::MAX` for walls).
    index_of_cell: Vec<usize>,
    pos: (usize, usize),
}

impl Default for LostRobot {
    fn default() -> Self {
        // The default map is a constant checked by the tests, so parsing cannot fail.
        match LostRobot::from_ascii(DEFAULT_MAP) {
            Ok(env) => env,
            Err(e) => unreachable!("default map is valid: {e}"),
        }
    }
}

impl LostRobot {
    /// Parses a map: `.` free, `#` wall, `S` start, `G` goal (exactly one each); rows must
    /// have equal, non-zero length. Blank lines and surrounding spaces are ignored.
    ///
    /// ```
    /// use g2po_envs::LostRobot;
    /// assert!(LostRobot::from_ascii("S.G").is_ok());
    /// assert!(LostRobot::from_ascii("S..").is_err()); // no goal
    /// assert!(LostRobot::from_ascii("S.\n.G.").is_err()); // ragged
    /// ```
    pub fn from_ascii(map: &str) -> Result<Self, EnvError> {
        let rows: Vec<&str> = map.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        let height = rows.len();
        let width = rows.first().map_or(0, |r| r.chars().count());
        if height == 0 || width == 0 {
            return Err(EnvError::InvalidMap("the map is empty".into()));
        }
        let mut wall = Vec::with_capacity(width * height);
        let (mut start, mut goal) = (None, None);
        for (r, row) in rows.iter().enumerate() {
            if row.chars().count() != width {
                return Err(EnvError::InvalidMap(format!(
                    "row {r} has {} cells, expected {width}",
                    row.chars().count()
                )));
            }
            for (c, ch) in row.chars().enumerate() {
                match ch {
                    '.' => wall.push(false),
                    '#' => wall.push(true),
                    'S' | 'G' => {
                        let slot = if ch == 'S' { &mut start } else { &mut goal };
                        if slot.replace((r, c)).is_some() {
                            return Err(EnvError::InvalidMap(format!("more than one {ch}")));
                        }
                        wall.push(false);
                    }
                    other => {
                        return Err(EnvError::InvalidMap(format!(
                            "unexpected character {other:?} at row {r}, column {c}"
                        )));
                    }
                }
            }
        }
        let start = start.ok_or_else(|| EnvError::InvalidMap("no start S".into()))?;
        let goal = goal.ok_or_else(|| EnvError::InvalidMap("no goal G".into()))?;
        if start == goal {
            return Err(EnvError::InvalidMap("start and goal coincide".into()));
        }
        let cells: Vec<usize> = (0..width * height).filter(|&i| !wall[i]).collect();
        let mut index_of_cell = vec![usize::MAX; width * height];
        for (s, &cell) in cells.iter().enumerate() {
            index_of_cell[cell] = s;
        }
        Ok(LostRobot { width, height, wall, start, goal, cells, index_of_cell, pos: start })
    }

    /// Grid size as (height, width).
    ///
    /// ```
    /// assert_eq!(g2po_envs::LostRobot::default().size(), (10, 10));
    /// ```
    pub fn size(&self) -> (usize, usize) {
        (self.height, self.width)
    }

    /// Current position as (row, column).
    ///
    /// ```
    /// use g2po_envs::{Environment, LostRobot};
    /// let mut env = LostRobot::default();
    /// env.reset(0);
    /// env.step("east");
    /// assert_eq!(env.position(), (1, 4));
    /// ```
    pub fn position(&self) -> (usize, usize) {
        self.pos
    }

    /// The charging station as (row, column).
    ///
    /// ```
    /// assert_eq!(g2po_envs::LostRobot::default().goal(), (8, 4));
    /// ```
    pub fn goal(&self) -> (usize, usize) {
        self.goal
    }

    fn is_wall(&self, r: isize, c: isize) -> bool {
        r < 0
            || c < 0
            || r >= self.height as isize
            || c >= self.width as isize
            || self.wall[r as usize * self.width + c as usize]
    }

    fn moved(&self, (r, c): (usize, usize), m: usize) -> (usize, usize) {
        let (_, dr, dc) = MOVES[m];
        let (nr, nc) = (r as isize + dr, c as isize + dc);
        if self.is_wall(nr, nc) { (r, c) } else { (nr as usize, nc as usize) }
    }

    fn observe(&self) -> Observation {
        let (r, c) = self.pos;
        let blocked: Vec<&str> = MOVES
            .iter()
            .filter(|(_, dr, dc)| self.is_wall(r as isize + dr, c as isize + dc))
            .map(|(name, _, _)| *name)
            .collect();
        let walls = if blocked.is_empty() {
            "Nothing blocks your way.".to_string()
        } else {
            format!("Blocked: {}.", blocked.join(", "))
        };
        Observation {
            text: format!(
                "You are at row {r}, column {c}. The charging station is at row {}, column {}. {walls}",
                self.goal.0, self.goal.1
            ),
            key: (r * self.width + c) as u64,
            admissible: MOVES.iter().map(|(n, _, _)| n.to_string()).collect(),
        }
    }
}

impl Environment for LostRobot {
    fn name(&self) -> &str {
        "lost-robot"
    }

    fn reset(&mut self, _task_seed: u64) -> Observation {
        self.pos = self.start;
        self.observe()
    }

    fn step(&mut self, action: &str) -> StepOutcome {
        let at_goal = self.pos == self.goal;
        match MOVES.iter().position(|(n, _, _)| *n == action) {
            Some(m) if !at_goal => {
                self.pos = self.moved(self.pos, m);
                let success = self.pos == self.goal;
                StepOutcome {
                    observation: self.observe(),
                    reward: if success { 1.0 } else { 0.0 },
                    done: success,
                    valid: true,
                    success,
                }
            }
            _ => {
                StepOutcome { observation: self.observe(), reward: 0.0, done: at_goal, valid: false, success: at_goal }
            }
        }
    }
}

impl Tabular for LostRobot {
    fn num_states(&self) -> usize {
        self.cells.len()
    }

    fn state_index(&self) -> usize {
        self.index_of_cell[self.pos.0 * self.width + self.pos.1]
    }

    fn actions(&self, s: usize) -> Vec<String> {
        if s >= self.cells.len() {
            return Vec::new();
        }
        MOVES.iter().map(|(n, _, _)| n.to_string()).collect()
    }

    fn transition(&self, s: usize, action: usize) -> Result<(usize, bool), EnvError> {
        let cell = *self.cells.get(s).ok_or(EnvError::UnknownKey(s as u64))?;
        if action >= MOVES.len() {
            return Err(EnvError::UnknownAction { action: format!("#{action}"), state: s });
        }
        let (r, c) = self.moved((cell / self.width, cell % self.width), action);
        Ok((self.index_of_cell[r * self.width + c], (r, c) == self.goal))
    }

    fn start_state(&self, _task_seed: u64) -> usize {
        self.index_of_cell[self.start.0 * self.width + self.start.1]
    }

    fn observation_key(&self, s: usize) -> u64 {
        self.cells.get(s).map_or(u64::MAX, |&c| c as u64)
    }

    fn is_goal(&self, s: usize) -> bool {
        self.cells.get(s).is_some_and(|&c| c == self.goal.0 * self.width + self.goal.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tabular::distances_to_goal;

    #[test]
    fn default_map_route_lengths() {
        let env = LostRobot::default();
        let start = env.start_state(0);
        assert_eq!(distances_to_goal(&env)[start], Some(8));
        // Close the gap: the only way left is around the wall's end.
        let closed = DEFAULT_MAP.replace("###.#####.", "#########.");
        let env2 = LostRobot::from_ascii(&closed).unwrap();
        assert_eq!(distances_to_goal(&env2)[env2.start_state(0)], Some(18));
        // Start and goal are far apart on the grid.
        let (s, g) = (env.start, env.goal);
        assert!(s.0.abs_diff(g.0) + s.1.abs_diff(g.1) >= 8);
    }

    #[test]
    fn scripted_direct_route_and_wall_bump() {
        let mut env = LostRobot::default();
        let obs = env.reset(42);
        assert_eq!(obs.admissible, ["north", "south", "east", "west"]);
        // Bumping the wall from (4, 4) is valid and changes nothing.
        env.step("east");
        for _ in 0..3 {
            assert!(!env.step("south").done);
        }
        assert_eq!(env.position(), (4, 4));
        let before = env.observe();
        assert!(before.text.contains("Blocked: south."));
        let bump = env.step("south");
        assert!(bump.valid && !bump.done);
        assert_eq!(bump.observation, before);
        env.step("west");
        let mut last = None;
        for _ in 0..4 {
            last = Some(env.step("south"));
        }
        assert_eq!(env.position(), (8, 3));
        assert!(!last.unwrap().done);
        let out = env.step("east");
        assert!(out.valid && out.done && out.success && out.reward == 1.0);
        assert!(!env.step("north").valid);
        assert_eq!(env.position(), (8, 4));
    }

    #[test]
    fn invalid_action_unchanged_and_deterministic() {
        let run = || {
            let mut env = LostRobot::default();
            let mut v = vec![env.reset(5)];
            for a in ["north", "north", "west", "up", "south", "east"] {
                let o = env.step(a);
                v.push(o.observation.clone());
                if a == "up" {
                    assert!(!o.valid);
                    assert_eq!(o.observation, v[v.len() - 2]);
                }
            }
            v
        };
        assert_eq!(run(), run());
        // Edges are walls: north twice from row 1 stops at row 0.
        let mut env = LostRobot::default();
        env.reset(0);
        env.step("north");
        assert_eq!(env.step("north").observation.key, 3);
    }

    #[test]
    fn tabular_matches_env() {
        let env = LostRobot::default();
        for s in 0..env.num_states() {
            let key = env.observation_key(s);
            let cell = key as usize;
            for (a, name) in env.actions(s).iter().enumerate() {
                let mut e = env.clone();
                e.pos = (cell / 10, cell % 10);
                if e.pos == e.goal {
                    continue;
                }
                let out = e.step(name);
                let (next, succ) = env.transition(s, a).unwrap();
                assert_eq!(e.state_index(), next);
                assert_eq!(out.observation.key, env.observation_key(next));
                assert_eq!(out.success, succ);
            }
        }
        assert_eq!(env.num_states(), 100 - 8);
        assert!(env.transition(999, 0).is_err());
        assert!(env.transition(0, 4).is_err());
        assert!(env.actions(999).is_empty());
    }

    #[test]
    fn map_errors() {
        for bad in ["", "S.\nG", "SxG", "S.S.G", "S.G.G", "S..", "..G"] {
            assert!(matches!(LostRobot::from_ascii(bad), Err(EnvError::InvalidMap(_))), "{bad:?}");
        }
    }
}
