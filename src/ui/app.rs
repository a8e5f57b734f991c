//! The app's state and `update`: every key, mouse, paste and worker event goes through one
//! pure function that changes the state and returns what the outside world should do
//! ([`Effect`]: a worker command, a clipboard copy, quitting). No terminal is involved, so
//! each flow is tested by feeding inputs and looking at the state and the effects.

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, MouseEvent, MouseEventKind};

use super::input::TextInput;
use super::keymap::{Action, Context, KeyChord, Keymap};
use super::render;
use super::theme::{ColorDepth, Theme, Themes};
use crate::sampler::SamplingParams;
use crate::text::sanitize;
use crate::worker::{
    ChatMessage, Command, Event, LoadProgress, ModelInfo, PresetInfo, ReplyStats, Role,
    SessionInfo, SessionView, StopReason, Turn,
};

/// Seconds a notice stays up.
const NOTICE_SECS: u64 = 8;
/// Lines a mouse wheel step scrolls.
const WHEEL_LINES: usize = 3;

/// Everything `update` reacts to.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Key(KeyEvent),
    Mouse(MouseEvent),
    Paste(String),
    Resize(u16, u16),
    Worker(Event),
    /// The clock, in seconds since the Unix epoch (notices expire, "last used" ages).
    Tick(u64),
}

/// What `update` asks of the world.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Command(Command),
    /// Put this text on the clipboard (OSC 52).
    Copy(String),
    /// Write this theme into the config file, so it is the theme of the next start too.
    SaveTheme(String),
    /// Write the recently used models (most recent first), for the model picker of the next
    /// start.
    SaveRecent(Vec<String>),
    /// Look again at which models are on disk, into [`App::local`].
    RefreshLocal,
    /// Save (shutdown the worker) and leave.
    Quit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Done,
    Streaming,
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Unique in the app's life, so the wrapped lines kept for it are found again.
    pub id: u64,
    pub role: Role,
    /// Already sanitized: safe to draw.
    pub text: String,
    pub status: Status,
    /// A reply that starts with the model's reasoning, shown folded (see `chat::thinking`).
    pub reasons: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub text: String,
    pub error: bool,
    pub at: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Focus {
    Input,
    Sidebar,
}

/// Where the chat view is: following the newest line, or held at a line from the top.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scroll {
    Follow,
    Top(usize),
}

/// The open session, for the title and the status bar.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionMeta {
    pub name: String,
    pub title: String,
    pub preset: String,
    pub sampling: SamplingParams,
    pub tokens: usize,
    pub state_bytes: u64,
    pub replayed_tokens: usize,
}

/// One adjustable setting of the sampling panel.
pub struct Setting {
    pub name: &'static str,
    pub step: f32,
    pub min: f32,
    pub max: f32,
    get: fn(&SamplingParams) -> f32,
    set: fn(&mut SamplingParams, f32),
}

impl Setting {
    pub fn get(&self, p: &SamplingParams) -> f32 {
        (self.get)(p)
    }

    /// Formats a value with as many decimals as the step needs.
    pub fn show(&self, p: &SamplingParams) -> String {
        let v = self.get(p);
        match self.step {
            s if s >= 1.0 => format!("{v:.0}"),
            s if s >= 0.01 => format!("{v:.2}"),
            _ => format!("{v:.3}"),
        }
    }

    fn adjust(&self, p: &mut SamplingParams, steps: f32) {
        let v = (self.get(p) + self.step * steps).clamp(self.min, self.max);
        // Rounded to the step so repeated presses do not drift (0.1 + 0.05 + ...).
        let v = (v / self.step).round() * self.step;
        (self.set)(p, v);
    }
}

/// A row of the sampling panel for one `SamplingParams` field.
macro_rules! setting {
    ($field:ident, $step:expr, $min:expr, $max:expr) => {
        Setting {
            name: stringify!($field),
            step: $step,
            min: $min,
            max: $max,
            get: |p| p.$field as f32,
            set: |p, v| p.$field = v as _,
        }
    };
}

pub const SETTINGS: &[Setting] = &[
    setting!(temperature, 0.05, 0.0, 5.0),
    setting!(top_p, 0.05, 0.05, 1.0),
    setting!(top_k, 1.0, 0.0, 500.0),
    setting!(presence_penalty, 0.05, 0.0, 2.0),
    setting!(frequency_penalty, 0.05, 0.0, 2.0),
    setting!(penalty_decay, 0.001, 0.9, 1.0),
];

/// A menu drawn over the chat; it gets the keys while open.
#[derive(Debug, Clone, PartialEq)]
pub enum Overlay {
    Help {
        scroll: usize,
    },
    Palette {
        filter: TextInput,
        selected: usize,
    },
    Models {
        input: TextInput,
        selected: usize,
    },
    Presets {
        selected: usize,
    },
    Sampling {
        selected: usize,
        values: SamplingParams,
    },
    Themes {
        selected: usize,
        /// Restored on Esc, since moving the selection previews.
        previous: usize,
    },
    Rename {
        name: String,
        input: TextInput,
    },
    ConfirmDelete {
        name: String,
        title: String,
    },
    /// Pick the user message after which the copy ends.
    Fork {
        selected: usize,
    },
    /// A model that is not on disk yet: its size is shown and `y` downloads it.
    ConfirmDownload {
        spec: String,
    },
}

