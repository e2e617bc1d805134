//! The estimator ablation: every estimator of [`crate::EstimatorKind::ALL`] over seeds and settings.
//!
//! Design. Every (setting, estimator, seed) run is an independent
//! [`Trainer`]; runs are spread over rayon's pool (and each run's rollouts
//! over the same pool), and collected in a fixed order, so the tables do not
//! depend on scheduling. Success is always measured by the greedy policy at
//! the setting's fixed evaluation horizon, so a curriculum run and a fixed
//! long-horizon run are scored on the same task.
//!
//! Metrics per run: *final success* = mean greedy evaluation success over the
//! last [`FINAL_WINDOW`] evaluations (one evaluation of a single-task
//! environment is 0 or 1, so a window is needed), *AUC* = mean evaluation
//! success over all evaluations (the area under the learning curve divided
//! by its length, in `[0, 1]`), and, on tabular environments, the mean
//! correlation of the estimator's advantages with the true ones. Across seeds:
//! mean and a Student-t 95% interval, and for every estimator the paired
//! difference to GRPO per seed (the runs of one seed share the initial policy
//! and the first rollouts), with its interval and how many seeds it won, lost
//! and tied. The exact-truth table ([`super::truth::run_truth_table`]) is written
//! beside the summary.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use g2po_envs::EnvKind;
use g2po_envs::agentgym::AgentGymSpec;
use rayon::prelude::*;

use super::config::{TrainConfig, TrainError};
use super::trainer::{IterationLog, Trainer};
use super::truth::{TruthRow, TruthTableConfig, run_truth_table, truth_markdown};
use crate::EstimatorKind;
use crate::curriculum::Curriculum;

/// Iterations of the household setting of [`AblationConfig::standard`].
pub const HOUSEHOLD_ITERATIONS: usize = 80;
/// Training task pool (seeds `0..N`) of the household setting.
pub const HOUSEHOLD_TASK_POOL: u64 = 16;

/// Turn cap (training and evaluation) of the TextWorld-Express settings.
pub const TWX_HORIZON: usize = 20;
/// Iterations of the TextWorld-Express settings.
pub const TWX_ITERATIONS: usize = 40;
/// Rollout temperature of the TextWorld-Express settings.
pub const TWX_TEMPERATURE: f64 = 5.0;
/// Training pool (data_idx `0..N`) of the TextWorld-Express settings.
pub const TWX_TASK_POOL: u64 = 16;

/// Evaluations averaged into a run's final success.
pub const FINAL_WINDOW: usize = 5;

/// One environment/schedule of the ablation.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AblationSetting {
    /// Short name (file names, table rows).
    pub name: String,
    /// The environment.
    pub env: EnvKind,
    /// The training horizon schedule.
    pub curriculum: Curriculum,
    /// The fixed evaluation horizon.
    pub eval_horizon: usize,
    /// Iterations per run.
    pub iterations: usize,
    /// Task groups per iteration.
    pub tasks_per_iter: usize,
    /// Held-out evaluation tasks.
    pub eval_tasks: usize,
    /// Rollout sampling temperature (see [`TrainConfig::temperature`]).
    pub temperature: f64,
    /// Fixed pool of training task seeds (see [`TrainConfig::task_pool`]).
    #[serde(default)]
    pub task_pool: Option<u64>,
    /// Evaluate on the training pool (see [`TrainConfig::eval_on_train_pool`]).
    #[serde(default)]
    pub eval_on_train_pool: bool,
    /// Run on this AgentGym environment server instead of `env` (see
    /// [`TrainConfig::agentgym`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agentgym: Option<AgentGymSpec>,
}

impl AblationSetting {
    /// The environment's name in tables: the built-in kind or `agentgym:URL`.
    ///
    /// ```
    /// let c = g2po::train::AblationConfig::standard("x".into(), 2, true);
    /// assert_eq!(c.settings[0].env_label(), "lost-robot");
    /// ```
    pub fn env_label(&self) -> String {
        match &self.agentgym {
            Some(s) => format!("agentgym:{s}"),
            None => self.env.to_string(),
        }
    }
}

