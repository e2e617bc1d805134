//! Rollout data: one row per agent step, stored column by column.
//!
//! A [`RolloutBatch`] is the only input of the estimators. It is built once,
//! through [`BatchBuilder`] (from Rust values), [`RolloutBatch::from_columns`]
//! (from a trainer's parallel arrays) or [`crate::io`] (from JSON/JSONL), and
//! every check happens there: afterwards the estimators may assume finite
//! rewards, steps 0..T-1 in order for each trajectory, and one group per
//! trajectory. Alongside the columns the builder derives the two indices every
//! estimator needs: the next row of each row's trajectory and the rows of each
//! task group (a CSR layout), so estimation itself never hashes an id.
//!
//! Rows may interleave trajectories (step-major order from a vectorised
//! environment is fine) as long as each trajectory's steps appear in order.

use ahash::AHashMap;

use crate::error::{Error, Result};

/// Largest reward magnitude accepted, for `reward`, `episode_reward` and the
/// sum of `|reward|` over a trajectory (which bounds every discounted return).
///
/// The results are `f32` (largest finite value about 3.4e38): with rewards, the
/// invalid penalty and fixed terminal values within this bound and the step
/// weight within [`crate::estimators::MAX_ABS_STEP_WEIGHT`], every estimator's
/// output stays below about 1e37, so it is always finite.
pub const MAX_ABS_REWARD: f64 = 1e30;

/// Sentinel in [`RolloutBatch::next_rows`] for the last step of a trajectory.
pub const NO_NEXT: u32 = u32::MAX;

/// The anchor of a step: the text the agent saw before acting, or a state key
/// the caller computed.
///
/// ```
/// use g2po::Anchor;
/// let a = Anchor::Text("You are in the kitchen.");
/// let b = Anchor::Key(42);
/// assert_ne!(a, b);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anchor<'a> {
    /// Observation text; hashed (after canonicalisation) into a state key.
    Text(&'a str),
    /// A precomputed 64-bit state key, used as is.
    Key(u64),
}

/// One step of one trajectory, as given to [`BatchBuilder::push_step`].
///
/// ```
/// use g2po::{Anchor, StepRow};
/// let row = StepRow {
///     group: "task-7", traj: "task-7/0", step: 0, anchor: Anchor::Text("start"),
///     reward: 0.0, episode_reward: 10.0, valid: true, response_len: 12,
/// };
/// assert_eq!(row.step, 0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepRow<'a> {
    /// Task group id (the peers' "uid"): the N rollouts of one task share it.
    pub group: &'a str,
    /// Trajectory id, unique across the batch.
    pub traj: &'a str,
    /// 0-based step index within the trajectory.
    pub step: u32,
    /// What identifies the state the agent acted in.
    pub anchor: Anchor<'a>,
    /// Env reward of this step (the episode reward on the last step, else 0
    /// in the peers' setting). Only GiGPO's discounted returns read it.
    pub reward: f64,
    /// Episode reward of the trajectory (10 success, 0 failure in the peers).
    pub episode_reward: f64,
    /// Whether the action parsed as a valid action.
    pub valid: bool,
    /// Number of response tokens the policy generated for this step.
    pub response_len: u32,
}

/// One step inside a trajectory, for [`BatchBuilder::push_trajectory`].
///
/// ```
/// use g2po::{Anchor, Step};
/// let s = Step { anchor: Anchor::Key(7), reward: 0.0, valid: true, response_len: 3 };
/// assert!(s.valid);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step<'a> {
    /// What identifies the state the agent acted in.
    pub anchor: Anchor<'a>,
    /// Env reward of this step.
    pub reward: f64,
    /// Whether the action was valid.
    pub valid: bool,
    /// Response tokens generated for this step.
    pub response_len: u32,
}

#[derive(Debug, Clone)]
enum Anchors {
    Text { data: String, ends: Vec<usize> },
    Keys(Vec<u64>),
}

#[derive(Debug, Clone, Copy)]
struct Mark {
    rows: usize,
    trajs: usize,
    groups: usize,
}

#[derive(Debug, Clone, Copy)]
struct TrajState {
    group: u32,
    episode_reward: f64,
    next_step: u32,
    first_row: u32,
    last_row: u32,
    /// Sum of `|reward|` over the trajectory's rows so far.
    abs_reward_sum: f64,
}

/// Which of a row's ids are known to equal the previous row's
/// ([`BatchBuilder::push_step_with`]).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct SameIds {
    pub group: bool,
    pub traj: bool,
}

/// Incremental, validating constructor of a [`RolloutBatch`].
///
/// ```
/// use g2po::{Anchor, RolloutBatch, Step};
/// let mut b = RolloutBatch::builder();
/// let steps = [
///     Step { anchor: Anchor::Text("hall"), reward: 0.0, valid: true, response_len: 4 },
///     Step { anchor: Anchor::Text("door"), reward: 10.0, valid: true, response_len: 2 },
/// ];
/// b.push_trajectory("task", "t0", 10.0, steps)?;
/// let batch = b.build()?;
/// assert_eq!(batch.len(), 2);
/// # Ok::<(), g2po::Error>(())
/// ```
#[derive(Debug, Default)]
pub struct BatchBuilder {
    group_ids: Vec<String>,
    group_lookup: AHashMap<String, u32>,
    traj_ids: Vec<String>,
    traj_lookup: AHashMap<String, u32>,
    trajs: Vec<TrajState>,
    group: Vec<u32>,
    traj: Vec<u32>,
    step: Vec<u32>,
    anchors: Option<Anchors>,
    reward: Vec<f64>,
    episode_reward: Vec<f64>,
    valid: Vec<bool>,
    response_len: Vec<u32>,
    next_row: Vec<u32>,
    /// Rows and anchor-text bytes to reserve when the anchors column starts.
    capacity: (usize, usize),
    /// The previous row's group and trajectory: rows usually come a
    /// trajectory at a time, and comparing the id with the previous one is
    /// cheaper than hashing it.
    previous: Option<(u32, u32)>,
}

