//! The command line: clap definitions, dispatch, and the one place errors are printed.
//!
//! Errors are printed as `error: ` and their whole chain ([`crate::report::describe`]), then
//! the process exits with status 1; `main` never returns an `Err`, which would print a backtrace when
//! `RUST_BACKTRACE` is set.

mod bench;
mod chat;
mod convert;
mod generate;
mod models;
mod perplexity;
mod sessions;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::engine::Engine;
use crate::model::{DeviceSpec, LoadOptions, WeightDtype};

#[derive(Debug, Parser)]
#[command(
    name = "rwkv-chat",
    version,
    about = "Chat with RWKV language models on your own machine",
    // The chat app's flags mean nothing to a subcommand, which has its own: before one
    // (`rwkv-chat --dtype q4 generate ...`) they are refused, not silently ignored.
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Chat app: a model to load at start (a path or a hub id), over the config's.
    #[arg(long, short = 'm')]
    pub model: Option<String>,
    /// Chat app: where sessions and the log live (default: the platform's data dir).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Chat app: where config.toml and themes/ are (default: $RWKV_CHAT_CONFIG_DIR or the
    /// platform's config dir).
    #[arg(long)]
    pub config_dir: Option<PathBuf>,
    /// Chat app: weight format in memory (f32, f16, bf16, or q8/q5/q4 quantized at load time).
    #[arg(long, default_value = "f32")]
    pub dtype: WeightDtype,
    /// Chat app: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
    /// Chat app: keep q8/q5/q4 weights under the data directory between loads.
    #[arg(long)]
    pub cache_weights: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Continue a prompt and stream the text to stdout.
    Generate(generate::GenerateArgs),
    /// Measure how well a model predicts a text file (lower is better).
    Perplexity(perplexity::PerplexityArgs),
    /// Chat line by line in a saved session (the TUI's engine, without the screen).
    Chat(chat::ChatArgs),
    /// List, show, export, rename, delete or fork saved sessions.
    Sessions(sessions::SessionsArgs),
    /// Measure prompt and generation speed, memory, and session resume time.
    Bench(bench::BenchArgs),
    /// List, inspect, download and remove models from the Hugging Face hub.
    Models(models::ModelsArgs),
    /// Turn a raw .pth or PyTorch .bin checkpoint into a safetensors model directory.
    Convert(convert::ConvertArgs),
}

/// How to find and load a model; shared by every command that runs one.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// A model directory (Hugging Face layout), a weights file (.safetensors, .bin, .pth), or a
    /// hub repo id such as RWKV/rwkv-raven-1b5[@revision], downloaded on first use.
    #[arg(long, short = 'm')]
    pub model: String,
    /// Weight format in memory: f32, f16, bf16, or q8/q5/q4 (blocks of 32 with a scale, and q5
    /// a minimum, quantized at load time; CPU only).
    #[arg(long, default_value = "f32")]
    pub dtype: WeightDtype,
    /// cpu, cuda or cuda:N (cuda needs a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
    /// Tokens per prompt-processing step; results do not depend on it.
    #[arg(long, default_value_t = crate::model::DEFAULT_CHUNK_SIZE, value_parser = positive)]
    pub chunk_size: usize,
    /// A tokenizer.json to use instead of the one beside the model (or the built-in one).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Load a hub model's PyTorch files as they are, without making a safetensors copy once.
    #[arg(long)]
    pub no_convert: bool,
    /// Keep q8/q5/q4 weights under the data directory (`quantized/`), so that later loads read
    /// them instead of reading and quantizing the f32 checkpoint.
    #[arg(long)]
    pub cache_weights: bool,
}

impl ModelArgs {
    pub fn load(&self) -> anyhow::Result<Engine> {
        let opts = LoadOptions {
            dtype: self.dtype,
            device: self.device,
            weight_cache: weight_cache(self.cache_weights, None)?,
        };
        let mut hub = crate::hub::Hub::from_env();
        hub.convert &= !self.no_convert;
        let path =
            crate::hub::resolve_model(&self.model, &hub, &mut crate::hub::StderrProgress::new())?;
        let mut engine = Engine::load(&path, opts, self.tokenizer.as_deref())?;
        engine.model.chunk_size = self.chunk_size;
        Ok(engine)
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // The chat app logs to a file: the terminal is its screen.
    if cli.command.is_some() {
        init_logging();
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", crate::report::describe(&e));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // Before the terminal is taken or a model read: a bad RWKV_CHAT_SIMD is a plain error.
    crate::model::simd::init()?;
    match cli.command {
        Some(Command::Generate(args)) => generate::run(args),
        Some(Command::Perplexity(args)) => perplexity::run(args),
        Some(Command::Models(args)) => models::run(args),
        Some(Command::Convert(args)) => convert::run(args),
        Some(Command::Chat(args)) => chat::run(args),
        Some(Command::Sessions(args)) => sessions::run(args),
        Some(Command::Bench(args)) => bench::run(args),
        None => crate::ui::run(crate::ui::Options {
            load: LoadOptions {
                dtype: cli.dtype,
                device: cli.device,
                weight_cache: weight_cache(cli.cache_weights, cli.data_dir.clone())?,
            },
            model: cli.model,
            data_dir: cli.data_dir,
            config_dir: cli.config_dir,
        }),
    }
}

/// Where `--cache-weights` keeps quantized weights: `quantized/` in the data directory.
fn weight_cache(enabled: bool, data_dir: Option<PathBuf>) -> anyhow::Result<Option<PathBuf>> {
    if !enabled {
        return Ok(None);
    }
    Ok(Some(crate::paths::data_dir(data_dir)?.join("quantized")))
}

fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("`{s}` is not a positive whole number")),
    }
}

/// Command-line runs log warnings to stderr (`RUST_LOG` selects more).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes are for a person at a terminal, not for a log file or a pipe.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// `rwkv-chat generate ... | head` closing the pipe early is not an error.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Writes and flushes at once, so streamed text appears as it is generated.
fn emit(out: &mut impl Write, text: &str) -> std::io::Result<()> {
    out.write_all(text.as_bytes())?;
    out.flush()
}
