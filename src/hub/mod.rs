//! Models by name: the RWKV-4 catalogue, hub repo ids wherever a model path is accepted, and
//! downloads into the standard Hugging Face cache shared with Python tools.
//!
//! `--model` takes a path or a repo id (`RWKV/rwkv-raven-1b5`, `RWKV/rwkv-raven-1b5@refs/pr/3`,
//! `BlinkDL/rwkv-4-raven/RWKV-4-Raven-1B5-v12-....pth`). A path that exists always wins. A repo
//! id already complete in the cache loads without touching the network, so a chat starts
//! offline; otherwise it is downloaded first (`models download` checks the hub for a newer
//! commit). The environment is read as `huggingface_hub` reads it: `HF_ENDPOINT`, `HF_TOKEN`
//! (or `HF_TOKEN_PATH`, or `$HF_HOME/token`), `HF_HOME`/`HF_HUB_CACHE`, `HF_HUB_OFFLINE` and
//! `HF_HUB_DOWNLOAD_TIMEOUT`.

pub mod cache;
pub mod catalogue;
mod download;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use download::{Progress, ProgressSink};

use crate::model::ModelFiles;
use crate::model::checkpoint::Format;
use crate::text::sanitize;

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// Seconds without a byte before a transfer counts as stalled, unless `HF_HUB_DOWNLOAD_TIMEOUT`
/// says otherwise.
const DEFAULT_TIMEOUT_SECS: f64 = 30.0;

/// Why a model could not be had from the hub; callers branch on offline and not-found.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(
        "{spec} is not in the local model cache ({}) and HF_HUB_OFFLINE is set, so it cannot be \
         downloaded; models available offline: {}",
        cache.display(),
        list_or_none(available)
    )]
    Offline {
        spec: String,
        cache: PathBuf,
        available: Vec<String>,
    },

    #[error(
        "{repo}: no such file or directory, and no model repository of that name on {endpoint}"
    )]
    RepoNotFound { repo: String, endpoint: String },

    #[error("{repo}: revision `{revision}` not found on {endpoint}")]
    RevisionNotFound {
        repo: String,
        revision: String,
        endpoint: String,
    },

    #[error("{repo}: file `{file}` not found in the repository{}", on(endpoint))]
    FileNotFound {
        repo: String,
        file: String,
        endpoint: String,
    },

    #[error(
        "{repo}: the repository has no model weights (no safetensors, pytorch_model.bin or .pth \
         file)"
    )]
    NoWeights { repo: String },

    #[error(
        "{repo} holds several models; name one file, for example `{repo}/{}` (files: {})",
        files.first().map_or("", String::as_str),
        files.join(", ")
    )]
    ChooseFile { repo: String, files: Vec<String> },

    #[error(
        "{repo}: its only model file, `{file}`, is in a subfolder, which is not loaded unless \
         named; name it: `{repo}/{file}`"
    )]
    NestedFile { repo: String, file: String },

    #[error(
        "{endpoint} refused access to {repo} (HTTP {status}): the repository is gated or private; \
         set HF_TOKEN to a token that may read it"
    )]
    Auth {
        repo: String,
        endpoint: String,
        status: u16,
    },

    #[error("{url}: the hub answered HTTP {status}; try again later")]
    Server { url: String, status: u16 },

    #[error(
        "{url}: the server stalled (no data for {secs} s); run the command again to resume, or \
         raise HF_HUB_DOWNLOAD_TIMEOUT"
    )]
    Stalled { url: String, secs: f64 },

    #[error(
        "cannot reach {endpoint} ({reason}); check the network, or set HF_HUB_OFFLINE=1 to use \
         downloaded models only"
    )]
    Unreachable { endpoint: String, reason: String },

    #[error(
        "{url}: the transfer broke off after {done} of {total} bytes ({reason}); run the command \
         again to resume"
    )]
    Interrupted {
        url: String,
        done: u64,
        total: u64,
        reason: String,
    },

    #[error(
        "{file} from {repo} is corrupt: its {kind} is {actual} but the hub lists {expected}; \
         the download was deleted, run the command again to fetch it anew"
    )]
    Corrupt {
        repo: String,
        file: String,
        /// `sha256` (an LFS file) or `git blob id` (a file kept in git).
        kind: &'static str,
        expected: String,
        actual: String,
    },

    #[error(
        "{file} from {repo} is corrupt: the server sent more than the {expected} bytes the hub \
         lists; the download was deleted"
    )]
    TooLarge {
        repo: String,
        file: String,
        expected: u64,
    },

    #[error("download of {repo} cancelled after {done} of {total} bytes; it resumes next time")]
    Cancelled { repo: String, done: u64, total: u64 },

    #[error("HF_ENDPOINT `{endpoint}` is not a usable URL ({reason})")]
    BadEndpoint { endpoint: String, reason: String },

    #[error("{url}: unexpected answer from the hub: {reason}")]
    Protocol { url: String, reason: String },

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

