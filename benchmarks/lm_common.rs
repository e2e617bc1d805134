//! The workload shared by `benchmarks/lm.rs` and `examples/lm_peak.rs`: a
//! household-small decision after two earlier turns (a ChatML prompt of about
//! 200 tokens) with its 8 admissible actions.

use std::sync::Arc;

use g2po::learner::{LearnerConfig, UpdateBatch, UpdateRow};
use g2po::lm::{GgufFile, Llama, LmPolicyConfig, LmTokenizer, LoraConfig, PromptContext, SmolLmPolicy};
use g2po_envs::{Environment, Household};

/// The loaded base, shared by every policy of a run.
pub struct Base {
    pub model: Arc<Llama>,
    pub tokenizer: Arc<LmTokenizer>,
}

pub fn load_base() -> Base {
    let file = GgufFile::open_default().unwrap_or_else(|e| panic!("{e}"));
    Base {
        model: Arc::new(Llama::load(&file, &candle_core::Device::Cpu).expect("load")),
        tokenizer: Arc::new(LmTokenizer::from_gguf(&file).expect("tokenizer")),
    }
}

pub fn policy(base: &Base, lora: LoraConfig) -> SmolLmPolicy {
    let cfg = LmPolicyConfig { lora, ..LmPolicyConfig::default() };
    SmolLmPolicy::from_parts(Arc::clone(&base.model), Arc::clone(&base.tokenizer), cfg, 0).expect("policy")
}

/// (prompt, 8 admissible actions): household-small task 0 after walking two
/// turns, history 2; the actions are the first 8 admissible ones there.
pub fn decision(p: &SmolLmPolicy) -> (String, Vec<String>) {
    let mut env = Household::small();
    let mut obs = env.reset(0);
    let mut history = Vec::new();
    for _ in 0..2 {
        let a = obs.admissible.iter().find(|a| a.starts_with("go to")).expect("a move").clone();
        let next = env.step(&a).observation;
        history.push((obs.text, a));
        obs = next;
    }
    let mut admissible = obs.admissible.clone();
    let mut filler = ["look", "inventory", "go to sofa", "go to desk", "go to drawer", "go to diningtable"].iter();
    while admissible.len() < 8 {
        admissible.push(filler.next().expect("enough filler").to_string());
    }
    admissible.truncate(8);
    let prompt = p.render(&PromptContext { history: &history, observation: &obs.text, admissible: &admissible });
    (prompt, admissible)
}

/// The GRPO group: the 8 actions of `decision` with mixed advantages,
/// on-policy old log-probs.
pub fn group_batch(p: &SmolLmPolicy, prompt: &str, admissible: &[String]) -> UpdateBatch {
    let scored = p.score(prompt, admissible).expect("score");
    let advantages: Vec<f32> = (0..scored.len()).map(|i| if i % 2 == 0 { 1.0 } else { -1.0 }).collect();
    let rows = scored
        .into_iter()
        .map(|s| UpdateRow { observation: prompt.to_string(), action_tokens: s.tokens, old_logps: s.logps })
        .collect();
    UpdateBatch::with_row_advantages(rows, &advantages).expect("a valid batch")
}

pub fn learner_config() -> LearnerConfig {
    LearnerConfig { lr: 1e-4, ..LearnerConfig::default() }
}
