//! The binary state file: the recurrent state after the transcript and the kept turn
//! checkpoints, behind a header that says whose state it is.
//!
//! Layout: `RWKVCHAT` magic (8 bytes), format version (u32 LE), CRC-32 of everything after
//! the header (u32 LE), then a bincode 2 payload. The checksum is verified before decoding,
//! and decoding is bounded, so a hostile or damaged file is refused without large allocations.

use std::io::{Read, Seek, SeekFrom};

use serde::{Deserialize, Serialize};

use crate::chat::{SavedState, Transcript};
use crate::model::Fingerprint;

const MAGIC: &[u8; 8] = b"RWKVCHAT";
pub const FORMAT_VERSION: u32 = 1;
const HEADER: usize = 16;
/// No real state file comes near this: a 14B model's state is 4 MB.
pub const MAX_PAYLOAD: usize = 1 << 30;
/// The largest `state.bin` read at all: header and the largest payload.
pub const MAX_FILE: u64 = HEADER as u64 + MAX_PAYLOAD as u64;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateFile {
    pub fingerprint: Fingerprint,
    /// `Transcript::checksum` of the transcript this state is the result of.
    pub transcript_checksum: u32,
    pub saved: SavedState,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StateError {
    #[error("no saved state")]
    Missing,
    #[error("the state file is truncated")]
    Truncated,
    #[error("not an rwkv-chat state file")]
    NotAStateFile,
    #[error("the state file has format version {0}; this rwkv-chat reads version {FORMAT_VERSION}")]
    Version(u32),
    #[error("the state file is corrupt ({0})")]
    Corrupt(String),
    #[error("the state belongs to another model ({saved}, but {current} is loaded)")]
    ForeignModel {
        saved: Fingerprint,
        current: Fingerprint,
    },
    #[error("the state does not belong to this transcript")]
    Stale,
    #[error("the state's vectors do not have this model's sizes")]
    WrongShape,
    #[error("cannot read the state file: {0}")]
    Unreadable(String),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_PAYLOAD>()
}

pub fn encode(file: &StateFile) -> Result<Vec<u8>, StateError> {
    let payload = bincode::serde::encode_to_vec(file, config())
        .map_err(|e| StateError::Corrupt(e.to_string()))?;
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

pub fn decode(bytes: &[u8]) -> Result<StateFile, StateError> {
    decode_from(&mut std::io::Cursor::new(bytes), bytes.len() as u64)
}

/// Decodes a state file of `len` bytes from `file`: the checksum is computed over the stream
/// first, so a damaged file of any size costs a read, never its size in memory.
pub fn decode_from<R: Read + Seek>(file: &mut R, len: u64) -> Result<StateFile, StateError> {
    let io = |e: std::io::Error| StateError::Unreadable(e.to_string());
    let mut header = [0u8; HEADER];
    let got = read_up_to(file, &mut header).map_err(io)?;
    let header = &header[..got];
    if got < HEADER {
        return Err(if MAGIC.starts_with(header) || header.starts_with(MAGIC) {
            StateError::Truncated
        } else {
            StateError::NotAStateFile
        });
    }
    if &header[..8] != MAGIC {
        return Err(StateError::NotAStateFile);
    }
    let version = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    if version != FORMAT_VERSION {
        return Err(StateError::Version(version));
    }
    let crc = u32::from_le_bytes([header[12], header[13], header[14], header[15]]);
    let payload_len = len.saturating_sub(HEADER as u64);
    if payload_len > MAX_PAYLOAD as u64 {
        return Err(StateError::Corrupt(format!(
            "{payload_len} bytes, more than any state ({MAX_PAYLOAD} at most)"
        )));
    }
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut hashed = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        hashed += n as u64;
    }
    if hasher.finalize() != crc || hashed != payload_len {
        return Err(StateError::Corrupt("checksum mismatch".into()));
    }
    file.seek(SeekFrom::Start(HEADER as u64)).map_err(io)?;
    let mut payload = std::io::BufReader::new(file.take(payload_len));
    let file: StateFile = bincode::serde::decode_from_std_read(&mut payload, config())
        .map_err(|e| StateError::Corrupt(e.to_string()))?;
    if payload.read(&mut [0u8; 1]).map_err(io)? != 0 {
        return Err(StateError::Corrupt("trailing bytes".into()));
    }
    Ok(file)
}

/// Fills as much of `buf` as the stream holds.
fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

impl StateFile {
    /// The saved state and how many of the transcript's messages it covers: all of them
    /// normally, fewer when a save was interrupted between the transcript and the state.
    pub fn check(
        self,
        current: Fingerprint,
        transcript: &Transcript,
    ) -> Result<(SavedState, usize), StateError> {
        if self.fingerprint != current {
            return Err(StateError::ForeignModel {
                saved: self.fingerprint,
                current,
            });
        }
        if !self.saved.fits(&current) {
            return Err(StateError::WrongShape);
        }
        (0..=transcript.messages.len())
            .rev()
            .find(|&n| transcript.prefix_checksum(n) == self.transcript_checksum)
            .map(|n| (self.saved, n))
            .ok_or(StateError::Stale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Config, Generation, State};

    fn sample() -> StateFile {
        StateFile {
            fingerprint: Fingerprint {
                generation: Generation::Rwkv4,
                layers: 2,
                hidden: 4,
                attention: 4,
                head_size: 0,
                vocab: 10,
                weights: 7,
            },
            transcript_checksum: 42,
            saved: SavedState {
                tokens: 12,
                state: State::new(&Config::new(10, 4, 2)),
                checkpoints: vec![],
            },
        }
    }

    #[test]
    fn round_trip() {
        let file = sample();
        assert_eq!(decode(&encode(&file).unwrap()).unwrap(), file);
    }

    #[test]
    fn damage_is_named() {
        let bytes = encode(&sample()).unwrap();
        assert_eq!(
            decode(&bytes[..bytes.len() - 3]),
            Err(StateError::Corrupt("checksum mismatch".into()))
        );
        assert_eq!(decode(&bytes[..5]), Err(StateError::Truncated));
        assert_eq!(
            decode(b"garbage that is long enough"),
            Err(StateError::NotAStateFile)
        );
        let mut flipped = bytes.clone();
        flipped[40] ^= 0xff;
        assert!(matches!(decode(&flipped), Err(StateError::Corrupt(_))));
        let mut newer = bytes.clone();
        newer[8] = 9;
        assert_eq!(decode(&newer), Err(StateError::Version(9)));
    }

    #[test]
    fn a_valid_checksum_over_a_huge_length_claim_is_refused_without_allocating() {
        // A payload claiming a vector of 2^60 floats, with a correct checksum.
        let mut payload = vec![0u8; 0];
        payload.push(0xff);
        payload.extend_from_slice(&(1u64 << 60).to_le_bytes());
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        bytes.extend_from_slice(&payload);
        assert!(matches!(decode(&bytes), Err(StateError::Corrupt(_))));
    }

    #[test]
    fn another_model_or_transcript_is_refused() {
        use crate::chat::{Message, Role};
        let message = |role, text: &str| Message {
            role,
            text: text.into(),
            fed: text.into(),
        };
        let mut transcript = Transcript {
            intro: "hi".into(),
            messages: vec![message(Role::User, "a"), message(Role::Bot, "b")],
        };
        let mut file = sample();
        file.transcript_checksum = transcript.checksum();
        let mut other = file.fingerprint;
        other.weights = 8;
        assert!(matches!(
            file.clone().check(other, &transcript),
            Err(StateError::ForeignModel { .. })
        ));
        assert_eq!(
            file.clone().check(file.fingerprint, &transcript).unwrap().1,
            2
        );
        // A save interrupted after the transcript: the state covers the first two messages.
        transcript.messages.push(message(Role::User, "c"));
        assert_eq!(
            file.clone().check(file.fingerprint, &transcript).unwrap().1,
            2
        );
        // Another transcript altogether.
        transcript.messages[0].fed = "z".into();
        assert_eq!(
            file.clone()
                .check(file.fingerprint, &transcript)
                .unwrap_err(),
            StateError::Stale
        );
    }
}
