//! Ground truth for the tabular environments (chain, lost robot).
//!
//! Design. The estimators' advantages are noisy, biased guesses of the true
//! finite-horizon advantage `A*(s, a, h) = Q(s, a, h) - V(s, h)` of the policy
//! that sampled the batch. On tabular environments that truth is exact:
//! [`TruthTable`] discovers every reachable state by breadth-first search
//! through the [`g2po_envs::Environment`] itself (replaying action paths from
//! `reset`, since the `Tabular` trait has no observation text and the policy
//! reads text), asks the policy for its action probabilities in each state and
//! hands them to [`g2po_envs::solve`] with the batch's horizon cap,
//! `gamma = 0.95` and success value 10 (the rollouts' reward scale). A row at
//! step `t` of a rollout capped at `h` has `h - t` turns left.
//!
//! Scale. Estimators standardise within groups, so their advantages live on a
//! different scale from `A*`. [`TruthScore::mse`] therefore compares the two
//! after standardising each to zero mean and unit variance over the batch
//! with the population standard deviation, so `mse = 2 (1 - pearson)`
//! exactly: the two report one agreement on two familiar scales; a constant column
//! (no signal) gets correlation 0 and MSE 2, the score of an uninformative
//! guess.
//!
//! Node values. G2PO's pooled node value mixes visits at different turns left.
//! Its large-sample limit is therefore not `V(s, h)` for one `h` but the
//! occupancy-weighted mixture `sum_t d_t(s) V(s, h - t) / sum_t d_t(s)`, where
//! `d_t(s)` is the probability of being in `s` (not yet done) at step `t`;
//! [`TruthTable::expected_node_values`] computes it exactly by propagating
//! the state distribution forward.

use std::collections::{HashMap, VecDeque};

use g2po_envs::{EnvKind, GroundTruth, Tabular, make_env, make_tabular, solve};

use super::config::TrainError;
use super::rollouts::{CollectedRow, SUCCESS_REWARD};
use crate::policy::Policy;

/// Discount of the ground truth (the estimators' default).
pub const TRUTH_GAMMA: f64 = 0.95;

/// The reachable states of a tabular environment with their observations.
pub struct TruthTable {
    tabular: Box<dyn Tabular>,
    /// Observation text and admissible actions per state key.
    observations: HashMap<u64, (String, Vec<String>)>,
}

/// Agreement between estimator advantages and true advantages over a batch.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TruthScore {
    /// Pearson correlation (0 when either column is constant).
    pub pearson: f64,
    /// Mean squared error after standardising both columns over the batch.
    pub mse: f64,
    /// Rows scored.
    pub rows: usize,
}

impl std::fmt::Debug for TruthTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TruthTable").field("states", &self.observations.len()).finish()
    }
}

impl TruthTable {
    /// Discovers the states of `kind`'s task 0 (the tabular environments have
    /// one task); `None` for environments that are not tabular.
    ///
    /// ```
    /// use g2po::train::TruthTable;
    /// let t = TruthTable::new(g2po_envs::EnvKind::Chain).unwrap();
    /// assert_eq!(t.num_states(), 7);
    /// assert!(TruthTable::new(g2po_envs::EnvKind::Household).is_none());
    /// ```
    pub fn new(kind: EnvKind) -> Option<Self> {
        let tabular = make_tabular(kind)?;
        let mut env = make_env(kind);
        let start = env.reset(0);
        let mut observations = HashMap::new();
        let mut queue = VecDeque::new();
        observations.insert(start.key, (start.text, start.admissible.clone()));
        queue.push_back((Vec::<String>::new(), start.admissible));
        while let Some((path, admissible)) = queue.pop_front() {
            for a in &admissible {
                env.reset(0);
                for p in &path {
                    env.step(p);
                }
                let out = env.step(a);
                let o = out.observation;
                if observations.contains_key(&o.key) {
                    continue;
                }
                observations.insert(o.key, (o.text, o.admissible.clone()));
                if !out.done {
                    let mut next = path.clone();
                    next.push(a.clone());
                    queue.push_back((next, o.admissible));
                }
            }
        }
        Some(Self { tabular, observations })
    }

