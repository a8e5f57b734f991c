//! The Hugging Face cache on disk, laid out exactly as Python's `huggingface_hub` lays it out,
//! so a model fetched by either tool is found by the other:
//!
//! ```text
//! <cache>/models--RWKV--rwkv-raven-1b5/
//!     refs/main                      the commit `main` pointed at when last fetched
//!     blobs/<sha256 or git oid>      file contents, named by their hash
//!     blobs/<hash>.incomplete        a transfer in progress (resumable, never read as a model)
//!     snapshots/<commit>/<file>      relative symlink to ../../blobs/<hash>
//! <cache>/.locks/models--RWKV--rwkv-raven-1b5/<hash>.lock
//! ```
//!
//! A snapshot link is made only after its blob is complete and verified, which is what makes
//! "in the snapshot" mean "safe to load".

use std::path::{Path, PathBuf};

use crate::model::ModelFiles;

/// A 40-hex-digit git commit id, as opposed to a branch or tag name.
pub fn is_commit_hash(revision: &str) -> bool {
    revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit())
}

/// One repository's folder in the cache.
#[derive(Debug, Clone)]
pub struct RepoCache {
    pub cache_dir: PathBuf,
    pub repo: String,
}

impl RepoCache {
    pub fn new(cache_dir: &Path, repo: &str) -> Self {
        Self {
            cache_dir: cache_dir.to_owned(),
            repo: repo.to_owned(),
        }
    }

    pub fn folder_name(&self) -> String {
        format!("models--{}", self.repo.replace('/', "--"))
    }

    pub fn root(&self) -> PathBuf {
        self.cache_dir.join(self.folder_name())
    }

    pub fn blob(&self, hash: &str) -> PathBuf {
        self.root().join("blobs").join(hash)
    }

    pub fn incomplete(&self, hash: &str) -> PathBuf {
        self.root().join("blobs").join(format!("{hash}.incomplete"))
    }

    pub fn lock_file(&self, hash: &str) -> PathBuf {
        self.cache_dir
            .join(".locks")
            .join(self.folder_name())
            .join(format!("{hash}.lock"))
    }

    pub fn snapshot(&self, commit: &str) -> PathBuf {
        self.root().join("snapshots").join(commit)
    }

    /// The commit a branch or tag pointed at when last fetched; a commit id is its own answer.
    pub fn commit_of(&self, revision: &str) -> Option<String> {
        if is_commit_hash(revision) {
            return Some(revision.to_owned());
        }
        let text = std::fs::read_to_string(self.root().join("refs").join(revision)).ok()?;
        let commit = text.trim();
        is_commit_hash(commit).then(|| commit.to_owned())
    }

    pub fn write_ref(&self, revision: &str, commit: &str) -> std::io::Result<()> {
        if is_commit_hash(revision) {
            return Ok(());
        }
        let path = self.root().join("refs").join(revision);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, commit)
    }

    /// Points `snapshots/<commit>/<file>` at the blob `hash`, replacing an older link.
    pub fn link(&self, commit: &str, file: &str, hash: &str) -> std::io::Result<()> {
        let link = self.snapshot(commit).join(file);
        let parent = link.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent)?;
        // Relative, like huggingface_hub, so the cache can be moved or mounted elsewhere.
        let depth = file.split('/').count() + 1;
        let target = PathBuf::from("../".repeat(depth)).join("blobs").join(hash);
        match std::fs::remove_file(&link) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        make_link(&target, &link, &self.blob(hash))
    }

    /// The complete model a spec names, if it is in the cache: the snapshot directory (or the
    /// named file in it) when every weight file the loader needs is there.
    pub fn complete_model(&self, revision: &str, file: Option<&str>) -> Option<PathBuf> {
        let snapshot = self.snapshot(&self.commit_of(revision)?);
        let path = match file {
            Some(file) => snapshot.join(file),
            None => snapshot,
        };
        ModelFiles::locate(&path).is_ok().then_some(path)
    }

    /// Bytes held by complete blobs and by interrupted transfers.
    pub fn disk_usage(&self) -> (u64, u64) {
        let mut complete = 0;
        let mut partial = 0;
        if let Ok(entries) = std::fs::read_dir(self.root().join("blobs")) {
            for entry in entries.flatten() {
                let len = entry.metadata().map_or(0, |m| m.len());
                if entry.file_name().to_string_lossy().ends_with(".incomplete") {
                    partial += len;
                } else {
                    complete += len;
                }
            }
        }
        (complete, partial)
    }
}

