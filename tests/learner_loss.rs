//! The GRPO loss: hand-computed values for every option, the fused gradient
//! against central finite differences, and CPU reference == candle ops ==
//! the fused candle op (whose applications never share a gradient).
#![cfg(feature = "learner")]

use candle_core::{DType, Device, Tensor, Var};
use g2po::learner::tensor::{LossTensors, aggregate, grpo_loss_tensors};
use g2po::learner::{FusedGrpoLoss, LearnerError};
use g2po::loss::{
    KlEstimator, LossAggregation, LossBuffers, LossConfig, LossError, LossInputs, LossOutput, grpo_loss_cpu,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Owned inputs, so tests can build and mutate them freely.
#[derive(Clone)]
struct Data {
    rows: usize,
    max_len: usize,
    logp: Vec<f32>,
    old: Vec<f32>,
    refp: Vec<f32>,
    adv: Vec<f32>,
    ent: Vec<f32>,
    mask: Vec<f32>,
}

impl Data {
    fn inputs(&self) -> LossInputs<'_> {
        LossInputs {
            rows: self.rows,
            max_len: self.max_len,
            logp: &self.logp,
            logp_old: &self.old,
            logp_ref: &self.refp,
            advantages: &self.adv,
            entropy: &self.ent,
            mask: &self.mask,
        }
    }
    fn loss(&self, c: &LossConfig) -> LossOutput {
        grpo_loss_cpu(&self.inputs(), c).unwrap()
    }
    /// One token with the given values (entropy 0, reference = logp).
    fn one(logp: f64, old: f64, adv: f32) -> Self {
        Self {
            rows: 1,
            max_len: 1,
            logp: vec![logp as f32],
            old: vec![old as f32],
            refp: vec![logp as f32],
            adv: vec![adv],
            ent: vec![0.0],
            mask: vec![1.0],
        }
    }
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * (1.0 + a.abs().max(b.abs()))
}

fn plain() -> LossConfig {
    LossConfig { dual_clip: None, ..LossConfig::default() }
}

#[test]
fn clipped_above_for_positive_advantage() {
    // ratio 1.5, A = 2: -A*rho = -3, -A*clip(rho, 0.8, 1.2) = -2.4; the max is
    // the clipped -2.4, constant in logp, so the gradient is 0.
    let d = Data::one(1.5f64.ln(), 0.0, 2.0);
    let out = d.loss(&plain());
    assert!(close(out.loss, -2.4, 1e-6), "{}", out.loss);
    assert_eq!(out.grad_logp, vec![0.0]);
    assert_eq!(out.diagnostics.clip_fraction, 1.0);
    assert!(close(out.diagnostics.approx_kl_old, -(1.5f64.ln()), 1e-6));
    assert!(close(out.diagnostics.policy_loss, -2.4, 1e-6));
}

#[test]
fn unclipped_below_for_positive_advantage() {
    // ratio 0.5, A = 1: -0.5 vs -0.8; the max is the unclipped -0.5 whose
    // derivative is -A*rho = -0.5.
    let d = Data::one(0.5f64.ln(), 0.0, 1.0);
    let out = d.loss(&plain());
    assert!(close(out.loss, -0.5, 1e-6));
    assert!(close(f64::from(out.grad_logp[0]), -0.5, 1e-6));
    assert_eq!(out.diagnostics.clip_fraction, 0.0);
}

#[test]
fn clipped_below_for_negative_advantage() {
    // ratio 0.5, A = -1: 0.5 vs 0.8 -> clipped 0.8, gradient 0.
    let d = Data::one(0.5f64.ln(), 0.0, -1.0);
    let out = d.loss(&plain());
    assert!(close(out.loss, 0.8, 1e-6));
    assert_eq!(out.grad_logp, vec![0.0]);
    assert_eq!(out.diagnostics.clip_fraction, 1.0);
}

