//! GPU vs CPU agreement of the CUDA kernels (fused GRPO loss, G2PO advantage stages).
//!
//! The GPU tests skip, printing why, when `GpuContext::new(0)` fails (no driver, no GPU, no
//! NVRTC). The CPU references below are deliberately straightforward (f64, one loop per
//! formula of SPEC sections 3 and 4) and are themselves checked without a GPU: the loss
//! reference against finite differences, the stage reference against hand-computed values.
#![cfg(feature = "nvrtc")]

use std::collections::HashMap;

use g2po::cuda::{GpuContext, StageInputs, StageOutputs, StageParams};
use g2po::learner::{KlEstimator, LossAggregation, LossConfig, LossDiagnostics, LossInputs};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const TOL: f64 = 1e-5;

fn gpu_or_skip() -> Option<GpuContext> {
    match GpuContext::new(0) {
        Ok(g) => Some(g),
        Err(e) => {
            eprintln!("SKIPPED (needs a CUDA GPU): {e}");
            None
        }
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= TOL * (1.0 + a.abs().max(b.abs()))
}

// ---------------------------------------------------------------------------------------
// Loss reference
// ---------------------------------------------------------------------------------------

struct LossCase {
    rows: usize,
    max_len: usize,
    logp: Vec<f32>,
    logp_old: Vec<f32>,
    logp_ref: Vec<f32>,
    adv: Vec<f32>,
    entropy: Vec<f32>,
    mask: Vec<f32>,
}

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
            let d: f32 = if rng.random_bool(0.02) {
                rng.random_range(-30.0..30.0)
            } else {
                rng.random_range(-0.6..0.6)
            };
            let r: f32 = if rng.random_bool(0.05) {
                rng.random_range(-25.0..25.0)
            } else {
                rng.random_range(-1.0..1.0)
            };
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
        // Right padding of random length per row; every row keeps at least one token.
        let mut mask = vec![0.0f32; n];
        for r in 0..rows {
            let len = rng.random_range(1..=max_len);
            for j in 0..len {
                mask[r * max_len + j] = 1.0;
            }
        }
        Self {
            rows,
            max_len,
            logp,
            logp_old,
            logp_ref,
            adv,
            entropy,
            mask,
        }
    }

    fn inputs(&self) -> LossInputs<'_> {
        LossInputs {
            rows: self.rows,
            max_len: self.max_len,
            logp: &self.logp,
            logp_old: &self.logp_old,
            logp_ref: &self.logp_ref,
            advantages: &self.adv,
            entropy: &self.entropy,
            mask: &self.mask,
        }
    }
}

/// Whether a token lies within rounding distance of a branch point of the loss: the clip
/// bounds of every tested configuration (0.8, 1.2, 1.28), the dual-clip bound 3, the +-20
/// clamps, or the k3 clamp at 10.
fn near_kink(lp: f64, old: f64, rf: f64) -> bool {
    let d = lp - old;
    let rho = d.exp();
    let q = rf - lp;
    let k3 = q.clamp(-20.0, 20.0).exp() - q.clamp(-20.0, 20.0) - 1.0;
    [0.8, 1.2, 1.28, 3.0]
        .iter()
        .any(|b| (rho - b).abs() < 1e-4 * b)
        || (d.abs() - 20.0).abs() < 1e-3
        || (q.abs() - 20.0).abs() < 1e-3
        || (k3 - 10.0).abs() < 1e-3
}

struct RefLoss {
    loss: f64,
    grad: Vec<f64>,
    diag: LossDiagnostics,
}

