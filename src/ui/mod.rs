//! The full-screen chat app (`rwkv-chat` with no subcommand).
//!
//! Split so that almost nothing needs a terminal: [`app`] holds the state and the pure
//! `update`, [`render`] draws a state, and this module only owns the terminal (raw mode,
//! alternate screen, restored on every exit path, panics included), turns terminal and
//! worker events into `update` inputs, carries out the effects, and redraws when something
//! changed, at most once a frame, however fast tokens arrive.
//!
//! SIGTERM, SIGHUP (the terminal closed) and SIGINT (Ctrl+C where raw mode is off) end the
//! app the way the quit key does: the terminal is given back and the worker saves the session
//! (a reply being written is kept as far as it got) before exiting, instead of the process
//! dying with the terminal in raw mode. A terminal that hangs up or fails is the same as
//! SIGHUP. Whatever the UI thread is doing, a signal ends the process within 2 seconds: a
//! thread of its own stops the worker and exits if the UI thread has not by then.

pub mod app;
pub mod input;
pub mod keymap;
pub mod recent;
pub mod render;
pub mod theme;

#[cfg(test)]
mod app_tests;
#[cfg(test)]
mod tests;

use std::io::{Stdout, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use base64::Engine as _;
use ratatui::Terminal;
use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::event::{
    self, DisableBracketedPaste, DisableMouseCapture, EnableBracketedPaste, EnableMouseCapture,
};
use ratatui::crossterm::execute;
use ratatui::crossterm::terminal::{
    EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode,
};

use crate::config::{self, Config};
use crate::worker::{BackendOptions, Stopper, Worker, default_backend};
use app::{App, Effect, Input, Overlay, Setup};
use keymap::Keymap;
use theme::{ColorDepth, Themes};

/// At most this often the screen is redrawn while tokens stream.
const FRAME: Duration = Duration::from_millis(33);
/// How long to wait for terminal input when nothing needs drawing.
const IDLE_POLL: Duration = Duration::from_millis(50);
/// How long leaving waits for the worker to save: a reply stops within a token, a download
/// within a chunk; only reading the weights of a model cannot be interrupted, and that holds
/// nothing unsaved (sessions are saved after every turn).
const SAVE_LIMIT: Duration = Duration::from_millis(1200);
/// After a signal, how long the UI thread has to leave by itself before the process exits
/// anyway; with [`SAVE_LIMIT`] within the 2 seconds promised.
const SIGNAL_GRACE: Duration = Duration::from_millis(500);

/// What the command line passes in.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// A model to load at start, over the config's.
    pub model: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub config_dir: Option<PathBuf>,
    pub load: crate::model::LoadOptions,
}