/// The whole ablation.
#[derive(Debug, Clone, PartialEq)]
pub struct AblationConfig {
    /// Output folder (`runs.csv`, `summary.md`, PNG curves).
    pub out: PathBuf,
    /// Seeds per (setting, estimator): `0..seeds`.
    pub seeds: usize,
    /// The settings.
    pub settings: Vec<AblationSetting>,
    /// The estimators compared.
    pub estimators: Vec<EstimatorKind>,
    /// Template for every run (env, estimator, curriculum, sizes and seed are overwritten).
    pub base: TrainConfig,
    /// The exact-truth table written beside the summary (`truth.md`), if any.
    pub truth: Option<TruthTableConfig>,
}

impl AblationConfig {
    /// The standard ablation: lost robot at a fixed long horizon (30) and with
    /// the stepwise curriculum 15 -> 22 -> 30 (both at temperature 2, which
    /// only flattens the initial lean of its one-word moves), the small
    /// household ([`g2po_envs::Household::small`], cap 40, temperature 10)
    /// and low-overlap (cap 30, temperature 6), the temperatures chosen so
    /// that an untrained policy explores multi-word commands; 50 iterations
    /// of 4 tasks x 8 rollouts, 8 evaluation tasks; every estimator.
    ///
    /// The household setting differs on purpose, identically for every
    /// estimator: it runs [`HOUSEHOLD_ITERATIONS`] iterations on a fixed pool
    /// of [`HOUSEHOLD_TASK_POOL`] training tasks (an ALFWorld-like training
    /// set, so the same tasks and states recur across iterations) and is
    /// evaluated on 8 of those tasks, because in probes the bag-of-words
    /// policy learned the pool but solved no held-out layout.
    /// `quick` shrinks every run (for smoke tests).
    ///
    /// ```
    /// let c = g2po::train::AblationConfig::standard("results/ablation".into(), 5, false);
    /// assert_eq!(c.settings.len(), 4);
    /// assert_eq!(c.estimators.len(), g2po::EstimatorKind::ALL.len());
    /// ```
    pub fn standard(out: PathBuf, seeds: usize, quick: bool) -> Self {
        let iters: usize = if quick { 6 } else { 50 };
        let stage = iters.div_ceil(3);
        let setting = |name: &str, env, curriculum, eval_horizon, temperature| AblationSetting {
            name: name.to_string(),
            env,
            curriculum,
            eval_horizon,
            iterations: iters,
            tasks_per_iter: if quick { 2 } else { 4 },
            eval_tasks: if quick { 2 } else { 8 },
            temperature,
            task_pool: None,
            eval_on_train_pool: false,
            agentgym: None,
        };
        Self {
            out,
            seeds,
            settings: vec![
                setting("lost-robot-fixed30", EnvKind::LostRobot, Curriculum::Fixed(30), 30, 2.0),
                setting(
                    "lost-robot-curriculum",
                    EnvKind::LostRobot,
                    Curriculum::Stepwise { caps: vec![15, 22, 30], stage_len: stage },
                    30,
                    2.0,
                ),
                AblationSetting {
                    iterations: if quick { iters } else { HOUSEHOLD_ITERATIONS },
                    task_pool: Some(HOUSEHOLD_TASK_POOL),
                    eval_on_train_pool: true,
                    ..setting("household-small", EnvKind::HouseholdSmall, Curriculum::Fixed(40), 40, 10.0)
                },
                setting("low-overlap", EnvKind::LowOverlap, Curriculum::Fixed(30), 30, 6.0),
            ],
            estimators: EstimatorKind::ALL.to_vec(),
            base: TrainConfig::default(),
            truth: Some(if quick {
                TruthTableConfig { group_sizes: vec![4], tasks: 2, ..TruthTableConfig::standard(seeds) }
            } else {
                TruthTableConfig::standard(seeds)
            }),
        }
    }

