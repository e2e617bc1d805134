//! The ChatML prompt the policy reads.
//!
//! One conversation per decision: a system turn with the instructions, then
//! the recent history as alternating user (observation) and assistant
//! (action) turns, then the current observation with the admissible actions
//! as the last user turn, and the opening of the assistant's reply. The
//! action the policy emits is the assistant's text followed by `<|im_end|>`,
//! which is how SmolLM2-Instruct ends a turn; scoring that end marker keeps a
//! command from being scored like its own prefix (`go to desk` vs `go to
//! desk 1`).
//!
//! Listing the admissible actions in the prompt is what lets an instruction
//! model put its mass on them; the history is short (a few turns) because
//! prompt length is the main cost of every decision.

use serde::{Deserialize, Serialize};

use super::tokenizer::{IM_END, IM_START};

/// How prompts are rendered.
///
/// ```
/// let c = g2po::lm::PromptConfig::default();
/// assert_eq!(c.history, 2);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptConfig {
    /// The system message.
    pub system: String,
    /// How many earlier (observation, action) turns are included.
    pub history: usize,
}

impl Default for PromptConfig {
    fn default() -> Self {
        Self {
            system: "You are an agent in a text world. Each turn you read what you observe and reply with \
                     exactly one of the admissible actions, copied verbatim."
                .into(),
            history: 2,
        }
    }
}

/// What one decision sees.
#[derive(Debug, Clone, Copy)]
pub struct PromptContext<'a> {
    /// Earlier (observation, action) turns of the episode, oldest first (only
    /// the last [`PromptConfig::history`] are shown).
    pub history: &'a [(String, String)],
    /// The current observation (it carries the task in the text worlds).
    pub observation: &'a str,
    /// The admissible actions.
    pub admissible: &'a [String],
}

fn turn(out: &mut String, role: &str, content: &str) {
    out.push_str(IM_START);
    out.push_str(role);
    out.push('\n');
    out.push_str(content);
    out.push_str(IM_END);
    out.push('\n');
}

impl PromptConfig {
    /// The ChatML prompt of `ctx`, ending with the opening of the assistant
    /// turn.
    ///
    /// ```
    /// use g2po::lm::{PromptConfig, PromptContext};
    /// let adm = vec!["go to desk".to_string(), "look".to_string()];
    /// let hist = vec![("You are in the hallway.".to_string(), "look".to_string())];
    /// let ctx = PromptContext { history: &hist, observation: "You see a desk.", admissible: &adm };
    /// let p = PromptConfig { system: "Act.".into(), history: 1 }.render(&ctx);
    /// assert_eq!(p, "<|im_start|>system\nAct.<|im_end|>\n\
    ///                <|im_start|>user\nYou are in the hallway.<|im_end|>\n\
    ///                <|im_start|>assistant\nlook<|im_end|>\n\
    ///                <|im_start|>user\nYou see a desk.\nAdmissible actions: go to desk; look<|im_end|>\n\
    ///                <|im_start|>assistant\n");
    /// ```
    pub fn render(&self, ctx: &PromptContext<'_>) -> String {
        let mut out = String::with_capacity(512);
        turn(&mut out, "system", &self.system);
        let skip = ctx.history.len().saturating_sub(self.history);
        for (obs, act) in &ctx.history[skip..] {
            turn(&mut out, "user", obs);
            turn(&mut out, "assistant", act);
        }
        let user = format!("{}\nAdmissible actions: {}", ctx.observation, ctx.admissible.join("; "));
        turn(&mut out, "user", &user);
        out.push_str(IM_START);
        out.push_str("assistant\n");
        out
    }
}
