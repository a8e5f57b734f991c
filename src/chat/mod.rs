//! The chat core, without any UI: presets (prompt formats), the conversation engine with turn
//! checkpoints, and stop-sequence handling.

pub mod conversation;
pub mod preset;
mod stop;
pub mod thinking;

pub use conversation::{
    Conversation, Message, Reply, ReplyOptions, ReplyStart, Role, SavedState, StopReason,
    Transcript, Turn, TurnCheckpoint,
};
pub use preset::Preset;