fn on(endpoint: &str) -> String {
    if endpoint.is_empty() {
        String::new()
    } else {
        format!(" on {endpoint}")
    }
}

/// A hub model named on the command line: `owner/name[/file][@revision]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    pub repo: String,
    /// One file of the repo to load (a raw `.pth` from a repo of many).
    pub file: Option<String>,
    pub revision: Option<String>,
}

impl ModelSpec {
    /// Reads `spec` as a repo id, or `None` when it cannot be one (and so is a path).
    pub fn parse(spec: &str) -> Option<Self> {
        // Revisions name files under the cache's `refs/` and files name links in a snapshot:
        // both must be plain relative paths.
        let plain = |f: &str| f.split('/').all(|c| !c.is_empty() && c != "." && c != "..");
        let (path, revision) = match spec.split_once('@') {
            Some((path, rev)) if plain(rev) => (path, Some(rev.to_owned())),
            Some(_) => return None,
            None => (spec, None),
        };
        let mut parts = path.splitn(3, '/');
        let owner = parts.next()?;
        let name = parts.next()?;
        let file = parts.next();
        let name_ok = |s: &str| {
            !s.is_empty()
                && !s.starts_with(['.', '-'])
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        if !name_ok(owner) || !name_ok(name) {
            return None;
        }
        if file.is_some_and(|f| !plain(f)) {
            return None;
        }
        Some(Self {
            repo: format!("{owner}/{name}"),
            file: file.map(str::to_owned),
            revision,
        })
    }

    fn revision_or_main(&self) -> &str {
        self.revision.as_deref().unwrap_or("main")
    }
}

impl std::fmt::Display for ModelSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.repo)?;
        if let Some(file) = &self.file {
            write!(f, "/{file}")?;
        }
        if let Some(rev) = &self.revision {
            write!(f, "@{rev}")?;
        }
        Ok(())
    }
}

/// Where models come from and go: the hub settings of the environment.
#[derive(Clone)]
pub struct Hub {
    pub endpoint: String,
    token: Option<String>,
    pub cache_dir: PathBuf,
    pub offline: bool,
    /// How long a connection may stay silent before the transfer counts as stalled.
    pub timeout: Duration,
    /// Convert a model stored as PyTorch pickles to safetensors once, after download, so that
    /// every later load maps the file instead of unpickling gigabytes. `RWKV_CHAT_CONVERT=0`
    /// or `--no-convert` turns it off.
    pub convert: bool,
}

/// Written by hand so that the token never reaches a log.
impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("cache_dir", &self.cache_dir)
            .field("offline", &self.offline)
            .field("timeout", &self.timeout)
            .field("convert", &self.convert)
            .finish()
    }
}

