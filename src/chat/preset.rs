//! Presets: a prompt format, its stop rules and default sampling, as data. The built-ins are
//! TOML files embedded in the binary; users add their own in `<config dir>/presets/*.toml`,
//! and one with a built-in's name replaces it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::model::Generation;
use crate::sampler::SamplingParams;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Fed once when a session starts (a system text, example turns).
    #[serde(default)]
    pub intro: String,
    #[serde(default)]
    pub user_prefix: String,
    #[serde(default)]
    pub user_suffix: String,
    /// Ends the user's part; the model's reply follows it directly.
    #[serde(default)]
    pub bot_prefix: String,
    /// Fed after a reply, closing the turn.
    #[serde(default)]
    pub bot_suffix: String,
    /// Replace blank lines inside a user message by single newlines (for formats where a
    /// blank line ends a turn).
    #[serde(default)]
    pub collapse_blank_lines: bool,
    /// A reply ends where one of these appears; the stop text is never shown.
    #[serde(default)]
    pub stop: Vec<String>,
    /// Token ids never sampled (Raven chat bans `<|endoftext|>`, id 0).
    #[serde(default)]
    pub banned_tokens: Vec<u32>,
    /// The reply starts inside a `<think` tag (`bot_prefix` ends with it): the app shows the
    /// reasoning up to `</think>` folded, apart from the answer (see [`super::thinking`]).
    #[serde(default)]
    pub think: bool,
    #[serde(default)]
    pub sampling: SamplingParams,
}

#[derive(Debug, thiserror::Error)]
pub enum PresetError {
    #[error("{}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("{}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no preset named `{name}` (available: {available})")]
    Unknown { name: String, available: String },
}

/// What [`Preset::load_all`] found: the usable presets, and why each skipped file was skipped.
#[derive(Debug)]
pub struct Loaded {
    pub presets: Vec<Preset>,
    pub problems: Vec<PresetError>,
}

const BUILT_IN: [(&str, &str); 6] = [
    ("raven.toml", include_str!("presets/raven.toml")),
    ("world.toml", include_str!("presets/world.toml")),
    ("g1-think.toml", include_str!("presets/g1-think.toml")),
    (
        "user-assistant.toml",
        include_str!("presets/user-assistant.toml"),
    ),
    ("instruction.toml", include_str!("presets/instruction.toml")),
    ("completion.toml", include_str!("presets/completion.toml")),
];

/// The preset a new session of a model of `generation` starts with when none is chosen: the
/// chat format the model was trained on.
pub fn default_for(generation: Generation) -> &'static str {
    if generation.is_world() {
        "world"
    } else {
        "raven"
    }
}