#[cfg(unix)]
fn make_link(target: &Path, link: &Path, _blob: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(target, link)
}

/// Windows needs a privilege for symlinks; huggingface_hub copies the blob there too.
#[cfg(not(unix))]
fn make_link(_target: &Path, link: &Path, blob: &Path) -> std::io::Result<()> {
    std::fs::copy(blob, link).map(|_| ())
}

/// A model found on this machine.
#[derive(Debug, Clone)]
pub struct LocalModel {
    /// `owner/name` for a hub download (`owner/name/file.pth` for one file of a raw repo), the
    /// path for a model in the models directory.
    pub id: String,
    pub path: PathBuf,
    pub bytes: u64,
    /// Bytes of interrupted transfers that the next download resumes.
    pub partial_bytes: u64,
    /// Whether a complete, loadable snapshot (or file) is there.
    pub complete: bool,
}

/// Repositories in the hub cache that hold an RWKV model or a transfer of one, by repo id;
/// and the complete files of a raw repo (`.pth` files beside each other in the snapshot
/// `main` points at), by `repo/file`, the spec that loads each one. Sorted by id.
pub fn cached_models(cache_dir: &Path) -> Vec<LocalModel> {
    let Ok(entries) = std::fs::read_dir(cache_dir) else {
        return vec![];
    };
    let mut found: Vec<LocalModel> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let repo = name.strip_prefix("models--")?.replacen("--", "/", 1);
            let cache = RepoCache::new(cache_dir, &repo);
            let complete = complete_snapshot(&cache);
            let (bytes, partial_bytes) = cache.disk_usage();
            let is_rwkv = complete.as_deref().is_some_and(is_rwkv4_dir)
                || repo.to_ascii_lowercase().contains("rwkv");
            is_rwkv.then(|| {
                let files = raw_files(&cache, &repo);
                std::iter::once(LocalModel {
                    id: repo,
                    path: complete.clone().unwrap_or_else(|| cache.root()),
                    bytes,
                    partial_bytes,
                    complete: complete.is_some(),
                })
                .chain(files)
            })
        })
        .flatten()
        .collect();
    found.sort_by(|a, b| a.id.cmp(&b.id));
    found
}

/// The `.pth` files at the top of the snapshot `main` points at whose blob is here whole.
fn raw_files(cache: &RepoCache, repo: &str) -> Vec<LocalModel> {
    let Some(snapshot) = cache.commit_of("main").map(|c| cache.snapshot(&c)) else {
        return vec![];
    };
    let Ok(entries) = std::fs::read_dir(&snapshot) else {
        return vec![];
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let file = entry.file_name().to_str()?.to_owned();
            if !file.ends_with(".pth") {
                return None;
            }
            let path = entry.path();
            // A link whose blob is missing has no metadata to follow to.
            let bytes = std::fs::metadata(&path).ok()?.len();
            ModelFiles::locate(&path).is_ok().then(|| LocalModel {
                id: format!("{repo}/{file}"),
                path,
                bytes,
                partial_bytes: 0,
                complete: true,
            })
        })
        .collect()
}

/// The snapshot `main` points at if it is complete, else any complete snapshot.
fn complete_snapshot(cache: &RepoCache) -> Option<PathBuf> {
    if let Some(path) = cache.complete_model("main", None) {
        return Some(path);
    }
    let entries = std::fs::read_dir(cache.root().join("snapshots")).ok()?;
    entries
        .flatten()
        .map(|e| e.path())
        .find(|p| ModelFiles::locate(p).is_ok())
}

/// A loadable directory whose config says RWKV (or that has no config: a raw `.pth`).
fn is_rwkv4_dir(dir: &Path) -> bool {
    let Ok(files) = ModelFiles::locate(dir) else {
        return false;
    };
    let Some(config) = files.config else {
        return true;
    };
    std::fs::read_to_string(config)
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .is_some_and(|v| v["model_type"] == "rwkv")
}

