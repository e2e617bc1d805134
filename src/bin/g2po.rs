//! The `g2po` command-line tool.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use g2po::graph::StateGraph;
use g2po::keys::StateKeyer;
use g2po::train::{AblationConfig, TrainConfig, TrainError, Trainer, run_ablation};
use g2po::{AdvantageEstimator, Estimator, EstimatorConfig, EstimatorKind, Grouping, Normalization, StatsOver};

#[derive(Parser)]
#[command(name = "g2po", version, about = "Graph-based advantage estimation (GRPO, GiGPO, G2PO) for LLM agents")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process, so the size of the largest variant (`train` with the SmolLM2
// options) costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Compute per-row advantages of a rollout file (JSONL rows or a conformance-vector file).
    Advantages(AdvantagesArgs),
    /// Draw the state graph of one task group.
    Graph(GraphArgs),
    /// Train the toy text policy on an environment with an estimator (one JSONL log line per iteration).
    Train(TrainArgs),
    /// Run the estimator ablation (runs.csv, summary.md with paired differences to GRPO, truth.md, PNG curves).
    Ablate(AblateArgs),
    /// Serve one of g2po's environments over the AgentGym HTTP protocol (until killed).
    ServeEnv(ServeEnvArgs),
}

#[derive(Args)]
struct ServeEnvArgs {
    /// Environment: chain, lost-robot, household, household-small or low-overlap.
    #[arg(long)]
    env: g2po_envs::EnvKind,
    /// Address to listen on (loopback by default; the protocol has no authentication).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port (0 picks a free one; the chosen URL is printed as `listening on URL`).
    #[arg(long, default_value_t = 36001)]
    port: u16,
    /// Most environment instances open at once.
    #[arg(long, default_value_t = 1024)]
    max_instances: usize,
    /// Worker threads answering requests.
    #[arg(long, default_value_t = 4)]
    threads: usize,
}

