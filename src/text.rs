//! Model output and pasted text are untrusted: before they reach a terminal, control
//! characters that could move the cursor, change colours, set the window title, write the
//! clipboard (ANSI/OSC sequences) or reorder text (bidi overrides) are made harmless.

use std::borrow::Cow;

/// True for characters a terminal would act on rather than show.
fn is_dangerous(c: char) -> bool {
    match c {
        '\n' | '\t' => false,
        // C0 controls (ESC among them), DEL and the C1 range (CSI, OSC, ... as one code point).
        '\u{0}'..='\u{1f}' | '\u{7f}'..='\u{9f}' => true,
        // Bidirectional embeddings, overrides and isolates ("Trojan Source").
        '\u{202a}'..='\u{202e}'
        | '\u{2066}'..='\u{2069}'
        | '\u{200e}'
        | '\u{200f}'
        | '\u{061c}' => true,
        _ => false,
    }
}

/// Replaces each dangerous character by a visible stand-in (`\r` becomes nothing, so CRLF
/// text shows as plain lines): ESC shows as `␛`, other C0 controls as their control picture,
/// the rest as U+FFFD.
pub fn sanitize(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_dangerous) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if !is_dangerous(c) {
            out.push(c);
        } else if c == '\r' {
            continue;
        } else if (c as u32) < 0x20 {
            // U+2400 + n is the control picture of C0 character n (U+241B is ␛).
            out.push(char::from_u32(0x2400 + c as u32).unwrap_or(char::REPLACEMENT_CHARACTER));
        } else if c == '\u{7f}' {
            out.push('\u{2421}');
        } else {
            out.push(char::REPLACEMENT_CHARACTER);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_untouched() {
        assert!(matches!(
            sanitize("hello\n\tworld 日本 🙂"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn escape_sequences_are_defused() {
        let evil = "a\x1b[2J\x1b]52;c;ZXZpbA==\x07b\u{9b}31m\u{202e}c\r\n";
        let safe = sanitize(evil);
        assert!(!safe.chars().any(is_dangerous), "{safe:?}");
        assert_eq!(safe, "a␛[2J␛]52;c;ZXZpbA==␇b\u{FFFD}31m\u{FFFD}c\n");
    }
}
