//! verl's own loss outputs reproduced by every implementation present, to 1e-6
//! relative: the CPU reference (`loss::grpo_loss_cpu`), the loss as candle ops
//! differentiated by autograd (`learner::grpo_loss_tensors`), the fused candle op
//! (`learner::FusedGrpoLoss`, CPU forward), and where a GPU is present the CUDA kernel
//! (`cuda::GpuContext::grpo_loss`, feature `nvrtc`) and the fused op's CUDA forward
//! (feature `cuda`).
//!
//! Files are read from the repository's copy (`tests/data/vectors_loss`), from
//! `../shared/vectors_loss` beside the checkout when it exists, and from
//! `$G2PO_LOSS_VECTORS` when set; a file dropped into any of them is picked up without
//! code changes. Every case must compare every field of its `expected` (an unknown field
//! or config key fails the test rather than being skipped), every gradient entry
//! included. GPU checks skip, saying so, without a GPU unless `G2PO_REQUIRE_GPU=1`.
#![cfg(feature = "learner")]

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, Var};
use g2po::learner::tensor::{LossTensors, grpo_loss_tensors};
use g2po::learner::{FusedGrpoLoss, LossConstants};
use g2po::loss::{KlEstimator, LossAggregation, LossBuffers, LossConfig, LossDiagnostics, grpo_loss_cpu};
use serde_json::Value;

/// Relative tolerance of the issue (1e-6), with an absolute floor far below any value
/// the f32 inputs can resolve, for entries that are exactly 0 on both sides.
fn close(got: f64, want: f64) -> bool {
    (got - want).abs() <= 1e-6 * got.abs().max(want.abs()) + 1e-12
}

fn vector_dirs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut dirs = vec![root.join("tests/data/vectors_loss")];
    let shared = root.join("../shared/vectors_loss");
    if shared.is_dir() {
        dirs.push(shared);
    }
    if let Some(dir) = std::env::var_os("G2PO_LOSS_VECTORS") {
        dirs.push(PathBuf::from(dir));
    }
    dirs
}

fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("loss vectors not readable at {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
}

/// One case: inputs, our configuration and verl's expected outputs.
struct Case {
    name: String,
    buffers: LossBuffers,
    config: LossConfig,
    expected: serde_json::Map<String, Value>,
}

fn floats(case: &Value, key: &str, n: usize) -> Vec<f32> {
    let v: Vec<f32> = case[key]
        .as_array()
        .unwrap_or_else(|| panic!("`{key}` is not an array"))
        .iter()
        .map(|x| x.as_f64().unwrap_or_else(|| panic!("`{key}` holds a non-number")) as f32)
        .collect();
    assert_eq!(v.len(), n, "`{key}` has {} entries, rows * max_len = {n}", v.len());
    v
}

/// verl's option names to ours; an unknown key is an error, so that a new option in a
/// vector file cannot be silently ignored.
fn config(raw: &Value, file_mode: Option<&str>) -> LossConfig {
    let obj = raw.as_object().expect("config is an object");
    let num = |k: &str| obj.get(k).and_then(Value::as_f64).unwrap_or_else(|| panic!("config `{k}` missing"));
    for key in obj.keys() {
        assert!(
            [
                "clip_ratio_low",
                "clip_ratio_high",
                "clip_ratio_c",
                "loss_agg_mode",
                "kl_loss_type",
                "kl_loss_coef",
                "entropy_coeff",
                "loss_scale_factor"
            ]
            .contains(&key.as_str()),
            "unknown config key `{key}`: teach the test (and the loss) this option"
        );
    }
    let mode = obj["loss_agg_mode"].as_str().expect("loss_agg_mode");
    if let Some(m) = file_mode {
        assert_eq!(m, mode, "the case's loss_agg_mode differs from the file's");
    }
    let aggregation = match mode {
        "token-mean" => LossAggregation::TokenMean,
        "seq-mean-token-sum" => LossAggregation::SeqMeanTokenSum,
        "seq-mean-token-mean" => LossAggregation::SeqMeanTokenMean,
        "seq-mean-token-sum-norm" => {
            LossAggregation::SeqMeanTokenSumNorm { length: obj.get("loss_scale_factor").and_then(Value::as_f64) }
        }
        other => panic!("unknown loss_agg_mode {other}"),
    };
    let kl = match obj["kl_loss_type"].as_str() {
        None => None,
        Some("k1" | "kl") => Some((KlEstimator::K1, num("kl_loss_coef"))),
        Some("k2" | "mse") => Some((KlEstimator::K2, num("kl_loss_coef"))),
        Some("k3" | "low_var_kl") => Some((KlEstimator::K3, num("kl_loss_coef"))),
        Some(other) => panic!("unknown kl_loss_type {other}"),
    };
    LossConfig {
        clip_low: num("clip_ratio_low"),
        clip_high: num("clip_ratio_high"),
        dual_clip: obj.get("clip_ratio_c").and_then(Value::as_f64),
        kl,
        entropy_coef: num("entropy_coeff"),
        aggregation,
    }
}

