//! `rwkv-chat convert SRC DST`: a checkpoint into a Hugging Face safetensors directory.

use std::path::PathBuf;

use clap::Args;

use crate::hub::human_bytes;
use crate::model::WeightDtype;

#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// A model directory or weights file (.pth, .bin, a shard index, .safetensors).
    pub src: PathBuf,
    /// The directory to create.
    pub dst: PathBuf,
    /// Precision of the written weights: f32, f16 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: WeightDtype,
}

pub fn run(args: ConvertArgs) -> anyhow::Result<()> {
    let done = crate::convert::convert(&args.src, &args.dst, Some(args.dtype))?;
    println!(
        "wrote {} ({} tensors, {} parameters, {} in {})",
        crate::text::sanitize(&done.dir.display().to_string()),
        done.tensors,
        count(done.parameters),
        human_bytes(done.bytes),
        args.dtype
    );
    Ok(())
}

/// A parameter count as model names give it: 2.7M, 169M, 1.5B.
fn count(n: u64) -> String {
    let n = n as f64;
    let (value, unit) = [(1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")]
        .into_iter()
        .find(|(scale, _)| n >= *scale)
        .map_or((n, ""), |(scale, unit)| (n / scale, unit));
    // Three significant digits at most, and no trailing `.0`.
    let digits = if value >= 100.0 || unit.is_empty() {
        0
    } else if value >= 10.0 {
        1
    } else {
        2
    };
    let text = format!("{value:.digits$}");
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.')
    } else {
        &text
    };
    format!("{text}{unit}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn parameter_counts_read_like_model_sizes() {
        let cases = [
            (0, "0"),
            (999, "999"),
            (2_700_000, "2.7M"),
            (2_712_345, "2.71M"),
            (169_342_464, "169M"),
            (1_515_106_304, "1.52B"),
            (14_000_000_000, "14B"),
            (12_500, "12.5K"),
        ];
        for (n, want) in cases {
            assert_eq!(super::count(n), want, "{n}");
        }
    }
}
