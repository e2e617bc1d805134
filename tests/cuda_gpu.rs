//! GPU vs CPU agreement of the CUDA kernels (fused GRPO loss, G2PO advantage stages).
//!
//! The references are the crate's own CPU implementations, never a copy: the loss is
//! compared with `loss::grpo_loss_cpu` (verl semantics), the stages with
//! `Estimator::estimate` through `cuda::StageHost`. GPU tests skip, printing why, when
//! `GpuContext::new(0)` fails (no driver, no GPU, no NVRTC), unless `G2PO_REQUIRE_GPU=1`
//! makes that a failure (`tests/support/gpu.rs`; checked by
//! `require_gpu_turns_every_skip_into_a_failure`); the host-side tests (input validation,
//! `StageHost` construction) run everywhere the `nvrtc` feature builds.
#![cfg(feature = "nvrtc")]

#[path = "support/gpu.rs"]
mod gpu_support;

use std::collections::HashMap;

use g2po::cuda::{CudaError, GpuContext, StageHost, StagePlan};
use g2po::loss::{KlEstimator, LossAggregation, LossBuffers, LossConfig, LossDiagnostics, LossInputs, grpo_loss_cpu};
use g2po::{
    AdvantageEstimator, Anchor, Estimator, EstimatorConfig, EstimatorKind, Grouping, Normalization, RolloutBatch,
    StatsOver, Step, TerminalValues,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const TOL: f64 = 1e-5;

use gpu_support::gpu_or_skip;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= TOL * (1.0 + a.abs().max(b.abs()))
}

// ---------------------------------------------------------------------------------------
// Loss
// ---------------------------------------------------------------------------------------

/// Random loss inputs (see `random`).
struct LossCase(LossBuffers);

impl LossCase {
    fn random(seed: u64, rows: usize, max_len: usize) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n = rows * max_len;
        let mut logp = Vec::with_capacity(n);
        let mut logp_old = Vec::with_capacity(n);
        let mut logp_ref = Vec::with_capacity(n);
        while logp.len() < n {
            let lp: f32 = rng.random_range(-6.0..-0.01);
            // Mostly small ratio moves (both sides of the clip range), a few beyond +-20.
            let d: f32 =
                if rng.random_bool(0.02) { rng.random_range(-30.0..30.0) } else { rng.random_range(-0.6..0.6) };
            let r: f32 =
                if rng.random_bool(0.05) { rng.random_range(-25.0..25.0) } else { rng.random_range(-1.0..1.0) };
            let (old, rf) = (lp - d, lp + r);
            // f32 on the GPU and f64 here may take different branches right at a kink.
            if near_kink(f64::from(lp), f64::from(old), f64::from(rf)) {
                continue;
            }
            logp.push(lp);
            logp_old.push(old);
            logp_ref.push(rf);
        }
        let adv = (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect();
        let entropy = (0..n).map(|_| rng.random_range(0.0f32..3.0)).collect();
        // Right padding of random length per row. Row 1 (when there are more than two rows) is
        // pure padding: the sequence-mean modes must leave it out of their denominators.
        let mut mask = vec![0.0f32; n];
        for r in 0..rows {
            if r == 1 && rows > 2 {
                continue;
            }
            let len = rng.random_range(1..=max_len);
            for j in 0..len {
                mask[r * max_len + j] = 1.0;
            }
        }
        Self(LossBuffers { rows, max_len, logp, logp_old, logp_ref, advantages: adv, entropy, mask })
    }
}

/// Whether a token lies within rounding distance of a branch point of the loss: the clip
/// bounds of every tested configuration (0.8, 1.2, 1.28), the dual-clip bound 3, the +-20
/// clamps, or the k3 clamp at 10. Both sides compute in f64, but `exp` of the GPU and of the
/// host libm may differ in the last bit, which could flip a branch right at a kink.
fn near_kink(lp: f64, old: f64, rf: f64) -> bool {
    let d = lp - old;
    let rho = d.exp();
    let q = rf - lp;
    let k3 = q.clamp(-20.0, 20.0).exp() - q.clamp(-20.0, 20.0) - 1.0;
    [0.8, 1.2, 1.28, 3.0].iter().any(|b| (rho - b).abs() < 1e-4 * b)
        || (d.abs() - 20.0).abs() < 1e-3
        || (q.abs() - 20.0).abs() < 1e-3
        || (k3 - 10.0).abs() < 1e-3
}

