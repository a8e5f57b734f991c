//! One conversation with the model: its transcript, the recurrent state after it, and the
//! states at recent turn boundaries, so that regenerate, edit and fork cost nothing.
//!
//! The transcript is stored as the exact text fed for each message, and each message is
//! tokenized on its own. The state after a reply is always what feeding those texts gives
//! (the reply's sampled tokens are replaced by the canonical tokens of its text where they
//! differ), so a state rebuilt from the transcript is the state that was saved.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use super::preset::Preset;
use super::stop::StopMatcher;
use crate::engine::Engine;
use crate::model::{Fingerprint, State};
use crate::sampler::{Sampler, SamplingParams};

const END_OF_TEXT: u32 = 0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Bot,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: Role,
    /// What is shown: the normalised user message, or the reply without the stop text.
    pub text: String,
    /// The exact text fed to the model for this message, format included.
    pub fed: String,
}

/// Everything needed to rebuild the state from scratch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transcript {
    /// The preset's introduction, as fed when the session started.
    pub intro: String,
    /// User and bot messages, alternating, starting with the user.
    pub messages: Vec<Message>,
}

impl Transcript {
    /// A checksum of what was fed: a saved state is only used with the transcript it belongs to.
    pub fn checksum(&self) -> u32 {
        self.prefix_checksum(self.messages.len())
    }

    /// The checksum of the intro and the first `messages` messages.
    pub fn prefix_checksum(&self, messages: usize) -> u32 {
        let mut crc = crc32fast::Hasher::new();
        for segment in self.segments().take(messages + 1) {
            crc.update(&(segment.len() as u64).to_le_bytes());
            crc.update(segment.as_bytes());
        }
        crc.finalize()
    }

    /// The texts fed, in order; each is tokenized on its own.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.intro.as_str()).chain(self.messages.iter().map(|m| m.fed.as_str()))
    }

    pub fn turns(&self) -> usize {
        self.messages.len().div_ceil(2)
    }

    /// Whether message `i` is a reply that starts with reasoning: the message fed before it
    /// ended inside a `<think` tag. A session's preset may change between replies, so this is
    /// asked per reply.
    pub fn reasons(&self, i: usize) -> bool {
        let before = i.checked_sub(1).and_then(|b| self.messages.get(b));
        self.messages.get(i).is_some_and(|m| m.role == Role::Bot)
            && before.is_some_and(|b| super::thinking::opens(&b.fed))
    }
}

/// What a turn does to a conversation; every path that runs turns carries one of these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Turn {
    /// Add a user message and reply to it.
    Send(String),
    /// Replace the last reply by a new one, from the state before it.
    Regenerate,
    /// Replace the last user message (and its reply) by this one, and reply to it.
    ReplaceLast(String),
}

/// The states around one turn, kept so it can be replayed differently.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnCheckpoint {
    /// Index in the transcript of the user message that starts the turn.
    pub at: usize,
    pub tokens_before_user: usize,
    /// The state after the turn before: what a save writes anyway, so it costs no file of its own.
    pub before_user: State,
    /// Where the reply started. Never saved (it would be a second state per turn on disk): a
    /// checkpoint read from disk gets it back by feeding the user message again, when a
    /// regenerate first needs it.
    pub reply: Option<ReplyStart>,
}

impl TurnCheckpoint {
    /// A checkpoint as a saved session holds it: the state before the user message only.
    pub fn before_user(at: usize, tokens_before_user: usize, before_user: State) -> Self {
        Self {
            at,
            tokens_before_user,
            before_user,
            reply: None,
        }
    }
}

/// The state after a user message and the logits the reply's first token is sampled from.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplyStart {
    pub tokens: usize,
    pub state: State,
    pub logits: Vec<f32>,
}

/// What a conversation is restored from.
#[derive(Debug, Clone, PartialEq)]
pub struct SavedState {
    pub tokens: usize,
    pub state: State,
    pub checkpoints: Vec<TurnCheckpoint>,
}

impl SavedState {
    /// True when the state and every checkpoint have the shapes of the model with
    /// `fingerprint` (see [`State::fits`]).
    pub fn fits(&self, fingerprint: &Fingerprint) -> bool {
        self.state.fits(fingerprint)
            && self.checkpoints.iter().all(|c| {
                c.before_user.fits(fingerprint)
                    && c.reply.as_ref().is_none_or(|r| {
                        r.state.fits(fingerprint) && r.logits.len() == fingerprint.vocab as usize
                    })
            })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// A stop sequence of the preset: the model ended its turn.
    Stop,
    EndOfText,
    MaxTokens,
    Cancelled,
}

impl StopReason {
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Stop => "stop",
            StopReason::EndOfText => "end_of_text",
            StopReason::MaxTokens => "max_tokens",
            StopReason::Cancelled => "cancelled",
        }
    }
}