#[derive(Args)]
struct TrainArgs {
    /// Environment: chain, lost-robot, household, household-small, low-overlap, or an
    /// AgentGym server `agentgym:http://HOST:PORT[/PATH][?canon=..&timeout=S]`.
    #[arg(long, default_value = "household")]
    env: g2po_envs::EnvSpec,
    /// Estimator: grpo, gigpo, g2po, g2po_tree, g2po_bellman, rloo, reinforce_plus_plus_baseline or grpo_passk.
    #[arg(long, value_parser = parse_kind, default_value = "g2po")]
    estimator: EstimatorKind,
    /// Horizon schedule: `fixed:H`, `stepwise:6,13,20@100` or `linear:...`.
    #[arg(long, default_value = "fixed:30")]
    curriculum: g2po::curriculum::Curriculum,
    /// Iterations (one update each).
    #[arg(long, default_value_t = 100, value_parser = at_least_one::<usize>)]
    iterations: usize,
    /// Task groups per iteration.
    #[arg(long, default_value_t = 4, value_parser = at_least_one::<usize>)]
    tasks: usize,
    /// Rollouts per task (group size N).
    #[arg(long, default_value_t = 8, value_parser = at_least_one::<usize>)]
    rollouts: usize,
    /// Held-out evaluation tasks (0 disables evaluation).
    #[arg(long, default_value_t = 8)]
    eval_tasks: usize,
    /// Evaluation turn cap (default: the current curriculum cap).
    #[arg(long, value_parser = at_least_one::<usize>)]
    eval_horizon: Option<usize>,
    /// Rollout sampling temperature.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    temperature: f64,
    /// Learning rate.
    #[arg(long, default_value_t = 1e-2, allow_negative_numbers = true)]
    lr: f64,
    /// Seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Anchor rows with the environment's exact state key instead of the text.
    #[arg(long)]
    anchor_from_key: bool,
    /// Draw training tasks from the fixed pool of task seeds `0..N` (default: fresh seeds).
    #[arg(long, value_parser = at_least_one::<u64>)]
    task_pool: Option<u64>,
    /// Evaluate on the first `--eval-tasks` seeds of the training pool instead of held-out ones.
    #[arg(long)]
    eval_on_train_pool: bool,
    /// JSONL log file (one line per iteration); none by default.
    #[arg(long)]
    log: Option<PathBuf>,
    /// Device for the policy, the reference policy and the optimizer: cpu, cuda or cuda:N
    /// (CUDA needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    device: g2po::train::DeviceSpec,
    /// The policy: the toy bag-of-words policy, or SmolLM2-135M-Instruct with LoRA adapters
    /// (weights from `scripts/fetch-smollm2.sh`).
    #[arg(long, value_enum, default_value_t = PolicyChoice::Toy)]
    policy: PolicyChoice,
    #[command(flatten)]
    lm: LmArgs,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PolicyChoice {
    /// The toy bag-of-words policy.
    Toy,
    /// SmolLM2-135M-Instruct + LoRA.
    Smollm2,
}

/// Options of `--policy smollm2`.
#[derive(Args)]
struct LmArgs {
    /// GGUF file of SmolLM2 (default: the cache of `scripts/fetch-smollm2.sh`).
    #[arg(long)]
    gguf: Option<PathBuf>,
    /// LoRA rank.
    #[arg(long, default_value_t = 8)]
    lora_rank: usize,
    /// LoRA alpha (the update is scaled by alpha / rank).
    #[arg(long, default_value_t = 16.0)]
    lora_alpha: f64,
    /// Adapted projections, comma-separated: q, k, v, o, gate, up, down.
    #[arg(long, default_value = "q,k,v,o", value_delimiter = ',')]
    lora_targets: Vec<g2po::lm::Projection>,
    /// Adapt only the top N blocks (default: all 30).
    #[arg(long)]
    lora_top_layers: Option<usize>,
    /// Earlier turns shown in the prompt.
    #[arg(long, default_value_t = 2)]
    history: usize,
    /// Greedy evaluation rule: mean (length-normalised) or sum of token log-probs.
    #[arg(long, value_enum, default_value_t = GreedyChoice::Mean)]
    greedy: GreedyChoice,
    /// Also evaluate the untrained policy before the first update (logged as
    /// `lm_profile.eval_before` of iteration 1).
    #[arg(long)]
    eval_before: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum GreedyChoice {
    /// Argmax of the mean token log-probability.
    Mean,
    /// Argmax of the summed token log-probability.
    Sum,
}

impl LmArgs {
    fn options(&self) -> g2po::train::LmTrainOptions {
        let mut policy = g2po::lm::LmPolicyConfig::default();
        policy.lora.rank = self.lora_rank;
        policy.lora.alpha = self.lora_alpha;
        policy.lora.targets = self.lora_targets.clone();
        policy.lora.top_layers = self.lora_top_layers;
        policy.prompt.history = self.history;
        policy.greedy = match self.greedy {
            GreedyChoice::Mean => g2po::lm::GreedyRule::MeanLogProb,
            GreedyChoice::Sum => g2po::lm::GreedyRule::SumLogProb,
        };
        g2po::train::LmTrainOptions { gguf: self.gguf.clone(), policy, eval_before: self.eval_before }
    }
}

#[derive(Args)]
struct AblateArgs {
    /// Output folder.
    #[arg(long, default_value = "results/ablation")]
    out: PathBuf,
    /// Seeds per (setting, estimator).
    #[arg(long, default_value_t = 10)]
    seeds: usize,
    /// Tiny runs (smoke test).
    #[arg(long)]
    quick: bool,
    /// Which settings: the standard in-process ones, or TextWorld-Express over the AgentGym protocol.
    #[arg(long, value_enum, default_value_t = Suite::Standard)]
    suite: Suite,
    /// For `--suite textworld-express`: the Python AgentGym server (`http://HOST:PORT`); by
    /// default one is started on a free loopback port with the servers' Python
    /// (`$G2PO_ENV_PYTHON`, else the virtual environment of `envs/servers/setup-venv.sh`).
    #[arg(long)]
    env_server: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Suite {
    /// Lost robot (fixed and curriculum), small household, low overlap.
    Standard,
    /// TextWorld-Express coin collector and cooking world.
    TextworldExpress,
}

#[derive(Args)]
struct EstimatorArgs {
    /// Estimator (grpo, gigpo, g2po, g2po_tree, g2po_bellman, rloo, reinforce_plus_plus_baseline,
    /// grpo_passk); defaults to the vector file's, else g2po.
    #[arg(long, value_parser = parse_kind)]
    estimator: Option<EstimatorKind>,
    /// Discount gamma.
    #[arg(long, allow_negative_numbers = true)]
    gamma: Option<f64>,
    /// Epsilon added to the std.
    #[arg(long, allow_negative_numbers = true)]
    epsilon: Option<f64>,
    /// mean_std_norm or mean_norm.
    #[arg(long, value_parser = parse_norm)]
    mode: Option<Normalization>,
    /// Weight w of the step / graph terms.
    #[arg(long, allow_negative_numbers = true)]
    step_weight: Option<f64>,
    /// Penalty p for an invalid action.
    #[arg(long, allow_negative_numbers = true)]
    invalid_penalty: Option<f64>,
    /// Episode statistics over rows or trajectories.
    #[arg(long, value_parser = parse_stats)]
    stats_over: Option<StatsOver>,
    /// Fuse states by difflib similarity at this threshold instead of exact keys.
    #[arg(long, allow_negative_numbers = true)]
    similarity: Option<f64>,
    /// Canonicalise anchor text before hashing.
    #[arg(long, value_enum, default_value_t = Canon::None)]
    canonicalize: Canon,
}

#[derive(Clone, Copy, ValueEnum)]
enum Canon {
    /// Hash the text as it is.
    None,
    /// Strip turn prefixes and move counters, collapse whitespace.
    TextEnv,
}

/// A count that must be at least 1, checked where the flag is read so the
/// message names the flag (`--tasks`), not the configuration field behind it.
fn at_least_one<T: TryFrom<u64>>(s: &str) -> Result<T, String> {
    let n: u64 = s.trim().parse().map_err(|_| format!("expected a whole number of at least 1, got {s:?}"))?;
    if n == 0 {
        return Err("must be at least 1".into());
    }
    T::try_from(n).map_err(|_| format!("{n} is too large"))
}

fn parse_kind(s: &str) -> Result<EstimatorKind, String> {
    s.parse().map_err(|e: g2po::Error| e.to_string())
}
fn parse_norm(s: &str) -> Result<Normalization, String> {
    s.parse().map_err(|e: g2po::Error| e.to_string())
}
fn parse_stats(s: &str) -> Result<StatsOver, String> {
    s.parse().map_err(|e: g2po::Error| e.to_string())
}

impl EstimatorArgs {
    /// Flags override the file's header, which overrides the defaults.
    fn config(&self, header: Option<&EstimatorConfig>) -> EstimatorConfig {
        let kind = self.estimator.or(header.map(|h| h.kind)).unwrap_or(EstimatorKind::G2po);
        let mut cfg = match header {
            Some(h) => EstimatorConfig { kind, ..*h },
            None => EstimatorConfig::new(kind),
        };
        cfg.gamma = self.gamma.unwrap_or(cfg.gamma);
        cfg.epsilon = self.epsilon.unwrap_or(cfg.epsilon);
        cfg.norm = self.mode.unwrap_or(cfg.norm);
        cfg.step_weight = self.step_weight.unwrap_or(cfg.step_weight);
        cfg.invalid_penalty = self.invalid_penalty.unwrap_or(cfg.invalid_penalty);
        cfg.stats_over = self.stats_over.unwrap_or(cfg.stats_over);
        if let Some(threshold) = self.similarity {
            cfg.grouping = Grouping::Similarity { threshold };
        }
        cfg
    }