/// Every option combination of SPEC section 4 that changes the arithmetic.
fn all_configs() -> Vec<LossConfig> {
    let mut v = Vec::new();
    let kls = [None, Some((KlEstimator::K1, 0.01)), Some((KlEstimator::K2, 0.005)), Some((KlEstimator::K3, 0.01))];
    let aggs = [
        LossAggregation::TokenMean,
        LossAggregation::SeqMeanTokenSum,
        LossAggregation::SeqMeanTokenMean,
        LossAggregation::SeqMeanTokenSumNorm { length: Some(64.0) },
        LossAggregation::SeqMeanTokenSumNorm { length: None },
    ];
    for kl in kls {
        for aggregation in aggs {
            for (dual_clip, clip_high, entropy_coef) in [(Some(3.0), 0.2, 0.0), (None, 0.28, 0.001)] {
                v.push(LossConfig { clip_low: 0.2, clip_high, dual_clip, kl, entropy_coef, aggregation });
            }
        }
    }
    v
}

fn assert_diag_close(a: &LossDiagnostics, b: &LossDiagnostics, what: &str) {
    let pairs = [
        ("policy_loss", a.policy_loss, b.policy_loss),
        ("clip_fraction", a.clip_fraction, b.clip_fraction),
        ("dual_clip_fraction", a.dual_clip_fraction, b.dual_clip_fraction),
        ("approx_kl_old", a.approx_kl_old, b.approx_kl_old),
        ("approx_kl_old_k3", a.approx_kl_old_k3, b.approx_kl_old_k3),
        ("kl_ref", a.kl_ref, b.kl_ref),
        ("entropy", a.entropy, b.entropy),
        ("entropy_loss", a.entropy_loss, b.entropy_loss),
    ];
    for (name, x, y) in pairs {
        assert!(close(x, y), "{what}: {name} {x} vs {y}");
    }
}

#[test]
fn gpu_validation_accepts_and_rejects_what_the_cpu_does() {
    // Host-only: the GPU wrapper must accept exactly the inputs the CPU reference accepts.
    let case = LossCase::random(21, 4, 5);
    let base = case.0.view();
    let mut nan_pad = case.0.logp.clone();
    let pad = case.0.mask.iter().position(|&m| m == 0.0).expect("a padding token");
    nan_pad[pad] = f32::NAN;
    let mut half = case.0.mask.clone();
    half[0] = 0.5;
    let zero = vec![0.0f32; case.0.mask.len()];
    let short = &case.0.logp_ref[1..];
    let variants: Vec<(&str, LossInputs<'_>, LossConfig)> = vec![
        ("valid", base, LossConfig::default()),
        ("NaN in padding", LossInputs { logp: &nan_pad, ..base }, LossConfig::default()),
        ("mask 0.5", LossInputs { mask: &half, ..base }, LossConfig::default()),
        ("empty mask", LossInputs { mask: &zero, ..base }, LossConfig::default()),
        ("short logp_ref without KL", LossInputs { logp_ref: short, ..base }, LossConfig::default()),
        ("no logp_ref without KL", LossInputs { logp_ref: &[], ..base }, LossConfig::default()),
        ("clip_low 1.5", base, LossConfig { clip_low: 1.5, ..LossConfig::default() }),
        ("clip_low -0.1", base, LossConfig { clip_low: -0.1, ..LossConfig::default() }),
        ("dual clip 1", base, LossConfig { dual_clip: Some(1.0), ..LossConfig::default() }),
        (
            "norm length 0",
            base,
            LossConfig {
                aggregation: LossAggregation::SeqMeanTokenSumNorm { length: Some(0.0) },
                ..LossConfig::default()
            },
        ),
        (
            "KL without logp_ref",
            LossInputs { logp_ref: &[], ..base },
            LossConfig { kl: Some((KlEstimator::K3, 0.1)), ..LossConfig::default() },
        ),
    ];
    for (what, inputs, config) in variants {
        let cpu = grpo_loss_cpu(&inputs, &config).is_ok();
        let gpu = g2po::cuda::validate_loss_inputs(&inputs, &config).is_ok();
        assert_eq!(gpu, cpu, "{what}: GPU accepts {gpu}, CPU accepts {cpu}");
    }
}