/// One reply and what it cost.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reply {
    pub text: String,
    pub stop: StopReason,
    /// Tokens of the user's turn fed before the reply.
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub prefill_tok_s: f64,
    pub decode_tok_s: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyOptions {
    pub max_tokens: usize,
    pub seed: u64,
}

impl Default for ReplyOptions {
    fn default() -> Self {
        Self {
            max_tokens: DEFAULT_MAX_REPLY_TOKENS,
            seed: 0,
        }
    }
}

pub const DEFAULT_KEPT_TURNS: usize = 8;

/// Where a reply is cut unless the user says otherwise (`config.toml`'s `max_reply_tokens`,
/// `chat --max-tokens`); they can ask the model to go on.
pub const DEFAULT_MAX_REPLY_TOKENS: usize = 500;

pub struct Conversation {
    pub preset: Preset,
    pub sampling: SamplingParams,
    pub transcript: Transcript,
    pub state: State,
    /// Tokens fed into `state` since the session started.
    pub tokens: usize,
    checkpoints: VecDeque<TurnCheckpoint>,
    /// How many recent turns keep their checkpoints.
    pub kept_turns: usize,
}

impl Conversation {
    /// A new conversation: the preset's introduction is fed once.
    pub fn new(engine: &Engine, preset: Preset) -> anyhow::Result<Self> {
        let transcript = Transcript {
            intro: preset.intro.clone(),
            messages: vec![],
        };
        let sampling = preset.sampling.clone();
        Self::rebuild(engine, preset, sampling, transcript, &mut |_, _| {})
    }

    /// Feeds a whole transcript from an empty state: used when no usable saved state exists.
    /// `progress(done, total)` is called as tokens are fed.
    pub fn rebuild(
        engine: &Engine,
        preset: Preset,
        sampling: SamplingParams,
        transcript: Transcript,
        progress: &mut dyn FnMut(usize, usize),
    ) -> anyhow::Result<Self> {
        let Transcript { intro, messages } = transcript;
        let mut conv = Self::restore(
            preset,
            sampling,
            Transcript {
                intro,
                messages: vec![],
            },
            SavedState {
                tokens: 0,
                state: engine.model.new_state(),
                checkpoints: vec![],
            },
        );
        let intro = engine.tokenizer.encode(&conv.transcript.intro)?;
        conv.feed(engine, &intro)?;
        conv.append(engine, messages, progress)?;
        Ok(conv)
    }

    /// Feeds messages that are in the transcript but not yet in the state (a rebuild, or a
    /// save interrupted between the transcript and the state), keeping turn checkpoints.
    pub fn append(
        &mut self,
        engine: &Engine,
        messages: Vec<Message>,
        progress: &mut dyn FnMut(usize, usize),
    ) -> anyhow::Result<()> {
        let segments: Vec<Vec<u32>> = messages
            .iter()
            .map(|m| engine.tokenizer.encode(&m.fed))
            .collect::<anyhow::Result<_>>()?;
        let total = self.tokens + segments.iter().map(Vec::len).sum::<usize>();
        progress(self.tokens, total);
        for (message, ids) in messages.into_iter().zip(segments) {
            let before = (self.tokens, self.state.clone());
            let logits = self.feed(engine, &ids)?;
            let at = self.transcript.messages.len();
            if message.role == Role::User {
                self.push_checkpoint(TurnCheckpoint {
                    at,
                    tokens_before_user: before.0,
                    before_user: before.1,
                    reply: Some(ReplyStart {
                        tokens: self.tokens,
                        state: self.state.clone(),
                        logits: logits.unwrap_or_default(),
                    }),
                });
            }
            self.transcript.messages.push(message);
            progress(self.tokens, total);
        }
        Ok(())
    }

    /// A conversation from its saved state, with nothing fed through the model.
    pub fn restore(
        preset: Preset,
        sampling: SamplingParams,
        transcript: Transcript,
        saved: SavedState,
    ) -> Self {
        Self {
            preset,
            sampling,
            transcript,
            state: saved.state,
            tokens: saved.tokens,
            checkpoints: saved.checkpoints.into(),
            kept_turns: DEFAULT_KEPT_TURNS,
        }
    }

    pub fn saved_state(&self) -> SavedState {
        SavedState {
            tokens: self.tokens,
            state: self.state.clone(),
            checkpoints: self.checkpoints.iter().cloned().collect(),
        }
    }