impl BatchBuilder {
    /// A builder with room for `rows` rows whose anchor texts total
    /// `text_bytes` bytes, so that filling it does not reallocate (a reader
    /// that knows the sizes saves copying every column as it grows).
    ///
    /// ```
    /// let b = g2po::rollout::BatchBuilder::with_capacity(1000, 270_000);
    /// assert!(b.is_empty());
    /// ```
    pub fn with_capacity(rows: usize, text_bytes: usize) -> Self {
        let mut b = Self::default();
        for column in [&mut b.group, &mut b.traj, &mut b.step, &mut b.response_len, &mut b.next_row] {
            column.reserve(rows);
        }
        b.reward.reserve(rows);
        b.episode_reward.reserve(rows);
        b.valid.reserve(rows);
        b.capacity = (rows, text_bytes);
        b
    }

    /// Number of rows pushed so far.
    ///
    /// ```
    /// assert_eq!(g2po::RolloutBatch::builder().len(), 0);
    /// ```
    pub fn len(&self) -> usize {
        self.group.len()
    }

    /// Whether no row was pushed yet.
    ///
    /// ```
    /// assert!(g2po::RolloutBatch::builder().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.group.is_empty()
    }

    /// Appends one row, checking it against the rows before it. On error the
    /// builder is left unchanged.
    ///
    /// ```
    /// use g2po::{Anchor, Error, RolloutBatch, StepRow};
    /// let mut b = RolloutBatch::builder();
    /// let row = StepRow { group: "g", traj: "t", step: 0, anchor: Anchor::Key(1),
    ///     reward: f64::NAN, episode_reward: 0.0, valid: true, response_len: 1 };
    /// assert!(matches!(b.push_step(row), Err(Error::NonFinite { row: 0, field: "reward", .. })));
    /// ```
    pub fn push_step(&mut self, row: StepRow<'_>) -> Result<()> {
        self.push_step_with(row, SameIds::default())
    }

    /// [`Self::push_step`] for a reader that already knows whether the row's
    /// group and trajectory ids equal the previous row's (it compared them
    /// while the bytes were in its cache), so this pass need not touch them.
    pub(crate) fn push_step_with(&mut self, row: StepRow<'_>, same: SameIds) -> Result<()> {
        let index = self.len();
        for (field, value) in [("reward", row.reward), ("episode_reward", row.episode_reward)] {
            if !value.is_finite() {
                return Err(Error::NonFinite { row: index, field, value });
            }
            if value.abs() > MAX_ABS_REWARD {
                return Err(Error::RewardOutOfRange { row: index, field, value });
            }
        }
        match (&self.anchors, row.anchor) {
            (Some(Anchors::Text { .. }), Anchor::Key(_)) | (Some(Anchors::Keys(_)), Anchor::Text(_)) => {
                return Err(Error::MixedAnchors { row: index });
            }
            _ => {}
        }
        if index >= NO_NEXT as usize {
            return Err(Error::InvalidParameter {
                name: "rows",
                reason: format!("a batch holds at most {} rows", NO_NEXT - 1),
            });
        }
        let (same_group, same_traj) = match self.previous {
            Some((g, t)) => (
                (same.group || self.group_ids[g as usize] == row.group).then_some(g),
                (same.traj || self.traj_ids[t as usize] == row.traj).then_some(t),
            ),
            None => (None, None),
        };
        let group = match same_group.or_else(|| self.group_lookup.get(row.group).copied()) {
            Some(g) => g,
            None => self.group_ids.len() as u32,
        };
        let traj = match same_traj.or_else(|| self.traj_lookup.get(row.traj).copied()) {
            Some(t) => {
                let state = self.trajs[t as usize];
                if state.group != group {
                    return Err(Error::TrajectoryInTwoGroups {
                        row: index,
                        traj: row.traj.to_owned(),
                        first_group: self.group_ids[state.group as usize].clone(),
                        group: row.group.to_owned(),
                    });
                }
                if row.step < state.next_step {
                    return Err(Error::DuplicateStep {
                        row: index,
                        traj: row.traj.to_owned(),
                        step: row.step,
                        first_row: self.row_of_step(state.first_row, row.step),
                    });
                }
                if row.step != state.next_step {
                    return Err(Error::StepOutOfOrder {
                        row: index,
                        traj: row.traj.to_owned(),
                        expected: state.next_step,
                        found: row.step,
                    });
                }
                let abs_reward_sum = state.abs_reward_sum + row.reward.abs();
                if abs_reward_sum > MAX_ABS_REWARD {
                    return Err(Error::ReturnOutOfRange { row: index, traj: row.traj.to_owned(), sum: abs_reward_sum });
                }
                if state.episode_reward != row.episode_reward {
                    return Err(Error::EpisodeRewardMismatch {
                        row: index,
                        traj: row.traj.to_owned(),
                        expected: state.episode_reward,
                        found: row.episode_reward,
                    });
                }
                Some(t)
            }
            None => {
                if row.step != 0 {
                    return Err(Error::StepOutOfOrder {
                        row: index,
                        traj: row.traj.to_owned(),
                        expected: 0,
                        found: row.step,
                    });
                }
                None
            }
        };

        // All checks passed: from here on nothing fails, so the builder never
        // holds half a row.
        if group as usize == self.group_ids.len() {
            self.group_ids.push(row.group.to_owned());
            self.group_lookup.insert(row.group.to_owned(), group);
        }
        let row_u32 = index as u32;
        let traj = match traj {
            Some(t) => {
                let state = &mut self.trajs[t as usize];
                self.next_row[state.last_row as usize] = row_u32;
                state.last_row = row_u32;
                state.next_step += 1;
                state.abs_reward_sum += row.reward.abs();
                t
            }
            None => {
                let t = self.traj_ids.len() as u32;
                self.traj_ids.push(row.traj.to_owned());
                self.traj_lookup.insert(row.traj.to_owned(), t);
                self.trajs.push(TrajState {
                    group,
                    episode_reward: row.episode_reward,
                    next_step: 1,
                    first_row: row_u32,
                    last_row: row_u32,
                    abs_reward_sum: row.reward.abs(),
                });
                t
            }
        };
        match (&mut self.anchors, row.anchor) {
            (Some(Anchors::Text { data, ends }), Anchor::Text(text)) => {
                data.push_str(text);
                ends.push(data.len());
            }
            (Some(Anchors::Keys(keys)), Anchor::Key(key)) => keys.push(key),
            (None, Anchor::Text(text)) => {
                let (rows, bytes) = self.capacity;
                let mut data = String::with_capacity(bytes.max(text.len()));
                data.push_str(text);
                let mut ends = Vec::with_capacity(rows.max(1));
                ends.push(text.len());
                self.anchors = Some(Anchors::Text { data, ends })
            }
            (None, Anchor::Key(key)) => {
                let mut keys = Vec::with_capacity(self.capacity.0.max(1));
                keys.push(key);
                self.anchors = Some(Anchors::Keys(keys))
            }
            _ => unreachable!("mixed anchors were rejected above"),
        }
        self.previous = Some((group, traj));
        self.group.push(group);
        self.traj.push(traj);
        self.step.push(row.step);
        self.reward.push(row.reward);
        self.episode_reward.push(row.episode_reward);
        self.valid.push(row.valid);
        self.response_len.push(row.response_len);
        self.next_row.push(NO_NEXT);
        Ok(())
    }

    /// Appends a whole trajectory, its steps numbered 0, 1, ... in order.
    /// An empty trajectory is an error (it has no rows to carry its reward).
    /// All or nothing: if any step is rejected, none of them is kept.
    ///
    /// ```
    /// use g2po::{Anchor, Error, RolloutBatch, Step};
    /// let mut b = RolloutBatch::builder();
    /// let err = b.push_trajectory("g", "t", 0.0, Vec::<Step>::new()).unwrap_err();
    /// assert!(matches!(err, Error::EmptyTrajectory { .. }));
    /// ```
    pub fn push_trajectory<'a>(
        &mut self,
        group: &str,
        traj: &str,
        episode_reward: f64,
        steps: impl IntoIterator<Item = Step<'a>>,
    ) -> Result<()> {
        let mark = self.mark();
        let mut count = 0u32;
        for step in steps {
            self.push_step_or_rollback(
                mark,
                StepRow {
                    group,
                    traj,
                    step: count,
                    anchor: step.anchor,
                    reward: step.reward,
                    episode_reward,
                    valid: step.valid,
                    response_len: step.response_len,
                },
            )?;
            count += 1;
        }
        if count == 0 {
            return Err(Error::EmptyTrajectory { group: group.to_owned(), traj: traj.to_owned() });
        }
        Ok(())
    }

    /// Finishes the batch and derives its group layout.
    ///
    /// ```
    /// use g2po::{Error, RolloutBatch};
    /// assert!(matches!(RolloutBatch::builder().build(), Err(Error::EmptyBatch)));
    /// ```
    pub fn build(self) -> Result<RolloutBatch> {
        let Some(anchors) = self.anchors else {
            return Err(Error::EmptyBatch);
        };
        let num_groups = self.group_ids.len();
        let mut group_offsets = vec![0usize; num_groups + 1];
        for &g in &self.group {
            group_offsets[g as usize + 1] += 1;
        }
        for g in 0..num_groups {
            group_offsets[g + 1] += group_offsets[g];
        }
        let mut cursor = group_offsets.clone();
        let mut group_rows = vec![0u32; self.group.len()];
        for (row, &g) in self.group.iter().enumerate() {
            group_rows[cursor[g as usize]] = row as u32;
            cursor[g as usize] += 1;
        }
        let groups_contiguous = group_rows.iter().enumerate().all(|(i, &r)| i == r as usize);
        let traj_len = self.trajs.iter().map(|t| t.next_step).collect();
        let traj_episode_reward = self.trajs.iter().map(|t| t.episode_reward).collect();
        let traj_group = self.trajs.iter().map(|t| t.group).collect();
        Ok(RolloutBatch {
            group_ids: self.group_ids,
            traj_ids: self.traj_ids,
            group: self.group,
            traj: self.traj,
            step: self.step,
            anchors,
            reward: self.reward,
            episode_reward: self.episode_reward,
            valid: self.valid,
            response_len: self.response_len,
            next_row: self.next_row,
            traj_len,
            traj_episode_reward,
            traj_group,
            group_offsets,
            group_rows,
            groups_contiguous,
        })
    }

    fn mark(&self) -> Mark {
        Mark { rows: self.len(), trajs: self.trajs.len(), groups: self.group_ids.len() }
    }

    fn push_step_or_rollback(&mut self, mark: Mark, row: StepRow<'_>) -> Result<()> {
        let result = self.push_step(row);
        if result.is_err() {
            self.rollback(mark);
        }
        result
    }

    /// Undoes every row, trajectory and group added since `mark`. Only used
    /// for whole new trajectories, whose rows link to nothing before the mark.
    fn rollback(&mut self, mark: Mark) {
        for traj in self.traj_ids.drain(mark.trajs..) {
            self.traj_lookup.remove(&traj);
        }
        self.trajs.truncate(mark.trajs);
        for group in self.group_ids.drain(mark.groups..) {
            self.group_lookup.remove(&group);
        }
        let rows = mark.rows;
        for column in [&mut self.group, &mut self.traj, &mut self.step, &mut self.response_len, &mut self.next_row] {
            column.truncate(rows);
        }
        self.reward.truncate(rows);
        self.episode_reward.truncate(rows);
        self.valid.truncate(rows);
        match &mut self.anchors {
            Some(Anchors::Text { data, ends }) => {
                ends.truncate(rows);
                data.truncate(ends.last().copied().unwrap_or(0));
            }
            Some(Anchors::Keys(keys)) => keys.truncate(rows),
            None => {}
        }
        if rows == 0 {
            self.anchors = None;
        }
        self.previous = rows.checked_sub(1).map(|last| (self.group[last], self.traj[last]));
    }

    fn row_of_step(&self, first_row: u32, step: u32) -> usize {
        let mut row = first_row;
        for _ in 0..step {
            row = self.next_row[row as usize];
        }
        row as usize
    }
}