    fn keyer(&self) -> StateKeyer {
        match self.canonicalize {
            Canon::None => StateKeyer::new(),
            Canon::TextEnv => StateKeyer::text_env(),
        }
    }

    fn estimator(&self, config: EstimatorConfig) -> g2po::Result<Estimator> {
        Ok(Estimator::new(config)?.with_keyer(self.keyer()))
    }
}

#[derive(Args)]
struct AdvantagesArgs {
    /// Rollout rows: JSONL, or a conformance-vector JSON file.
    #[arg(long)]
    input: PathBuf,
    /// Where to write the JSONL advantages ("-" for stdout); never the input file.
    #[arg(long, default_value = "-")]
    output: PathBuf,
    /// Compare with the vector file's expected rows (tolerance 1e-4); exit 1 on a mismatch.
    #[arg(long)]
    check: bool,
    /// How many groups to summarise on stderr (0: no summary).
    #[arg(long, default_value_t = 8)]
    summary_groups: usize,
    #[command(flatten)]
    estimator: EstimatorArgs,
}

#[derive(Args)]
struct GraphArgs {
    /// Rollout rows: JSONL, or a conformance-vector JSON file.
    #[arg(long)]
    input: PathBuf,
    /// Task group id.
    #[arg(long)]
    group: String,
    /// Output format.
    #[arg(long, value_enum, default_value_t = GraphFormat::Dot)]
    format: GraphFormat,
    /// Where to write it ("-" for stdout); never the input file.
    #[arg(long, default_value = "-")]
    output: PathBuf,
    #[command(flatten)]
    estimator: EstimatorArgs,
}

#[derive(Clone, Copy, ValueEnum)]
enum GraphFormat {
    Dot,
    Json,
}

/// Where a command writes: stdout, a regular file (replaced whole, through a
/// temporary file in its folder and a rename), or something else that
/// exists, such as a device or a pipe (written in place: it cannot be
/// renamed over).
enum Destination {
    Stdout,
    Replace(PathBuf),
    InPlace(PathBuf),
}

impl Destination {
    /// Refuses the input file itself, by any path: comparing file identity
    /// catches symlinks, `./`, `..` and hard links, which comparing names
    /// would miss.
    fn new(output: &Path, input: &Path) -> g2po::Result<Self> {
        if output.as_os_str() == "-" {
            return Ok(Destination::Stdout);
        }
        if same_file(output, input) {
            return Err(g2po::Error::InvalidParameter {
                name: "output",
                reason: format!(
                    "{} is the input file ({}); writing there would destroy the rollouts, choose another path",
                    output.display(),
                    input.display()
                ),
            });
        }
        Ok(match std::fs::metadata(output) {
            Ok(meta) if !meta.is_file() && !meta.is_dir() => Destination::InPlace(output.to_owned()),
            // Write through a symlink to the file it names.
            Ok(_) => Destination::Replace(std::fs::canonicalize(output).map_err(io_err(output))?),
            Err(_) => Destination::Replace(output.to_owned()),
        })
    }