/// Per-token terms: (policy term, its d/dlogp, clipped?, dual active?, kl, d kl/dlogp).
fn token_terms(
    lp: f64,
    old: f64,
    rf: f64,
    a: f64,
    c: &LossConfig,
) -> (f64, f64, bool, bool, f64, f64) {
    let raw = lp - old;
    let d = raw.clamp(-20.0, 20.0);
    let pass = if (-20.0..=20.0).contains(&raw) {
        1.0
    } else {
        0.0
    };
    let rho = d.exp();
    let pg1 = -a * rho;
    let pg2 = -a * rho.clamp(1.0 - c.clip_low, 1.0 + c.clip_high);
    let clipped = pg2 > pg1;
    let mut pg = pg1.max(pg2);
    let mut dpg = if clipped { 0.0 } else { -a * rho * pass };
    let mut dual = false;
    if let Some(cc) = c.dual_clip
        && a < 0.0
        && pg > -a * cc
    {
        pg = -a * cc;
        dpg = 0.0;
        dual = true;
    }
    let (kl, dkl) = match c.kl {
        None => (0.0, 0.0),
        Some((KlEstimator::K1, _)) => (lp - rf, 1.0),
        Some((KlEstimator::K2, _)) => (0.5 * (lp - rf).powi(2), lp - rf),
        Some((KlEstimator::K3, _)) => {
            let qr = rf - lp;
            let q = qr.clamp(-20.0, 20.0);
            let qp = if (-20.0..=20.0).contains(&qr) {
                1.0
            } else {
                0.0
            };
            let k = q.exp() - q - 1.0;
            let kp = if (-10.0..=10.0).contains(&k) {
                1.0
            } else {
                0.0
            };
            (k.clamp(-10.0, 10.0), -(q.exp() - 1.0) * qp * kp)
        }
    };
    (pg, dpg, clipped, dual, kl, dkl)
}

fn reference_loss(x: &LossInputs<'_>, c: &LossConfig) -> RefLoss {
    let (rows, len) = (x.rows, x.max_len);
    let count: Vec<f64> = (0..rows)
        .map(|r| {
            x.mask[r * len..(r + 1) * len]
                .iter()
                .map(|&m| f64::from(m))
                .sum()
        })
        .collect();
    let total: f64 = count.iter().sum();
    let beta = c.kl.map_or(0.0, |(_, b)| b);
    let has_ent = !x.entropy.is_empty();
    let mut out = RefLoss {
        loss: 0.0,
        grad: vec![0.0; rows * len],
        diag: LossDiagnostics::default(),
    };
    let (mut clip, mut dual, mut neg, mut approx, mut ent_sum) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for (r, &count_r) in count.iter().enumerate() {
        let w = match c.aggregation {
            LossAggregation::TokenMean => 1.0 / total,
            LossAggregation::SeqMeanTokenSum => 1.0 / rows as f64,
            LossAggregation::SeqMeanTokenMean => 1.0 / (rows as f64 * count_r),
            LossAggregation::SeqMeanTokenSumNorm { length } => 1.0 / (rows as f64 * length),
        };
        for j in 0..len {
            let i = r * len + j;
            if x.mask[i] == 0.0 {
                continue;
            }
            let f = |s: &[f32]| f64::from(s[i]);
            let rf = if c.kl.is_some() { f(x.logp_ref) } else { 0.0 };
            let (pg, dpg, cl, du, kl, dkl) =
                token_terms(f(x.logp), f(x.logp_old), rf, f(x.advantages), c);
            let ent = if has_ent { f(x.entropy) } else { 0.0 };
            out.loss += w * (pg + beta * kl - c.entropy_coef * ent);
            out.grad[i] = w * (dpg + beta * dkl);
            out.diag.policy_loss += w * pg;
            out.diag.kl_ref += w * kl;
            clip += f64::from(u8::from(cl));
            if c.dual_clip.is_some() && f(x.advantages) < 0.0 {
                neg += 1.0;
                dual += f64::from(u8::from(du));
            }
            approx += -(f(x.logp) - f(x.logp_old)).clamp(-20.0, 20.0);
            ent_sum += ent;
        }
    }
    out.diag.clip_fraction = clip / total;
    out.diag.dual_clip_fraction = if neg > 0.0 { dual / neg } else { 0.0 };
    out.diag.approx_kl_old = approx / total;
    out.diag.entropy = if has_ent { ent_sum / total } else { 0.0 };
    if c.kl.is_none() {
        out.diag.kl_ref = 0.0;
    }
    out
}

/// Every option combination of SPEC section 4 that changes the arithmetic.
fn all_configs() -> Vec<LossConfig> {
    let mut v = Vec::new();
    let kls = [
        None,
        Some((KlEstimator::K1, 0.01)),
        Some((KlEstimator::K2, 0.005)),
        Some((KlEstimator::K3, 0.01)),
    ];
    let aggs = [
        LossAggregation::TokenMean,
        LossAggregation::SeqMeanTokenSum,
        LossAggregation::SeqMeanTokenMean,
        LossAggregation::SeqMeanTokenSumNorm { length: 64.0 },
    ];
    for kl in kls {
        for aggregation in aggs {
            for (dual_clip, clip_high, entropy_coef) in [(Some(3.0), 0.2, 0.0), (None, 0.28, 0.001)]
            {
                v.push(LossConfig {
                    clip_low: 0.2,
                    clip_high,
                    dual_clip,
                    kl,
                    entropy_coef,
                    aggregation,
                });
            }
        }
    }
    v
}

