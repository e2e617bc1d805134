//! The SmolLM2 policy on the CPU: scoring 8 admissible actions after a
//! ~200-token prompt (prompt once, candidates batched on its cache; and the
//! naive way, every action appended to the prompt and run from scratch), and
//! one LoRA GRPO group step (prompt + 8 actions forward with gradients,
//! backward, AdamW), with adapters on q/k/v/o of all 30 blocks and of the top
//! 4 only; and the f32 matmuls of one block, the floor under a prompt
//! forward (throughput in elements = flops). Peak memory: `examples/lm_peak.rs`.
//!
//! Needs the weights (`scripts/fetch-smollm2.sh`). Run:
//! `CANDLE_NUM_THREADS=1 cargo bench --bench lm`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use g2po::lm::{LmLearner, LoraConfig, sequence_logps};

#[path = "lm_common.rs"]
mod common;

/// The f32 matmuls of one block on the benchmark's 229-token prompt (q/o, k/v,
/// gate/up, down): the floor under every prompt forward, whatever the model
/// code around them does.
fn bench_block_matmuls(c: &mut Criterion) {
    let device = candle_core::Device::Cpu;
    let mut g = c.benchmark_group("lm_block_matmuls");
    g.sample_size(20);
    for (m, k, n) in [(229usize, 576usize, 576usize), (229, 576, 192), (229, 576, 1536), (229, 1536, 576)] {
        let x = candle_core::Tensor::randn(0f32, 1.0, (m, k), &device).unwrap();
        let w = candle_core::Tensor::randn(0f32, 1.0, (k, n), &device).unwrap();
        g.throughput(criterion::Throughput::Elements((2 * m * k * n) as u64));
        g.bench_function(format!("{m}x{k}x{n}"), |b| b.iter(|| black_box(x.matmul(&w).unwrap())));
    }
    g.finish();
}

fn bench(c: &mut Criterion) {
    // As `g2po train` runs (freed blocks stay with the process).
    g2po::train::retain_freed_memory();
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
    targets = bench_block_matmuls, bench
}
criterion_main!(benches);
