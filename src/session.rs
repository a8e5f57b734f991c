//! An open session: a conversation tied to its place in the store, saved after every turn.
//! This is what the command line and the TUI's worker both drive.

use anyhow::Context;

use crate::chat::{Conversation, Preset, Reply};
use crate::engine::Engine;
use crate::model::Fingerprint;
use crate::store::{
    Checked, Index, SaveStats, SessionFile, SessionLock, StateError, StatePoint, StateSave, Store,
    StoreError,
};

/// What to do when a session's saved state cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rebuild {
    /// Refuse with [`OpenError::NeedsRebuild`]; the caller asks the user.
    Ask,
    /// Feed the transcript through the model again.
    Allow,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(
        "session `{name}`: {reason}; its transcript is intact and the state can be rebuilt from it \
         ({tokens} tokens to feed)"
    )]
    NeedsRebuild {
        name: String,
        reason: StateError,
        tokens: usize,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

pub struct OpenSession {
    pub name: String,
    pub file: SessionFile,
    pub conversation: Conversation,
    /// History tokens fed through the model to open the session: 0 on a normal resume.
    pub replayed_tokens: usize,
    /// What the last save wrote.
    pub last_save: SaveStats,
    /// The state files on disk, as the last load or save verified them: a save writes only the
    /// states they do not hold.
    stored: Option<Index>,
    _lock: SessionLock,
}

impl OpenSession {
    /// Starts a new session (the preset's introduction is fed) and saves it.
    pub fn create(
        store: &Store,
        engine: &Engine,
        name: &str,
        preset: Preset,
        model_label: Option<String>,
    ) -> anyhow::Result<Self> {
        if store.exists(name)? {
            return Err(StoreError::Exists(name.to_owned()).into());
        }
        let lock = store.lock(name)?;
        let conversation = Conversation::new(engine, preset)?;
        let mut file = SessionFile::new(
            conversation.preset.clone(),
            conversation.sampling.clone(),
            conversation.transcript.clone(),
        );
        file.model = model_label;
        let mut session = Self {
            name: name.to_owned(),
            file,
            conversation,
            replayed_tokens: 0,
            last_save: SaveStats::default(),
            stored: None,
            _lock: lock,
        };
        session.save(store, engine)?;
        Ok(session)
    }

    /// Opens a saved session from its state, or rebuilds the state from the transcript when
    /// `rebuild` allows it; `progress(done, total)` reports the rebuild.
    pub fn open(
        store: &Store,
        engine: &Engine,
        name: &str,
        rebuild: Rebuild,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self, OpenError> {
        let lock = store.lock(name)?;
        let file = store.load(name)?;
        let checked = match store.load_state(name) {
            Ok(state) => state.check(engine.model.fingerprint(), &file.transcript),
            Err(StoreError::State { source, .. }) => Err(source),
            Err(e) => return Err(e.into()),
        };
        let mut stored = None;
        let (conversation, replayed_tokens) = match checked {
            Ok(Checked {
                saved,
                covered,
                stored: on_disk,
                dropped,
            }) => {
                for problem in dropped {
                    // Only that turn's checkpoint is lost: regenerating it replays its text.
                    tracing::warn!("session {name}: a turn checkpoint was left out: {problem}");
                }
                stored = Some(on_disk);
                let mut transcript = file.transcript.clone();
                let missing = transcript.messages.split_off(covered);
                let mut conv = Conversation::restore(
                    file.preset.clone(),
                    file.sampling.clone(),
                    transcript,
                    saved,
                );
                // Only a turn whose save was cut short is fed again.
                let before = conv.tokens;
                // Appending reports progress even for nothing, which would read as a rebuild.
                if !missing.is_empty() {
                    conv.append(engine, missing, progress)?;
                }
                let replayed = conv.tokens - before;
                (conv, replayed)
            }
            Err(reason) if rebuild == Rebuild::Ask => {
                let tokens = file
                    .transcript
                    .segments()
                    .map(|s| engine.tokenizer.encode(s).map(|ids| ids.len()))
                    .sum::<anyhow::Result<usize>>()?;
                return Err(OpenError::NeedsRebuild {
                    name: name.to_owned(),
                    reason,
                    tokens,
                });
            }
            Err(reason) => {
                tracing::info!("session {name}: rebuilding the state ({reason})");
                let conv = Conversation::rebuild(
                    engine,
                    file.preset.clone(),
                    file.sampling.clone(),
                    file.transcript.clone(),
                    progress,
                )?;
                let tokens = conv.tokens;
                (conv, tokens)
            }
        };
        let mut session = Self {
            name: name.to_owned(),
            file,
            conversation,
            replayed_tokens,
            last_save: SaveStats::default(),
            stored,
            _lock: lock,
        };
        if replayed_tokens > 0 {
            session.save(store, engine)?;
        }
        Ok(session)
    }

    /// Writes the transcript and the state. Called after every turn.
    pub fn save(&mut self, store: &Store, engine: &Engine) -> anyhow::Result<()> {
        let conv = &self.conversation;
        self.file.transcript = conv.transcript.clone();
        self.file.preset = conv.preset.clone();
        self.file.sampling = conv.sampling.clone();
        self.file.fingerprint = Some(engine.model.fingerprint());
        self.file.updated = crate::store::unix_now();
        let state = state_save(engine.model.fingerprint(), conv, self.stored.as_ref());
        let saved = store
            .save(&self.name, &self.file, Some(&state))
            .with_context(|| format!("cannot save session `{}`", self.name))?;
        self.last_save = saved.stats;
        self.stored = saved.stored;
        Ok(())
    }

    /// Runs one turn on the conversation (send, regenerate, edit) and saves the session after
    /// it, so a reply is on disk before it is reported.
    pub fn turn(
        &mut self,
        store: &Store,
        engine: &Engine,
        run: impl FnOnce(&mut Conversation, &Engine) -> anyhow::Result<Reply>,
    ) -> anyhow::Result<Reply> {
        let reply = run(&mut self.conversation, engine)?;
        self.save(store, engine)?;
        Ok(reply)
    }
}

/// The states a save of `conv` keeps: the state after its transcript and the state before each
/// kept turn (the rest of a checkpoint is made again when needed, see `TurnCheckpoint::reply`).
fn state_save<'a>(
    fingerprint: Fingerprint,
    conv: &'a Conversation,
    stored: Option<&'a Index>,
) -> StateSave<'a> {
    StateSave {
        fingerprint,
        state: StatePoint {
            messages: conv.transcript.messages.len(),
            tokens: conv.tokens,
            state: &conv.state,
        },
        checkpoints: conv
            .checkpoints()
            .map(|c| StatePoint {
                messages: c.at,
                tokens: c.tokens_before_user,
                state: &c.before_user,
            })
            .collect(),
        stored,
    }
}