fn assert_diag_close(a: &LossDiagnostics, b: &LossDiagnostics, what: &str) {
    let pairs = [
        ("policy_loss", a.policy_loss, b.policy_loss),
        ("clip_fraction", a.clip_fraction, b.clip_fraction),
        (
            "dual_clip_fraction",
            a.dual_clip_fraction,
            b.dual_clip_fraction,
        ),
        ("approx_kl_old", a.approx_kl_old, b.approx_kl_old),
        ("kl_ref", a.kl_ref, b.kl_ref),
        ("entropy", a.entropy, b.entropy),
    ];
    for (name, x, y) in pairs {
        assert!(close(x, y), "{what}: {name} {x} vs {y}");
    }
}

#[test]
fn loss_reference_gradient_matches_finite_differences() {
    // Runs without a GPU: guards the reference the GPU is compared with.
    let case = LossCase::random(7, 3, 6);
    for c in all_configs() {
        let r = reference_loss(&case.inputs(), &c);
        for i in 0..case.logp.len() {
            if case.mask[i] == 0.0 {
                assert_eq!(r.grad[i], 0.0);
                continue;
            }
            let h = 1e-3f32;
            let mut up = case.logp.clone();
            let mut dn = case.logp.clone();
            up[i] += h;
            dn[i] -= h;
            let lu = reference_loss(
                &LossInputs {
                    logp: &up,
                    ..case.inputs()
                },
                &c,
            )
            .loss;
            let ld = reference_loss(
                &LossInputs {
                    logp: &dn,
                    ..case.inputs()
                },
                &c,
            )
            .loss;
            let fd = (lu - ld) / f64::from(up[i] - dn[i]);
            // Kinks (clip edges, clamps) make the central difference meaningless right at them.
            let kinked = (fd - r.grad[i]).abs() > 1e-4 * (1.0 + fd.abs());
            if kinked {
                let near_kink = {
                    let d = f64::from(case.logp[i] - case.logp_old[i]);
                    let rho = d.exp();
                    (rho - (1.0 - c.clip_low)).abs() < 2e-3
                        || (rho - (1.0 + c.clip_high)).abs() < 2e-3
                        || (d.abs() - 20.0).abs() < 2e-3
                };
                assert!(
                    near_kink,
                    "{c:?} token {i}: fd {fd} vs analytic {}",
                    r.grad[i]
                );
            }
        }
    }
}

#[test]
fn loss_gpu_matches_reference_for_every_option() {
    let Some(gpu) = gpu_or_skip() else { return };
    let case = LossCase::random(11, 37, 129);
    for c in all_configs() {
        let want = reference_loss(&case.inputs(), &c);
        let got = gpu.grpo_loss(&case.inputs(), &c).expect("GPU loss");
        let what = format!("{c:?}");
        assert!(
            close(got.loss, want.loss),
            "{what}: loss {} vs {}",
            got.loss,
            want.loss
        );
        for (i, (g, w)) in got.grad_logp.iter().zip(&want.grad).enumerate() {
            assert!(close(f64::from(*g), *w), "{what}: grad[{i}] {g} vs {w}");
        }
        assert_diag_close(&got.diagnostics, &want.diag, &what);
    }
}

#[test]
fn loss_gpu_is_deterministic_and_rejects_bad_input() {
    let Some(gpu) = gpu_or_skip() else { return };
    // Large enough for many blocks, so the two-level reduction is exercised.
    let case = LossCase::random(3, 300, 1000);
    let c = LossConfig {
        kl: Some((KlEstimator::K3, 0.01)),
        ..LossConfig::default()
    };
    let a = gpu.grpo_loss(&case.inputs(), &c).unwrap();
    let b = gpu.grpo_loss(&case.inputs(), &c).unwrap();
    assert_eq!(a.loss.to_bits(), b.loss.to_bits());
    assert_eq!(a.grad_logp, b.grad_logp);
    assert_eq!(a.diagnostics, b.diagnostics);
    let want = reference_loss(&case.inputs(), &c);
    assert!(close(a.loss, want.loss), "{} vs {}", a.loss, want.loss);
    let zero_mask = vec![0.0f32; case.mask.len()];
    assert!(
        gpu.grpo_loss(
            &LossInputs {
                mask: &zero_mask,
                ..case.inputs()
            },
            &c
        )
        .is_err()
    );
    assert!(
        gpu.grpo_loss(
            &LossInputs {
                logp: &case.logp[1..],
                ..case.inputs()
            },
            &c
        )
        .is_err()
    );
}