fn read_cases(file: &Path) -> Vec<Case> {
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    let file_mode = doc["loss_agg_mode"].as_str();
    let cases = doc["cases"].as_array().unwrap_or_else(|| panic!("{}: no cases array", file.display()));
    cases
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let rows = c["rows"].as_u64().expect("rows") as usize;
            let max_len = c["max_len"].as_u64().expect("max_len") as usize;
            let n = rows * max_len;
            Case {
                name: format!("{} case {i}", file.display()),
                buffers: LossBuffers {
                    rows,
                    max_len,
                    logp: floats(c, "log_prob", n),
                    logp_old: floats(c, "old_log_prob", n),
                    logp_ref: floats(c, "ref_log_prob", n),
                    advantages: floats(c, "advantages", n),
                    entropy: floats(c, "entropy", n),
                    mask: floats(c, "response_mask", n),
                },
                config: config(&c["config"], file_mode),
                expected: c["expected"].as_object().expect("expected is an object").clone(),
            }
        })
        .collect()
}

/// What an implementation produced for one case.
struct Output {
    loss: f64,
    diagnostics: LossDiagnostics,
    grad: Vec<f32>,
}

/// Compares every expected field; returns the worst relative error (of every
/// field, and of the loss alone), or the mismatches. Every key of `expected` must
/// be known here.
fn compare(case: &Case, got: &Output) -> Result<(f64, f64), Vec<String>> {
    let d = &got.diagnostics;
    let (mut bad, mut other_bad) = (Vec::new(), Vec::new());
    let (mut worst, mut worst_loss) = (0.0f64, 0.0f64);
    let mut check = |field: &str, g: f64, w: f64| {
        let rel = (g - w).abs() / w.abs().max(1e-300);
        if w != 0.0 || g != 0.0 {
            worst = worst.max(rel.min(1.0));
            if field == "loss" {
                worst_loss = worst_loss.max(rel.min(1.0));
            }
        }
        if !close(g, w) {
            bad.push(format!("{field}: got {g:e}, verl {w:e}"));
        }
    };
    for (field, want) in &case.expected {
        match field.as_str() {
            "grad_log_prob" => {
                let want: Vec<f64> = want.as_array().expect("grad array").iter().map(|x| x.as_f64().unwrap()).collect();
                assert_eq!(want.len(), got.grad.len(), "{}: gradient length", case.name);
                for (i, (g, w)) in got.grad.iter().zip(&want).enumerate() {
                    check(&format!("grad_log_prob[{i}]"), f64::from(*g), *w);
                }
            }
            // No KL term: verl reports no KL loss; ours must be exactly 0.
            "kl_loss" if want.is_null() => {
                assert!(case.config.kl.is_none(), "{}: null kl_loss with a KL term", case.name);
                if d.kl_ref != 0.0 {
                    other_bad.push(format!("kl_loss: got {}, verl none", d.kl_ref));
                }
            }
            other => {
                let w = want.as_f64().unwrap_or_else(|| panic!("{}: `{other}` is not a number", case.name));
                let g = match other {
                    "loss" => got.loss,
                    "pg_loss" => d.policy_loss,
                    "pg_clipfrac" => d.clip_fraction,
                    "pg_clipfrac_lower" => d.dual_clip_fraction,
                    "ppo_kl" => d.approx_kl_old,
                    "entropy_loss" => d.entropy_loss,
                    "kl_loss" => d.kl_ref,
                    unknown => panic!("{}: unknown expected field `{unknown}`; compare it", case.name),
                };
                check(other, g, w);
            }
        }
    }
    bad.extend(other_bad);
    if bad.is_empty() { Ok((worst, worst_loss)) } else { Err(bad) }
}

fn cpu_reference(case: &Case) -> Output {
    let out = grpo_loss_cpu(&case.buffers.view(), &case.config).expect("CPU loss");
    Output { loss: out.loss, diagnostics: out.diagnostics, grad: out.grad_logp }
}

fn tensors(case: &Case, dev: &Device) -> (Var, [Tensor; 5]) {
    let b = &case.buffers;
    let t = |v: &[f32]| Tensor::from_slice(v, (b.rows, b.max_len), dev).unwrap();
    let logp = Var::from_tensor(&t(&b.logp)).unwrap();
    (logp, [t(&b.logp_old), t(&b.logp_ref), t(&b.advantages), t(&b.entropy), t(&b.mask)])
}