    /// The TextWorld-Express ablation on the Python AgentGym server at
    /// `server` (`http://HOST:PORT`, see `envs/servers/`): the coin collector
    /// (4 rooms with doors; cap [`TWX_HORIZON`]) and the cooking world (1
    /// room, 1 ingredient; same cap), each [`TWX_ITERATIONS`] iterations of 4
    /// tasks x 8 rollouts at temperature [`TWX_TEMPERATURE`], trained on a
    /// fixed pool of [`TWX_TASK_POOL`] games and evaluated greedily on 8
    /// held-out games; GRPO, GiGPO and G2PO. Observations go through the
    /// TextWorld-Express canonicaliser (task on every turn, no move counter,
    /// no action feedback). The same settings run any policy the base
    /// configuration names (the toy policy by default). `quick` shrinks every
    /// run (for smoke tests).
    ///
    /// ```
    /// let c = g2po::train::AblationConfig::textworld_express("x".into(), 5, false, "http://127.0.0.1:36002").unwrap();
    /// assert_eq!(c.settings.len(), 2);
    /// assert!(c.settings.iter().all(|s| s.agentgym.is_some()));
    /// assert!(g2po::train::AblationConfig::textworld_express("x".into(), 5, false, "127.0.0.1").is_err());
    /// ```
    pub fn textworld_express(out: PathBuf, seeds: usize, quick: bool, server: &str) -> Result<Self, TrainError> {
        let iters = if quick { 4 } else { TWX_ITERATIONS };
        let game = |name: &str, path: &str| -> Result<AblationSetting, TrainError> {
            let spec: AgentGymSpec = format!("{}/{path}", server.trim_end_matches('/')).parse()?;
            Ok(AblationSetting {
                name: name.to_string(),
                env: EnvKind::Chain, // not used: the server is
                curriculum: Curriculum::Fixed(TWX_HORIZON),
                eval_horizon: TWX_HORIZON,
                iterations: iters,
                tasks_per_iter: if quick { 2 } else { 4 },
                eval_tasks: if quick { 2 } else { 8 },
                temperature: TWX_TEMPERATURE,
                task_pool: Some(TWX_TASK_POOL),
                eval_on_train_pool: false,
                agentgym: Some(spec),
            })
        };
        Ok(Self {
            out,
            seeds,
            settings: vec![
                game("twx-coin", "textworld-express/coin")?,
                game("twx-cooking", "textworld-express/cooking")?,
            ],
            estimators: vec![EstimatorKind::Grpo, EstimatorKind::Gigpo, EstimatorKind::G2po],
            base: TrainConfig::default(),
            // The exact-truth table needs tabular environments: none over the protocol.
            truth: None,
        })
    }

    /// Checks sizes and every run's training configuration.
    ///
    /// ```
    /// let mut c = g2po::train::AblationConfig::standard("x".into(), 0, true);
    /// assert!(c.validate().is_err());
    /// c.seeds = 2;
    /// assert!(c.validate().is_ok());
    /// ```
    pub fn validate(&self) -> Result<(), TrainError> {
        if self.seeds < 2 {
            return Err(TrainError::BadConfig("an ablation needs at least 2 seeds for intervals".into()));
        }
        if self.settings.is_empty() || self.estimators.is_empty() {
            return Err(TrainError::BadConfig("an ablation needs settings and estimators".into()));
        }
        for s in &self.settings {
            self.run_config(s, self.estimators[0], 0).validate()?;
        }
        Ok(())
    }

    fn run_config(&self, s: &AblationSetting, estimator: EstimatorKind, seed: u64) -> TrainConfig {
        TrainConfig {
            env: s.env,
            estimator,
            curriculum: s.curriculum.clone(),
            iterations: s.iterations,
            tasks_per_iter: s.tasks_per_iter,
            eval_tasks: s.eval_tasks,
            eval_every: 1,
            eval_horizon: Some(s.eval_horizon),
            temperature: s.temperature,
            task_pool: s.task_pool,
            eval_on_train_pool: s.eval_on_train_pool,
            agentgym: s.agentgym.clone(),
            seed,
            ..self.base.clone()
        }
    }
}

