//! `rwkv-chat models list | info | download | remove`: the catalogue and the models on this
//! machine, without opening the TUI.

use std::io::{IsTerminal, Write};

use anyhow::bail;
use clap::{Args, Subcommand};

use crate::hub::cache::{self, LocalModel, RepoCache};
use crate::hub::catalogue::{self, CatalogueEntry, Layout};
use crate::hub::{Hub, ModelSpec, StderrProgress, human_bytes};
use crate::model::WeightDtype;
use crate::text::sanitize;

#[derive(Debug, Args)]
pub struct ModelsArgs {
    #[command(subcommand)]
    pub command: ModelsCommand,
}

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// The catalogue and the models on this machine (hub cache and models directory).
    List,
    /// Sizes, memory needs and local copies of one model.
    Info {
        /// A hub repo id, for example RWKV/rwkv-raven-1b5.
        id: String,
    },
    /// Fetch a model (or check a downloaded one for a newer commit), with progress on stderr;
    /// prints the local path.
    Download {
        /// A hub repo id, optionally `/FILE` for one file of a raw repo and `@REVISION`.
        id: String,
    },
    /// Delete a downloaded model from the hub cache.
    Remove {
        /// A hub repo id.
        id: String,
    },
}

pub fn run(args: ModelsArgs) -> anyhow::Result<()> {
    let hub = Hub::from_env();
    let mut out = std::io::stdout().lock();
    match args.command {
        ModelsCommand::List => list(&hub, &mut out),
        ModelsCommand::Info { id } => info(&hub, &id, &mut out),
        ModelsCommand::Download { id } => {
            let spec = parse(&id)?;
            let path = hub.fetch(&spec, true, &mut StderrProgress::new())?;
            // The path names a hub file; a script reading it gets it as it is.
            let path = path.display().to_string();
            if out.is_terminal() {
                writeln!(out, "{}", sanitize(&path))?;
            } else {
                writeln!(out, "{path}")?;
            }
            Ok(())
        }
        ModelsCommand::Remove { id } => {
            let spec = parse(&id)?;
            // It removes the repo's whole cache folder: a file's id (`models list` prints
            // those of raw repos) must not take its neighbours with it.
            if let Some(file) = &spec.file {
                bail!(
                    "`models remove` removes a whole repo, with every file of it downloaded; \
                     to remove {}, name it without `/{file}`",
                    spec.repo
                );
            }
            let repo = RepoCache::new(&hub.cache_dir, &spec.repo);
            let root = repo.root();
            if !root.exists() {
                bail!(
                    "{}: not downloaded (nothing in {})",
                    spec.repo,
                    hub.cache_dir.display()
                );
            }
            let (bytes, partial) = repo.disk_usage();
            std::fs::remove_dir_all(&root)
                .map_err(|e| anyhow::anyhow!("{}: cannot remove: {e}", root.display()))?;
            let _ = std::fs::remove_dir_all(hub.cache_dir.join(".locks").join(repo.folder_name()));
            let copies = crate::hub::converted_dir();
            let prefix = format!("{}--", repo.folder_name());
            for copy in std::fs::read_dir(&copies).into_iter().flatten().flatten() {
                if copy.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = std::fs::remove_dir_all(copy.path());
                }
            }
            writeln!(
                out,
                "removed {} ({} freed)",
                spec.repo,
                human_bytes(bytes + partial)
            )?;
            Ok(())
        }
    }
}

fn parse(id: &str) -> anyhow::Result<ModelSpec> {
    ModelSpec::parse(id).ok_or_else(|| {
        anyhow::anyhow!(
            "`{id}` is not a hub repo id (expected OWNER/NAME, for example RWKV/rwkv-raven-1b5)"
        )
    })
}

fn status(local: Option<&LocalModel>) -> String {
    match local {
        Some(m) if m.complete => "downloaded".into(),
        Some(m) if m.partial_bytes > 0 => format!("partial ({})", human_bytes(m.partial_bytes)),
        _ => "-".into(),
    }
}

