//! Horizon curriculum: the maximum number of interaction turns per episode as
//! a function of the training step (SPEC section 5, ScalingInter-RL).
//!
//! Why a closed-form `horizon(step)` rather than a stateful scheduler: the
//! cap must be reproducible when training resumes from a checkpoint, and a
//! pure function of the 1-based global step makes resuming trivial (the
//! first step after a checkpoint at global step `g` is `g + 1`, which lands in
//! stage `g / S`, as the published code does).
//!
//! Command-line forms (parsed by [`FromStr`] and printed
//! back by `Display`):
//!
//! | form | meaning |
//! |---|---|
//! | `fixed:20` | always 20 |
//! | `stepwise:6,13,20@100` | caps 6, 13, 20, stage length 100 |
//! | `linear:6+2/50` | 6 + 2 * floor((step - 1) / 50) |
//! | `linear:6+2/50,max=30` | the same, capped at 30 |

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// A schedule of the turn cap `h` over training steps (1-based).
///
/// ```
/// use g2po::curriculum::Curriculum;
/// let c: Curriculum = "stepwise:6,13,20@100".parse().unwrap();
/// assert_eq!(c.horizon(100), 6);
/// assert_eq!(c.horizon(101), 13);
/// assert_eq!(c.horizon(10_000), 20);
/// assert_eq!(c.to_string(), "stepwise:6,13,20@100");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Curriculum {
    /// The same cap at every step.
    Fixed(usize),
    /// Steps `1..=S` use `caps[0]`, `S+1..=2S` use `caps[1]`, …; the last cap
    /// sticks.
    Stepwise {
        /// Caps per stage (non-empty, positive).
        caps: Vec<usize>,
        /// Stage length `S` in steps (positive).
        stage_len: usize,
    },
    /// `h0 + dh * floor((step - 1) / every)`, optionally capped at `max`.
    Linear {
        /// Cap at step 1 (positive).
        h0: usize,
        /// Increment per `every` steps.
        dh: usize,
        /// Steps between increments (positive).
        every: usize,
        /// Optional upper bound (at least `h0`).
        max: Option<usize>,
    },
}

/// Why a curriculum string or value was rejected.
///
/// ```
/// use g2po::curriculum::{Curriculum, CurriculumError};
/// let e = "zigzag:3".parse::<Curriculum>().unwrap_err();
/// assert!(matches!(e, CurriculumError::UnknownKind(_)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CurriculumError {
    /// The part before `:` is not `fixed`, `stepwise` or `linear`.
    #[error("unknown curriculum kind `{0}` (expected fixed, stepwise or linear)")]
    UnknownKind(String),
    /// The string does not have the expected shape.
    #[error("malformed curriculum `{input}`: expected {expected}")]
    Malformed {
        /// The input.
        input: String,
        /// The expected form.
        expected: &'static str,
    },
    /// A number did not parse.
    #[error("`{text}` is not a non-negative integer (in `{input}`)")]
    BadNumber {
        /// The input.
        input: String,
        /// The offending text.
        text: String,
    },
    /// The values are out of range (zero cap, zero stage length, …).
    #[error("invalid curriculum: {0}")]
    Invalid(String),
}

impl Curriculum {
    /// Checks that the values are usable: positive caps, stage length and
    /// period, and `max >= h0`.
    ///
    /// ```
    /// use g2po::curriculum::Curriculum;
    /// assert!(Curriculum::Fixed(0).validate().is_err());
    /// assert!(Curriculum::Stepwise { caps: vec![], stage_len: 10 }.validate().is_err());
    /// assert!(Curriculum::Fixed(5).validate().is_ok());
    /// ```
    pub fn validate(&self) -> Result<(), CurriculumError> {
        let bad = |m: &str| Err(CurriculumError::Invalid(m.to_string()));
        match self {
            Self::Fixed(0) => bad("the fixed cap must be positive"),
            Self::Fixed(_) => Ok(()),
            Self::Stepwise { caps, stage_len } => {
                if caps.is_empty() {
                    bad("stepwise needs at least one cap")
                } else if caps.contains(&0) {
                    bad("stepwise caps must be positive")
                } else if *stage_len == 0 {
                    bad("the stage length must be positive")
                } else {
                    Ok(())
                }
            }
            Self::Linear { h0, every, max, .. } => {
                if *h0 == 0 {
                    bad("linear h0 must be positive")
                } else if *every == 0 {
                    bad("linear period must be positive")
                } else if max.is_some_and(|m| m < *h0) {
                    bad("linear max must be at least h0")
                } else {
                    Ok(())
                }
            }
        }
    }

