//! The text policy: tokenizer, batched per-token log-probabilities, sampling,
//! determinism and deep copies.
#![cfg(feature = "learner")]

use candle_core::{Device, Tensor};
use g2po::learner::{TokenBatch, TrainablePolicy};
use g2po::policy::{EOS, Policy, PolicyConfig, PolicyError, RESERVED_TOKENS};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

fn small() -> PolicyConfig {
    PolicyConfig { vocab: 32, hidden: 8, max_action_tokens: 4, max_observation_tokens: 16 }
}

fn policy(seed: u64) -> Policy {
    Policy::new(&small(), &Device::Cpu, seed).unwrap()
}

fn acts(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn tokenizer_is_deterministic_and_bounded() {
    let p = policy(0);
    let q = policy(99); // the tokenizer does not depend on the parameter seed
    let t = p.tokenize_action("Pick up, the KEY");
    assert_eq!(t, q.tokenize_action("pick up , the key"));
    assert_eq!(t.len(), 4, "3 words + EOS at max_action_tokens = 4 (the 5th token is cut)");
    assert_eq!(t[3], EOS);
    assert!(t[..3].iter().all(|&x| x >= RESERVED_TOKENS && (x as usize) < 32));
    assert_eq!(
        p.tokenize_observation("a, b"),
        vec![p.tokenize_observation("a")[0], p.tokenize_observation(",")[0], p.tokenize_observation("b")[0]]
    );
    let long = "w ".repeat(100);
    assert_eq!(p.tokenize_observation(&long).len(), 16);
}

#[test]
fn config_errors() {
    for c in [
        PolicyConfig { vocab: 2, ..small() },
        PolicyConfig { hidden: 0, ..small() },
        PolicyConfig { max_action_tokens: 0, ..small() },
    ] {
        assert!(matches!(Policy::new(&c, &Device::Cpu, 0), Err(PolicyError::BadConfig(_))));
    }
}

#[test]
fn same_seed_same_policy_other_seed_differs() {
    let a = policy(3).token_logps(&["room"], &[&[5, 6, EOS]], 3).unwrap().0.to_vec2::<f32>().unwrap();
    let b = policy(3).token_logps(&["room"], &[&[5, 6, EOS]], 3).unwrap().0.to_vec2::<f32>().unwrap();
    let c = policy(4).token_logps(&["room"], &[&[5, 6, EOS]], 3).unwrap().0.to_vec2::<f32>().unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn token_logps_are_a_log_softmax_with_matching_entropy() {
    // For a fixed observation and previous token, scoring every vocabulary
    // entry as the next token must give probabilities summing to 1, and the
    // reported entropy must be -sum p log p.
    let p = policy(1);
    let prev = 7u32;
    let rows: Vec<Vec<u32>> = (0..32u32).map(|t| vec![prev, t]).collect();
    let refs: Vec<&[u32]> = rows.iter().map(Vec::as_slice).collect();
    let obs = vec!["a small hall"; 32];
    let (logp, ent) = p.token_logps(&obs, &refs, 2).unwrap();
    let logp = logp.to_vec2::<f32>().unwrap();
    let ent = ent.to_vec2::<f32>().unwrap();
    let total: f64 = logp.iter().map(|r| f64::from(r[1]).exp()).sum();
    assert!((total - 1.0).abs() < 1e-5, "{total}");
    let h: f64 = -logp.iter().map(|r| f64::from(r[1]).exp() * f64::from(r[1])).sum::<f64>();
    assert!((h - f64::from(ent[0][1])).abs() < 1e-4);
    // The first position is conditioned on BOS only, so it is the same in every row.
    assert!(logp.iter().all(|r| r[0] == logp[0][0]));
    // The observation matters.
    let (other, _) = p.token_logps(&["a dark cave"], &[&[prev, 3]], 2).unwrap();
    assert_ne!(other.to_vec2::<f32>().unwrap()[0][1], logp[3][1]);
}

#[test]
fn batched_rows_equal_single_rows() {
    let p = policy(2);
    let a = p.tokenize_action("open the door");
    let b = p.tokenize_action("wait");
    let c = p.tokenize_action("go north");
    let obs = ["hall", "cave", "hall"];
    let (batch, bent) = p.token_logps(&obs, &[&a, &b, &c], 6).unwrap();
    let batch = batch.to_vec2::<f32>().unwrap();
    let bent = bent.to_vec2::<f32>().unwrap();
    for (r, (o, act)) in obs.iter().zip([&a, &b, &c]).enumerate() {
        let (single, sent) = p.token_logps(&[o], &[act], act.len()).unwrap();
        let single = single.to_vec2::<f32>().unwrap().remove(0);
        let sent = sent.to_vec2::<f32>().unwrap().remove(0);
        for j in 0..act.len() {
            assert!((single[j] - batch[r][j]).abs() < 1e-5, "row {r} token {j}");
            assert!((sent[j] - bent[r][j]).abs() < 1e-5);
        }
    }
}

#[test]
fn token_logps_input_errors() {
    let p = policy(0);
    assert!(matches!(p.token_logps(&["a", "b"], &[&[2]], 1), Err(PolicyError::BadInput(_))));
    assert!(matches!(p.token_logps(&[], &[], 1), Err(PolicyError::Layout(g2po::Error::EmptyBatch))));
    assert!(matches!(
        p.token_logps(&["a"], &[&[2, 3]], 1),
        Err(PolicyError::Layout(g2po::Error::ResponseTooLong { row: 0, len: 2, max_len: 1 }))
    ));
    assert!(matches!(p.token_logps(&["a"], &[&[32]], 1), Err(PolicyError::BadInput(_))));
}

#[test]
fn the_trainable_policy_impl_is_the_batched_forward() {
    let p = policy(3);
    let names: Vec<String> = {
        let data = p.varmap().data().lock().unwrap();
        let mut n: Vec<String> = data.keys().cloned().collect();
        n.sort();
        n
    };
    let vars = p.trainable_vars();
    assert_eq!(vars.len(), names.len());
    let data = p.varmap().data().lock().unwrap();
    for (v, n) in vars.iter().zip(&names) {
        assert_eq!(v.id(), data[n].id(), "name order");
    }
    drop(data);
    assert_eq!(
        p.trainable_vars().iter().map(|v| v.id()).collect::<Vec<_>>(),
        vars.iter().map(|v| v.id()).collect::<Vec<_>>()
    );
    let (a, b) = (p.tokenize_action("take key"), p.tokenize_action("go"));
    let batch = TokenBatch::new([("a room", &a[..]), ("a hall", &b[..]), ("a room", &b[..])], Some(4)).unwrap();
    assert_eq!(batch.observations().len(), 2);
    let scores = p.score_tokens(&batch, true).unwrap();
    let (logp, ent) = p.token_logps(&["a room", "a hall", "a room"], &[&a, &b, &b], 4).unwrap();
    assert_eq!(scores.logp.to_vec2::<f32>().unwrap(), logp.to_vec2::<f32>().unwrap());
    assert_eq!(scores.entropy.unwrap().to_vec2::<f32>().unwrap(), ent.to_vec2::<f32>().unwrap());
    // Without the entropy (the reference policy's call) the log-probs are the
    // same bits, from the cheaper path, and still differentiable.
    let lean = p.score_tokens(&batch, false).unwrap();
    assert!(lean.entropy.is_none());
    assert_eq!(lean.logp.to_vec2::<f32>().unwrap(), logp.to_vec2::<f32>().unwrap());
    let grads = lean.logp.sum_all().unwrap().backward().unwrap();
    assert!(p.trainable_vars().iter().all(|v| grads.get(v).is_some()), "every parameter gets a gradient");
    // What `act` samples with is the learner's logp_old, bit for bit.
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let choices = acts(&["take key", "go"]);
    let action = p.act("a room", &choices, 1.0, &mut rng).unwrap();
    let (full, _) = p.token_logps(&["a room"], &[&action.tokens], action.tokens.len()).unwrap();
    assert_eq!(action.logps, full.to_vec2::<f32>().unwrap()[0]);
}

#[test]
fn gradient_reaches_every_parameter() {
    let p = policy(0);
    let a = p.tokenize_action("take key");
    let (logp, _) = p.token_logps(&["a key"], &[&a], a.len()).unwrap();
    let grads = logp.sum_all().unwrap().backward().unwrap();
    for v in p.varmap().all_vars() {
        let g = grads.get(&v).expect("every parameter gets a gradient");
        let n = g.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(n > 0.0, "zero gradient for {:?}", v.dims());
    }
}

#[test]
fn sampling_follows_scores_and_greedy_takes_the_argmax() {
    let p = policy(5);
    let admissible = acts(&["go north", "go south", "take lamp", "wait"]);
    let obs = "you are in a hall with a lamp";
    let probs = p.action_probs(obs, &admissible, 1.0).unwrap();
    let argmax = (0..4).max_by(|&i, &j| probs[i].total_cmp(&probs[j])).unwrap();
    assert_eq!(p.greedy(obs, &admissible).unwrap(), argmax);

    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mut counts = [0usize; 4];
    let n = 4000;
    for _ in 0..n {
        let a = p.act(obs, &admissible, 1.0, &mut rng).unwrap();
        counts[a.index] += 1;
    }
    for i in 0..4 {
        let f = counts[i] as f64 / n as f64;
        let sd = (probs[i] * (1.0 - probs[i]) / n as f64).sqrt();
        assert!((f - probs[i]).abs() < 5.0 * sd + 1e-3, "action {i}: {f} vs {}", probs[i]);
    }

    // Score = sum of per-token log-probs: the log-odds of two actions equal
    // the difference of their summed token logps (temperature 1).
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut seen = std::collections::HashMap::new();
    while seen.len() < 2 {
        let a = p.act(obs, &admissible, 1.0, &mut rng).unwrap();
        assert_eq!(a.tokens, p.tokenize_action(&admissible[a.index]));
        seen.insert(a.index, a.logps.iter().map(|&x| f64::from(x)).sum::<f64>());
    }
    let k: Vec<_> = seen.keys().copied().collect();
    let lhs = (probs[k[0]] / probs[k[1]]).ln();
    assert!((lhs - (seen[&k[0]] - seen[&k[1]])).abs() < 1e-4);

    // Lower temperature sharpens toward the argmax.
    let cold = p.action_probs(obs, &admissible, 0.1).unwrap();
    assert!(cold[argmax] > probs[argmax]);
}

#[test]
fn sampling_is_reproducible_with_a_seeded_rng() {
    let p = policy(5);
    let admissible = acts(&["a", "b", "c"]);
    let run = |seed| {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..50).map(|_| p.act("x", &admissible, 1.0, &mut rng).unwrap().index).collect::<Vec<_>>()
    };
    assert_eq!(run(3), run(3));
}

#[test]
fn act_input_errors() {
    let p = policy(0);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let a = acts(&["x"]);
    for t in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        assert!(matches!(p.act("o", &a, t, &mut rng), Err(PolicyError::BadInput(_))));
    }
    assert!(matches!(p.act("o", &[], 1.0, &mut rng), Err(PolicyError::BadInput(_))));
    assert!(matches!(p.greedy("o", &[]), Err(PolicyError::BadInput(_))));
}

#[test]
fn clone_frozen_is_a_deep_copy() {
    let p = policy(0);
    let frozen = p.clone_frozen().unwrap();
    let a = [5u32, EOS];
    let before = frozen.token_logps(&["o"], &[&a], 2).unwrap().0.to_vec2::<f32>().unwrap();
    assert_eq!(before, p.token_logps(&["o"], &[&a], 2).unwrap().0.to_vec2::<f32>().unwrap());
    // Overwrite every parameter of the original.
    for v in p.varmap().all_vars() {
        v.set(&Tensor::zeros(v.shape(), v.dtype(), v.device()).unwrap()).unwrap();
    }
    let after = frozen.token_logps(&["o"], &[&a], 2).unwrap().0.to_vec2::<f32>().unwrap();
    assert_eq!(before, after);
    assert_ne!(after, p.token_logps(&["o"], &[&a], 2).unwrap().0.to_vec2::<f32>().unwrap());
}