/// Against the crate's CPU fused loss (exists with this signature once the learner lands).
#[cfg(feature = "cuda")]
#[test]
fn loss_gpu_matches_cpu_fused() {
    let Some(gpu) = gpu_or_skip() else { return };
    let case = LossCase::random(5, 64, 257);
    for c in all_configs() {
        let cpu = g2po::learner::fused::grpo_loss_cpu(&case.inputs(), &c).expect("CPU loss");
        let got = gpu.grpo_loss(&case.inputs(), &c).expect("GPU loss");
        let what = format!("{c:?}");
        assert!(
            close(got.loss, cpu.loss),
            "{what}: loss {} vs {}",
            got.loss,
            cpu.loss
        );
        for (i, (g, w)) in got.grad_logp.iter().zip(&cpu.grad_logp).enumerate() {
            assert!(
                close(f64::from(*g), f64::from(*w)),
                "{what}: grad[{i}] {g} vs {w}"
            );
        }
        assert_diag_close(&got.diagnostics, &cpu.diagnostics, &what);
    }
}

/// The candle CustomOp on candle's CUDA device gives the same loss and gradient.
#[cfg(feature = "cuda")]
#[test]
fn candle_custom_op_matches_direct_launch() {
    use candle_core::{Device, Tensor, Var};
    let Some(gpu) = gpu_or_skip() else { return };
    let Ok(dev) = Device::new_cuda(0) else {
        eprintln!("SKIPPED: candle cannot open CUDA device 0");
        return;
    };
    let case = LossCase::random(9, 8, 33);
    let c = LossConfig {
        kl: Some((KlEstimator::K2, 0.01)),
        entropy_coef: 0.001,
        ..LossConfig::default()
    };
    let want = gpu.grpo_loss(&case.inputs(), &c).unwrap();
    let t = |v: &[f32]| Tensor::from_slice(v, (case.rows, case.max_len), &dev).unwrap();
    let logp = Var::from_tensor(&t(&case.logp)).unwrap();
    let op = g2po::cuda::FusedGrpoLoss::new(
        t(&case.logp_old),
        Some(t(&case.logp_ref)),
        t(&case.adv),
        Some(t(&case.entropy)),
        t(&case.mask),
        c,
    )
    .unwrap();
    let loss = logp.as_tensor().apply_op1(op.clone()).unwrap();
    let value = f64::from(loss.to_scalar::<f32>().unwrap());
    assert!(close(value, want.loss), "{value} vs {}", want.loss);
    let grads = loss.affine(2.0, 0.0).unwrap().backward().unwrap();
    let g: Vec<f32> = grads
        .get(logp.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    for (a, b) in g.iter().zip(&want.grad_logp) {
        assert!(close(f64::from(*a), 2.0 * f64::from(*b)), "{a} vs 2*{b}");
    }
    assert_eq!(op.diagnostics(), Some(want.diagnostics));
}

// ---------------------------------------------------------------------------------------
// G2PO stage reference
// ---------------------------------------------------------------------------------------

struct StageCase {
    group: Vec<u32>,
    node: Vec<u32>,
    next_node: Vec<i32>,
    terminal_value: Vec<f32>,
    visit_value: Vec<f32>,
    invalid: Vec<u8>,
    score: Vec<f32>,
    token_offsets: Vec<u64>,
}

impl StageCase {
    fn inputs(&self) -> StageInputs<'_> {
        StageInputs {
            group: &self.group,
            node: &self.node,
            next_node: &self.next_node,
            terminal_value: &self.terminal_value,
            visit_value: &self.visit_value,
            invalid: &self.invalid,
            score: &self.score,
            token_offsets: &self.token_offsets,
        }
    }

    /// `groups` task groups of `n` trajectories wandering over `states` states each, plus one
    /// single-row group at the end.
    fn random(seed: u64, groups: u32, n: usize, states: u32) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (gamma, p) = (0.95f32, 0.1f32);
        let mut c = StageCase {
            group: vec![],
            node: vec![],
            next_node: vec![],
            terminal_value: vec![],
            visit_value: vec![],
            invalid: vec![],
            score: vec![],
            token_offsets: vec![0],
        };
        let push_traj = |c: &mut StageCase, rng: &mut ChaCha8Rng, g: u32, path: &[u32], r: f32| {
            let t_len = path.len();
            for (t, &k) in path.iter().enumerate() {
                let inv = u8::from(rng.random_bool(0.15));
                c.group.push(g);
                c.node.push(k);
                let next = if t + 1 < t_len {
                    path[t + 1] as i32
                } else if r > 0.0 {
                    -1
                } else {
                    -2
                };
                c.next_node.push(next);
                c.terminal_value.push(r);
                c.visit_value.push(gamma.powi((t_len - t) as i32) * r);
                c.invalid.push(inv);
                c.score.push(r - p * f32::from(inv));
                let last = *c.token_offsets.last().unwrap();
                c.token_offsets.push(last + rng.random_range(0..6u64));
            }
        };
        for g in 0..groups {
            for _ in 0..n {
                let t_len = rng.random_range(1..8usize);
                let path: Vec<u32> = (0..t_len)
                    .map(|_| g * states + rng.random_range(0..states))
                    .collect();
                let r = if rng.random_bool(0.5) { 10.0 } else { 0.0 };
                push_traj(&mut c, &mut rng, g, &path, r);
            }
        }
        push_traj(&mut c, &mut rng, groups, &[groups * states], 10.0);
        c
    }
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let m = v.iter().sum::<f64>() / v.len() as f64;
    let sd = if v.len() > 1 {
        (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
    } else {
        0.0
    };
    (m, sd)
}

