//! Household: a small ALFWorld-like text world.
//!
//! Three rooms hold eight receptacles: the kitchen (fridge, microwave, sinkbasin,
//! countertop), the livingroom (sofa, diningtable) and the bedroom (desk, drawer). The fridge
//! and the drawer open and close; their contents are visible only while open. The agent
//! starts in the hallway and moves with `go to X` straight to a receptacle, as in ALFWorld.
//!
//! A task (drawn from the task seed with `ChaCha8Rng`) picks a task type, a few objects
//! (default 4, each of a distinct kind, so the goal names a unique object), places them on
//! storage receptacles (fridge, countertop, sofa, diningtable, desk, drawer) and names a
//! target receptacle other than the goal object's start. Task types:
//!
//! | type | goal sentence | optimal steps |
//! |---|---|---|
//! | pick-and-place | `put a book on the desk.` | 4–6 |
//! | heat-then-place | `put a hot apple on the diningtable.` | 6–8 |
//! | cool-then-place | `put a cold mug in the drawer.` | 6–8 |
//! | clean-then-place | `put a clean plate on the sofa.` | 6–8 |
//!
//! (go to the object, open its container if closed, take it, go to the appliance and use it,
//! go to the target, open it if closed, put.) Commands: `go to X`, `open X`, `close X`,
//! `take O from X`, `put O in X` / `put O on X` (the preposition the receptacle takes),
//! `heat O with microwave`, `cool O with fridge`, `clean O with sinkbasin`, `look`,
//! `inventory`. `look` and `inventory` are valid no-ops (self-loops). A command outside the
//! admissible list returns the text `Nothing happens.` with the state unchanged.
//!
//! Smaller worlds: [`Household::with_options`] restricts the drawn task types and the
//! rooms (a missing room's receptacles do not exist), and [`Household::small`] is the
//! 3-object, pick-and-place, livingroom+bedroom world of the estimator ablation. Random
//! exploration is what a from-scratch policy starts with, and it solves under 1% of the
//! default tasks in 40 turns; the small world keeps the same mechanics (walking, an
//! openable drawer, taking and placing) at about 13%.
//!
//! Why the observation text is a function of the state alone (no action feedback, no turn
//! counter): graph estimators fuse identical observations into nodes, so the same state must
//! read the same in every rollout of a task. The text is a partial view (closed containers
//! hide their contents), so different true states may share a text; the `key` is a 64-bit
//! FNV-1a hash of the task seed and the full state tuple (agent place, every object's place
//! and hot/cold/clean flags, open containers), which distinguishes them.
//!
//! ```
//! use g2po_envs::{Environment, Household};
//! let mut env = Household::default();
//! let obs = env.reset(3);
//! assert!(obs.text.starts_with("You are in the hallway."));
//! let plan = env.optimal_plan().unwrap();
//! let mut last = None;
//! for a in &plan { last = Some(env.step(a)); }
//! assert!(last.unwrap().success);
//! ```

use std::collections::{HashMap, VecDeque};
use std::fmt;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::{EnvError, Environment, Observation, StepOutcome, fnv1a64};

/// (name, room, openable, preposition).
const RECEPTACLES: [(&str, &str, bool, &str); 8] = [
    ("fridge", "kitchen", true, "in"),
    ("microwave", "kitchen", false, "in"),
    ("sinkbasin", "kitchen", false, "in"),
    ("countertop", "kitchen", false, "on"),
    ("sofa", "livingroom", false, "on"),
    ("diningtable", "livingroom", false, "on"),
    ("desk", "bedroom", false, "on"),
    ("drawer", "bedroom", true, "in"),
];
const FRIDGE: usize = 0;
const MICROWAVE: usize = 1;
const SINKBASIN: usize = 2;
/// Where objects start and goals point: not the appliances.
const STORAGE: [usize; 6] = [0, 3, 4, 5, 6, 7];

/// (name, heatable, coolable, cleanable).
const CATALOGUE: [(&str, bool, bool, bool); 12] = [
    ("apple", true, true, true),
    ("potato", true, true, true),
    ("egg", true, true, true),
    ("tomato", true, true, true),
    ("mug", true, true, true),
    ("cup", true, true, true),
    ("plate", false, true, true),
    ("bowl", false, true, true),
    ("book", false, false, false),
    ("pen", false, false, false),
    ("keychain", false, false, false),
    ("cellphone", false, false, false),
];

const HOT: u8 = 1;
const COLD: u8 = 2;
const CLEAN: u8 = 4;
/// Agent place "hallway" (receptacles are 0..8).
const HALLWAY: u8 = u8::MAX;
/// Object place "in the agent's hands".
const HELD: u8 = u8::MAX;
/// The three rooms, in the order of the hallway description.
pub const ROOMS: [&str; 3] = ["kitchen", "livingroom", "bedroom"];
/// Task types of [`Household::small`].
const SMALL_TASK_TYPES: [TaskType; 1] = [TaskType::PickAndPlace];
/// Rooms of [`Household::small`].
const SMALL_ROOMS: [&str; 2] = ["livingroom", "bedroom"];
/// Largest number of objects in a task.
pub const MAX_OBJECTS: usize = 6;