    /// Number of reachable states found (goal included).
    ///
    /// ```
    /// let t = g2po::train::TruthTable::new(g2po_envs::EnvKind::LostRobot).unwrap();
    /// assert!(t.num_states() > 80);
    /// ```
    pub fn num_states(&self) -> usize {
        self.observations.len()
    }

    /// The observation text of the state with key `key`, if reachable.
    ///
    /// ```
    /// let t = g2po::train::TruthTable::new(g2po_envs::EnvKind::Chain).unwrap();
    /// assert!(t.text(0).is_some());
    /// ```
    pub fn text(&self, key: u64) -> Option<&str> {
        self.observations.get(&key).map(|(t, _)| t.as_str())
    }

    /// The policy's action probabilities at `temperature` per state index, in
    /// the order of `Tabular::actions`; unreachable and goal states get
    /// uniform probabilities (the solver never uses them).
    ///
    /// ```
    /// use g2po::policy::{Policy, PolicyConfig};
    /// let p = Policy::new(&PolicyConfig { vocab: 64, hidden: 8, ..Default::default() }, &candle_core::Device::Cpu, 0).unwrap();
    /// let t = g2po::train::TruthTable::new(g2po_envs::EnvKind::Chain).unwrap();
    /// let probs = t.policy_probs(&p, 1.0).unwrap();
    /// assert!(probs.iter().all(|row| (row.iter().sum::<f64>() - 1.0).abs() < 1e-9));
    /// ```
    pub fn policy_probs(&self, policy: &Policy, temperature: f64) -> Result<Vec<Vec<f64>>, TrainError> {
        (0..self.tabular.num_states())
            .map(|s| {
                let actions = self.tabular.actions(s);
                let uniform = vec![1.0 / actions.len().max(1) as f64; actions.len()];
                let key = self.tabular.observation_key(s);
                let Some((text, admissible)) = self.observations.get(&key) else {
                    return Ok(uniform);
                };
                if self.tabular.is_goal(s) {
                    return Ok(uniform);
                }
                let p = policy.action_probs(text, admissible, temperature)?;
                // Match by text: the env's admissible order need not be the table's.
                actions
                    .iter()
                    .map(|a| {
                        admissible.iter().position(|x| x == a).map(|i| p[i]).ok_or_else(|| {
                            TrainError::BadConfig(format!("action {a:?} of state {s} is not admissible in the env"))
                        })
                    })
                    .collect()
            })
            .collect()
    }

    /// The exact `V`, `Q` of the policy given by per-state probabilities
    /// (as from [`TruthTable::policy_probs`]) for turn cap `horizon`.
    ///
    /// ```
    /// let t = g2po::train::TruthTable::new(g2po_envs::EnvKind::Chain).unwrap();
    /// let fwd: Vec<Vec<f64>> = (0..7).map(|_| vec![1.0, 0.0]).collect();
    /// let gt = t.solve(&fwd, 6).unwrap();
    /// assert!((gt.value(0, 6).unwrap() - 10.0 * 0.95f64.powi(6)).abs() < 1e-9);
    /// ```
    pub fn solve(&self, probs: &[Vec<f64>], horizon: usize) -> Result<GroundTruth, TrainError> {
        if probs.len() != self.tabular.num_states() {
            return Err(TrainError::BadConfig(format!(
                "{} probability rows for {} states",
                probs.len(),
                self.tabular.num_states()
            )));
        }
        Ok(solve(self.tabular.as_ref(), &|s| probs[s].clone(), horizon, TRUTH_GAMMA, SUCCESS_REWARD)?)
    }