/// Runs the app until the user quits.
pub fn run(options: Options) -> anyhow::Result<()> {
    let config_dir = config::config_dir(options.config_dir.as_deref());
    // A bad config stops the app before the terminal is taken, so the message stays visible.
    let config = match &config_dir {
        Some(dir) => Config::load(dir)?,
        None => Config::default(),
    };
    let data_dir = crate::paths::data_dir(options.data_dir.clone())?;
    let log = init_logging(&data_dir)?;
    tracing::info!(log = %log.display(), "rwkv-chat starting");

    let (themes, problems) = Themes::load(config_dir.as_ref().map(|d| d.join("themes")).as_deref());
    let (models, local, recommended) = model_choices(&config);
    let recent = recent::load(&data_dir);
    let keymap = Keymap::with_overrides(&config.keys).map_err(|e| match &config_dir {
        Some(dir) => anyhow::anyhow!("{}: {e}", dir.join("config.toml").display()),
        None => anyhow::anyhow!("{e}"),
    })?;
    let mut app = App::new(Setup {
        keymap,
        themes,
        theme: config.theme.clone().unwrap_or_else(|| "dark".into()),
        depth: ColorDepth::detect(),
        models,
        local,
        recent,
        preset: config.preset.clone(),
    });
    // The clock first, so the notices below do not expire at the first tick.
    app::update(&mut app, Input::Tick(now()));
    for p in &problems {
        tracing::warn!("{p}");
        app.error(p);
    }

    let backend_options = BackendOptions {
        data_dir: options.data_dir.clone(),
        config_dir: config_dir.clone(),
        load: options.load,
        max_reply_tokens: config.max_reply_tokens,
    };
    let worker = match default_backend(&backend_options) {
        Ok(backend) => Ok(Worker::spawn(backend).context("cannot start the model thread")?),
        Err(e) => {
            let message = crate::report::describe(&e);
            tracing::error!("{message}");
            app.error(&message);
            Err(message)
        }
    };
    let mut startup = Vec::new();
    match options.model.or(config.model) {
        Some(spec) => startup.extend(app::load_model(&mut app, spec)),
        None => {
            // No model named: the model menu opens on the model used last, else (the first
            // run) on the one that fits this machine, with its size; Enter asks before
            // downloading it, typing filters the list.
            let selected = if app.recent.is_empty() {
                app.models
                    .iter()
                    .position(|m| *m == recommended)
                    .unwrap_or(0)
            } else {
                0
            };
            app.overlay = Some(Overlay::Models {
                input: input::TextInput::default(),
                selected,
            });
        }
    }
    startup.push(Effect::Command(crate::worker::Command::ListSessions));

    let stop = Arc::new(AtomicBool::new(false));
    watch_signals(Arc::clone(&stop), worker.as_ref().ok().map(Worker::stopper))?;
    let mut tui = Tui::enter()?;
    let world = World {
        worker: worker.as_ref().map_err(String::as_str),
        config_dir: config_dir.as_deref(),
        data_dir: Some(&data_dir),
    };
    let result = event_loop(&mut tui, &mut app, world, startup, &stop);
    drop(tui);
    if let Ok(worker) = worker {
        // The cancels first, so the reply in flight is kept as far as it got.
        let leaving = app::leave(&mut app);
        let _ = apply(&mut app, world_of(&worker), leaving);
        if !worker.shutdown_within(SAVE_LIMIT) {
            tracing::warn!("the model thread was still busy (loading a model); leaving anyway");
        }
    }
    tracing::info!("rwkv-chat stopped");
    result
}

/// What the model menu offers besides the recent models: the config's models, the models
/// already on disk, then the catalogue (the one recommended for this machine's memory first).
/// Also returns the ones on disk and the recommended one.
fn model_choices(config: &Config) -> (Vec<String>, Vec<String>, &'static str) {
    let mut models = config.models.clone();
    let add = |m: String, models: &mut Vec<String>| {
        if !models.contains(&m) {
            models.push(m);
        }
    };
    if let Some(m) = &config.model {
        add(m.clone(), &mut models);
    }
    let local = local_models();
    for m in &local {
        add(m.clone(), &mut models);
    }
    let recommended = crate::hub::catalogue::recommended_chat_model().repo;
    add(recommended.to_owned(), &mut models);
    for entry in crate::hub::catalogue::CATALOGUE {
        add(entry.repo.to_owned(), &mut models);
    }
    (models, local, recommended)
}

/// The models on disk, by the spec that loads each.
fn local_models() -> Vec<String> {
    crate::hub::Hub::from_env()
        .local_models()
        .into_iter()
        .map(|m| m.id)
        .collect()
}

fn world_of(worker: &Worker) -> World<'_> {
    World {
        worker: Ok(worker),
        config_dir: None,
        data_dir: None,
    }
}

/// The model thread, or why there is none (shown again whenever it is needed).
type WorkerRef<'a> = Result<&'a Worker, &'a str>;

/// What effects act on besides the terminal.
#[derive(Clone, Copy)]
struct World<'a> {
    worker: WorkerRef<'a>,
    config_dir: Option<&'a Path>,
    data_dir: Option<&'a Path>,
}

/// Carries out effects; returns true to quit.
fn apply(app: &mut App, world: World, effects: Vec<Effect>) -> anyhow::Result<bool> {
    for effect in effects {
        match effect {
            Effect::Command(c) => match world.worker {
                Ok(w) => w.send(absolute_model_path(c)),
                Err(why) => app.error(why),
            },
            Effect::SaveRecent(models) => {
                if let Some(dir) = world.data_dir
                    && let Err(e) = recent::save(dir, &models)
                {
                    // Only the next start's picker misses them; not worth a notice.
                    tracing::warn!("cannot save the recent models: {e:#}");
                }
            }
            Effect::Copy(text) => copy(&text)?,
            Effect::SaveTheme(name) => {
                let saved = match world.config_dir {
                    Some(dir) => config::save_theme(dir, &name).map_err(|e| e.to_string()),
                    None => Err("no config directory to save the theme in".to_owned()),
                };
                if let Err(why) = saved {
                    tracing::warn!("{why}");
                    app.error(&why);
                }
            }
            Effect::RefreshLocal => app.local = local_models(),
            Effect::Quit => return Ok(true),
        }
    }
    Ok(false)
}