/// Copies the first `turns` turns of a session (all when `None`) into a new one, with the
/// state kept at that turn when there is one; without, the fork rebuilds on first open. Needs
/// no model.
pub fn fork(store: &Store, name: &str, turns: Option<usize>, new: &str) -> anyhow::Result<()> {
    if store.exists(new)? {
        return Err(StoreError::Exists(new.to_owned()).into());
    }
    let file = store.load(name)?;
    let turns = turns.unwrap_or(file.transcript.turns());
    if turns > file.transcript.turns() {
        anyhow::bail!(
            "session `{name}` has only {} turn(s)",
            file.transcript.turns()
        );
    }
    let _lock = store.lock(new)?;
    let state = store.load_state(name).ok().and_then(|state| {
        let fingerprint = state.fingerprint;
        let checked = state.check(fingerprint, &file.transcript).ok()?;
        let mut transcript = file.transcript.clone();
        transcript.messages.truncate(checked.covered);
        let conv = Conversation::restore(
            file.preset.clone(),
            file.sampling.clone(),
            transcript,
            checked.saved,
        );
        Some((fingerprint, conv.fork(turns).ok()?))
    });
    let mut forked = SessionFile::new(
        file.preset.clone(),
        file.sampling.clone(),
        file.transcript.clone(),
    );
    forked.transcript.messages.truncate(turns * 2);
    forked.model = file.model.clone();
    forked.fingerprint = file.fingerprint;
    forked.title = format!("{} (fork)", file.display_title());
    let save = state
        .as_ref()
        .map(|(fingerprint, conv)| state_save(*fingerprint, conv, None));
    store.save(new, &forked, save.as_ref())?;
    Ok(())
}