    /// The large-sample limit of G2PO's pooled node value for every state key
    /// (see the module docs): `sum_t d_t(s) V(s, h - t) / sum_t d_t(s)` from
    /// task 0's start state; states never occupied are absent.
    ///
    /// ```
    /// let t = g2po::train::TruthTable::new(g2po_envs::EnvKind::Chain).unwrap();
    /// let fwd: Vec<Vec<f64>> = (0..7).map(|_| vec![1.0, 0.0]).collect();
    /// let v = t.expected_node_values(&fwd, 6).unwrap();
    /// assert!((v[&0] - 10.0 * 0.95f64.powi(6)).abs() < 1e-9);
    /// ```
    pub fn expected_node_values(&self, probs: &[Vec<f64>], horizon: usize) -> Result<HashMap<u64, f64>, TrainError> {
        let gt = self.solve(probs, horizon)?;
        let n = self.tabular.num_states();
        let mut d = vec![0.0; n];
        d[self.tabular.start_state(0)] = 1.0;
        let (mut mass, mut weighted) = (vec![0.0; n], vec![0.0; n]);
        for t in 0..horizon {
            let mut next = vec![0.0; n];
            for s in 0..n {
                if d[s] == 0.0 || self.tabular.is_goal(s) {
                    continue;
                }
                mass[s] += d[s];
                weighted[s] += d[s] * gt.v(s, horizon - t)?;
                for (a, &p) in probs[s].iter().enumerate() {
                    let (s2, _) = self.tabular.transition(s, a)?;
                    next[s2] += d[s] * p;
                }
            }
            d = next;
        }
        Ok((0..n)
            .filter(|&s| mass[s] > 0.0)
            .map(|s| (self.tabular.observation_key(s), weighted[s] / mass[s]))
            .collect())
    }

    /// True advantages `A*(s, a, turns_left)` of `rows` under `gt`.
    ///
    /// ```
    /// use g2po::train::{CollectedRow, TruthTable};
    /// let t = TruthTable::new(g2po_envs::EnvKind::Chain).unwrap();
    /// let half: Vec<Vec<f64>> = (0..7).map(|_| vec![0.5, 0.5]).collect();
    /// let gt = t.solve(&half, 6).unwrap();
    /// let row = CollectedRow { observation: String::new(), key: 0, action: "forward".into(), tokens: vec![], logps: vec![], valid: true, turns_left: 6 };
    /// assert!(t.true_advantages(&gt, [&row]).unwrap()[0] > 0.0);
    /// ```
    pub fn true_advantages<'a>(
        &self,
        gt: &GroundTruth,
        rows: impl IntoIterator<Item = &'a CollectedRow>,
    ) -> Result<Vec<f64>, TrainError> {
        rows.into_iter().map(|r| Ok(gt.advantage(r.key, &r.action, r.turns_left)?)).collect()
    }
}

/// Pearson correlation and standardised MSE between `estimate` and `truth`.
///
/// Errors: different lengths, fewer than 2 rows, or a non-finite value.
///
/// ```
/// use g2po::train::score_advantages;
/// let s = score_advantages(&[1.0, 2.0, 3.0], &[10.0, 20.0, 30.0]).unwrap();
/// assert!((s.pearson - 1.0).abs() < 1e-9 && s.mse < 1e-9);
/// assert_eq!(score_advantages(&[0.0, 0.0], &[1.0, 2.0]).unwrap().pearson, 0.0);
/// assert!(score_advantages(&[1.0], &[1.0]).is_err());
/// ```
pub fn score_advantages(estimate: &[f32], truth: &[f64]) -> Result<TruthScore, TrainError> {
    if estimate.len() != truth.len() || estimate.len() < 2 {
        return Err(TrainError::BadConfig(format!(
            "scoring needs two equal columns of at least 2 rows, got {} and {}",
            estimate.len(),
            truth.len()
        )));
    }
    let e: Vec<f64> = estimate.iter().map(|&x| f64::from(x)).collect();
    if e.iter().chain(truth).any(|x| !x.is_finite()) {
        return Err(TrainError::BadConfig("non-finite advantage in scoring".into()));
    }
    let z = |x: &[f64]| -> Option<Vec<f64>> {
        let n = x.len() as f64;
        let m = x.iter().sum::<f64>() / n;
        let sd = (x.iter().map(|v| (v - m).powi(2)).sum::<f64>() / n).sqrt();
        (sd > 1e-12).then(|| x.iter().map(|v| (v - m) / sd).collect())
    };
    let n = e.len();
    let (pearson, mse) = match (z(&e), z(truth)) {
        (Some(a), Some(b)) => {
            let p = a.iter().zip(&b).map(|(x, y)| x * y).sum::<f64>() / n as f64;
            let m = a.iter().zip(&b).map(|(x, y)| (x - y).powi(2)).sum::<f64>() / n as f64;
            (p, m)
        }
        // A constant column carries no ranking information: score it as an
        // uninformative guess (correlation 0, standardised MSE 2).
        _ => (0.0, 2.0),
    };
    Ok(TruthScore { pearson, mse, rows: n })
}

