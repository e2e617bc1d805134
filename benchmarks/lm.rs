//! The SmolLM2 policy on the CPU: scoring 8 admissible actions after a
//! ~200-token prompt (prompt once, candidates batched on its cache; and the
//! naive way, every action appended to the prompt and run from scratch), and
//! one LoRA GRPO group step (prompt + 8 actions forward with gradients,
//! backward, AdamW), with adapters on q/k/v/o of all 30 blocks and of the top
//! 4 only. Peak memory: `examples/lm_peak.rs`.
//!
//! Needs the weights (`scripts/fetch-smollm2.sh`). Run:
//! `CANDLE_NUM_THREADS=1 cargo bench --bench lm`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use g2po::lm::{LmLearner, LoraConfig, sequence_logps};

#[path = "lm_common.rs"]
mod common;

fn bench(c: &mut Criterion) {
    let base = common::load_base();
    let p = common::policy(&base, LoraConfig::default());
    let (prompt, admissible) = common::decision(&p);
    let prompt_tokens = p.tokenizer().encode(&prompt).unwrap().len();
    eprintln!("prompt: {prompt_tokens} tokens; actions: {admissible:?}");
    let mut g = c.benchmark_group("lm");
    g.sample_size(10);
    g.bench_function("score_8_actions_cached", |b| b.iter(|| black_box(p.score(&prompt, &admissible).unwrap())));
    let ids = p.tokenizer().encode(&prompt).unwrap();
    let acts: Vec<Vec<u32>> = admissible.iter().map(|a| p.tokenize_action(a).unwrap()).collect();
    g.bench_function("score_8_actions_uncached", |b| {
        b.iter(|| {
            for a in &acts {
                black_box(sequence_logps(p.model(), p.lora(), &ids, a).unwrap());
            }
        })
    });
    for (name, lora) in [
        ("grpo_group_step_lora_all_30", LoraConfig::default()),
        ("grpo_group_step_lora_top_4", LoraConfig { top_layers: Some(4), ..LoraConfig::default() }),
    ] {
        let p = common::policy(&base, lora);
        let batch = common::group_batch(&p, &prompt, &admissible);
        let mut learner = LmLearner::new(common::learner_config(), &p).unwrap();
        g.bench_function(name, |b| b.iter(|| black_box(learner.update(&p, None, &batch).unwrap())));
    }
    g.finish();
}

criterion_group! {
    name = benches;
    // No plots: the CI image has no fonts for criterion's plotters backend.
    config = Criterion::default().without_plots();
    targets = bench
}
criterion_main!(benches);
