//! The user's settings for the chat app: `config.toml` in the config dir (the platform's, or
//! `RWKV_CHAT_CONFIG_DIR`, or `--config-dir`). Every setting is optional; a file that does
//! not parse is refused with its path, line and column, since guessing would silently
//! ignore what the user wrote.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::ui::keymap::{Action, KeyList};

/// The environment variable that moves the config dir (tests, portable setups).
pub const CONFIG_DIR_ENV: &str = "RWKV_CHAT_CONFIG_DIR";
pub const CONFIG_FILE: &str = "config.toml";

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Loaded at start (a path or a hub id); without one the model picker opens.
    pub model: Option<String>,
    /// More models offered in the model picker.
    pub models: Vec<String>,
    /// The preset of new sessions.
    pub preset: Option<String>,
    /// Replies are cut after this many tokens (the backend's default when unset).
    #[serde(deserialize_with = "reply_tokens")]
    pub max_reply_tokens: Option<NonZeroUsize>,
    /// A shipped theme (`dark`, `light`, `high-contrast`) or one in `<config dir>/themes`.
    pub theme: Option<String>,
    /// Action name = key or list of keys, replacing that action's default keys.
    pub keys: BTreeMap<Action, KeyList>,
}

/// `max_reply_tokens`: a whole number above 0, said in those words (serde's own message for
/// a `NonZeroUsize` is "expected a nonzero usize").
fn reply_tokens<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<NonZeroUsize>, D::Error> {
    let n = i64::deserialize(deserializer)?;
    usize::try_from(n)
        .ok()
        .and_then(NonZeroUsize::new)
        .map(Some)
        .ok_or_else(|| {
            serde::de::Error::custom(format!(
                "max_reply_tokens must be a number of tokens above 0, not {n}"
            ))
        })
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path}: cannot change `theme` here without touching the rest of the file; edit it yourself"
    )]
    Edit { path: PathBuf },
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
}

/// The config dir: the flag, else the environment variable, else the platform's.
pub fn config_dir(flag: Option<&Path>) -> Option<PathBuf> {
    if let Some(dir) = flag {
        return Some(dir.to_owned());
    }
    if let Some(dir) = std::env::var_os(CONFIG_DIR_ENV).filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    directories::ProjectDirs::from("", "", "rwkv-chat").map(|d| d.config_dir().to_owned())
}

impl Config {
    /// Reads `config.toml` in `dir`; a missing file is the default config.
    pub fn load(dir: &Path) -> Result<Self, ConfigError> {
        let path = dir.join(CONFIG_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(ConfigError::Read { path, source }),
        }
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        let mut config: Self = toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start).min(text.len());
            let before = text.get(..offset).unwrap_or_default();
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            ConfigError::Parse {
                path: path.to_owned(),
                line,
                column,
                message: e.message().to_owned(),
            }
        })?;
        let home = std::env::var_os("HOME").map(PathBuf::from);
        if let Some(model) = &mut config.model {
            *model = expand_home(model, home.as_deref());
        }
        for model in &mut config.models {
            *model = expand_home(model, home.as_deref());
        }
        Ok(config)
    }
}

/// A model path as a shell would read it: `~`, `$HOME` or `${HOME}` at the start is the home
/// directory (a config file is not run through a shell, yet users write paths as if it were).
/// Hub ids and other paths are kept as written.
fn expand_home(spec: &str, home: Option<&Path>) -> String {
    let Some(home) = home.and_then(Path::to_str) else {
        return spec.to_owned();
    };
    for prefix in ["~", "$HOME", "${HOME}"] {
        if let Some(rest) = spec.strip_prefix(prefix)
            && (rest.is_empty() || rest.starts_with('/'))
        {
            return format!("{home}{rest}");
        }
    }
    spec.to_owned()
}

/// Makes `name` the theme in `dir`'s `config.toml`, keeping every other line (comments
/// included) as the user wrote it: the top-level `theme = ...` line is replaced, or one is
/// added before the first table. The result must parse to the same config with the new theme,
/// or nothing is written. The file is replaced atomically.
pub fn save_theme(dir: &Path, name: &str) -> Result<(), ConfigError> {
    let path = dir.join(CONFIG_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => return Err(ConfigError::Read { path, source }),
    };
    let before = Config::parse(&path, &text)?;
    let edited = with_theme(&text, name);
    let after =
        Config::parse(&path, &edited).map_err(|_| ConfigError::Edit { path: path.clone() })?;
    let want = Config {
        theme: Some(name.to_owned()),
        ..before
    };
    if after != want {
        return Err(ConfigError::Edit { path });
    }
    std::fs::create_dir_all(dir)
        .and_then(|()| {
            crate::store::write_atomic(&path, edited.as_bytes()).map_err(std::io::Error::other)
        })
        .map_err(|source| ConfigError::Write { path, source })
}