/// The exact-truth table: how close each estimator's advantages come to the
/// true `A* = Q - V` on the tabular environments, per group size.
///
/// For every environment and seed the sampling policy is the initial policy of
/// a training run with that seed ([`super::TrainConfig::default`]'s policy
/// sizes), sampling at the environment's temperature; its exact `Q - V` comes
/// from [`TruthTable`]. For every group size `N`, `tasks` groups of `N`
/// rollouts are collected (the same rollouts for every estimator) and every
/// estimator is scored with [`score_advantages`]. Across seeds: mean and 95%
/// t-interval, and the paired difference of every estimator to the best one.
#[derive(Debug, Clone, PartialEq)]
pub struct TruthTableConfig {
    /// (environment, horizon cap, sampling temperature).
    pub envs: Vec<(EnvKind, usize, f64)>,
    /// Rollouts per task group.
    pub group_sizes: Vec<usize>,
    /// Estimators scored.
    pub estimators: Vec<crate::EstimatorKind>,
    /// Seeds `0..seeds` (one initial policy and one rollout stream each).
    pub seeds: usize,
    /// Task groups per batch.
    pub tasks: usize,
}

impl TruthTableConfig {
    /// The chain (cap 8, temperature 1) and the lost robot (cap 30,
    /// temperature 2, the ablation's), group sizes 4, 8 and 16, every
    /// estimator computed from a batch alone ([`crate::EstimatorKind::FROM_BATCH`]:
    /// PPO's advantages depend on a critic, which an initial policy does not
    /// have), 4 task groups per batch.
    ///
    /// ```
    /// let c = g2po::train::truth::TruthTableConfig::standard(10);
    /// assert_eq!(c.group_sizes, vec![4, 8, 16]);
    /// ```
    pub fn standard(seeds: usize) -> Self {
        Self {
            envs: vec![(EnvKind::Chain, 8, 1.0), (EnvKind::LostRobot, 30, 2.0)],
            group_sizes: vec![4, 8, 16],
            estimators: crate::EstimatorKind::FROM_BATCH.to_vec(),
            seeds,
            tasks: 4,
        }
    }
}

/// One cell of the exact-truth table.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TruthRow {
    /// Environment.
    pub env: EnvKind,
    /// Rollouts per group.
    pub group_size: usize,
    /// Estimator.
    pub estimator: crate::EstimatorKind,
    /// Seeds scored.
    pub n: usize,
    /// Pearson correlation with `Q - V`: mean over seeds and 95% half-width.
    pub pearson: (f64, f64),
    /// Standardised MSE (`2 (1 - pearson)` per batch): mean and 95% half-width.
    pub mse: (f64, f64),
    /// Correlation minus that of the cell's best estimator, paired by seed:
    /// mean and 95% half-width (0 for the best itself).
    pub gap_to_best: (f64, f64),
    /// Whether this estimator has the cell's highest mean correlation (the
    /// first in [`TruthTableConfig::estimators`] order among ties).
    pub best: bool,
}