/// A model given as a relative path is loaded, and so remembered among the recent models and
/// in the session, by its absolute path: the next start may run in another directory. A path
/// that exists wins over a hub id, so this changes what is loaded for neither.
fn absolute_model_path(command: crate::worker::Command) -> crate::worker::Command {
    match command {
        crate::worker::Command::LoadModel { request_id, spec }
            if Path::new(&spec).is_relative() && Path::new(&spec).exists() =>
        {
            let spec =
                std::path::absolute(&spec).map_or(spec, |p| p.to_string_lossy().into_owned());
            crate::worker::Command::LoadModel { request_id, spec }
        }
        other => other,
    }
}

/// OSC 52 asks the terminal itself to set the clipboard, which also works over SSH and in
/// tmux (with `set-clipboard on`); the text is base64, so it cannot inject sequences.
fn copy(text: &str) -> anyhow::Result<()> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(text);
    let mut out = std::io::stdout();
    write!(out, "\x1b]52;c;{encoded}\x07")?;
    out.flush()?;
    Ok(())
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// On a termination signal, sets `stop` (the event loop sees it within one poll and leaves
/// as the quit key does); then, should the UI thread be stuck, stops the worker (which saves)
/// and ends the process itself, within 2 seconds of the signal.
fn watch_signals(stop: Arc<AtomicBool>, worker: Option<Stopper>) -> anyhow::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGHUP, SIGINT])
        .context("cannot handle termination signals")?;
    std::thread::Builder::new()
        .name("rwkv-signals".into())
        .spawn(move || {
            let Some(signal) = signals.forever().next() else {
                return;
            };
            stop.store(true, Ordering::SeqCst);
            tracing::info!(signal, "termination signal: saving and quitting");
            if let Some(worker) = worker
                && !worker.stop(SAVE_LIMIT)
            {
                tracing::warn!("the model thread was still busy; leaving anyway");
            }
            std::thread::sleep(SIGNAL_GRACE);
            tracing::warn!(signal, "the app did not leave by itself; exiting");
            restore();
            std::process::exit(128 + signal);
        })
        .context("cannot start the signal thread")?;
    Ok(())
}

fn event_loop(
    tui: &mut Tui,
    app: &mut App,
    world: World,
    startup: Vec<Effect>,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let size = tui.terminal.size()?;
    update_all(
        app,
        world,
        vec![Input::Resize(size.width, size.height), Input::Tick(now())],
    )?;
    if apply(app, world, startup)? {
        return Ok(());
    }
    let mut dirty = true;
    let mut last_draw = Instant::now() - FRAME;
    loop {
        if stop.load(Ordering::Relaxed) {
            tracing::info!("termination signal: saving and quitting");
            return Ok(());
        }
        if dirty && last_draw.elapsed() >= FRAME {
            tui.terminal.draw(|f| render::render(f, app))?;
            last_draw = Instant::now();
            dirty = false;
        }
        let wait = if dirty {
            FRAME.saturating_sub(last_draw.elapsed())
        } else {
            IDLE_POLL
        };
        let mut inputs = Vec::new();
        if !terminal_alive(wait)? {
            tracing::info!("the terminal is gone: saving and quitting");
            return Ok(());
        }
        // Everything the terminal has (keys, and resizes, which crossterm learns from its
        // own signal pipe) is taken at once, so a paste or a burst of keys costs one redraw.
        if poll(Duration::ZERO)? {
            loop {
                if let Some(i) = terminal_input(event::read()?) {
                    inputs.push(i);
                }
                if !poll(Duration::ZERO)? {
                    break;
                }
            }
        }
        if let Ok(w) = world.worker {
            while let Some(e) = w.try_recv() {
                inputs.push(Input::Worker(e));
            }
        }
        let t = now();
        if t != app.now {
            inputs.push(Input::Tick(t));
        }
        if inputs.is_empty() {
            continue;
        }
        dirty = true;
        if update_all(app, world, inputs)? {
            return Ok(());
        }
    }
}

