//! Sessions on disk, under `<data dir>/sessions/<name>/`:
//!
//! - `session.json`: metadata (id, title, times, model, preset, sampling) and the transcript,
//!   human-readable; the source of truth for the conversation;
//! - `state.bin`: the state after that transcript ([`state_file`]), so a chat resumes with
//!   nothing fed through the model;
//! - `lock`: held by the process that has the session open.
//!
//! Every write goes to a temp file that is fsynced and renamed over the old one, the
//! transcript before the state: a crash leaves either the old save or a state that no longer
//! matches its transcript, which is detected and rebuilt from the transcript.

pub mod fs;
pub mod state_file;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::chat::{Preset, Transcript};
use crate::model::Fingerprint;
use crate::sampler::SamplingParams;
use fs::FileError;
pub use state_file::{StateError, StateFile};

pub const SESSION_FORMAT: u32 = 1;
/// The largest `session.json` read: a transcript of a million tokens is a few MB.
pub const MAX_SESSION_FILE: u64 = 64 << 20;

/// `session.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionFile {
    pub format: u32,
    pub id: String,
    pub title: String,
    /// Unix seconds.
    pub created: u64,
    pub updated: u64,
    /// The model as the user named it (a path or a hub id).
    pub model: Option<String>,
    pub fingerprint: Option<Fingerprint>,
    pub preset: Preset,
    pub sampling: SamplingParams,
    pub transcript: Transcript,
}

impl SessionFile {
    pub fn new(preset: Preset, sampling: SamplingParams, transcript: Transcript) -> Self {
        let now = unix_now();
        Self {
            format: SESSION_FORMAT,
            id: format!("{now:x}-{:08x}", rand::random::<u32>()),
            title: String::new(),
            created: now,
            updated: now,
            model: None,
            fingerprint: None,
            preset,
            sampling,
            transcript,
        }
    }

    /// The title, or the start of the first message when none was set ([`UNTITLED`] when
    /// there is none).
    pub fn display_title(&self) -> String {
        if !self.title.is_empty() {
            return self.title.clone();
        }
        let first = self
            .transcript
            .messages
            .first()
            .map_or(UNTITLED, |m| m.text.as_str());
        let line = first.lines().next().unwrap_or_default();
        let mut title: String = line.chars().take(48).collect();
        if title.len() < line.len() {
            title.push('…');
        }
        title
    }
}

/// The title shown for a session with no title and no message yet.
pub const UNTITLED: &str = "(empty)";

/// One line of `sessions list`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionSummary {
    pub name: String,
    pub title: String,
    pub model: Option<String>,
    pub preset: String,
    pub turns: usize,
    pub updated: u64,
    /// Why the session could not be read, if it could not.
    pub problem: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "`{0}` is not a valid session name: use 1 to 64 letters, digits, '-', '_' or '.', not starting with '.'"
    )]
    BadName(String),
    #[error("no session named `{0}`")]
    NotFound(String),
    #[error("a session named `{0}` already exists")]
    Exists(String),
    #[error("session `{0}` is open in another rwkv-chat; close it there first")]
    Locked(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: unreadable session file: {reason}", path.display())]
    BadSession { path: PathBuf, reason: String },
    #[error("{}: {source}", path.display())]
    State {
        path: PathBuf,
        #[source]
        source: StateError,
    },
    #[error("{}: {problem}", path.display())]
    File { path: PathBuf, problem: FileError },
}

impl StoreError {
    fn file(path: &Path, problem: FileError) -> Self {
        Self::File {
            path: path.to_owned(),
            problem,
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Session names become directory names, so only a safe alphabet is allowed: no separators,
/// no `..`, nothing hidden.
pub fn validate_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadName(name.to_owned()))
    }
}

/// Writes `bytes` to `path` so that a reader sees the old file or the new one, never a mix:
/// temp file in the same directory, fsync, rename, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map_or_else(Default::default, |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let result = (|| {
        // A leftover of a writer with this pid (or a planted link) is removed, not followed.
        let _ = std::fs::remove_file(&tmp);
        let mut file = fs::no_follow(File::options().write(true).create_new(true)).open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io(path))
}