    /// Runs `write` into the destination. A file is first written beside its
    /// target and renamed over it only when `write` succeeded, so a failure
    /// leaves no partial file (the old one, if any, is kept).
    fn write(&self, write: impl FnOnce(&mut dyn Write) -> g2po::Result<()>) -> g2po::Result<()> {
        match self {
            Destination::Stdout => {
                let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                write(&mut out).and_then(|()| out.flush().map_err(io_err(Path::new("<stdout>"))))
            }
            Destination::InPlace(path) => {
                let file = std::fs::OpenOptions::new().write(true).open(path).map_err(io_err(path))?;
                let mut out = std::io::BufWriter::new(file);
                write(&mut out).map_err(|e| relabel(e, path))?;
                out.flush().map_err(io_err(path))
            }
            Destination::Replace(path) => {
                let mut temp = temp_beside(path).map_err(io_err(path))?;
                {
                    // Small writes are gathered; the advantage writer's
                    // windows (hundreds of KB each) pass straight through.
                    let mut out = std::io::BufWriter::with_capacity(64 << 10, temp.as_file_mut());
                    write(&mut out).map_err(|e| relabel(e, path))?;
                    out.flush().map_err(io_err(path))?;
                }
                temp.persist(path)
                    .map_err(|e| g2po::Error::Io { path: path.display().to_string(), source: e.error })?;
                Ok(())
            }
        }
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        #[cfg(unix)]
        (Ok(x), Ok(y)) => {
            use std::os::unix::fs::MetadataExt;
            x.dev() == y.dev() && x.ino() == y.ino()
        }
        #[cfg(not(unix))]
        (Ok(_), Ok(_)) => std::fs::canonicalize(a).ok() == std::fs::canonicalize(b).ok(),
        _ => false,
    }
}

/// A temporary file beside `path`, with the permissions `File::create`
/// would give: the old file's, else 0o666 less the umask (tempfile's own
/// default, 0o600, would make outputs private).
fn temp_beside(path: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut builder = tempfile::Builder::new();
    builder.prefix(".g2po-").suffix(".tmp");
    if let Ok(meta) = std::fs::metadata(path) {
        builder.permissions(meta.permissions());
    } else {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            builder.permissions(std::fs::Permissions::from_mode(0o666));
        }
    }
    builder.tempfile_in(dir)
}

/// The library's writer names no path; give its I/O errors the real one.
fn relabel(err: g2po::Error, path: &Path) -> g2po::Error {
    match err {
        g2po::Error::Io { source, .. } => g2po::Error::Io { path: path.display().to_string(), source },
        other => other,
    }
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> g2po::Error + '_ {
    move |source| g2po::Error::Io { path: path.display().to_string(), source }
}

fn advantages(args: &AdvantagesArgs) -> g2po::Result<bool> {
    let destination = Destination::new(&args.output, &args.input)?;
    // Unless texts are compared (similarity grouping), JSONL texts are hashed
    // as they are parsed and never copied; a vector file keeps its texts, so
    // the grouping its header states still works.
    let input = match args.estimator.similarity {
        None => g2po::io::read_path_keyed(&args.input, &args.estimator.keyer())?,
        Some(_) => g2po::io::read_path(&args.input)?,
    };
    // Fail before computing or writing anything.
    let expected = match (&input.header, args.check) {
        (_, false) => None,
        (Some(header), true) if !header.expected.is_empty() => Some(&header.expected),
        _ => {
            return Err(g2po::Error::InvalidParameter {
                name: "check",
                reason: format!(
                    "--check needs a conformance-vector file with \"expected\" rows; {} has none",
                    args.input.display()
                ),
            });
        }
    };
    let config = args.estimator.config(input.header.as_ref().map(|h| &h.config));
    let estimator = args.estimator.estimator(config)?;
    let adv = estimator.estimate(&input.batch).map_err(|e| input.locate(e))?;
    destination.write(|out: &mut dyn Write| g2po::io::write_jsonl(&adv, out)).map_err(|e| input.locate(e))?;
    summarise(&input, &adv, estimator.name(), args.summary_groups)?;
    let ok = match expected {
        Some(expected) => report_check(&input, &g2po::io::compare(&adv, expected)),
        None => true,
    };
    // The process ends next: handing a large batch's buffers back to the
    // allocator one by one would only cost time.
    std::mem::forget(adv);
    std::mem::forget(input);
    Ok(ok)
}

/// The stderr summary, computed for the groups it shows only, from what the
/// estimator produced: rows and trajectories for every estimator, states for
/// those that find states (GiGPO's step groups, G2PO's nodes), and the
/// graph's edges, self-loops and cycles for G2PO.
fn summarise(input: &g2po::io::Input, adv: &g2po::Advantages, name: &str, groups: usize) -> g2po::Result<()> {
    if groups == 0 {
        return Ok(());
    }
    let batch = &input.batch;
    eprintln!("{name}: {} rows, {} trajectories, {} groups", batch.len(), batch.num_trajectories(), batch.num_groups());
    let has_graph = adv.next_node.len() == batch.len() && adv.node_value.len() == batch.len();
    let has_states = adv.node.len() == batch.len();
    for group in 0..batch.num_groups().min(groups) {
        let rows = batch.group_rows(group);
        let trajectories = rows.iter().filter(|&&r| batch.steps()[r as usize] == 0).count();
        let mut line =
            format!("  group {}: {} rows, {trajectories} trajectories", batch.group_ids()[group], rows.len());
        if has_graph {
            let s = StateGraph::build(batch, adv, group)?.stats();
            line += &format!(
                ", {} states, {} edges, {:.2} visits/state, {:.0}% single-visit rows, {} self-loops, {}",
                s.states,
                s.edges,
                s.mean_visits_per_node,
                100.0 * s.single_visit_fraction,
                s.self_loops,
                if s.has_cycles { "cycles" } else { "acyclic" }
            );
        } else if has_states {
            let mut visits: std::collections::HashMap<i32, u32> = std::collections::HashMap::new();
            for &r in rows {
                *visits.entry(adv.node[r as usize]).or_default() += 1;
            }
            let single = visits.values().filter(|&&v| v == 1).count();
            line += &format!(
                ", {} step groups, {:.2} visits/group, {:.0}% single-visit rows",
                visits.len(),
                rows.len() as f64 / visits.len() as f64,
                100.0 * single as f64 / rows.len() as f64
            );
        }
        eprintln!("{line}");
    }
    if batch.num_groups() > groups {
        eprintln!("  ... {} more groups", batch.num_groups() - groups);
    }
    Ok(())
}

/// Prints the comparison with the file's expected rows, naming each value
/// that disagrees (expected against computed) at its row's line.
fn report_check(input: &g2po::io::Input, cmp: &g2po::io::Comparison) -> bool {
    const SHOWN: usize = 10;
    let ok = cmp.passes(g2po::io::CHECK_TOLERANCE);
    eprintln!(
        "check: {} values compared, max abs error {:.3e}{}, {} id mismatches, {} problems: {}",
        cmp.compared,
        cmp.max_abs_error,
        cmp.worst.as_ref().map(|(r, f)| format!(" (row {r}, {f})")).unwrap_or_default(),
        cmp.id_mismatches.len(),
        cmp.problems.len(),
        if ok { "PASS" } else { "FAIL" }
    );
    let at = |row: usize| match input.line(row) {
        Some(line) => format!("{}:{line} (row {row})", input.source_name()),
        None => format!("row {row}"),
    };
    let mut details: Vec<String> = cmp
        .mismatches
        .iter()
        .map(|m| {
            format!(
                "{}: {}: expected {}, computed {} (off by {:.3e})",
                at(m.row),
                m.field,
                m.expected,
                m.computed,
                (m.expected - m.computed).abs()
            )
        })
        .collect();
    details.extend(
        cmp.id_mismatches
            .iter()
            .map(|(row, field, want, got)| format!("{}: {field}: expected {want}, computed {got}", at(*row))),
    );
    details.extend(cmp.problems.iter().cloned());
    for detail in details.iter().take(SHOWN) {
        eprintln!("  {detail}");
    }
    if details.len() > SHOWN {
        eprintln!("  ... and {} more", details.len() - SHOWN);
    }
    ok
}

fn graph(args: &GraphArgs) -> g2po::Result<bool> {
    // The graph is G2PO's by definition (nodes, values, TD edges); another
    // estimator has no graph to draw, so asking for one is an error, not a
    // silent substitution.
    if let Some(kind) = args.estimator.estimator.filter(|&k| k != EstimatorKind::G2po) {
        return Err(g2po::Error::InvalidParameter {
            name: "estimator",
            reason: format!("`graph` draws G2PO's state graph; {kind} has none (omit --estimator, or pass g2po)"),
        });
    }
    let destination = Destination::new(&args.output, &args.input)?;
    // The texts label the graph's nodes.
    let input = g2po::io::read_path(&args.input)?;
    let config = EstimatorConfig {
        kind: EstimatorKind::G2po,
        ..args.estimator.config(input.header.as_ref().map(|h| &h.config))
    };
    let adv = args.estimator.estimator(config)?.estimate(&input.batch).map_err(|e| input.locate(e))?;
    let group = input.batch.group_index_of(&args.group).ok_or_else(|| g2po::Error::UnknownGroup(args.group.clone()))?;
    let graph = StateGraph::build(&input.batch, &adv, group)?;
    let text = match args.format {
        GraphFormat::Dot => graph.to_dot(),
        GraphFormat::Json => format!("{:#}\n", graph.to_json()),
    };
    destination.write(|out: &mut dyn Write| {
        out.write_all(text.as_bytes()).map_err(|source| g2po::Error::Io { path: "<output>".into(), source })
    })?;
    Ok(true)
}

fn train(args: &TrainArgs) -> Result<bool, TrainError> {
    let mut cfg = TrainConfig {
        estimator: args.estimator,
        curriculum: args.curriculum.clone(),
        iterations: args.iterations,
        tasks_per_iter: args.tasks,
        rollouts_per_task: args.rollouts,
        eval_tasks: args.eval_tasks,
        eval_horizon: args.eval_horizon,
        temperature: args.temperature,
        learner: g2po::learner::LearnerConfig { lr: args.lr, ..TrainConfig::default().learner },
        seed: args.seed,
        anchor_from_key: args.anchor_from_key,
        device: args.device,
        task_pool: args.task_pool,
        eval_on_train_pool: args.eval_on_train_pool,
        lm: (args.policy == PolicyChoice::Smollm2).then(|| args.lm.options()),
        ..TrainConfig::default()
    };
    cfg.set_env(args.env.clone());
    let mut log = match &args.log {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p).map_err(|source| TrainError::Io { path: p.display().to_string(), source })?,
        )),
        None => None,
    };
    // indicatif hides the bar by itself when stderr is not a terminal.
    let bar = indicatif::ProgressBar::new(cfg.iterations as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} {msg} [{elapsed_precise}]")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut write_err = None;
    // One JSONL line per iteration, flushed at once: an iteration of the SmolLM2 policy takes
    // minutes, so the log is how a long run is followed (and what survives if it is stopped).
    // The SmolLM2 trainer adds its time profile as `lm_profile`.
    let mut on_log = |l: &g2po::train::IterationLog, profile: Option<&g2po::train::LmProfile>| {
        bar.inc(1);
        bar.set_message(format!(
            "h={} train={:.2} eval={} loss={:.4}",
            l.horizon,
            l.train_success,
            l.eval_success.map_or_else(|| "-".into(), |e| format!("{e:.2}")),
            l.update.diagnostics.policy_loss
        ));
        if let (Some(w), None) = (log.as_mut(), &write_err) {
            let mut line = serde_json::to_value(l).expect("logs serialise");
            if let (Some(p), Some(obj)) = (profile, line.as_object_mut()) {
                obj.insert("lm_profile".into(), serde_json::to_value(p).expect("profiles serialise"));
            }
            if let Err(e) = writeln!(w, "{line}").and_then(|_| w.flush()) {
                write_err = Some(e);
            }
        }
    };
    let logs = if cfg.lm.is_some() {
        g2po::train::LmTrainer::new(cfg)?.run_profiled(|l, p| on_log(l, Some(p)))?
    } else {
        Trainer::new(cfg)?.run(|l| on_log(l, None))?
    };
    bar.finish();
    if let (Some(p), Some(source)) = (&args.log, write_err) {
        return Err(TrainError::Io { path: p.display().to_string(), source });
    }
    if let (Some(p), Some(mut w)) = (&args.log, log) {
        w.flush().map_err(|source| TrainError::Io { path: p.display().to_string(), source })?;
    }
    if let Some(last) = logs.last() {
        eprintln!(
            "final: train success {:.3}, eval success {}",
            last.train_success,
            last.eval_success.map_or_else(|| "-".into(), |e| format!("{e:.3}"))
        );
    }
    Ok(true)
}