impl Hub {
    /// The settings `huggingface_hub` would use in this environment.
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let home = hf_home();
        let token = var("HF_TOKEN").or_else(|| {
            let path = var("HF_TOKEN_PATH")
                .map(PathBuf::from)
                .unwrap_or_else(|| home.join("token"));
            std::fs::read_to_string(path)
                .ok()
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty())
        });
        let timeout = var("HF_HUB_DOWNLOAD_TIMEOUT")
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s > 0.0)
            .unwrap_or(DEFAULT_TIMEOUT_SECS);
        Self {
            endpoint: var("HF_ENDPOINT")
                .unwrap_or_else(|| DEFAULT_ENDPOINT.into())
                .trim_end_matches('/')
                .to_owned(),
            token,
            cache_dir: var("HF_HUB_CACHE")
                .or_else(|| var("HUGGINGFACE_HUB_CACHE"))
                .map(PathBuf::from)
                .unwrap_or_else(|| home.join("hub")),
            offline: var("HF_HUB_OFFLINE").is_some_and(|v| {
                matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
            }),
            timeout: Duration::from_secs_f64(timeout),
            convert: var("RWKV_CHAT_CONVERT")
                .is_none_or(|v| !matches!(v.as_str(), "0" | "false" | "no" | "off")),
        }
    }

    /// The local path of a hub model: from the cache when complete there, else downloaded now
    /// (refused when offline). `refresh` asks the hub for the revision's current commit even
    /// when a cached copy exists.
    pub fn fetch(
        &self,
        spec: &ModelSpec,
        refresh: bool,
        sink: &mut dyn ProgressSink,
    ) -> Result<PathBuf, HubError> {
        let cache = cache::RepoCache::new(&self.cache_dir, &spec.repo);
        let cached = cache.complete_model(spec.revision_or_main(), spec.file.as_deref());
        let path = match cached {
            Some(path) if !refresh || self.offline => path,
            None if self.offline => {
                return Err(HubError::Offline {
                    spec: spec.to_string(),
                    cache: self.cache_dir.clone(),
                    available: self.local_models().into_iter().map(|m| m.id).collect(),
                });
            }
            _ => self.download(spec, sink)?,
        };
        Ok(self.fast_copy(&cache, &path))
    }

    /// The safetensors copy of a snapshot stored as PyTorch pickles, made on first use (see
    /// [`Hub::convert`]); the snapshot itself when it needs none, conversion is off, or
    /// conversion fails (the pickles still load, slowly).
    fn fast_copy(&self, cache: &cache::RepoCache, path: &Path) -> PathBuf {
        let is_pickle = ModelFiles::locate(path).is_ok_and(|f| f.format == Format::Pickle);
        let Ok(inside) = path.strip_prefix(cache.root().join("snapshots")) else {
            return path.to_owned();
        };
        if !self.convert || !is_pickle {
            return path.to_owned();
        }
        // `<commit>` or `<commit>/<file>.pth`, which names the copy.
        let name = inside.to_string_lossy().replace(['/', '\\'], "--");
        let target = converted_dir().join(format!("{}--{name}", cache.folder_name()));
        if ModelFiles::locate(&target).is_ok() {
            return target;
        }
        eprintln!(
            "converting {} to safetensors once, for fast loading (RWKV_CHAT_CONVERT=0 turns this off)",
            cache.repo
        );
        match crate::convert::convert(path, &target, None) {
            Ok(_) => target,
            Err(e) => {
                // The error may name a file the hub named.
                let line = crate::report::describe(&e);
                tracing::warn!("{line}; loading the PyTorch files instead");
                path.to_owned()
            }
        }
    }

    /// Complete models in the hub cache and the models directory.
    pub fn local_models(&self) -> Vec<cache::LocalModel> {
        let mut all: Vec<cache::LocalModel> = cache::cached_models(&self.cache_dir)
            .into_iter()
            .filter(|m| m.complete)
            .collect();
        all.extend(cache::models_dir_models(&models_dir()));
        all
    }
}

/// `HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`.
fn hf_home() -> PathBuf {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(home) = var("HF_HOME") {
        return PathBuf::from(home);
    }
    if let Some(xdg) = var("XDG_CACHE_HOME") {
        return PathBuf::from(xdg).join("huggingface");
    }
    let home = var("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    home.join(".cache").join("huggingface")
}

/// Where converted and hand-placed models live: `RWKV_CHAT_MODELS_DIR`, else the data
/// directory (`~/.local/share/rwkv-chat/models` on Linux).
pub fn models_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("RWKV_CHAT_MODELS_DIR").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    directories::ProjectDirs::from("", "", "rwkv-chat")
        .map(|d| d.data_dir().join("models"))
        .unwrap_or_else(|| PathBuf::from("models"))
}

/// Safetensors copies of hub models stored as PyTorch pickles, by cache folder and commit.
pub fn converted_dir() -> PathBuf {
    models_dir().join(".converted")
}