/// Models in the user's models directory: each loadable subdirectory or weights file.
pub fn models_dir_models(dir: &Path) -> Vec<LocalModel> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return vec![];
    };
    let mut found: Vec<LocalModel> = entries
        .flatten()
        .map(|e| e.path())
        // Hidden entries are conversions in progress and the converted copies of hub models.
        .filter(|p| {
            let hidden = p
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'));
            !hidden && ModelFiles::locate(p).is_ok()
        })
        .map(|path| LocalModel {
            id: path.display().to_string(),
            bytes: size_of(&path),
            partial_bytes: 0,
            complete: true,
            path,
        })
        .collect();
    found.sort_by(|a, b| a.id.cmp(&b.id));
    found
}

/// Bytes under `path`, following the links of a snapshot to their blobs.
pub fn size_of(path: &Path) -> u64 {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => std::fs::read_dir(path)
            .map(|entries| entries.flatten().map(|e| size_of(&e.path())).sum())
            .unwrap_or(0),
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_follow_the_huggingface_hub_layout() {
        let cache = RepoCache::new(Path::new("/c"), "RWKV/rwkv-raven-1b5");
        assert_eq!(cache.root(), Path::new("/c/models--RWKV--rwkv-raven-1b5"));
        assert_eq!(
            cache.blob("abc"),
            Path::new("/c/models--RWKV--rwkv-raven-1b5/blobs/abc")
        );
        assert_eq!(
            cache.lock_file("abc"),
            Path::new("/c/.locks/models--RWKV--rwkv-raven-1b5/abc.lock")
        );
        assert!(is_commit_hash(&"a".repeat(40)));
        assert!(!is_commit_hash("main"));
    }

    #[cfg(unix)]
    #[test]
    fn links_are_relative_and_refs_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let cache = RepoCache::new(dir.path(), "o/n");
        let commit = "0123456789abcdef0123456789abcdef01234567";
        std::fs::create_dir_all(cache.root().join("blobs")).unwrap();
        std::fs::write(cache.blob("h1"), b"x").unwrap();
        cache.link(commit, "sub/file.txt", "h1").unwrap();
        let link = cache.snapshot(commit).join("sub/file.txt");
        assert_eq!(
            std::fs::read_link(&link).unwrap(),
            Path::new("../../../blobs/h1")
        );
        assert_eq!(std::fs::read(&link).unwrap(), b"x");
        assert_eq!(cache.commit_of("main"), None);
        cache.write_ref("main", commit).unwrap();
        assert_eq!(cache.commit_of("main").as_deref(), Some(commit));
    }

    #[cfg(unix)]
    #[test]
    fn the_whole_files_of_a_raw_repo_are_listed_by_the_spec_that_loads_each() {
        let dir = tempfile::tempdir().unwrap();
        let repo = "BlinkDL/rwkv-7-world";
        let cache = RepoCache::new(dir.path(), repo);
        let commit = "0123456789abcdef0123456789abcdef01234567";
        std::fs::create_dir_all(cache.root().join("blobs")).unwrap();
        std::fs::write(cache.blob("h1"), b"weights").unwrap();
        std::fs::write(cache.blob("h3"), b"readme").unwrap();
        cache.link(commit, "a.pth", "h1").unwrap();
        // Its blob is gone (or never finished): not loadable.
        cache.link(commit, "b.pth", "h2").unwrap();
        cache.link(commit, "README.md", "h3").unwrap();
        let ids =
            |dir: &Path| -> Vec<String> { cached_models(dir).into_iter().map(|m| m.id).collect() };
        // Only the snapshot `main` points at counts.
        assert_eq!(ids(dir.path()), [repo]);
        cache.write_ref("main", commit).unwrap();
        assert_eq!(ids(dir.path()), [repo.to_owned(), format!("{repo}/a.pth")]);
        let file = cached_models(dir.path()).pop().unwrap();
        assert!(file.complete && file.bytes == 7, "{file:?}");
        assert_eq!(file.path, cache.snapshot(commit).join("a.pth"));
    }
}