/// Parallel arrays of a trainer's batch, for [`RolloutBatch::from_columns`].
/// Ids are numbers here; they become the batch's string ids.
///
/// ```
/// use g2po::rollout::{AnchorColumn, Columns};
/// let cols = Columns {
///     group: &[0, 0], traj: &[0, 1], step: &[0, 0],
///     anchor: AnchorColumn::Keys(&[5, 5]), reward: &[10.0, 0.0],
///     episode_reward: &[10.0, 0.0], valid: &[true, true], response_len: &[3, 4],
/// };
/// assert_eq!(cols.group.len(), 2);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Columns<'a> {
    /// Task group id per row.
    pub group: &'a [u64],
    /// Trajectory id per row (unique across the batch).
    pub traj: &'a [u64],
    /// Step index per row.
    pub step: &'a [u32],
    /// Anchor per row.
    pub anchor: AnchorColumn<'a>,
    /// Env reward per row.
    pub reward: &'a [f64],
    /// Episode reward per row.
    pub episode_reward: &'a [f64],
    /// Action validity per row.
    pub valid: &'a [bool],
    /// Response token count per row.
    pub response_len: &'a [u32],
}

/// The anchor column of [`Columns`].
///
/// ```
/// use g2po::rollout::AnchorColumn;
/// let texts = ["a", "b"];
/// assert!(matches!(AnchorColumn::Text(&texts), AnchorColumn::Text(_)));
/// ```
#[derive(Debug, Clone, Copy)]
pub enum AnchorColumn<'a> {
    /// Observation texts.
    Text(&'a [&'a str]),
    /// Precomputed state keys.
    Keys(&'a [u64]),
}

