//! A multi-line text field with Emacs editing keys, used for the message and for the small
//! text prompts of menus (model path, rename). Kept apart from the app so its edits can be
//! tested one key at a time.

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TextInput {
    /// The text as characters, so the cursor is a plain index.
    chars: Vec<char>,
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
        self.chars.iter().collect()
    }

    pub fn is_empty(&self) -> bool {
        self.chars.is_empty()
    }

    pub fn set(&mut self, text: &str) {
        self.chars = text.chars().collect();
        self.cursor = self.chars.len();
    }

    /// Empties the field and returns what it held.
    pub fn take(&mut self) -> String {
        let text = self.text();
        self.set("");
        text
    }

    pub fn insert_str(&mut self, text: &str) {
        for c in text.chars() {
            self.insert(c);
        }
    }

    pub fn insert(&mut self, c: char) {
        self.chars.insert(self.cursor, c);
        self.cursor += 1;
    }

    /// (line, column) of the cursor, in characters.
    pub fn cursor_line_col(&self) -> (usize, usize) {
        let before = &self.chars[..self.cursor];
        let line = before.iter().filter(|&&c| c == '\n').count();
        let col = before.iter().rev().take_while(|&&c| c != '\n').count();
        (line, col)
    }

    pub fn line_count(&self) -> usize {
        self.chars.iter().filter(|&&c| c == '\n').count() + 1
    }

    fn line_start(&self, at: usize) -> usize {
        self.chars[..at]
            .iter()
            .rposition(|&c| c == '\n')
            .map_or(0, |i| i + 1)
    }

    fn line_end(&self, at: usize) -> usize {
        self.chars[at..]
            .iter()
            .position(|&c| c == '\n')
            .map_or(self.chars.len(), |i| at + i)
    }

    fn word_left(&self) -> usize {
        let mut i = self.cursor;
        while i > 0 && !self.chars[i - 1].is_alphanumeric() {
            i -= 1;
        }
        while i > 0 && self.chars[i - 1].is_alphanumeric() {
            i -= 1;
        }
        i
    }

    fn word_right(&self) -> usize {
        let mut i = self.cursor;
        let n = self.chars.len();
        while i < n && !self.chars[i].is_alphanumeric() {
            i += 1;
        }
        while i < n && self.chars[i].is_alphanumeric() {
            i += 1;
        }
        i
    }

    fn kill(&mut self, from: usize, to: usize) {
        if from < to {
            self.killed = self.chars.drain(from..to).collect();
            self.cursor = from;
        }
    }

    /// Moves to the same column of the line above (`up`) or below; false at the edge, so
    /// the caller can use Up/Down for history instead.
    pub fn move_line(&mut self, up: bool) -> bool {
        let (line, col) = self.cursor_line_col();
        let start = self.line_start(self.cursor);
        let target_start = if up {
            if line == 0 {
                return false;
            }
            self.line_start(start - 1)
        } else {
            let end = self.line_end(self.cursor);
            if end == self.chars.len() {
                return false;
            }
            end + 1
        };
        let target_end = self.line_end(target_start);
        self.cursor = (target_start + col).min(target_end);
        true
    }

    /// Applies an editing key; false when the key is not an editing key.
    pub fn handle_key(&mut self, key: &KeyEvent) -> bool {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        let alt = key.modifiers.contains(KeyModifiers::ALT);
        match key.code {
            KeyCode::Char('a') if ctrl => self.cursor = self.line_start(self.cursor),
            KeyCode::Char('e') if ctrl => self.cursor = self.line_end(self.cursor),
            KeyCode::Char('b') if ctrl => self.cursor = self.cursor.saturating_sub(1),
            KeyCode::Char('f') if ctrl => self.cursor = (self.cursor + 1).min(self.chars.len()),
            KeyCode::Char('b') if alt => self.cursor = self.word_left(),
            KeyCode::Char('f') if alt => self.cursor = self.word_right(),
            KeyCode::Char('d') if ctrl => {
                if self.cursor < self.chars.len() {
                    self.chars.remove(self.cursor);
                }
            }
            KeyCode::Char('h') if ctrl => self.backspace(),
            KeyCode::Char('k') if ctrl => {
                let end = self.line_end(self.cursor);
                // At the end of a line, Ctrl+K joins the next one, as in Emacs.
                let end = if end == self.cursor {
                    (end + 1).min(self.chars.len())
                } else {
                    end
                };
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
            KeyCode::Backspace => self.backspace(),
            KeyCode::Delete => {
                if self.cursor < self.chars.len() {
                    self.chars.remove(self.cursor);
                }
            }
            KeyCode::Left if ctrl || alt => self.cursor = self.word_left(),
            KeyCode::Right if ctrl || alt => self.cursor = self.word_right(),
            KeyCode::Left => self.cursor = self.cursor.saturating_sub(1),
            KeyCode::Right => self.cursor = (self.cursor + 1).min(self.chars.len()),
            _ => return false,
        }
        true
    }

    fn backspace(&mut self) {
        if self.cursor > 0 {
            self.cursor -= 1;
            self.chars.remove(self.cursor);
        }
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
}
