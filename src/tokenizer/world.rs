//! The RWKV World tokenizer (`rwkv_vocab_v20230424.txt`, 65,529 tokens, used by every v5, v6
//! and v7 World model): greedy longest match over the text's UTF-8 bytes, with no
//! normalisation, no pre-splitting and no special tokens, exactly as BlinkDL's
//! `TRIE_TOKENIZER` (rwkv pip, `rwkv_tokenizer.py`). Id 0 is the end of text and never comes
//! out of encoding.
//!
//! The vocab file holds one token a line, `<id> <python literal> <byte length>`, the literal a
//! `str` (`'\u2003'`: its UTF-8 bytes) or `bytes` (`b'\xe4\xb8'`: the bytes themselves).
//! BlinkDL's code `eval`s the literal; here it is parsed, with only the escapes Python knows.

use std::collections::HashMap;

/// A trie over token bytes: edges in one map keyed by (node, byte), so building it allocates
/// per edge, not per node and possible byte.
pub struct Trie {
    edges: HashMap<u64, u32>,
    /// The token that ends at each node, if any.
    tokens: Vec<Option<u32>>,
}

impl Trie {
    fn new() -> Self {
        Self {
            edges: HashMap::new(),
            tokens: vec![None],
        }
    }

    fn insert(&mut self, bytes: &[u8], id: u32) {
        let mut node = 0u32;
        for &b in bytes {
            let next = self.tokens.len() as u32;
            node = *self.edges.entry(key(node, b)).or_insert(next);
            if node == next {
                self.tokens.push(None);
            }
        }
        self.tokens[node as usize] = Some(id);
    }

    /// The longest token at the start of `bytes` and its length.
    fn longest(&self, bytes: &[u8]) -> Option<(u32, usize)> {
        let mut node = 0u32;
        let mut best = None;
        for (i, &b) in bytes.iter().enumerate() {
            match self.edges.get(&key(node, b)) {
                Some(&next) => node = next,
                None => break,
            }
            if let Some(id) = self.tokens[node as usize] {
                best = Some((id, i + 1));
            }
        }
        best
    }

    /// Greedy longest match from the left. Every single byte is a token of the World vocab,
    /// so any input encodes; a byte no token covers (only in a hand-made vocab) is an error.
    pub fn encode(&self, bytes: &[u8]) -> Result<Vec<u32>, String> {
        let mut ids = Vec::with_capacity(bytes.len() / 3 + 1);
        let mut at = 0;
        while at < bytes.len() {
            let (id, len) = self
                .longest(&bytes[at..])
                .ok_or_else(|| format!("no token for byte 0x{:02x}", bytes[at]))?;
            ids.push(id);
            at += len;
        }
        Ok(ids)
    }
}

fn key(node: u32, byte: u8) -> u64 {
    (u64::from(node) << 8) | u64::from(byte)
}

/// The pieces (bytes of each id) and the trie of a vocab file's text; lines may end in LF or
/// CRLF (the file ships with CRLF; Python reads it with universal newlines).
pub fn parse_vocab(text: &str) -> Result<(Vec<Vec<u8>>, Trie), String> {
    let mut pieces: Vec<Vec<u8>> = Vec::new();
    let mut trie = Trie::new();
    for (n, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let bad = |what: &str| format!("line {}: {what}", n + 1);
        let (id, rest) = line.split_once(' ').ok_or_else(|| bad("no token"))?;
        let (literal, len) = rest.rsplit_once(' ').ok_or_else(|| bad("no length"))?;
        let id: u32 = id.parse().map_err(|_| bad("the id is not a number"))?;
        let len: usize = len.parse().map_err(|_| bad("the length is not a number"))?;
        let bytes = parse_literal(literal).map_err(|e| bad(&e))?;
        if bytes.len() != len {
            return Err(bad(&format!(
                "the token has {} bytes, the line says {len}",
                bytes.len()
            )));
        }
        if id == 0 || id > 1 << 20 {
            return Err(bad(&format!("id {id} is out of range")));
        }
        let slot = id as usize;
        if pieces.len() <= slot {
            pieces.resize(slot + 1, Vec::new());
        }
        if !pieces[slot].is_empty() {
            return Err(bad(&format!("id {id} appears twice")));
        }
        trie.insert(&bytes, id);
        pieces[slot] = bytes;
    }
    if pieces.is_empty() {
        return Err("no tokens".into());
    }
    Ok((pieces, trie))
}

