//! `rwkv-chat perplexity`: how well the model predicts a text, to check a model, a dtype or a
//! quantization against another.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde_json::json;

use super::ModelArgs;
use crate::eval::measure;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct PerplexityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A UTF-8 text file.
    #[arg(long, short = 'f')]
    pub file: PathBuf,
    #[arg(long, value_enum, default_value = "text")]
    pub format: ReportFormat,
}

pub fn run(args: PerplexityArgs) -> anyhow::Result<()> {
    let text = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let text = String::from_utf8(text)
        .map_err(|_| anyhow::anyhow!("{}: not UTF-8 text", args.file.display()))?;
    let engine = args.model.load()?;
    let ids = engine.tokenizer.encode(&text)?;
    let result = measure(&engine, &ids).with_context(|| args.file.display().to_string())?;
    match args.format {
        ReportFormat::Text => println!(
            "tokens: {}\nnll: {:.6}\nperplexity: {:.4}",
            result.tokens,
            result.nll,
            result.perplexity()
        ),
        ReportFormat::Json => println!(
            "{}",
            json!({"tokens": result.tokens, "nll": result.nll, "perplexity": result.perplexity()})
        ),
    }
    Ok(())
}
