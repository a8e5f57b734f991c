//! Keybindings as data: every bindable action is a serde-named enum variant with a
//! description and default keys, so the config file can rebind it and the help screen and
//! the command palette are built from the same table that dispatches keys.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use serde::{Deserialize, Serialize};

/// Where an action's keys are live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    /// Anywhere no menu is open.
    Global,
    /// Only while the sessions sidebar has the focus.
    Sidebar,
}

macro_rules! actions {
    ($($action:ident = $name:literal, $context:ident, [$($key:literal),*], $doc:literal;)*) => {
        /// Everything a key can be bound to; the names are the config file's.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub enum Action {
            $(#[serde(rename = $name)] #[doc = $doc] $action,)*
        }

        impl Action {
            pub const ALL: &[Action] = &[$(Action::$action),*];

            pub fn name(self) -> &'static str {
                match self { $(Action::$action => $name,)* }
            }

            pub fn description(self) -> &'static str {
                match self { $(Action::$action => $doc,)* }
            }

            pub fn context(self) -> Context {
                match self { $(Action::$action => Context::$context,)* }
            }

            fn default_keys(self) -> &'static [&'static str] {
                match self { $(Action::$action => &[$($key),*],)* }
            }
        }
    };
}

actions! {
    Quit = "quit", Global, ["ctrl+c", "ctrl+q"], "Save and quit";
    Send = "send", Global, ["enter"], "Send the message";
    Newline = "newline", Global, ["alt+enter", "ctrl+j"], "New line in the message";
    Stop = "stop", Global, ["esc"], "Stop the reply or model download";
    Regenerate = "regenerate", Global, ["ctrl+r"], "Regenerate the last reply";
    EditLast = "edit_last", Global, ["alt+e", "f8"], "Edit the last message";
    CopyLast = "copy_last", Global, ["alt+c", "f9"], "Copy the last reply (OSC 52)";
    Help = "help", Global, ["f1", "?"], "Help";
    Palette = "palette", Global, ["ctrl+p", "f2"], "Command palette";
    ModelPicker = "model_picker", Global, ["f3"], "Load a model";
    PresetPicker = "preset_picker", Global, ["f4"], "Choose the preset";
    Sampling = "sampling", Global, ["f5"], "Sampling settings";
    ThemePicker = "theme_picker", Global, ["f6"], "Choose the theme";
    ToggleSidebar = "toggle_sidebar", Global, ["f7"], "Show or hide the sessions";
    ToggleThinking = "toggle_thinking", Global, ["alt+t", "f10"], "Unfold or fold the model's reasoning";
    FocusSidebar = "focus_sidebar", Global, ["tab"], "Move between input and sessions";
    ScrollUp = "scroll_up", Global, ["pageup"], "Scroll up a page";
    ScrollDown = "scroll_down", Global, ["pagedown"], "Scroll down a page";
    ScrollTop = "scroll_top", Global, ["home"], "Scroll to the top";
    ScrollBottom = "scroll_bottom", Global, ["end"], "Scroll to the bottom (follow)";
    OpenSession = "open_session", Sidebar, ["enter"], "Open the selected session";
    NewSession = "new_session", Sidebar, ["n"], "New session";
    RenameSession = "rename_session", Sidebar, ["r"], "Rename the selected session";
    DeleteSession = "delete_session", Sidebar, ["d", "delete"], "Delete the selected session";
    ForkSession = "fork_session", Sidebar, ["f"], "Fork the open session at a turn";
}

/// One key with its modifiers, written like `ctrl+r`, `alt+enter`, `f1` or `?`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyChord {
    pub code: KeyCode,
    pub modifiers: KeyModifiers,
}

impl KeyChord {
    /// Always quits, whatever the config binds: raw mode turns it into a key, so without it
    /// a config could leave no way out of the app.
    pub const CTRL_C: Self = Self {
        code: KeyCode::Char('c'),
        modifiers: KeyModifiers::CONTROL,
    };

    /// Shift is part of a typed character (`?` is shift+/), so it is dropped for characters.
    pub fn from_event(key: &KeyEvent) -> Self {
        let mut modifiers =
            key.modifiers & (KeyModifiers::CONTROL | KeyModifiers::ALT | KeyModifiers::SHIFT);
        if matches!(key.code, KeyCode::Char(_)) {
            modifiers.remove(KeyModifiers::SHIFT);
        }
        Self {
            code: key.code,
            modifiers,
        }
    }

