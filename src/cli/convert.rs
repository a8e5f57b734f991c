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
        "wrote {} ({} tensors, {:.3} B parameters, {} in {})",
        done.dir.display(),
        done.tensors,
        done.parameters as f64 / 1e9,
        human_bytes(done.bytes),
        args.dtype
    );
    Ok(())
}
