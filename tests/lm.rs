//! The SmolLM2 policy: tokenizer, model modes, cache, parity with candle's
//! quantized Llama, gradients, updates and file errors.
//!
//! Tests that need the weights find them where `scripts/fetch-smollm2.sh`
//! caches them (`g2po::lm::default_gguf_path`). Without the file they skip,
//! saying so, unless `G2PO_REQUIRE_GGUF=1` (as in CI), which turns the skip
//! into a failure. Run with `CANDLE_NUM_THREADS=1`.
#![cfg(feature = "lm")]

use std::sync::{Arc, OnceLock};

use candle_core::{D, Device, IndexOp, Tensor};
use g2po::learner::{KlEstimator, LearnerConfig, LossConfig, UpdateBatch, UpdateRow};
use g2po::lm::{
    GgufFile, Llama, LlamaConfig, LmError, LmLearner, LmPolicyConfig, LmTokenizer, Lora, LoraConfig, Mode, Projection,
    PromptConfig, PromptContext, SmolLmPolicy, candidate_logps, default_gguf_path, sequence_logps,
};

struct Base {
    file: GgufFile,
    model: Arc<Llama>,
    tokenizer: Arc<LmTokenizer>,
}

/// The real model, loaded once per test binary; `None` (with a message) when
/// the file is absent and not required.
fn base() -> Option<&'static Base> {
    static BASE: OnceLock<Option<Base>> = OnceLock::new();
    BASE.get_or_init(|| {
        let path = default_gguf_path();
        match GgufFile::open(&path) {
            Ok(file) => {
                let model = Arc::new(Llama::load(&file, &Device::Cpu).expect("load the model"));
                let tokenizer = Arc::new(LmTokenizer::from_gguf(&file).expect("build the tokenizer"));
                Some(Base { file, model, tokenizer })
            }
            Err(e @ LmError::MissingWeights { .. }) => {
                if std::env::var("G2PO_REQUIRE_GGUF").as_deref() == Ok("1") {
                    panic!("G2PO_REQUIRE_GGUF=1 but {e}");
                }
                eprintln!("SKIPPED: {e}");
                None
            }
            Err(e) => panic!("{e}"),
        }
    })
    .as_ref()
}

macro_rules! need_base {
    () => {
        match base() {
            Some(b) => b,
            None => return,
        }
    };
}

fn policy(b: &Base, lora: LoraConfig, seed: u64) -> SmolLmPolicy {
    let cfg = LmPolicyConfig { lora, ..LmPolicyConfig::default() };
    SmolLmPolicy::from_parts(Arc::clone(&b.model), Arc::clone(&b.tokenizer), cfg, seed).unwrap()
}

fn admissible() -> Vec<String> {
    ["go to desk", "go to sofa", "open drawer", "take book from sofa", "look"].map(String::from).to_vec()
}

fn prompt(p: &SmolLmPolicy) -> String {
    let adm = admissible();
    let obs = "You are in the livingroom. The livingroom has a sofa and a diningtable. You are carrying nothing. \
               Your task is to: put a book on the desk.";
    p.render(&PromptContext { history: &[], observation: obs, admissible: &adm })
}

/// Sets every LoRA `B` to small deterministic non-zero values so that the
/// adapters change the model (fresh adapters are exactly zero).
fn perturb(lora: &Lora) {
    for (i, var) in lora.varmap().all_vars().iter().enumerate() {
        let n = var.elem_count();
        let vals: Vec<f32> = (0..n).map(|j| (((j * 7 + i * 13) % 17) as f32 - 8.0) * 2e-3).collect();
        var.set(&Tensor::from_vec(vals, var.shape(), var.device()).unwrap()).unwrap();
    }
}

fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter().flatten().zip(b.iter().flatten()).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

// ---------------------------------------------------------------- tokenizer

#[test]
fn tokenizer_ids_match_llama_cpp() {
    let b = need_base!();
    let t = &b.tokenizer;
    assert_eq!(t.encode("go to the fridge").unwrap(), vec![2345, 288, 260, 28867]);
    assert_eq!(
        t.encode("<|im_start|>user\ntake apple 1 from countertop 2<|im_end|>\n").unwrap(),
        vec![1, 4093, 198, 21880, 11977, 216, 33, 429, 4360, 4961, 216, 34, 2, 198]
    );
    assert_eq!((t.im_start(), t.im_end(), t.vocab_size()), (1, 2, 49_152));
    // Digits split one by one; specials never split.
    assert_eq!(t.encode("12").unwrap(), vec![33, 34]);
    assert_eq!(t.encode("<|im_end|><|im_end|>").unwrap(), vec![2, 2]);
    let text = "Your task is to: put a hot apple in the fridge.\n";
    assert_eq!(t.decode(&t.encode(text).unwrap()).unwrap(), text);
    assert!(matches!(t.decode(&[49_152]), Err(LmError::BadInput(_))));
}