/// The four ALFWorld-style task types.
///
/// ```
/// use g2po_envs::TaskType;
/// assert_eq!(TaskType::Heat.to_string(), "heat-then-place");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskType {
    /// Take the object and put it on the target.
    PickAndPlace,
    /// Heat it with the microwave first.
    Heat,
    /// Cool it with the fridge first.
    Cool,
    /// Clean it with the sinkbasin first.
    Clean,
}

impl TaskType {
    /// All task types, in the order the task generator draws from.
    ///
    /// ```
    /// assert_eq!(g2po_envs::TaskType::ALL.len(), 4);
    /// ```
    pub const ALL: [TaskType; 4] = [TaskType::PickAndPlace, TaskType::Heat, TaskType::Cool, TaskType::Clean];

    /// The state flag the goal object must carry (0 for pick-and-place).
    fn flag(self) -> u8 {
        match self {
            TaskType::PickAndPlace => 0,
            TaskType::Heat => HOT,
            TaskType::Cool => COLD,
            TaskType::Clean => CLEAN,
        }
    }

    fn supports(self, kind: usize) -> bool {
        let (_, h, c, k) = CATALOGUE[kind];
        match self {
            TaskType::PickAndPlace => true,
            TaskType::Heat => h,
            TaskType::Cool => c,
            TaskType::Clean => k,
        }
    }
}

impl fmt::Display for TaskType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TaskType::PickAndPlace => "pick-and-place",
            TaskType::Heat => "heat-then-place",
            TaskType::Cool => "cool-then-place",
            TaskType::Clean => "clean-then-place",
        })
    }
}

/// The full world state; `Copy` and hashable so the planner can search it cheaply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct State {
    /// Receptacle index, or `HALLWAY`.
    at: u8,
    /// Per object slot: receptacle index, or `HELD`.
    place: [u8; MAX_OBJECTS],
    /// Per object slot: `HOT | COLD | CLEAN` bits.
    flags: [u8; MAX_OBJECTS],
    /// Bit `r` set: receptacle `r` is open.
    open: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    GoTo(usize),
    Open(usize),
    Close(usize),
    Take(usize, usize),
    Put(usize, usize),
    Heat(usize),
    Cool(usize),
    Clean(usize),
    Look,
    Inventory,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Task {
    seed: u64,
    task_type: TaskType,
    /// Catalogue index per object slot.
    kinds: Vec<usize>,
    /// Slot of the goal object.
    goal_obj: usize,
    target: usize,
}

/// An ALFWorld-like household (see the module docs).
///
/// ```
/// use g2po_envs::{Environment, Household};
/// let mut env = Household::new(3).unwrap();
/// env.reset(1);
/// let out = env.step("fly to the moon");
/// assert!(!out.valid);
/// assert_eq!(out.observation.text, "Nothing happens.");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Household {
    num_objects: usize,
    /// Task types the generator draws from (all four by default).
    task_types: Vec<TaskType>,
    /// Bit `i` set: room `ROOMS[i]` and its receptacles exist (all three by default).
    rooms: u8,
    /// What [`Environment::name`] reports (`household-small` for [`Household::small`]).
    name: &'static str,
    task: Task,
    state: State,
}

impl Default for Household {
    fn default() -> Self {
        let (task, state) = Self::make_task(0, 4, &TaskType::ALL, ALL_ROOMS);
        Household {
            num_objects: 4,
            task_types: TaskType::ALL.to_vec(),
            rooms: ALL_ROOMS,
            name: "household",
            task,
            state,
        }
    }
}

impl Household {
    /// A household whose tasks hold `num_objects` objects (3 to [`MAX_OBJECTS`]).
    ///
    /// ```
    /// use g2po_envs::Household;
    /// assert!(Household::new(5).is_ok());
    /// assert!(Household::new(2).is_err());
    /// assert!(Household::new(7).is_err());
    /// ```
    pub fn new(num_objects: usize) -> Result<Self, EnvError> {
        if !(3..=MAX_OBJECTS).contains(&num_objects) {
            return Err(EnvError::InvalidParameter {
                name: "num_objects",
                reason: format!("must be between 3 and {MAX_OBJECTS}, got {num_objects}"),
            });
        }
        Self::with_task_types(num_objects, &TaskType::ALL)
    }