fn assert_loss_matches_cpu(gpu: &GpuContext, case: &LossCase, c: &LossConfig) {
    let want = grpo_loss_cpu(&case.0.view(), c).expect("CPU loss");
    let got = gpu.grpo_loss(&case.0.view(), c).expect("GPU loss");
    let what = format!("{c:?}");
    assert!(close(got.loss, want.loss), "{what}: loss {} vs {}", got.loss, want.loss);
    for (i, (g, w)) in got.grad_logp.iter().zip(&want.grad_logp).enumerate() {
        assert!(close(f64::from(*g), f64::from(*w)), "{what}: grad[{i}] {g} vs {w}");
    }
    assert_diag_close(&got.diagnostics, &want.diagnostics, &what);
}

#[test]
fn loss_gpu_matches_cpu_for_every_option() {
    let Some(gpu) = gpu_or_skip() else { return };
    // Includes a pure-padding row (see LossCase::random).
    for (seed, rows, max_len) in [(11u64, 37usize, 129usize), (5, 64, 257)] {
        let case = LossCase::random(seed, rows, max_len);
        for c in all_configs() {
            assert_loss_matches_cpu(&gpu, &case, &c);
        }
    }
}

#[test]
fn loss_gpu_is_deterministic_and_rejects_bad_input() {
    let Some(gpu) = gpu_or_skip() else { return };
    // Large enough for many blocks, so the two-level reduction is exercised.
    let case = LossCase::random(3, 300, 1000);
    let c = LossConfig { kl: Some((KlEstimator::K3, 0.01)), ..LossConfig::default() };
    let a = gpu.grpo_loss(&case.0.view(), &c).unwrap();
    let b = gpu.grpo_loss(&case.0.view(), &c).unwrap();
    assert_eq!(a.loss.to_bits(), b.loss.to_bits());
    assert_eq!(a.grad_logp, b.grad_logp);
    assert_eq!(a.diagnostics, b.diagnostics);
    assert_loss_matches_cpu(&gpu, &case, &c);
    let zero_mask = vec![0.0f32; case.0.mask.len()];
    assert!(gpu.grpo_loss(&LossInputs { mask: &zero_mask, ..case.0.view() }, &c).is_err());
    assert!(gpu.grpo_loss(&LossInputs { logp: &case.0.logp[1..], ..case.0.view() }, &c).is_err());
}