    /// A printable character without Ctrl or Alt: typing, unless nothing is being typed.
    pub fn is_plain_char(&self) -> bool {
        matches!(self.code, KeyCode::Char(_)) && self.modifiers.is_empty()
    }
}

const NAMED: &[(&str, KeyCode)] = &[
    ("enter", KeyCode::Enter),
    ("esc", KeyCode::Esc),
    ("tab", KeyCode::Tab),
    ("backtab", KeyCode::BackTab),
    ("backspace", KeyCode::Backspace),
    ("delete", KeyCode::Delete),
    ("insert", KeyCode::Insert),
    ("up", KeyCode::Up),
    ("down", KeyCode::Down),
    ("left", KeyCode::Left),
    ("right", KeyCode::Right),
    ("home", KeyCode::Home),
    ("end", KeyCode::End),
    ("pageup", KeyCode::PageUp),
    ("pagedown", KeyCode::PageDown),
    ("space", KeyCode::Char(' ')),
];

impl FromStr for KeyChord {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        let mut parts: Vec<&str> = lower.split('+').collect();
        // "ctrl++" names the plus key.
        if lower.ends_with("++") {
            parts.truncate(parts.len() - 2);
            parts.push("+");
        }
        let key = parts.pop().unwrap_or_default();
        let mut modifiers = KeyModifiers::NONE;
        for m in parts {
            modifiers |= match m {
                "ctrl" | "control" => KeyModifiers::CONTROL,
                "alt" | "meta" => KeyModifiers::ALT,
                "shift" => KeyModifiers::SHIFT,
                _ => return Err(format!("`{s}`: unknown modifier `{m}` (ctrl, alt, shift)")),
            };
        }
        let code = if let Some((_, code)) = NAMED.iter().find(|(n, _)| *n == key) {
            *code
        } else if let Some(n) = key.strip_prefix('f').and_then(|n| n.parse::<u8>().ok()) {
            KeyCode::F(n)
        } else {
            let mut chars = key.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) => KeyCode::Char(c),
                _ => return Err(format!("`{s}`: unknown key `{key}`")),
            }
        };
        if matches!(code, KeyCode::Char(_)) {
            modifiers.remove(KeyModifiers::SHIFT);
        }
        Ok(Self { code, modifiers })
    }
}

impl fmt::Display for KeyChord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (m, name) in [
            (KeyModifiers::CONTROL, "Ctrl+"),
            (KeyModifiers::ALT, "Alt+"),
            (KeyModifiers::SHIFT, "Shift+"),
        ] {
            if self.modifiers.contains(m) {
                f.write_str(name)?;
            }
        }
        match self.code {
            KeyCode::Char(' ') => f.write_str("Space"),
            KeyCode::Char(c) => write!(f, "{}", c.to_ascii_uppercase()),
            KeyCode::F(n) => write!(f, "F{n}"),
            KeyCode::Enter => f.write_str("Enter"),
            KeyCode::Esc => f.write_str("Esc"),
            KeyCode::Tab => f.write_str("Tab"),
            KeyCode::PageUp => f.write_str("PgUp"),
            KeyCode::PageDown => f.write_str("PgDn"),
            other => write!(f, "{other:?}"),
        }
    }
}

impl<'de> Deserialize<'de> for KeyChord {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One key or several, as the config file may write either (`"f5"` or `["f5", "ctrl+r"]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyList(pub Vec<KeyChord>);

/// Written by hand rather than `#[serde(untagged)]`, which would hide which key is wrong.
impl<'de> Deserialize<'de> for KeyList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = KeyList;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key like \"ctrl+r\" or a list of keys")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<KeyList, E> {
                v.parse().map(|k| KeyList(vec![k])).map_err(E::custom)
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<KeyList, A::Error> {
                let mut keys = Vec::new();
                while let Some(k) = seq.next_element()? {
                    keys.push(k);
                }
                Ok(KeyList(keys))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// A `[keys]` table the app cannot run with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeymapError {
    #[error(
        "[keys] {}: ctrl+c always saves and quits, so it cannot be bound to another action; \
         choose another key for {}",
        .0.name(),
        .0.name()
    )]
    CtrlCTaken(Action),
}