fn grad_of(loss: &Tensor, logp: &Var) -> Vec<f32> {
    loss.backward().unwrap().get(logp).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn candle_ops(case: &Case) -> Output {
    let (logp, [old, rf, adv, ent, mask]) = tensors(case, &Device::Cpu);
    let inputs = LossTensors {
        logp: logp.as_tensor(),
        logp_old: &old,
        logp_ref: Some(&rf),
        advantages: &adv,
        entropy: Some(&ent),
        mask: &mask,
    };
    let (loss, diagnostics) = grpo_loss_tensors(&inputs, &case.config).expect("candle-ops loss");
    Output { loss: loss.to_scalar::<f64>().unwrap(), diagnostics, grad: grad_of(&loss, &logp) }
}

/// The fused op on tensors of `dev` (its CPU or CUDA forward).
fn fused_op(case: &Case, dev: &Device) -> Output {
    let (logp, [old, rf, adv, ent, mask]) = tensors(case, dev);
    let constants = LossConstants { logp_old: old, logp_ref: Some(rf), advantages: adv, entropy: Some(ent), mask };
    let op = FusedGrpoLoss::new(constants, case.config).expect("fused op");
    let (loss, diagnostics) = op.apply(logp.as_tensor()).expect("fused op loss");
    // The op's scalar has logp's dtype (f32); its f32 rounding is far inside 1e-6.
    Output { loss: f64::from(loss.to_scalar::<f32>().unwrap()), diagnostics, grad: grad_of(&loss, &logp) }
}

type Implementation = (&'static str, Box<dyn Fn(&Case) -> Output>);

fn gpu_required() -> bool {
    std::env::var("G2PO_REQUIRE_GPU").is_ok_and(|v| v == "1")
}

fn implementations() -> Vec<Implementation> {
    let mut list: Vec<Implementation> = vec![
        ("cpu reference", Box::new(cpu_reference)),
        ("candle ops + autograd", Box::new(candle_ops)),
        ("fused candle op (cpu_fwd)", Box::new(|c: &Case| fused_op(c, &Device::Cpu))),
    ];
    list.extend(gpu_implementations());
    list
}

#[cfg(feature = "nvrtc")]
fn gpu_implementations() -> Vec<Implementation> {
    let mut list: Vec<Implementation> = Vec::new();
    match g2po::cuda::GpuContext::new(0) {
        Ok(gpu) => list.push((
            "cuda kernel",
            Box::new(move |c: &Case| {
                let out = gpu.grpo_loss(&c.buffers.view(), &c.config).expect("GPU loss");
                Output { loss: out.loss, diagnostics: out.diagnostics, grad: out.grad_logp }
            }),
        )),
        Err(e) => {
            assert!(!gpu_required(), "G2PO_REQUIRE_GPU=1 but no GPU: {e}");
            eprintln!("SKIPPED the CUDA kernel (needs a GPU): {e}");
        }
    }
    #[cfg(feature = "cuda")]
    match Device::new_cuda(0) {
        Ok(dev) => list.push(("fused candle op (cuda_fwd)", Box::new(move |c: &Case| fused_op(c, &dev)))),
        Err(e) => {
            assert!(!gpu_required(), "G2PO_REQUIRE_GPU=1 but candle cannot open CUDA device 0: {e}");
            eprintln!("SKIPPED the fused op's CUDA forward (needs a GPU): {e}");
        }
    }
    list
}

#[cfg(not(feature = "nvrtc"))]
fn gpu_implementations() -> Vec<Implementation> {
    assert!(!gpu_required(), "G2PO_REQUIRE_GPU=1 in a build without the `nvrtc` feature");
    eprintln!("SKIPPED the CUDA kernel: build with --features nvrtc (or cuda) and run on a GPU");
    Vec::new()
}

#[test]
fn every_loss_vector_is_reproduced_by_every_implementation() {
    let implementations = implementations();
    let mut failures = Vec::new();
    let mut files_checked = 0;
    for dir in vector_dirs() {
        let files = json_files(&dir);
        assert!(!files.is_empty(), "no *.json loss vector files in {}", dir.display());
        for file in &files {
            let cases = read_cases(file);
            assert!(!cases.is_empty(), "{} has no cases", file.display());
            for (name, run) in &implementations {
                let (mut worst, mut worst_loss) = (0.0f64, 0.0f64);
                for case in &cases {
                    match compare(case, &run(case)) {
                        Ok((w, l)) => (worst, worst_loss) = (worst.max(w), worst_loss.max(l)),
                        Err(bad) => failures.push(format!("{name}, {}: {}", case.name, bad.join("; "))),
                    }
                }
                println!(
                    "{}: {} cases, {name}: worst relative error {worst:.1e} (loss {worst_loss:.1e})",
                    file.display(),
                    cases.len()
                );
            }
            files_checked += 1;
        }
    }
    assert!(files_checked >= 4, "only {files_checked} loss vector files checked");
    assert!(failures.is_empty(), "{} mismatches with verl:\n{}", failures.len(), failures.join("\n"));
}

/// The comparison itself can fail: a perturbed loss, gradient entry or missing field
/// is caught.
#[test]
fn the_comparison_catches_a_wrong_value() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/vectors_loss");
    let case = read_cases(&json_files(&dir)[0]).remove(0);
    let good = cpu_reference(&case);
    assert!(compare(&case, &good).is_ok());
    let mut off = cpu_reference(&case);
    off.loss *= 1.0 + 1e-5;
    assert!(compare(&case, &off).is_err(), "a loss off by 1e-5 relative must fail");
    let mut off = cpu_reference(&case);
    let i = off.grad.iter().position(|&g| g != 0.0).expect("a nonzero gradient entry");
    off.grad[i] *= 1.0 + 1e-5;
    assert!(compare(&case, &off).is_err(), "one gradient entry off must fail");
    let mut off = cpu_reference(&case);
    off.diagnostics.entropy_loss += 1e-3;
    assert!(compare(&case, &off).is_err());
}
