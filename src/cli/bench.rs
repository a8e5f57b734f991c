//! `rwkv-chat bench`: prompt and generation speed, peak memory, and how long resuming a
//! session takes beside feeding its history again.

use std::path::PathBuf;

use anyhow::bail;
use clap::{Args, ValueEnum};

use crate::bench::{BenchOptions, ModelSource, Shape};
use crate::model::{DeviceSpec, LoadOptions, WeightDtype};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// A model directory or weights file.
    #[arg(
        long,
        short = 'm',
        conflicts_with = "shape",
        required_unless_present_any = ["shape", "ui"]
    )]
    pub model: Option<PathBuf>,
    /// Random weights at a real shape, made in memory: RWKV-4's 169m, 430m, 1b5, 3b, 7b, or
    /// a World generation's v7-0.1b .. v7-2.9b, v6-1.6b .. v6-14b, v5-1.5b .. v5-7b.
    #[arg(long)]
    pub shape: Option<Shape>,
    #[arg(long, default_value = "f32")]
    pub dtype: WeightDtype,
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
    #[arg(long, default_value_t = 512)]
    pub prefill: usize,
    #[arg(long, default_value_t = 64)]
    pub decode: usize,
    #[arg(long, default_value_t = crate::model::DEFAULT_CHUNK_SIZE)]
    pub chunk_size: usize,
    /// Worker threads for the matrix products (default: one per physical core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Also time resuming a session with these many tokens of history (comma-separated),
    /// beside feeding that history again.
    #[arg(long, value_delimiter = ',')]
    pub resume: Vec<usize>,
    /// Keep q8/q5/q4 weights under the data directory between loads, as the other commands do
    /// with this flag: a second run times a load from the cache.
    #[arg(long)]
    pub cache_weights: bool,
    #[arg(long, value_enum, default_value = "text")]
    pub format: BenchFormat,
    /// Time the chat view instead of a model: a streamed token drawn, and a page scrolled,
    /// with `--history` tokens of conversation on screen (no model needed).
    #[arg(long, conflicts_with_all = ["model", "shape"])]
    pub ui: bool,
    /// History lengths in tokens for `--ui` (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1000,100000",
        requires = "ui"
    )]
    pub history: Vec<usize>,
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    if args.ui {
        return ui(&args.history, args.format);
    }
    if args.chunk_size == 0 {
        bail!("--chunk-size must be at least 1");
    }
    if let Some(threads) = args.threads {
        if threads == 0 {
            bail!("--threads must be at least 1");
        }
        // SAFETY: no other thread runs yet; candle reads this when it first multiplies.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
    }
    let source = match (args.model, args.shape) {
        (Some(path), _) => ModelSource::Path(path),
        (None, Some(shape)) => ModelSource::Random(shape),
        (None, None) => bail!("give --model PATH or --shape"),
    };
    let report = crate::bench::run(&BenchOptions {
        source,
        load: LoadOptions {
            dtype: args.dtype,
            device: args.device,
            weight_cache: super::weight_cache(args.cache_weights, None)?,
        },
        chunk_size: args.chunk_size,
        prefill: args.prefill,
        decode: args.decode,
        resume: args.resume,
    })?;
    match args.format {
        BenchFormat::Json => println!("{}", serde_json::to_string(&report)?),
        BenchFormat::Text => {
            println!(
                "model        {} ({}, {} threads, {} kernels)",
                report.model, report.dtype, report.threads, report.simd
            );
            let cached = if report.weights_from_cache {
                " (weights from the cache)"
            } else {
                ""
            };
            println!("load         {:.2} s{cached}", report.load_s);
            println!(
                "prefill      {:.1} tok/s over {} tokens",
                report.prefill_tok_s, report.prefill_tokens
            );
            println!(
                "decode       {:.2} tok/s over {} tokens",
                report.decode_tok_s, report.decode_tokens
            );
            println!("peak memory  {:.0} MB", report.peak_rss_mb);
            println!("state        {} bytes", report.state_bytes);
            for r in &report.resume {
                println!(
                    "resume       {} tokens of history: first token after {:.3} s from the saved state, {:.3} s feeding it again; the save after that turn wrote {} bytes",
                    r.history_tokens,
                    r.resume_first_token_s,
                    r.refeed_first_token_s,
                    r.bytes_written_last_turn
                );
            }
        }
    }
    Ok(())
}

fn ui(history: &[usize], format: BenchFormat) -> anyhow::Result<()> {
    if history.contains(&0) {
        bail!("--history lengths must be at least 1 token");
    }
    let reports = crate::bench::ui(history)?;
    match format {
        BenchFormat::Json => println!("{}", serde_json::json!({ "ui": reports })),
        BenchFormat::Text => {
            for r in &reports {
                println!(
                    "ui           {} tokens of history ({} messages, {}x{}): frame {:.3} ms, scroll {:.3} ms (medians)",
                    r.history_tokens, r.messages, r.width, r.height, r.frame_ms, r.scroll_ms
                );
            }
        }
    }
    Ok(())
}
