//! The binary state files of a session: `state.bin`, a small index, and one `after-M-C.state`
//! file per saved state (the state after the first M messages of the transcript, whose
//! checksum is C), each written once and referenced by the index with its length and CRC.
//!
//! Both kinds are a magic (8 bytes), a format version (u32 LE), the CRC-32 of everything after
//! the header (u32 LE), then a bincode 2 payload. The checksum is verified before decoding, and
//! decoding is bounded, so a hostile or damaged file is refused without large allocations.
//!
//! Why one file per state: a state is 13 MB for a 1.5B World model and about 80 MB for a 14B
//! one, and the kept turn checkpoints are states too. The state before a turn is the state
//! after the turn before it, so each turn adds one new state; written to its own file, a save
//! writes that one and leaves the others alone.

use std::io::{Read, Seek, SeekFrom};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::chat::{SavedState, Transcript, TurnCheckpoint};
use crate::model::{Fingerprint, State};

const INDEX_MAGIC: &[u8; 8] = b"RWKVCHAT";
const STATE_MAGIC: &[u8; 8] = b"RWKVSTAT";
/// Version 1 held every state inline in `state.bin`; version 2 is the index and state files.
pub const FORMAT_VERSION: u32 = 2;
pub const HEADER: usize = 16;
/// The largest state payload: far beyond any real model's state (80 MB at 14B).
pub const MAX_PAYLOAD: usize = 1 << 30;
/// The largest state file read at all: header and the largest payload.
pub const MAX_FILE: u64 = HEADER as u64 + MAX_PAYLOAD as u64;
/// The largest index payload: a few dozen bytes per kept state.
pub const MAX_INDEX_PAYLOAD: usize = 1 << 20;
/// More kept checkpoints than an index may name: the app keeps 8.
pub const MAX_CHECKPOINTS: usize = 1024;
/// What all of a session's state files may add up to; checkpoints beyond it are not read, so a
/// hostile index cannot have gigabytes allocated for each of a thousand files.
pub const MAX_TOTAL: u64 = 4 << 30;

/// One saved state as the index names it. Its file name comes from numbers only, so no index
/// can name a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateRef {
    /// The state is the one after this many messages of the transcript.
    pub messages: u64,
    /// `Transcript::prefix_checksum(messages)` of the transcript it came from.
    pub transcript_checksum: u32,
    /// Tokens fed to reach it.
    pub tokens: u64,
    /// The file's length and the CRC-32 of its payload.
    pub len: u64,
    pub crc: u32,
}

impl StateRef {
    pub fn file_name(&self) -> String {
        state_file_name(self.messages, self.transcript_checksum)
    }

    /// The same state: the state after a transcript prefix is what feeding it gives, so its
    /// position and checksum name it (and one model's files are never another's, see
    /// [`Index::fingerprint`]).
    pub fn same_state(&self, messages: u64, transcript_checksum: u32, tokens: u64) -> bool {
        (self.messages, self.transcript_checksum, self.tokens)
            == (messages, transcript_checksum, tokens)
    }
}

pub fn state_file_name(messages: u64, transcript_checksum: u32) -> String {
    format!("after-{messages}-{transcript_checksum:08x}.state")
}

/// True for the names [`state_file_name`] gives, so a clean-up deletes nothing else.
pub fn is_state_file_name(name: &str) -> bool {
    let Some(rest) = name
        .strip_prefix("after-")
        .and_then(|r| r.strip_suffix(".state"))
    else {
        return false;
    };
    let Some((messages, checksum)) = rest.split_once('-') else {
        return false;
    };
    !messages.is_empty()
        && messages.bytes().all(|b| b.is_ascii_digit())
        && checksum.len() == 8
        && checksum.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `state.bin`: whose states these are, and which files hold them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Index {
    pub fingerprint: Fingerprint,
    /// The state after the whole saved transcript.
    pub state: StateRef,
    /// The state before each kept turn, oldest first.
    pub checkpoints: Vec<StateRef>,
}

impl Index {
    /// Every state file the index names.
    pub fn refs(&self) -> impl Iterator<Item = &StateRef> {
        std::iter::once(&self.state).chain(&self.checkpoints)
    }

    /// The file holding this state, when the index names one.
    pub fn find(&self, messages: u64, transcript_checksum: u32, tokens: u64) -> Option<StateRef> {
        self.refs()
            .find(|r| r.same_state(messages, transcript_checksum, tokens))
            .copied()
    }
}

/// One state read from its file, with the reference it was read by.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredState {
    pub at: StateRef,
    pub state: State,
}

