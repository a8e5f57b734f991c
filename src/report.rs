//! How an error reads to a user: its whole chain on one line, each cause once, defused.
//!
//! `{:#}` of an `anyhow::Error` joins every cause with `: `, and many errors (ours and std's
//! wrappers) already print their source in their own message, so a plain chain repeats itself
//! (`Permission denied (os error 13): Permission denied (os error 13)`). Messages quote file
//! names and file contents (a hub's file names, a damaged `session.json` echoed by serde), so
//! the text is defused like model output before it reaches a terminal.

use crate::text::sanitize;

/// The error chain, outermost first, leaving out a cause whose text the message before it
/// already ends with.
pub fn describe(error: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if text.is_empty() || out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    sanitize(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn each_cause_is_said_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("/x/state.bin: {source}")]
        struct Io {
            #[source]
            source: std::io::Error,
        }
        let io = std::io::Error::from_raw_os_error(13);
        let e = anyhow::Error::new(Io { source: io }).context("cannot open session `a`");
        let text = describe(&e);
        assert_eq!(
            text,
            "cannot open session `a`: /x/state.bin: Permission denied (os error 13)"
        );
    }

    #[test]
    fn escapes_in_messages_are_defused() {
        let e: anyhow::Result<()> = Err(anyhow::anyhow!("bad role \"\x1b]52;c;eA==\x07\""));
        let text = describe(&e.context("session.json").unwrap_err());
        assert!(!text.contains('\x1b') && !text.contains('\x07'), "{text:?}");
        assert!(text.starts_with("session.json: bad role"));
    }
}