    /// The kept turn checkpoints, oldest first.
    pub fn checkpoints(&self) -> impl Iterator<Item = &TurnCheckpoint> {
        self.checkpoints.iter()
    }

    pub fn messages(&self) -> &[Message] {
        &self.transcript.messages
    }

    /// Feeds tokens and returns the logits after the last one (`None` for no tokens).
    fn feed(&mut self, engine: &Engine, ids: &[u32]) -> anyhow::Result<Option<Vec<f32>>> {
        let logits = feed_into(engine, ids, &mut self.state)?;
        self.tokens += ids.len();
        Ok(logits)
    }

    fn push_checkpoint(&mut self, checkpoint: TurnCheckpoint) {
        self.checkpoints.push_back(checkpoint);
        self.prune();
    }

    /// The oldest go first: recent turns are the ones regenerated, edited and forked from.
    fn prune(&mut self) {
        while self.checkpoints.len() > self.kept_turns.max(1) {
            self.checkpoints.pop_front();
        }
    }

    fn checkpoint_at(&self, at: usize) -> Option<&TurnCheckpoint> {
        self.checkpoints.iter().find(|c| c.at == at)
    }

    /// Runs one turn of any kind: the one place that knows every kind, so the worker, the
    /// app and `chat` carry a [`Turn`] and a new kind of turn is a change here only.
    pub fn turn(
        &mut self,
        engine: &Engine,
        turn: &Turn,
        opts: ReplyOptions,
        cancel: &AtomicBool,
        on_text: &mut dyn FnMut(&str),
    ) -> anyhow::Result<Reply> {
        match turn {
            Turn::Send(text) => self.send(engine, text, opts, cancel, on_text),
            Turn::Regenerate => self.regenerate(engine, opts, cancel, on_text),
            Turn::ReplaceLast(text) => self.edit_last(engine, text, opts, cancel, on_text),
        }
    }

    /// Sends a user message and streams the reply through `on_text`.
    pub fn send(
        &mut self,
        engine: &Engine,
        message: &str,
        opts: ReplyOptions,
        cancel: &AtomicBool,
        on_text: &mut dyn FnMut(&str),
    ) -> anyhow::Result<Reply> {
        if self
            .transcript
            .messages
            .last()
            .is_some_and(|m| m.role == Role::User)
        {
            bail!("the last message has no reply yet");
        }
        let text = self.preset.normalize(message);
        if text.is_empty() {
            bail!("the message is empty");
        }
        let fed = self.preset.user_turn(&text);
        let ids = engine.tokenizer.encode(&fed)?;
        let (tokens_before_user, before_user) = (self.tokens, self.state.clone());
        let started = Instant::now();
        let logits = match self.feed(engine, &ids) {
            Ok(logits) => logits,
            Err(e) => {
                self.state = before_user;
                return Err(e);
            }
        };
        let prefill_s = started.elapsed().as_secs_f64();
        let at = self.transcript.messages.len();
        self.transcript.messages.push(Message {
            role: Role::User,
            text,
            fed,
        });
        let checkpoint = TurnCheckpoint {
            at,
            tokens_before_user,
            before_user,
            reply: Some(ReplyStart {
                tokens: self.tokens,
                state: self.state.clone(),
                // A format with no text around messages and an empty message has no logits
                // yet; the message was refused above, so `ids` is never empty here.
                logits: logits.context("the message produced no tokens")?,
            }),
        };
        self.push_checkpoint(checkpoint);
        let mut reply = match self.reply(engine, opts, cancel, on_text) {
            Ok(reply) => reply,
            Err(e) => {
                // Back to before the message, as if it had not been sent.
                self.transcript.messages.pop();
                if let Some(c) = self.checkpoints.pop_back() {
                    self.state = c.before_user;
                    self.tokens = c.tokens_before_user;
                }
                return Err(e);
            }
        };
        reply.prompt_tokens = ids.len();
        reply.prefill_tok_s = rate(ids.len(), prefill_s);
        Ok(reply)
    }

    /// A new reply to the last message, from the state before the old one.
    pub fn regenerate(
        &mut self,
        engine: &Engine,
        opts: ReplyOptions,
        cancel: &AtomicBool,
        on_text: &mut dyn FnMut(&str),
    ) -> anyhow::Result<Reply> {
        let n = self.transcript.messages.len();
        if n < 2 || self.transcript.messages[n - 1].role != Role::Bot {
            bail!("there is no reply to regenerate");
        }
        let start = self.reply_start(engine, n - 2)?;
        let old = self.transcript.messages.pop();
        self.state = start.state;
        self.tokens = start.tokens;
        let result = self.reply(engine, opts, cancel, on_text);
        if let (Err(_), Some(old)) = (&result, old) {
            // Keep the old reply; the state was rewound to before it, so feed it again.
            if self.settle_reply(engine, &old.fed, &[]).is_ok() {
                self.transcript.messages.push(old);
            }
        }
        result
    }

