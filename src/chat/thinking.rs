//! The reasoning of the G1 models, told apart from the answer.
//!
//! A thinking preset ends the user's turn with `Assistant: <think` (the G1 model card's think
//! prompt), so a reply is `>` + the reasoning + `</think>` + the answer. The app shows the
//! reasoning dimmed and folded, exports leave it out unless asked; the model's state holds both
//! as they were written.

/// A reply of a thinking preset in its two parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parts<'a> {
    /// What the model thought, trimmed; empty when it did not think.
    pub reasoning: &'a str,
    /// The answer, trimmed; empty while the model is still thinking.
    pub answer: &'a str,
    /// True once `</think>` was written.
    pub done_thinking: bool,
}

/// What a thinking preset's `bot_prefix` ends with: the model goes on inside the tag.
pub const OPEN: &str = "<think";
const CLOSE: &str = "</think>";

/// Whether a reply that follows `fed` (the text fed before it) starts inside a `<think` tag.
pub fn opens(fed: &str) -> bool {
    fed.ends_with(OPEN)
}

/// Splits a reply that starts inside a `<think` tag (the `>` closing it comes first).
pub fn split(reply: &str) -> Parts<'_> {
    let inside = reply.strip_prefix('>').unwrap_or(reply);
    match inside.find(CLOSE) {
        Some(end) => Parts {
            reasoning: inside[..end].trim(),
            answer: inside[end + CLOSE.len()..].trim(),
            done_thinking: true,
        },
        None => Parts {
            reasoning: inside.trim(),
            answer: "",
            done_thinking: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_splits_at_the_closing_tag() {
        let p = split(">\nFirst, 2 + 2 is 4.\n</think>\nThe answer is 4.");
        assert_eq!(p.reasoning, "First, 2 + 2 is 4.");
        assert_eq!(p.answer, "The answer is 4.");
        assert!(p.done_thinking);
    }

    #[test]
    fn while_thinking_everything_is_reasoning() {
        let p = split(">\nLet me see");
        assert_eq!(p.reasoning, "Let me see");
        assert_eq!(p.answer, "");
        assert!(!p.done_thinking);
        assert_eq!(split("").reasoning, "");
    }

    #[test]
    fn an_empty_think_block_leaves_the_answer() {
        let p = split(">\n</think>\nHi!");
        assert_eq!((p.reasoning, p.answer), ("", "Hi!"));
    }
}
