//! Where rwkv-chat keeps its files. Each place can be moved by an environment variable (and a
//! flag where the CLI has one), so tests and users with unusual set-ups never touch the
//! defaults.

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

/// Config, presets and themes: `--config-dir`, else `RWKV_CHAT_CONFIG_DIR`, else the platform
/// config dir (`~/.config/rwkv-chat` on Linux).
pub fn config_dir(flag: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    flag.or_else(|| std::env::var_os("RWKV_CHAT_CONFIG_DIR").map(PathBuf::from))
        .or_else(|| project_dirs().map(|d| d.config_dir().to_owned()))
        .context("no config directory: set RWKV_CHAT_CONFIG_DIR or pass --config-dir")
}
