//! The JSON bodies of the protocol (shared by the client and the server).

use serde::{Deserialize, Serialize};

/// `POST /create` answer (TextCraft adds an observation; extra fields are ignored).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Created {
    pub id: u64,
}

/// `POST /reset` body.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ResetBody {
    pub id: u64,
    pub data_idx: u64,
}

/// `POST /step` body.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct StepBody {
    pub id: u64,
    pub action: String,
}

/// `POST /close` body.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct IdBody {
    pub id: u64,
}

/// `POST /reset` and `POST /step` answers.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct StepAnswer {
    pub observation: String,
    #[serde(default)]
    pub reward: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    #[serde(default)]
    pub done: bool,
    /// Extension: the action was admissible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid: Option<bool>,
    /// Extension: the episode ended in success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success: Option<bool>,
    /// AgentGym's reset answer carries it; unused here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<bool>,
}