/// One finished run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunResult {
    /// Setting name.
    pub setting: String,
    /// Estimator.
    pub estimator: EstimatorKind,
    /// Seed.
    pub seed: u64,
    /// Per-iteration logs.
    pub logs: Vec<IterationLog>,
}

impl RunResult {
    fn evals(&self) -> Vec<f64> {
        self.logs.iter().filter_map(|l| l.eval_success).collect()
    }

    /// Mean of the last [`FINAL_WINDOW`] evaluations.
    pub fn final_success(&self) -> f64 {
        let e = self.evals();
        let tail = &e[e.len().saturating_sub(FINAL_WINDOW)..];
        mean(tail)
    }

    /// Mean training success over the last [`FINAL_WINDOW`] iterations.
    pub fn final_train_success(&self) -> f64 {
        let t: Vec<f64> = self.logs.iter().map(|l| l.train_success).collect();
        mean(&t[t.len().saturating_sub(FINAL_WINDOW)..])
    }

    /// Mean evaluation success over the run (normalised area under the curve).
    pub fn auc(&self) -> f64 {
        mean(&self.evals())
    }

    /// Mean correlation with the true advantages (tabular environments).
    pub fn truth_pearson(&self) -> Option<f64> {
        let v: Vec<f64> = self.logs.iter().filter_map(|l| l.truth.map(|t| t.pearson)).collect();
        (!v.is_empty()).then(|| mean(&v))
    }
}

/// One row of the summary table.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SummaryRow {
    /// Setting name.
    pub setting: String,
    /// Estimator.
    pub estimator: EstimatorKind,
    /// Seeds.
    pub n: usize,
    /// Final success, mean over seeds.
    pub final_mean: f64,
    /// Half-width of its 95% t-interval.
    pub final_ci: f64,
    /// Final training success (last iterations, sampling), mean over seeds.
    pub train_mean: f64,
    /// Half-width of its 95% t-interval.
    pub train_ci: f64,
    /// AUC, mean over seeds.
    pub auc_mean: f64,
    /// Half-width of its 95% t-interval.
    pub auc_ci: f64,
    /// Correlation with the true advantages, mean over seeds (tabular only).
    pub truth_pearson: Option<f64>,
}

/// The paired difference of one estimator to GRPO in one setting: per seed,
/// the estimator's metric minus GRPO's on the same seed.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PairedRow {
    /// Setting name.
    pub setting: String,
    /// Estimator (never GRPO).
    pub estimator: EstimatorKind,
    /// Seeds paired.
    pub n: usize,
    /// Final eval success minus GRPO's: mean over seeds.
    pub final_diff: f64,
    /// Half-width of its 95% t-interval.
    pub final_ci: f64,
    /// Final train success minus GRPO's: mean over seeds.
    pub train_diff: f64,
    /// Half-width of its 95% t-interval.
    pub train_ci: f64,
    /// Seeds where the estimator's final train success is above / below / equal to GRPO's.
    pub train_wins: usize,
    /// See `train_wins`.
    pub train_losses: usize,
    /// See `train_wins`.
    pub train_ties: usize,
}

/// Everything an ablation produced.
#[derive(Debug, Clone, PartialEq)]
pub struct AblationReport {
    /// Every run, in (setting, estimator, seed) order.
    pub runs: Vec<RunResult>,
    /// One row per (setting, estimator).
    pub summary: Vec<SummaryRow>,
    /// One row per (setting, estimator other than GRPO); empty without GRPO.
    pub paired: Vec<PairedRow>,
    /// The exact-truth table (empty when not asked for).
    pub truth: Vec<TruthRow>,
    /// Wall time of the runs in seconds.
    pub wall_s: f64,
    /// Files written.
    pub files: Vec<PathBuf>,
}

