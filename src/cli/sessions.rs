//! `rwkv-chat sessions`: list, show, export, rename, delete and fork saved sessions, without
//! loading a model.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use crate::chat::Role;
use crate::store::{SessionFile, Store, timestamp};
use crate::text::sanitize;

#[derive(Debug, Args)]
pub struct SessionsArgs {
    #[command(subcommand)]
    pub action: SessionsAction,
    /// Where sessions are kept [env: RWKV_CHAT_DATA_DIR].
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ListFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    Markdown,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum SessionsAction {
    /// All sessions, most recently used first.
    List {
        #[arg(long, value_enum, default_value = "text")]
        format: ListFormat,
    },
    /// A session's details and transcript.
    Show {
        name: String,
    },
    /// Write a session's transcript to stdout.
    Export {
        name: String,
        #[arg(long, value_enum, default_value = "markdown")]
        format: ExportFormat,
        /// Keep the reasoning of a thinking preset's replies (left out by default).
        #[arg(long)]
        with_thinking: bool,
    },
    Rename {
        old: String,
        new: String,
    },
    Delete {
        name: String,
    },
    /// Copy a session up to a turn into a new session.
    Fork {
        name: String,
        /// Keep this many turns (default: all).
        #[arg(long)]
        at: Option<usize>,
        new: String,
    },
}

pub fn run(args: SessionsArgs) -> anyhow::Result<()> {
    let store = Store::open(&crate::paths::data_dir(args.data_dir)?)?;
    let mut out = std::io::stdout();
    let terminal = out.is_terminal();
    // Transcripts hold model output: defuse control characters before a terminal sees them.
    let mut print = |text: &str| -> std::io::Result<()> {
        let text = if terminal {
            sanitize(text)
        } else {
            text.into()
        };
        out.write_all(text.as_bytes())
    };
    match args.action {
        SessionsAction::List { format } => {
            let sessions = store.list()?;
            if format == ListFormat::Json {
                print(&format!("{}\n", serde_json::to_string_pretty(&sessions)?))?;
                return Ok(());
            }
            if sessions.is_empty() {
                eprintln!("no sessions yet: start one with `rwkv-chat chat --model PATH`");
            }
            for s in sessions {
                let line = match &s.problem {
                    // An error message quotes the damaged file: defused even in a pipe.
                    Some(problem) => {
                        format!("{:<28} (unreadable: {})\n", s.name, sanitize(problem))
                    }
                    None => format!(
                        "{:<28} {:>4} {:<5}  {}  {:<15} {}\n",
                        s.name,
                        s.turns,
                        if s.turns == 1 { "turn" } else { "turns" },
                        timestamp(s.updated),
                        s.preset,
                        s.title
                    ),
                };
                print(&line)?;
            }
        }
        SessionsAction::Show { name } => {
            let s = store.load(&name)?;
            print(&format!(
                "name:    {name}\ntitle:   {}\ncreated: {}\nupdated: {}\nmodel:   {}\npreset:  {}\nturns:   {}\n\n",
                s.display_title(),
                timestamp(s.created),
                timestamp(s.updated),
                s.model.as_deref().unwrap_or("-"),
                s.preset.name,
                s.transcript.turns(),
            ))?;
            print(&markdown(&s))?;
        }
        SessionsAction::Export {
            name,
            format,
            with_thinking,
        } => {
            let mut s = store.load(&name)?;
            if !with_thinking {
                drop_reasoning(&mut s);
            }
            match format {
                ExportFormat::Markdown => print(&markdown(&s))?,
                ExportFormat::Json => print(&format!("{}\n", serde_json::to_string_pretty(&s)?))?,
            }
        }
        SessionsAction::Rename { old, new } => {
            store.rename(&old, &new)?;
            eprintln!("renamed {old} to {new}");
        }
        SessionsAction::Delete { name } => {
            store.delete(&name)?;
            eprintln!("deleted {name}");
        }
        SessionsAction::Fork { name, at, new } => {
            crate::session::fork(&store, &name, at, &new)?;
            eprintln!("forked {name} into {new}");
        }
    }
    Ok(())
}

/// Replaces each reply of a thinking preset by its answer, in what is shown and what was fed.
/// Leaves only the answer of each reply that started with reasoning (a session may have
/// changed presets between replies).
fn drop_reasoning(s: &mut SessionFile) {
    let reasoning: Vec<usize> = (0..s.transcript.messages.len())
        .filter(|&i| s.transcript.reasons(i))
        .collect();
    for i in reasoning {
        let m = &mut s.transcript.messages[i];
        let answer = crate::chat::thinking::split(&m.text).answer.to_owned();
        // The end of turn fed after it is that of the preset it was made with, which the
        // session's preset may no longer be.
        m.fed = match m.fed.strip_prefix(m.text.as_str()) {
            Some(end) => format!("{answer}{end}"),
            None => s.preset.bot_turn(&answer),
        };
        m.text = answer;
    }
}

fn markdown(s: &SessionFile) -> String {
    let mut out = format!("# {}\n\n", s.display_title());
    for m in &s.transcript.messages {
        let who = match m.role {
            Role::User => "You",
            Role::Bot => "Bot",
        };
        out.push_str(&format!("**{who}:** {}\n\n", m.text.trim()));
    }
    out
}