#[test]
fn dual_clip_bounds_negative_advantage() {
    // ratio e^2 = 7.389, A = -1: max(7.389, 1.2) = 7.389 with gradient
    // -A*rho = 7.389; the dual clip c = 3 caps it at 3 (gradient 0).
    let d = Data::one(2.0, 0.0, -1.0);
    let e2 = 2f64.exp();
    let out = d.loss(&plain());
    assert!(close(out.loss, e2, 1e-6));
    assert!(close(f64::from(out.grad_logp[0]), e2, 1e-6));
    assert_eq!(out.diagnostics.dual_clip_fraction, 0.0);
    let out = d.loss(&LossConfig::default());
    assert!(close(out.loss, 3.0, 1e-12));
    assert_eq!(out.grad_logp, vec![0.0]);
    assert_eq!(out.diagnostics.dual_clip_fraction, 1.0);
    // A positive advantage is never dual-clipped: ratio e^2, A = 1 gives the
    // clipped -1.2 with or without dual clip.
    let d = Data::one(2.0, 0.0, 1.0);
    assert!(close(d.loss(&LossConfig::default()).loss, -1.2, 1e-6));
}

#[test]
fn clip_higher_widens_upper_bound() {
    // ratio 1.25, A = 1. Symmetric 0.2: clipped at 1.2 -> -1.2, gradient 0.
    // clip_high 0.28: 1.25 < 1.28, unclipped -> -1.25, gradient -1.25.
    let d = Data::one(1.25f64.ln(), 0.0, 1.0);
    let out = d.loss(&plain());
    assert!(close(out.loss, -1.2, 1e-6));
    assert_eq!(out.grad_logp, vec![0.0]);
    let out = d.loss(&LossConfig { clip_high: 0.28, ..plain() });
    assert!(close(out.loss, -1.25, 1e-6));
    assert!(close(f64::from(out.grad_logp[0]), -1.25, 1e-6));
}

#[test]
fn log_ratio_clamp_zeroes_gradient() {
    // logp - logp_old = -30 is clamped to -20: ratio e^-20, A = 1 -> loss
    // -e^-20 (unclipped branch) but no gradient through the clamp.
    let d = Data::one(-30.0, 0.0, 1.0);
    let out = d.loss(&plain());
    assert!(close(out.loss, -(-20f64).exp(), 1e-9));
    assert_eq!(out.grad_logp, vec![0.0]);
    assert!(close(out.diagnostics.approx_kl_old, 20.0, 1e-12));
}

fn kl_case(logp: f64, refp: f64, est: KlEstimator) -> LossOutput {
    // A = 0 so that only the KL term remains; beta = 0.1.
    let mut d = Data::one(logp, logp, 0.0);
    d.refp = vec![refp as f32];
    d.loss(&LossConfig { kl: Some((est, 0.1)), ..plain() })
}

#[test]
fn kl_estimators_by_hand() {
    // logp = -1, ref = -1.5, d = logp - ref = 0.5.
    // k1 = 0.5 -> loss 0.05, gradient 0.1.
    let o = kl_case(-1.0, -1.5, KlEstimator::K1);
    assert!(close(o.loss, 0.05, 1e-7) && close(o.diagnostics.kl_ref, 0.5, 1e-7));
    assert!(close(f64::from(o.grad_logp[0]), 0.1, 1e-7));
    // k2 = 0.5 * 0.25 = 0.125 -> loss 0.0125, gradient beta * d = 0.05.
    let o = kl_case(-1.0, -1.5, KlEstimator::K2);
    assert!(close(o.loss, 0.0125, 1e-7));
    assert!(close(f64::from(o.grad_logp[0]), 0.05, 1e-7));
    // k3: q = -0.5, e^q = 0.6065306597, kl = 0.6065306597 + 0.5 - 1 = 0.1065306597;
    // gradient beta * (1 - e^q) = 0.03934693403.
    let o = kl_case(-1.0, -1.5, KlEstimator::K3);
    assert!(close(o.diagnostics.kl_ref, 0.106_530_659_7, 1e-7));
    assert!(close(o.loss, 0.010_653_065_97, 1e-7));
    assert!(close(f64::from(o.grad_logp[0]), 0.039_346_934_03, 1e-6));
}