fn mean(x: &[f64]) -> f64 {
    if x.is_empty() { 0.0 } else { x.iter().sum::<f64>() / x.len() as f64 }
}

/// Two-sided 97.5% Student-t quantile for `df` degrees of freedom (normal beyond 30).
fn t975(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
    ];
    if df == 0 { f64::INFINITY } else { T.get(df - 1).copied().unwrap_or(1.96) }
}

/// Mean and 95% t-interval half-width of `x`.
///
/// ```
/// let (m, h) = g2po::train::ablation::mean_ci(&[1.0, 2.0, 3.0]);
/// assert_eq!(m, 2.0);
/// assert!((h - 4.303 / 3f64.sqrt()).abs() < 1e-9);
/// ```
pub fn mean_ci(x: &[f64]) -> (f64, f64) {
    let m = mean(x);
    if x.len() < 2 {
        return (m, f64::INFINITY);
    }
    let var = x.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (x.len() - 1) as f64;
    (m, t975(x.len() - 1) * (var / x.len() as f64).sqrt())
}

/// Runs the ablation, writes `runs.csv`, `summary.md` and one PNG per setting
/// into `cfg.out`, and returns the report. `progress(done, total)` is called
/// after each run (from worker threads).
///
/// ```no_run
/// let cfg = g2po::train::AblationConfig::standard("results/ablation".into(), 5, false);
/// let report = g2po::train::run_ablation(&cfg, |done, total| eprintln!("{done}/{total}")).unwrap();
/// println!("{:.0} s", report.wall_s);
/// ```
pub fn run_ablation(
    cfg: &AblationConfig,
    progress: impl Fn(usize, usize) + Sync,
) -> Result<AblationReport, TrainError> {
    cfg.validate()?;
    let started = Instant::now();
    let mut jobs = Vec::new();
    for s in &cfg.settings {
        for &e in &cfg.estimators {
            for seed in 0..cfg.seeds as u64 {
                jobs.push((s, e, seed));
            }
        }
    }
    let done = AtomicUsize::new(0);
    let runs = jobs
        .par_iter()
        .map(|&(s, e, seed)| -> Result<RunResult, TrainError> {
            let logs = Trainer::new(cfg.run_config(s, e, seed))?.run(|_| {})?;
            progress(done.fetch_add(1, Ordering::Relaxed) + 1, jobs.len());
            Ok(RunResult { setting: s.name.clone(), estimator: e, seed, logs })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let truth = match &cfg.truth {
        Some(t) => run_truth_table(t)?,
        None => Vec::new(),
    };
    let wall_s = started.elapsed().as_secs_f64();
    let summary = summarise(cfg, &runs);
    let paired = paired_to_grpo(cfg, &runs);
    std::fs::create_dir_all(&cfg.out).map_err(io(&cfg.out))?;
    let mut files = vec![write_csv(&cfg.out, &runs)?, write_summary(cfg, &summary, &paired, wall_s)?];
    if !truth.is_empty() {
        let path = cfg.out.join("truth.md");
        std::fs::write(&path, truth_markdown(&truth)).map_err(io(&path))?;
        files.push(path);
    }
    let font = load_font();
    for s in &cfg.settings {
        files.push(plot_setting(&cfg.out, s, &cfg.estimators, &runs, font)?);
    }
    Ok(AblationReport { runs, summary, paired, truth, wall_s, files })
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io { path: path.display().to_string(), source }
}

fn summarise(cfg: &AblationConfig, runs: &[RunResult]) -> Vec<SummaryRow> {
    let mut rows = Vec::new();
    for s in &cfg.settings {
        for &e in &cfg.estimators {
            let mine: Vec<&RunResult> = runs.iter().filter(|r| r.setting == s.name && r.estimator == e).collect();
            let (final_mean, final_ci) = mean_ci(&mine.iter().map(|r| r.final_success()).collect::<Vec<_>>());
            let (train_mean, train_ci) = mean_ci(&mine.iter().map(|r| r.final_train_success()).collect::<Vec<_>>());
            let (auc_mean, auc_ci) = mean_ci(&mine.iter().map(|r| r.auc()).collect::<Vec<_>>());
            let truth: Vec<f64> = mine.iter().filter_map(|r| r.truth_pearson()).collect();
            rows.push(SummaryRow {
                setting: s.name.clone(),
                estimator: e,
                n: mine.len(),
                final_mean,
                final_ci,
                train_mean,
                train_ci,
                auc_mean,
                auc_ci,
                truth_pearson: (!truth.is_empty()).then(|| mean(&truth)),
            });
        }
    }
    rows
}

fn paired_to_grpo(cfg: &AblationConfig, runs: &[RunResult]) -> Vec<PairedRow> {
    let mut rows = Vec::new();
    let find = |setting: &str, e: EstimatorKind, seed: u64| {
        runs.iter().find(|r| r.setting == setting && r.estimator == e && r.seed == seed)
    };
    for s in &cfg.settings {
        for &e in cfg.estimators.iter().filter(|&&e| e != EstimatorKind::Grpo) {
            let pairs: Vec<(&RunResult, &RunResult)> = (0..cfg.seeds as u64)
                .filter_map(|seed| Some((find(&s.name, e, seed)?, find(&s.name, EstimatorKind::Grpo, seed)?)))
                .collect();
            if pairs.is_empty() {
                continue;
            }
            let final_d: Vec<f64> = pairs.iter().map(|(a, g)| a.final_success() - g.final_success()).collect();
            let train_d: Vec<f64> =
                pairs.iter().map(|(a, g)| a.final_train_success() - g.final_train_success()).collect();
            let (final_diff, final_ci) = mean_ci(&final_d);
            let (train_diff, train_ci) = mean_ci(&train_d);
            rows.push(PairedRow {
                setting: s.name.clone(),
                estimator: e,
                n: pairs.len(),
                final_diff,
                final_ci,
                train_diff,
                train_ci,
                train_wins: train_d.iter().filter(|&&d| d > 0.0).count(),
                train_losses: train_d.iter().filter(|&&d| d < 0.0).count(),
                train_ties: train_d.iter().filter(|&&d| d == 0.0).count(),
            });
        }
    }
    rows
}

fn opt(x: Option<f64>) -> String {
    x.map_or_else(String::new, |v| format!("{v:.6}"))
}

fn write_csv(out: &Path, runs: &[RunResult]) -> Result<PathBuf, TrainError> {
    let mut s = String::from(
        "setting,estimator,seed,iteration,horizon,train_success,eval_success,mean_length,policy_loss,clip_fraction,approx_kl,entropy,grad_norm,truth_pearson,truth_mse,value_loss,explained_variance,wall_s\n",
    );
    for r in runs {
        for l in &r.logs {
            let u = &l.update;
            let _ = writeln!(
                s,
                "{},{},{},{},{},{:.6},{},{:.3},{:.6},{:.6},{:.6},{:.6},{:.6},{},{},{},{},{:.3}",
                r.setting,
                r.estimator,
                r.seed,
                l.iteration,
                l.horizon,
                l.train_success,
                opt(l.eval_success),
                l.mean_length,
                u.diagnostics.policy_loss,
                u.diagnostics.clip_fraction,
                u.diagnostics.approx_kl_old,
                u.diagnostics.entropy,
                u.grad_norm,
                opt(l.truth.map(|t| t.pearson)),
                opt(l.truth.map(|t| t.mse)),
                opt(l.critic.map(|c| c.value_loss)),
                opt(l.critic.map(|c| c.explained_variance)),
                l.wall_s
            );
        }
    }
    let path = out.join("runs.csv");
    std::fs::write(&path, s).map_err(io(&path))?;
    Ok(path)
}

fn write_summary(
    cfg: &AblationConfig,
    rows: &[SummaryRow],
    paired: &[PairedRow],
    wall_s: f64,
) -> Result<PathBuf, TrainError> {
    let mut s = String::from("# Ablation summary\n\n");
    let _ = writeln!(
        s,
        "{} seeds per cell; final = mean greedy eval success over the last {FINAL_WINDOW} evaluations; \
         final train = mean sampling success of the last {FINAL_WINDOW} iterations' rollouts; \
         AUC = mean eval success over all iterations; ± = 95% Student-t half-width over seeds; \
         truth corr = mean Pearson correlation of the estimator's advantages with the exact ones \
         (tabular envs only). Runs took {wall_s:.0} s of wall time.\n",
        cfg.seeds
    );
    for st in &cfg.settings {
        let _ = writeln!(
            s,
            "- `{}`: env {}, horizon schedule `{}`, eval horizon {}, {} iterations x {} tasks x {} rollouts, {} eval tasks{}, temperature {}{}",
            st.name,
            st.env_label(),
            st.curriculum,
            st.eval_horizon,
            st.iterations,
            st.tasks_per_iter,
            cfg.base.rollouts_per_task,
            st.eval_tasks,
            if st.eval_on_train_pool { " (from the training pool)" } else { " (held out)" },
            st.temperature,
            st.task_pool.map_or_else(String::new, |p| format!(", training tasks from the fixed pool of seeds 0..{p}"))
        );
    }
    s.push_str("\n| setting | estimator | final eval success | final train success | eval AUC | truth corr |\n|---|---|---|---|---|---|\n");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {:.3} ± {:.3} | {:.3} ± {:.3} | {:.3} ± {:.3} | {} |",
            r.setting,
            r.estimator,
            r.final_mean,
            r.final_ci,
            r.train_mean,
            r.train_ci,
            r.auc_mean,
            r.auc_ci,
            r.truth_pearson.map_or_else(|| "–".to_string(), |v| format!("{v:.3}"))
        );
    }
    if !paired.is_empty() {
        s.push_str(
            "\nPaired difference to GRPO (same seed: same initial policy and first rollouts), mean ± 95% \
             t-interval over seeds; wins/losses/ties count the seeds where the final train success is \
             above/below/equal to GRPO's.\n\n| setting | estimator | final eval - GRPO | final train - GRPO | train wins/losses/ties |\n|---|---|---|---|---|\n",
        );
        for p in paired {
            let _ = writeln!(
                s,
                "| {} | {} | {:+.3} ± {:.3} | {:+.3} ± {:.3} | {}/{}/{} |",
                p.setting,
                p.estimator,
                p.final_diff,
                p.final_ci,
                p.train_diff,
                p.train_ci,
                p.train_wins,
                p.train_losses,
                p.train_ties
            );
        }
    }
    s.push_str("\nCurves: `<setting>.png` (left: greedy eval success at the eval horizon; right: training success at the current cap; mean over seeds), one colour per estimator (legend in the plot).\n");
    let path = cfg.out.join("summary.md");
    std::fs::write(&path, s).map_err(io(&path))?;
    Ok(path)
}

