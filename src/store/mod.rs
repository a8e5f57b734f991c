//! Sessions on disk, under `<data dir>/sessions/<name>/`:
//!
//! - `session.json`: metadata (id, title, times, model, preset, sampling) and the transcript,
//!   human-readable; the source of truth for the conversation;
//! - `after-M-C.state`: one saved state each, the state after the first M messages of the
//!   transcript (C: their checksum): the state after the whole transcript, so a chat resumes
//!   with nothing fed through the model, and the state before each kept turn. Each is written
//!   once; a turn adds one (the state before it is the last turn's state after);
//! - `state.bin`: a small index of those files with their lengths and checksums ([`state_file`]);
//! - `lock`: held by the process that has the session open.
//!
//! Every write goes to a temp file that is fsynced and renamed over the old one: the
//! transcript, then any new state file, then the index, and only then are the state files it
//! no longer names deleted. A crash leaves either the old save or states that no longer match
//! the transcript, which is detected and caught up (or rebuilt) from the transcript.

pub mod fs;
pub mod state_file;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::chat::{Preset, Transcript};
use crate::model::{Fingerprint, State};
use crate::sampler::SamplingParams;
use fs::FileError;
pub use state_file::{Checked, Index, StateError, StateFile};
use state_file::{StateRef, StoredState};

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

/// Temp files of a writer that died mid-save (see [`write_atomic`]), and state files no index
/// names (written by a save cut short before its index, or left by one cut short before its
/// clean-up). Only the lock holder writes in a session directory, so once the lock is taken
/// none of them is in use. State files stay when the index cannot be read: the next save
/// writes a new one and the clean-up after it goes by that.
fn remove_stale_files(dir: &Path) {
    let referenced = match read_index(&dir.join("state.bin")) {
        Ok(index) => Some(index),
        Err(StateError::Missing) => None,
        Err(_) => return remove_matching(dir, is_temp_file),
    };
    remove_matching(dir, |name| {
        is_temp_file(name)
            || (state_file::is_state_file_name(name)
                && !referenced
                    .as_ref()
                    .is_some_and(|index| index.refs().any(|r| r.file_name() == name)))
    });
}

fn is_temp_file(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".tmp")
}

/// Deletes the entries of `dir` whose names `doomed` picks. `remove_file` on a link removes
/// the link, never its target.
fn remove_matching(dir: &Path, doomed: impl Fn(&str) -> bool) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if doomed(&entry.file_name().to_string_lossy()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// `state.bin`, refused as any session file is when it is a link, not a regular file or too
/// large. Any size up to a state file's is opened so that an older format is named as such.
fn read_index(path: &Path) -> Result<Index, StateError> {
    let (mut file, len) = match fs::open_regular(path, state_file::MAX_FILE) {
        Ok(f) => f,
        Err(FileError::NotFound) => return Err(StateError::Missing),
        Err(e) => return Err(StateError::Unreadable(e.to_string())),
    };
    state_file::decode_index_from(&mut file, len)
}

/// One state file, checked against the index entry that names it: its length before anything
/// is read, the checksum in its header before the rest is hashed.
fn read_state(dir: &Path, at: &StateRef) -> Result<State, StateError> {
    let path = dir.join(at.file_name());
    let (mut file, len) = match fs::open_regular(&path, state_file::MAX_FILE) {
        Ok(f) => f,
        Err(FileError::NotFound) => return Err(StateError::Missing),
        Err(e) => return Err(StateError::Unreadable(e.to_string())),
    };
    if len != at.len {
        return Err(StateError::Corrupt(format!(
            "{len} bytes, but the index says {}",
            at.len
        )));
    }
    state_file::decode_state_expecting(&mut file, len, at.crc)
}

/// One state a save keeps: the state after the first `messages` messages of the transcript.
#[derive(Debug, Clone, Copy)]
pub struct StatePoint<'a> {
    pub messages: usize,
    /// Tokens fed to reach it.
    pub tokens: usize,
    pub state: &'a State,
}

/// What a save writes beside the transcript.
#[derive(Debug, Clone)]
pub struct StateSave<'a> {
    pub fingerprint: Fingerprint,
    /// The state after the whole transcript.
    pub state: StatePoint<'a>,
    /// The state before each kept turn, oldest first.
    pub checkpoints: Vec<StatePoint<'a>>,
    /// The state files the last load or save of this session verified ([`Saved::stored`],
    /// [`Checked::stored`]): a state one of them holds is not written again.
    pub stored: Option<&'a Index>,
}

/// What one save wrote, in bytes handed to the file system.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SaveStats {
    /// `session.json`.
    pub session_bytes: u64,
    /// `state.bin`.
    pub index_bytes: u64,
    /// New state files, and how many.
    pub state_bytes: u64,
    pub state_files: usize,
}

impl SaveStats {
    pub fn total(&self) -> u64 {
        self.session_bytes + self.index_bytes + self.state_bytes
    }
}