#[test]
fn k3_clamps_zero_the_gradient() {
    // q = 3: e^3 - 4 = 16.09 > 10 -> value 10, gradient 0.
    let o = kl_case(0.0, 3.0, KlEstimator::K3);
    assert!(close(o.diagnostics.kl_ref, 10.0, 1e-12));
    assert_eq!(o.grad_logp, vec![0.0]);
    // q = 25 is clamped to 20 first; still value 10 and gradient 0.
    let o = kl_case(0.0, 25.0, KlEstimator::K3);
    assert!(close(o.diagnostics.kl_ref, 10.0, 1e-12));
    assert_eq!(o.grad_logp, vec![0.0]);
    // q = -2: e^-2 + 1 = 1.1353 (inside), gradient beta * (1 - e^-2) = 0.08647.
    let o = kl_case(0.0, -2.0, KlEstimator::K3);
    assert!(close(o.diagnostics.kl_ref, (-2f64).exp() + 1.0, 1e-7));
    assert!(close(f64::from(o.grad_logp[0]), 0.1 * (1.0 - (-2f64).exp()), 1e-6));
}

#[test]
fn entropy_bonus_is_subtracted_and_not_differentiated() {
    // A = 0, entropy 2, coef 0.01 -> loss -0.02, gradient 0, diagnostic 2.
    let mut d = Data::one(-1.0, -1.0, 0.0);
    d.ent = vec![2.0];
    let o = d.loss(&LossConfig { entropy_coef: 0.01, ..plain() });
    assert!(close(o.loss, -0.02, 1e-9));
    assert_eq!(o.grad_logp, vec![0.0]);
    assert_eq!(o.diagnostics.entropy, 2.0);
}

/// Three rows of length 3, on-policy (ratio 1, so pg = -A per token):
/// row 0 has tokens A = 1, 2; row 1 has A = 3, 3, 3; row 2 is fully masked.
fn agg_data() -> Data {
    let z = vec![0.0; 9];
    Data {
        rows: 3,
        max_len: 3,
        logp: z.clone(),
        old: z.clone(),
        refp: z.clone(),
        adv: vec![1.0, 2.0, 9.0, 3.0, 3.0, 3.0, 7.0, 7.0, 7.0],
        ent: z,
        mask: vec![1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0],
    }
}

#[test]
fn aggregations_by_hand() {
    let d = agg_data();
    let cases: [(LossAggregation, f64, [f64; 5]); 5] = [
        // token-mean: (-1 - 2 - 9) / 5 = -2.4; gradient -A / 5.
        (LossAggregation::TokenMean, -2.4, [-0.2, -0.4, -0.6, -0.6, -0.6]),
        // seq-mean-token-sum: row sums -3, -9; mean over the 2 live rows -6;
        // gradient -A / 2 (the empty row is excluded; counting it would give -4).
        (LossAggregation::SeqMeanTokenSum, -6.0, [-0.5, -1.0, -1.5, -1.5, -1.5]),
        // seq-mean-token-mean: row means -1.5, -3 -> -2.25; gradient -A / (2 n_i).
        (LossAggregation::SeqMeanTokenMean, -2.25, [-0.25, -0.5, -0.5, -0.5, -0.5]),
        // seq-mean-token-sum-norm (verl): the sum over rows of the row sums,
        // divided by the fixed length, no mean over rows. Length 4:
        // (-3 - 9) / 4 = -3; gradient -A / 4.
        (LossAggregation::SeqMeanTokenSumNorm { length: Some(4.0) }, -3.0, [-0.25, -0.5, -0.75, -0.75, -0.75]),
        // Default length: the padded width 3 -> -12 / 3 = -4; gradient -A / 3.
        (LossAggregation::SeqMeanTokenSumNorm { length: None }, -4.0, [-1.0 / 3.0, -2.0 / 3.0, -1.0, -1.0, -1.0]),
    ];
    for (agg, loss, grads) in cases {
        let o = d.loss(&LossConfig { aggregation: agg, ..plain() });
        assert!(close(o.loss, loss, 1e-9), "{agg:?}: {}", o.loss);
        let masked = [o.grad_logp[0], o.grad_logp[1], o.grad_logp[3], o.grad_logp[4], o.grad_logp[5]];
        for (g, e) in masked.iter().zip(grads) {
            assert!(close(f64::from(*g), e, 1e-6), "{agg:?}: {masked:?}");
        }
        // Gradient is zero wherever the mask is zero.
        for i in [2, 6, 7, 8] {
            assert_eq!(o.grad_logp[i], 0.0);
        }
    }
}

