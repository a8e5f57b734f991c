//! Why a model could not be loaded, in words a user can act on: every variant names the file.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{}: no such file or directory", path.display())]
    NotFound { path: PathBuf },

    #[error("{}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "{}: no model weights found (looked for model.safetensors, model.safetensors.index.json, \
         pytorch_model.bin, pytorch_model.bin.index.json and a .pth file)",
        dir.display()
    )]
    NoWeights { dir: PathBuf },

    #[error(
        "{}: more than one .pth file ({}); pass the one to load with --model",
        dir.display(),
        files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    AmbiguousWeights { dir: PathBuf, files: Vec<PathBuf> },

    #[error("{}: invalid shard index: {reason}", index.display())]
    BadIndex { index: PathBuf, reason: String },

    #[error("{}: shard file `{file}` {problem}", index.display())]
    BadShard {
        index: PathBuf,
        file: String,
        problem: String,
    },

    #[error(
        "{}: not a valid {format} file ({reason}); it may be truncated or corrupt, download it again",
        path.display()
    )]
    Corrupt {
        path: PathBuf,
        format: &'static str,
        reason: String,
    },

    #[error("{}: invalid config.json: {reason}", path.display())]
    BadConfig { path: PathBuf, reason: String },

    #[error(
        "{}: this is an {version} checkpoint; rwkv-chat runs RWKV-4 (Raven, Pile), RWKV-5.2, \
         RWKV-6 and RWKV-7 (World, G1) models and does not support this version yet",
        path.display()
    )]
    UnsupportedVersion {
        path: PathBuf,
        version: &'static str,
    },

    #[error(
        "{}: not an RWKV checkpoint: it has no embedding tensor (`emb.weight` or \
         `rwkv.embeddings.weight`); it looks like {looks_like}",
        path.display()
    )]
    NotRwkv {
        path: PathBuf,
        looks_like: &'static str,
    },

    #[error(
        "{}: the config is for an {says} model, but the weights beside it are {weights}",
        config.display()
    )]
    GenerationMismatch {
        config: PathBuf,
        says: super::Generation,
        weights: super::Generation,
    },

    #[error("{}: tensor `{name}` is missing", path.display())]
    MissingTensor { path: PathBuf, name: String },

    #[error("{}: tensor `{name}` has shape {found:?}, expected {expected:?}", path.display())]
    BadShape {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    #[error("{}: tensor `{name}` has shape {found:?}, expected {rank} non-empty dimensions", path.display())]
    BadRank {
        path: PathBuf,
        name: String,
        rank: usize,
        found: Vec<usize>,
    },

    #[error("{}: tensor `{name}` has dtype {dtype}; only float tensors are model weights", path.display())]
    BadDtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },

    #[error(
        "{}: {field} is {config_value} but the weights in {} have {weights_value}",
        config.display(),
        weights.display()
    )]
    ConfigMismatch {
        config: PathBuf,
        weights: PathBuf,
        field: &'static str,
        config_value: usize,
        weights_value: usize,
    },

    #[error("{}: invalid tokenizer: {reason}", path.display())]
    BadTokenizer { path: PathBuf, reason: String },

    #[error(
        "{}: the tokenizer has {tokenizer_vocab} tokens but the model's vocabulary has only \
         {model_vocab}; this tokenizer belongs to another model",
        path.display()
    )]
    TokenizerMismatch {
        path: PathBuf,
        tokenizer_vocab: usize,
        model_vocab: usize,
    },

    #[error("model setup failed: {0}")]
    Tensor(String),
}

impl From<candle_core::Error> for LoadError {
    fn from(e: candle_core::Error) -> Self {
        LoadError::Tensor(e.to_string().lines().next().unwrap_or_default().to_owned())
    }
}