/// A session's saved states as read from disk, before they are checked against a model and a
/// transcript ([`StateFile::check`]).
#[derive(Debug, Clone, PartialEq)]
pub struct StateFile {
    pub fingerprint: Fingerprint,
    pub state: StoredState,
    /// The kept checkpoints whose files could be read, oldest first.
    pub checkpoints: Vec<StoredState>,
    /// Why each checkpoint that could not be read was left out.
    pub dropped: Vec<String>,
}

/// What [`StateFile::check`] found usable.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    pub saved: SavedState,
    /// How many of the transcript's messages `saved.state` comes after: all of them normally,
    /// fewer when a save was cut short between the transcript and the state.
    pub covered: usize,
    /// The files on disk that hold states of `saved`, verified: a save need not write them again.
    pub stored: Index,
    /// Checkpoints left out here (another shape, another transcript), with why.
    pub dropped: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StateError {
    #[error("no saved state")]
    Missing,
    #[error("the state file is truncated")]
    Truncated,
    #[error("not an rwkv-chat state file")]
    NotAStateFile,
    #[error("{}", version_message(*.0))]
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

fn version_message(version: u32) -> String {
    if version < FORMAT_VERSION {
        format!(
            "the state was saved by an older rwkv-chat (state format {version}; this one reads \
             format {FORMAT_VERSION})"
        )
    } else {
        format!(
            "the state was saved by a newer rwkv-chat (state format {version}; this one reads \
             format {FORMAT_VERSION})"
        )
    }
}

fn config<const LIMIT: usize>() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<LIMIT>()
}