/// The request the UI waits for; events of any other id are stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pending {
    pub request_id: u64,
    pub cancelled: bool,
}

/// What the app starts with, from the config and the command line.
#[derive(Debug, Clone)]
pub struct Setup {
    pub keymap: Keymap,
    pub themes: Themes,
    pub theme: String,
    pub depth: ColorDepth,
    pub models: Vec<String>,
    /// The models among `models` already on disk (loading them downloads nothing).
    pub local: Vec<String>,
    /// The models loaded lately, most recent first (see [`super::recent`]).
    pub recent: Vec<String>,
    /// The configured preset of new sessions; `None` follows the model.
    pub preset: Option<String>,
}

pub struct App {
    pub size: (u16, u16),
    pub now: u64,
    pub keymap: Keymap,
    pub themes: Themes,
    pub theme: usize,
    pub depth: ColorDepth,
    /// What the model picker lists: the recent models, then the others of `Setup::models`.
    pub models: Vec<String>,
    /// The models offered besides the recent ones.
    offered: Vec<String>,
    pub local: Vec<String>,
    /// The models loaded lately, most recent first; marked in the picker.
    pub recent: Vec<String>,
    pub default_preset: Option<String>,

    pub messages: Vec<Message>,
    pub pending: Option<Pending>,
    next_request_id: u64,
    pub input: TextInput,
    /// Enter replaces the last message instead of sending a new one.
    pub editing: bool,
    history: Vec<String>,
    history_pos: Option<usize>,
    /// What was being typed before Up went into the history; Down past the end brings it back.
    draft: String,
    pub scroll: Scroll,

    pub sessions: Vec<SessionInfo>,
    pub selected: usize,
    pub sidebar: bool,
    /// Whether the reasoning of a thinking preset's replies is shown whole.
    pub show_thinking: bool,
    pub focus: Focus,
    pub session: Option<SessionMeta>,
    /// Set once the first session list came in and a session was opened from it.
    started: bool,
    /// Set once the first session list came in.
    listed: bool,

    pub model: Option<ModelInfo>,
    pub loading: Option<LoadProgress>,
    /// The model load the UI waits for; its progress and its failure are the status bar's.
    pub loading_request: Option<u64>,
    /// What that load was asked for.
    loading_spec: String,
    /// The last load the UI gave up on: its end (an error saying it was cancelled) is news to
    /// no one.
    cancelled_load: Option<u64>,
    /// Why the last model load failed, until another one starts or succeeds.
    pub load_failed: Option<String>,
    /// The user stopped the last model load, until another one starts or succeeds.
    pub load_cancelled: bool,
    pub presets: Vec<PresetInfo>,
    pub last_stats: Option<ReplyStats>,
    pub saved: bool,
    pub notice: Option<Notice>,
    pub overlay: Option<Overlay>,
    next_message_id: u64,
    /// The chat's wrapped lines, kept between frames; drawing fills it.
    pub chat_cache: std::cell::RefCell<render::ChatCache>,
}

impl App {
    pub fn new(setup: Setup) -> Self {
        let theme = setup.themes.position(&setup.theme).unwrap_or(0);
        Self {
            size: (80, 24),
            now: 0,
            keymap: setup.keymap,
            themes: setup.themes,
            theme,
            depth: setup.depth,
            models: picker_models(&setup.recent, &setup.models),
            offered: setup.models,
            local: setup.local,
            recent: setup.recent,
            default_preset: setup.preset,
            messages: Vec::new(),
            pending: None,
            next_request_id: 1,
            input: TextInput::default(),
            editing: false,
            history: Vec::new(),
            history_pos: None,
            draft: String::new(),
            scroll: Scroll::Follow,
            sessions: Vec::new(),
            selected: 0,
            sidebar: true,
            show_thinking: false,
            focus: Focus::Input,
            session: None,
            started: false,
            listed: false,
            model: None,
            loading: None,
            loading_request: None,
            loading_spec: String::new(),
            cancelled_load: None,
            load_failed: None,
            load_cancelled: false,
            presets: Vec::new(),
            last_stats: None,
            saved: false,
            notice: None,
            overlay: None,
            next_message_id: 0,
            chat_cache: std::cell::RefCell::default(),
        }
    }

    fn message(&mut self, role: Role, text: String, status: Status) -> Message {
        self.next_message_id += 1;
        Message {
            id: self.next_message_id,
            role,
            text,
            status,
            reasons: false,
        }
    }

    /// The theme in use, fitted to the terminal.
    pub fn theme(&self) -> Theme {
        self.themes
            .list
            .get(self.theme)
            .map_or(super::theme::FALLBACK, |(_, t)| *t)
            .fit(self.depth)
    }