/// Temp files of a writer that died mid-save (see [`write_atomic`]). Only the lock holder
/// writes in a session directory, so once the lock is taken none of them is in use.
fn remove_stale_temp_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.ends_with(".tmp") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Held while a session is open; dropping it releases the lock.
#[derive(Debug)]
pub struct SessionLock {
    _file: File,
}

pub struct Store {
    sessions: PathBuf,
}

impl Store {
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let sessions = data_dir.join("sessions");
        std::fs::create_dir_all(&sessions).map_err(io(&sessions))?;
        Ok(Self { sessions })
    }

    /// The session's directory, refused when it is a symbolic link: every read and write of
    /// a session goes through here, so none of them can be sent outside the data dir.
    pub fn dir(&self, name: &str) -> Result<PathBuf, StoreError> {
        validate_name(name)?;
        let dir = self.sessions.join(name);
        fs::refuse_symlink(&dir).map_err(|e| StoreError::file(&dir, e))?;
        Ok(dir)
    }

    pub fn exists(&self, name: &str) -> Result<bool, StoreError> {
        let path = self.dir(name)?.join("session.json");
        Ok(std::fs::symlink_metadata(path).is_ok())
    }

    /// A fresh name from the current time: `chat-YYYYMMDD-HHMMSS`.
    pub fn new_name(&self) -> String {
        let digits: String = timestamp(unix_now())
            .chars()
            .filter(char::is_ascii_digit)
            .collect();
        let base = format!("chat-{}-{}", &digits[..8], &digits[8..]);
        (0..)
            .map(|n| {
                if n == 0 {
                    base.clone()
                } else {
                    format!("{base}-{n}")
                }
            })
            .find(|name| !self.sessions.join(name).exists())
            .unwrap_or(base)
    }

    pub fn list(&self) -> Result<Vec<SessionSummary>, StoreError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.sessions).map_err(io(&self.sessions))? {
            let Ok(entry) = entry else { continue };
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_link = entry.file_type().is_ok_and(|t| t.is_symlink());
            if validate_name(&name).is_err() || !(is_link || entry.path().is_dir()) {
                continue;
            }
            out.push(match self.load(&name) {
                // A session being created (its lock taken, nothing saved yet) is not listed
                // until it has a transcript.
                Err(StoreError::NotFound(_)) => continue,
                Ok(s) => SessionSummary {
                    title: s.display_title(),
                    model: s.model.clone(),
                    preset: s.preset.name.clone(),
                    turns: s.transcript.turns(),
                    updated: s.updated,
                    problem: None,
                    name,
                },
                Err(e) => SessionSummary {
                    name,
                    title: String::new(),
                    model: None,
                    preset: String::new(),
                    turns: 0,
                    updated: 0,
                    problem: Some(e.to_string()),
                },
            });
        }
        out.sort_by(|a, b| b.updated.cmp(&a.updated).then(a.name.cmp(&b.name)));
        Ok(out)
    }

    pub fn load(&self, name: &str) -> Result<SessionFile, StoreError> {
        let path = self.dir(name)?.join("session.json");
        let bytes = match fs::read_regular(&path, MAX_SESSION_FILE) {
            Ok(b) => b,
            Err(FileError::NotFound) => return Err(StoreError::NotFound(name.to_owned())),
            Err(e) => return Err(StoreError::file(&path, e)),
        };
        let mut file: SessionFile =
            serde_json::from_slice(&bytes).map_err(|e| StoreError::BadSession {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        if file.format != SESSION_FORMAT {
            return Err(StoreError::BadSession {
                path,
                reason: format!(
                    "format {} (this rwkv-chat reads {SESSION_FORMAT})",
                    file.format
                ),
            });
        }
        // One bad setting must not make the whole session unreadable: it falls back to the
        // preset's (or the default) and says so; the next save writes the fallback.
        if let Err(reason) = file.sampling.validate() {
            let fallback = if file.preset.sampling.validate().is_ok() {
                file.preset.sampling.clone()
            } else {
                SamplingParams::default()
            };
            tracing::warn!(
                "{}: {reason}; using the preset's sampling settings",
                path.display()
            );
            file.sampling = fallback;
        }
        Ok(file)
    }

    /// Saves the transcript, then the state (when given) that results from it.
    pub fn save(
        &self,
        name: &str,
        session: &SessionFile,
        state: Option<&StateFile>,
    ) -> Result<(), StoreError> {
        let dir = self.dir(name)?;
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let json = serde_json::to_vec_pretty(session).map_err(|e| StoreError::BadSession {
            path: dir.join("session.json"),
            reason: e.to_string(),
        })?;
        // What cannot be read back is never written (serde_json writes an infinite number as
        // `null`, which no reader accepts).
        if let Err(e) = serde_json::from_slice::<SessionFile>(&json) {
            return Err(StoreError::BadSession {
                path: dir.join("session.json"),
                reason: format!("refusing to save what could not be read back: {e}"),
            });
        }
        write_atomic(&dir.join("session.json"), &json)?;
        if let Some(state) = state {
            let path = dir.join("state.bin");
            let bytes = state_file::encode(state).map_err(|source| StoreError::State {
                path: path.clone(),
                source,
            })?;
            write_atomic(&path, &bytes)?;
        }
        Ok(())
    }

    /// The saved state, unchecked: the caller decides whether it fits its model.
    pub fn load_state(&self, name: &str) -> Result<StateFile, StoreError> {
        let path = self.dir(name)?.join("state.bin");
        let state_err = |source| StoreError::State {
            path: path.clone(),
            source,
        };
        let (mut file, len) = match fs::open_regular(&path, state_file::MAX_FILE) {
            Ok(f) => f,
            Err(FileError::NotFound) => return Err(state_err(StateError::Missing)),
            Err(e) => return Err(state_err(StateError::Unreadable(e.to_string()))),
        };
        state_file::decode_from(&mut file, len).map_err(state_err)
    }

    /// Takes the session's lock, refused while another process holds it.
    pub fn lock(&self, name: &str) -> Result<SessionLock, StoreError> {
        let dir = self.dir(name)?;
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let path = dir.join("lock");
        // A planted (even dangling) link would have the lock file created at its target.
        let file = fs::no_follow(File::options().create(true).truncate(false).write(true))
            .open(&path)
            .map_err(|e| StoreError::file(&path, e.into()))?;
        match file.try_lock() {
            Ok(()) => {
                remove_stale_temp_files(&dir);
                Ok(SessionLock { _file: file })
            }
            Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked(name.to_owned())),
            Err(std::fs::TryLockError::Error(e)) => Err(io(&path)(e)),
        }
    }

    pub fn rename(&self, old: &str, new: &str) -> Result<(), StoreError> {
        let (from, to) = (self.dir(old)?, self.dir(new)?);
        if !self.exists(old)? {
            return Err(StoreError::NotFound(old.to_owned()));
        }
        if to.exists() {
            return Err(StoreError::Exists(new.to_owned()));
        }
        let _lock = self.lock(old)?;
        std::fs::rename(&from, &to).map_err(io(&from))
    }

    pub fn delete(&self, name: &str) -> Result<(), StoreError> {
        let dir = self.dir(name)?;
        if !dir.is_dir() {
            return Err(StoreError::NotFound(name.to_owned()));
        }
        let _lock = self.lock(name)?;
        std::fs::remove_dir_all(&dir).map_err(io(&dir))
    }
}

/// `YYYY-MM-DD HH:MM:SS` in UTC, without a date crate.
pub fn timestamp(unix: u64) -> String {
    let (days, secs) = ((unix / 86400) as i64, unix % 86400);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z.rem_euclid(146097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_escape_the_sessions_dir() {
        for bad in [
            "",
            "..",
            "../x",
            "a/b",
            ".hidden",
            "a\\b",
            "x\0",
            &"a".repeat(65),
            "naïve",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        for good in ["chat-20261128-101500", "my_chat.v2", "A"] {
            assert!(validate_name(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn timestamps_are_utc_dates() {
        assert_eq!(timestamp(0), "1970-01-01 00:00:00");
        assert_eq!(timestamp(1_795_867_200), "2026-11-28 12:00:00");
        assert_eq!(timestamp(951_782_400), "2000-02-29 00:00:00");
    }
}
