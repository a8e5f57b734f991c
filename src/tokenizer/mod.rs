//! Text to token ids and back. RWKV-4 models use GPT-NeoX's byte-level BPE, encoded by the
//! `tokenizers` crate; the World models (v5, v6, v7) use the World vocab's greedy byte trie
//! ([`world`]). Decoding is done here from each token's bytes, for both, so that a stream of
//! tokens turns into text as soon as it forms whole UTF-8 characters (both split emoji and
//! CJK characters across tokens).

mod world;

use std::path::{Path, PathBuf};

use crate::model::{Generation, LoadError};

/// The GPT-NeoX 20B tokenizer used by every RWKV-4 Pile and Raven model.
pub(crate) const NEOX_20B: &[u8] = include_bytes!("../assets/20B_tokenizer.json");
/// The World vocab of every v5, v6 and v7 World model, as the rwkv 0.8.32 wheel ships it.
pub const WORLD_VOCAB: &str = include_str!("../assets/rwkv_vocab_v20230424.txt");

/// Ids of the World tokenizer (the highest is 65529); a model needs at least this many
/// embedding rows to take it.
pub const WORLD_VOCAB_SIZE: usize = 65530;
/// A vocab file is refused above this size (the World vocab is 1.2 MB).
const MAX_VOCAB_FILE: u64 = 64 << 20;

enum Encoder {
    Bpe(Box<tokenizers::Tokenizer>),
    World(world::Trie),
}

pub struct Tokenizer {
    encoder: Encoder,
    /// The bytes each id stands for.
    pieces: Vec<Vec<u8>>,
    /// Where it came from, for messages: a file, or the built-in tokenizer.
    pub source: String,
}

impl Tokenizer {
    /// The GPT-NeoX 20B tokenizer built into the binary.
    pub fn neox() -> Self {
        // A test checks that the embedded file parses, so this cannot fail at run time.
        Self::from_bytes(NEOX_20B, "built-in GPT-NeoX 20B tokenizer".into())
            .unwrap_or_else(|e| unreachable!("embedded tokenizer: {e}"))
    }

    /// The World tokenizer built into the binary.
    pub fn world() -> Self {
        // A test checks that the embedded vocab parses, so this cannot fail at run time.
        Self::from_world_vocab(WORLD_VOCAB, "built-in RWKV World tokenizer".into())
            .unwrap_or_else(|e| unreachable!("embedded vocab: {e}"))
    }

    /// A `tokenizer.json` (BPE) or a World vocab `.txt` file.
    pub fn from_file(path: &Path) -> Result<Self, LoadError> {
        let io = |source| LoadError::Io {
            path: path.to_owned(),
            source,
        };
        let bytes = match std::fs::metadata(path) {
            Ok(m) if m.len() > MAX_VOCAB_FILE => {
                return Err(LoadError::BadTokenizer {
                    path: path.to_owned(),
                    reason: format!("{} bytes is too large for a tokenizer", m.len()),
                });
            }
            Ok(_) => std::fs::read(path).map_err(io)?,
            Err(e) => return Err(io(e)),
        };
        let source = path.display().to_string();
        let parsed = if path.extension().is_some_and(|e| e == "txt") {
            std::str::from_utf8(&bytes)
                .map_err(|e| format!("not UTF-8 text ({e})"))
                .and_then(|text| Self::from_world_vocab(text, source))
        } else {
            Self::from_bytes(&bytes, source)
        };
        parsed.map_err(|reason| LoadError::BadTokenizer {
            path: path.to_owned(),
            reason,
        })
    }

    /// The tokenizer beside a model, else the generation's built-in one; refused when it has
    /// ids the model cannot embed.
    pub fn for_model(
        beside: Option<&PathBuf>,
        model_vocab: usize,
        generation: Generation,
    ) -> Result<Self, LoadError> {
        let tok = match beside {
            Some(path) => Self::from_file(path)?,
            None if generation.is_world() => Self::world(),
            None => Self::neox(),
        };
        if tok.vocab_size() > model_vocab {
            return Err(LoadError::TokenizerMismatch {
                path: beside
                    .cloned()
                    .unwrap_or_else(|| PathBuf::from(&tok.source)),
                tokenizer_vocab: tok.vocab_size(),
                model_vocab,
            });
        }
        Ok(tok)
    }