    pub fn notify(&mut self, text: impl Into<String>) {
        // An error stays up for its time: the news that follows it ("Loaded …") must not
        // hide why something did not work.
        if self
            .notice
            .as_ref()
            .is_some_and(|n| n.error && self.now.saturating_sub(n.at) < NOTICE_SECS)
        {
            return;
        }
        self.notice = Some(Notice {
            text: text.into(),
            error: false,
            at: self.now,
        });
    }

    pub fn error(&mut self, text: &str) {
        self.notice = Some(Notice {
            text: sanitize(text).into_owned(),
            error: true,
            at: self.now,
        });
    }

    fn request_id(&mut self) -> u64 {
        let id = self.next_request_id;
        self.next_request_id += 1;
        id
    }

    /// The preset of new sessions: the configured one, else (`None`) the chat format of the
    /// loaded model's generation, which the worker picks. The open session's is not inherited:
    /// it may be of a model of another generation.
    fn preset(&self) -> Option<String> {
        self.default_preset.clone()
    }

    /// Whether the open session's preset thinks before it answers.
    pub fn thinking(&self) -> bool {
        let Some(session) = &self.session else {
            return false;
        };
        self.presets
            .iter()
            .any(|p| p.name == session.preset && p.think)
    }

    fn preset_defaults(&self) -> Option<&SamplingParams> {
        let name = self.session.as_ref()?.preset.as_str();
        self.presets
            .iter()
            .find(|p| p.name == name)
            .map(|p| &p.sampling)
    }

    /// The sampling defaults of the open session's preset, for the sampling panel.
    pub fn defaults(&self) -> SamplingParams {
        self.preset_defaults().cloned().unwrap_or_default()
    }

    /// Lists `repo`'s files in the picker, as `{repo}/{file}`, before the other models
    /// offered.
    fn offer_files(&mut self, repo: &str, files: &[String]) {
        // The revision asked for (`REPO@rev`) goes with each file.
        let revision = crate::hub::ModelSpec::parse(&self.loading_spec)
            .and_then(|s| s.revision)
            .map_or_else(String::new, |r| format!("@{r}"));
        let named: Vec<String> = files
            .iter()
            .map(|f| format!("{repo}/{f}{revision}"))
            .collect();
        self.offered = picker_models(&named, &self.offered);
        self.models = picker_models(&self.recent, &self.offered);
    }

    /// Puts `spec` first among the recent models (and so first in the picker).
    fn remember_model(&mut self, spec: &str) {
        self.recent = super::recent::remember(&self.recent, spec);
        self.models = picker_models(&self.recent, &self.offered);
    }
}

/// The picker's list: the recent models first, then the others offered, each once.
fn picker_models(recent: &[String], offered: &[String]) -> Vec<String> {
    let mut models = recent.to_vec();
    for m in offered {
        if !models.contains(m) {
            models.push(m.clone());
        }
    }
    models
}

/// Starts loading `spec`, giving up on a load still running (a download stops between
/// chunks and keeps its partial file).
pub fn load_model(app: &mut App, spec: String) -> Vec<Effect> {
    let mut fx = Vec::new();
    cancel_load(app, &mut fx);
    let request_id = app.request_id();
    app.loading_request = Some(request_id);
    app.loading_spec.clone_from(&spec);
    app.load_failed = None;
    app.load_cancelled = false;
    app.loading = Some(LoadProgress {
        stage: format!("starting {spec}"),
        done: 0,
        total: 0,
    });
    fx.push(Effect::Command(Command::LoadModel { request_id, spec }));
    fx
}

/// Gives up on the model load in flight, if any; true when there was one.
fn cancel_load(app: &mut App, fx: &mut Vec<Effect>) -> bool {
    let Some(request_id) = app.loading_request.take() else {
        return false;
    };
    app.loading = None;
    app.cancelled_load = Some(request_id);
    fx.push(Effect::Command(Command::Cancel { request_id }));
    true
}

/// The user stops the model load (Esc, or the palette): a download stops between chunks and
/// keeps its partial file, which the next load of the model resumes. False when none runs.
fn stop_load(app: &mut App, fx: &mut Vec<Effect>) -> bool {
    if !cancel_load(app, fx) {
        return false;
    }
    app.load_cancelled = true;
    let spec = sanitize(&app.loading_spec).into_owned();
    app.notify(format!(
        "Stopped loading {spec}; a download goes on from where it stopped next time"
    ));
    true
}

/// What to stop before leaving: the reply being written (kept as far as it got) and the
/// model load (a download keeps its partial file for the next start).
pub fn leave(app: &mut App) -> Vec<Effect> {
    let mut fx = Vec::new();
    cancel_pending(app, &mut fx);
    cancel_load(app, &mut fx);
    fx
}

