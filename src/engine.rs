//! A loaded model with its tokenizer: what every command that runs the model starts from.

use std::path::Path;

use crate::model::{Checkpoint, LoadError, LoadOptions, ModelFiles, Rwkv};
use crate::tokenizer::Tokenizer;

pub struct Engine {
    pub model: Rwkv,
    pub tokenizer: Tokenizer,
    pub files: ModelFiles,
}

impl Engine {
    /// Loads the model at `path` (a directory or a weights file) and the tokenizer beside it,
    /// or `tokenizer` when given, or the built-in GPT-NeoX tokenizer.
    pub fn load(
        path: &Path,
        opts: LoadOptions,
        tokenizer: Option<&Path>,
    ) -> Result<Self, LoadError> {
        let files = ModelFiles::locate(path)?;
        let ckpt = Checkpoint::open(files.clone())?;
        let cfg = ckpt.config()?;
        let tokenizer_path = tokenizer
            .map(Path::to_owned)
            .or_else(|| files.tokenizer.clone());
        // Check the tokenizer before the (slow) weight loading.
        let tokenizer = Tokenizer::for_model(tokenizer_path.as_ref(), cfg.vocab_size)?;
        let model = Rwkv::new(&cfg, &ckpt, opts)?;
        Ok(Self {
            model,
            tokenizer,
            files,
        })
    }
}
