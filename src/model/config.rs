//! The model's hyper-parameters, read from a Hugging Face `config.json` or inferred from the
//! tensor shapes of a raw checkpoint (BlinkDL `.pth` files ship without a config).

use serde::{Deserialize, Serialize};

/// RWKV-4 hyper-parameters, named as in transformers' `RwkvConfig` so `config.json` reads as is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    #[serde(default = "default_vocab_size")]
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    /// Width of the time-mix projections; transformers leaves it `null` to mean `hidden_size`.
    #[serde(default)]
    pub attention_hidden_size: Option<usize>,
    /// Width of the channel-mix hidden layer; `null` means `4 * hidden_size`.
    #[serde(default)]
    pub intermediate_size: Option<usize>,
    #[serde(default = "default_layer_norm_epsilon")]
    pub layer_norm_epsilon: f64,
    /// Halve the residual stream after every this many blocks (0 turns it off), so that f16
    /// activations do not overflow; the matching weights are divided at load time.
    #[serde(default = "default_rescale_every")]
    pub rescale_every: usize,
    #[serde(default = "default_context_length")]
    pub context_length: usize,
    #[serde(default)]
    pub model_type: Option<String>,
}

fn default_vocab_size() -> usize {
    50277
}
fn default_layer_norm_epsilon() -> f64 {
    1e-5
}
fn default_rescale_every() -> usize {
    6
}
fn default_context_length() -> usize {
    4096
}

impl Config {
    /// The shape every RWKV-4 checkpoint of this size has, with transformers' defaults.
    pub fn new(vocab_size: usize, hidden_size: usize, num_hidden_layers: usize) -> Self {
        Self {
            vocab_size,
            hidden_size,
            num_hidden_layers,
            attention_hidden_size: None,
            intermediate_size: None,
            layer_norm_epsilon: default_layer_norm_epsilon(),
            rescale_every: default_rescale_every(),
            context_length: default_context_length(),
            model_type: Some("rwkv".into()),
        }
    }

    pub fn attention_size(&self) -> usize {
        self.attention_hidden_size.unwrap_or(self.hidden_size)
    }

    pub fn ffn_size(&self) -> usize {
        self.intermediate_size.unwrap_or(4 * self.hidden_size)
    }
}