fn reference_stages(x: &StageInputs<'_>, p: &StageParams) -> StageOutputs {
    let n = x.group.len();
    let eps = f64::from(p.epsilon);
    let num_nodes = *x.node.iter().max().unwrap() as usize + 1;
    let mut visits: HashMap<u32, Vec<usize>> = HashMap::new();
    let mut members: HashMap<u32, Vec<usize>> = HashMap::new();
    for r in 0..n {
        visits.entry(x.node[r]).or_default().push(r);
        members.entry(x.group[r]).or_default().push(r);
    }
    let mut value = vec![0.0f64; num_nodes];
    for (&k, rows) in &visits {
        value[k as usize] = rows
            .iter()
            .map(|&r| f64::from(x.visit_value[r]))
            .sum::<f64>()
            / rows.len() as f64;
    }
    let v_next = |r: usize| {
        if x.next_node[r] >= 0 {
            value[x.next_node[r] as usize]
        } else {
            f64::from(x.terminal_value[r])
        }
    };
    let norm = |v: f64, m: f64, sd: f64| {
        if p.mean_norm {
            v - m
        } else {
            (v - m) / (sd + eps)
        }
    };
    let mut out = StageOutputs {
        advantage: vec![0.0; n],
        episode: vec![0.0; n],
        node_centric: vec![0.0; n],
        edge_centric: vec![0.0; n],
        node_value: value.iter().map(|&v| v as f32).collect(),
        token_advantage: vec![],
    };
    for rows in visits.values() {
        if rows.len() < 2 {
            continue;
        }
        let xs: Vec<f64> = rows
            .iter()
            .map(|&r| v_next(r) - f64::from(p.invalid_penalty) * f64::from(x.invalid[r]))
            .collect();
        let (m, sd) = mean_sd(&xs);
        for (&r, &xv) in rows.iter().zip(&xs) {
            out.node_centric[r] = norm(xv, m, sd) as f32;
        }
    }
    for rows in members.values() {
        let ds: Vec<f64> = rows
            .iter()
            .map(|&r| v_next(r) - value[x.node[r] as usize])
            .collect();
        let ss: Vec<f64> = rows.iter().map(|&r| f64::from(x.score[r])).collect();
        let (dm, dsd) = mean_sd(&ds);
        let (sm, ssd) = if rows.len() > 1 {
            mean_sd(&ss)
        } else {
            (0.0, 1.0)
        };
        for (i, &r) in rows.iter().enumerate() {
            out.edge_centric[r] = if rows.len() > 1 {
                norm(ds[i], dm, dsd) as f32
            } else {
                0.0
            };
            out.episode[r] = norm(ss[i], sm, ssd) as f32;
        }
    }
    for r in 0..n {
        out.advantage[r] = out.episode[r] + p.weight * (out.node_centric[r] + out.edge_centric[r]);
        for _ in x.token_offsets[r]..x.token_offsets[r + 1] {
            out.token_advantage.push(out.advantage[r]);
        }
    }
    out
}

