//! Where rwkv-chat keeps its sessions and log: movable by a flag or an environment variable, so
//! tests and users with unusual set-ups never touch the defaults. (`config.rs` finds the config
//! dir.)

use std::path::PathBuf;

use anyhow::Context;

fn project_dirs() -> Option<directories::ProjectDirs> {
    directories::ProjectDirs::from("", "", "rwkv-chat")
}

/// Sessions and logs: `--data-dir`, else `RWKV_CHAT_DATA_DIR`, else the platform data dir
/// (`~/.local/share/rwkv-chat` on Linux).
pub fn data_dir(flag: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    flag.or_else(|| std::env::var_os("RWKV_CHAT_DATA_DIR").map(PathBuf::from))
        .or_else(|| project_dirs().map(|d| d.data_dir().to_owned()))
        .context("no data directory: set RWKV_CHAT_DATA_DIR or pass --data-dir")
}
