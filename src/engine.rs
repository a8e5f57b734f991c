//! A loaded model with its tokenizer: what every command that runs the model starts from.

use std::path::Path;

use crate::model::{Checkpoint, Generation, LoadError, LoadOptions, ModelFiles, Rwkv};
use crate::tokenizer::{Tokenizer, WORLD_VOCAB_SIZE};

pub struct Engine {
    pub model: Rwkv,
    pub tokenizer: Tokenizer,
    pub files: ModelFiles,
}

impl Engine {
    /// Loads the model at `path` (a directory or a weights file) and the tokenizer beside it,
    /// or `tokenizer` when given, or the generation's built-in tokenizer (GPT-NeoX for RWKV-4,
    /// World for the others).
    pub fn load(
        path: &Path,
        opts: LoadOptions,
        tokenizer: Option<&Path>,
    ) -> Result<Self, LoadError> {
        let files = ModelFiles::locate(path)?;
        let ckpt = Checkpoint::open(files.clone())?;
        let generation = ckpt.generation();
        let vocab = match generation {
            Generation::Rwkv4 => ckpt.config()?.vocab_size,
            _ => ckpt.vocab_size(),
        };
        // A World model's repo may hold a tokenizer.json for other tools; its own tokenizer is
        // the World vocab beside it, else the built-in copy. A v7 trained on the Pile
        // (`fla-hub/rwkv7-168M-pile`) has too few embedding rows for the World vocab and ships
        // the GPT-NeoX tokenizer.json it was trained with.
        let pile_trained = files.world_vocab.is_none() && vocab < WORLD_VOCAB_SIZE;
        let beside = match generation {
            Generation::Rwkv4 => files.tokenizer.clone(),
            _ if pile_trained => files.tokenizer.clone(),
            _ => files.world_vocab.clone(),
        };
        let tokenizer_path = tokenizer.map(Path::to_owned).or(beside);
        // Check the tokenizer before the (slow) weight loading.
        let tokenizer = Tokenizer::for_model(tokenizer_path.as_ref(), vocab, generation)?;
        let model = Rwkv::new(&ckpt, opts)?;
        Ok(Self {
            model,
            tokenizer,
            files,
        })
    }
}