    /// A household with `num_objects` objects whose tasks are drawn only from `task_types`
    /// (each listed at most once; the order is the generator's draw order).
    ///
    /// Why: with all four types and 4 objects a from-scratch policy almost never succeeds
    /// within a small RL budget, so the estimator ablation uses a smaller world (3 objects,
    /// see [`Household::small`]) where the comparison is not all zeros. With
    /// [`TaskType::ALL`] the tasks are exactly those of [`Household::new`].
    ///
    /// ```
    /// use g2po_envs::{Environment, Household, TaskType};
    /// let mut env = Household::with_task_types(3, &[TaskType::PickAndPlace]).unwrap();
    /// assert!((0..20).all(|s| { env.reset(s); env.task_type() == TaskType::PickAndPlace }));
    /// assert!(Household::with_task_types(3, &[]).is_err());
    /// assert!(Household::with_task_types(3, &[TaskType::Heat, TaskType::Heat]).is_err());
    /// ```
    pub fn with_task_types(num_objects: usize, task_types: &[TaskType]) -> Result<Self, EnvError> {
        Self::with_options(num_objects, task_types, &ROOMS)
    }

    /// A household with `num_objects` objects, tasks drawn from `task_types`, and only the
    /// listed `rooms` (names from [`ROOMS`]; the receptacles of the other rooms do not exist,
    /// so they are neither places nor `go to` targets). Heat, cool and clean tasks need the
    /// kitchen (its appliances). With all three rooms this is [`Household::with_task_types`].
    ///
    /// Why: every receptacle adds a `go to` command to every state, and a from-scratch
    /// policy explores by near-random walks, so fewer receptacles make first successes far
    /// more frequent.
    ///
    /// ```
    /// use g2po_envs::{Environment, Household, TaskType};
    /// let mut env = Household::with_options(3, &[TaskType::PickAndPlace], &["kitchen", "livingroom"]).unwrap();
    /// let obs = env.reset(2);
    /// assert!(!obs.admissible.iter().any(|a| a.contains("desk") || a.contains("drawer")));
    /// assert!(!obs.text.contains("bedroom"));
    /// assert!(Household::with_options(3, &[TaskType::Heat], &["livingroom"]).is_err());
    /// assert!(Household::with_options(3, &[TaskType::PickAndPlace], &["garage"]).is_err());
    /// ```
    pub fn with_options(num_objects: usize, task_types: &[TaskType], rooms: &[&str]) -> Result<Self, EnvError> {
        let mut mask = 0u8;
        for room in rooms {
            let i = ROOMS.iter().position(|r| r == room).ok_or_else(|| EnvError::InvalidParameter {
                name: "rooms",
                reason: format!("unknown room {room:?}; rooms are {ROOMS:?}"),
            })?;
            mask |= 1 << i;
        }
        if mask == 0 {
            return Err(EnvError::InvalidParameter { name: "rooms", reason: "needs at least one room".into() });
        }
        if mask & 1 == 0 && task_types.iter().any(|&t| t != TaskType::PickAndPlace) {
            return Err(EnvError::InvalidParameter {
                name: "rooms",
                reason: "heat, cool and clean tasks need the kitchen".into(),
            });
        }
        if !(3..=MAX_OBJECTS).contains(&num_objects) {
            return Err(EnvError::InvalidParameter {
                name: "num_objects",
                reason: format!("must be between 3 and {MAX_OBJECTS}, got {num_objects}"),
            });
        }
        let distinct = task_types.iter().collect::<std::collections::HashSet<_>>().len();
        if task_types.is_empty() || distinct != task_types.len() {
            return Err(EnvError::InvalidParameter {
                name: "task_types",
                reason: format!("must be a non-empty list without repeats, got {task_types:?}"),
            });
        }
        let (task, state) = Self::make_task(0, num_objects, task_types, mask);
        Ok(Household { num_objects, task_types: task_types.to_vec(), rooms: mask, name: "household", task, state })
    }

    /// The smaller household of the estimator ablation (`EnvKind::HouseholdSmall`):
    /// 3 objects, pick-and-place tasks only, livingroom and bedroom only (sofa,
    /// diningtable, desk and the openable drawer). A uniformly random walk solves about 13%
    /// of its tasks within 40 turns, against under 1% for the default household, so a
    /// from-scratch policy sees successes from the first iteration.
    ///
    /// ```
    /// use g2po_envs::{Household, TaskType};
    /// use g2po_envs::Environment;
    /// let env = Household::small();
    /// assert_eq!(env.task_types(), &[TaskType::PickAndPlace]);
    /// assert_eq!(env.name(), "household-small");
    /// ```
    pub fn small() -> Self {
        let env = Self::with_options(3, &SMALL_TASK_TYPES, &SMALL_ROOMS).expect("a valid constant configuration");
        Household { name: "household-small", ..env }
    }