fn ablate(args: &AblateArgs) -> Result<bool, TrainError> {
    // Held for the whole run: dropping it stops the server this command started.
    let mut started = None;
    let cfg = match args.suite {
        Suite::Standard => AblationConfig::standard(args.out.clone(), args.seeds, args.quick),
        Suite::TextworldExpress => {
            let url = match &args.env_server {
                Some(u) => u.clone(),
                None => {
                    let python = g2po_envs::agentgym::find_env_python().ok_or_else(|| {
                        TrainError::BadConfig(
                            "no servers' Python: run envs/servers/setup-venv.sh, set G2PO_ENV_PYTHON or pass --env-server"
                                .into(),
                        )
                    })?;
                    let server = g2po_envs::agentgym::ServerProcess::python_server(&python, &[])?;
                    eprintln!("started the Python AgentGym server at {}", server.url());
                    started.insert(server).url().to_string()
                }
            };
            AblationConfig::textworld_express(args.out.clone(), args.seeds, args.quick, &url)?
        }
    };
    let total = cfg.settings.len() * cfg.estimators.len() * cfg.seeds;
    let bar = indicatif::ProgressBar::new(total as u64);
    let report = run_ablation(&cfg, |done, _| bar.set_position(done as u64))?;
    bar.finish();
    eprintln!("{} runs in {:.0} s", report.runs.len(), report.wall_s);
    for f in &report.files {
        println!("{}", f.display());
    }
    Ok(true)
}