// ---------------------------------------------------------------- file errors

#[test]
fn missing_gguf_is_a_typed_error_naming_the_setup_command() {
    let err = GgufFile::open("/nonexistent/dir/SmolLM2.gguf").unwrap_err();
    assert!(matches!(err, LmError::MissingWeights { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("scripts/fetch-smollm2.sh") && msg.contains("/nonexistent/dir/SmolLM2.gguf"), "{msg}");
}

#[test]
fn garbage_file_is_corrupt_weights() {
    let dir = std::env::temp_dir().join(format!("g2po-lm-garbage-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.gguf");
    std::fs::write(&path, b"this is not a gguf file at all").unwrap();
    let err = GgufFile::open(&path).unwrap_err();
    assert!(matches!(err, LmError::CorruptWeights { .. }), "{err:?}");
    assert!(err.to_string().contains("bad.gguf"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn gguf_of_another_architecture_is_corrupt_weights() {
    use candle_core::quantized::gguf_file::{self, Value};
    let dir = std::env::temp_dir().join(format!("g2po-lm-arch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("gpt2.gguf");
    let mut f = std::fs::File::create(&path).unwrap();
    let arch = Value::String("gpt2".into());
    gguf_file::write(&mut f, &[("general.architecture", &arch)], &[]).unwrap();
    drop(f);
    let file = GgufFile::open(&path).unwrap();
    let err = file.config().unwrap_err();
    assert!(matches!(err, LmError::CorruptWeights { .. }) && err.to_string().contains("gpt2"), "{err}");
    assert!(matches!(Llama::load(&file, &Device::Cpu), Err(LmError::CorruptWeights { .. })));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn truncated_gguf_is_corrupt_weights() {
    let b = need_base!();
    let bytes = std::fs::read(b.file.path()).unwrap();
    let dir = std::env::temp_dir().join(format!("g2po-lm-trunc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Header intact (the tokenizer metadata alone is ~1.5 MB), tensor data cut.
    let path = dir.join("truncated.gguf");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let file = GgufFile::open(&path).unwrap();
    assert_eq!(file.config().unwrap().layers, 30);
    let err = Llama::load(&file, &Device::Cpu).unwrap_err();
    assert!(matches!(err, LmError::CorruptWeights { .. }), "{err:?}");
    // Header cut: the file cannot even be opened.
    std::fs::write(&path, &bytes[..4096]).unwrap();
    assert!(matches!(GgufFile::open(&path), Err(LmError::CorruptWeights { .. })));
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------- modes and cache, tiny random model

fn tiny() -> (Llama, Lora) {
    let model = Llama::random(LlamaConfig::tiny(), &Device::Cpu, 11).unwrap();
    let cfg = LoraConfig { rank: 2, targets: Projection::ALL.to_vec(), ..LoraConfig::default() };
    let lora = Lora::new(&cfg, model.config(), &Device::Cpu, 5).unwrap();
    perturb(&lora);
    (model, lora)
}

#[test]
fn tiny_model_fast_and_differentiable_modes_agree() {
    let (model, lora) = tiny();
    let prompt = [3u32, 9, 27, 4, 50, 8, 1];
    let cands: [&[u32]; 3] = [&[5, 6, 7], &[12], &[40, 41]];
    let fast = candidate_logps(&model, Some(&lora), &prompt, &cands, Mode::Fast, true).unwrap();
    let diff = candidate_logps(&model, Some(&lora), &prompt, &cands, Mode::Differentiable, true).unwrap();
    assert!(max_abs_diff(&fast.to_rows().unwrap(), &diff.to_rows().unwrap()) < 1e-5);
    let e = |c: &g2po::lm::CandidateLogps| c.entropy.as_ref().unwrap().to_vec2::<f32>().unwrap();
    assert!(max_abs_diff(&e(&fast), &e(&diff)) < 1e-4);
    // The adapters matter: without them the scores differ.
    let base = candidate_logps(&model, None, &prompt, &cands, Mode::Fast, false).unwrap();
    assert!(max_abs_diff(&fast.to_rows().unwrap(), &base.to_rows().unwrap()) > 1e-3);
}

#[test]
fn tiny_model_cached_and_uncached_scores_agree() {
    let (model, lora) = tiny();
    let prompt = [3u32, 9, 27, 4, 50, 8, 1];
    let cands: [&[u32]; 3] = [&[5, 6, 7], &[12], &[40, 41]];
    let cached = candidate_logps(&model, Some(&lora), &prompt, &cands, Mode::Fast, false).unwrap().to_rows().unwrap();
    for (c, row) in cands.iter().zip(&cached) {
        let full = sequence_logps(&model, Some(&lora), &prompt, c).unwrap();
        assert!(max_abs_diff(&[full], std::slice::from_ref(row)) < 1e-5);
    }
}

#[test]
fn bad_inputs_are_typed_errors() {
    let (model, _) = tiny();
    let bad = |r: Result<g2po::lm::CandidateLogps, LmError>| assert!(matches!(r, Err(LmError::BadInput(_))));
    bad(candidate_logps(&model, None, &[], &[&[1]], Mode::Fast, false));
    bad(candidate_logps(&model, None, &[1], &[], Mode::Fast, false));
    bad(candidate_logps(&model, None, &[1], &[&[]], Mode::Fast, false));
    bad(candidate_logps(&model, None, &[1], &[&[64]], Mode::Fast, false));
    let long = vec![1u32; 200];
    bad(candidate_logps(&model, None, &long, &[&[1]], Mode::Fast, false));
}

// ---------------------------------------------------------------- the real model

#[test]
fn fast_and_differentiable_modes_agree() {
    let b = need_base!();
    let p = policy(b, LoraConfig::default(), 1);
    perturb(p.lora().unwrap());
    let ids = b.tokenizer.encode(&prompt(&p)).unwrap();
    let acts: Vec<Vec<u32>> = admissible().iter().map(|a| p.tokenize_action(a).unwrap()).collect();
    let refs: Vec<&[u32]> = acts.iter().map(Vec::as_slice).collect();
    let fast = candidate_logps(&b.model, p.lora(), &ids, &refs, Mode::Fast, false).unwrap().to_rows().unwrap();
    let diff =
        candidate_logps(&b.model, p.lora(), &ids, &refs, Mode::Differentiable, false).unwrap().to_rows().unwrap();
    let d = max_abs_diff(&fast, &diff);
    assert!(d < 1e-3, "fast vs differentiable: max |diff| {d}");
}

#[test]
fn cached_and_uncached_scores_agree() {
    let b = need_base!();
    let p = policy(b, LoraConfig::default(), 2);
    perturb(p.lora().unwrap());
    let ids = b.tokenizer.encode(&prompt(&p)).unwrap();
    let acts: Vec<Vec<u32>> = admissible().iter().map(|a| p.tokenize_action(a).unwrap()).collect();
    let refs: Vec<&[u32]> = acts.iter().map(Vec::as_slice).collect();
    let cached = candidate_logps(&b.model, p.lora(), &ids, &refs, Mode::Fast, false).unwrap().to_rows().unwrap();
    for (a, row) in refs.iter().zip(&cached) {
        let full = sequence_logps(&b.model, p.lora(), &ids, a).unwrap();
        let d = max_abs_diff(&[full], std::slice::from_ref(row));
        assert!(d < 1e-3, "cached vs uncached: max |diff| {d}");
    }
}

/// Candle's own `quantized_llama` on the same file: Q4_1 matmuls on the
/// quantized weights (activations quantized to Q8_1) against our f32
/// dequantized weights, so agreement is approximate. Tolerance: every
/// candidate's summed log-probability within 0.75 nats and the same best
/// candidate.
#[test]
fn scores_agree_with_candle_quantized_llama() {
    use candle_transformers::models::quantized_llama::ModelWeights;
    let b = need_base!();
    let p = policy(b, LoraConfig::default(), 0).reference();
    let ids = b.tokenizer.encode(&prompt(&p)).unwrap();
    let acts: Vec<Vec<u32>> =
        ["go to desk", "take book from sofa", "look"].iter().map(|a| p.tokenize_action(a).unwrap()).collect();
    let refs: Vec<&[u32]> = acts.iter().map(Vec::as_slice).collect();
    let ours = candidate_logps(&b.model, None, &ids, &refs, Mode::Fast, false).unwrap().to_rows().unwrap();
    let mut reader = std::fs::File::open(b.file.path()).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut reader).unwrap();
    let mut theirs = ModelWeights::from_gguf(content, &mut reader, &Device::Cpu).unwrap();
    let dev = Device::Cpu;
    let mut their_sums = Vec::new();
    for a in &refs {
        let mut logits = theirs.forward(&Tensor::new(ids.as_slice(), &dev).unwrap().unsqueeze(0).unwrap(), 0).unwrap();
        let mut sum = 0.0f64;
        for (j, &tok) in a.iter().enumerate() {
            let lp = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap().squeeze(0).unwrap();
            sum += f64::from(lp.i(tok as usize).unwrap().to_scalar::<f32>().unwrap());
            if j + 1 < a.len() {
                let x = Tensor::new(&[tok], &dev).unwrap().unsqueeze(0).unwrap();
                logits = theirs.forward(&x, ids.len() + j).unwrap();
            }
        }
        their_sums.push(sum);
    }
    let our_sums: Vec<f64> = ours.iter().map(|r| r.iter().map(|&x| f64::from(x)).sum()).collect();
    eprintln!("ours {our_sums:?}\ntheirs {their_sums:?}");
    for (o, t) in our_sums.iter().zip(&their_sums) {
        assert!((o - t).abs() < 0.75, "ours {o} vs quantized_llama {t}");
    }
    let argmax = |v: &[f64]| v.iter().enumerate().fold(0, |b, (i, x)| if *x > v[b] { i } else { b });
    assert_eq!(argmax(&our_sums), argmax(&their_sums));
}

#[test]
fn every_adapter_gets_a_gradient_and_the_base_none() {
    let b = need_base!();
    let p = policy(b, LoraConfig::default(), 3);
    // Fresh adapters have B = 0, which makes dL/dA exactly zero; a non-zero B
    // is the state after any update.
    perturb(p.lora().unwrap());
    let acts: Vec<Vec<u32>> = admissible()[..3].iter().map(|a| p.tokenize_action(a).unwrap()).collect();
    let refs: Vec<&[u32]> = acts.iter().map(Vec::as_slice).collect();
    let out = p.group_logps(&prompt(&p), &refs).unwrap();
    let grads = out.logp.sum_all().unwrap().backward().unwrap();
    let vars = p.varmap().all_vars();
    assert_eq!(vars.len(), 2 * 4 * 30);
    for v in &vars {
        let g = grads.get(v).expect("every adapter has a gradient");
        let norm = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(norm > 0.0 && norm.is_finite(), "adapter gradient norm {norm}");
    }
    for t in b.model.frozen_tensors() {
        assert!(grads.get(t).is_none(), "a frozen weight got a gradient");
    }
}

#[test]
fn positive_advantage_raises_the_actions_logprob_and_kl_becomes_positive() {
    let b = need_base!();
    let p = policy(b, LoraConfig::default(), 4);
    let reference = p.reference();
    let prompt = prompt(&p);
    let target = p.tokenize_action("take book from sofa").unwrap();
    let logp = |pol: &SmolLmPolicy| pol.fast_logps(&prompt, &[&target]).unwrap().to_vec2::<f32>().unwrap().remove(0);
    let before = logp(&p);
    let cfg = LearnerConfig {
        lr: 1e-3,
        loss: LossConfig { kl: Some((KlEstimator::K3, 0.01)), ..LossConfig::default() },
        ..LearnerConfig::default()
    };
    let mut learner = LmLearner::new(cfg, &p).unwrap();
    let mut kl = 0.0;
    for _ in 0..3 {
        let old = logp(&p);
        let row = UpdateRow { observation: prompt.clone(), action_tokens: target.clone(), old_logps: old };
        let batch = UpdateBatch::with_row_advantages(vec![row], &[1.0]).unwrap();
        let stats = learner.update(&p, Some(&reference), &batch).unwrap();
        assert!(stats.grad_norm.is_finite() && stats.grad_norm > 0.0);
        kl = stats.diagnostics.kl_ref;
    }
    let after = logp(&p);
    let (sb, sa): (f32, f32) = (before.iter().sum(), after.iter().sum());
    eprintln!("log p(target): {sb} -> {sa}; last kl_ref {kl}");
    assert!(sa > sb + 0.5, "log-prob {sb} -> {sa}");
    // The reference is untouched and the policy has moved away from it.
    assert_eq!(logp(&reference), before);
    assert!(kl > 0.0, "kl to the reference {kl}");
}

/// The crate's generic `Learner` trains the policy through its
/// `TrainablePolicy` implementation too, and one group update there and in
/// `LmLearner` (one prompt, so one group) is the same step.
#[test]
fn generic_learner_and_lm_learner_take_the_same_step() {
    use g2po::learner::{Learner, TrainablePolicy};
    let b = need_base!();
    let lora = LoraConfig { top_layers: Some(2), ..LoraConfig::default() };
    let (p1, p2) = (policy(b, lora.clone(), 8), policy(b, lora, 8));
    let prompt = prompt(&p1);
    let adm = admissible();
    let scored = p1.score(&prompt, &adm[..3]).unwrap();
    let rows: Vec<UpdateRow> = scored
        .iter()
        .map(|s| UpdateRow { observation: prompt.clone(), action_tokens: s.tokens.clone(), old_logps: s.logps.clone() })
        .collect();
    let batch = UpdateBatch::with_row_advantages(rows, &[1.0, -0.5, -0.5]).unwrap();
    let cfg = LearnerConfig { lr: 1e-3, fused: false, ..LearnerConfig::default() };
    let s1 = Learner::new(cfg, &p1).unwrap().update(&p1, None, &batch).unwrap();
    let s2 = LmLearner::new(cfg, &p2).unwrap().update(&p2, None, &batch).unwrap();
    assert!((s1.loss - s2.loss).abs() < 1e-6 && (s1.grad_norm - s2.grad_norm).abs() < 1e-4 * s1.grad_norm.max(1.0));
    for (a, b) in p1.trainable_vars().iter().zip(p2.trainable_vars()) {
        let d = (a.as_tensor() - b.as_tensor()).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-6, "parameters differ by {d}");
    }
    // The update moved the adapters.
    let moved: f32 = p1
        .trainable_vars()
        .iter()
        .map(|v| v.as_tensor().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap())
        .sum();
    assert!(moved > 0.0);
}

#[test]
fn token_logps_keep_row_order_across_prompt_groups() {
    let b = need_base!();
    let p = policy(b, LoraConfig { top_layers: Some(2), ..LoraConfig::default() }, 5);
    let adm = admissible();
    let p1 = prompt(&p);
    let p2 = p.render(&PromptContext { history: &[], observation: "You are in the bedroom.", admissible: &adm });
    let a: Vec<Vec<u32>> =
        ["look", "go to desk", "open drawer"].iter().map(|s| p.tokenize_action(s).unwrap()).collect();
    let prompts = [p1.as_str(), p2.as_str(), p1.as_str()];
    let acts = [a[0].as_slice(), a[1].as_slice(), a[2].as_slice()];
    let (logp, entropy) = p.token_logps(&prompts, &acts, 6).unwrap();
    assert_eq!(logp.dims(), &[3, 6]);
    assert_eq!(entropy.dims(), &[3, 6]);
    let rows = logp.to_vec2::<f32>().unwrap();
    for (i, (pr, act)) in prompts.iter().zip(acts).enumerate() {
        let single = p.fast_logps(pr, &[act]).unwrap().to_vec2::<f32>().unwrap().remove(0);
        let d = max_abs_diff(&[rows[i][..act.len()].to_vec()], &[single[..act.len()].to_vec()]);
        assert!(d < 1e-3, "row {i}: {d}");
        assert!(rows[i][act.len()..].iter().all(|&x| x == 0.0));
    }
    assert!(matches!(p.token_logps(&prompts, &acts, 2), Err(LmError::BadInput(_))));
    assert!(matches!(p.token_logps(&prompts[..2], &acts, 6), Err(LmError::BadInput(_))));
}

#[test]
fn prompt_renders_chatml_and_sampling_respects_temperature() {
    use rand::SeedableRng;
    let b = need_base!();
    let p = policy(b, LoraConfig::default(), 6);
    let text = prompt(&p);
    let ids = b.tokenizer.encode(&text).unwrap();
    assert_eq!(ids[0], 1);
    let tail = b.tokenizer.encode("<|im_start|>assistant\n").unwrap();
    assert_eq!(&ids[ids.len() - tail.len()..], &tail[..]);
    let adm = admissible();
    let probs = p.action_probs(&text, &adm, 1.0).unwrap();
    assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    let hot = p.action_probs(&text, &adm, 100.0).unwrap();
    let spread = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max) - v.iter().cloned().fold(1.0, f64::min);
    assert!(spread(&hot) < spread(&probs));
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let a = p.act(&text, &adm, 1.0, &mut rng).unwrap();
    assert_eq!(a.tokens, p.tokenize_action(&adm[a.index]).unwrap());
    assert_eq!(a.logps.len(), a.tokens.len());
    assert!(p.act(&text, &adm, 0.0, &mut rng).is_err());
    assert!(p.greedy(&text, &[]).is_err());
    let _ = PromptConfig::default();
}

/// The trainer's loop end to end on the real model: rollouts on the small
/// household, G2PO advantages, one LoRA update, a greedy evaluation, and the memo answering the group's repeated first
/// prompt. Two adapted blocks and horizon 2 keep it to seconds.
#[test]
#[cfg(feature = "train")]
fn lm_trainer_runs_an_iteration_on_the_small_household() {
    use g2po::train::{LmTrainOptions, LmTrainer, TrainConfig};
    let _ = need_base!();
    let mut policy = LmPolicyConfig::default();
    policy.lora.top_layers = Some(2);
    let cfg = TrainConfig {
        env: g2po_envs::EnvKind::HouseholdSmall,
        estimator: g2po::EstimatorKind::G2po,
        curriculum: g2po::curriculum::Curriculum::Fixed(2),
        iterations: 1,
        tasks_per_iter: 1,
        rollouts_per_task: 3,
        eval_tasks: 1,
        temperature: 1.0,
        learner: LearnerConfig { lr: 1e-3, ..LearnerConfig::default() },
        lm: Some(LmTrainOptions { gguf: None, policy, eval_before: true }),
        ..TrainConfig::default()
    };
    let mut profiles = Vec::new();
    let logs = LmTrainer::new(cfg.clone()).unwrap().run_profiled(|_, p| profiles.push(*p)).unwrap();
    assert_eq!(logs.len(), 1);
    let log = &logs[0];
    assert_eq!(log.horizon, 2);
    assert!(log.eval_success.is_some_and(|s| (0.0..=1.0).contains(&s)));
    // (At horizon 2 every rollout may fail, so the advantages and the step may be zero.)
    assert!(log.update.grad_norm.is_finite() && log.update.loss.is_finite(), "{:?}", log.update);
    assert!(log.mean_length > 0.0 && log.mean_length <= 2.0);
    // Three rollouts of one task start from the same prompt: scored once.
    assert!(profiles[0].memo_hits >= 2, "{:?}", profiles[0]);
    assert!(profiles[0].eval_before.is_some_and(|s| (0.0..=1.0).contains(&s)));
    // Same seed, same run.
    let again = LmTrainer::new(cfg).unwrap().run(|_| {}).unwrap();
    assert_eq!(again[0].update.diagnostics.policy_loss, log.update.diagnostics.policy_loss);
    assert_eq!(again[0].train_success, log.train_success);
}

#[test]
#[cfg(feature = "train")]
fn lm_trainer_rejects_ppo_and_a_missing_gguf_before_any_rollout() {
    use g2po::train::{LmTrainOptions, LmTrainer, TrainConfig, TrainError};
    let missing = LmTrainOptions {
        gguf: Some("/nonexistent/smollm2.gguf".into()),
        policy: LmPolicyConfig::default(),
        eval_before: false,
    };
    let cfg = TrainConfig { lm: Some(missing), ..TrainConfig::default() };
    let err = LmTrainer::new(cfg.clone()).unwrap_err();
    assert!(matches!(err, TrainError::Lm(LmError::MissingWeights { .. })), "{err}");
    assert!(err.to_string().contains("scripts/fetch-smollm2.sh"), "{err}");
    let ppo = TrainConfig { estimator: g2po::EstimatorKind::Ppo, ..cfg };
    assert!(matches!(LmTrainer::new(ppo).unwrap_err(), TrainError::BadConfig(m) if m.contains("ppo")));
    let no_lm = TrainConfig::default();
    assert!(matches!(LmTrainer::new(no_lm).unwrap_err(), TrainError::BadConfig(_)));
}