#[test]
fn total_combines_terms() {
    // Token 1: ratio 1, A = 1, ref diff 0.5 (k1), entropy 1. Token 2: A = -1,
    // ratio 1, ref diff 0, entropy 3. token-mean: pg = (-1 + 1)/2 = 0,
    // kl = 0.25, entropy 2. beta 0.2, coef 0.1 -> 0 + 0.05 - 0.2 = -0.15.
    let d = Data {
        rows: 1,
        max_len: 2,
        logp: vec![-1.0, -1.0],
        old: vec![-1.0, -1.0],
        refp: vec![-1.5, -1.0],
        adv: vec![1.0, -1.0],
        ent: vec![1.0, 3.0],
        mask: vec![1.0, 1.0],
    };
    let c = LossConfig { kl: Some((KlEstimator::K1, 0.2)), entropy_coef: 0.1, ..LossConfig::default() };
    let o = d.loss(&c);
    assert!(close(o.loss, -0.15, 1e-9), "{}", o.loss);
    // Gradients: (-A + beta) / 2 = (-1 + 0.2)/2 = -0.4 and (1 + 0.2)/2 = 0.6.
    assert!(close(f64::from(o.grad_logp[0]), -0.4, 1e-6) && close(f64::from(o.grad_logp[1]), 0.6, 1e-6));
    assert_eq!(o.diagnostics.entropy, 2.0);
    assert!(close(o.diagnostics.kl_ref, 0.25, 1e-9));
}

#[test]
fn input_errors_are_typed() {
    let d = agg_data();
    let c = plain();
    let mut bad = d.clone();
    bad.old.pop();
    assert!(matches!(grpo_loss_cpu(&bad.inputs(), &c), Err(LossError::LengthMismatch { name: "logp_old", .. })));
    let mut bad = d.clone();
    bad.logp[4] = f32::NAN;
    assert!(matches!(grpo_loss_cpu(&bad.inputs(), &c), Err(LossError::NonFinite { name: "logp", index: 4 })));
    let mut bad = d.clone();
    bad.adv[0] = f32::INFINITY;
    assert!(matches!(grpo_loss_cpu(&bad.inputs(), &c), Err(LossError::NonFinite { name: "advantages", .. })));
    let mut bad = d.clone();
    bad.mask = vec![0.0; 9];
    assert!(matches!(grpo_loss_cpu(&bad.inputs(), &c), Err(LossError::EmptyMask)));
    let mut bad = d.clone();
    bad.mask[0] = 0.5;
    assert!(matches!(grpo_loss_cpu(&bad.inputs(), &c), Err(LossError::BadMask { index: 0, .. })));
    for cfg in [
        LossConfig { clip_low: -0.1, ..c },
        LossConfig { clip_high: f64::NAN, ..c },
        LossConfig { dual_clip: Some(1.0), ..c },
        LossConfig { dual_clip: Some(0.5), ..c },
        LossConfig { kl: Some((KlEstimator::K1, -1.0)), ..c },
        LossConfig { entropy_coef: f64::INFINITY, ..c },
        LossConfig { aggregation: LossAggregation::SeqMeanTokenSumNorm { length: Some(0.0) }, ..c },
        LossConfig { aggregation: LossAggregation::SeqMeanTokenSumNorm { length: Some(f64::INFINITY) }, ..c },
    ] {
        assert!(matches!(grpo_loss_cpu(&d.inputs(), &cfg), Err(LossError::BadConfig(_))), "{cfg:?}");
    }
    // KL configured but no reference; entropy bonus but no entropy.
    let mut bad = d.clone();
    bad.refp.clear();
    let kl = LossConfig { kl: Some((KlEstimator::K3, 0.1)), ..c };
    assert!(matches!(grpo_loss_cpu(&bad.inputs(), &kl), Err(LossError::LengthMismatch { name: "logp_ref", .. })));
    assert!(grpo_loss_cpu(&bad.inputs(), &c).is_ok(), "no KL: an empty reference is fine");
    let mut bad = d;
    bad.ent.clear();
    let ent = LossConfig { entropy_coef: 0.01, ..c };
    assert!(matches!(grpo_loss_cpu(&bad.inputs(), &ent), Err(LossError::LengthMismatch { name: "entropy", .. })));
}