/// Waits up to `wait` for the terminal to have input; false once it hung up or failed (the
/// window closed, the ssh connection dropped). This is asked before crossterm reads, since
/// crossterm's reader loops forever at full speed on a terminal at end of file.
#[cfg(unix)]
fn terminal_alive(wait: Duration) -> std::io::Result<bool> {
    use std::io::IsTerminal;
    // crossterm reads stdin when it is the terminal (else /dev/tty, which has no end of file
    // of its own to watch: SIGHUP covers it).
    if !std::io::stdin().is_terminal() {
        std::thread::sleep(wait);
        return Ok(true);
    }
    let mut fd = libc::pollfd {
        fd: libc::STDIN_FILENO,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd, alive for the call.
    let n = unsafe { libc::poll(&raw mut fd, 1, ms) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        // A signal interrupts the wait; that is a reason to look at the flag, not an error.
        return if e.kind() == std::io::ErrorKind::Interrupted {
            Ok(true)
        } else {
            Err(e)
        };
    }
    Ok(fd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) == 0)
}

#[cfg(not(unix))]
fn terminal_alive(wait: Duration) -> std::io::Result<bool> {
    poll(wait).map(|_| true)
}

fn poll(wait: Duration) -> std::io::Result<bool> {
    match event::poll(wait) {
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(false),
        other => other,
    }
}

/// Feeds inputs to `update` and carries out the effects; true to quit.
fn update_all(app: &mut App, world: World, inputs: Vec<Input>) -> anyhow::Result<bool> {
    for input in inputs {
        let effects = app::update(app, input);
        if apply(app, world, effects)? {
            return Ok(true);
        }
    }
    Ok(false)
}

fn terminal_input(e: event::Event) -> Option<Input> {
    match e {
        event::Event::Key(k) => Some(Input::Key(k)),
        event::Event::Mouse(m) => Some(Input::Mouse(m)),
        event::Event::Paste(p) => Some(Input::Paste(p)),
        event::Event::Resize(w, h) => Some(Input::Resize(w, h)),
        _ => None,
    }
}

/// The terminal while the app owns it; dropping it gives the terminal back.
struct Tui {
    terminal: Terminal<CrosstermBackend<Stdout>>,
}

impl Tui {
    fn enter() -> anyhow::Result<Self> {
        static HOOK: Once = Once::new();
        let ui_thread = std::thread::current().id();
        HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                if std::thread::current().id() == ui_thread {
                    // The terminal first, so the panic message is readable.
                    restore();
                    previous(info);
                } else {
                    // The worker reports its panics as errors and goes on; printing would
                    // scribble over the screen, so they only go to the log.
                    tracing::error!("panic: {info}");
                }
            }));
        });
        enable_raw_mode().context("cannot put the terminal in raw mode")?;
        let mut out = std::io::stdout();
        if let Err(e) = execute!(
            out,
            EnterAlternateScreen,
            EnableMouseCapture,
            EnableBracketedPaste
        ) {
            restore();
            return Err(e).context("cannot set up the terminal");
        }
        match Terminal::new(CrosstermBackend::new(out)) {
            Ok(terminal) => Ok(Self { terminal }),
            Err(e) => {
                restore();
                Err(e).context("cannot set up the terminal")
            }
        }
    }
}

impl Drop for Tui {
    fn drop(&mut self) {
        restore();
    }
}

/// Undoes everything `Tui::enter` did; safe to call more than once.
fn restore() {
    let _ = disable_raw_mode();
    let _ = execute!(
        std::io::stdout(),
        DisableBracketedPaste,
        DisableMouseCapture,
        LeaveAlternateScreen,
        ratatui::crossterm::cursor::Show
    );
}

/// Logs go to `rwkv-chat.log` in the state dir (or `--data-dir`): the terminal is the
/// screen while the app runs.
fn init_logging(dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let path = dir.join("rwkv-chat.log");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot open the log file {}", path.display()))?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(Mutex::new(file))
        .try_init();
    Ok(path)
}