/// The keys of every action.
#[derive(Debug, Clone, PartialEq)]
pub struct Keymap {
    bindings: BTreeMap<Action, Vec<KeyChord>>,
}

impl Default for Keymap {
    fn default() -> Self {
        let bindings = Action::ALL
            .iter()
            .map(|&a| {
                let keys = a
                    .default_keys()
                    .iter()
                    .filter_map(|k| k.parse().ok())
                    .collect();
                (a, keys)
            })
            .collect();
        Self { bindings }
    }
}

impl Keymap {
    /// The defaults with each action named in `overrides` bound to its new keys only.
    /// Ctrl+C always quits, so a config binding it to another action is refused, with the
    /// reason, rather than leaving the user without a way out.
    pub fn with_overrides(overrides: &BTreeMap<Action, KeyList>) -> Result<Self, KeymapError> {
        let mut map = Self::default();
        for (action, keys) in overrides {
            if *action != Action::Quit && keys.0.contains(&KeyChord::CTRL_C) {
                return Err(KeymapError::CtrlCTaken(*action));
            }
            map.bindings.insert(*action, keys.0.clone());
        }
        // Ctrl+C quits even when the config binds quit to other keys only.
        let quit = map.bindings.entry(Action::Quit).or_default();
        if !quit.contains(&KeyChord::CTRL_C) {
            quit.insert(0, KeyChord::CTRL_C);
        }
        Ok(map)
    }

    pub fn keys(&self, action: Action) -> &[KeyChord] {
        self.bindings.get(&action).map_or(&[], Vec::as_slice)
    }

    /// The keys of `action` for display, like `Ctrl+C / Ctrl+Q`.
    pub fn describe(&self, action: Action) -> String {
        let keys: Vec<String> = self.keys(action).iter().map(ToString::to_string).collect();
        keys.join(" / ")
    }

    pub fn action(&self, chord: &KeyChord, context: Context) -> Option<Action> {
        self.bindings
            .iter()
            .find(|(a, keys)| a.context() == context && keys.contains(chord))
            .map(|(a, _)| *a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chords_parse_and_print() {
        let k: KeyChord = "Ctrl+R".parse().unwrap();
        assert_eq!(k.code, KeyCode::Char('r'));
        assert_eq!(k.modifiers, KeyModifiers::CONTROL);
        assert_eq!(k.to_string(), "Ctrl+R");
        assert_eq!(
            "alt+enter".parse::<KeyChord>().unwrap().to_string(),
            "Alt+Enter"
        );
        assert_eq!("f12".parse::<KeyChord>().unwrap().code, KeyCode::F(12));
        assert_eq!("?".parse::<KeyChord>().unwrap().code, KeyCode::Char('?'));
        assert!("hyper+x".parse::<KeyChord>().is_err());
        assert!("ctrl+nope".parse::<KeyChord>().is_err());
    }

    #[test]
    fn ctrl_c_quits_whatever_quit_is_bound_to() {
        for keys in [vec![], vec!["f20".parse().unwrap()]] {
            let overrides = BTreeMap::from([(Action::Quit, KeyList(keys.clone()))]);
            let map = Keymap::with_overrides(&overrides).unwrap();
            assert!(
                map.keys(Action::Quit).contains(&KeyChord::CTRL_C),
                "{keys:?}"
            );
            assert!(keys.iter().all(|k| map.keys(Action::Quit).contains(k)));
            assert!(map.describe(Action::Quit).starts_with("Ctrl+C"));
        }
    }

    #[test]
    fn a_config_giving_ctrl_c_to_another_action_is_refused() {
        let overrides = BTreeMap::from([
            (Action::Quit, KeyList(vec!["f20".parse().unwrap()])),
            (
                Action::Regenerate,
                KeyList(vec!["ctrl+c".parse().unwrap(), "ctrl+q".parse().unwrap()]),
            ),
        ]);
        let err = Keymap::with_overrides(&overrides).unwrap_err();
        assert_eq!(
            err.to_string(),
            "[keys] regenerate: ctrl+c always saves and quits, so it cannot be bound to another \
             action; choose another key for regenerate"
        );
    }

    #[test]
    fn every_default_key_parses() {
        for a in Action::ALL {
            assert_eq!(
                Keymap::default().keys(*a).len(),
                a.default_keys().len(),
                "{a:?}"
            );
        }
    }
}