/// Every option combination the tests sweep.
fn all_configs() -> Vec<LossConfig> {
    let aggs = [
        LossAggregation::TokenMean,
        LossAggregation::SeqMeanTokenSum,
        LossAggregation::SeqMeanTokenMean,
        LossAggregation::SeqMeanTokenSumNorm { length: Some(7.0) },
        LossAggregation::SeqMeanTokenSumNorm { length: None },
    ];
    let kls = [None, Some((KlEstimator::K1, 0.05)), Some((KlEstimator::K2, 0.05)), Some((KlEstimator::K3, 0.05))];
    let mut out = Vec::new();
    for aggregation in aggs {
        for kl in kls {
            for dual_clip in [None, Some(3.0)] {
                for (clip_low, clip_high) in [(0.2, 0.2), (0.2, 0.28)] {
                    for entropy_coef in [0.0, 0.01] {
                        out.push(LossConfig { clip_low, clip_high, dual_clip, kl, entropy_coef, aggregation });
                    }
                }
            }
        }
    }
    out
}

/// Random inputs, 5 rows x 6 tokens, ragged mask with one empty row.
/// `smooth` keeps every token away from the loss's kinks (clip bounds, dual
/// bound, clamps) by more than the finite-difference step.
fn random_data(rng: &mut ChaCha8Rng, smooth: bool) -> Data {
    let (rows, max_len) = (5, 6);
    let n = rows * max_len;
    let mut d = Data {
        rows,
        max_len,
        logp: vec![0.0; n],
        old: vec![0.0; n],
        refp: vec![0.0; n],
        adv: vec![0.0; n],
        ent: vec![0.0; n],
        mask: vec![0.0; n],
    };
    let lens = [6, 3, 0, 1, 5];
    for (r, &len) in lens.iter().enumerate() {
        let adv = rng.random_range(-2.0f32..2.0);
        for j in 0..max_len {
            let i = r * max_len + j;
            d.mask[i] = if j < len { 1.0 } else { 0.0 };
            d.adv[i] = adv + rng.random_range(-0.3f32..0.3);
            d.old[i] = rng.random_range(-4.0f32..-0.1);
            d.ent[i] = rng.random_range(0.0f32..3.0);
            let diff = loop {
                let x: f64 = rng.random_range(-1.5..1.5);
                let rho = x.exp();
                let far = |b: f64| (rho - b).abs() > 0.02;
                if !smooth || (far(0.8) && far(1.2) && far(1.28) && far(3.0)) {
                    break x;
                }
            };
            d.logp[i] = (f64::from(d.old[i]) + diff) as f32;
            d.refp[i] = d.logp[i] + rng.random_range(-2.0f32..2.0);
            if !smooth && rng.random_bool(0.1) {
                // Exercise the clamps too (both paths must agree there).
                d.logp[i] = d.old[i] + if rng.random_bool(0.5) { 25.0 } else { -25.0 };
                d.refp[i] = d.logp[i] + 15.0;
            }
        }
    }
    d
}

#[test]
fn fused_gradient_matches_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    for c in all_configs() {
        let d = random_data(&mut rng, true);
        let out = d.loss(&c);
        for i in 0..d.logp.len() {
            let h = 1e-3f32;
            let (mut plus, mut minus) = (d.clone(), d.clone());
            plus.logp[i] += h;
            minus.logp[i] -= h;
            // Divide by the step that f32 actually took.
            let step = f64::from(plus.logp[i]) - f64::from(minus.logp[i]);
            let fd = (plus.loss(&c).loss - minus.loss(&c).loss) / step;
            let g = f64::from(out.grad_logp[i]);
            assert!((fd - g).abs() < 2e-4 * (1.0 + g.abs()), "{c:?} token {i}: fd {fd} vs analytic {g}");
            if d.mask[i] == 0.0 {
                assert_eq!(g, 0.0);
                assert_eq!(fd, 0.0);
            }
        }
    }
}

fn t2(v: &[f32], d: &Data, dev: &Device) -> Tensor {
    Tensor::from_vec(v.to_vec(), (d.rows, d.max_len), dev).unwrap()
}