#[test]
fn stage_reference_matches_hand_computation() {
    // Two trajectories of one group: s0 -> s1 -> success, s0 -> s1 -> failure (gamma 0.95).
    let case = StageCase {
        group: vec![0, 0, 0, 0],
        node: vec![0, 1, 0, 1],
        next_node: vec![1, -1, 1, -2],
        terminal_value: vec![10.0, 10.0, 0.0, 0.0],
        visit_value: vec![9.025, 9.5, 0.0, 0.0],
        invalid: vec![0, 0, 0, 0],
        score: vec![10.0, 10.0, 0.0, 0.0],
        token_offsets: vec![0, 1, 2, 3, 4],
    };
    let p = StageParams {
        mean_norm: true,
        ..StageParams::default()
    };
    let out = reference_stages(&case.inputs(), &p);
    assert_eq!(out.node_value, vec![4.5125, 4.75]);
    // Node 0: both rows lead to node 1, x equal -> 0. Node 1: x = 10 and 0 -> +-5.
    assert_eq!(out.node_centric, vec![0.0, 5.0, 0.0, -5.0]);
    // d = 4.75 - 4.5125, 10 - 4.75, same, 0 - 4.75; group mean 0.11875.
    let d = [0.2375f64, 5.25, 0.2375, -4.75];
    let m = d.iter().sum::<f64>() / 4.0;
    for (got, want) in out.edge_centric.iter().zip(d.iter().map(|v| v - m)) {
        assert!((f64::from(*got) - want).abs() < 1e-5);
    }
    assert_eq!(out.episode, vec![5.0, 5.0, -5.0, -5.0]);
    assert_eq!(out.token_advantage, out.advantage);
}

fn assert_stage_close(got: &StageOutputs, want: &StageOutputs, what: &str) {
    let fields: [(&str, &Vec<f32>, &Vec<f32>); 6] = [
        ("advantage", &got.advantage, &want.advantage),
        ("episode", &got.episode, &want.episode),
        ("node_centric", &got.node_centric, &want.node_centric),
        ("edge_centric", &got.edge_centric, &want.edge_centric),
        ("node_value", &got.node_value, &want.node_value),
        (
            "token_advantage",
            &got.token_advantage,
            &want.token_advantage,
        ),
    ];
    for (name, g, w) in fields {
        assert_eq!(g.len(), w.len(), "{what}: {name} length");
        for (i, (a, b)) in g.iter().zip(w.iter()).enumerate() {
            assert!(
                close(f64::from(*a), f64::from(*b)),
                "{what}: {name}[{i}] {a} vs {b}"
            );
        }
    }
}

#[test]
fn stages_gpu_match_reference() {
    let Some(gpu) = gpu_or_skip() else { return };
    // Small groups, and groups larger than a warp so lanes stride over segments.
    for (seed, groups, n, states) in [(1u64, 5u32, 4usize, 3u32), (2, 3, 40, 6), (3, 40, 8, 4)] {
        let case = StageCase::random(seed, groups, n, states);
        for p in [
            StageParams::default(),
            StageParams {
                mean_norm: true,
                ..StageParams::default()
            },
            StageParams {
                weight: 0.8,
                invalid_penalty: 0.25,
                ..StageParams::default()
            },
        ] {
            let want = reference_stages(&case.inputs(), &p);
            let got = gpu.g2po_stages(&case.inputs(), &p).expect("GPU stages");
            assert_stage_close(&got, &want, &format!("seed {seed} {p:?}"));
            let again = gpu.g2po_stages(&case.inputs(), &p).unwrap();
            assert_eq!(got, again, "stages must be bitwise deterministic");
        }
    }
}

#[test]
fn stages_gpu_reject_bad_input() {
    let Some(gpu) = gpu_or_skip() else { return };
    let mut case = StageCase::random(4, 2, 3, 3);
    case.next_node[0] = -5;
    assert!(
        gpu.g2po_stages(&case.inputs(), &StageParams::default())
            .is_err()
    );
}