/// The learner's fused op on candle's CUDA device (its `cuda_fwd`) gives the same loss,
/// gradient and diagnostics as the direct launch, and two applications keep their own
/// gradients.
#[cfg(feature = "cuda")]
#[test]
fn candle_op_cuda_forward_matches_direct_launch() {
    use candle_core::{Tensor, Var};
    use g2po::learner::{FusedGrpoLoss, LossConstants};
    let Some(gpu) = gpu_or_skip() else { return };
    let Some(dev) = gpu_support::candle_cuda_or_skip() else { return };
    let case = LossCase::random(9, 8, 33);
    let c = LossConfig { kl: Some((KlEstimator::K2, 0.01)), entropy_coef: 0.001, ..LossConfig::default() };
    let want = gpu.grpo_loss(&case.0.view(), &c).unwrap();
    let t = |v: &[f32]| Tensor::from_slice(v, (case.0.rows, case.0.max_len), &dev).unwrap();
    let logp = Var::from_tensor(&t(&case.0.logp)).unwrap();
    let op = FusedGrpoLoss::new(
        LossConstants {
            logp_old: t(&case.0.logp_old),
            logp_ref: Some(t(&case.0.logp_ref)),
            advantages: t(&case.0.advantages),
            entropy: Some(t(&case.0.entropy)),
            mask: t(&case.0.mask),
        },
        c,
    )
    .unwrap();
    let (loss, diagnostics) = op.apply(logp.as_tensor()).unwrap();
    // A second application to another logp before the first backward.
    let shifted: Vec<f32> = case.0.logp.iter().map(|x| x - 0.05).collect();
    let other = Var::from_tensor(&t(&shifted)).unwrap();
    let (loss_other, _) = op.clone().apply(other.as_tensor()).unwrap();
    let value = f64::from(loss.to_scalar::<f32>().unwrap());
    assert!(close(value, want.loss), "{value} vs {}", want.loss);
    assert_diag_close(&diagnostics, &want.diagnostics, "candle op");
    let grads = loss.affine(2.0, 0.0).unwrap().backward().unwrap();
    let g: Vec<f32> = grads.get(logp.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    for (a, b) in g.iter().zip(&want.grad_logp) {
        assert!(close(f64::from(*a), 2.0 * f64::from(*b)), "{a} vs 2*{b}");
    }
    let want_other = grpo_loss_cpu(&LossInputs { logp: &shifted, ..case.0.view() }, &c).unwrap();
    let g: Vec<f32> =
        loss_other.backward().unwrap().get(other.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    for (a, b) in g.iter().zip(&want_other.grad_logp) {
        assert!(close(f64::from(*a), f64::from(*b)), "{a} vs {b}");
    }
}

// ---------------------------------------------------------------------------------------
// G2PO stages
// ---------------------------------------------------------------------------------------

/// `groups` task groups of `n` trajectories each over `states` states (keyed anchors, so
/// trajectories revisit states), with random rewards, invalid actions and response lengths;
/// trajectories are pushed in shuffled group order so groups interleave, plus one single-row
/// group.
fn random_batch(seed: u64, groups: u32, n: usize, states: u64) -> RolloutBatch {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut order: Vec<(u32, usize)> = (0..groups).flat_map(|g| (0..n).map(move |t| (g, t))).collect();
    for i in (1..order.len()).rev() {
        let j = rng.random_range(0..=i);
        order.swap(i, j);
    }
    let mut b = RolloutBatch::builder();
    for (g, t) in order {
        let len = rng.random_range(1..8usize);
        let reward = if rng.random_bool(0.5) { 10.0 } else { 0.0 };
        let steps: Vec<Step<'_>> = (0..len)
            .map(|i| Step {
                anchor: Anchor::Key(rng.random_range(0..states)),
                reward: if i + 1 == len { reward } else { 0.0 },
                valid: !rng.random_bool(0.15),
                response_len: rng.random_range(0..6),
            })
            .collect();
        b.push_trajectory(&format!("g{g}"), &format!("g{g}t{t}"), reward, steps).unwrap();
    }
    let single = [Step { anchor: Anchor::Key(0), reward: 10.0, valid: true, response_len: 3 }];
    b.push_trajectory("single", "t", 10.0, single).unwrap();
    b.build().unwrap()
}

fn configs_for_stages() -> Vec<EstimatorConfig> {
    let base = EstimatorConfig::new(EstimatorKind::G2po);
    vec![
        base,
        EstimatorConfig { norm: Normalization::Mean, ..base },
        EstimatorConfig { step_weight: 0.8, invalid_penalty: 0.25, gamma: 0.9, ..base },
        EstimatorConfig { terminal: TerminalValues::Fixed { success: 1.0, failure: -1.0 }, ..base },
    ]
}

#[test]
fn stage_host_reproduces_engine_node_values() {
    // Host-only: the global node ids and visit values of StageHost must reproduce the
    // engine's pooled node values, and next ids must be the next row's node.
    for (seed, groups, n, states) in [(1u64, 5u32, 4usize, 3u64), (2, 3, 40, 6)] {
        let batch = random_batch(seed, groups, n, states);
        for cfg in configs_for_stages() {
            let adv = Estimator::new(cfg).unwrap().estimate(&batch).unwrap();
            let host = StageHost::from_batch(&batch, &adv, &cfg).unwrap();
            let plan = StagePlan::new(&host.inputs()).expect("a valid plan");
            let mut sum: HashMap<u32, (f64, f64)> = HashMap::new();
            for (r, &k) in host.node.iter().enumerate() {
                let e = sum.entry(k).or_default();
                e.0 += f64::from(host.visit_value[r]);
                e.1 += 1.0;
            }
            assert_eq!(sum.len(), plan.num_nodes, "global ids are dense");
            for (r, &k) in host.node.iter().enumerate() {
                let (s, c) = sum[&k];
                let v = s / c;
                assert!(close(v, f64::from(adv.node_value[r])), "{cfg:?} row {r}: {v} vs {}", adv.node_value[r]);
            }
            for (r, &next) in batch.next_rows().iter().enumerate() {
                if next == g2po::rollout::NO_NEXT {
                    assert!(host.next_node[r] < 0, "row {r} ends its trajectory");
                    let rw = batch.episode_rewards()[r];
                    let want = match cfg.terminal {
                        TerminalValues::EpisodeReward => rw,
                        TerminalValues::Fixed { success, failure } => {
                            if rw > 0.0 {
                                success
                            } else {
                                failure
                            }
                        }
                    };
                    assert_eq!(f64::from(host.terminal_value[r]), want);
                } else {
                    assert_eq!(host.next_node[r], host.node[next as usize] as i32, "row {r}");
                }
            }
            let tokens: u64 = batch.response_lens().iter().map(|&l| u64::from(l)).sum();
            assert_eq!(host.token_offsets.last().copied(), Some(tokens));
            assert_eq!(host.params.mean_norm, cfg.norm == Normalization::Mean);
        }
    }
}

#[test]
fn stage_host_rejects_what_the_gpu_cannot_do() {
    let batch = random_batch(3, 2, 3, 3);
    let cfg = EstimatorConfig::new(EstimatorKind::G2po);
    let adv = Estimator::new(cfg).unwrap().estimate(&batch).unwrap();
    let trajs = EstimatorConfig { stats_over: StatsOver::Trajectories, ..cfg };
    assert!(matches!(StageHost::from_batch(&batch, &adv, &trajs), Err(CudaError::Unsupported(_))));
    let grpo = EstimatorConfig::new(EstimatorKind::Grpo);
    let grpo_adv = Estimator::new(grpo).unwrap().estimate(&batch).unwrap();
    assert!(matches!(StageHost::from_batch(&batch, &grpo_adv, &grpo), Err(CudaError::Unsupported(_))));
    // G2PO output of another batch.
    assert!(matches!(StageHost::from_batch(&random_batch(4, 2, 3, 3), &adv, &cfg), Err(CudaError::InvalidInput(_))));
    // Similarity grouping is fine: the node ids come from the engine's output.
    let sim = EstimatorConfig { grouping: Grouping::Similarity { threshold: 0.9 }, ..cfg };
    assert!(StageHost::from_batch(&batch, &adv, &sim).is_ok());
}

fn assert_rows_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!((f64::from(*a) - f64::from(*b)).abs() <= TOL, "{what}[{i}]: GPU {a} vs engine {b}");
    }
}