#[test]
fn fused_equals_candle_ops_and_custom_op() {
    let dev = Device::Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for c in all_configs() {
        for smooth in [true, false] {
            let d = random_data(&mut rng, smooth);
            let fused = d.loss(&c);

            // Candle-ops path, differentiated by autograd.
            let logp = Var::from_tensor(&t2(&d.logp, &d, &dev)).unwrap();
            let (old, refp, adv, ent, mask) = (
                t2(&d.old, &d, &dev),
                t2(&d.refp, &d, &dev),
                t2(&d.adv, &d, &dev),
                t2(&d.ent, &d, &dev),
                t2(&d.mask, &d, &dev),
            );
            let inputs = LossTensors {
                logp: logp.as_tensor(),
                logp_old: &old,
                logp_ref: Some(&refp),
                advantages: &adv,
                entropy: Some(&ent),
                mask: &mask,
            };
            let (loss, diag) = grpo_loss_tensors(&inputs, &c).unwrap();
            let value = loss.to_scalar::<f64>().unwrap();
            assert!(close(value, fused.loss, 1e-9), "{c:?}: ops {value} vs fused {}", fused.loss);
            assert!(close(diag.policy_loss, fused.diagnostics.policy_loss, 1e-9));
            assert!(close(diag.kl_ref, fused.diagnostics.kl_ref, 1e-9));
            assert!(close(diag.entropy, fused.diagnostics.entropy, 1e-9));
            assert!(close(diag.approx_kl_old, fused.diagnostics.approx_kl_old, 1e-9));
            assert_eq!(diag.clip_fraction, fused.diagnostics.clip_fraction, "{c:?}");
            assert_eq!(diag.dual_clip_fraction, fused.diagnostics.dual_clip_fraction, "{c:?}");
            let g_ops = loss.backward().unwrap().get(&logp).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for (i, (a, b)) in g_ops.iter().zip(&fused.grad_logp).enumerate() {
                assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{c:?} token {i}: ops {a} vs fused {b}");
            }

            // The fused op, with an incoming gradient of 3 to check the scaling.
            let (loss_op, diag_op) = fused_op(&d, c).apply(logp.as_tensor()).unwrap();
            assert_eq!(diag_op, fused.diagnostics);
            assert!(close(f64::from(loss_op.to_scalar::<f32>().unwrap()), fused.loss, 1e-6));
            let g_op = (loss_op * 3.0)
                .unwrap()
                .backward()
                .unwrap()
                .get(&logp)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            for (a, b) in g_op.iter().zip(&fused.grad_logp) {
                assert!((a - 3.0 * b).abs() <= 1e-6 * (1.0 + b.abs()));
            }
        }
    }
}

/// The op over `d`'s constants (everything but `logp`).
fn fused_op(d: &Data, c: LossConfig) -> FusedGrpoLoss {
    FusedGrpoLoss::from_buffers(
        LossBuffers {
            rows: d.rows,
            max_len: d.max_len,
            logp: Vec::new(),
            logp_old: d.old.clone(),
            logp_ref: d.refp.clone(),
            advantages: d.adv.clone(),
            entropy: d.ent.clone(),
            mask: d.mask.clone(),
        },
        c,
    )
    .unwrap()
}

