//! The model lives on its own OS thread behind a message protocol, so the UI never blocks on
//! inference (which is CPU-bound and cannot be aborted from outside, only asked to stop).
//!
//! The UI sends [`Command`]s and receives [`Event`]s; the thread owns a `Box<dyn Backend>`
//! that does the real work synchronously. The UI and the backend know nothing else of each
//! other, which is what lets them be written and tested apart (`fake::FakeBackend` in
//! tests). Cancelling is a flag the backend checks between tokens; each generating command
//! carries a request id, and the UI drops events whose id is no longer the one it waits for.

mod chat_backend;
#[cfg(test)]
pub mod fake;

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use crate::hub::HubError;
use crate::sampler::SamplingParams;

pub use crate::chat::{Role, Turn};

/// One message of a conversation as the UI shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: Role,
    pub text: String,
    /// A reply that starts with the model's reasoning (see `chat::thinking`).
    pub reasons: bool,
}

/// A prompt format with its default sampling, as offered in the preset picker.
#[derive(Debug, Clone, PartialEq)]
pub struct PresetInfo {
    pub name: String,
    pub description: String,
    pub sampling: SamplingParams,
    /// Replies start with the model's reasoning (see `chat::thinking`).
    pub think: bool,
}

/// A saved session as listed in the sidebar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// Stable identifier, used in commands.
    pub name: String,
    /// What the user sees; may be changed with [`Command::Rename`].
    pub title: String,
    /// The model the session's state belongs to.
    pub model: String,
    /// Seconds since the Unix epoch.
    pub last_used: u64,
}

/// Everything the UI shows about the open session; sent whenever it changes as a whole.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionView {
    pub name: String,
    pub title: String,
    pub messages: Vec<ChatMessage>,
    pub preset: String,
    pub sampling: SamplingParams,
    /// Tokens the recurrent state has seen.
    pub tokens: usize,
    /// Size of the saved recurrent state.
    pub state_bytes: u64,
    /// History tokens fed through the model again when opening (0 when the saved state was
    /// reused, which is the normal case).
    pub replayed_tokens: usize,
}

/// The loaded model, for the status bar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    pub name: String,
    pub dtype: String,
    pub device: String,
}

/// Progress of a model load (or download); `total` is 0 while unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadProgress {
    pub stage: String,
    pub done: u64,
    pub total: u64,
}

/// Why a reply ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The model ended its turn.
    EndOfTurn,
    /// The reply reached the length limit.
    MaxTokens,
    /// The cancel flag was set; the state holds what was generated so far.
    Cancelled,
}

/// What the backend reports after a reply.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplyStats {
    pub stop: StopReason,
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub prefill_tokens_per_s: f64,
    pub decode_tokens_per_s: f64,
    /// Tokens in the session after the reply.
    pub session_tokens: usize,
    /// Size of the session's recurrent state.
    pub state_bytes: u64,
}

/// UI to worker.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Load a model from a path or a hub id; progress and the result come as events. The
    /// request id lets [`Command::Cancel`] stop a download (the partial file stays to resume).
    LoadModel {
        request_id: u64,
        spec: String,
    },
    ListSessions,
    NewSession {
        /// `None`: the loaded model's own chat format.
        preset: Option<String>,
    },
    OpenSession {
        name: String,
    },
    /// Run one turn on the open session and stream the reply.
    Turn {
        request_id: u64,
        turn: Turn,
    },
    /// Copy the open session, keeping its first `at_turn` exchanges, and open the copy.
    Fork {
        at_turn: usize,
    },
    Rename {
        name: String,
        title: String,
    },
    Delete {
        name: String,
    },
    SetPreset {
        name: String,
    },
    SetSampling(SamplingParams),
    /// Stop the reply or the model load with this id; handled by [`Worker::send`] at once,
    /// not queued.
    Cancel {
        request_id: u64,
    },
    /// Save and stop the thread.
    Shutdown,
}

/// Worker to UI.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// How far the model load `request_id` has come.
    ModelLoading {
        request_id: u64,
        progress: LoadProgress,
    },
    ModelLoaded(ModelInfo),
    Sessions(Vec<SessionInfo>),
    SessionOpened(SessionView),
    Token {
        request_id: u64,
        text: String,
    },
    Finished {
        request_id: u64,
        stats: ReplyStats,
    },
    /// The open session was written to disk.
    Saved {
        name: String,
    },
    /// The model load `request_id` named a hub repo of several models (BlinkDL's raw repos):
    /// nothing was fetched, and `files` are what can be loaded as `{repo}/{file}`.
    ChooseFile {
        request_id: u64,
        repo: String,
        files: Vec<String>,
    },
    /// A command failed; `request_id` is set when it was a generating one or a model load,
    /// so the UI can stop waiting for it.
    Error {
        request_id: Option<u64>,
        message: String,
    },
    Presets(Vec<PresetInfo>),
}