/// Registers a system TTF for plot text; `false` (plots without text) when none is found.
fn load_font() -> bool {
    const CANDIDATES: [&str; 3] = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    ];
    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *REGISTERED.get_or_init(|| {
        CANDIDATES.iter().any(|p| {
            std::fs::read(p).ok().is_some_and(|bytes| {
                // plotters keeps fonts for the whole process, so the bytes must be 'static;
                // the OnceLock makes this a one-time leak.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                plotters::style::register_font("sans-serif", plotters::style::FontStyle::Normal, bytes).is_ok()
            })
        })
    })
}

fn colour(e: EstimatorKind) -> plotters::style::RGBColor {
    use plotters::style::RGBColor;
    match e {
        EstimatorKind::Grpo => RGBColor(214, 39, 40),
        EstimatorKind::Gigpo => RGBColor(31, 119, 180),
        EstimatorKind::G2po => RGBColor(44, 160, 44),
        EstimatorKind::G2poTree => RGBColor(148, 103, 189),
        EstimatorKind::G2poBellman => RGBColor(23, 190, 207),
        EstimatorKind::Rloo => RGBColor(255, 127, 14),
        EstimatorKind::ReinforcePlusPlusBaseline => RGBColor(140, 86, 75),
        EstimatorKind::GrpoPassk => RGBColor(127, 127, 127),
        EstimatorKind::Ppo => RGBColor(188, 189, 34),
    }
}

