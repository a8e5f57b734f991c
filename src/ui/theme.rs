//! Colours by meaning (user, bot, error, ...) rather than by name, so a theme file changes
//! the whole look and renders never pick a colour themselves.
//!
//! Shipped themes are embedded at build time; user themes in `<config dir>/themes/*.toml`
//! are partial overrides over a base (`extends`, the dark theme by default). Colours are
//! written as ratatui parses them (`#rrggbb`, `red`, `lightblue`, an index `0`..`255`,
//! `reset`), and are fitted to what the terminal can show: truecolor, 256 or 16 colours, or
//! none at all when `NO_COLOR` is set.

use std::path::Path;
use std::str::FromStr;

use ratatui::style::{Color, Modifier, Style};
use serde::Deserialize;

/// Shipped themes, embedded so the binary needs no files beside it.
pub const BUILTIN: &[(&str, &str)] = &[
    ("dark", include_str!("../../themes/dark.toml")),
    ("light", include_str!("../../themes/light.toml")),
    (
        "high-contrast",
        include_str!("../../themes/high-contrast.toml"),
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum ThemeError {
    #[error("theme {theme}: {message}")]
    Parse { theme: String, message: String },
    #[error("theme {theme}: `{role}` is not a colour: `{value}`")]
    Color {
        theme: String,
        role: &'static str,
        value: String,
    },
    #[error("theme {theme}: extends unknown theme `{base}`")]
    UnknownBase { theme: String, base: String },
}

macro_rules! roles {
    ($($role:ident: $doc:literal,)*) => {
        /// A complete theme: one colour per role.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub struct Theme {
            $(#[doc = $doc] pub $role: Color,)*
        }

        /// A theme file: any role may be left out and comes from the base.
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct ThemeFile {
            extends: Option<String>,
            $($role: Option<String>,)*
        }

        impl ThemeFile {
            fn apply(&self, name: &str, theme: &mut Theme) -> Result<(), ThemeError> {
                $(if let Some(value) = &self.$role {
                    theme.$role = Color::from_str(value).map_err(|_| ThemeError::Color {
                        theme: name.to_owned(),
                        role: stringify!($role),
                        value: value.clone(),
                    })?;
                })*
                Ok(())
            }

            /// Roles the file leaves to its base.
            #[cfg(test)]
            fn missing(&self) -> Vec<&'static str> {
                let mut missing = Vec::new();
                $(if self.$role.is_none() { missing.push(stringify!($role)); })*
                missing
            }
        }

        impl Theme {
            /// Every colour as `f` makes it.
            fn map(self, f: impl Fn(Color) -> Color) -> Self {
                Self { $($role: f(self.$role),)* }
            }
        }
    };
}

roles! {
    background: "Behind everything.",
    text: "Ordinary text.",
    muted: "Hints, timestamps, secondary text.",
    user: "The user's name and messages.",
    bot: "The bot's name and messages.",
    accent: "Titles, the focused border, highlights.",
    border: "Unfocused borders.",
    selection: "Background of the selected row.",
    selection_text: "Text of the selected row.",
    error: "Error notices.",
    success: "The saved marker and good news.",
    code: "Text of code blocks.",
    code_background: "Background of code blocks.",
    status_bar: "Background of the status bar.",
    status_text: "Text of the status bar.",
}

/// How many colours the terminal shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColorDepth {
    None,
    Ansi16,
    Ansi256,
    TrueColor,
}

impl ColorDepth {
    /// From `NO_COLOR`, `COLORTERM` and `TERM`, the way terminals advertise it.
    pub fn detect() -> Self {
        let var = |k| std::env::var(k).unwrap_or_default();
        if std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty()) {
            Self::None
        } else if matches!(var("COLORTERM").as_str(), "truecolor" | "24bit") {
            Self::TrueColor
        } else if var("TERM").contains("256") {
            Self::Ansi256
        } else {
            Self::Ansi16
        }
    }
}

