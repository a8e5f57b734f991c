//! `rwkv-chat generate`: continue a prompt, streaming text or JSON lines to stdout.

use std::io::{IsTerminal, Read, Write};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use serde_json::json;

use super::{ModelArgs, emit};
use crate::sampler::{Sampler, SamplingParams};
use crate::text::sanitize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Jsonl,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The text to continue; read from stdin when absent.
    #[arg(long, short = 'p')]
    pub prompt: Option<String>,
    #[arg(long, default_value_t = 200)]
    pub max_tokens: usize,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
}

/// Sampling flags shared by `generate` and `chat`; a flag left out keeps the base value
/// (for `chat`, the session's settings).
#[derive(Debug, Args)]
pub struct SamplingArgs {
    /// 0 always picks the most likely token [generate default: 1.0].
    // A negative value is a value (refused with its reason), not an unknown flag.
    #[arg(long, allow_negative_numbers = true)]
    pub temperature: Option<f32>,
    /// Sample from the most likely tokens covering this probability [generate default: 0.85].
    #[arg(long, allow_negative_numbers = true)]
    pub top_p: Option<f32>,
    /// Keep only the K most likely tokens (0: no limit).
    #[arg(long)]
    pub top_k: Option<usize>,
    #[arg(long, allow_negative_numbers = true)]
    pub presence_penalty: Option<f32>,
    #[arg(long, allow_negative_numbers = true)]
    pub frequency_penalty: Option<f32>,
    #[arg(long, allow_negative_numbers = true)]
    pub penalty_decay: Option<f32>,
    /// Random seed; the same seed and settings give the same text.
    #[arg(long)]
    pub seed: Option<u64>,
}

impl SamplingArgs {
    pub fn apply(&self, base: &SamplingParams) -> anyhow::Result<SamplingParams> {
        let params = SamplingParams {
            temperature: self.temperature.unwrap_or(base.temperature),
            top_p: self.top_p.unwrap_or(base.top_p),
            top_k: self.top_k.unwrap_or(base.top_k),
            presence_penalty: self.presence_penalty.unwrap_or(base.presence_penalty),
            frequency_penalty: self.frequency_penalty.unwrap_or(base.frequency_penalty),
            penalty_decay: self.penalty_decay.unwrap_or(base.penalty_decay),
        };
        params.validate().map_err(anyhow::Error::msg)?;
        Ok(params)
    }
}

const END_OF_TEXT: u32 = 0;

pub fn run(args: GenerateArgs) -> anyhow::Result<()> {
    let base = SamplingParams {
        presence_penalty: 0.0,
        frequency_penalty: 0.0,
        ..SamplingParams::default()
    };
    let params = args.sampling.apply(&base)?;
    let prompt = match args.prompt {
        Some(p) => p,
        None if std::io::stdin().is_terminal() => {
            bail!("no prompt: pass --prompt TEXT or pipe the prompt on stdin")
        }
        None => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read the prompt from stdin")?;
            text
        }
    };
    let engine = args.model.load()?;
    let prompt_ids = engine.tokenizer.encode(&prompt)?;
    if prompt_ids.is_empty() {
        bail!("the prompt is empty");
    }
    let model = &engine.model;
    let mut state = model.new_state();
    let mut sampler = Sampler::new(params, args.sampling.seed.unwrap_or(0), vec![]);
    let mut decoder = engine.tokenizer.stream();
    let stdout = std::io::stdout();
    let to_terminal = stdout.is_terminal();
    let mut out = stdout.lock();

    let started = Instant::now();
    let mut logits = model.forward(&prompt_ids, &mut state)?.to_vec1::<f32>()?;
    let prefill_s = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let mut generated = 0usize;
    let mut text = String::new();
    let mut stop_reason = "max_tokens";
    while generated < args.max_tokens {
        let id = sampler.sample(&mut logits);
        if id == END_OF_TEXT {
            stop_reason = "end_of_text";
            break;
        }
        generated += 1;
        let piece = decoder.push(id);
        text.push_str(&piece);
        match args.format {
            OutputFormat::Text if to_terminal => emit(&mut out, &sanitize(&piece))?,
            OutputFormat::Text => emit(&mut out, &piece)?,
            OutputFormat::Jsonl => {
                writeln!(out, "{}", json!({"id": id, "text": piece}))?;
                out.flush()?;
            }
        }
        logits = model.forward(&[id], &mut state)?.to_vec1::<f32>()?;
    }
    let decode_s = started.elapsed().as_secs_f64();
    let tail = decoder.finish();
    text.push_str(&tail);
    match args.format {
        OutputFormat::Text => {
            emit(
                &mut out,
                &if to_terminal {
                    sanitize(&tail)
                } else {
                    tail.into()
                },
            )?;
            if to_terminal {
                emit(&mut out, "\n")?;
            }
        }
        OutputFormat::Jsonl => {
            let summary = json!({
                "prompt_tokens": prompt_ids.len(),
                "generated_tokens": generated,
                "prefill_tok_s": rate(prompt_ids.len(), prefill_s),
                "decode_tok_s": rate(generated, decode_s),
                "stop_reason": stop_reason,
                "text": text,
            });
            writeln!(out, "{summary}")?;
        }
    }
    Ok(())
}

fn rate(tokens: usize, seconds: f64) -> f64 {
    if seconds > 0.0 {
        tokens as f64 / seconds
    } else {
        0.0
    }
}