fn plot_setting(
    out: &Path,
    s: &AblationSetting,
    estimators: &[EstimatorKind],
    runs: &[RunResult],
    font: bool,
) -> Result<PathBuf, TrainError> {
    let path = out.join(format!("{}.png", s.name));
    draw_panels(&path, s, estimators, runs, font)?;
    Ok(path)
}

fn draw_panels(
    path: &Path,
    s: &AblationSetting,
    estimators: &[EstimatorKind],
    runs: &[RunResult],
    font: bool,
) -> Result<(), TrainError> {
    use plotters::prelude::*;
    let perr = |e: &dyn std::fmt::Display| TrainError::Plot(e.to_string());
    let root = BitMapBackend::new(path, (1000, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| perr(&e))?;
    let panels = root.split_evenly((1, 2));
    for (panel, (title, pick)) in panels.iter().zip([
        (
            "eval success (greedy, eval horizon)",
            (|l: &IterationLog| l.eval_success) as fn(&IterationLog) -> Option<f64>,
        ),
        ("train success (current cap)", |l: &IterationLog| Some(l.train_success)),
    ]) {
        let mut b = ChartBuilder::on(panel);
        b.margin(12);
        if font {
            b.caption(format!("{}: {title}", s.name), ("sans-serif", 16)).x_label_area_size(30).y_label_area_size(40);
        }
        let mut chart = b.build_cartesian_2d(1f64..s.iterations as f64, 0f64..1.02f64).map_err(|e| perr(&e))?;
        let mut mesh = chart.configure_mesh();
        if !font {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.draw().map_err(|e| perr(&e))?;
        for &e in estimators {
            let mine: Vec<&RunResult> = runs.iter().filter(|r| r.setting == s.name && r.estimator == e).collect();
            let pts: Vec<(f64, f64)> = (0..s.iterations)
                .filter_map(|i| {
                    let v: Vec<f64> = mine.iter().filter_map(|r| r.logs.get(i).and_then(pick)).collect();
                    (!v.is_empty()).then(|| ((i + 1) as f64, mean(&v)))
                })
                .collect();
            let series = chart.draw_series(LineSeries::new(pts, colour(e).stroke_width(2))).map_err(|e| perr(&e))?;
            if font {
                series
                    .label(e.to_string())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], colour(e).stroke_width(2)));
            }
        }
        if font {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperLeft)
                .draw()
                .map_err(|e| perr(&e))?;
        }
    }
    root.present().map_err(|e| perr(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn household_setting_trains_on_a_pool_and_runs_inherit_it() {
        let cfg = AblationConfig::standard("unused".into(), 2, false);
        let hh = cfg.settings.iter().find(|s| s.env == EnvKind::HouseholdSmall).unwrap();
        assert!(hh.task_pool.is_some() && hh.eval_on_train_pool);
        let run = cfg.run_config(hh, EstimatorKind::Grpo, 3);
        assert_eq!((run.task_pool, run.eval_on_train_pool, run.seed), (hh.task_pool, true, 3));
        assert!(run.validate().is_ok());
        // The other settings keep fresh training tasks and held-out evaluation.
        assert!(cfg.settings.iter().filter(|s| s.env != EnvKind::HouseholdSmall).all(|s| s.task_pool.is_none()));
    }
}