    /// The stage (0-based) that 1-based `step` falls in: `(step - 1) / S` for
    /// stepwise (not clamped to the last cap), the number of increments for
    /// linear, 0 for fixed. Step 0 is treated as step 1.
    ///
    /// ```
    /// use g2po::curriculum::Curriculum;
    /// let c = Curriculum::Stepwise { caps: vec![1, 2], stage_len: 10 };
    /// assert_eq!(c.stage(10), 0);
    /// assert_eq!(c.stage(11), 1);
    /// assert_eq!(c.stage(35), 3);
    /// ```
    pub fn stage(&self, step: u64) -> u64 {
        let k = step.saturating_sub(1);
        match self {
            Self::Fixed(_) => 0,
            Self::Stepwise { stage_len, .. } => k / (*stage_len).max(1) as u64,
            Self::Linear { every, .. } => k / (*every).max(1) as u64,
        }
    }

    /// The turn cap at 1-based training `step` (step 0 is treated as 1). On a
    /// value that [`Curriculum::validate`] rejects it still returns without
    /// panicking (an empty cap list gives 0).
    ///
    /// ```
    /// use g2po::curriculum::Curriculum;
    /// let c: Curriculum = "linear:6+2/50,max=9".parse().unwrap();
    /// assert_eq!(c.horizon(1), 6);
    /// assert_eq!(c.horizon(50), 6);
    /// assert_eq!(c.horizon(51), 8);
    /// assert_eq!(c.horizon(101), 9); // 10, capped
    /// ```
    pub fn horizon(&self, step: u64) -> usize {
        let stage = self.stage(step);
        match self {
            Self::Fixed(h) => *h,
            Self::Stepwise { caps, .. } => {
                let i = usize::try_from(stage).unwrap_or(usize::MAX).min(caps.len().saturating_sub(1));
                caps.get(i).copied().unwrap_or(0)
            }
            Self::Linear { h0, dh, max, .. } => {
                let grow = usize::try_from(stage).unwrap_or(usize::MAX).saturating_mul(*dh);
                let h = h0.saturating_add(grow);
                max.map_or(h, |m| h.min(m))
            }
        }
    }

    /// The stage a run resumed from a checkpoint at global step `g` (`g`
    /// steps done) continues in: `g / S` for stepwise, i.e. the stage of step
    /// `g + 1`.
    ///
    /// ```
    /// use g2po::curriculum::Curriculum;
    /// let c = Curriculum::Stepwise { caps: vec![6, 13, 20], stage_len: 100 };
    /// assert_eq!(c.resume_stage(250), 2);
    /// assert_eq!(c.horizon(251), 20);
    /// ```
    pub fn resume_stage(&self, global_step: u64) -> u64 {
        self.stage(global_step.saturating_add(1))
    }
}

fn number(input: &str, text: &str) -> Result<usize, CurriculumError> {
    text.trim()
        .parse::<usize>()
        .map_err(|_| CurriculumError::BadNumber { input: input.to_string(), text: text.to_string() })
}

impl FromStr for Curriculum {
    type Err = CurriculumError;

