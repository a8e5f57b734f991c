//! `rwkv-chat chat`: a line-mode chat over a saved session. On a terminal it is a small REPL;
//! otherwise each input line is one user message, for scripts and tests.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use anyhow::bail;
use clap::{Args, ValueEnum};
use serde_json::json;

use super::generate::SamplingArgs;
use super::{ModelArgs, emit};
use crate::chat::{Preset, ReplyOptions, Turn, preset};
use crate::session::{OpenError, OpenSession, Rebuild};
use crate::store::Store;
use crate::text::sanitize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ChatFormat {
    Text,
    Jsonl,
}

#[derive(Debug, Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Resume this session, or start it under this name.
    #[arg(long, short = 's', conflicts_with = "new")]
    pub session: Option<String>,
    /// Start a new session with a generated name (the default).
    #[arg(long)]
    pub new: bool,
    /// Prompt format and default sampling (raven, user-assistant, instruction, completion, or
    /// one of your own); for an existing session it applies from the next turn.
    #[arg(long)]
    pub preset: Option<String>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[arg(long, default_value_t = crate::chat::conversation::DEFAULT_MAX_REPLY_TOKENS)]
    pub max_tokens: usize,
    /// Keep the states around this many recent turns, for instant regenerate, edit and fork.
    #[arg(long, default_value_t = crate::chat::conversation::DEFAULT_KEPT_TURNS)]
    pub keep_turns: usize,
    /// Rebuild a session's state from its transcript when the saved one cannot be used.
    #[arg(long)]
    pub rebuild: bool,
    #[arg(long, value_enum, default_value = "text")]
    pub format: ChatFormat,
    /// Where sessions are kept [env: RWKV_CHAT_DATA_DIR].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Where user presets are found (`presets/*.toml`) [env: RWKV_CHAT_CONFIG_DIR].
    #[arg(long)]
    pub config_dir: Option<PathBuf>,
}

pub fn run(args: ChatArgs) -> anyhow::Result<()> {
    let store = Store::open(&crate::paths::data_dir(args.data_dir.clone())?)?;
    let presets_dir =
        crate::config::config_dir(args.config_dir.as_deref()).map(|d| d.join("presets"));
    let loaded = Preset::load_all(presets_dir.as_deref());
    for problem in &loaded.problems {
        let problem = problem.to_string();
        eprintln!(
            "warning: skipped a preset: {}",
            crate::text::sanitize(&problem)
        );
    }
    let presets = loaded.presets;
    let preset = args
        .preset
        .as_deref()
        .map(|name| Preset::find(&presets, name))
        .transpose()?;
    let engine = args.model.load()?;
    let interactive = std::io::stdin().is_terminal();

    let name = match &args.session {
        Some(name) => name.clone(),
        None => store.new_name(),
    };
    let mut session = if store.exists(&name)? {
        let rebuild = if args.rebuild {
            Rebuild::Allow
        } else {
            Rebuild::Ask
        };
        let mut progress = |done: usize, total: usize| {
            eprint!("\rfeeding the transcript: {done}/{total} tokens");
            if done == total {
                eprintln!();
            }
        };
        match OpenSession::open(&store, &engine, &name, rebuild, &mut progress) {
            Err(OpenError::NeedsRebuild { .. }) if interactive && confirm_rebuild(&name)? => {
                OpenSession::open(&store, &engine, &name, Rebuild::Allow, &mut progress)?
            }
            Err(e @ OpenError::NeedsRebuild { .. }) => {
                bail!("{e}; pass --rebuild to do so")
            }
            other => other?,
        }
    } else {
        let preset = match &preset {
            Some(p) => p.clone(),
            None => Preset::find(&presets, preset::default_for(engine.model.generation()))?,
        };
        let label = Some(args.model.model.clone());
        let session = OpenSession::create(&store, &engine, &name, preset, label)?;
        eprintln!("new session: {name}");
        session
    };
    if let Some(preset) = preset {
        session.conversation.sampling = preset.sampling.clone();
        session.conversation.preset = preset;
    }
    session.conversation.sampling = args.sampling.apply(&session.conversation.sampling)?;
    session.conversation.kept_turns = args.keep_turns.max(1);
    let base_seed = args.sampling.seed.unwrap_or_else(rand::random);
    let mut replayed = session.replayed_tokens;

    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    let to_terminal = out.is_terminal();
    let cancel = AtomicBool::new(false);
    if interactive {
        eprintln!(
            "Type a message and press Enter; /retry regenerates, /edit TEXT replaces your last message, /quit leaves."
        );
    }
    let mut lines = stdin.lock().lines();
    loop {
        if interactive {
            eprint!("> ");
            std::io::stderr().flush()?;
        }
        let Some(line) = lines.next() else { break };
        let line = line?;
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        let opts = ReplyOptions {
            max_tokens: args.max_tokens,
            seed: base_seed.wrapping_add(session.conversation.transcript.messages.len() as u64),
        };
        let mut shown_any = false;
        let mut on_text = |piece: &str| {
            if args.format == ChatFormat::Text {
                // Replies start with the space after the bot's label.
                let piece = if shown_any { piece } else { piece.trim_start() };
                shown_any |= !piece.is_empty();
                let piece = if to_terminal {
                    sanitize(piece)
                } else {
                    piece.into()
                };
                // A closed stdout ends the chat at the next write below.
                let _ = emit(&mut std::io::stdout(), &piece);
            }
        };
        let turn = if interactive && line.trim() == "/quit" {
            break;
        } else if interactive && line.trim() == "/retry" {
            Turn::Regenerate
        } else if let Some(text) = line.strip_prefix("/edit ").filter(|_| interactive) {
            Turn::ReplaceLast(text.to_owned())
        } else {
            Turn::Send(line.to_owned())
        };
        let reply = session.turn(&store, &engine, |c, e| {
            c.turn(e, &turn, opts, &cancel, &mut on_text)
        });
        let reply = match reply {
            Ok(reply) => reply,
            Err(e) if interactive => {
                eprintln!("error: {}", crate::report::describe(&e));
                continue;
            }
            Err(e) => return Err(e),
        };
        match args.format {
            ChatFormat::Text => emit(&mut out, "\n")?,
            ChatFormat::Jsonl => {
                let object = json!({
                    "reply": reply.text.trim_start(),
                    "prompt_tokens": reply.prompt_tokens,
                    "generated_tokens": reply.generated_tokens,
                    "replayed_tokens": replayed,
                    "stop_reason": reply.stop.as_str(),
                    "prefill_tok_s": reply.prefill_tok_s,
                    "decode_tok_s": reply.decode_tok_s,
                    "session": session.name,
                });
                writeln!(out, "{object}")?;
                out.flush()?;
            }
        }
        replayed = 0;
    }
    Ok(())
}

fn confirm_rebuild(name: &str) -> anyhow::Result<bool> {
    eprint!(
        "The saved state of session `{name}` cannot be used. Rebuild it from the transcript? [Y/n] "
    );
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(!answer.trim().to_ascii_lowercase().starts_with('n'))
}
