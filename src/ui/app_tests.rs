//! The app's lifecycle as pure `update` calls: quitting from every menu, model loads that
//! fail or are given up on, and what leaving stops.

use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

use super::app::{self, App, Effect, Input, Overlay, Setup, update};
use super::input::TextInput;
use super::keymap::{Action, KeyChord, KeyList, Keymap};
use super::theme::{ColorDepth, Themes};
use crate::sampler::SamplingParams;
use crate::worker::{Command, Event, SessionView, Turn};

fn app_with(keymap: Keymap) -> App {
    let mut app = App::new(Setup {
        keymap,
        themes: Themes::load(None).0,
        theme: "dark".into(),
        depth: ColorDepth::TrueColor,
        models: vec!["RWKV/rwkv-raven-1b5".into()],
        local: vec![],
        recent: vec![],
        preset: None,
    });
    update(&mut app, Input::Resize(80, 24));
    update(
        &mut app,
        Input::Worker(Event::SessionOpened(SessionView {
            name: "s1".into(),
            title: "Ravens".into(),
            messages: vec![],
            preset: "raven".into(),
            sampling: SamplingParams::default(),
            tokens: 0,
            state_bytes: 640,
            replayed_tokens: 0,
        })),
    );
    app
}

fn ctrl(c: char) -> Input {
    Input::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL))
}

fn key(code: KeyCode) -> Input {
    Input::Key(KeyEvent::new(code, KeyModifiers::NONE))
}

fn commands(fx: Vec<Effect>) -> Vec<Command> {
    fx.into_iter()
        .filter_map(|e| match e {
            Effect::Command(c) => Some(c),
            _ => None,
        })
        .collect()
}

/// Every overlay the app has, each as a user meets it.
fn overlays() -> Vec<Overlay> {
    vec![
        Overlay::Help { scroll: 0 },
        Overlay::Palette {
            filter: TextInput::default(),
            selected: 0,
        },
        Overlay::Models {
            input: TextInput::with_text("RWKV/rwkv-raven-1b5"),
            selected: 0,
        },
        Overlay::Presets { selected: 0 },
        Overlay::Sampling {
            selected: 0,
            values: SamplingParams::default(),
        },
        Overlay::Themes {
            selected: 0,
            previous: 0,
        },
        Overlay::Rename {
            name: "s1".into(),
            input: TextInput::with_text("Ravens"),
        },
        Overlay::ConfirmDelete {
            name: "s1".into(),
            title: "Ravens".into(),
        },
        Overlay::Fork { selected: 0 },
    ]
}

#[test]
fn ctrl_c_and_ctrl_q_quit_with_any_overlay_open() {
    for overlay in overlays() {
        for c in ['c', 'q'] {
            let mut app = app_with(Keymap::default());
            app.overlay = Some(overlay.clone());
            assert_eq!(
                update(&mut app, ctrl(c)),
                [Effect::Quit],
                "Ctrl+{c} in {overlay:?}"
            );
        }
    }
}

#[test]
fn ctrl_c_quits_when_the_config_binds_quit_elsewhere() {
    let overrides = [(Action::Quit, KeyList(vec!["f20".parse().unwrap()]))].into();
    let mut app = app_with(Keymap::with_overrides(&overrides).unwrap());
    assert_eq!(update(&mut app, ctrl('c')), [Effect::Quit]);
    app.overlay = Some(Overlay::Help { scroll: 0 });
    assert_eq!(update(&mut app, key(KeyCode::F(20))), [Effect::Quit]);
}

#[test]
fn a_plain_character_quit_key_is_typed_into_a_menu_field() {
    let overrides = [(
        Action::Quit,
        KeyList(vec![KeyChord::from_event(&KeyEvent::new(
            KeyCode::Char('x'),
            KeyModifiers::NONE,
        ))]),
    )]
    .into();
    let mut app = app_with(Keymap::with_overrides(&overrides).unwrap());
    app.overlay = Some(Overlay::Models {
        input: TextInput::default(),
        selected: 0,
    });
    assert!(update(&mut app, key(KeyCode::Char('x'))).is_empty());
    assert!(matches!(&app.overlay, Some(Overlay::Models { input, .. }) if input.text() == "x"));
}

/// The status bar as drawn at `width` columns, and the rows above it.
fn screen(app: &App, width: u16) -> Vec<String> {
    let mut terminal = Terminal::new(TestBackend::new(width, 24)).unwrap();
    terminal.draw(|f| super::render::render(f, app)).unwrap();
    let buffer = terminal.backend().buffer();
    (0..24)
        .map(|y| {
            (0..width)
                .map(|x| buffer[(x, y)].symbol())
                .collect::<String>()
        })
        .collect()
}