/// The real work behind each command, done synchronously on the worker thread.
///
/// Methods that change the open session save it themselves when they see fit; the worker
/// calls [`Backend::save`] after each reply and on shutdown. Errors are shown to the user as
/// their `{:#}` chain, so give them context.
pub trait Backend: Send {
    /// The presets offered in the picker; asked once when the worker starts.
    fn presets(&self) -> Vec<PresetInfo>;
    /// What went wrong while setting up without stopping it (a preset file skipped), for
    /// the user; asked once when the worker starts.
    fn problems(&self) -> Vec<String> {
        Vec::new()
    }
    /// `spec` is a path or a hub id, as typed in the model picker. Stops early with an error
    /// once `cancel` is set (a download between chunks).
    fn load_model(
        &mut self,
        spec: &str,
        cancel: &AtomicBool,
        progress: &mut dyn FnMut(LoadProgress),
    ) -> anyhow::Result<ModelInfo>;
    /// Newest first.
    fn list_sessions(&mut self) -> anyhow::Result<Vec<SessionInfo>>;
    /// `None`: the chat format of the loaded model's generation.
    fn new_session(&mut self, preset: Option<&str>) -> anyhow::Result<SessionView>;
    fn open_session(&mut self, name: &str) -> anyhow::Result<SessionView>;
    /// Runs `turn` on the open session, streams the reply to `on_token` (text pieces, never
    /// broken UTF-8) and stops early once `cancel` is set, leaving the session consistent.
    fn turn(
        &mut self,
        turn: &Turn,
        cancel: &AtomicBool,
        on_token: &mut dyn FnMut(&str),
    ) -> anyhow::Result<ReplyStats>;
    fn fork(&mut self, at_turn: usize) -> anyhow::Result<SessionView>;
    fn rename(&mut self, name: &str, title: &str) -> anyhow::Result<()>;
    fn delete(&mut self, name: &str) -> anyhow::Result<()>;
    /// Switches the open session's preset (its sampling becomes the preset's default).
    fn set_preset(&mut self, name: &str) -> anyhow::Result<SessionView>;
    fn set_sampling(&mut self, sampling: &SamplingParams) -> anyhow::Result<()>;
    /// Writes the open session; returns its name, or `None` when no session is open.
    fn save(&mut self) -> anyhow::Result<Option<String>>;
}

/// What the TUI passes to [`default_backend`].
#[derive(Debug, Clone, Default)]
pub struct BackendOptions {
    /// Where sessions live; `None` for `$RWKV_CHAT_DATA_DIR` or the platform's data dir.
    pub data_dir: Option<PathBuf>,
    /// Where user presets are (`presets/*.toml`).
    pub config_dir: Option<PathBuf>,
    pub load: crate::model::LoadOptions,
    /// `config.toml`'s `max_reply_tokens`; `None` for the default.
    pub max_reply_tokens: Option<std::num::NonZeroUsize>,
}

/// The backend the app runs with: the chat engine and the session store.
pub fn default_backend(options: &BackendOptions) -> anyhow::Result<Box<dyn Backend>> {
    let data_dir = crate::paths::data_dir(options.data_dir.clone())?;
    let presets = options.config_dir.as_ref().map(|d| d.join("presets"));
    let mut backend = chat_backend::ChatBackend::new(&data_dir, presets, options.load.clone())?;
    if let Some(n) = options.max_reply_tokens {
        backend = backend.max_reply_tokens(n);
    }
    Ok(Box::new(backend))
}

/// Which request may be cancelled; shared by the UI side and the thread under one lock, so a
/// cancel can neither be lost (sent before the request starts) nor hit the next request.
#[derive(Debug, Default)]
struct CancelState {
    /// The generating request now running, 0 when none.
    running: u64,
    /// The highest request id the UI cancelled.
    cancelled: u64,
}

#[derive(Debug, Default)]
struct Cancel {
    state: Mutex<CancelState>,
    flag: AtomicBool,
}

impl Cancel {
    fn lock(&self) -> std::sync::MutexGuard<'_, CancelState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn request(&self, request_id: u64) {
        let mut s = self.lock();
        s.cancelled = s.cancelled.max(request_id);
        if s.running == request_id {
            self.flag.store(true, Ordering::SeqCst);
        }
    }

    fn start(&self, request_id: u64) {
        let mut s = self.lock();
        s.running = request_id;
        self.flag.store(s.cancelled >= request_id, Ordering::SeqCst);
    }

    fn end(&self) {
        self.lock().running = 0;
        self.flag.store(false, Ordering::SeqCst);
    }

    /// Stops whatever runs now and anything queued after it: the app is leaving.
    fn all(&self) {
        self.lock().cancelled = u64::MAX;
        self.flag.store(true, Ordering::SeqCst);
    }
}