    /// Parses the command-line forms listed in the module docs.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let input = s.trim();
        let (kind, rest) = input
            .split_once(':')
            .ok_or(CurriculumError::Malformed { input: input.to_string(), expected: "KIND:ARGS, e.g. fixed:20" })?;
        let c = match kind.trim().to_ascii_lowercase().as_str() {
            "fixed" => Self::Fixed(number(input, rest)?),
            "stepwise" => {
                let malformed = || CurriculumError::Malformed {
                    input: input.to_string(),
                    expected: "stepwise:CAP,CAP,...@STAGE_LEN",
                };
                let (caps, len) = rest.split_once('@').ok_or_else(malformed)?;
                if caps.trim().is_empty() {
                    return Err(malformed());
                }
                let caps = caps.split(',').map(|c| number(input, c)).collect::<Result<Vec<_>, _>>()?;
                Self::Stepwise { caps, stage_len: number(input, len)? }
            }
            "linear" => {
                let malformed = || CurriculumError::Malformed {
                    input: input.to_string(),
                    expected: "linear:H0+DH/EVERY or linear:H0+DH/EVERY,max=MAX",
                };
                let (body, max) = match rest.split_once(',') {
                    Some((b, m)) => {
                        let m = m.trim().strip_prefix("max=").ok_or_else(malformed)?;
                        (b, Some(number(input, m)?))
                    }
                    None => (rest, None),
                };
                let (h0, tail) = body.split_once('+').ok_or_else(malformed)?;
                let (dh, every) = tail.split_once('/').ok_or_else(malformed)?;
                Self::Linear { h0: number(input, h0)?, dh: number(input, dh)?, every: number(input, every)?, max }
            }
            other => return Err(CurriculumError::UnknownKind(other.to_string())),
        };
        c.validate()?;
        Ok(c)
    }
}

impl fmt::Display for Curriculum {
    /// Prints the form [`FromStr`] parses.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fixed(h) => write!(f, "fixed:{h}"),
            Self::Stepwise { caps, stage_len } => {
                let caps: Vec<String> = caps.iter().map(ToString::to_string).collect();
                write!(f, "stepwise:{}@{stage_len}", caps.join(","))
            }
            Self::Linear { h0, dh, every, max } => {
                write!(f, "linear:{h0}+{dh}/{every}")?;
                if let Some(m) = max {
                    write!(f, ",max={m}")?;
                }
                Ok(())
            }
        }
    }
}

/// A published stepwise schedule (AgentGym-RL, ScalingInter-RL).
///
/// ```
/// use g2po::curriculum::BABYAI;
/// let c = BABYAI.curriculum();
/// assert_eq!(c.to_string(), "stepwise:6,13,20@100");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishedSchedule {
    /// Environment name.
    pub name: &'static str,
    /// Caps per stage.
    pub caps: &'static [usize],
    /// Stage length.
    pub stage_len: usize,
}

impl PublishedSchedule {
    /// The schedule as a [`Curriculum::Stepwise`].
    ///
    /// ```
    /// assert_eq!(g2po::curriculum::WEBARENA.curriculum().horizon(81), 12);
    /// ```
    pub fn curriculum(&self) -> Curriculum {
        Curriculum::Stepwise { caps: self.caps.to_vec(), stage_len: self.stage_len }
    }
}

/// WebArena: [8, 12, 15] with S = 80.
pub const WEBARENA: PublishedSchedule = PublishedSchedule { name: "webarena", caps: &[8, 12, 15], stage_len: 80 };
/// Deep Search: [5, 8, 10] with S = 100.
pub const DEEP_SEARCH: PublishedSchedule = PublishedSchedule { name: "deepsearch", caps: &[5, 8, 10], stage_len: 100 };
/// TextCraft: [10, 20, 30] with S = 100.
pub const TEXTCRAFT: PublishedSchedule = PublishedSchedule { name: "textcraft", caps: &[10, 20, 30], stage_len: 100 };
/// BabyAI: [6, 13, 20] with S = 100.
pub const BABYAI: PublishedSchedule = PublishedSchedule { name: "babyai", caps: &[6, 13, 20], stage_len: 100 };
/// SciWorld: [10, 20, 30] with S = 100.
pub const SCIWORLD: PublishedSchedule = PublishedSchedule { name: "sciworld", caps: &[10, 20, 30], stage_len: 100 };

/// All published schedules.
///
/// ```
/// assert_eq!(g2po::curriculum::PUBLISHED.len(), 5);
/// ```
pub const PUBLISHED: [PublishedSchedule; 5] = [WEBARENA, DEEP_SEARCH, TEXTCRAFT, BABYAI, SCIWORLD];