#[test]
fn stages_gpu_match_engine() {
    let Some(gpu) = gpu_or_skip() else { return };
    // Small groups, and groups larger than a warp so lanes stride over segments.
    for (seed, groups, n, states) in [(1u64, 5u32, 4usize, 3u64), (2, 3, 40, 6), (3, 40, 8, 4)] {
        let batch = random_batch(seed, groups, n, states);
        for cfg in configs_for_stages() {
            let adv = Estimator::new(cfg).unwrap().estimate(&batch).unwrap();
            let host = StageHost::from_batch(&batch, &adv, &cfg).unwrap();
            let got = gpu.g2po_stages(&host.inputs(), &host.params).expect("GPU stages");
            let what = format!("seed {seed} {cfg:?}");
            assert_rows_close(&got.advantage, &adv.advantage, &format!("{what} advantage"));
            assert_rows_close(&got.episode, &adv.episode, &format!("{what} episode"));
            assert_rows_close(&got.node_centric, &adv.node_centric, &format!("{what} node_centric"));
            assert_rows_close(&got.edge_centric, &adv.edge_centric, &format!("{what} edge_centric"));
            let per_row: Vec<f32> = host.node.iter().map(|&k| got.node_value[k as usize]).collect();
            assert_rows_close(&per_row, &adv.node_value, &format!("{what} node_value"));
            let mut tokens = Vec::new();
            for (r, &len) in batch.response_lens().iter().enumerate() {
                tokens.extend(std::iter::repeat_n(adv.advantage[r], len as usize));
            }
            assert_rows_close(&got.token_advantage, &tokens, &format!("{what} token_advantage"));
            let again = gpu.g2po_stages(&host.inputs(), &host.params).unwrap();
            assert_eq!(got, again, "stages must be bitwise deterministic");
        }
    }
}

#[test]
fn stages_gpu_reject_bad_input() {
    let Some(gpu) = gpu_or_skip() else { return };
    let batch = random_batch(4, 2, 3, 3);
    let cfg = EstimatorConfig::new(EstimatorKind::G2po);
    let adv = Estimator::new(cfg).unwrap().estimate(&batch).unwrap();
    let mut host = StageHost::from_batch(&batch, &adv, &cfg).unwrap();
    host.next_node[0] = -5;
    assert!(gpu.g2po_stages(&host.inputs(), &host.params).is_err());
}