/// What lets another thread end the worker: a signal handler when the UI thread is stuck.
#[derive(Clone)]
pub struct Stopper {
    commands: Sender<Command>,
    cancel: Arc<Cancel>,
    done: Arc<Done>,
}

impl Stopper {
    /// Cancels what runs (a reply keeps what it wrote, a download its partial file) and asks
    /// the thread to save and stop; waits up to `limit` for that. True when it stopped.
    pub fn stop(&self, limit: std::time::Duration) -> bool {
        self.cancel.all();
        let _ = self.commands.send(Command::Shutdown);
        self.done.wait(limit)
    }
}

/// Set by the thread as it ends, however it ends.
#[derive(Default)]
struct Done {
    ended: Mutex<bool>,
    changed: std::sync::Condvar,
}

impl Done {
    fn set(&self) {
        *self.ended.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.changed.notify_all();
    }

    fn wait(&self, limit: std::time::Duration) -> bool {
        let ended = self.ended.lock().unwrap_or_else(PoisonError::into_inner);
        let (ended, _) = self
            .changed
            .wait_timeout_while(ended, limit, |ended| !*ended)
            .unwrap_or_else(PoisonError::into_inner);
        *ended
    }
}

/// Marks the thread ended when dropped, so a panic that escapes still counts.
struct EndGuard(Arc<Done>);

impl Drop for EndGuard {
    fn drop(&mut self) {
        self.0.set();
    }
}

/// The UI's handle on the worker thread.
pub struct Worker {
    commands: Sender<Command>,
    events: Receiver<Event>,
    cancel: Arc<Cancel>,
    done: Arc<Done>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts the thread; it first announces the presets.
    pub fn spawn(backend: Box<dyn Backend>) -> std::io::Result<Self> {
        let (commands, command_rx) = mpsc::channel();
        let (event_tx, events) = mpsc::channel();
        let cancel = Arc::new(Cancel::default());
        let done = Arc::new(Done::default());
        let thread_cancel = Arc::clone(&cancel);
        let guard = EndGuard(Arc::clone(&done));
        let thread = std::thread::Builder::new()
            .name("rwkv-worker".into())
            .spawn(move || {
                let _guard = guard;
                run(backend, &command_rx, &event_tx, &thread_cancel);
            })?;
        Ok(Self {
            commands,
            events,
            cancel,
            done,
            thread: Some(thread),
        })
    }

    /// Queues a command; a cancel takes effect at once instead.
    pub fn send(&self, command: Command) {
        if let Command::Cancel { request_id } = command {
            self.cancel.request(request_id);
            return;
        }
        // The thread only stops after Shutdown, so a send error means it is already gone;
        // the UI learns nothing more from it than from the missing events.
        if self.commands.send(command).is_err() {
            tracing::warn!("worker thread is gone");
        }
    }

    /// The next event, without waiting.
    pub fn try_recv(&self) -> Option<Event> {
        self.events.try_recv().ok()
    }

    /// The next event, waiting up to `timeout`.
    pub fn recv_timeout(&self, timeout: std::time::Duration) -> Option<Event> {
        self.events.recv_timeout(timeout).ok()
    }

    /// A handle that can stop the thread from elsewhere (a signal handler).
    pub fn stopper(&self) -> Stopper {
        Stopper {
            commands: self.commands.clone(),
            cancel: Arc::clone(&self.cancel),
            done: Arc::clone(&self.done),
        }
    }

    /// Sends Shutdown and waits for the thread (which saves first).
    pub fn shutdown(mut self) {
        self.send(Command::Shutdown);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("worker thread panicked");
        }
    }

    /// Stops what runs now, lets the thread save, and waits at most `limit` for it: leaving
    /// must not wait for a model load that cannot be interrupted. False when the thread was
    /// still busy (it dies with the process; the session was saved after its last turn).
    pub fn shutdown_within(mut self, limit: std::time::Duration) -> bool {
        let stopped = self.stopper().stop(limit);
        if stopped
            && let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("worker thread panicked");
        }
        stopped
    }
}

