//! `rwkv-chat perplexity`: how well the model predicts a text, to check a model, a dtype or a
//! quantization against another.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use serde_json::json;

use super::ModelArgs;
use crate::eval::{compare, measure};
use crate::model::WeightDtype;

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
    /// Also load the model in f32 and report how far this dtype moves from it: the f32
    /// perplexity, top-1 agreement and largest logit difference over the text.
    #[arg(long)]
    pub compare_f32: bool,
}

pub fn run(args: PerplexityArgs) -> anyhow::Result<()> {
    let text = std::fs::read(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let text = String::from_utf8(text)
        .map_err(|_| anyhow::anyhow!("{}: not UTF-8 text", args.file.display()))?;
    let engine = args.model.load()?;
    let ids = engine.tokenizer.encode(&text)?;
    let result = measure(&engine, &ids).with_context(|| args.file.display().to_string())?;
    let mut report = json!({
        "dtype": engine.model.dtype().to_string(),
        "simd": crate::model::simd::chosen().to_string(),
        "tokens": result.tokens,
        "nll": result.nll,
        "perplexity": result.perplexity(),
    });
    if args.compare_f32 {
        let mut reference = args.model.clone();
        reference.dtype = WeightDtype::F32;
        let reference = reference.load()?;
        let cmp = compare(&reference.model, &engine.model, &ids)?;
        report["f32_perplexity"] = json!(cmp.reference.perplexity());
        report["top1_agreement"] = json!(cmp.top1_agreement);
        report["max_logit_diff"] = json!(cmp.max_logit_diff);
    }
    match args.format {
        ReportFormat::Text => {
            println!(
                "tokens: {}\nnll: {:.6}\nperplexity: {:.4}",
                result.tokens,
                result.nll,
                result.perplexity()
            );
            for key in ["f32_perplexity", "top1_agreement", "max_logit_diff"] {
                if let Some(v) = report.get(key) {
                    println!("{key}: {v}");
                }
            }
        }
        ReportFormat::Json => println!("{report}"),
    }
    Ok(())
}