/// Applies one input; the returned effects are for the caller to carry out, in order.
pub fn update(app: &mut App, input: Input) -> Vec<Effect> {
    let mut fx = Vec::new();
    match input {
        Input::Key(key) if key.kind != KeyEventKind::Release => on_key(app, &key, &mut fx),
        Input::Key(_) => {}
        Input::Mouse(m) => on_mouse(app, &m),
        Input::Paste(text) => {
            // Terminals send a pasted line end as CR (tmux, xterm, VTE), some as CRLF.
            let text = text.replace("\r\n", "\n").replace('\r', "\n");
            let text = sanitize(&text);
            match &mut app.overlay {
                Some(Overlay::Models { input, .. } | Overlay::Rename { input, .. }) => {
                    input.insert_str(&text.replace('\n', " "));
                }
                Some(_) => {}
                None => app.input.insert_str(&text),
            }
        }
        Input::Resize(w, h) => app.size = (w, h),
        Input::Worker(event) => on_event(app, event, &mut fx),
        Input::Tick(now) => {
            app.now = now;
            // Why the model failed to load stays up while that is the state of things.
            if app.notice.as_ref().is_some_and(|n| {
                now.saturating_sub(n.at) >= NOTICE_SECS
                    && app.load_failed.as_deref() != Some(n.text.as_str())
            }) {
                app.notice = None;
            }
        }
    }
    fx
}

fn on_event(app: &mut App, event: Event, fx: &mut Vec<Effect>) {
    match event {
        // Progress of a load given up on (still queued when it was stopped) is not shown.
        Event::ModelLoading {
            request_id,
            progress,
        } if app.loading_request == Some(request_id) => app.loading = Some(progress),
        // Progress of a load given up on, or replaced by another.
        Event::ModelLoading { .. } => {}
        Event::ModelLoaded(info) => {
            app.loading = None;
            app.loading_request = None;
            app.load_failed = None;
            app.load_cancelled = false;
            app.notify(format!("Loaded {}", sanitize(&info.name)));
            app.remember_model(&info.name);
            fx.push(Effect::SaveRecent(app.recent.clone()));
            // The load may have downloaded it (or another process changed the cache).
            fx.push(Effect::RefreshLocal);
            app.model = Some(info);
            if app.started {
                // After the first session decision, the newest session is resumed as at a
                // start with `--model`; an open one is asked for again, since its token count
                // and state size are the new model's now.
                let command = match (&app.session, app.sessions.first()) {
                    (Some(open), _) => Command::OpenSession {
                        name: open.name.clone(),
                    },
                    (None, Some(newest)) => Command::OpenSession {
                        name: newest.name.clone(),
                    },
                    (None, None) => Command::NewSession {
                        preset: app.preset(),
                    },
                };
                fx.push(Effect::Command(command));
            } else if app.listed {
                // The first model, chosen after the list came: resume as `--model` does.
                resume(app, fx);
            }
        }
        Event::Sessions(list) => {
            let held = app.sessions.get(app.selected).map(|s| s.name.clone());
            app.sessions = list;
            // Refreshes come after every reply and re-sort after a rename; the selection
            // follows its session, not its row, so the next key acts on the same one.
            let follow = if app.focus == Focus::Sidebar {
                held
            } else {
                app.session.as_ref().map(|s| s.name.clone())
            };
            if let Some(i) =
                follow.and_then(|name| app.sessions.iter().position(|s| s.name == name))
            {
                app.selected = i;
            }
            // The title of a session without one follows its first message.
            if let Some(open) = &mut app.session
                && let Some(listed) = app.sessions.iter().find(|s| s.name == open.name)
            {
                open.title.clone_from(&listed.title);
            }
            app.selected = app.selected.min(app.sessions.len().saturating_sub(1));
            app.listed = true;
            // Without a model no session can open: the first model loaded decides.
            if !app.started && app.model.is_some() {
                resume(app, fx);
            }
        }
        Event::SessionOpened(view) => open_session(app, view),
        Event::Token { request_id, text } => {
            // Tokens of a request the UI no longer waits for (stopped, replaced) are stale.
            if app.pending.is_some_and(|p| p.request_id == request_id)
                && let Some(m) = app.messages.last_mut()
            {
                m.text.push_str(&sanitize(&text));
            }
        }
        Event::Finished { request_id, stats } => {
            if app.pending.is_some_and(|p| p.request_id == request_id) {
                app.pending = None;
                if let Some(m) = app.messages.last_mut() {
                    m.status = if stats.stop == StopReason::Cancelled {
                        Status::Stopped
                    } else {
                        Status::Done
                    };
                }
                if let Some(s) = &mut app.session {
                    s.tokens = stats.session_tokens;
                    s.state_bytes = stats.state_bytes;
                }
                app.saved = false;
                app.last_stats = Some(stats);
            }
        }
        Event::Saved { name } => {
            if app.session.as_ref().is_some_and(|s| s.name == name) {
                app.saved = true;
            }
        }
        // A load that was given up on ends with an error saying so; the user knows already.
        Event::Error {
            request_id,
            message,
        } if request_id.is_some() && request_id == app.cancelled_load => {
            tracing::info!("a model load given up on ended: {message}");
        }
        Event::Error {
            request_id,
            message,
        } => {
            if request_id.is_some() && request_id == app.loading_request {
                app.loading_request = None;
                app.loading = None;
                app.load_failed = Some(sanitize(&message).into_owned());
            }
            if let Some(id) = request_id
                && app.pending.is_some_and(|p| p.request_id == id)
            {
                app.pending = None;
                if app.messages.last().is_some_and(|m| m.text.is_empty()) {
                    app.messages.pop();
                } else if let Some(m) = app.messages.last_mut() {
                    m.status = Status::Stopped;
                }
            }
            app.error(&message);
        }
        Event::Presets(list) => app.presets = list,
        Event::ChooseFile {
            request_id,
            repo,
            files,
        } if app.loading_request == Some(request_id) => {
            app.loading_request = None;
            app.loading = None;
            app.offer_files(&repo, &files);
            app.notify(format!(
                "{} holds {} models; pick one (F3)",
                sanitize(&repo),
                files.len()
            ));
            // The picker again, showing just that repo's files; a menu opened meanwhile stays.
            if matches!(app.overlay, None | Some(Overlay::Models { .. })) {
                app.overlay = Some(Overlay::Models {
                    input: TextInput::with_text(&format!("{repo}/")),
                    selected: 0,
                });
            }
        }
        // The answer to a load given up on, or replaced by another.
        Event::ChooseFile { .. } => {}
    }
}