/// What `--model` names, as a path to load: an existing path as is; a name in the models
/// directory; a hub repo id from the cache or downloaded now, with progress on `sink`. Anything
/// else is returned as a path, for the loader to report as missing.
pub fn resolve_model(
    spec: &str,
    hub: &Hub,
    sink: &mut dyn ProgressSink,
) -> anyhow::Result<PathBuf> {
    let path = Path::new(spec);
    if path.exists() {
        return Ok(path.to_owned());
    }
    if !spec.contains('/') {
        let local = models_dir().join(spec);
        if local.exists() {
            return Ok(local);
        }
    }
    let Some(parsed) = ModelSpec::parse(spec) else {
        return Ok(path.to_owned());
    };
    Ok(hub.fetch(&parsed, false, sink)?)
}

/// Progress on stderr: a line redrawn in place on a terminal, a line every few seconds
/// otherwise (logs, pipes, tests).
pub struct StderrProgress {
    terminal: bool,
    last: Option<Instant>,
}

impl StderrProgress {
    pub fn new() -> Self {
        Self {
            terminal: std::io::stderr().is_terminal(),
            last: None,
        }
    }

    /// The progress line, defused: file names come from the hub.
    fn line(p: &Progress) -> String {
        let eta = p
            .eta()
            .map_or_else(|| "--:--".into(), |d| clock(d.as_secs()));
        let line = format!(
            "{} [{}/{}] {}: {} / {} ({:.0}%), {}/s, ETA {}",
            p.repo,
            p.index,
            p.count,
            p.file,
            human_bytes(p.done),
            human_bytes(p.total),
            if p.total == 0 {
                100.0
            } else {
                p.done as f64 * 100.0 / p.total as f64
            },
            human_bytes(p.rate() as u64),
            eta
        );
        sanitize(&line).into_owned()
    }
}

impl Default for StderrProgress {
    fn default() -> Self {
        Self::new()
    }
}

impl ProgressSink for StderrProgress {
    fn update(&mut self, p: &Progress) {
        let every = if self.terminal {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(5)
        };
        if self.last.is_some_and(|t| t.elapsed() < every) {
            return;
        }
        self.last = Some(Instant::now());
        let mut err = std::io::stderr().lock();
        let _ = if self.terminal {
            write!(err, "\r\x1b[2K{}", Self::line(p))
        } else {
            writeln!(err, "{}", Self::line(p))
        };
    }

    fn finished(&mut self, p: &Progress) {
        let mut err = std::io::stderr().lock();
        let clear = if self.terminal { "\r\x1b[2K" } else { "" };
        let line = format!(
            "{} [{}/{}] {}: {} done",
            p.repo,
            p.index,
            p.count,
            p.file,
            human_bytes(p.total)
        );
        let _ = writeln!(err, "{clear}{}", sanitize(&line));
        self.last = None;
    }
}

/// `1.5 GB`, in powers of 1000 as disk sizes are sold and shown by the hub.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn clock(secs: u64) -> String {
    if secs >= 3600 {
        format!("{}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
    } else {
        format!("{}:{:02}", secs / 60, secs % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_ids_parse_and_paths_do_not() {
        let spec = ModelSpec::parse("RWKV/rwkv-raven-1b5").unwrap();
        assert_eq!(spec.repo, "RWKV/rwkv-raven-1b5");
        assert_eq!((spec.file, spec.revision), (None, None));
        let spec = ModelSpec::parse("RWKV/rwkv-raven-1b5@refs/pr/3").unwrap();
        assert_eq!(spec.revision.as_deref(), Some("refs/pr/3"));
        let spec = ModelSpec::parse("BlinkDL/rwkv-4-raven/RWKV-4-Raven-1B5.pth@main").unwrap();
        assert_eq!(spec.repo, "BlinkDL/rwkv-4-raven");
        assert_eq!(spec.file.as_deref(), Some("RWKV-4-Raven-1B5.pth"));
        assert_eq!(
            spec.to_string(),
            "BlinkDL/rwkv-4-raven/RWKV-4-Raven-1B5.pth@main"
        );
        for path in [
            "/abs/model",
            "./rel/model",
            "../up/model",
            "model.pth",
            "a/b/../c",
            "o/n@",
            "~/models/x",
            "o/n@/etc/passwd",
            "o/n@refs/../../x",
            "o/n@a//b",
            "o/n/f.pth@.",
        ] {
            assert_eq!(ModelSpec::parse(path), None, "{path}");
        }
    }

    #[test]
    fn sizes_read_like_the_hub_shows_them() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(6_060_000_000), "6.1 GB");
        assert_eq!(clock(3725), "1:02:05");
        assert_eq!(clock(65), "1:05");
    }
}