    /// Replaces the last user message (and its reply) and replies to the new text.
    pub fn edit_last(
        &mut self,
        engine: &Engine,
        message: &str,
        opts: ReplyOptions,
        cancel: &AtomicBool,
        on_text: &mut dyn FnMut(&str),
    ) -> anyhow::Result<Reply> {
        let at = self
            .transcript
            .messages
            .iter()
            .rposition(|m| m.role == Role::User)
            .context("there is no message to edit")?;
        if self.preset.normalize(message).is_empty() {
            bail!("the message is empty");
        }
        let checkpoint = match self.checkpoint_at(at) {
            Some(c) => c.clone(),
            None => {
                let (tokens, state) = self.replay_to(engine, at)?;
                TurnCheckpoint::before_user(at, tokens, state)
            }
        };
        let removed = self.transcript.messages.split_off(at);
        let (state, tokens) = (
            std::mem::replace(&mut self.state, checkpoint.before_user.clone()),
            self.tokens,
        );
        self.tokens = checkpoint.tokens_before_user;
        self.checkpoints.retain(|c| c.at < at);
        let result = self.send(engine, message, opts, cancel, on_text);
        if result.is_err() {
            // Nothing lost: the old turn comes back as it was.
            self.transcript.messages.truncate(at);
            self.transcript.messages.extend(removed);
            self.state = state;
            self.tokens = tokens;
            self.push_checkpoint(checkpoint);
        }
        result
    }

    /// A copy that keeps the first `turns` turns, from the state kept at that boundary.
    pub fn fork(&self, turns: usize) -> anyhow::Result<Conversation> {
        let cut = turns * 2;
        if cut > self.transcript.messages.len() {
            bail!("the session has only {} turn(s)", self.transcript.turns());
        }
        let (state, tokens) = if cut == self.transcript.messages.len() {
            (self.state.clone(), self.tokens)
        } else {
            let c = self.checkpoint_at(cut).with_context(|| {
                format!("the state after turn {turns} is no longer kept; rebuild the fork from its transcript")
            })?;
            (c.before_user.clone(), c.tokens_before_user)
        };
        let mut transcript = self.transcript.clone();
        transcript.messages.truncate(cut);
        Ok(Conversation {
            preset: self.preset.clone(),
            sampling: self.sampling.clone(),
            transcript,
            state,
            tokens,
            checkpoints: self
                .checkpoints
                .iter()
                .filter(|c| c.at < cut)
                .cloned()
                .collect(),
            kept_turns: self.kept_turns,
        })
    }

    /// Generates a reply to the user message at the end of the transcript, from the last
    /// checkpoint's state and logits, then leaves the state as feeding the reply's text gives.
    fn reply(
        &mut self,
        engine: &Engine,
        opts: ReplyOptions,
        cancel: &AtomicBool,
        on_text: &mut dyn FnMut(&str),
    ) -> anyhow::Result<Reply> {
        let checkpoint = self
            .checkpoints
            .back()
            .filter(|c| c.at + 1 == self.transcript.messages.len())
            .context("no state to reply from")?;
        let mut logits = checkpoint
            .reply
            .as_ref()
            .context("no state to reply from")?
            .logits
            .clone();
        let model = &engine.model;
        let mut sampler = Sampler::new(
            self.sampling.clone(),
            opts.seed,
            self.preset.banned_tokens.clone(),
        );
        let mut decoder = engine.tokenizer.stream();
        let mut matcher = StopMatcher::new(&self.preset.stop);
        let mut fed_ids: Vec<u32> = Vec::new();
        let mut generated = 0;
        let started = Instant::now();
        let stop = loop {
            if cancel.load(Ordering::Relaxed) {
                break StopReason::Cancelled;
            }
            if generated >= opts.max_tokens {
                break StopReason::MaxTokens;
            }
            let id = sampler.sample(&mut logits);
            if id == END_OF_TEXT {
                break StopReason::EndOfText;
            }
            generated += 1;
            if matcher.push(&decoder.push(id), on_text) {
                break StopReason::Stop;
            }
            logits = match model.forward(&[id], &mut self.state) {
                Ok(l) => l.to_vec1::<f32>()?,
                Err(e) => {
                    self.rewind_to_last_checkpoint();
                    return Err(e.into());
                }
            };
            fed_ids.push(id);
        };
        let decode_s = started.elapsed().as_secs_f64();
        if stop != StopReason::Stop {
            matcher.push(&decoder.finish(), on_text);
        }
        let text = matcher.finish(on_text);
        let fed = self.preset.bot_turn(&text);
        self.settle_reply(engine, &fed, &fed_ids)?;
        self.transcript.messages.push(Message {
            role: Role::Bot,
            text: text.clone(),
            fed,
        });
        Ok(Reply {
            text,
            stop,
            prompt_tokens: 0,
            generated_tokens: generated,
            prefill_tok_s: 0.0,
            decode_tok_s: rate(generated, decode_s),
        })
    }