#[test]
fn a_failed_load_says_so_in_the_status_bar_and_its_reason_is_shown_whole() {
    let mut app = app_with(Keymap::default());
    update(&mut app, Input::Tick(1000));
    let fx = app::load_model(&mut app, "RWKV/rwkv-raven-1b5".into());
    assert_eq!(
        commands(fx),
        [Command::LoadModel {
            request_id: 1,
            spec: "RWKV/rwkv-raven-1b5".into()
        }]
    );
    update(
        &mut app,
        Input::Worker(Event::ModelLoading {
            request_id: 1,
            progress: crate::worker::LoadProgress {
                stage: "looking for RWKV/rwkv-raven-1b5".into(),
                done: 0,
                total: 0,
            },
        }),
    );
    let why = "cannot download RWKV/rwkv-raven-1b5: the hub at http://127.0.0.1:1 answered 500 \
               Internal Server Error for config.json; check the network or HF_ENDPOINT and try \
               again";
    update(
        &mut app,
        Input::Worker(Event::Error {
            request_id: Some(1),
            message: why.into(),
        }),
    );
    assert!(app.loading.is_none() && app.loading_request.is_none());
    let rows = screen(&app, 80);
    let status = rows.last().unwrap();
    assert!(
        status.contains("model load failed (F3: choose a model)"),
        "{status}"
    );
    assert!(!status.contains("loading"), "{status}");
    // The whole reason, wrapped over the rows above the input box.
    let text: String = rows
        .join(" ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(text.contains(&format!("! {why}")), "{rows:#?}");
    // It stays up while the load is the failed one; a new load clears the state.
    update(&mut app, Input::Tick(1000 + 60));
    assert!(app.notice.is_some());
    app::load_model(&mut app, "tiny".into());
    assert!(app.load_failed.is_none());
    update(&mut app, Input::Tick(1000 + 120));
    assert!(app.notice.is_none());
}

#[test]
fn another_model_gives_up_on_the_load_in_flight() {
    let mut app = app_with(Keymap::default());
    app::load_model(&mut app, "RWKV/rwkv-raven-7b".into());
    let fx = app::load_model(&mut app, "tiny".into());
    assert_eq!(
        commands(fx),
        [
            Command::Cancel { request_id: 1 },
            Command::LoadModel {
                request_id: 2,
                spec: "tiny".into()
            }
        ]
    );
    // The end of the abandoned load is not the state of the new one.
    update(
        &mut app,
        Input::Worker(Event::Error {
            request_id: Some(1),
            message: "download of RWKV/rwkv-raven-7b cancelled".into(),
        }),
    );
    assert!(app.load_failed.is_none());
    assert_eq!(app.loading_request, Some(2));
}

#[test]
fn leaving_stops_the_reply_and_the_load_in_flight() {
    let mut app = app_with(Keymap::default());
    app::load_model(&mut app, "RWKV/rwkv-raven-7b".into());
    for c in "hi".chars() {
        update(&mut app, key(KeyCode::Char(c)));
    }
    assert_eq!(
        commands(update(&mut app, key(KeyCode::Enter))),
        [Command::Turn {
            request_id: 2,
            turn: Turn::Send("hi".into())
        }]
    );
    assert_eq!(
        commands(app::leave(&mut app)),
        [
            Command::Cancel { request_id: 2 },
            Command::Cancel { request_id: 1 }
        ]
    );
    assert!(
        commands(app::leave(&mut app)).len() <= 1,
        "the load is not cancelled twice"
    );
}

/// The picker, drawn: its line about the model in use, and its list.
fn picker(app: &App) -> (String, Vec<String>) {
    let mut rows = screen(app, 100)
        .into_iter()
        .skip_while(|r| !r.contains("Filter, path or hub id:"))
        .skip(1)
        .map(|r| r.trim_end().to_owned());
    let status = rows.next().unwrap_or_default();
    (status, rows.collect())
}

#[test]
fn a_loaded_model_is_first_in_the_picker_marked_recent_and_saved() {
    let mut app = app_with(Keymap::default());
    let fx = update(
        &mut app,
        Input::Worker(Event::ModelLoaded(crate::worker::ModelInfo {
            name: "/models/tiny".into(),
            dtype: "f32".into(),
            device: "cpu".into(),
        })),
    );
    assert!(
        fx.contains(&Effect::SaveRecent(vec!["/models/tiny".into()])),
        "{fx:?}"
    );
    update(&mut app, key(KeyCode::F(3)));
    let (_, rows) = picker(&app);
    assert!(
        rows[0].contains("> /models/tiny") && rows[0].contains("recent"),
        "{rows:#?}"
    );
    assert!(rows[1].contains("RWKV/rwkv-raven-1b5"), "{rows:#?}");
    assert!(!rows[1].contains("recent"), "{rows:#?}");
    // Another model loaded goes on top; the list holds each model once.
    update(&mut app, key(KeyCode::Esc));
    let fx = update(
        &mut app,
        Input::Worker(Event::ModelLoaded(crate::worker::ModelInfo {
            name: "RWKV/rwkv-raven-1b5".into(),
            dtype: "f16".into(),
            device: "cpu".into(),
        })),
    );
    let both = vec!["RWKV/rwkv-raven-1b5".to_owned(), "/models/tiny".to_owned()];
    assert!(fx.contains(&Effect::SaveRecent(both.clone())), "{fx:?}");
    assert_eq!(app.models, both);
}

/// A slow download the user gives up on, with `stop` (Esc in the picker, on the main screen,
/// or the palette's entry): the load is cancelled by its id, the status bar says so, and the
/// worker's answer (an error saying it was cancelled) and late progress change nothing.
fn stopping_a_download(stop: impl Fn(&mut App) -> Vec<Effect>) -> App {
    let mut app = app_with(Keymap::default());
    update(&mut app, Input::Tick(1000));
    app::load_model(&mut app, "RWKV/rwkv-raven-7b".into());
    let progress = crate::worker::LoadProgress {
        stage: "downloading model.safetensors (3/3)".into(),
        done: 100,
        total: 1000,
    };
    let loading = |progress| {
        Input::Worker(Event::ModelLoading {
            request_id: 1,
            progress,
        })
    };
    update(&mut app, loading(progress.clone()));
    assert_eq!(
        commands(stop(&mut app)),
        [Command::Cancel { request_id: 1 }]
    );
    assert!(app.loading.is_none() && app.loading_request.is_none());
    update(&mut app, loading(progress));
    update(
        &mut app,
        Input::Worker(Event::Error {
            request_id: Some(1),
            message: "download of RWKV/rwkv-raven-7b cancelled after 200 of 1000 bytes".into(),
        }),
    );
    assert!(app.loading.is_none(), "{:?}", app.loading);
    assert!(app.load_failed.is_none());
    let status = screen(&app, 100).pop().unwrap();
    assert!(
        status.contains("model load cancelled (F3: choose a model)"),
        "{status}"
    );
    assert!(!status.contains("loading"), "{status}");
    let notice = app.notice.as_ref().map(|n| (n.text.clone(), n.error));
    assert!(
        notice
            .as_ref()
            .is_some_and(|(t, error)| t.contains("Stopped loading RWKV/rwkv-raven-7b") && !error),
        "{notice:?}"
    );
    app
}

#[test]
fn esc_in_the_model_picker_stops_the_download_and_keeps_the_picker() {
    let app = stopping_a_download(|app| {
        update(app, key(KeyCode::F(3)));
        let (status, _) = picker(app);
        assert!(status.contains("downloading model.safetensors"), "{status}");
        assert!(status.contains("Esc stops it"), "{status}");
        update(app, key(KeyCode::Esc))
    });
    assert!(matches!(app.overlay, Some(Overlay::Models { .. })));
    let mut app = app;
    let (status, _) = picker(&app);
    assert!(status.contains("Load stopped"), "{status}");
    // Nothing runs now: Esc closes the picker, and stops nothing.
    assert!(update(&mut app, key(KeyCode::Esc)).is_empty());
    assert!(app.overlay.is_none());
}

#[test]
fn esc_on_the_chat_stops_the_download() {
    let mut app = stopping_a_download(|app| update(app, key(KeyCode::Esc)));
    // A new load clears the state.
    app::load_model(&mut app, "tiny".into());
    assert!(!app.load_cancelled);
    // The stopped download's last progress, still on its way, is not the new load's.
    let stale = crate::worker::LoadProgress {
        stage: "downloading model.safetensors (3/3)".into(),
        done: 300,
        total: 1000,
    };
    update(
        &mut app,
        Input::Worker(Event::ModelLoading {
            request_id: 1,
            progress: stale,
        }),
    );
    assert!(
        app.loading
            .as_ref()
            .is_some_and(|p| p.stage == "starting tiny"),
        "{:?}",
        app.loading
    );
}

#[test]
fn the_palette_stops_the_download() {
    stopping_a_download(|app| {
        update(app, ctrl('p'));
        for c in "download".chars() {
            update(app, key(KeyCode::Char(c)));
        }
        update(app, key(KeyCode::Enter))
    });
}

#[test]
fn esc_stops_a_reply_before_a_load() {
    let mut app = app_with(Keymap::default());
    for c in "hi".chars() {
        update(&mut app, key(KeyCode::Char(c)));
    }
    update(&mut app, key(KeyCode::Enter));
    app::load_model(&mut app, "tiny".into());
    assert_eq!(
        commands(update(&mut app, key(KeyCode::Esc))),
        [Command::Cancel { request_id: 1 }]
    );
    assert_eq!(app.loading_request, Some(2));
    assert_eq!(
        commands(update(&mut app, key(KeyCode::Esc))),
        [Command::Cancel { request_id: 2 }]
    );
}