/// Sizes the thread pools of a training run, before any thread exists.
///
/// * `CANDLE_NUM_THREADS=1`: the toy policy's tensors are small (a forward is a
///   few hundred kB), so candle's intra-op worker pool (default: one thread
///   per core, whose workers spin-wait between ops) gains nothing and competes
///   with the rollout threads for the cores.
/// * `RAYON_NUM_THREADS` = the available parallelism (rayon's own default, so
///   the rollout pool is unchanged): candle asks for its matmul thread count
///   on every matmul, and without this variable it re-reads `/proc/cpuinfo`
///   each time (num_cpus' physical-core count), which dominated small runs.
///
/// Measured in `docs/benchmarks.md` ("Training threads"). Values the user set
/// are kept.
fn size_thread_pools_for_training() {
    let set_default = |name: &str, value: String| {
        if std::env::var_os(name).is_none() {
            // SAFETY: called first thing in `main`, before any other thread
            // exists, so nothing reads the environment concurrently.
            unsafe { std::env::set_var(name, value) };
        }
    };
    set_default("CANDLE_NUM_THREADS", "1".into());
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    set_default("RAYON_NUM_THREADS", cores.to_string());
}

fn serve_env(args: &ServeEnvArgs) -> Result<bool, g2po_envs::EnvError> {
    let config = g2po_envs::agentgym::ServerConfig { max_instances: args.max_instances, threads: args.threads };
    let server = g2po_envs::agentgym::EnvServer::start(args.env, &format!("{}:{}", args.host, args.port), config)?;
    // Tests and scripts wait for this line (with --port 0 it is the only way to learn the port).
    println!("{}{}", g2po_envs::agentgym::LISTENING, server.url());
    std::io::stdout().flush().map_err(|e| g2po_envs::EnvError::Server(format!("stdout: {e}")))?;
    server.wait();
    Ok(true)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Train(_) | Command::Ablate(_)) {
        size_thread_pools_for_training();
        g2po::train::retain_freed_memory();
    }
    let result = match &cli.command {
        Command::Advantages(args) => advantages(args).map_err(|e| e.to_string()),
        Command::Graph(args) => graph(args).map_err(|e| e.to_string()),
        Command::Train(args) => train(args).map_err(|e| e.to_string()),
        Command::Ablate(args) => ablate(args).map_err(|e| e.to_string()),
        Command::ServeEnv(args) => serve_env(args).map_err(|e| e.to_string()),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