/// The defect this guards against: an op whose clones shared one cache keyed
/// by nothing returned, for a second tensor, the first tensor's loss and
/// gradient. Every application must answer for its own `logp`, whether the
/// op is reused, cloned, or applied before the first one's backward ran.
#[test]
fn each_application_of_the_op_answers_for_its_own_logp() {
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    let d = random_data(&mut rng, true);
    let mut e = d.clone();
    for (x, y) in e.logp.iter_mut().zip(&d.old) {
        *x = y + 0.1; // another logp: ratio e^0.1 everywhere
    }
    let c = LossConfig { kl: Some((KlEstimator::K2, 0.1)), ..plain() };
    let (want_d, want_e) = (d.loss(&c), e.loss(&c));
    assert!((want_d.loss - want_e.loss).abs() > 1e-3, "the two inputs must differ");
    let dev = Device::Cpu;
    let op = fused_op(&d, c);
    let twin = op.clone();
    let lp_d = Var::from_tensor(&t2(&d.logp, &d, &dev)).unwrap();
    let lp_e = Var::from_tensor(&t2(&e.logp, &e, &dev)).unwrap();
    // Both forwards before either backward.
    let (loss_d, diag_d) = op.apply(lp_d.as_tensor()).unwrap();
    let (loss_e, diag_e) = twin.apply(lp_e.as_tensor()).unwrap();
    let (loss_e2, _) = op.apply(lp_e.as_tensor()).unwrap();
    assert_eq!(diag_d, want_d.diagnostics);
    assert_eq!(diag_e, want_e.diagnostics);
    for (loss, want) in [(&loss_d, &want_d), (&loss_e, &want_e), (&loss_e2, &want_e)] {
        assert!(close(f64::from(loss.to_scalar::<f32>().unwrap()), want.loss, 1e-6));
    }
    let grad = |loss: &Tensor, v: &Var| -> Vec<f32> {
        loss.backward().unwrap().get(v).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
    };
    assert_eq!(grad(&loss_e, &lp_e), want_e.grad_logp);
    assert_eq!(grad(&loss_d, &lp_d), want_d.grad_logp);
    assert_eq!(grad(&loss_e2, &lp_e), want_e.grad_logp);
    // Summed in one graph, each term's gradient reaches its own variable.
    let both = (loss_d + loss_e).unwrap().backward().unwrap();
    let gd = both.get(&lp_d).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(gd, want_d.grad_logp);
}

/// seq-mean-token-sum-norm is verl's `sum over rows of the token sums /
/// length`: every token weighs `1 / length`, so it is token-mean scaled by
/// `tokens / length` (value and gradient, every term), it grows with the
/// number of rows instead of averaging over them, and its gradient matches
/// central finite differences.
#[test]
fn seq_mean_token_sum_norm_sums_over_rows() {
    let mut rng = ChaCha8Rng::seed_from_u64(23);
    let d = random_data(&mut rng, true);
    let tokens = d.mask.iter().filter(|&&m| m == 1.0).count() as f64;
    let base = LossConfig { kl: Some((KlEstimator::K3, 0.05)), entropy_coef: 0.01, ..LossConfig::default() };
    let mean = d.loss(&base);
    for (length, divisor) in [(None, d.max_len as f64), (Some(2.5), 2.5)] {
        let c = LossConfig { aggregation: LossAggregation::SeqMeanTokenSumNorm { length }, ..base };
        let out = d.loss(&c);
        let scale = tokens / divisor;
        assert!(close(out.loss, mean.loss * scale, 1e-12), "{length:?}: {} vs {}", out.loss, mean.loss * scale);
        assert!(close(out.diagnostics.policy_loss, mean.diagnostics.policy_loss * scale, 1e-12));
        assert!(close(out.diagnostics.kl_ref, mean.diagnostics.kl_ref * scale, 1e-12));
        assert!(close(out.diagnostics.entropy_loss, mean.diagnostics.entropy_loss * scale, 1e-12));
        for (g, m) in out.grad_logp.iter().zip(&mean.grad_logp) {
            assert!(close(f64::from(*g), f64::from(*m) * scale, 1e-6));
        }
        // Twice the rows (the batch stacked on itself): twice the loss.
        let mut twice = d.clone();
        twice.rows *= 2;
        for v in [&mut twice.logp, &mut twice.old, &mut twice.refp, &mut twice.adv, &mut twice.ent, &mut twice.mask] {
            let copy = v.clone();
            v.extend(copy);
        }
        assert!(close(twice.loss(&c).loss, 2.0 * out.loss, 1e-12));
        // Central differences of the loss against its analytic gradient.
        for i in 0..d.logp.len() {
            let h = 1e-3f32;
            let (mut plus, mut minus) = (d.clone(), d.clone());
            plus.logp[i] += h;
            minus.logp[i] -= h;
            let step = f64::from(plus.logp[i]) - f64::from(minus.logp[i]);
            let fd = (plus.loss(&c).loss - minus.loss(&c).loss) / step;
            let g = f64::from(out.grad_logp[i]);
            assert!((fd - g).abs() < 2e-4 * (1.0 + g.abs()), "{length:?} token {i}: fd {fd} vs analytic {g}");
        }
    }
}