    fn from_bytes(bytes: &[u8], source: String) -> Result<Self, String> {
        let inner = tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| e.to_string())?;
        let entries = inner.get_vocab_size(true);
        // Ids index the piece table and the model's embedding, so the table spans the highest
        // id (then checked against the model); a file claiming id 4e9 with a few entries is
        // refused rather than sizing that table.
        let size = inner
            .get_vocab(true)
            .values()
            .map(|&id| id as usize + 1)
            .max()
            .unwrap_or(0);
        if size > 4 * entries + 1024 {
            return Err(format!(
                "token id {} is far beyond its {entries} entries",
                size - 1
            ));
        }
        let size = size.max(entries);
        let mut pieces = vec![Vec::new(); size];
        let unicode_to_byte = byte_level_decoding_table();
        for (token, id) in inner.get_vocab(false) {
            if let Some(slot) = pieces.get_mut(id as usize) {
                *slot = token
                    .chars()
                    .flat_map(|c| match unicode_to_byte(c) {
                        Some(b) => vec![b],
                        None => c.to_string().into_bytes(),
                    })
                    .collect();
            }
        }
        // Added tokens (`<|endoftext|>`, runs of spaces) are stored as plain text.
        for (id, added) in inner.get_added_tokens_decoder() {
            if let Some(slot) = pieces.get_mut(id as usize) {
                *slot = added.content.clone().into_bytes();
            }
        }
        Ok(Self {
            encoder: Encoder::Bpe(Box::new(inner)),
            pieces,
            source,
        })
    }

    fn from_world_vocab(text: &str, source: String) -> Result<Self, String> {
        let (pieces, trie) = world::parse_vocab(text)?;
        Ok(Self {
            encoder: Encoder::World(trie),
            pieces,
            source,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    pub fn encode(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        self.encode_bytes(text.as_bytes())
    }

    /// Encodes raw bytes; BPE needs them to be UTF-8, the World trie takes any.
    pub fn encode_bytes(&self, bytes: &[u8]) -> anyhow::Result<Vec<u32>> {
        match &self.encoder {
            Encoder::Bpe(inner) => {
                let text = std::str::from_utf8(bytes)
                    .map_err(|e| anyhow::anyhow!("cannot tokenize the text: {e}"))?;
                let encoding = inner
                    .encode(text, false)
                    .map_err(|e| anyhow::anyhow!("cannot tokenize the text: {e}"))?;
                Ok(encoding.get_ids().to_vec())
            }
            Encoder::World(trie) => trie
                .encode(bytes)
                .map_err(|e| anyhow::anyhow!("cannot tokenize the text: {e}")),
        }
    }

    /// The bytes of one token; empty for an id the tokenizer does not know.
    pub fn piece(&self, id: u32) -> &[u8] {
        self.pieces.get(id as usize).map_or(&[], Vec::as_slice)
    }

    /// Decodes a whole sequence (invalid UTF-8 becomes U+FFFD).
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|&id| self.piece(id).iter().copied())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    pub fn stream(&self) -> StreamDecoder<'_> {
        StreamDecoder {
            tokenizer: self,
            pending: Vec::new(),
        }
    }
}

/// GPT-2's byte-level BPE writes each byte as a printable character; this undoes that.
fn byte_level_decoding_table() -> impl Fn(char) -> Option<u8> {
    let mut table = std::collections::HashMap::new();
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut next = 256u32;
    for b in 0..=255u32 {
        let c = if printable(b) {
            b
        } else {
            let c = next;
            next += 1;
            c
        };
        if let Some(c) = char::from_u32(c) {
            table.insert(c, b as u8);
        }
    }
    move |c| table.get(&c).copied()
}

/// Turns tokens into text incrementally, holding back the bytes of an unfinished character.
pub struct StreamDecoder<'a> {
    tokenizer: &'a Tokenizer,
    pending: Vec<u8>,
}

impl StreamDecoder<'_> {
    /// Adds one token and returns the text it completes (possibly empty).
    pub fn push(&mut self, id: u32) -> String {
        self.pending.extend_from_slice(self.tokenizer.piece(id));
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(text) => {
                    out.push_str(text);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(&String::from_utf8_lossy(&self.pending[..valid]));
                    match e.error_len() {
                        // An unfinished character at the end: wait for the next token.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        // Bytes that can never become a character.
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    /// Whatever is left at the end of the stream; an unfinished character becomes U+FFFD.
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }

    /// True while bytes of an unfinished character are held back.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_tokenizer_parses() {
        let tok = Tokenizer::neox();
        assert_eq!(tok.vocab_size(), 50277);
        assert_eq!(tok.piece(0), b"<|endoftext|>");
    }

    #[test]
    fn the_embedded_world_vocab_parses() {
        let tok = Tokenizer::world();
        assert_eq!(tok.vocab_size(), WORLD_VOCAB_SIZE);
        assert_eq!(tok.piece(0), b"");
        assert_eq!(tok.piece(65529), [b' '; 128]);
        // Every byte is a token, so any input encodes.
        assert!((0..=255u8).all(|b| tok.encode_bytes(&[b]).is_ok()));
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let tok = Tokenizer::neox();
        let mut stream = tok.stream();
        // Find a token that is a lone continuation byte, which can never start a character.
        let lone = (0..tok.vocab_size() as u32)
            .find(|&id| tok.piece(id) == [0x80])
            .expect("byte-level vocab has every byte");
        assert_eq!(stream.push(lone), "\u{FFFD}");
        assert!(!stream.has_pending());
    }
}