#[derive(Debug, Clone)]
pub struct Saved {
    pub stats: SaveStats,
    /// The index written, when a state was saved: what the next save can count on being there.
    pub stored: Option<Index>,
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

    /// Saves the transcript, then the states (when given) that result from it: only state
    /// files that `state.stored` does not already hold are written, then the index, then state
    /// files the index no longer names are deleted.
    pub fn save(
        &self,
        name: &str,
        session: &SessionFile,
        state: Option<&StateSave>,
    ) -> Result<Saved, StoreError> {
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
        let mut stats = SaveStats {
            session_bytes: json.len() as u64,
            ..SaveStats::default()
        };
        let Some(state) = state else {
            return Ok(Saved {
                stats,
                stored: None,
            });
        };
        // Another model's files hold other states under the same names.
        let stored = state
            .stored
            .filter(|index| index.fingerprint == state.fingerprint);
        let transcript = &session.transcript;
        let mut written: Vec<StateRef> = Vec::new();
        let mut put = |point: &StatePoint| -> Result<StateRef, StoreError> {
            if point.messages > transcript.messages.len() {
                return Err(StoreError::State {
                    path: dir.join("state.bin"),
                    source: StateError::Corrupt(format!(
                        "a state after message {} of a transcript of {}",
                        point.messages,
                        transcript.messages.len()
                    )),
                });
            }
            let (messages, tokens) = (point.messages as u64, point.tokens as u64);
            let checksum = transcript.prefix_checksum(point.messages);
            let known = written
                .iter()
                .find(|r| r.same_state(messages, checksum, tokens))
                .copied()
                .or_else(|| stored.and_then(|index| index.find(messages, checksum, tokens)));
            if let Some(known) = known.filter(|r| still_there(&dir, r)) {
                written.push(known);
                return Ok(known);
            }
            let path = dir.join(state_file::state_file_name(messages, checksum));
            let bytes =
                state_file::encode_state(point.state).map_err(|source| StoreError::State {
                    path: path.clone(),
                    source,
                })?;
            write_atomic(&path, &bytes)?;
            stats.state_bytes += bytes.len() as u64;
            stats.state_files += 1;
            let at = StateRef {
                messages,
                transcript_checksum: checksum,
                tokens,
                len: bytes.len() as u64,
                crc: state_file::crc_of(&bytes),
            };
            written.push(at);
            Ok(at)
        };
        let checkpoints = state
            .checkpoints
            .iter()
            .map(&mut put)
            .collect::<Result<Vec<_>, _>>()?;
        let index = Index {
            fingerprint: state.fingerprint,
            state: put(&state.state)?,
            checkpoints,
        };
        let path = dir.join("state.bin");
        let bytes = state_file::encode_index(&index).map_err(|source| StoreError::State {
            path: path.clone(),
            source,
        })?;
        write_atomic(&path, &bytes)?;
        stats.index_bytes = bytes.len() as u64;
        remove_matching(&dir, |name| {
            state_file::is_state_file_name(name) && !index.refs().any(|r| r.file_name() == name)
        });
        Ok(Saved {
            stats,
            stored: Some(index),
        })
    }

    /// The saved states, unchecked: the caller decides whether they fit its model and
    /// transcript ([`StateFile::check`]). The state after the transcript must be readable; a
    /// checkpoint whose file is missing or damaged is left out, with why in `dropped`.
    pub fn load_state(&self, name: &str) -> Result<StateFile, StoreError> {
        let dir = self.dir(name)?;
        let path = dir.join("state.bin");
        let index = read_index(&path).map_err(|source| StoreError::State {
            path: path.clone(),
            source,
        })?;
        let main = read_state(&dir, &index.state).map_err(|source| StoreError::State {
            path: dir.join(index.state.file_name()),
            source,
        })?;
        let mut budget = state_file::MAX_TOTAL.saturating_sub(index.state.len);
        let mut checkpoints = Vec::new();
        let mut dropped = Vec::new();
        // Newest first: within the budget, the turns most likely to be regenerated come first.
        for at in index.checkpoints.iter().rev() {
            let read = if at.len > budget {
                Err(StateError::Corrupt(format!(
                    "more state files than any session holds ({} bytes in all at most)",
                    state_file::MAX_TOTAL
                )))
            } else {
                read_state(&dir, at)
            };
            match read {
                Ok(state) => {
                    budget -= at.len;
                    checkpoints.push(StoredState { at: *at, state });
                }
                Err(e) => dropped.push(format!("{}: {e}", at.file_name())),
            }
        }
        checkpoints.reverse();
        Ok(StateFile {
            fingerprint: index.fingerprint,
            state: StoredState {
                at: index.state,
                state: main,
            },
            checkpoints,
            dropped,
        })
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
                remove_stale_files(&dir);
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

/// True when the file a previous save wrote is still in place with its length: a save reuses
/// it without reading it (the load that follows checks its contents).
fn still_there(dir: &Path, at: &StateRef) -> bool {
    std::fs::symlink_metadata(dir.join(at.file_name()))
        .is_ok_and(|m| m.file_type().is_file() && m.len() == at.len)
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