/// At start: the newest session is opened again, or a first one created.
fn resume(app: &mut App, fx: &mut Vec<Effect>) {
    app.started = true;
    if app.session.is_none() {
        fx.push(Effect::Command(match app.sessions.first() {
            Some(s) => Command::OpenSession {
                name: s.name.clone(),
            },
            None => Command::NewSession {
                preset: app.preset(),
            },
        }));
    }
}

fn open_session(app: &mut App, view: SessionView) {
    let SessionView {
        name,
        title,
        messages,
        preset,
        sampling,
        tokens,
        state_bytes,
        replayed_tokens,
    } = view;
    app.messages = messages
        .into_iter()
        .map(
            |ChatMessage {
                 role,
                 text,
                 reasons,
             }| Message {
                reasons,
                ..app.message(role, sanitize(&text).into_owned(), Status::Done)
            },
        )
        .collect();
    if let Some(i) = app.sessions.iter().position(|s| s.name == name) {
        app.selected = i;
    }
    tracing::info!(session = %name, replayed_tokens, "session opened");
    app.session = Some(SessionMeta {
        name,
        title,
        preset,
        sampling,
        tokens,
        state_bytes,
        replayed_tokens,
    });
    app.pending = None;
    app.editing = false;
    app.scroll = Scroll::Follow;
    app.saved = true;
    app.started = true;
}

fn on_mouse(app: &mut App, m: &MouseEvent) {
    match m.kind {
        MouseEventKind::ScrollUp => scroll_by(app, -(WHEEL_LINES as isize)),
        MouseEventKind::ScrollDown => scroll_by(app, WHEEL_LINES as isize),
        _ => {}
    }
}

/// Lines in the chat and the height of its view.
fn chat_extent(app: &App) -> (usize, usize) {
    let (width, height) = render::chat_view_size(app);
    (render::chat_line_count(app, width), usize::from(height))
}

fn scroll_by(app: &mut App, lines: isize) {
    let (total, height) = chat_extent(app);
    let bottom = total.saturating_sub(height);
    let top = match app.scroll {
        Scroll::Follow => bottom,
        Scroll::Top(t) => t.min(bottom),
    };
    let top = top.saturating_add_signed(lines);
    app.scroll = if top >= bottom {
        Scroll::Follow
    } else {
        Scroll::Top(top)
    };
}

fn page(app: &App) -> isize {
    let (_, height) = render::chat_view_size(app);
    height.saturating_sub(1).max(1) as isize
}

fn on_key(app: &mut App, key: &KeyEvent, fx: &mut Vec<Effect>) {
    let chord = KeyChord::from_event(key);
    // Quitting works in every menu, so nobody is stuck (the model picker opens by itself on
    // the first run). Ctrl+C quits whatever the config says; a quit key that is a plain
    // character is typed into a menu's field instead.
    let quit_key = app.keymap.action(&chord, Context::Global) == Some(Action::Quit);
    if chord == KeyChord::CTRL_C || (quit_key && app.overlay.is_some() && !chord.is_plain_char()) {
        fx.push(Effect::Quit);
        return;
    }
    if app.overlay.is_some() {
        overlay_key(app, key, fx);
        return;
    }
    if app.focus == Focus::Sidebar {
        if let Some(action) = app.keymap.action(&chord, Context::Sidebar) {
            run(app, action, fx);
            return;
        }
        match key.code {
            KeyCode::Up => app.selected = app.selected.saturating_sub(1),
            KeyCode::Down => {
                app.selected = (app.selected + 1).min(app.sessions.len().saturating_sub(1));
            }
            _ => {}
        }
    }
    if let Some(action) = app.keymap.action(&chord, Context::Global) {
        // A bound plain character (like `?`) is typed while a message is being written.
        let typing = chord.is_plain_char() && app.focus == Focus::Input && !app.input.is_empty();
        if !typing {
            run(app, action, fx);
            return;
        }
    }
    if app.focus != Focus::Input {
        return;
    }
    match key.code {
        KeyCode::Up if !app.input.move_line(true) => history(app, true),
        KeyCode::Down if !app.input.move_line(false) => history(app, false),
        KeyCode::Up | KeyCode::Down => {}
        _ => {
            if app.input.handle_key(key) {
                app.history_pos = None;
            }
        }
    }
}