    /// The task types this household draws from.
    ///
    /// ```
    /// assert_eq!(g2po_envs::Household::default().task_types().len(), 4);
    /// ```
    pub fn task_types(&self) -> &[TaskType] {
        &self.task_types
    }

    /// The current task's type.
    ///
    /// ```
    /// use g2po_envs::{Environment, Household, TaskType};
    /// let mut env = Household::default();
    /// let kinds: std::collections::HashSet<TaskType> =
    ///     (0..40).map(|s| { env.reset(s); env.task_type() }).collect();
    /// assert_eq!(kinds.len(), 4);
    /// ```
    pub fn task_type(&self) -> TaskType {
        self.task.task_type
    }

    /// The current goal sentence, e.g. `put a hot apple on the diningtable.`
    ///
    /// ```
    /// use g2po_envs::{Environment, Household};
    /// let mut env = Household::default();
    /// let obs = env.reset(9);
    /// assert!(obs.text.ends_with(&format!("Your task is to: {}", env.goal_text())));
    /// ```
    pub fn goal_text(&self) -> String {
        let t = &self.task;
        let adj = match t.task_type {
            TaskType::PickAndPlace => "",
            TaskType::Heat => "hot ",
            TaskType::Cool => "cold ",
            TaskType::Clean => "clean ",
        };
        let phrase = format!("{adj}{}", CATALOGUE[t.kinds[t.goal_obj]].0);
        let (name, _, _, prep) = RECEPTACLES[t.target];
        format!("put {} {prep} the {name}.", with_article(&phrase))
    }

    /// Whether the goal holds in the current state.
    ///
    /// ```
    /// use g2po_envs::{Environment, Household};
    /// let mut env = Household::default();
    /// env.reset(0);
    /// assert!(!env.goal_reached());
    /// ```
    pub fn goal_reached(&self) -> bool {
        self.goal_holds(&self.state)
    }

    /// A shortest admissible command sequence from the current state to success, found by
    /// breadth-first search over the true states (`None` if the goal is unreachable, which
    /// cannot happen in generated tasks). Useful as an expert or a reference length.
    ///
    /// ```
    /// use g2po_envs::{Environment, Household};
    /// let mut env = Household::default();
    /// env.reset(11);
    /// let plan = env.optimal_plan().unwrap();
    /// assert!((4..=8).contains(&plan.len()));
    /// ```
    pub fn optimal_plan(&self) -> Option<Vec<String>> {
        if self.goal_holds(&self.state) {
            return Some(Vec::new());
        }
        let mut parent: HashMap<State, (State, Act)> = HashMap::new();
        let mut queue = VecDeque::from([self.state]);
        parent.insert(self.state, (self.state, Act::Look));
        while let Some(s) = queue.pop_front() {
            for (_, act) in self.commands(&s) {
                let next = self.apply(&s, act);
                if parent.contains_key(&next) {
                    continue;
                }
                parent.insert(next, (s, act));
                if self.goal_holds(&next) {
                    let mut acts = Vec::new();
                    let mut cur = next;
                    while cur != self.state {
                        let (prev, a) = parent[&cur];
                        acts.push(self.command_text(a));
                        cur = prev;
                    }
                    acts.reverse();
                    return Some(acts);
                }
                queue.push_back(next);
            }
        }
        None
    }

    /// Draws the task and its start state from the seed: kinds, then layout, then target.
    fn make_task(seed: u64, num_objects: usize, task_types: &[TaskType], rooms: u8) -> (Task, State) {
        let storage: Vec<usize> = STORAGE.iter().copied().filter(|&r| room_active(rooms, r)).collect();
        let mut task = Self::draw_task(seed, num_objects, task_types);
        let state = Self::initial_state(seed, &task, &storage);
        task.target = Self::draw_target(seed, state.place[task.goal_obj], &storage);
        (task, state)
    }

    fn draw_task(seed: u64, num_objects: usize, task_types: &[TaskType]) -> Task {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let task_type = task_types[rng.random_range(0..task_types.len())];
        let candidates: Vec<usize> = (0..CATALOGUE.len()).filter(|&k| task_type.supports(k)).collect();
        let goal_kind = candidates[rng.random_range(0..candidates.len())];
        let mut others: Vec<usize> = (0..CATALOGUE.len()).filter(|&k| k != goal_kind).collect();
        let mut kinds = vec![goal_kind];
        for _ in 1..num_objects {
            let i = rng.random_range(0..others.len());
            kinds.push(others.swap_remove(i));
        }
        // Shuffle slots so the goal object is not always listed first.
        for i in (1..kinds.len()).rev() {
            let j = rng.random_range(0..=i);
            kinds.swap(i, j);
        }
        let goal_obj = kinds.iter().position(|&k| k == goal_kind).unwrap_or(0);
        Task {
            seed,
            task_type,
            kinds,
            goal_obj,
            target: 0, // drawn by make_task once the objects are placed
        }
    }