/// The 16 ANSI colours with their usual xterm values, to find the nearest.
const ANSI16: [(Color, [u8; 3]); 16] = [
    (Color::Black, [0, 0, 0]),
    (Color::Red, [205, 0, 0]),
    (Color::Green, [0, 205, 0]),
    (Color::Yellow, [205, 205, 0]),
    (Color::Blue, [0, 0, 238]),
    (Color::Magenta, [205, 0, 205]),
    (Color::Cyan, [0, 205, 205]),
    (Color::Gray, [229, 229, 229]),
    (Color::DarkGray, [127, 127, 127]),
    (Color::LightRed, [255, 0, 0]),
    (Color::LightGreen, [0, 255, 0]),
    (Color::LightYellow, [255, 255, 0]),
    (Color::LightBlue, [92, 92, 255]),
    (Color::LightMagenta, [255, 0, 255]),
    (Color::LightCyan, [0, 255, 255]),
    (Color::White, [255, 255, 255]),
];

fn distance(a: [u8; 3], b: [u8; 3]) -> u32 {
    a.iter()
        .zip(b)
        .map(|(&x, y)| (i32::from(x) - i32::from(y)).pow(2) as u32)
        .sum()
}

/// The nearest colour of the xterm 256 palette (its 6x6x6 cube or its grey ramp).
fn to_256([r, g, b]: [u8; 3]) -> Color {
    let level = |v: u8| -> u8 {
        if v < 48 {
            0
        } else if v < 115 {
            1
        } else {
            (v - 35) / 40
        }
    };
    let value = |l: u8| if l == 0 { 0 } else { 55 + 40 * l };
    let (lr, lg, lb) = (level(r), level(g), level(b));
    let cube = [value(lr), value(lg), value(lb)];
    let grey_level = ((u32::from(r) + u32::from(g) + u32::from(b)) / 3).saturating_sub(3) / 10;
    let grey_level = grey_level.min(23) as u8;
    let grey = 8 + 10 * grey_level;
    if distance([grey; 3], [r, g, b]) < distance(cube, [r, g, b]) {
        Color::Indexed(232 + grey_level)
    } else {
        Color::Indexed(16 + 36 * lr + 6 * lg + lb)
    }
}

fn to_16(rgb: [u8; 3]) -> Color {
    ANSI16
        .iter()
        .min_by_key(|(_, c)| distance(*c, rgb))
        .map_or(Color::Reset, |(c, _)| *c)
}

impl Theme {
    /// Parses a shipped or user theme over `base`.
    pub fn parse(name: &str, text: &str, base: &Theme) -> Result<Self, ThemeError> {
        let mut theme = *base;
        parse_file(name, text)?.apply(name, &mut theme)?;
        Ok(theme)
    }

    /// The colours this terminal can show; without colour every role is the terminal's own,
    /// and styles fall back to bold and reverse video.
    pub fn fit(self, depth: ColorDepth) -> Self {
        self.map(|c| match (depth, c) {
            (ColorDepth::None, _) => Color::Reset,
            (ColorDepth::Ansi256, Color::Rgb(r, g, b)) => to_256([r, g, b]),
            (ColorDepth::Ansi16, Color::Rgb(r, g, b)) => to_16([r, g, b]),
            (ColorDepth::Ansi16, Color::Indexed(i)) if i >= 16 => to_16(indexed_rgb(i)),
            (_, c) => c,
        })
    }

    pub fn base(&self) -> Style {
        Style::new().fg(self.text).bg(self.background)
    }

    /// The selected row; reverse video where no colours tell it apart.
    pub fn selected(&self) -> Style {
        let style = Style::new().fg(self.selection_text).bg(self.selection);
        if self.selection == self.background {
            style.add_modifier(Modifier::REVERSED)
        } else {
            style
        }
    }
}

/// The RGB value of an xterm 256 palette index above 15.
fn indexed_rgb(i: u8) -> [u8; 3] {
    if i >= 232 {
        let v = 8 + 10 * (i - 232);
        [v; 3]
    } else {
        let i = i - 16;
        let value = |l: u8| if l == 0 { 0 } else { 55 + 40 * l };
        [value(i / 36), value((i / 6) % 6), value(i % 6)]
    }
}

/// The themes to choose from, by name, shipped ones first.
#[derive(Debug, Clone)]
pub struct Themes {
    pub list: Vec<(String, Theme)>,
}