/// Anchors of [`DenseColumns`], owned.
///
/// ```
/// use g2po::rollout::DenseAnchors;
/// let texts = DenseAnchors::texts(["hall", "door"]);
/// assert!(matches!(texts, DenseAnchors::Text { ref ends, .. } if ends == &[4, 8]));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub enum DenseAnchors {
    /// Precomputed state keys, one per row.
    Keys(Vec<u64>),
    /// Observation texts, concatenated: row `r` is `data[ends[r - 1]..ends[r]]`
    /// (`ends[-1]` = 0). Each end must fall on a character boundary.
    Text {
        /// Every row's text, one after the other.
        data: String,
        /// Exclusive end offset of each row's text in `data`.
        ends: Vec<usize>,
    },
}

impl DenseAnchors {
    /// Concatenates texts into the [`DenseAnchors::Text`] layout.
    ///
    /// ```
    /// let a = g2po::rollout::DenseAnchors::texts(vec!["a".to_string()]);
    /// assert_eq!(a, g2po::rollout::DenseAnchors::Text { data: "a".into(), ends: vec![1] });
    /// ```
    pub fn texts<S: AsRef<str>>(texts: impl IntoIterator<Item = S>) -> Self {
        let mut data = String::new();
        let mut ends = Vec::new();
        for t in texts {
            data.push_str(t.as_ref());
            ends.push(data.len());
        }
        Self::Text { data, ends }
    }