    fn initial_state(seed: u64, task: &Task, storage: &[usize]) -> State {
        // A second stream for the layout so that the task draw above stays independent of it.
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15);
        let mut place = [0u8; MAX_OBJECTS];
        for p in place.iter_mut().take(task.kinds.len()) {
            *p = storage[rng.random_range(0..storage.len())] as u8;
        }
        State { at: HALLWAY, place, flags: [0; MAX_OBJECTS], open: 0 }
    }

    fn draw_target(seed: u64, start_place: u8, storage: &[usize]) -> usize {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5851_f42d_4c95_7f2d);
        let choices: Vec<usize> = storage.iter().copied().filter(|&r| r as u8 != start_place).collect();
        choices[rng.random_range(0..choices.len())]
    }

    fn goal_holds(&self, s: &State) -> bool {
        let o = self.task.goal_obj;
        let flag = self.task.task_type.flag();
        s.place[o] as usize == self.task.target && s.flags[o] & flag == flag
    }

    fn held(&self, s: &State) -> Option<usize> {
        (0..self.task.kinds.len()).find(|&o| s.place[o] == HELD)
    }

    fn visible(s: &State, r: usize) -> bool {
        !RECEPTACLES[r].2 || s.open & (1 << r) != 0
    }

    fn obj_name(&self, o: usize) -> &'static str {
        CATALOGUE[self.task.kinds[o]].0
    }

    fn command_text(&self, a: Act) -> String {
        let rn = |r: usize| RECEPTACLES[r].0;
        match a {
            Act::GoTo(r) => format!("go to {}", rn(r)),
            Act::Open(r) => format!("open {}", rn(r)),
            Act::Close(r) => format!("close {}", rn(r)),
            Act::Take(o, r) => format!("take {} from {}", self.obj_name(o), rn(r)),
            Act::Put(o, r) => format!("put {} {} {}", self.obj_name(o), RECEPTACLES[r].3, rn(r)),
            Act::Heat(o) => format!("heat {} with microwave", self.obj_name(o)),
            Act::Cool(o) => format!("cool {} with fridge", self.obj_name(o)),
            Act::Clean(o) => format!("clean {} with sinkbasin", self.obj_name(o)),
            Act::Look => "look".into(),
            Act::Inventory => "inventory".into(),
        }
    }

    /// Admissible commands in a fixed, state-determined order.
    fn commands(&self, s: &State) -> Vec<(String, Act)> {
        let mut acts = Vec::new();
        for r in 0..RECEPTACLES.len() {
            if s.at as usize != r && room_active(self.rooms, r) {
                acts.push(Act::GoTo(r));
            }
        }
        let held = self.held(s);
        if s.at != HALLWAY {
            let r = s.at as usize;
            if RECEPTACLES[r].2 {
                acts.push(if Self::visible(s, r) { Act::Close(r) } else { Act::Open(r) });
            }
            if Self::visible(s, r) {
                match held {
                    None => {
                        for o in 0..self.task.kinds.len() {
                            if s.place[o] as usize == r {
                                acts.push(Act::Take(o, r));
                            }
                        }
                    }
                    Some(o) => acts.push(Act::Put(o, r)),
                }
            }
            if let Some(o) = held {
                let (_, h, c, k) = CATALOGUE[self.task.kinds[o]];
                match r {
                    MICROWAVE if h => acts.push(Act::Heat(o)),
                    FRIDGE if c => acts.push(Act::Cool(o)),
                    SINKBASIN if k => acts.push(Act::Clean(o)),
                    _ => {}
                }
            }
        }
        acts.push(Act::Look);
        acts.push(Act::Inventory);
        acts.into_iter().map(|a| (self.command_text(a), a)).collect()
    }

    fn apply(&self, s: &State, a: Act) -> State {
        let mut n = *s;
        match a {
            Act::GoTo(r) => n.at = r as u8,
            Act::Open(r) => n.open |= 1 << r,
            Act::Close(r) => n.open &= !(1 << r),
            Act::Take(o, _) => n.place[o] = HELD,
            Act::Put(o, r) => n.place[o] = r as u8,
            Act::Heat(o) => n.flags[o] = (n.flags[o] | HOT) & !COLD,
            Act::Cool(o) => n.flags[o] = (n.flags[o] | COLD) & !HOT,
            Act::Clean(o) => n.flags[o] |= CLEAN,
            Act::Look | Act::Inventory => {}
        }
        n
    }

    fn describe_obj(&self, s: &State, o: usize) -> String {
        let f = s.flags[o];
        let mut words = String::new();
        if f & HOT != 0 {
            words.push_str("hot ");
        }
        if f & COLD != 0 {
            words.push_str("cold ");
        }
        if f & CLEAN != 0 {
            words.push_str("clean ");
        }
        words.push_str(self.obj_name(o));
        with_article(&words)
    }

    fn text(&self, s: &State) -> String {
        let mut t = String::new();
        if s.at == HALLWAY {
            t.push_str("You are in the hallway.");
            for (_, room) in ROOMS.iter().enumerate().filter(|&(i, _)| self.rooms & (1 << i) != 0) {
                let names: Vec<String> =
                    RECEPTACLES.iter().filter(|r| r.1 == *room).map(|r| with_article(r.0)).collect();
                t.push_str(&format!(" The {room} has {}.", join_list(&names)));
            }
        } else {
            let r = s.at as usize;
            let (name, room, _, prep) = RECEPTACLES[r];
            t.push_str(&format!("You are in the {room}, at the {name}."));
            if Self::visible(s, r) {
                let here: Vec<String> = (0..self.task.kinds.len())
                    .filter(|&o| s.place[o] as usize == r)
                    .map(|o| self.describe_obj(s, o))
                    .collect();
                let list = if here.is_empty() { "nothing".to_string() } else { join_list(&here) };
                let cap = if prep == "in" { "In" } else { "On" };
                t.push_str(&format!(" {cap} the {name} you see {list}."));
            } else {
                t.push_str(&format!(" The {name} is closed."));
            }
        }
        let carrying = self.held(s).map_or_else(|| "nothing".to_string(), |o| self.describe_obj(s, o));
        t.push_str(&format!(" You are carrying {carrying}."));
        t.push_str(&format!(" Your task is to: {}", self.goal_text()));
        t
    }

    fn key(&self, s: &State) -> u64 {
        let mut bytes = Vec::with_capacity(8 + 3 + 2 * MAX_OBJECTS);
        bytes.extend_from_slice(&self.task.seed.to_le_bytes());
        bytes.push(self.num_objects as u8);
        bytes.push(s.at);
        bytes.extend_from_slice(&s.place);
        bytes.extend_from_slice(&s.flags);
        bytes.push(s.open);
        fnv1a64(&bytes)
    }

    fn observe(&self) -> Observation {
        Observation {
            text: self.text(&self.state),
            key: self.key(&self.state),
            admissible: self.commands(&self.state).into_iter().map(|(t, _)| t).collect(),
        }
    }
}