fn run(
    mut backend: Box<dyn Backend>,
    commands: &Receiver<Command>,
    events: &Sender<Event>,
    cancel: &Cancel,
) {
    // A closed event channel means the UI is gone; the commands still run so that Shutdown
    // saves, hence send errors are ignored.
    let emit = |event: Event| {
        let _ = events.send(event);
    };
    emit(Event::Presets(backend.presets()));
    let problems = backend.problems();
    if !problems.is_empty() {
        emit(Event::Error {
            request_id: None,
            message: problems.join("; "),
        });
    }
    while let Ok(command) = commands.recv() {
        tracing::debug!(?command, "worker command");
        if command == Command::Shutdown {
            save(backend.as_mut(), &emit);
            return;
        }
        let request_id = match &command {
            Command::Turn { request_id, .. } | Command::LoadModel { request_id, .. } => {
                Some(*request_id)
            }
            _ => None,
        };
        // A bug in the backend must not take the app down with it: the UI is told, the
        // panic is in the log, and the next command is served.
        let handled = std::panic::catch_unwind(AssertUnwindSafe(|| {
            handle(backend.as_mut(), command, &emit, cancel);
        }));
        if let Err(panic) = handled {
            cancel.end();
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            emit(Event::Error {
                request_id,
                message: format!("internal error in the model thread: {what} (see the log)"),
            });
        }
    }
    save(backend.as_mut(), &emit);
}

fn save(backend: &mut dyn Backend, emit: &dyn Fn(Event)) {
    match backend.save() {
        Ok(Some(name)) => emit(Event::Saved { name }),
        Ok(None) => {}
        Err(e) => emit(error(None, &e)),
    }
}

fn error(request_id: Option<u64>, e: &anyhow::Error) -> Event {
    Event::Error {
        request_id,
        message: crate::report::describe(e),
    }
}

/// The repo and its files when a load failed only for naming a repo of several models.
fn several_models(e: &anyhow::Error) -> Option<(String, Vec<String>)> {
    e.chain().find_map(|cause| match cause.downcast_ref() {
        Some(HubError::ChooseFile { repo, files }) => Some((repo.clone(), files.clone())),
        _ => None,
    })
}

fn sessions(backend: &mut dyn Backend, emit: &dyn Fn(Event)) {
    match backend.list_sessions() {
        Ok(list) => emit(Event::Sessions(list)),
        Err(e) => emit(error(None, &e)),
    }
}

fn handle(backend: &mut dyn Backend, command: Command, emit: &dyn Fn(Event), cancel: &Cancel) {
    let opened = |result: anyhow::Result<SessionView>, backend: &mut dyn Backend| {
        match result {
            Ok(view) => emit(Event::SessionOpened(view)),
            Err(e) => emit(error(None, &e)),
        }
        sessions(backend, emit);
    };
    match command {
        Command::LoadModel { request_id, spec } => {
            cancel.start(request_id);
            let mut progress = |progress: LoadProgress| {
                emit(Event::ModelLoading {
                    request_id,
                    progress,
                });
            };
            let result = backend.load_model(&spec, &cancel.flag, &mut progress);
            cancel.end();
            match result {
                Ok(info) => emit(Event::ModelLoaded(info)),
                Err(e) => emit(match several_models(&e) {
                    Some((repo, files)) => Event::ChooseFile {
                        request_id,
                        repo,
                        files,
                    },
                    None => error(Some(request_id), &e),
                }),
            }
        }
        Command::ListSessions => sessions(backend, emit),
        Command::NewSession { preset } => {
            let result = backend.new_session(preset.as_deref());
            opened(result, backend);
        }
        Command::OpenSession { name } => {
            let result = backend.open_session(&name);
            opened(result, backend);
        }
        Command::Fork { at_turn } => {
            let result = backend.fork(at_turn);
            opened(result, backend);
        }
        Command::SetPreset { name } => {
            let result = backend.set_preset(&name);
            opened(result, backend);
        }
        Command::Turn { request_id, turn } => generate(backend, request_id, &turn, emit, cancel),
        Command::Rename { name, title } => {
            if let Err(e) = backend.rename(&name, &title) {
                emit(error(None, &e));
            }
            sessions(backend, emit);
        }
        Command::Delete { name } => {
            if let Err(e) = backend.delete(&name) {
                emit(error(None, &e));
            }
            sessions(backend, emit);
        }
        Command::SetSampling(params) => match backend.set_sampling(&params) {
            Ok(()) => save(backend, emit),
            Err(e) => emit(error(None, &e)),
        },
        // Handled by Worker::send and run; never queued.
        Command::Cancel { .. } | Command::Shutdown => {}
    }
}

fn generate(
    backend: &mut dyn Backend,
    request_id: u64,
    turn: &Turn,
    emit: &dyn Fn(Event),
    cancel: &Cancel,
) {
    cancel.start(request_id);
    let mut on_token = |text: &str| {
        emit(Event::Token {
            request_id,
            text: text.to_owned(),
        });
    };
    let result = backend.turn(turn, &cancel.flag, &mut on_token);
    cancel.end();
    match result {
        Ok(stats) => {
            emit(Event::Finished { request_id, stats });
            save(backend, emit);
            sessions(backend, emit);
        }
        Err(e) => emit(error(Some(request_id), &e)),
    }
}

#[cfg(test)]
mod tests;