    fn len(&self) -> usize {
        match self {
            Self::Keys(k) => k.len(),
            Self::Text { ends, .. } => ends.len(),
        }
    }
}

/// A trainer's batch with ids already factorised into dense indices, for
/// [`RolloutBatch::from_dense`]: the bindings' entry point, which hashes no id
/// and moves every column into the batch without copying it.
///
/// `group[r]` indexes `group_ids` and `traj[r]` indexes `traj_ids` (the
/// labels only serve error messages and exports). Every label must be used.
///
/// ```
/// use g2po::rollout::{DenseAnchors, DenseColumns};
/// let cols = DenseColumns {
///     group_ids: vec!["task".into()],
///     traj_ids: vec!["a".into(), "b".into()],
///     group: vec![0, 0, 0],
///     traj: vec![0, 0, 1],
///     step: None, // row order within each trajectory gives the steps
///     anchors: DenseAnchors::Keys(vec![1, 2, 1]),
///     reward: vec![0.0, 10.0, 0.0],
///     episode_reward: vec![10.0, 10.0, 0.0],
///     valid: vec![true; 3],
///     response_len: vec![4, 4, 4],
/// };
/// let batch = g2po::RolloutBatch::from_dense(cols)?;
/// assert_eq!(batch.steps(), &[0, 1, 0]);
/// # Ok::<(), g2po::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct DenseColumns {
    /// Label of each dense group index.
    pub group_ids: Vec<String>,
    /// Label of each dense trajectory index.
    pub traj_ids: Vec<String>,
    /// Dense group index per row.
    pub group: Vec<u32>,
    /// Dense trajectory index per row.
    pub traj: Vec<u32>,
    /// Step index per row; `None` numbers each trajectory's rows 0, 1, ... in
    /// row order (what the reference trainers assume).
    pub step: Option<Vec<u32>>,
    /// Anchor per row.
    pub anchors: DenseAnchors,
    /// Env reward per row.
    pub reward: Vec<f64>,
    /// Episode reward per row.
    pub episode_reward: Vec<f64>,
    /// Action validity per row.
    pub valid: Vec<bool>,
    /// Response token count per row.
    pub response_len: Vec<u32>,
}

/// A validated, columnar batch of rollout rows (see the module docs).
///
/// ```
/// use g2po::{Anchor, RolloutBatch, Step};
/// let mut b = RolloutBatch::builder();
/// b.push_trajectory("g", "a", 10.0, [Step { anchor: Anchor::Key(1), reward: 10.0, valid: true, response_len: 2 }])?;
/// b.push_trajectory("g", "b", 0.0, [Step { anchor: Anchor::Key(1), reward: 0.0, valid: false, response_len: 3 }])?;
/// let batch = b.build()?;
/// assert_eq!((batch.len(), batch.num_groups(), batch.num_trajectories()), (2, 1, 2));
/// assert_eq!(batch.group_rows(0), &[0, 1]);
/// # Ok::<(), g2po::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct RolloutBatch {
    group_ids: Vec<String>,
    traj_ids: Vec<String>,
    group: Vec<u32>,
    traj: Vec<u32>,
    step: Vec<u32>,
    anchors: Anchors,
    reward: Vec<f64>,
    episode_reward: Vec<f64>,
    valid: Vec<bool>,
    response_len: Vec<u32>,
    next_row: Vec<u32>,
    traj_len: Vec<u32>,
    traj_episode_reward: Vec<f64>,
    traj_group: Vec<u32>,
    group_offsets: Vec<usize>,
    group_rows: Vec<u32>,
    groups_contiguous: bool,
}

impl RolloutBatch {
    /// A new, empty builder.
    ///
    /// ```
    /// let b = g2po::RolloutBatch::builder();
    /// assert!(b.is_empty());
    /// ```
    pub fn builder() -> BatchBuilder {
        BatchBuilder::default()
    }

    /// Builds a batch from parallel arrays, checking their lengths first.
    ///
    /// ```
    /// use g2po::{Error, RolloutBatch};
    /// use g2po::rollout::{AnchorColumn, Columns};
    /// let cols = Columns {
    ///     group: &[0, 0], traj: &[0, 1], step: &[0, 0],
    ///     anchor: AnchorColumn::Keys(&[5]), reward: &[10.0, 0.0],
    ///     episode_reward: &[10.0, 0.0], valid: &[true, true], response_len: &[3, 4],
    /// };
    /// let err = RolloutBatch::from_columns(cols).unwrap_err();
    /// assert!(matches!(err, Error::LengthMismatch { field: "anchor", expected: 2, found: 1 }));
    /// ```
    pub fn from_columns(columns: Columns<'_>) -> Result<Self> {
        let rows = columns.group.len();
        let anchor_len = match columns.anchor {
            AnchorColumn::Text(t) => t.len(),
            AnchorColumn::Keys(k) => k.len(),
        };
        for (field, len) in [
            ("traj", columns.traj.len()),
            ("step", columns.step.len()),
            ("anchor", anchor_len),
            ("reward", columns.reward.len()),
            ("episode_reward", columns.episode_reward.len()),
            ("valid", columns.valid.len()),
            ("response_len", columns.response_len.len()),
        ] {
            if len != rows {
                return Err(Error::LengthMismatch { field, expected: rows, found: len });
            }
        }
        let mut builder = BatchBuilder::default();
        let (mut group_buf, mut traj_buf) = (String::new(), String::new());
        for row in 0..rows {
            use std::fmt::Write;
            group_buf.clear();
            traj_buf.clear();
            let _ = write!(group_buf, "{}", columns.group[row]);
            let _ = write!(traj_buf, "{}", columns.traj[row]);
            builder.push_step(StepRow {
                group: &group_buf,
                traj: &traj_buf,
                step: columns.step[row],
                anchor: match columns.anchor {
                    AnchorColumn::Text(t) => Anchor::Text(t[row]),
                    AnchorColumn::Keys(k) => Anchor::Key(k[row]),
                },
                reward: columns.reward[row],
                episode_reward: columns.episode_reward[row],
                valid: columns.valid[row],
                response_len: columns.response_len[row],
            })?;
        }
        builder.build()
    }