#[test]
fn custom_op_accepts_f64_and_keeps_dtype() {
    let d = agg_data();
    let logp = Var::from_tensor(&t2(&d.logp, &d, &Device::Cpu).to_dtype(DType::F64).unwrap()).unwrap();
    let op = FusedGrpoLoss::from_buffers(
        LossBuffers {
            rows: d.rows,
            max_len: d.max_len,
            logp_old: d.old.clone(),
            advantages: d.adv.clone(),
            mask: d.mask.clone(),
            ..Default::default()
        },
        plain(),
    )
    .unwrap();
    let (loss, _) = op.apply(logp.as_tensor()).unwrap();
    assert_eq!(loss.dtype(), DType::F64);
    assert!(close(loss.to_scalar::<f64>().unwrap(), -2.4, 1e-12));
    let g = loss.backward().unwrap().get(&logp).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap();
    assert!(close(g[1], -0.4, 1e-6));
    // Wrong shape is a typed error, not a panic.
    let op = FusedGrpoLoss::from_buffers(
        LossBuffers {
            rows: 2,
            max_len: 2,
            logp_old: vec![0.0; 4],
            advantages: vec![0.0; 4],
            mask: vec![1.0; 4],
            ..Default::default()
        },
        plain(),
    )
    .unwrap();
    assert!(matches!(op.apply(logp.as_tensor()), Err(LearnerError::BadInput(_))));
    // Bad constants surface as the loss's typed error when the op runs.
    let lp = Var::from_tensor(&t2(&d.logp, &d, &Device::Cpu)).unwrap();
    let mut half = d.mask.clone();
    half[0] = 0.5;
    let op = FusedGrpoLoss::from_buffers(
        LossBuffers {
            rows: d.rows,
            max_len: d.max_len,
            logp_old: d.old.clone(),
            advantages: d.adv.clone(),
            mask: half,
            ..Default::default()
        },
        plain(),
    )
    .unwrap();
    assert!(matches!(op.apply(lp.as_tensor()), Err(LearnerError::Loss(LossError::BadMask { index: 0, .. }))));
}

#[test]
fn tensor_path_errors_are_typed() {
    let dev = Device::Cpu;
    let d = agg_data();
    let (logp, old, adv, mask) =
        (t2(&d.logp, &d, &dev), t2(&d.old, &d, &dev), t2(&d.adv, &d, &dev), t2(&d.mask, &d, &dev));
    let base =
        LossTensors { logp: &logp, logp_old: &old, logp_ref: None, advantages: &adv, entropy: None, mask: &mask };
    let kl = LossConfig { kl: Some((KlEstimator::K2, 0.1)), ..plain() };
    assert!(matches!(grpo_loss_tensors(&base, &kl), Err(LearnerError::BadInput(_))));
    let ent = LossConfig { entropy_coef: 0.1, ..plain() };
    assert!(matches!(grpo_loss_tensors(&base, &ent), Err(LearnerError::BadInput(_))));
    let nan = t2(&[f32::NAN; 9], &d, &dev);
    let bad = LossTensors { logp_old: &nan, ..base };
    assert!(matches!(
        grpo_loss_tensors(&bad, &plain()),
        Err(LearnerError::Loss(LossError::NonFinite { name: "logp_old", index: 0 }))
    ));
    let zero = t2(&[0.0; 9], &d, &dev);
    let bad = LossTensors { mask: &zero, ..base };
    assert!(matches!(grpo_loss_tensors(&bad, &plain()), Err(LearnerError::Loss(LossError::EmptyMask))));
    let short = Tensor::zeros((3, 2), DType::F32, &dev).unwrap();
    let bad = LossTensors { advantages: &short, ..base };
    assert!(matches!(grpo_loss_tensors(&bad, &plain()), Err(LearnerError::BadInput(_))));
    // aggregate() applies the same weights as the loss.
    let x = t2(&d.adv, &d, &dev);
    let v = aggregate(&x, &mask, LossAggregation::SeqMeanTokenSum).unwrap().to_scalar::<f64>().unwrap();
    assert!(close(v, 6.0, 1e-12));
}