    /// Makes the state what feeding `fed` after the user turn gives. Usually the sampled tokens
    /// are the start of its tokenization and only the closing tokens are fed; otherwise the
    /// reply is fed again from the checkpoint.
    fn settle_reply(&mut self, engine: &Engine, fed: &str, fed_ids: &[u32]) -> anyhow::Result<()> {
        let canonical = engine.tokenizer.encode(fed)?;
        let result = if canonical.starts_with(fed_ids) {
            self.tokens += fed_ids.len();
            self.feed(engine, &canonical[fed_ids.len()..]).map(drop)
        } else {
            self.rewind_to_last_checkpoint();
            self.feed(engine, &canonical).map(drop)
        };
        if result.is_err() {
            self.rewind_to_last_checkpoint();
        }
        result
    }

    fn rewind_to_last_checkpoint(&mut self) {
        if let Some(r) = self.checkpoints.back().and_then(|c| c.reply.as_ref()) {
            self.state = r.state.clone();
            self.tokens = r.tokens;
        }
    }

    /// Where the reply to the user message at `at` starts, made whole when only part of it is
    /// kept: a checkpoint read from disk has the state before the message (the message is fed
    /// again), and a turn whose checkpoint was lost (a damaged file) is replayed from text.
    fn reply_start(&mut self, engine: &Engine, at: usize) -> anyhow::Result<ReplyStart> {
        if let Some(start) = self.checkpoint_at(at).and_then(|c| c.reply.clone()) {
            return Ok(start);
        }
        let (tokens_before_user, before_user) = match self.checkpoint_at(at) {
            Some(c) => (c.tokens_before_user, c.before_user.clone()),
            None => self.replay_to(engine, at)?,
        };
        let ids = engine.tokenizer.encode(&self.transcript.messages[at].fed)?;
        let mut state = before_user.clone();
        let logits =
            feed_into(engine, &ids, &mut state)?.context("the message produced no tokens")?;
        let start = ReplyStart {
            tokens: tokens_before_user + ids.len(),
            state,
            logits,
        };
        let checkpoint = TurnCheckpoint {
            at,
            tokens_before_user,
            before_user,
            reply: Some(start.clone()),
        };
        self.checkpoints.retain(|c| c.at != at);
        let later = self.checkpoints.iter().position(|c| c.at > at);
        self.checkpoints
            .insert(later.unwrap_or(self.checkpoints.len()), checkpoint);
        self.prune();
        Ok(start)
    }

    /// The state before message `at` and the tokens fed to reach it, from the nearest kept
    /// checkpoint before it (or the start) by feeding the transcript's texts in between.
    fn replay_to(&self, engine: &Engine, at: usize) -> anyhow::Result<(usize, State)> {
        let nearest = self
            .checkpoints
            .iter()
            .filter(|c| c.at <= at)
            .max_by_key(|c| c.at);
        let (mut tokens, mut state, from) = match nearest {
            Some(c) => (c.tokens_before_user, c.before_user.clone(), c.at),
            None => {
                let mut state = engine.model.new_state();
                let intro = engine.tokenizer.encode(&self.transcript.intro)?;
                feed_into(engine, &intro, &mut state)?;
                (intro.len(), state, 0)
            }
        };
        for message in &self.transcript.messages[from..at] {
            let ids = engine.tokenizer.encode(&message.fed)?;
            feed_into(engine, &ids, &mut state)?;
            tokens += ids.len();
        }
        Ok((tokens, state))
    }
}

/// Feeds tokens into `state` and returns the logits after the last one (`None` for no tokens).
fn feed_into(engine: &Engine, ids: &[u32], state: &mut State) -> anyhow::Result<Option<Vec<f32>>> {
    if ids.is_empty() {
        return Ok(None);
    }
    Ok(Some(engine.model.forward(ids, state)?.to_vec1::<f32>()?))
}

fn rate(tokens: usize, seconds: f64) -> f64 {
    if seconds > 0.0 {
        tokens as f64 / seconds
    } else {
        0.0
    }
}