fn history(app: &mut App, back: bool) {
    if app.history.is_empty() {
        return;
    }
    let pos = match (app.history_pos, back) {
        (None, true) => Some(app.history.len() - 1),
        (None, false) => return,
        (Some(p), true) => Some(p.saturating_sub(1)),
        (Some(p), false) if p + 1 < app.history.len() => Some(p + 1),
        (Some(_), false) => None,
    };
    if app.history_pos.is_none() {
        app.draft = app.input.text();
    }
    app.history_pos = pos;
    let text = pos
        .map_or(app.draft.as_str(), |p| app.history[p].as_str())
        .to_owned();
    app.input.set(&text);
}

fn last_text(app: &App, role: Role) -> Option<String> {
    app.messages
        .iter()
        .rev()
        .find(|m| m.role == role)
        .map(|m| m.text.clone())
}

fn busy(app: &mut App) -> bool {
    if app.pending.is_some() {
        app.notify("A reply is being written (Esc stops it)");
        true
    } else {
        false
    }
}

/// Adds the reply being written and asks the worker for it. `reasons`: the reply follows a
/// `<think` (see [`Message::reasons`]).
fn start_turn(app: &mut App, turn: Turn, reasons: bool, fx: &mut Vec<Effect>) {
    let reply = Message {
        reasons,
        ..app.message(Role::Bot, String::new(), Status::Streaming)
    };
    app.messages.push(reply);
    let request_id = app.request_id();
    app.pending = Some(Pending {
        request_id,
        cancelled: false,
    });
    app.scroll = Scroll::Follow;
    fx.push(Effect::Command(Command::Turn { request_id, turn }));
}

fn send(app: &mut App, fx: &mut Vec<Effect>) {
    if app.input.text().trim().is_empty() || busy(app) {
        return;
    }
    if app.session.is_none() {
        app.error("No session is open yet");
        return;
    }
    let text = app.input.take();
    if app.history.last() != Some(&text) {
        app.history.push(text.clone());
    }
    app.history_pos = None;
    let editing = app.editing;
    if editing {
        app.editing = false;
        // The last exchange is replaced: drop the reply and the message it answered.
        while app.messages.last().is_some_and(|m| m.role == Role::Bot) {
            app.messages.pop();
        }
        app.messages.pop();
    }
    let message = app.message(Role::User, sanitize(&text).into_owned(), Status::Done);
    app.messages.push(message);
    let turn = if editing {
        Turn::ReplaceLast(text)
    } else {
        Turn::Send(text)
    };
    // A message sent or edited now is fed in the open session's preset.
    let reasons = app.thinking();
    start_turn(app, turn, reasons, fx);
}

/// Asks the worker to stop the reply being written; false when there is none, or it was
/// asked already (a second Esc goes on to stop a model load).
fn cancel_pending(app: &mut App, fx: &mut Vec<Effect>) -> bool {
    match &mut app.pending {
        Some(p) if !p.cancelled => {
            p.cancelled = true;
            fx.push(Effect::Command(Command::Cancel {
                request_id: p.request_id,
            }));
            true
        }
        _ => false,
    }
}

/// Before another session replaces the open one: the worker would otherwise finish the
/// reply first, and the user waits for text they will not see.
fn leave_session(app: &mut App, fx: &mut Vec<Effect>, command: Command) {
    cancel_pending(app, fx);
    fx.push(Effect::Command(command));
}