/// `text` with its top-level `theme` key set to `name`.
fn with_theme(text: &str, name: &str) -> String {
    let line = format!("theme = {}", toml::Value::String(name.to_owned()));
    let mut out: Vec<String> = Vec::new();
    let mut placed = false;
    let mut in_table = false;
    for l in text.lines() {
        let trimmed = l.trim_start();
        if trimmed.starts_with('[') && !in_table {
            in_table = true;
            if !placed {
                out.push(line.clone());
                placed = true;
            }
        }
        let is_theme = trimmed
            .strip_prefix("theme")
            .is_some_and(|rest| rest.trim_start().starts_with('='));
        if is_theme && !in_table && !placed {
            out.push(line.clone());
            placed = true;
            continue;
        }
        out.push(l.to_owned());
    }
    if !placed {
        out.push(line);
    }
    let mut edited = out.join("\n");
    edited.push('\n');
    edited
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saving_the_theme_keeps_everything_else() {
        let cases = [
            ("", "theme = \"light\"\n"),
            (
                "# mine\ntheme = \"dark\"  # was\nmodel = \"m\"\n",
                "# mine\ntheme = \"light\"\nmodel = \"m\"\n",
            ),
            (
                "model = \"m\"\n\n[keys]\nquit = \"f10\"\n",
                "model = \"m\"\n\ntheme = \"light\"\n[keys]\nquit = \"f10\"\n",
            ),
        ];
        for (text, want) in cases {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join(CONFIG_FILE), text).unwrap();
            save_theme(dir.path(), "light").unwrap();
            let got = std::fs::read_to_string(dir.path().join(CONFIG_FILE)).unwrap();
            assert_eq!(got, want);
            assert_eq!(
                Config::load(dir.path()).unwrap().theme.as_deref(),
                Some("light")
            );
        }
    }

    #[test]
    fn a_theme_name_is_quoted_and_a_missing_file_is_made() {
        let dir = tempfile::tempdir().unwrap();
        let config_dir = dir.path().join("new");
        save_theme(&config_dir, "my \"odd\" \\ theme").unwrap();
        let c = Config::load(&config_dir).unwrap();
        assert_eq!(c.theme.as_deref(), Some("my \"odd\" \\ theme"));
    }

    /// A config dir that is a file cannot hold `config.toml`: an error naming the file, and
    /// the file in the way is left as it was.
    #[test]
    fn a_config_dir_that_is_a_file_is_an_error_naming_config_toml() {
        let dir = tempfile::tempdir().unwrap();
        let blocked = dir.path().join("cfg");
        std::fs::write(&blocked, b"a file, not a directory").unwrap();
        let e = save_theme(&blocked, "light").unwrap_err().to_string();
        assert!(e.starts_with("cannot read "), "{e}");
        assert!(e.contains("cfg/config.toml"), "{e}");
        assert_eq!(std::fs::read(&blocked).unwrap(), b"a file, not a directory");
    }

    /// A config that does not parse, or one the line edit cannot change safely, is left as
    /// it is, with a message saying why.
    #[test]
    fn a_config_it_cannot_edit_is_left_alone() {
        for (text, needle) in [
            ("theme = \n", "config.toml:1:"),
            ("\"theme\" = \"dark\"\n", "edit it yourself"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(CONFIG_FILE);
            std::fs::write(&path, text).unwrap();
            let e = save_theme(dir.path(), "light").unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
            assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        }
    }

    #[test]
    fn a_full_config_parses() {
        let text = r#"
model = "~/models/raven"
models = ["a.pth"]
preset = "raven"
theme = "light"
max_reply_tokens = 2000

[keys]
regenerate = "f5"
quit = ["ctrl+q", "alt+x"]
"#;
        let c = Config::parse(Path::new("c.toml"), text).unwrap();
        let home = std::env::var("HOME").unwrap();
        assert_eq!(c.model, Some(format!("{home}/models/raven")));
        assert_eq!(c.models, ["a.pth"]);
        assert_eq!(c.max_reply_tokens.map(NonZeroUsize::get), Some(2000));
        assert_eq!(c.keys.len(), 2);
    }

    #[test]
    fn model_paths_start_at_home_as_in_a_shell() {
        let home = Some(Path::new("/home/u"));
        for (spec, want) in [
            ("~/m", "/home/u/m"),
            ("~", "/home/u"),
            ("$HOME/m", "/home/u/m"),
            ("${HOME}/a/b.pth", "/home/u/a/b.pth"),
            ("~other/m", "~other/m"),
            ("$HOMEx/m", "$HOMEx/m"),
            ("RWKV/rwkv-raven-1b5", "RWKV/rwkv-raven-1b5"),
            ("/abs/~/m", "/abs/~/m"),
        ] {
            assert_eq!(expand_home(spec, home), want, "{spec}");
        }
        assert_eq!(expand_home("~/m", None), "~/m");
    }

    #[test]
    fn errors_name_the_file_and_line() {
        for (text, line, needle) in [
            ("theme = \"dark\"\nmodle = \"x\"\n", 2, "modle"),
            ("[keys]\n\nregenerate = \"hyper+r\"\n", 3, "hyper"),
            ("[keys]\nfly = \"f5\"\n", 2, "fly"),
            ("theme = \n", 1, ""),
            (
                "max_reply_tokens = 0\n",
                1,
                "max_reply_tokens must be a number of tokens above 0, not 0",
            ),
            (
                "theme = \"dark\"\nmax_reply_tokens = -5\n",
                2,
                "above 0, not -5",
            ),
            ("max_reply_tokens = \"many\"\n", 1, "expected i64"),
        ] {
            let e = Config::parse(Path::new("/cfg/config.toml"), text).unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.starts_with(&format!("/cfg/config.toml:{line}:")),
                "{msg}"
            );
            assert!(msg.contains(needle), "{msg}");
        }
    }

    #[test]
    fn a_missing_file_is_the_default() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Config::load(dir.path()).unwrap(), Config::default());
    }
}