/// Computes the exact-truth table (see [`TruthTableConfig`]).
///
/// ```no_run
/// let rows = g2po::train::truth::run_truth_table(&g2po::train::truth::TruthTableConfig::standard(10)).unwrap();
/// println!("{}", g2po::train::truth::truth_markdown(&rows));
/// ```
pub fn run_truth_table(cfg: &TruthTableConfig) -> Result<Vec<TruthRow>, TrainError> {
    use rayon::prelude::*;
    if cfg.seeds < 2 || cfg.tasks == 0 || cfg.group_sizes.contains(&0) || cfg.group_sizes.contains(&1) {
        return Err(TrainError::BadConfig("the truth table needs 2+ seeds, 1+ tasks and groups of 2+ rollouts".into()));
    }
    let policy_cfg = super::TrainConfig::default().policy;
    let jobs: Vec<(usize, u64)> =
        (0..cfg.envs.len()).flat_map(|e| (0..cfg.seeds as u64).map(move |s| (e, s))).collect();
    // scores[job][group size][estimator] = pearson
    let scores = jobs
        .par_iter()
        .map(|&(e, seed)| -> Result<Vec<Vec<f64>>, TrainError> {
            let (env, horizon, temperature) = cfg.envs[e];
            let table = TruthTable::new(env)
                .ok_or_else(|| TrainError::BadConfig(format!("{env} is not a tabular environment")))?;
            let policy = Policy::new(&policy_cfg, &candle_core::Device::Cpu, seed)?;
            let probs = table.policy_probs(&policy, temperature)?;
            let gt = table.solve(&probs, horizon)?;
            let tasks: Vec<u64> = (0..cfg.tasks as u64).collect();
            cfg.group_sizes
                .iter()
                .map(|&n| {
                    let set = super::collect_rollouts(&policy, env, &tasks, n, horizon, temperature, seed, n as u64)?;
                    let batch = set.batch(false)?;
                    let truth = table.true_advantages(&gt, set.rows())?;
                    cfg.estimators
                        .iter()
                        .map(|&kind| {
                            let estimator = crate::Estimator::new(crate::EstimatorConfig::new(kind))?;
                            let adv = crate::AdvantageEstimator::estimate(&estimator, &batch)?;
                            Ok(score_advantages(&adv.advantage, &truth)?.pearson)
                        })
                        .collect()
                })
                .collect()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut rows = Vec::new();
    for (e, &(env, _, _)) in cfg.envs.iter().enumerate() {
        let mine: Vec<&Vec<Vec<f64>>> =
            jobs.iter().zip(&scores).filter(|((je, _), _)| *je == e).map(|(_, s)| s).collect();
        for (gi, &n) in cfg.group_sizes.iter().enumerate() {
            let per = |k: usize| -> Vec<f64> { mine.iter().map(|s| s[gi][k]).collect() };
            let means: Vec<f64> = (0..cfg.estimators.len()).map(|k| super::ablation::mean_ci(&per(k)).0).collect();
            // The first of tied maxima (max_by would return the last).
            let best = (0..means.len()).fold(0, |b, k| if means[k] > means[b] { k } else { b });
            for (k, &kind) in cfg.estimators.iter().enumerate() {
                let p = per(k);
                let mse: Vec<f64> = p.iter().map(|r| 2.0 * (1.0 - r)).collect();
                let gap: Vec<f64> = p.iter().zip(per(best)).map(|(a, b)| a - b).collect();
                rows.push(TruthRow {
                    env,
                    group_size: n,
                    estimator: kind,
                    n: p.len(),
                    pearson: super::ablation::mean_ci(&p),
                    mse: super::ablation::mean_ci(&mse),
                    gap_to_best: if k == best { (0.0, 0.0) } else { super::ablation::mean_ci(&gap) },
                    best: k == best,
                });
            }
        }
    }
    Ok(rows)
}

/// The truth table as Markdown: one row per (environment, group size,
/// estimator); the best mean correlation of each (environment, group size) in
/// bold, and "(below)" where an estimator's paired gap to it excludes 0 at 95%.
///
/// ```
/// assert!(g2po::train::truth::truth_markdown(&[]).starts_with('|'));
/// ```
pub fn truth_markdown(rows: &[TruthRow]) -> String {
    use std::fmt::Write;
    let mut s = String::from(
        "| env | N | estimator | corr with Q - V | std. MSE | corr - best (paired) |\n|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let best = r.best;
        let corr = format!("{:.3} ± {:.3}", r.pearson.0, r.pearson.1);
        let gap = if best {
            "best".to_string()
        } else {
            let below = r.gap_to_best.0 + r.gap_to_best.1 < 0.0;
            format!("{:+.3} ± {:.3}{}", r.gap_to_best.0, r.gap_to_best.1, if below { " (below)" } else { "" })
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.3} ± {:.3} | {} |",
            r.env,
            r.group_size,
            r.estimator,
            if best { format!("**{corr}**") } else { corr },
            r.mse.0,
            r.mse.1,
            gap
        );
    }
    s
}
