//! A multi-line text field with Emacs editing keys, used for the message and for the small
//! text prompts of menus (model path, rename). Kept apart from the app so its edits can be
//! tested one key at a time. The cursor moves by grapheme cluster (unicode-segmentation),
//! not by code point.

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use unicode_segmentation::UnicodeSegmentation;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TextInput {
    text: String,
    /// A byte offset, always at a grapheme cluster boundary: `n` + a combining mark, or a
    /// family emoji, is one step for the cursor and one Backspace, as the user sees it.
    cursor: usize,
    /// The last killed text, for Ctrl+Y.
    killed: String,
}

impl TextInput {
    pub fn with_text(text: &str) -> Self {
        let mut input = Self::default();
        input.set(text);
        input
    }

    pub fn text(&self) -> String {
        self.text.clone()
    }

    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    pub fn set(&mut self, text: &str) {
        self.text = text.to_owned();
        self.cursor = self.text.len();
    }

    /// Empties the field and returns what it held.
    pub fn take(&mut self) -> String {
        self.cursor = 0;
        std::mem::take(&mut self.text)
    }

    pub fn insert_str(&mut self, text: &str) {
        self.text.insert_str(self.cursor, text);
        self.cursor += text.len();
        // A combining mark typed after a letter joins its cluster: the cursor stays on a
        // boundary of the text as it now is.
        self.cursor = self.boundary_at_or_after(self.cursor);
    }

    pub fn insert(&mut self, c: char) {
        self.insert_str(c.encode_utf8(&mut [0; 4]));
    }

    fn boundary_at_or_after(&self, at: usize) -> usize {
        self.text
            .grapheme_indices(true)
            .map(|(i, _)| i)
            .find(|&i| i >= at)
            .unwrap_or(self.text.len())
    }

    /// (line, column) of the cursor, the column in characters.
    pub fn cursor_line_col(&self) -> (usize, usize) {
        let before = &self.text[..self.cursor];
        let line = before.matches('\n').count();
        let col = before.chars().rev().take_while(|&c| c != '\n').count();
        (line, col)
    }

    pub fn line_count(&self) -> usize {
        self.text.matches('\n').count() + 1
    }

    fn line_start(&self, at: usize) -> usize {
        self.text[..at].rfind('\n').map_or(0, |i| i + 1)
    }

    fn line_end(&self, at: usize) -> usize {
        self.text[at..]
            .find('\n')
            .map_or(self.text.len(), |i| at + i)
    }

    /// The grapheme boundary before `at` (0 at the start).
    fn prev(&self, at: usize) -> usize {
        self.text[..at]
            .grapheme_indices(true)
            .next_back()
            .map_or(0, |(i, _)| i)
    }

    /// The grapheme boundary after `at` (the end at the end).
    fn next(&self, at: usize) -> usize {
        self.text[at..]
            .graphemes(true)
            .next()
            .map_or(at, |g| at + g.len())
    }

    fn is_word(g: &str) -> bool {
        g.chars().next().is_some_and(char::is_alphanumeric)
    }

    fn word_left(&self) -> usize {
        let mut i = self.cursor;
        let mut clusters = self.text[..self.cursor]
            .grapheme_indices(true)
            .rev()
            .peekable();
        while let Some((at, _)) = clusters.next_if(|(_, g)| !Self::is_word(g)) {
            i = at;
        }
        while let Some((at, _)) = clusters.next_if(|(_, g)| Self::is_word(g)) {
            i = at;
        }
        i
    }

    fn word_right(&self) -> usize {
        let mut i = self.cursor;
        let rest = &self.text[self.cursor..];
        let mut clusters = rest.graphemes(true).peekable();
        while let Some(g) = clusters.next_if(|g| !Self::is_word(g)) {
            i += g.len();
        }
        while let Some(g) = clusters.next_if(|g| Self::is_word(g)) {
            i += g.len();
        }
        i
    }

    fn kill(&mut self, from: usize, to: usize) {
        if from < to {
            self.killed = self.text.drain(from..to).collect();
            self.cursor = from;
        }
    }

    fn delete(&mut self, from: usize, to: usize) {
        if from < to {
            self.text.drain(from..to);
            self.cursor = from;
        }
    }

    /// Moves to the same column of the line above (`up`) or below; false at the edge, so
    /// the caller can use Up/Down for history instead.
    pub fn move_line(&mut self, up: bool) -> bool {
        let col = self.text[self.line_start(self.cursor)..self.cursor]
            .graphemes(true)
            .count();
        let start = self.line_start(self.cursor);
        let target_start = if up {
            if start == 0 {
                return false;
            }
            self.line_start(start - 1)
        } else {
            let end = self.line_end(self.cursor);
            if end == self.text.len() {
                return false;
            }
            end + 1
        };
        let target_end = self.line_end(target_start);
        self.cursor = self.text[target_start..target_end]
            .grapheme_indices(true)
            .nth(col)
            .map_or(target_end, |(i, _)| target_start + i);
        true
    }