fn run(app: &mut App, action: Action, fx: &mut Vec<Effect>) {
    match action {
        Action::Quit => fx.push(Effect::Quit),
        Action::Send => send(app, fx),
        Action::Newline => app.input.insert('\n'),
        // What runs is stopped, the reply first; with nothing running Esc leaves edit mode
        // or the sidebar.
        Action::Stop => {
            if !cancel_pending(app, fx) {
                if app.editing {
                    app.editing = false;
                    app.input.take();
                } else if !stop_load(app, fx) {
                    app.focus = Focus::Input;
                }
            }
        }
        Action::Regenerate => {
            if busy(app) {
                return;
            }
            if app.messages.last().map(|m| m.role) != Some(Role::Bot) {
                app.notify("There is no reply to regenerate");
                return;
            }
            // The user message stays as it was fed, so the new reply starts as the old did.
            let reasons = app.messages.pop().is_some_and(|m| m.reasons);
            start_turn(app, Turn::Regenerate, reasons, fx);
        }
        Action::EditLast => {
            if busy(app) {
                return;
            }
            match last_text(app, Role::User) {
                Some(text) => {
                    app.input.set(&text);
                    app.editing = true;
                    app.focus = Focus::Input;
                }
                None => app.notify("There is no message to edit"),
            }
        }
        Action::CopyLast => match last_text(app, Role::Bot) {
            Some(text) => {
                fx.push(Effect::Copy(text));
                app.notify("Copied the last reply");
            }
            None => app.notify("There is no reply to copy"),
        },
        Action::Help => app.overlay = Some(Overlay::Help { scroll: 0 }),
        Action::Palette => {
            app.overlay = Some(Overlay::Palette {
                filter: TextInput::default(),
                selected: 0,
            });
        }
        Action::ModelPicker => {
            app.overlay = Some(Overlay::Models {
                input: TextInput::default(),
                selected: 0,
            });
        }
        Action::PresetPicker => {
            let current = app.session.as_ref().map(|s| s.preset.as_str());
            let selected = app
                .presets
                .iter()
                .position(|p| Some(p.name.as_str()) == current)
                .unwrap_or(0);
            app.overlay = Some(Overlay::Presets { selected });
        }
        Action::Sampling => match &app.session {
            Some(s) => {
                app.overlay = Some(Overlay::Sampling {
                    selected: 0,
                    values: s.sampling.clone(),
                });
            }
            None => app.notify("Open a session first"),
        },
        Action::ThemePicker => {
            app.overlay = Some(Overlay::Themes {
                selected: app.theme,
                previous: app.theme,
            });
        }
        Action::ToggleThinking => app.show_thinking = !app.show_thinking,
        Action::ToggleSidebar => {
            app.sidebar = !app.sidebar;
            if !app.sidebar {
                app.focus = Focus::Input;
            }
        }
        Action::FocusSidebar => {
            app.focus = match app.focus {
                Focus::Input => {
                    app.sidebar = true;
                    Focus::Sidebar
                }
                Focus::Sidebar => Focus::Input,
            };
        }
        Action::ScrollUp => scroll_by(app, -page(app)),
        Action::ScrollDown => scroll_by(app, page(app)),
        Action::ScrollTop => scroll_by(app, isize::MIN / 2),
        Action::ScrollBottom => app.scroll = Scroll::Follow,
        Action::OpenSession => {
            if let Some(s) = app.sessions.get(app.selected) {
                let name = s.name.clone();
                leave_session(app, fx, Command::OpenSession { name });
                app.focus = Focus::Input;
            }
        }
        Action::NewSession => {
            let preset = app.preset();
            leave_session(app, fx, Command::NewSession { preset });
            app.focus = Focus::Input;
        }
        Action::RenameSession => {
            if let Some(s) = app.sessions.get(app.selected) {
                app.overlay = Some(Overlay::Rename {
                    name: s.name.clone(),
                    // The placeholder of an untitled session is not a title to edit.
                    input: if s.title == crate::store::UNTITLED {
                        TextInput::default()
                    } else {
                        TextInput::with_text(&sanitize(&s.title))
                    },
                });
            }
        }
        Action::DeleteSession => {
            if let Some(s) = app.sessions.get(app.selected) {
                app.overlay = Some(Overlay::ConfirmDelete {
                    name: s.name.clone(),
                    title: s.title.clone(),
                });
            }
        }
        Action::ForkSession => {
            if app.messages.iter().any(|m| m.role == Role::User) {
                app.overlay = Some(Overlay::Fork { selected: 0 });
            } else {
                app.notify("Nothing to fork yet");
            }
        }
    }
}

/// The actions the palette lists for `filter`.
pub fn palette_actions(filter: &str) -> Vec<Action> {
    let filter = filter.to_lowercase();
    Action::ALL
        .iter()
        .copied()
        .filter(|a| !matches!(a, Action::Send | Action::Newline))
        .filter(|a| a.description().to_lowercase().contains(&filter) || a.name().contains(&filter))
        .collect()
}

/// Whether loading `spec` downloads a model of the catalogue (so it is asked first, with its
/// size): a repo of one model, or one file of a raw repo. Naming a raw repo itself fetches
/// nothing; its files are listed to pick from.
fn downloads(spec: &str) -> bool {
    use crate::hub::{ModelSpec, catalogue};
    match catalogue::find(spec) {
        Some(entry) => entry.is_single_model(),
        None => ModelSpec::parse(spec)
            .is_some_and(|s| s.file.is_some() && catalogue::find(&s.repo).is_some()),
    }
}

/// Indexes of the models whose name contains `filter` (any case); all of them when empty.
pub fn model_matches(models: &[String], filter: &str) -> Vec<usize> {
    let filter = filter.to_lowercase();
    (0..models.len())
        .filter(|&i| models[i].to_lowercase().contains(&filter))
        .collect()
}

/// Moves a list selection with Up/Down within `len` items; true if the key was one of those.
fn navigate(selected: &mut usize, len: usize, code: KeyCode) -> bool {
    match code {
        KeyCode::Up => *selected = selected.saturating_sub(1),
        KeyCode::Down => *selected = (*selected + 1).min(len.saturating_sub(1)),
        _ => return false,
    }
    true
}