/// The bytes of a Python `str` or `bytes` literal as the vocab writes them.
fn parse_literal(literal: &str) -> Result<Vec<u8>, String> {
    let (is_bytes, quoted) = match literal.strip_prefix('b') {
        Some(rest) => (true, rest),
        None => (false, literal),
    };
    let quote = quoted
        .chars()
        .next()
        .filter(|&q| q == '\'' || q == '"')
        .ok_or("not a quoted literal")?;
    let body = quoted
        .strip_prefix(quote)
        .and_then(|s| s.strip_suffix(quote))
        .ok_or("unterminated literal")?;
    let mut out = Vec::with_capacity(body.len());
    let mut chars = body.chars();
    let push_char = |out: &mut Vec<u8>, c: char| {
        let mut buf = [0u8; 4];
        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
    };
    while let Some(c) = chars.next() {
        if c != '\\' {
            if is_bytes && !c.is_ascii() {
                return Err("a bytes literal holds a non-ASCII character".into());
            }
            push_char(&mut out, c);
            continue;
        }
        let escaped = chars.next().ok_or("a lone backslash at the end")?;
        let simple = match escaped {
            '\\' => Some(b'\\'),
            '\'' => Some(b'\''),
            '"' => Some(b'"'),
            'n' => Some(b'\n'),
            'r' => Some(b'\r'),
            't' => Some(b'\t'),
            'a' => Some(0x07),
            'b' => Some(0x08),
            'f' => Some(0x0c),
            'v' => Some(0x0b),
            '0' => Some(0),
            _ => None,
        };
        if let Some(b) = simple {
            out.push(b);
            continue;
        }
        let digits = match escaped {
            'x' => 2,
            'u' if !is_bytes => 4,
            'U' if !is_bytes => 8,
            other => return Err(format!("unknown escape \\{other}")),
        };
        let hex: String = chars.by_ref().take(digits).collect();
        let value = (hex.len() == digits)
            .then(|| u32::from_str_radix(&hex, 16).ok())
            .flatten()
            .ok_or_else(|| format!("bad escape \\{escaped}{hex}"))?;
        if is_bytes {
            // `b'\x80'` is the byte 0x80 ...
            out.push(value as u8);
        } else {
            // ... but `'\x80'` is U+0080, two bytes in UTF-8.
            let c = char::from_u32(value).ok_or_else(|| format!("bad code point {value:x}"))?;
            push_char(&mut out, c);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_read_as_python_reads_them() {
        for (literal, bytes) in [
            ("'a b'", b"a b".to_vec()),
            ("'\\n\\t\\r\\\\\\''", b"\n\t\r\\'".to_vec()),
            ("\"it's\"", b"it's".to_vec()),
            ("'\\x80'", vec![0xc2, 0x80]),
            ("b'\\x80\\xe4'", vec![0x80, 0xe4]),
            ("'\\u2003'", "\u{2003}".as_bytes().to_vec()),
            ("'日本'", "日本".as_bytes().to_vec()),
        ] {
            assert_eq!(parse_literal(literal).unwrap(), bytes, "{literal}");
        }
        for bad in ["'abc", "abc", "'\\q'", "'\\x8'", "b'日'", "'\\'"] {
            assert!(parse_literal(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_vocab_lines_are_named() {
        for (text, needle) in [
            ("1 'a' 2\n", "line 1: the token has 1 bytes"),
            ("1 'a' 1\r\n2 'b'\r\n", "line 2: no length"),
            ("1 'a' 1\n1 'b' 1\n", "id 1 appears twice"),
            ("x 'a' 1\n", "not a number"),
            ("", "no tokens"),
        ] {
            let e = parse_vocab(text).err().unwrap();
            assert!(e.contains(needle), "{e}");
        }
    }

    #[test]
    fn the_longest_token_wins() {
        let (_, trie) = parse_vocab("1 'a' 1\n2 'ab' 2\n3 'abc' 3\n4 'b' 1\n5 'c' 1\n").unwrap();
        assert_eq!(trie.encode(b"abcab").unwrap(), [3, 2]);
        assert_eq!(trie.encode(b"abab").unwrap(), [2, 2]);
        assert_eq!(trie.encode(b"acb").unwrap(), [1, 5, 4]);
        assert_eq!(trie.encode(b"d").unwrap_err(), "no token for byte 0x64");
    }
}