impl Preset {
    /// Parses one preset file's text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, PresetError> {
        let invalid = |reason: String| PresetError::Invalid {
            path: origin.to_owned(),
            reason,
        };
        let preset: Preset =
            toml::from_str(text).map_err(|e| invalid(e.to_string().trim_end().to_owned()))?;
        if preset.name.trim().is_empty() {
            return Err(invalid("`name` is empty".into()));
        }
        if preset.think && !super::thinking::opens(&preset.bot_prefix) {
            return Err(invalid(
                "`think = true` needs a `bot_prefix` that ends with `<think`".into(),
            ));
        }
        if preset.stop.iter().any(String::is_empty) {
            return Err(invalid("a stop sequence is empty".into()));
        }
        preset.sampling.validate().map_err(invalid)?;
        Ok(preset)
    }

    pub fn built_in() -> Vec<Preset> {
        BUILT_IN
            .iter()
            .map(|(file, text)| {
                Self::parse(text, Path::new(file))
                    .unwrap_or_else(|e| unreachable!("built-in preset (checked by a test): {e}"))
            })
            .collect()
    }

    /// The built-ins, then the user's presets from `dir` (missing dir: none), user files
    /// replacing built-ins of the same name. A file that cannot be read or parsed is skipped
    /// and comes back as a problem: one typo must not take the other presets with it.
    pub fn load_all(dir: Option<&Path>) -> Loaded {
        let mut loaded = Loaded {
            presets: Self::built_in(),
            problems: Vec::new(),
        };
        let Some(dir) = dir.filter(|d| d.is_dir()) else {
            return loaded;
        };
        let io = |path: &Path, source| PresetError::Io {
            path: path.to_owned(),
            source,
        };
        let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                .collect(),
            Err(e) => {
                loaded.problems.push(io(dir, e));
                return loaded;
            }
        };
        files.sort();
        for path in files {
            let parsed = std::fs::read_to_string(&path)
                .map_err(|e| io(&path, e))
                .and_then(|text| Self::parse(&text, &path));
            match parsed {
                Ok(preset) => {
                    loaded.presets.retain(|p| p.name != preset.name);
                    loaded.presets.push(preset);
                }
                Err(e) => loaded.problems.push(e),
            }
        }
        loaded
    }

    pub fn find(presets: &[Preset], name: &str) -> Result<Preset, PresetError> {
        presets
            .iter()
            .find(|p| p.name == name)
            .cloned()
            .ok_or_else(|| PresetError::Unknown {
                name: name.to_owned(),
                available: presets
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// The message as the model will see it: trimmed, CRLF made LF, and blank lines collapsed
    /// where the format needs it.
    pub fn normalize(&self, message: &str) -> String {
        let mut text = message.trim().replace("\r\n", "\n");
        if self.collapse_blank_lines {
            while text.contains("\n\n") {
                text = text.replace("\n\n", "\n");
            }
        }
        text
    }

    /// The exact text fed for a user turn, up to where the reply starts.
    pub fn user_turn(&self, normalized: &str) -> String {
        format!(
            "{}{}{}{}",
            self.user_prefix, normalized, self.user_suffix, self.bot_prefix
        )
    }

    /// The exact text fed for a reply, closing the turn.
    pub fn bot_turn(&self, reply: &str) -> String {
        format!("{reply}{}", self.bot_suffix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thinking_preset_must_open_the_think_tag() {
        let e = Preset::parse(
            "name = \"t\"\nbot_prefix = \"Assistant:\"\nthink = true\n",
            Path::new("t.toml"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("ends with `<think`"), "{e}");
        let g1 = Preset::find(&Preset::built_in(), "g1-think").unwrap();
        assert!(g1.think && g1.user_turn("2+2?").ends_with("\n\nAssistant: <think"));
    }

    #[test]
    fn built_ins_parse_and_are_distinct() {
        let presets = Preset::built_in();
        let names: Vec<&str> = presets.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "raven",
                "world",
                "g1-think",
                "user-assistant",
                "instruction",
                "completion"
            ]
        );
        for generation in [
            Generation::Rwkv4,
            Generation::V5,
            Generation::V6,
            Generation::V7,
        ] {
            assert!(Preset::find(&presets, default_for(generation)).is_ok());
        }
    }

    #[test]
    fn raven_formats_like_chatrwkv() {
        let raven = Preset::find(&Preset::built_in(), "raven").unwrap();
        let msg = raven.normalize("  Hi there\r\n\r\n\n\nHow are you?  ");
        assert_eq!(msg, "Hi there\nHow are you?");
        assert_eq!(
            raven.user_turn(&msg),
            "Bob: Hi there\nHow are you?\n\nAlice:"
        );
        assert_eq!(raven.bot_turn(" Fine."), " Fine.\n\n");
        assert_eq!(raven.banned_tokens, [0]);
    }

    #[test]
    fn instruction_keeps_blank_lines() {
        let p = Preset::find(&Preset::built_in(), "instruction").unwrap();
        assert_eq!(
            p.user_turn(&p.normalize("a\n\nb")),
            "### Instruction: a\n\nb\n### Response:"
        );
    }

    #[test]
    fn user_presets_override_and_bad_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("raven.toml"),
            "name = \"raven\"\nuser_prefix = \"Q: \"\nbot_prefix = \"A:\"\n",
        )
        .unwrap();
        let loaded = Preset::load_all(Some(dir.path()));
        assert!(loaded.problems.is_empty(), "{:?}", loaded.problems);
        let presets = loaded.presets;
        let raven = Preset::find(&presets, "raven").unwrap();
        assert_eq!(raven.user_prefix, "Q: ");
        assert_eq!(presets.len(), Preset::built_in().len());

        // Bad files are named and skipped; the built-ins and the good user file stay.
        std::fs::write(dir.path().join("zz.toml"), "name = \"x\"\nstop = 3\n").unwrap();
        std::fs::write(
            dir.path().join("zy.toml"),
            "name = \"y\"\n[sampling]\ntop_p = 2.0\n",
        )
        .unwrap();
        let loaded = Preset::load_all(Some(dir.path()));
        let names: Vec<&str> = loaded.presets.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "world",
                "g1-think",
                "user-assistant",
                "instruction",
                "completion",
                "raven"
            ]
        );
        let problems: Vec<String> = loaded.problems.iter().map(ToString::to_string).collect();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("zy.toml") && problems[0].contains("top_p"));
        assert!(problems[1].contains("zz.toml") && problems[1].contains("stop"));

        let err = Preset::find(&presets, "nope").unwrap_err().to_string();
        assert!(err.contains("nope") && err.contains("raven"), "{err}");
    }
}