fn list(hub: &Hub, out: &mut impl Write) -> anyhow::Result<()> {
    let cached = cache::cached_models(&hub.cache_dir);
    let find_local = |repo: &str| cached.iter().find(|m| m.id.eq_ignore_ascii_case(repo));
    // The files of a raw repo are listed one by one (each id loads that file).
    let repo_of = |m: &LocalModel| {
        ModelSpec::parse(&m.id).map_or((m.id.clone(), false), |s| (s.repo, s.file.is_some()))
    };
    let files_of = |repo: &str| {
        cached
            .iter()
            .filter(|m| {
                let (r, file) = repo_of(m);
                file && r.eq_ignore_ascii_case(repo)
            })
            .count()
    };
    let status_of = |repo: &str| match (find_local(repo), files_of(repo)) {
        (Some(m), _) if m.complete => status(Some(m)),
        (_, 1) => "1 file downloaded".to_owned(),
        (_, n) if n > 1 => format!("{n} files downloaded"),
        (m, _) => status(m),
    };
    writeln!(
        out,
        "{:<26} {:>7} {:>10} {:>9} {:>9} {:>9} {:>6}  status",
        "catalogue", "params", "layers", "download", "RAM f32", "RAM f16", "ctx"
    )?;
    for e in catalogue::CATALOGUE {
        writeln!(
            out,
            "{:<26} {:>7} {:>10} {:>9} {:>9} {:>9} {:>6}  {}",
            e.repo,
            e.size,
            format!("{}x{}", e.layers, e.hidden),
            human_bytes(e.download_bytes()),
            human_bytes(e.ram_bytes(WeightDtype::F32)),
            human_bytes(e.ram_bytes(WeightDtype::F16)),
            e.context_length,
            status_of(e.repo),
        )?;
    }
    let recommended = catalogue::recommended_chat_model();
    writeln!(out, "\nrecommended for this machine: {}", recommended.repo)?;

    // Models outside the catalogue; a raw repo by its files when some are here whole.
    let others: Vec<&LocalModel> = cached
        .iter()
        .filter(|m| {
            let (repo, file) = repo_of(m);
            catalogue::find(&repo).is_none() && (file || files_of(&repo) == 0)
        })
        .collect();
    let width = others
        .iter()
        .map(|m| m.id.chars().count())
        .max()
        .unwrap_or(0)
        .max(40);
    let dir = crate::hub::models_dir();
    let in_dir = cache::models_dir_models(&dir);
    // Names here are folder names from the disk, which anyone (or a download) may have made.
    let cache_dir = hub.cache_dir.display().to_string();
    writeln!(
        out,
        "\nother local models (hub cache {}):",
        sanitize(&cache_dir)
    )?;
    if others.is_empty() {
        writeln!(out, "  none")?;
    }
    for m in others {
        writeln!(
            out,
            "  {:<width$} {:>9}  {}",
            sanitize(&m.id),
            human_bytes(m.bytes),
            status(Some(m))
        )?;
    }
    let dir_name = dir.display().to_string();
    writeln!(out, "\nmodels directory {}:", sanitize(&dir_name))?;
    if in_dir.is_empty() {
        writeln!(out, "  none")?;
    }
    for m in in_dir {
        writeln!(out, "  {:<40} {:>9}", sanitize(&m.id), human_bytes(m.bytes))?;
    }
    Ok(())
}

fn info(hub: &Hub, id: &str, out: &mut impl Write) -> anyhow::Result<()> {
    let spec = parse(id)?;
    let entry: Option<&CatalogueEntry> = catalogue::find(&spec.repo);
    writeln!(out, "repo: {}", spec.repo)?;
    match entry {
        Some(e) => {
            writeln!(out, "about: {} ({})", e.summary, e.generation)?;
            writeln!(out, "layers x hidden: {} x {}", e.layers, e.hidden)?;
            writeln!(out, "parameters: {:.2} B", e.parameters() as f64 / 1e9)?;
            let format = match e.layout {
                Layout::HuggingFace => {
                    "f32 PyTorch .bin (converted to safetensors by `rwkv-chat convert`)"
                }
                Layout::RawPth => "bf16 .pth files, one per model; name one as REPO/FILE",
                Layout::HuggingFaceWorld => "bf16 PyTorch .bin with config.json",
                Layout::Fla => "model.safetensors with config.json (flash-linear-attention)",
            };
            writeln!(
                out,
                "download: about {} ({format})",
                human_bytes(e.download_bytes())
            )?;
            for dtype in [WeightDtype::F32, WeightDtype::F16, WeightDtype::Bf16] {
                writeln!(
                    out,
                    "RAM with --dtype {dtype}: about {}",
                    human_bytes(e.ram_bytes(dtype))
                )?;
            }
            writeln!(out, "training context: {} tokens", e.context_length)?;
            writeln!(out, "licence: {}", e.licence)?;
        }
        None => writeln!(out, "not in the catalogue")?,
    }
    let repo = RepoCache::new(&hub.cache_dir, &spec.repo);
    match repo.complete_model(
        spec.revision.as_deref().unwrap_or("main"),
        spec.file.as_deref(),
    ) {
        Some(path) => writeln!(
            out,
            "downloaded: {} ({})",
            path.display(),
            human_bytes(repo.disk_usage().0)
        )?,
        None => {
            let partial = repo.disk_usage().1;
            if partial > 0 {
                writeln!(
                    out,
                    "downloaded: partly ({}); `models download` resumes",
                    human_bytes(partial)
                )?;
            } else {
                writeln!(out, "downloaded: no")?;
            }
        }
    }
    Ok(())
}