// ---------------------------------------------------------------------------------------
// The G2PO_REQUIRE_GPU switch
// ---------------------------------------------------------------------------------------

/// Set in the copies of this binary that the test below starts, so that they start no more.
const CHILD_VAR: &str = "G2PO_CUDA_GPU_TEST_CHILD";

/// Runs this test binary again: every test but the one below, on one thread, with the
/// captured output of passing tests shown too. Returns (success, stdout + stderr).
fn rerun_this_binary(require_gpu: bool) -> (bool, String) {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["--skip", "require_gpu_turns_every_skip_into_a_failure", "--test-threads", "1", "--show-output"])
        .env(CHILD_VAR, "1")
        .env_remove(gpu_support::REQUIRE_GPU_VAR);
    if require_gpu {
        cmd.env(gpu_support::REQUIRE_GPU_VAR, "1");
    }
    let out = cmd.output().expect("the test binary runs again");
    let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// The captured output of each test, from libtest's `---- NAME stdout ----` sections.
fn captured_output(run: &str) -> HashMap<String, String> {
    let mut sections: HashMap<String, String> = HashMap::new();
    let mut current: Option<String> = None;
    for line in run.lines() {
        if let Some(name) = line.strip_prefix("---- ").and_then(|l| l.strip_suffix(" stdout ----")) {
            current = Some(name.to_owned());
            sections.entry(name.to_owned()).or_default();
        } else if matches!(line, "successes:" | "failures:") {
            current = None;
        } else if let Some(name) = &current {
            let text = sections.entry(name.clone()).or_default();
            text.push_str(line);
            text.push('\n');
        }
    }
    sections
}

fn failed_tests(run: &str) -> std::collections::BTreeSet<String> {
    run.lines().filter_map(|l| l.strip_prefix("test ")?.strip_suffix(" ... FAILED")).map(str::to_owned).collect()
}

/// The switch's contract, checked on whatever machine runs it: without a GPU, each GPU test
/// skips with the marker, and with `G2PO_REQUIRE_GPU=1` exactly those tests fail, naming the
/// switch and the reason, while the host-side tests still pass; with a GPU nothing skips and
/// the switch changes nothing.
#[test]
fn require_gpu_turns_every_skip_into_a_failure() {
    if std::env::var_os(CHILD_VAR).is_some() {
        return;
    }
    let (plain_ok, plain) = rerun_this_binary(false);
    let (required_ok, required) = rerun_this_binary(true);
    assert!(plain_ok, "without the switch the suite must pass:\n{plain}");
    let outputs = captured_output(&plain);
    let skipped: std::collections::BTreeSet<String> = outputs
        .iter()
        .filter(|(_, text)| text.contains(gpu_support::SKIP_MARKER))
        .map(|(name, _)| name.clone())
        .collect();
    #[cfg(feature = "cuda")]
    let gpu_present = GpuContext::new(0).is_ok() && candle_core::Device::new_cuda(0).is_ok();
    #[cfg(not(feature = "cuda"))]
    let gpu_present = GpuContext::new(0).is_ok();
    if gpu_present {
        assert!(skipped.is_empty(), "a GPU is present but these tests skipped: {skipped:?}");
        assert!(required_ok, "with a GPU the switch must change nothing:\n{required}");
        return;
    }
    let mut gpu_tests = vec![
        "loss_gpu_matches_cpu_for_every_option",
        "loss_gpu_is_deterministic_and_rejects_bad_input",
        "stages_gpu_match_engine",
        "stages_gpu_reject_bad_input",
    ];
    if cfg!(feature = "cuda") {
        gpu_tests.push("candle_op_cuda_forward_matches_direct_launch");
    }
    for name in gpu_tests {
        assert!(skipped.contains(name), "{name} did not report a skip without a GPU:\n{plain}");
    }
    assert!(!required_ok, "G2PO_REQUIRE_GPU=1 without a GPU must fail:\n{required}");
    let failed = failed_tests(&required);
    assert_eq!(failed, skipped, "with the switch exactly the skipping tests must fail:\n{required}");
    let failures = captured_output(&required);
    for name in &failed {
        let text = failures.get(name).map_or("", String::as_str);
        assert!(text.contains(&gpu_support::required_message("")), "{name} failed without naming the switch:\n{text}");
    }
}