    /// Applies an editing key; false when the key is not an editing key.
    pub fn handle_key(&mut self, key: &KeyEvent) -> bool {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        let alt = key.modifiers.contains(KeyModifiers::ALT);
        let (prev, next) = (self.prev(self.cursor), self.next(self.cursor));
        match key.code {
            KeyCode::Char('a') if ctrl => self.cursor = self.line_start(self.cursor),
            KeyCode::Char('e') if ctrl => self.cursor = self.line_end(self.cursor),
            KeyCode::Char('b') if ctrl => self.cursor = prev,
            KeyCode::Char('f') if ctrl => self.cursor = next,
            KeyCode::Char('b') if alt => self.cursor = self.word_left(),
            KeyCode::Char('f') if alt => self.cursor = self.word_right(),
            KeyCode::Char('d') if ctrl => self.delete(self.cursor, next),
            KeyCode::Char('h') if ctrl => self.delete(prev, self.cursor),
            KeyCode::Char('k') if ctrl => {
                let end = self.line_end(self.cursor);
                // At the end of a line, Ctrl+K joins the next one, as in Emacs.
                let end = if end == self.cursor { next } else { end };
                self.kill(self.cursor, end);
            }
            KeyCode::Char('u') if ctrl => self.kill(self.line_start(self.cursor), self.cursor),
            KeyCode::Char('w') if ctrl => self.kill(self.word_left(), self.cursor),
            KeyCode::Backspace if alt => self.kill(self.word_left(), self.cursor),
            KeyCode::Char('d') if alt => self.kill(self.cursor, self.word_right()),
            KeyCode::Char('y') if ctrl => {
                let killed = self.killed.clone();
                self.insert_str(&killed);
            }
            KeyCode::Char(c) if !ctrl && !alt => self.insert(c),
            KeyCode::Backspace => self.delete(prev, self.cursor),
            KeyCode::Delete => self.delete(self.cursor, next),
            KeyCode::Left if ctrl || alt => self.cursor = self.word_left(),
            KeyCode::Right if ctrl || alt => self.cursor = self.word_right(),
            KeyCode::Left => self.cursor = prev,
            KeyCode::Right => self.cursor = next,
            _ => return false,
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(code: KeyCode, modifiers: KeyModifiers) -> KeyEvent {
        KeyEvent::new(code, modifiers)
    }

    #[test]
    fn emacs_keys_edit() {
        let mut t = TextInput::with_text("hello brave world");
        let ctrl = KeyModifiers::CONTROL;
        t.handle_key(&key(KeyCode::Char('w'), ctrl));
        assert_eq!(t.text(), "hello brave ");
        t.handle_key(&key(KeyCode::Char('a'), ctrl));
        t.handle_key(&key(KeyCode::Char('f'), KeyModifiers::ALT));
        t.handle_key(&key(KeyCode::Char('k'), ctrl));
        assert_eq!(t.text(), "hello");
        t.handle_key(&key(KeyCode::Char('y'), ctrl));
        assert_eq!(t.text(), "hello brave ");
        t.handle_key(&key(KeyCode::Char('u'), ctrl));
        assert!(t.is_empty());
    }

    #[test]
    fn up_and_down_move_between_lines_then_report_the_edge() {
        let mut t = TextInput::with_text("abc\nde");
        assert_eq!(t.cursor_line_col(), (1, 2));
        assert!(t.move_line(true));
        assert_eq!(t.cursor_line_col(), (0, 2));
        assert!(!t.move_line(true));
        assert!(t.move_line(false));
        assert!(!t.move_line(false));
        assert_eq!(t.line_count(), 2);
    }

    #[test]
    fn cursor_keys_and_backspace_move_by_grapheme_cluster() {
        let plain = KeyModifiers::NONE;
        // `n` + U+0308 COMBINING DIAERESIS, and woman + ZWJ + girl: one cluster each.
        let mut t = TextInput::with_text("an\u{308}👩\u{200d}👧b");
        t.handle_key(&key(KeyCode::Left, plain));
        t.handle_key(&key(KeyCode::Left, plain));
        t.insert('|');
        assert_eq!(t.text(), "an\u{308}|👩\u{200d}👧b");
        t.handle_key(&key(KeyCode::Backspace, plain));
        t.handle_key(&key(KeyCode::Backspace, plain));
        assert_eq!(t.text(), "a👩\u{200d}👧b");
        t.handle_key(&key(KeyCode::Delete, plain));
        assert_eq!(t.text(), "ab");
        t.handle_key(&key(KeyCode::Right, plain));
        t.insert('x');
        assert_eq!(t.text(), "abx");
    }

    #[test]
    fn a_combining_mark_typed_after_a_letter_joins_it() {
        let mut t = TextInput::with_text("n");
        t.insert('\u{308}');
        t.handle_key(&key(KeyCode::Left, KeyModifiers::NONE));
        t.insert('a');
        assert_eq!(t.text(), "an\u{308}");
    }

    #[test]
    fn words_and_lines_step_over_whole_clusters() {
        let mut t = TextInput::with_text("ён\u{308} 👩\u{200d}👧\nx");
        t.handle_key(&key(KeyCode::Char('a'), KeyModifiers::CONTROL));
        assert!(t.move_line(true));
        t.handle_key(&key(KeyCode::Char('f'), KeyModifiers::ALT));
        t.insert('|');
        assert_eq!(t.text(), "ён\u{308}| 👩\u{200d}👧\nx");
        t.handle_key(&key(KeyCode::Char('w'), KeyModifiers::CONTROL));
        assert_eq!(t.text(), " 👩\u{200d}👧\nx");
    }
}