fn frame(magic: &[u8; 8], payload: Vec<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(magic);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// The CRC stored in an encoded file's header.
pub fn crc_of(encoded: &[u8]) -> u32 {
    encoded
        .get(12..16)
        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

pub fn encode_index(index: &Index) -> Result<Vec<u8>, StateError> {
    encode_framed::<_, MAX_INDEX_PAYLOAD>(INDEX_MAGIC, index)
}

pub fn decode_index(bytes: &[u8]) -> Result<Index, StateError> {
    decode_index_from(&mut std::io::Cursor::new(bytes), bytes.len() as u64)
}

/// Decodes an index of `len` bytes. The header is read first, so a file of another format
/// version is named as such whatever its size.
pub fn decode_index_from<R: Read + Seek>(file: &mut R, len: u64) -> Result<Index, StateError> {
    let index: Index = decode_framed::<_, _, MAX_INDEX_PAYLOAD>(file, len, INDEX_MAGIC, "index")?;
    if index.checkpoints.len() > MAX_CHECKPOINTS {
        return Err(StateError::Corrupt(format!(
            "{} checkpoints, more than any session keeps ({MAX_CHECKPOINTS} at most)",
            index.checkpoints.len()
        )));
    }
    Ok(index)
}

pub fn encode_state(state: &State) -> Result<Vec<u8>, StateError> {
    encode_framed::<_, MAX_PAYLOAD>(STATE_MAGIC, state)
}

pub fn decode_state(bytes: &[u8]) -> Result<State, StateError> {
    decode_state_from(&mut std::io::Cursor::new(bytes), bytes.len() as u64)
}

/// Decodes a state file of `len` bytes from `file`: the checksum is computed over the stream
/// first, so a damaged file of any size costs a read, never its size in memory.
pub fn decode_state_from<R: Read + Seek>(file: &mut R, len: u64) -> Result<State, StateError> {
    decode_framed::<_, _, MAX_PAYLOAD>(file, len, STATE_MAGIC, "state")
}

fn encode_framed<T: Serialize, const LIMIT: usize>(
    magic: &[u8; 8],
    value: &T,
) -> Result<Vec<u8>, StateError> {
    let payload = bincode::serde::encode_to_vec(value, config::<LIMIT>())
        .map_err(|e| StateError::Corrupt(e.to_string()))?;
    Ok(frame(magic, payload))
}

fn decode_framed<R: Read + Seek, T: DeserializeOwned, const LIMIT: usize>(
    file: &mut R,
    len: u64,
    magic: &[u8; 8],
    what: &str,
) -> Result<T, StateError> {
    let crc = read_header(file, magic)?;
    let payload_len = len.saturating_sub(HEADER as u64);
    if payload_len > LIMIT as u64 {
        return Err(StateError::Corrupt(format!(
            "{what} of {payload_len} bytes, more than any ({LIMIT} at most)"
        )));
    }
    decode_payload::<_, _, LIMIT>(file, crc, payload_len)
}

/// Decodes a state file that must be the one an index names by its CRC: another file (valid,
/// but not that one) is refused from its header, before the rest is read.
pub fn decode_state_expecting<R: Read + Seek>(
    file: &mut R,
    len: u64,
    crc: u32,
) -> Result<State, StateError> {
    let found = read_header(file, STATE_MAGIC)?;
    if found != crc {
        return Err(StateError::Corrupt(
            "not the state the index names (another checksum)".into(),
        ));
    }
    file.seek(SeekFrom::Start(0)).map_err(unreadable)?;
    decode_state_from(file, len)
}

/// Checks the magic and version and returns the header's CRC.
fn read_header<R: Read>(file: &mut R, magic: &[u8; 8]) -> Result<u32, StateError> {
    let mut header = [0u8; HEADER];
    let got = read_up_to(file, &mut header).map_err(unreadable)?;
    let header = &header[..got];
    if got < HEADER {
        return Err(if magic.starts_with(header) || header.starts_with(magic) {
            StateError::Truncated
        } else {
            StateError::NotAStateFile
        });
    }
    if &header[..8] != magic {
        return Err(StateError::NotAStateFile);
    }
    let version = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    if version != FORMAT_VERSION {
        return Err(StateError::Version(version));
    }
    Ok(u32::from_le_bytes([
        header[12], header[13], header[14], header[15],
    ]))
}

fn unreadable(e: std::io::Error) -> StateError {
    StateError::Unreadable(e.to_string())
}

fn decode_payload<R: Read + Seek, T: DeserializeOwned, const LIMIT: usize>(
    file: &mut R,
    crc: u32,
    payload_len: u64,
) -> Result<T, StateError> {
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; (payload_len as usize).clamp(1, 1 << 20)];
    let mut hashed = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(unreadable)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        hashed += n as u64;
    }
    if hasher.finalize() != crc || hashed != payload_len {
        return Err(StateError::Corrupt("checksum mismatch".into()));
    }
    file.seek(SeekFrom::Start(HEADER as u64))
        .map_err(unreadable)?;
    let mut payload = std::io::BufReader::new(file.take(payload_len));
    let value: T = bincode::serde::decode_from_std_read(&mut payload, config::<LIMIT>())
        .map_err(|e| StateError::Corrupt(e.to_string()))?;
    if payload.read(&mut [0u8; 1]).map_err(unreadable)? != 0 {
        return Err(StateError::Corrupt("trailing bytes".into()));
    }
    Ok(value)
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

/// True when `at` is a state of this transcript: its prefix of that length has that checksum.
fn belongs(at: &StateRef, transcript: &Transcript) -> bool {
    usize::try_from(at.messages).is_ok_and(|m| {
        m <= transcript.messages.len() && transcript.prefix_checksum(m) == at.transcript_checksum
    })
}

impl StateFile {
    /// The saved states usable with the model of `current` and this transcript. The state
    /// after the saved transcript is used when it belongs to this one (normally all of it, or
    /// a prefix when a save was cut short between the transcript and the state); otherwise the
    /// latest kept checkpoint that does, so only the turns after it are fed again. A checkpoint
    /// of another shape or transcript is left out alone.
    pub fn check(
        self,
        current: Fingerprint,
        transcript: &Transcript,
    ) -> Result<Checked, StateError> {
        if self.fingerprint != current {
            return Err(StateError::ForeignModel {
                saved: self.fingerprint,
                current,
            });
        }
        if !self.state.state.fits(&current) {
            return Err(StateError::WrongShape);
        }
        let mut dropped = self.dropped;
        let mut checkpoints = Vec::with_capacity(self.checkpoints.len());
        for c in self.checkpoints {
            if !c.state.fits(&current) {
                dropped.push(format!("{}: {}", c.at.file_name(), StateError::WrongShape));
            } else if !belongs(&c.at, transcript) {
                dropped.push(format!("{}: {}", c.at.file_name(), StateError::Stale));
            } else {
                checkpoints.push(c);
            }
        }
        let main = if belongs(&self.state.at, transcript) {
            self.state
        } else {
            // The newest checkpoint still on this transcript's path takes the main state's place.
            let newest = checkpoints
                .iter()
                .enumerate()
                .max_by_key(|(_, c)| c.at.messages)
                .map(|(i, _)| i)
                .ok_or(StateError::Stale)?;
            checkpoints.remove(newest)
        };
        checkpoints.retain(|c| c.at.messages < main.at.messages);
        checkpoints.sort_by_key(|c| c.at.messages);
        let stored = Index {
            fingerprint: current,
            state: main.at,
            checkpoints: checkpoints.iter().map(|c| c.at).collect(),
        };
        let covered = main.at.messages as usize;
        Ok(Checked {
            saved: SavedState {
                tokens: main.at.tokens as usize,
                state: main.state,
                checkpoints: checkpoints
                    .into_iter()
                    .map(|c| {
                        TurnCheckpoint::before_user(
                            c.at.messages as usize,
                            c.at.tokens as usize,
                            c.state,
                        )
                    })
                    .collect(),
            },
            covered,
            stored,
            dropped,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Config, Generation};

    fn fingerprint() -> Fingerprint {
        Fingerprint {
            generation: Generation::Rwkv4,
            layers: 2,
            hidden: 4,
            attention: 4,
            head_size: 0,
            vocab: 10,
            weights: 7,
        }
    }

    fn state() -> State {
        State::new(&Config::new(10, 4, 2))
    }

    fn at(messages: u64, transcript_checksum: u32) -> StateRef {
        StateRef {
            messages,
            transcript_checksum,
            tokens: messages * 3,
            len: 0,
            crc: 0,
        }
    }

    fn sample_index() -> Index {
        Index {
            fingerprint: fingerprint(),
            state: at(4, 42),
            checkpoints: vec![at(0, 1), at(2, 2)],
        }
    }

    #[test]
    fn round_trip() {
        let index = sample_index();
        assert_eq!(decode_index(&encode_index(&index).unwrap()).unwrap(), index);
        let state = state();
        assert_eq!(decode_state(&encode_state(&state).unwrap()).unwrap(), state);
    }

    #[test]
    fn damage_is_named() {
        let bytes = encode_state(&state()).unwrap();
        assert_eq!(
            decode_state(&bytes[..bytes.len() - 3]),
            Err(StateError::Corrupt("checksum mismatch".into()))
        );
        assert_eq!(decode_state(&bytes[..5]), Err(StateError::Truncated));
        assert_eq!(
            decode_state(b"garbage that is long enough"),
            Err(StateError::NotAStateFile)
        );
        let mut flipped = bytes.clone();
        flipped[40] ^= 0xff;
        assert!(matches!(
            decode_state(&flipped),
            Err(StateError::Corrupt(_))
        ));
        let mut newer = bytes.clone();
        newer[8] = 9;
        assert_eq!(decode_state(&newer), Err(StateError::Version(9)));
        // An index is not a state file, nor the other way round.
        let index = encode_index(&sample_index()).unwrap();
        assert_eq!(decode_state(&index), Err(StateError::NotAStateFile));
        assert_eq!(decode_index(&bytes), Err(StateError::NotAStateFile));
    }

    #[test]
    fn an_older_state_file_is_named_as_older_whatever_its_size() {
        // A version 1 state.bin held every state inline: often more than an index may be.
        let mut old = INDEX_MAGIC.to_vec();
        old.extend_from_slice(&1u32.to_le_bytes());
        old.extend_from_slice(&0u32.to_le_bytes());
        old.resize(HEADER + MAX_INDEX_PAYLOAD + 10, 7);
        let err = decode_index(&old).unwrap_err();
        assert_eq!(err, StateError::Version(1));
        assert!(err.to_string().contains("older rwkv-chat"), "{err}");
    }

    #[test]
    fn a_valid_checksum_over_a_huge_length_claim_is_refused_without_allocating() {
        // A payload claiming a vector of 2^60 floats, with a correct checksum.
        let mut payload = vec![0u8; 0];
        payload.push(0xff);
        payload.extend_from_slice(&(1u64 << 60).to_le_bytes());
        for magic in [STATE_MAGIC, INDEX_MAGIC] {
            let bytes = frame(magic, payload.clone());
            assert!(matches!(
                decode_state(&bytes),
                Err(StateError::Corrupt(_)) | Err(StateError::NotAStateFile)
            ));
            assert!(matches!(
                decode_index(&bytes),
                Err(StateError::Corrupt(_)) | Err(StateError::NotAStateFile)
            ));
        }
    }

    #[test]
    fn state_file_names_are_recognised_and_nothing_else() {
        let name = state_file_name(12, 0xdead_beef);
        assert_eq!(name, "after-12-deadbeef.state");
        assert!(is_state_file_name(&name));
        for other in [
            "state.bin",
            "session.json",
            "after--deadbeef.state",
            "after-12-deadbee.state",
            "after-12-deadbeefx.state",
            "after-1a-deadbeef.state",
            ".after-12-deadbeef.state.9.tmp",
            "lock",
        ] {
            assert!(!is_state_file_name(other), "{other}");
        }
    }

    fn stored(at: StateRef) -> StoredState {
        StoredState { at, state: state() }
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
        let file = StateFile {
            fingerprint: fingerprint(),
            state: stored(at(2, transcript.checksum())),
            checkpoints: vec![stored(at(0, transcript.prefix_checksum(0)))],
            dropped: vec![],
        };
        let mut other = file.fingerprint;
        other.weights = 8;
        assert!(matches!(
            file.clone().check(other, &transcript),
            Err(StateError::ForeignModel { .. })
        ));
        let checked = file.clone().check(file.fingerprint, &transcript).unwrap();
        assert_eq!(checked.covered, 2);
        assert_eq!(checked.saved.checkpoints.len(), 1);
        assert_eq!(checked.stored.refs().count(), 2);
        // A save interrupted after the transcript: the state covers the first two messages.
        transcript.messages.push(message(Role::User, "c"));
        assert_eq!(
            file.clone()
                .check(file.fingerprint, &transcript)
                .unwrap()
                .covered,
            2
        );
        // The last message edited and the save cut short: the checkpoint before it is used.
        transcript.messages = vec![message(Role::User, "edited")];
        let checked = file.clone().check(file.fingerprint, &transcript).unwrap();
        assert_eq!(checked.covered, 0);
        assert!(checked.saved.checkpoints.is_empty());
        // Another transcript altogether.
        transcript.intro = "other".into();
        assert_eq!(
            file.clone()
                .check(file.fingerprint, &transcript)
                .unwrap_err(),
            StateError::Stale
        );
    }
}