    /// Builds a batch from pre-factorised columns (see [`DenseColumns`]) in
    /// one linear pass, with the same checks as [`BatchBuilder::push_step`]
    /// (plus index ranges), each error naming the first offending row.
    ///
    /// ```
    /// use g2po::{Error, RolloutBatch};
    /// use g2po::rollout::{DenseAnchors, DenseColumns};
    /// let cols = DenseColumns {
    ///     group_ids: vec!["g".into()], traj_ids: vec!["t".into()],
    ///     group: vec![0, 0], traj: vec![0, 0], step: Some(vec![0, 2]),
    ///     anchors: DenseAnchors::Keys(vec![1, 2]), reward: vec![0.0; 2],
    ///     episode_reward: vec![0.0; 2], valid: vec![true; 2], response_len: vec![1; 2],
    /// };
    /// let err = RolloutBatch::from_dense(cols).unwrap_err();
    /// assert!(matches!(err, Error::StepOutOfOrder { row: 1, expected: 1, found: 2, .. }));
    /// ```
    pub fn from_dense(columns: DenseColumns) -> Result<Self> {
        let DenseColumns {
            group_ids,
            traj_ids,
            group,
            traj,
            step,
            anchors,
            reward,
            episode_reward,
            valid,
            response_len,
        } = columns;
        let rows = group.len();
        if rows == 0 {
            return Err(Error::EmptyBatch);
        }
        for (field, len) in [
            ("traj", traj.len()),
            ("step", step.as_ref().map_or(rows, Vec::len)),
            ("anchor", anchors.len()),
            ("reward", reward.len()),
            ("episode_reward", episode_reward.len()),
            ("valid", valid.len()),
            ("response_len", response_len.len()),
        ] {
            if len != rows {
                return Err(Error::LengthMismatch { field, expected: rows, found: len });
            }
        }
        if rows >= NO_NEXT as usize {
            return Err(Error::InvalidParameter {
                name: "rows",
                reason: format!("a batch holds at most {} rows", NO_NEXT - 1),
            });
        }
        if let DenseAnchors::Text { data, ends } = &anchors {
            let mut start = 0;
            for (row, &end) in ends.iter().enumerate() {
                if end < start || end > data.len() || !data.is_char_boundary(end) {
                    return Err(Error::InvalidParameter {
                        name: "anchors",
                        reason: format!("row {row}: text end offset {end} is not a character boundary after {start}"),
                    });
                }
                start = end;
            }
        }

        const UNSEEN: u32 = u32::MAX;
        let mut trajs = vec![
            TrajState {
                group: UNSEEN,
                episode_reward: 0.0,
                next_step: 0,
                first_row: 0,
                last_row: 0,
                abs_reward_sum: 0.0,
            };
            traj_ids.len()
        ];
        let mut group_used = vec![false; group_ids.len()];
        let mut next_row = vec![NO_NEXT; rows];
        let mut derived_steps = if step.is_none() { Vec::with_capacity(rows) } else { Vec::new() };
        for row in 0..rows {
            for (field, value) in [("reward", reward[row]), ("episode_reward", episode_reward[row])] {
                if !value.is_finite() {
                    return Err(Error::NonFinite { row, field, value });
                }
                if value.abs() > MAX_ABS_REWARD {
                    return Err(Error::RewardOutOfRange { row, field, value });
                }
            }
            let (g, t) = (group[row], traj[row]);
            if g as usize >= group_ids.len() {
                return Err(Error::IdOutOfRange { row, field: "group", id: g, count: group_ids.len() });
            }
            if t as usize >= traj_ids.len() {
                return Err(Error::IdOutOfRange { row, field: "traj", id: t, count: traj_ids.len() });
            }
            group_used[g as usize] = true;
            let state = &mut trajs[t as usize];
            let expected = state.next_step;
            let found = step.as_ref().map_or(expected, |s| s[row]);
            if state.group == UNSEEN {
                if found != 0 {
                    return Err(Error::StepOutOfOrder { row, traj: traj_ids[t as usize].clone(), expected: 0, found });
                }
                *state = TrajState {
                    group: g,
                    episode_reward: episode_reward[row],
                    next_step: 1,
                    first_row: row as u32,
                    last_row: row as u32,
                    abs_reward_sum: reward[row].abs(),
                };
            } else {
                if state.group != g {
                    return Err(Error::TrajectoryInTwoGroups {
                        row,
                        traj: traj_ids[t as usize].clone(),
                        first_group: group_ids[state.group as usize].clone(),
                        group: group_ids[g as usize].clone(),
                    });
                }
                if found < expected {
                    let mut first_row = state.first_row;
                    for _ in 0..found {
                        first_row = next_row[first_row as usize];
                    }
                    return Err(Error::DuplicateStep {
                        row,
                        traj: traj_ids[t as usize].clone(),
                        step: found,
                        first_row: first_row as usize,
                    });
                }
                if found != expected {
                    return Err(Error::StepOutOfOrder { row, traj: traj_ids[t as usize].clone(), expected, found });
                }
                if state.episode_reward != episode_reward[row] {
                    return Err(Error::EpisodeRewardMismatch {
                        row,
                        traj: traj_ids[t as usize].clone(),
                        expected: state.episode_reward,
                        found: episode_reward[row],
                    });
                }
                // A discounted return sums the trajectory's rewards: bounded
                // like each reward, so it cannot overflow (as push_step).
                let abs_reward_sum = state.abs_reward_sum + reward[row].abs();
                if abs_reward_sum > MAX_ABS_REWARD {
                    return Err(Error::ReturnOutOfRange {
                        row,
                        traj: traj_ids[t as usize].clone(),
                        sum: abs_reward_sum,
                    });
                }
                next_row[state.last_row as usize] = row as u32;
                state.last_row = row as u32;
                state.next_step += 1;
                state.abs_reward_sum = abs_reward_sum;
            }
            if step.is_none() {
                derived_steps.push(found);
            }
        }
        if let Some(t) = trajs.iter().position(|t| t.group == UNSEEN) {
            return Err(Error::InvalidParameter {
                name: "traj_ids",
                reason: format!("trajectory label {:?} (index {t}) has no rows", traj_ids[t]),
            });
        }
        if let Some(g) = group_used.iter().position(|&used| !used) {
            return Err(Error::InvalidParameter {
                name: "group_ids",
                reason: format!("group label {:?} (index {g}) has no rows", group_ids[g]),
            });
        }
        let builder = BatchBuilder {
            group_ids,
            group_lookup: AHashMap::new(),
            traj_ids,
            traj_lookup: AHashMap::new(),
            trajs,
            group,
            traj,
            step: step.unwrap_or(derived_steps),
            anchors: Some(match anchors {
                DenseAnchors::Keys(keys) => Anchors::Keys(keys),
                DenseAnchors::Text { data, ends } => Anchors::Text { data, ends },
            }),
            reward,
            episode_reward,
            valid,
            response_len,
            next_row,
            capacity: (0, 0),
            previous: None,
        };
        builder.build()
    }