impl Themes {
    /// The shipped themes plus the user's from `dir` (problems come back as messages, so
    /// one bad file does not stop the app).
    pub fn load(dir: Option<&Path>) -> (Self, Vec<String>) {
        let mut list: Vec<(String, Theme)> = Vec::new();
        let mut problems = Vec::new();
        for (name, text) in BUILTIN {
            match Theme::parse(name, text, &FALLBACK) {
                Ok(t) => list.push(((*name).to_owned(), t)),
                Err(e) => problems.push(e.to_string()),
            }
        }
        let mut files: Vec<_> = dir
            .and_then(|d| std::fs::read_dir(d).ok())
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        for path in files {
            let name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            match std::fs::read_to_string(&path) {
                Ok(text) => match user_theme(&name, &text, &list) {
                    Ok(t) => {
                        list.retain(|(n, _)| *n != name);
                        list.push((name, t));
                    }
                    Err(e) => problems.push(e.to_string()),
                },
                Err(e) => problems.push(format!("{}: {e}", path.display())),
            }
        }
        (Self { list }, problems)
    }

    pub fn get(&self, name: &str) -> Option<Theme> {
        self.list.iter().find(|(n, _)| n == name).map(|(_, t)| *t)
    }

    pub fn position(&self, name: &str) -> Option<usize> {
        self.list.iter().position(|(n, _)| n == name)
    }
}

fn parse_file(name: &str, text: &str) -> Result<ThemeFile, ThemeError> {
    toml::from_str(text).map_err(|e| ThemeError::Parse {
        theme: name.to_owned(),
        message: e.to_string().trim_end().to_owned(),
    })
}

fn user_theme(name: &str, text: &str, known: &[(String, Theme)]) -> Result<Theme, ThemeError> {
    let file = parse_file(name, text)?;
    let base_name = file.extends.as_deref().unwrap_or("dark");
    let mut theme = known
        .iter()
        .find(|(n, _)| n == base_name)
        .map(|(_, t)| *t)
        .ok_or_else(|| ThemeError::UnknownBase {
            theme: name.to_owned(),
            base: base_name.to_owned(),
        })?;
    file.apply(name, &mut theme)?;
    Ok(theme)
}

/// The base shipped themes are parsed over; they set every role, so it never shows.
pub const FALLBACK: Theme = Theme {
    background: Color::Reset,
    text: Color::Reset,
    muted: Color::DarkGray,
    user: Color::Cyan,
    bot: Color::Green,
    accent: Color::Yellow,
    border: Color::DarkGray,
    selection: Color::Blue,
    selection_text: Color::White,
    error: Color::Red,
    success: Color::Green,
    code: Color::Yellow,
    code_background: Color::Reset,
    status_bar: Color::DarkGray,
    status_text: Color::White,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_theme_parses_and_sets_every_role() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("themes");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let file: ThemeFile = toml::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"));
            assert_eq!(file.missing(), Vec::<&str>::new(), "{path:?}");
            let name = path.file_stem().unwrap().to_string_lossy();
            Theme::parse(&name, &text, &FALLBACK).unwrap();
            assert!(
                BUILTIN.iter().any(|(n, _)| *n == name),
                "{name} is not embedded"
            );
            seen += 1;
        }
        assert_eq!(seen, BUILTIN.len());
    }

    #[test]
    fn user_themes_override_part_of_a_base() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("mine.toml"),
            "extends = \"light\"\nerror = \"#ff00ff\"\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("bad.toml"), "error = \"not a colour\"\n").unwrap();
        let (themes, problems) = Themes::load(Some(dir.path()));
        let mine = themes.get("mine").unwrap();
        let light = themes.get("light").unwrap();
        assert_eq!(mine.error, Color::Rgb(255, 0, 255));
        assert_eq!(mine.text, light.text);
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].contains("bad") && problems[0].contains("error"),
            "{problems:?}"
        );
    }

    #[test]
    fn colours_fit_the_terminal() {
        let dark = Themes::load(None).0.get("dark").unwrap();
        let none = dark.fit(ColorDepth::None);
        assert_eq!(none.error, Color::Reset);
        assert!(none.selected().add_modifier.contains(Modifier::REVERSED));
        assert_eq!(to_256([255, 0, 0]), Color::Indexed(196));
        assert_eq!(to_256([128, 128, 128]), Color::Indexed(244));
        assert_eq!(to_16([250, 10, 10]), Color::LightRed);
        let sixteen = dark.fit(ColorDepth::Ansi16);
        let all = [
            sixteen.text,
            sixteen.user,
            sixteen.bot,
            sixteen.error,
            sixteen.selection,
        ];
        assert!(
            all.iter()
                .all(|c| !matches!(c, Color::Rgb(..) | Color::Indexed(16..)))
        );
    }
}