/// Every room present.
const ALL_ROOMS: u8 = 0b111;

/// Whether receptacle `r`'s room is in the `rooms` mask.
fn room_active(rooms: u8, r: usize) -> bool {
    ROOMS.iter().position(|&x| x == RECEPTACLES[r].1).is_some_and(|i| rooms & (1 << i) != 0)
}

fn with_article(phrase: &str) -> String {
    let vowel = phrase.chars().next().is_some_and(|c| "aeiou".contains(c));
    format!("{} {phrase}", if vowel { "an" } else { "a" })
}

fn join_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

impl Environment for Household {
    fn name(&self) -> &str {
        self.name
    }

    fn reset(&mut self, task_seed: u64) -> Observation {
        let (task, state) = Self::make_task(task_seed, self.num_objects, &self.task_types, self.rooms);
        self.task = task;
        self.state = state;
        self.observe()
    }

    fn step(&mut self, action: &str) -> StepOutcome {
        let done_before = self.goal_holds(&self.state);
        let act = if done_before {
            None
        } else {
            self.commands(&self.state).into_iter().find(|(t, _)| t == action).map(|(_, a)| a)
        };
        match act {
            Some(a) => {
                self.state = self.apply(&self.state, a);
                let success = self.goal_holds(&self.state);
                StepOutcome {
                    observation: self.observe(),
                    reward: if success { 1.0 } else { 0.0 },
                    done: success,
                    valid: true,
                    success,
                }
            }
            None => {
                let mut observation = self.observe();
                observation.text = "Nothing happens.".into();
                StepOutcome { observation, reward: 0.0, done: done_before, valid: false, success: done_before }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn seeds_of(tt: TaskType, count: usize) -> Vec<u64> {
        let mut env = Household::default();
        (0..1000u64)
            .filter(|&s| {
                env.reset(s);
                env.task_type() == tt
            })
            .take(count)
            .collect()
    }

    /// A hand-written expert: the textbook ALFWorld plan for each task type.
    fn scripted_plan(env: &Household) -> Vec<String> {
        let t = &env.task;
        let o = t.goal_obj;
        let obj = env.obj_name(o);
        let from = env.state.place[o] as usize;
        let mut plan = vec![format!("go to {}", RECEPTACLES[from].0)];
        let mut at = from;
        if RECEPTACLES[from].2 {
            plan.push(format!("open {}", RECEPTACLES[from].0));
        }
        plan.push(format!("take {obj} from {}", RECEPTACLES[from].0));
        let verb = match t.task_type {
            TaskType::PickAndPlace => None,
            TaskType::Heat => Some(("heat", "microwave")),
            TaskType::Cool => Some(("cool", "fridge")),
            TaskType::Clean => Some(("clean", "sinkbasin")),
        };
        if let Some((v, app)) = verb {
            let app_idx = RECEPTACLES.iter().position(|r| r.0 == app).unwrap();
            if at != app_idx {
                plan.push(format!("go to {app}"));
                at = app_idx;
            }
            plan.push(format!("{v} {obj} with {app}"));
        }
        let (tn, _, openable, prep) = RECEPTACLES[t.target];
        if at != t.target {
            plan.push(format!("go to {tn}"));
        }
        if openable {
            plan.push(format!("open {tn}"));
        }
        plan.push(format!("put {obj} {prep} {tn}"));
        plan
    }

    #[test]
    fn scripted_plan_solves_each_task_type_optimally() {
        for tt in TaskType::ALL {
            let seeds = seeds_of(tt, 6);
            assert_eq!(seeds.len(), 6, "{tt}");
            for seed in seeds {
                let mut env = Household::default();
                env.reset(seed);
                let plan = scripted_plan(&env);
                let bfs = env.optimal_plan().unwrap();
                // The script is optimal (every step is needed), so BFS must agree on length.
                assert_eq!(plan.len(), bfs.len(), "{tt} seed {seed}: {plan:?} vs {bfs:?}");
                assert!((4..=8).contains(&plan.len()));
                let n = plan.len();
                for (i, a) in plan.iter().enumerate() {
                    let out = env.step(a);
                    assert!(out.valid, "{tt} seed {seed}: {a:?} invalid");
                    assert_eq!(out.done, i + 1 == n, "{a}");
                    assert_eq!(out.success, i + 1 == n);
                    assert_eq!(out.reward, if i + 1 == n { 1.0 } else { 0.0 });
                }
                let mut env2 = Household::default();
                env2.reset(seed);
                for a in &bfs {
                    env2.step(a);
                }
                assert!(env2.goal_reached());
            }
        }
    }

    #[test]
    fn property_is_needed_before_placing() {
        let seed = seeds_of(TaskType::Heat, 1)[0];
        let mut env = Household::default();
        env.reset(seed);
        let plan = scripted_plan(&env);
        // Skip the appliance: go to object, (open), take, then straight to target and put.
        let skip: Vec<&String> = plan.iter().filter(|a| !a.starts_with("heat") && *a != "go to microwave").collect();
        let mut last = None;
        for a in skip {
            last = Some(env.step(a));
            assert!(last.as_ref().unwrap().valid, "{a}");
        }
        let last = last.unwrap();
        assert!(!last.done && !last.success);
        assert!(!env.goal_reached());
    }

    #[test]
    fn invalid_action_changes_nothing() {
        let mut env = Household::default();
        let obs = env.reset(17);
        for bad in ["", "go to garage", "take apple from fridge", "Look", "put"] {
            let out = env.step(bad);
            assert!(!out.valid && !out.done && out.reward == 0.0);
            assert_eq!(out.observation.text, "Nothing happens.");
            assert_eq!(out.observation.key, obs.key);
            assert_eq!(out.observation.admissible, obs.admissible);
        }
        // The state is really unchanged: `look` shows the start text again.
        let look = env.step("look");
        assert!(look.valid);
        assert_eq!(look.observation, obs);
    }

    #[test]
    fn every_admissible_command_is_valid_and_text_is_a_function_of_state() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut text_of_key: HashMap<u64, String> = HashMap::new();
        let mut shared_non_start = 0;
        for task in 0..6u64 {
            let mut env = Household::new(5).unwrap();
            let mut seen_before: HashSet<u64> = HashSet::new();
            for _rollout in 0..4 {
                let mut obs = env.reset(task);
                let start = obs.key;
                let mut seen_now = HashSet::new();
                for _ in 0..25 {
                    if obs.key != start && seen_before.contains(&obs.key) {
                        shared_non_start += 1;
                    }
                    seen_now.insert(obs.key);
                    let prev = text_of_key.insert(obs.key, obs.text.clone());
                    assert!(prev.is_none_or(|p| p == obs.text));
                    assert!(!obs.text.chars().any(|c| c.is_ascii_digit()), "{}", obs.text);
                    // Each admissible command is valid from this state.
                    for a in &obs.admissible {
                        let mut probe = env.clone();
                        assert!(probe.step(a).valid, "{a}");
                    }
                    let a = obs.admissible[rng.random_range(0..obs.admissible.len())].clone();
                    let out = env.step(&a);
                    if out.done {
                        break;
                    }
                    obs = out.observation;
                }
                seen_before.extend(seen_now);
            }
        }
        // Rollouts of one task meet in the same states beyond the start: overlap exists.
        assert!(shared_non_start > 10, "{shared_non_start}");
        assert!(text_of_key.len() > 20);
    }

    #[test]
    fn deterministic_and_repeating_across_rollouts() {
        let run = |seed: u64| {
            let mut env = Household::default();
            let mut v = vec![env.reset(seed)];
            let plan = env.optimal_plan().unwrap();
            for a in plan.iter().chain(["look".to_string(), "x".to_string()].iter()) {
                v.push(env.step(a).observation);
            }
            v
        };
        assert_eq!(run(8), run(8));
        assert_ne!(run(8)[0], run(9)[0]);
        // Reset on the same instance repeats the start exactly (no counters).
        let mut env = Household::default();
        let a = env.reset(4);
        env.step("go to desk");
        assert_eq!(env.reset(4), a);
    }

    #[test]
    fn tasks_vary_with_seed() {
        let mut env = Household::default();
        let mut goals = HashSet::new();
        let mut starts = HashSet::new();
        let mut lens = HashSet::new();
        for s in 0..60 {
            let obs = env.reset(s);
            goals.insert(env.goal_text());
            starts.insert(obs.key);
            lens.insert(env.optimal_plan().unwrap().len());
        }
        assert!(goals.len() > 30);
        assert_eq!(starts.len(), 60);
        assert!(lens.len() >= 3 && lens.iter().all(|l| (4..=8).contains(l)));
    }

    #[test]
    fn closed_containers_hide_contents() {
        let mut env = Household::default();
        let seed = (0..200)
            .find(|&s| {
                env.reset(s);
                env.state.place[env.task.goal_obj] as usize == FRIDGE
            })
            .unwrap();
        env.reset(seed);
        let obj = env.obj_name(env.task.goal_obj);
        let at = env.step("go to fridge").observation;
        assert!(at.text.contains("The fridge is closed."));
        assert!(!at.admissible.iter().any(|a| a.starts_with("take")));
        let open = env.step("open fridge").observation;
        assert!(open.text.contains(obj), "{}", open.text);
        assert!(open.admissible.contains(&format!("take {obj} from fridge")));
        assert!(open.admissible.contains(&"close fridge".to_string()));
    }

    #[test]
    fn helpers() {
        assert_eq!(with_article("apple"), "an apple");
        assert_eq!(with_article("hot egg"), "a hot egg");
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(join_list(&v(&["a", "b", "c"])), "a, b and c");
        assert_eq!(join_list(&v(&["a"])), "a");
    }

    #[test]
    fn all_task_types_and_rooms_reproduce_the_default_tasks() {
        let mut a = Household::default();
        let mut b = Household::with_options(4, &TaskType::ALL, &ROOMS).unwrap();
        for seed in 0..30 {
            let (oa, ob) = (a.reset(seed), b.reset(seed));
            assert_eq!((oa.text, oa.key, oa.admissible), (ob.text, ob.key, ob.admissible));
        }
    }

    #[test]
    fn small_household_draws_only_its_types_and_rooms_and_stays_solvable() {
        let mut env = Household::small();
        let banned = ["desk", "drawer", "sofa", "diningtable"];
        let mut targets = HashSet::new();
        for seed in 0..60 {
            let obs = env.reset(seed);
            assert_eq!(env.task_type(), TaskType::PickAndPlace);
            assert!(!obs.text.contains("kitchen") && !obs.text.contains("fridge"), "{}", obs.text);
            assert!(obs.admissible.iter().all(|a| !a.contains("fridge") && !a.contains("countertop")));
            targets.insert(banned.iter().position(|b| env.goal_text().contains(b)).unwrap());
            let plan = env.optimal_plan().unwrap();
            assert!((4..=6).contains(&plan.len()), "{plan:?}");
            let mut last = None;
            for a in &plan {
                let out = env.step(a);
                assert!(out.valid, "{a}");
                last = Some(out);
            }
            assert!(last.unwrap().success);
        }
        assert_eq!(targets.len(), 4, "every remaining storage receptacle is a target");
    }

    #[test]
    fn bad_options_are_typed_errors() {
        let err = |r: Result<Household, EnvError>| matches!(r, Err(EnvError::InvalidParameter { .. }));
        assert!(err(Household::with_options(3, &[], &ROOMS)));
        assert!(err(Household::with_options(3, &[TaskType::Cool], &["bedroom"])));
        assert!(err(Household::with_options(3, &[TaskType::PickAndPlace], &[])));
        assert!(err(Household::with_options(3, &[TaskType::PickAndPlace], &["attic"])));
        assert!(err(Household::with_options(9, &[TaskType::PickAndPlace], &ROOMS)));
        assert!(Household::with_options(3, &[TaskType::Clean], &["kitchen"]).is_ok());
    }
}