    /// Number of rows (agent steps).
    ///
    /// ```
    /// # let batch = g2po::doc_batch();
    /// assert!(batch.len() > 0);
    /// ```
    pub fn len(&self) -> usize {
        self.group.len()
    }

    /// Always false: an empty batch cannot be built.
    ///
    /// ```
    /// # let batch = g2po::doc_batch();
    /// assert!(!batch.is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.group.is_empty()
    }

    /// Number of task groups.
    ///
    /// ```
    /// # let batch = g2po::doc_batch();
    /// assert_eq!(batch.num_groups(), 1);
    /// ```
    pub fn num_groups(&self) -> usize {
        self.group_ids.len()
    }

    /// Number of trajectories.
    ///
    /// ```
    /// # let batch = g2po::doc_batch();
    /// assert_eq!(batch.num_trajectories(), 2);
    /// ```
    pub fn num_trajectories(&self) -> usize {
        self.traj_ids.len()
    }

    /// Group ids, indexed by dense group index (first-seen order).
    ///
    /// ```
    /// # let batch = g2po::doc_batch();
    /// assert_eq!(batch.group_ids()[0], "task");
    /// ```
    pub fn group_ids(&self) -> &[String] {
        &self.group_ids
    }

    /// Trajectory ids, indexed by dense trajectory index (first-seen order).
    ///
    /// ```
    /// # let batch = g2po::doc_batch();
    /// assert_eq!(batch.traj_ids(), &["win", "lose"]);
    /// ```
    pub fn traj_ids(&self) -> &[String] {
        &self.traj_ids
    }

    /// Dense group index of a group id.
    ///
    /// ```
    /// # let batch = g2po::doc_batch();
    /// assert_eq!(batch.group_index_of("task"), Some(0));
    /// assert_eq!(batch.group_index_of("nope"), None);
    /// ```
    pub fn group_index_of(&self, id: &str) -> Option<usize> {
        self.group_ids.iter().position(|g| g == id)
    }

    /// Dense group index of every row.
    ///
    /// ```
    /// # let batch = g2po::doc_batch();
    /// assert!(batch.groups().iter().all(|&g| g == 0));
    /// ```
    pub fn groups(&self) -> &[u32] {
        &self.group
    }

    /// Dense trajectory index of every row.
    ///
    /// ```
    /// # let batch = g2po::doc_batch();
    /// assert_eq!(batch.trajectories()[0], 0);
    /// ```
    pub fn trajectories(&self) -> &[u32] {
        &self.traj
    }

    /// Step index of every row.
    ///
    /// ```
    /// # let batch = g2po::doc_batch();
    /// assert_eq!(batch.steps()[1], 1);
    /// ```
    pub fn steps(&self) -> &[u32] {
        &self.step
    }

    /// Env reward of every row.
    ///
    /// ```
    /// # let batch = g2po::doc_batch();
    /// assert_eq!(batch.rewards()[1], 10.0);
    /// ```
    pub fn rewards(&self) -> &[f64] {
        &self.reward
    }

    /// Episode reward of every row (its trajectory's).
    ///
    /// ```
    /// # let batch = g2po::doc_batch();
    /// assert_eq!(batch.episode_rewards()[0], 10.0);
    /// ```
    pub fn episode_rewards(&self) -> &[f64] {
        &self.episode_reward
    }

    /// Action validity of every row.
    ///
    /// ```
    /// # let batch = g2po::doc_batch();
    /// assert!(batch.valid()[0]);
    /// ```
    pub fn valid(&self) -> &[bool] {
        &self.valid
    }

    /// Response token count of every row.
    ///
    /// ```
    /// # let batch = g2po::doc_batch();
    /// assert_eq!(batch.response_lens()[0], 3);
    /// ```
    pub fn response_lens(&self) -> &[u32] {
        &self.response_len
    }

    /// The row holding the next step of each row's trajectory, or [`NO_NEXT`].
    ///
    /// ```
    /// # let batch = g2po::doc_batch();
    /// assert_eq!(batch.next_rows()[0], 1);
    /// assert_eq!(batch.next_rows()[1], g2po::rollout::NO_NEXT);
    /// ```
    pub fn next_rows(&self) -> &[u32] {
        &self.next_row
    }

    /// Number of steps of each trajectory.
    ///
    /// ```
    /// # let batch = g2po::doc_batch();
    /// assert_eq!(batch.trajectory_lens(), &[2, 2]);
    /// ```
    pub fn trajectory_lens(&self) -> &[u32] {
        &self.traj_len
    }

    /// Episode reward of each trajectory.
    ///
    /// ```
    /// # let batch = g2po::doc_batch();
    /// assert_eq!(batch.trajectory_rewards(), &[10.0, 0.0]);
    /// ```
    pub fn trajectory_rewards(&self) -> &[f64] {
        &self.traj_episode_reward
    }

    /// Dense group index of each trajectory.
    ///
    /// ```
    /// # let batch = g2po::doc_batch();
    /// assert_eq!(batch.trajectory_groups(), &[0, 0]);
    /// ```
    pub fn trajectory_groups(&self) -> &[u32] {
        &self.traj_group
    }

    /// The rows of group `group`, in row order.
    ///
    /// ```
    /// # let batch = g2po::doc_batch();
    /// assert_eq!(batch.group_rows(0), &[0, 1, 2, 3]);
    /// ```
    pub fn group_rows(&self, group: usize) -> &[u32] {
        &self.group_rows[self.group_offsets[group]..self.group_offsets[group + 1]]
    }

    /// CSR offsets of [`Self::group_rows`]: group g owns entries
    /// `offsets[g]..offsets[g + 1]` of [`Self::rows_by_group`].
    ///
    /// ```
    /// # let batch = g2po::doc_batch();
    /// assert_eq!(batch.group_offsets(), &[0, 4]);
    /// ```
    pub fn group_offsets(&self) -> &[usize] {
        &self.group_offsets
    }

    /// All rows ordered by group (stable within a group).
    ///
    /// ```
    /// # let batch = g2po::doc_batch();
    /// assert_eq!(batch.rows_by_group().len(), batch.len());
    /// ```
    pub fn rows_by_group(&self) -> &[u32] {
        &self.group_rows
    }

    /// Whether every group's rows are contiguous in row order (then
    /// [`Self::rows_by_group`] is the identity).
    ///
    /// ```
    /// # let batch = g2po::doc_batch();
    /// assert!(batch.groups_contiguous());
    /// ```
    pub fn groups_contiguous(&self) -> bool {
        self.groups_contiguous
    }

    /// Whether anchors are texts (as opposed to precomputed keys).
    ///
    /// ```
    /// # let batch = g2po::doc_batch();
    /// assert!(batch.has_text());
    /// ```
    pub fn has_text(&self) -> bool {
        matches!(self.anchors, Anchors::Text { .. })
    }

    /// The anchor of one row.
    ///
    /// ```
    /// # let batch = g2po::doc_batch();
    /// assert_eq!(batch.anchor(0), g2po::Anchor::Text("hall"));
    /// ```
    pub fn anchor(&self, row: usize) -> Anchor<'_> {
        match &self.anchors {
            Anchors::Text { data, ends } => {
                let start = if row == 0 { 0 } else { ends[row - 1] };
                Anchor::Text(&data[start..ends[row]])
            }
            Anchors::Keys(keys) => Anchor::Key(keys[row]),
        }
    }

    /// The precomputed keys, if the batch was built from keys.
    ///
    /// ```
    /// # let batch = g2po::doc_batch();
    /// assert!(batch.keys().is_none());
    /// ```
    pub fn keys(&self) -> Option<&[u64]> {
        match &self.anchors {
            Anchors::Keys(keys) => Some(keys),
            Anchors::Text { .. } => None,
        }
    }
}
