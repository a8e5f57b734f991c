//! The models loaded lately, most recent first, kept in `recent-models.json` in the data dir so
//! the model picker offers them first on the next start.
//!
//! The file is read as the store reads its files (`store::fs`): never through a symbolic link,
//! only a regular file, at most [`MAX_FILE`] bytes. One that cannot be used (damaged, too large,
//! a link) is skipped with a warning in the log: the picker still opens, with the catalogue.
//! It is written the way sessions are (temp file, fsync, rename) and never through a link.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::store::fs::{self, FileError};

/// Models remembered; older ones drop off the end.
pub const MAX_RECENT: usize = 10;
/// Ten entries of [`MAX_SPEC`] bytes, escaped, fit in this; a larger file is none of ours.
const MAX_FILE: u64 = 128 << 10;
/// Longer than any path Linux takes (`PATH_MAX`) or any hub id: not a model anyone loaded.
const MAX_SPEC: usize = 4096;
const FILE_NAME: &str = "recent-models.json";

#[derive(Debug, Serialize, Deserialize)]
struct RecentFile {
    models: Vec<String>,
}

pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// The list with `spec` first: one already in it moves up, and the oldest beyond
/// [`MAX_RECENT`] drop off.
pub fn remember(list: &[String], spec: &str) -> Vec<String> {
    tidy(std::iter::once(spec.to_owned()).chain(list.iter().cloned()))
}

/// A list as it may be used: no empty, overlong or control-character entries (nothing a user
/// loaded, and the file may have been edited by hand), no repeats, at most [`MAX_RECENT`].
fn tidy(list: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for spec in list {
        let usable = !spec.trim().is_empty()
            && spec.len() <= MAX_SPEC
            && !spec.chars().any(char::is_control);
        if usable && !out.contains(&spec) {
            out.push(spec);
        }
        if out.len() == MAX_RECENT {
            break;
        }
    }
    out
}

/// The remembered models, most recent first; none (with a warning in the log) when the file
/// is missing or cannot be used.
pub fn load(data_dir: &Path) -> Vec<String> {
    let path = path(data_dir);
    let bytes = match fs::read_regular(&path, MAX_FILE) {
        Ok(bytes) => bytes,
        Err(FileError::NotFound) => return Vec::new(),
        Err(e) => {
            tracing::warn!("{}: {e}; the recent models are not shown", path.display());
            return Vec::new();
        }
    };
    match serde_json::from_slice::<RecentFile>(&bytes) {
        Ok(file) => tidy(file.models),
        Err(e) => {
            tracing::warn!(
                "{}: not a list of recent models ({e}); the recent models are not shown",
                path.display()
            );
            Vec::new()
        }
    }
}

/// Writes the list atomically; a link in the file's place is refused, not replaced.
pub fn save(data_dir: &Path, list: &[String]) -> anyhow::Result<()> {
    let path = path(data_dir);
    fs::refuse_symlink(&path).with_context(|| format!("{}", path.display()))?;
    let file = RecentFile {
        models: tidy(list.iter().cloned()),
    };
    let json = serde_json::to_vec_pretty(&file).context("cannot encode the recent models")?;
    crate::store::write_atomic(&path, &json)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(specs: &[&str]) -> Vec<String> {
        specs.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_latest_comes_first_once_and_the_list_is_bounded() {
        let mut recent = Vec::new();
        for spec in ["a", "b", "c", "a"] {
            recent = remember(&recent, spec);
        }
        assert_eq!(recent, list(&["a", "c", "b"]));
        for i in 0..20 {
            recent = remember(&recent, &format!("m{i}"));
        }
        assert_eq!(recent.len(), MAX_RECENT);
        assert_eq!(recent[0], "m19");
        assert_eq!(recent[MAX_RECENT - 1], "m10");
    }

    #[test]
    fn entries_no_one_loaded_are_dropped() {
        let long = "x".repeat(MAX_SPEC + 1);
        let got = tidy(list(&["", "  ", "a\u{1b}]52;c;x\u{7}", &long, "ok", "ok"]));
        assert_eq!(got, list(&["ok"]));
    }

    #[test]
    fn a_saved_list_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load(dir.path()).is_empty());
        save(dir.path(), &list(&["RWKV/rwkv-raven-1b5", "/models/tiny"])).unwrap();
        assert_eq!(
            load(dir.path()),
            list(&["RWKV/rwkv-raven-1b5", "/models/tiny"])
        );
        // Nothing is left beside it.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [FILE_NAME]);
    }

    #[test]
    fn a_damaged_or_oversized_file_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        for bad in [
            b"{\"models\": [\"a\"".to_vec(),
            b"[\"a\", \"b\"]".to_vec(),
            b"{\"models\": [1, 2]}".to_vec(),
            vec![0xff; 100],
            format!("{{\"models\": [\"{}\"]}}", "a".repeat(MAX_FILE as usize)).into_bytes(),
        ] {
            std::fs::write(path(dir.path()), &bad).unwrap();
            assert!(load(dir.path()).is_empty());
        }
        // A damaged file is replaced by the next save.
        save(dir.path(), &list(&["a"])).unwrap();
        assert_eq!(load(dir.path()), list(&["a"]));
    }

    #[cfg(unix)]
    #[test]
    fn a_link_in_its_place_is_neither_read_nor_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere.json");
        std::fs::write(&elsewhere, b"{\"models\": [\"planted\"]}").unwrap();
        std::os::unix::fs::symlink(&elsewhere, path(dir.path())).unwrap();
        assert!(load(dir.path()).is_empty());
        let err = save(dir.path(), &list(&["a"])).unwrap_err();
        assert!(format!("{err:#}").contains("symbolic link"), "{err:#}");
        assert_eq!(
            std::fs::read(&elsewhere).unwrap(),
            b"{\"models\": [\"planted\"]}"
        );
        assert!(
            std::fs::symlink_metadata(path(dir.path()))
                .unwrap()
                .is_symlink()
        );
    }
}