fn overlay_key(app: &mut App, key: &KeyEvent, fx: &mut Vec<Effect>) {
    let Some(mut overlay) = app.overlay.take() else {
        return;
    };
    if key.code == KeyCode::Esc {
        // In the model picker Esc first stops the load it shows running; the picker stays,
        // to choose another model.
        if matches!(overlay, Overlay::Models { .. }) && stop_load(app, fx) {
            app.overlay = Some(overlay);
            return;
        }
        if let Overlay::Themes { previous, .. } = overlay {
            app.theme = previous;
        }
        return;
    }
    let enter = key.code == KeyCode::Enter;
    match &mut overlay {
        Overlay::Help { scroll } => match key.code {
            KeyCode::Up => *scroll = scroll.saturating_sub(1),
            KeyCode::Down => *scroll += 1,
            KeyCode::PageUp => *scroll = scroll.saturating_sub(10),
            KeyCode::PageDown => *scroll += 10,
            _ => return,
        },
        Overlay::Palette { filter, selected } => {
            let actions = palette_actions(&filter.text());
            if enter {
                if let Some(&action) = actions.get(*selected) {
                    run(app, action, fx);
                }
                return;
            }
            if !navigate(selected, actions.len(), key.code) && filter.handle_key(key) {
                *selected = 0;
            }
        }
        Overlay::Models { input, selected } => {
            let typed = input.text().trim().to_owned();
            let shown = model_matches(&app.models, &typed);
            if enter {
                // The chosen entry of the list, or what was typed when nothing matches it.
                let spec = shown
                    .get(*selected)
                    .map_or(typed, |&i| app.models[i].clone());
                if spec.is_empty() {
                    return;
                }
                let remote =
                    downloads(&spec) && !app.local.iter().any(|l| l.eq_ignore_ascii_case(&spec));
                if remote {
                    app.overlay = Some(Overlay::ConfirmDownload { spec });
                } else {
                    fx.extend(load_model(app, spec));
                }
                return;
            }
            if !navigate(selected, shown.len(), key.code) && input.handle_key(key) {
                *selected = 0;
            }
        }
        Overlay::ConfirmDownload { spec } => {
            if matches!(key.code, KeyCode::Char('y' | 'Y')) {
                fx.extend(load_model(app, spec.clone()));
            }
            // Any other key is a no.
            return;
        }
        Overlay::Presets { selected } => {
            if enter {
                if let Some(p) = app.presets.get(*selected) {
                    fx.push(Effect::Command(Command::SetPreset {
                        name: p.name.clone(),
                    }));
                }
                return;
            }
            navigate(selected, app.presets.len(), key.code);
        }
        Overlay::Sampling { selected, values } => {
            if enter {
                if let Some(s) = &mut app.session {
                    s.sampling = values.clone();
                }
                fx.push(Effect::Command(Command::SetSampling(values.clone())));
                return;
            }
            let setting = &SETTINGS[(*selected).min(SETTINGS.len() - 1)];
            match key.code {
                KeyCode::Left => setting.adjust(values, -1.0),
                KeyCode::Right => setting.adjust(values, 1.0),
                KeyCode::Char('r') => {
                    let default = setting.get(&app.defaults());
                    (setting.set)(values, default);
                }
                code => {
                    navigate(selected, SETTINGS.len(), code);
                }
            }
        }
        Overlay::Themes { selected, previous } => {
            if enter {
                if selected != previous
                    && let Some((name, _)) = app.themes.list.get(*selected)
                {
                    fx.push(Effect::SaveTheme(name.clone()));
                }
                return;
            }
            navigate(selected, app.themes.list.len(), key.code);
            app.theme = *selected;
        }
        Overlay::Rename { name, input } => {
            if enter {
                let title = input.text().trim().to_owned();
                if !title.is_empty() {
                    fx.push(Effect::Command(Command::Rename {
                        name: name.clone(),
                        title: title.clone(),
                    }));
                    if let Some(s) = app.session.as_mut().filter(|s| s.name == *name) {
                        s.title = title;
                    }
                }
                return;
            }
            input.handle_key(key);
        }
        Overlay::ConfirmDelete { name, .. } => {
            if matches!(key.code, KeyCode::Char('y' | 'Y')) {
                let delete = Command::Delete { name: name.clone() };
                if app.session.as_ref().is_some_and(|s| s.name == *name) {
                    leave_session(app, fx, delete);
                    app.session = None;
                    app.messages.clear();
                    app.pending = None;
                } else {
                    fx.push(Effect::Command(delete));
                }
            }
            // Any other key is a no.
            return;
        }
        Overlay::Fork { selected } => {
            let turns = app.messages.iter().filter(|m| m.role == Role::User).count();
            if enter {
                let at_turn = *selected + 1;
                leave_session(app, fx, Command::Fork { at_turn });
                return;
            }
            navigate(selected, turns, key.code);
        }
    }
    app.overlay = Some(overlay);
}
