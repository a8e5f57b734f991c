//! `update()` flows without a terminal, and screens drawn into ratatui's `TestBackend`,
//! compared with the insta snapshots in `src/ui/snapshots/`. A screen that differs fails the
//! test (in CI too, where insta writes nothing) and, outside CI, leaves `NAME.snap.new` beside
//! the snapshot: review it with `cargo insta review`, or rewrite all with
//! `INSTA_UPDATE=always cargo test --lib ui::` and review the diff.

use std::path::Path;

use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers, MouseEvent, MouseEventKind};

use super::app::{self, App, Effect, Focus, Input, Overlay, Scroll, Setup, Status, update};
use super::keymap::Keymap;
use super::render::render;
use super::theme::{ColorDepth, Themes};
use crate::config::Config;
use crate::sampler::SamplingParams;
use crate::worker::fake::FakeBackend;
use crate::worker::{
    Backend, ChatMessage, Command, Event, LoadProgress, ModelInfo, PresetInfo, ReplyStats, Role,
    SessionInfo, SessionView, StopReason, Turn, Worker,
};

fn setup(keymap: Keymap) -> Setup {
    Setup {
        keymap,
        themes: Themes::load(None).0,
        theme: "dark".into(),
        depth: ColorDepth::TrueColor,
        models: vec!["models/rwkv-4-169m".into(), "RWKV/rwkv-raven-1b5".into()],
        local: vec!["models/rwkv-4-169m".into()],
        recent: vec![],
        preset: None,
    }
}

fn new_app() -> App {
    App::new(setup(Keymap::default()))
}

fn key(code: KeyCode) -> Input {
    Input::Key(KeyEvent::new(code, KeyModifiers::NONE))
}

fn ctrl(c: char) -> Input {
    Input::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL))
}

fn alt(c: char) -> Input {
    Input::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::ALT))
}

fn typed(app: &mut App, text: &str) {
    for c in text.chars() {
        update(app, key(KeyCode::Char(c)));
    }
}

fn ev(app: &mut App, event: Event) -> Vec<Effect> {
    update(app, Input::Worker(event))
}

fn commands(effects: Vec<Effect>) -> Vec<Command> {
    effects
        .into_iter()
        .filter_map(|e| match e {
            Effect::Command(c) => Some(c),
            _ => None,
        })
        .collect()
}

fn stats(stop: StopReason) -> ReplyStats {
    ReplyStats {
        stop,
        prompt_tokens: 12,
        generated_tokens: 5,
        prefill_tokens_per_s: 240.0,
        decode_tokens_per_s: 14.2,
        session_tokens: 57,
        state_bytes: 983_040,
    }
}

fn view(messages: &[(Role, &str)]) -> SessionView {
    SessionView {
        name: "s1".into(),
        title: "Ravens and crows".into(),
        messages: messages
            .iter()
            .map(|(role, text)| ChatMessage {
                role: *role,
                text: (*text).into(),
                reasons: false,
            })
            .collect(),
        preset: "raven".into(),
        sampling: SamplingParams::default(),
        tokens: 40,
        state_bytes: 983_040,
        replayed_tokens: 0,
    }
}

/// An app with a model, two sessions in the sidebar and the first one open.
fn ready(messages: &[(Role, &str)]) -> App {
    let mut app = new_app();
    update(&mut app, Input::Tick(1_000_000));
    ev(&mut app, Event::Presets(FakeBackend::default().presets()));
    ev(
        &mut app,
        Event::ModelLoaded(ModelInfo {
            name: "rwkv-raven-1b5".into(),
            dtype: "f16".into(),
            device: "cpu".into(),
        }),
    );
    ev(
        &mut app,
        Event::Sessions(vec![
            SessionInfo {
                name: "s1".into(),
                title: "Ravens and crows".into(),
                model: "rwkv-raven-1b5".into(),
                last_used: 1_000_000 - 120,
            },
            SessionInfo {
                name: "s2".into(),
                title: "Rust lifetimes".into(),
                model: "rwkv-raven-1b5".into(),
                last_used: 1_000_000 - 3 * 86400,
            },
        ]),
    );
    ev(&mut app, Event::SessionOpened(view(messages)));
    app.notice = None;
    app
}

const CHAT: &[(Role, &str)] = &[
    (Role::User, "Do ravens remember faces?"),
    (
        Role::Bot,
        "Yes. Ravens and crows recognise individual human faces and remember them for years.",
    ),
];

fn send(app: &mut App, text: &str) -> Vec<Command> {
    typed(app, text);
    commands(update(app, key(KeyCode::Enter)))
}

#[test]
fn sending_streams_the_reply_and_finishing_records_the_stats() {
    let mut app = ready(&[]);
    assert_eq!(
        send(&mut app, "hi there"),
        [Command::Turn {
            request_id: 1,
            turn: Turn::Send("hi there".into())
        }]
    );
    assert!(app.input.is_empty());
    assert_eq!(app.messages.len(), 2);
    assert_eq!(app.messages[1].status, Status::Streaming);
    for t in ["Hel", "lo", "!"] {
        ev(
            &mut app,
            Event::Token {
                request_id: 1,
                text: t.into(),
            },
        );
    }
    assert_eq!(app.messages[1].text, "Hello!");
    // A second message waits for the reply.
    assert!(send(&mut app, "more").is_empty());
    app.input.take();
    ev(
        &mut app,
        Event::Finished {
            request_id: 1,
            stats: stats(StopReason::EndOfTurn),
        },
    );
    assert_eq!(app.messages[1].status, Status::Done);
    assert!(app.pending.is_none());
    assert_eq!(app.session.as_ref().unwrap().tokens, 57);
    assert!(!app.saved);
    ev(&mut app, Event::Saved { name: "s1".into() });
    assert!(app.saved);
}

#[test]
fn esc_cancels_and_stale_events_are_dropped() {
    let mut app = ready(&[]);
    send(&mut app, "tell me a long story");
    ev(
        &mut app,
        Event::Token {
            request_id: 1,
            text: "Once".into(),
        },
    );
    assert_eq!(
        commands(update(&mut app, key(KeyCode::Esc))),
        [Command::Cancel { request_id: 1 }]
    );
    ev(
        &mut app,
        Event::Finished {
            request_id: 1,
            stats: stats(StopReason::Cancelled),
        },
    );
    assert_eq!(app.messages[1].status, Status::Stopped);
    // Late or foreign tokens change nothing.
    for id in [1, 99] {
        ev(
            &mut app,
            Event::Token {
                request_id: id,
                text: " upon".into(),
            },
        );
    }
    ev(
        &mut app,
        Event::Finished {
            request_id: 99,
            stats: stats(StopReason::EndOfTurn),
        },
    );
    assert_eq!(app.messages[1].text, "Once");
    assert_eq!(app.messages[1].status, Status::Stopped);
}

#[test]
fn regenerate_replaces_the_last_reply() {
    let mut app = ready(CHAT);
    assert_eq!(
        commands(update(&mut app, ctrl('r'))),
        [Command::Turn {
            request_id: 1,
            turn: Turn::Regenerate
        }]
    );
    assert_eq!(app.messages.len(), 2);
    assert_eq!(app.messages[1].text, "");
    assert_eq!(app.messages[1].status, Status::Streaming);
    // Not while a reply is being written.
    assert!(commands(update(&mut app, ctrl('r'))).is_empty());
}

#[test]
fn editing_the_last_message_replaces_the_exchange() {
    let mut app = ready(CHAT);
    update(&mut app, alt('e'));
    assert!(app.editing);
    assert_eq!(app.input.text(), "Do ravens remember faces?");
    update(&mut app, ctrl('u'));
    let sent = send(&mut app, "Do crows remember faces?");
    assert_eq!(
        sent,
        [Command::Turn {
            request_id: 1,
            turn: Turn::ReplaceLast("Do crows remember faces?".into())
        }]
    );
    assert_eq!(app.messages.len(), 2);
    assert_eq!(app.messages[0].text, "Do crows remember faces?");
    assert_eq!(app.messages[1].status, Status::Streaming);
    assert!(!app.editing);

    // Esc leaves edit mode without sending.
    let mut app = ready(CHAT);
    update(&mut app, alt('e'));
    assert!(commands(update(&mut app, key(KeyCode::Esc))).is_empty());
    assert!(!app.editing && app.input.is_empty());
}

#[test]
fn menus_open_and_do_their_job() {
    let mut app = ready(CHAT);
    update(&mut app, key(KeyCode::F(1)));
    assert!(matches!(app.overlay, Some(Overlay::Help { .. })));
    update(&mut app, key(KeyCode::Esc));
    assert!(app.overlay.is_none());

    // `?` opens help on an empty input but is typed inside a message.
    update(&mut app, key(KeyCode::Char('?')));
    assert!(matches!(app.overlay, Some(Overlay::Help { .. })));
    update(&mut app, key(KeyCode::Esc));
    typed(&mut app, "why?");
    assert!(app.overlay.is_none());
    assert_eq!(app.input.take(), "why?");

    // The palette filters and runs.
    update(&mut app, ctrl('p'));
    typed(&mut app, "sampling");
    update(&mut app, key(KeyCode::Enter));
    assert!(matches!(app.overlay, Some(Overlay::Sampling { .. })));
    update(&mut app, key(KeyCode::Esc));

    // Model picker: a typed path loads in the background.
    update(&mut app, key(KeyCode::F(3)));
    typed(&mut app, "/models/x.pth");
    assert_eq!(
        commands(update(&mut app, key(KeyCode::Enter))),
        [Command::LoadModel {
            request_id: 1,
            spec: "/models/x.pth".into()
        }]
    );
    assert!(app.loading.is_some());
    ev(
        &mut app,
        Event::ModelLoading {
            request_id: 1,
            progress: LoadProgress {
                stage: "weights".into(),
                done: 1,
                total: 4,
            },
        },
    );
    assert_eq!(app.loading.as_ref().unwrap().done, 1);
    // ... or one from the list (under the recent model, then the local one): a hub model not
    // on disk is downloaded only once confirmed.
    update(&mut app, key(KeyCode::F(3)));
    update(&mut app, key(KeyCode::Down));
    update(&mut app, key(KeyCode::Down));
    assert!(commands(update(&mut app, key(KeyCode::Enter))).is_empty());
    assert!(matches!(app.overlay, Some(Overlay::ConfirmDownload { .. })));
    assert_eq!(
        commands(update(&mut app, key(KeyCode::Char('y')))),
        [
            Command::Cancel { request_id: 1 },
            Command::LoadModel {
                request_id: 2,
                spec: "RWKV/rwkv-raven-1b5".into()
            }
        ]
    );

    // Preset picker.
    update(&mut app, key(KeyCode::F(4)));
    update(&mut app, key(KeyCode::Down));
    assert_eq!(
        commands(update(&mut app, key(KeyCode::Enter))),
        [Command::SetPreset {
            name: "instruct".into()
        }]
    );

    // Theme picker previews, Esc undoes, Enter keeps and saves it in the config.
    let dark = app.theme;
    update(&mut app, key(KeyCode::F(6)));
    update(&mut app, key(KeyCode::Down));
    assert_ne!(app.theme, dark);
    assert_eq!(update(&mut app, key(KeyCode::Esc)), []);
    assert_eq!(app.theme, dark);
    update(&mut app, key(KeyCode::F(6)));
    update(&mut app, key(KeyCode::Down));
    assert_eq!(
        update(&mut app, key(KeyCode::Enter)),
        [Effect::SaveTheme("light".into())]
    );
    assert_eq!(app.themes.list[app.theme].0, "light");
    // Enter on the theme already in use changes nothing, so writes nothing.
    update(&mut app, key(KeyCode::F(6)));
    assert_eq!(update(&mut app, key(KeyCode::Enter)), []);
}

/// A raw repo (BlinkDL's, one `.pth` per size) is loaded without asking, since naming it
/// fetches nothing; its files come back to pick from, and the picked one is asked about as a
/// download. An answer for a load given up on changes nothing.
#[test]
fn a_repo_of_several_models_lists_its_files_in_the_picker() {
    let mut app = new_app();
    let raw = "BlinkDL/rwkv-7-world";
    update(&mut app, key(KeyCode::F(3)));
    typed(&mut app, raw);
    assert_eq!(
        commands(update(&mut app, key(KeyCode::Enter))),
        [Command::LoadModel {
            request_id: 1,
            spec: raw.into()
        }]
    );
    let files = vec![
        "RWKV-x070-World-0.1B-v2.8-20241210-ctx4096.pth".to_owned(),
        "RWKV-x070-World-1.5B-v3-20250127-ctx4096.pth".to_owned(),
    ];
    let stale = Event::ChooseFile {
        request_id: 7,
        repo: raw.into(),
        files: files.clone(),
    };
    assert!(ev(&mut app, stale).is_empty());
    assert!(app.loading.is_some());
    ev(
        &mut app,
        Event::ChooseFile {
            request_id: 1,
            repo: raw.into(),
            files: files.clone(),
        },
    );
    assert!(app.loading.is_none() && app.loading_request.is_none());
    assert!(
        app.notice
            .as_ref()
            .is_some_and(|n| n.text.contains("holds 2 models")),
        "{:?}",
        app.notice
    );
    let Some(Overlay::Models { input, .. }) = &app.overlay else {
        panic!("{:?}", app.overlay)
    };
    let shown = app::model_matches(&app.models, &input.text());
    let listed: Vec<&str> = shown.iter().map(|&i| app.models[i].as_str()).collect();
    assert_eq!(
        listed,
        [format!("{raw}/{}", files[0]), format!("{raw}/{}", files[1])]
    );
    update(&mut app, key(KeyCode::Down));
    assert!(commands(update(&mut app, key(KeyCode::Enter))).is_empty());
    let spec = format!("{raw}/{}", files[1]);
    assert_eq!(
        app.overlay,
        Some(Overlay::ConfirmDownload { spec: spec.clone() })
    );
    assert_eq!(
        commands(update(&mut app, key(KeyCode::Char('y')))),
        [Command::LoadModel {
            request_id: 2,
            spec
        }]
    );

    // A revision asked for goes with each file; a menu opened while the repo was looked up
    // stays open, and the files wait in the picker.
    app::load_model(&mut app, format!("{raw}@0123abc"));
    update(&mut app, key(KeyCode::F(1)));
    ev(
        &mut app,
        Event::ChooseFile {
            request_id: 3,
            repo: raw.into(),
            files: files.clone(),
        },
    );
    assert!(
        matches!(app.overlay, Some(Overlay::Help { .. })),
        "{:?}",
        app.overlay
    );
    assert!(app.models.contains(&format!("{raw}/{}@0123abc", files[0])));
}

#[test]
fn a_file_on_disk_is_not_asked_about_as_a_download() {
    let loaded = |name: &str| {
        Event::ModelLoaded(ModelInfo {
            name: name.into(),
            dtype: "f32".into(),
            device: "cpu".into(),
        })
    };
    let raw = "BlinkDL/rwkv-7-world";
    let cached = format!("{raw}/RWKV-x070-World-0.1B-v2.8-20241210-ctx4096.pth");
    let fetched = format!("{raw}/RWKV-x070-World-1.5B-v3-20250127-ctx4096.pth");
    let mut app = new_app();
    app.local.push(cached.clone());
    app.models.push(cached.clone());
    // Found in the cache at start: loaded at once.
    update(&mut app, key(KeyCode::F(3)));
    typed(&mut app, &cached);
    assert_eq!(
        commands(update(&mut app, key(KeyCode::Enter))),
        [Command::LoadModel {
            request_id: 1,
            spec: cached.clone()
        }]
    );
    ev(&mut app, loaded(&cached));
    // Not on disk: asked first; once loaded, no longer.
    update(&mut app, key(KeyCode::F(3)));
    typed(&mut app, &fetched);
    assert!(commands(update(&mut app, key(KeyCode::Enter))).is_empty());
    assert_eq!(
        app.overlay,
        Some(Overlay::ConfirmDownload {
            spec: fetched.clone()
        })
    );
    assert_eq!(
        commands(update(&mut app, key(KeyCode::Char('y')))),
        [Command::LoadModel {
            request_id: 2,
            spec: fetched.clone()
        }]
    );
    // A load asks for the models on disk again; the shell's scan finds the download.
    assert!(ev(&mut app, loaded(&fetched)).contains(&Effect::RefreshLocal));
    app.local.push(fetched.clone());
    update(&mut app, key(KeyCode::F(3)));
    typed(&mut app, &fetched);
    assert!(
        matches!(
            &commands(update(&mut app, key(KeyCode::Enter)))[..],
            [Command::LoadModel { spec, .. }] if *spec == fetched
        ),
        "{:?}",
        app.overlay
    );
}

#[test]
fn the_sampling_panel_adjusts_with_arrows_and_applies_on_enter() {
    let mut app = ready(CHAT);
    update(&mut app, key(KeyCode::F(5)));
    update(&mut app, key(KeyCode::Right));
    update(&mut app, key(KeyCode::Right));
    update(&mut app, key(KeyCode::Down));
    update(&mut app, key(KeyCode::Left));
    update(&mut app, key(KeyCode::Down));
    update(&mut app, key(KeyCode::Right));
    let Some(Overlay::Sampling { values, .. }) = &app.overlay else {
        panic!("no sampling panel");
    };
    assert!((values.temperature - 1.1).abs() < 1e-6, "{values:?}");
    assert!((values.top_p - 0.8).abs() < 1e-6);
    assert_eq!(values.top_k, 1);
    // `r` puts the selected setting back to the preset's default.
    update(&mut app, key(KeyCode::Char('r')));
    let cmds = commands(update(&mut app, key(KeyCode::Enter)));
    let [Command::SetSampling(p)] = cmds.as_slice() else {
        panic!("{cmds:?}");
    };
    assert_eq!(p.top_k, 0);
    assert!((p.temperature - 1.1).abs() < 1e-6);
    assert_eq!(&app.session.as_ref().unwrap().sampling, p);
    // Values stay in range.
    update(&mut app, key(KeyCode::F(5)));
    for _ in 0..200 {
        update(&mut app, key(KeyCode::Left));
    }
    let Some(Overlay::Sampling { values, .. }) = &app.overlay else {
        panic!("no sampling panel");
    };
    assert_eq!(values.temperature, 0.0);
}

#[test]
fn keybindings_can_be_overridden_in_the_config() {
    let config = Config::parse(
        Path::new("config.toml"),
        "[keys]\nregenerate = \"f12\"\nhelp = []\n",
    )
    .unwrap();
    let mut app = App::new(setup(Keymap::with_overrides(&config.keys).unwrap()));
    ev(&mut app, Event::SessionOpened(view(CHAT)));
    assert!(commands(update(&mut app, ctrl('r'))).is_empty());
    assert_eq!(
        commands(update(&mut app, key(KeyCode::F(12)))),
        [Command::Turn {
            request_id: 1,
            turn: Turn::Regenerate
        }]
    );
    update(&mut app, key(KeyCode::F(1)));
    assert!(app.overlay.is_none());
}

#[test]
fn the_sidebar_opens_creates_renames_deletes_and_forks() {
    let mut app = ready(CHAT);
    update(&mut app, key(KeyCode::Tab));
    assert_eq!(app.focus, Focus::Sidebar);
    update(&mut app, key(KeyCode::Down));
    assert_eq!(
        commands(update(&mut app, key(KeyCode::Enter))),
        [Command::OpenSession { name: "s2".into() }]
    );
    assert_eq!(app.focus, Focus::Input);

    update(&mut app, key(KeyCode::Tab));
    assert_eq!(
        commands(update(&mut app, key(KeyCode::Char('n')))),
        [Command::NewSession { preset: None }]
    );

    update(&mut app, key(KeyCode::Tab));
    update(&mut app, key(KeyCode::Up));
    update(&mut app, key(KeyCode::Char('r')));
    update(&mut app, ctrl('u'));
    typed(&mut app, "Corvids");
    assert_eq!(
        commands(update(&mut app, key(KeyCode::Enter))),
        [Command::Rename {
            name: "s1".into(),
            title: "Corvids".into()
        }]
    );
    assert_eq!(app.session.as_ref().unwrap().title, "Corvids");

    // Delete asks first; anything but y keeps the session.
    update(&mut app, key(KeyCode::Char('d')));
    assert!(commands(update(&mut app, key(KeyCode::Char('n')))).is_empty());
    update(&mut app, key(KeyCode::Char('d')));
    assert!(matches!(app.overlay, Some(Overlay::ConfirmDelete { .. })));
    assert_eq!(
        commands(update(&mut app, key(KeyCode::Char('y')))),
        [Command::Delete { name: "s1".into() }]
    );

    // Switching away mid-reply stops the reply first.
    let mut app = ready(CHAT);
    send(&mut app, "long story");
    update(&mut app, key(KeyCode::Tab));
    update(&mut app, key(KeyCode::Down));
    assert_eq!(
        commands(update(&mut app, key(KeyCode::Enter))),
        [
            Command::Cancel { request_id: 1 },
            Command::OpenSession { name: "s2".into() }
        ]
    );

    let mut app = ready(CHAT);
    update(&mut app, key(KeyCode::Tab));
    update(&mut app, key(KeyCode::Char('f')));
    assert_eq!(
        commands(update(&mut app, key(KeyCode::Enter))),
        [Command::Fork { at_turn: 1 }]
    );
}

#[test]
fn startup_resumes_the_newest_session_or_creates_one() {
    let loaded = || {
        Event::ModelLoaded(ModelInfo {
            name: "m".into(),
            dtype: "f32".into(),
            device: "cpu".into(),
        })
    };
    let old = || {
        vec![SessionInfo {
            name: "old".into(),
            title: "t".into(),
            model: "m".into(),
            last_used: 0,
        }]
    };
    // The model first (`--model`), or chosen in the picker after the list came: either way
    // the newest session is resumed, once.
    let mut app = new_app();
    assert!(commands(ev(&mut app, Event::Sessions(old()))).is_empty());
    assert_eq!(
        commands(ev(&mut app, loaded())),
        [Command::OpenSession { name: "old".into() }]
    );
    let mut app = new_app();
    ev(&mut app, loaded());
    let cmds = commands(ev(
        &mut app,
        Event::Sessions(vec![SessionInfo {
            name: "old".into(),
            title: "t".into(),
            model: "m".into(),
            last_used: 0,
        }]),
    ));
    assert_eq!(cmds, [Command::OpenSession { name: "old".into() }]);
    // Only the first list does that.
    assert!(commands(ev(&mut app, Event::Sessions(Vec::new()))).is_empty());

    let mut app = new_app();
    ev(&mut app, loaded());
    assert_eq!(
        commands(ev(&mut app, Event::Sessions(Vec::new()))),
        [Command::NewSession { preset: None }]
    );
}

#[test]
fn history_paste_copy_and_quit() {
    let mut app = ready(CHAT);
    send(&mut app, "first");
    ev(
        &mut app,
        Event::Finished {
            request_id: 1,
            stats: stats(StopReason::EndOfTurn),
        },
    );
    typed(&mut app, "draft");
    update(&mut app, key(KeyCode::Up));
    assert_eq!(app.input.text(), "first");
    update(&mut app, key(KeyCode::Down));
    assert_eq!(app.input.take(), "draft");

    update(&mut app, Input::Paste("a\x1b[31mb\nc".into()));
    assert_eq!(app.input.take(), "a␛[31mb\nc");

    update(&mut app, ctrl('j'));
    update(
        &mut app,
        Input::Key(KeyEvent::new(KeyCode::Enter, KeyModifiers::ALT)),
    );
    assert_eq!(app.input.take(), "\n\n");

    let fx = update(&mut app, alt('c'));
    assert!(matches!(fx.as_slice(), [Effect::Copy(t)] if t.is_empty()));
    assert_eq!(update(&mut app, ctrl('c')), [Effect::Quit]);
}

#[test]
fn errors_are_notices_that_end_a_failed_reply_and_expire() {
    let mut app = ready(&[]);
    send(&mut app, "hi");
    ev(
        &mut app,
        Event::Error {
            request_id: Some(1),
            message: "out of memory\x1b[2J".into(),
        },
    );
    assert!(app.pending.is_none());
    assert_eq!(app.messages.len(), 1, "the empty reply is removed");
    let notice = app.notice.clone().unwrap();
    assert!(notice.error && notice.text == "out of memory␛[2J");
    let later = app.now + 60;
    update(&mut app, Input::Tick(later));
    assert!(app.notice.is_none());
}

#[test]
fn scrolling_away_holds_the_view_while_the_stream_goes_on() {
    let long: String = (0..80).map(|i| format!("line {i}\n")).collect();
    let mut app = ready(&[(Role::User, "count"), (Role::Bot, &long)]);
    update(&mut app, Input::Resize(80, 24));
    assert_eq!(app.scroll, Scroll::Follow);
    update(&mut app, key(KeyCode::PageUp));
    let Scroll::Top(top) = app.scroll else {
        panic!("still following");
    };
    send(&mut app, "more");
    // Sending follows again; scrolling away during the stream holds the view.
    assert_eq!(app.scroll, Scroll::Follow);
    update(
        &mut app,
        Input::Mouse(MouseEvent {
            kind: MouseEventKind::ScrollUp,
            column: 0,
            row: 0,
            modifiers: KeyModifiers::NONE,
        }),
    );
    let held = app.scroll;
    assert!(matches!(held, Scroll::Top(_)));
    ev(
        &mut app,
        Event::Token {
            request_id: 1,
            text: "a\nb\nc\n".into(),
        },
    );
    assert_eq!(app.scroll, held);
    update(&mut app, key(KeyCode::Home));
    assert_eq!(app.scroll, Scroll::Top(0));
    update(&mut app, key(KeyCode::End));
    assert_eq!(app.scroll, Scroll::Follow);
    assert!(top > 0);
}

#[test]
fn the_ui_drives_the_real_worker_thread() {
    let worker = Worker::spawn(Box::new(FakeBackend::default())).unwrap();
    let mut app = new_app();
    let mut effects = app::load_model(&mut app, "tiny".into());
    effects.push(Effect::Command(Command::ListSessions));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut sent = false;
    while std::time::Instant::now() < deadline {
        for c in commands(std::mem::take(&mut effects)) {
            worker.send(c);
        }
        if let Some(e) = worker.recv_timeout(std::time::Duration::from_millis(50)) {
            effects = update(&mut app, Input::Worker(e));
        }
        if app.session.is_some() && !sent && app.pending.is_none() {
            typed(&mut app, "hello");
            effects.extend(update(&mut app, key(KeyCode::Enter)));
            sent = true;
        }
        if sent && app.pending.is_none() && app.saved {
            break;
        }
    }
    assert_eq!(app.messages.len(), 2);
    assert_eq!(app.messages[1].text, "Hello, world!");
    assert_eq!(app.model.as_ref().unwrap().name, "tiny");
    worker.shutdown();
}

// --- Screens ---

fn screen(app: &App, w: u16, h: u16) -> String {
    let mut terminal = Terminal::new(TestBackend::new(w, h)).unwrap();
    terminal.draw(|f| render(f, app)).unwrap();
    let buffer = terminal.backend().buffer();
    let mut out = String::new();
    for y in 0..h {
        let mut line = String::new();
        for x in 0..w {
            line.push_str(buffer[(x, y)].symbol());
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Compares with `snapshots/<name>.snap`: the file is named by the screen alone, and holds the
/// screen alone (no expression line), so a diff of it reads as the screen does.
fn snapshot(name: &str, text: &str) {
    let mut settings = insta::Settings::clone_current();
    settings.set_prepend_module_to_snapshot(false);
    settings.set_omit_expression(true);
    settings.bind(|| insta::assert_snapshot!(name, text));
}

fn finished_app() -> App {
    let mut app = ready(CHAT);
    app.last_stats = Some(stats(StopReason::EndOfTurn));
    app
}

/// The named screens of the app, each as an app state.
fn screens() -> Vec<(&'static str, App)> {
    let mut out = Vec::new();

    let mut streaming = ready(CHAT);
    send(&mut streaming, "And write me some code?");
    ev(
        &mut streaming,
        Event::Token {
            request_id: 1,
            text: "Sure:\n```rust\nfn main() {\n    println!(\"caw\");\n}\n```\nThat prints".into(),
        },
    );
    out.push(("streaming", streaming));

    out.push(("finished", finished_app()));

    let mut sidebar = ready(CHAT);
    update(&mut sidebar, key(KeyCode::Tab));
    update(&mut sidebar, key(KeyCode::Down));
    out.push(("sidebar", sidebar));

    let mut empty = new_app();
    update(&mut empty, key(KeyCode::F(3)));
    out.push(("model_picker_first_run", empty));

    for (name, input) in [
        ("help", key(KeyCode::F(1))),
        ("palette", ctrl('p')),
        ("preset_picker", key(KeyCode::F(4))),
        ("sampling", key(KeyCode::F(5))),
        ("theme_picker", key(KeyCode::F(6))),
    ] {
        let mut app = ready(CHAT);
        update(&mut app, input);
        out.push((name, app));
    }

    let mut loading = ready(CHAT);
    app::load_model(&mut loading, "RWKV/rwkv-raven-1b5".into());
    update(&mut loading, key(KeyCode::F(3)));
    ev(
        &mut loading,
        Event::ModelLoading {
            request_id: 1,
            progress: LoadProgress {
                stage: "weights".into(),
                done: 3,
                total: 4,
            },
        },
    );
    out.push(("model_picker_loading", loading));

    for (name, k) in [("rename", 'r'), ("delete", 'd'), ("fork", 'f')] {
        let mut app = ready(CHAT);
        update(&mut app, key(KeyCode::Tab));
        update(&mut app, key(KeyCode::Char(k)));
        out.push((name, app));
    }

    let mut long_input = ready(CHAT);
    typed(&mut long_input, &"word ".repeat(30));
    update(&mut long_input, ctrl('j'));
    typed(&mut long_input, "second line");
    out.push(("long_input", long_input));

    let mut error = ready(CHAT);
    ev(
        &mut error,
        Event::Error {
            request_id: None,
            message: "cannot open model: no such file".into(),
        },
    );
    out.push(("error", error));
    out
}

#[test]
fn screens_match_their_snapshots_at_80x24_and_20x5() {
    for (name, app) in screens() {
        snapshot(&format!("{name}_80x24"), &screen(&app, 80, 24));
        snapshot(&format!("{name}_20x5"), &screen(&app, 20, 5));
    }
}

#[test]
fn screens_show_what_matters() {
    let all: Vec<(&str, String)> = screens()
        .into_iter()
        .map(|(n, a)| (n, screen(&a, 80, 24)))
        .collect();
    let get = |name: &str| &all.iter().find(|(n, _)| *n == name).unwrap().1;
    let s = get("streaming");
    for want in [
        "You",
        "Bot",
        "│ fn main() {",
        "That prints▌",
        "Ravens and crows",
        "Replying",
    ] {
        assert!(s.contains(want), "{want:?} missing:\n{s}");
    }
    // At 80 columns the state size and the preset make room for the speeds.
    let s = get("finished");
    for want in [
        "rwkv-raven-1b5 f16/cpu",
        "40 tokens",
        "prefill 240 decode 14.2 tok/s",
        "✓ saved",
    ] {
        assert!(s.contains(want), "{want:?} missing:\n{s}");
    }
    let s = screen(&finished_app(), 120, 24);
    for want in [
        "│ raven │",
        "state 960 KiB",
        "prefill 240 decode 14.2 tok/s",
    ] {
        assert!(s.contains(want), "{want:?} missing:\n{s}");
    }
    assert!(get("sidebar").contains("Rust lifetimes"));
    assert!(get("sidebar").contains("3d ago"));
    assert!(get("help").contains("Ctrl+R"));
    assert!(get("help").contains("Regenerate the last reply"));
    assert!(get("sampling").contains("temperature"));
    assert!(get("sampling").contains("preset 1.00"));
    assert!(get("model_picker_loading").contains("loading weights 75%"));
    assert!(get("model_picker_first_run").contains("RWKV/rwkv-raven-1b5"));
    assert!(get("delete").contains("Delete “Ravens and crows”"));
    assert!(get("error").contains("! cannot open model"));
    let mut deleted = ready(CHAT);
    update(&mut deleted, key(KeyCode::Tab));
    update(&mut deleted, key(KeyCode::Char('d')));
    update(&mut deleted, key(KeyCode::Char('y')));
    assert!(screen(&deleted, 80, 24).contains("No session is open: Tab then N starts one."));
}

#[test]
fn no_size_panics() {
    for (_, app) in screens() {
        for w in 0..=32 {
            for h in 0..=10 {
                screen(&app, w, h);
            }
        }
    }
}

#[test]
fn model_output_cannot_reach_the_terminal_as_escapes() {
    let mut app = ready(&[]);
    let mut hostile = view(&[]);
    hostile.title = "evil\x1b]0;title\x07".into();
    ev(&mut app, Event::SessionOpened(hostile));
    send(&mut app, "hi");
    ev(
        &mut app,
        Event::Token {
            request_id: 1,
            text: "\x1b]52;c;ZXZpbA==\x07\x1b[2J".into(),
        },
    );
    let s = screen(&app, 80, 24);
    assert!(!s.contains('\x1b'));
    assert!(s.contains("␛]52;c;ZXZpbA==␇␛[2J"));
    assert!(s.contains("evil␛]0;title␇"));
}

/// Bidi overrides (which reorder what the user reads), C1 controls (CSI as one code point),
/// carriage returns and backspaces, in a reply and in pasted text: none reaches the screen.
#[test]
fn bidi_overrides_and_c1_controls_are_shown_harmlessly() {
    let hostile = "safe\u{202e}txt.exe\u{2066}x\u{9b}2Jy\rz\x08w";
    let mut app = ready(&[]);
    ev(&mut app, Event::SessionOpened(view(&[])));
    send(&mut app, "hi");
    ev(
        &mut app,
        Event::Token {
            request_id: 1,
            text: hostile.into(),
        },
    );
    update(&mut app, Input::Paste(hostile.into()));
    let s = screen(&app, 80, 24);
    for bad in ['\u{202e}', '\u{2066}', '\u{9b}', '\r', '\x08'] {
        assert!(!s.contains(bad), "{bad:?} in:\n{s}");
    }
    assert!(s.contains("safe\u{fffd}txt.exe"), "{s}");
}

fn peak_mb() -> f64 {
    crate::bench::peak_rss_mb().unwrap_or(0.0)
}

/// Scale benchmark, not a timed test (SECURITY.md reports its numbers): a chat of about
/// 100,000 tokens of history and a 1 MB paste into the input box, drawn at 120x40.
/// Run with `cargo test --lib scale_ -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark: prints timings and memory"]
fn scale_a_100k_token_chat_and_a_megabyte_paste() {
    use std::time::Instant;
    // About 11 tokens a sentence, 5 sentences a message, 2,000 messages: 110,000 tokens.
    let text = "The raven flies over the hills and eats berries. ".repeat(5);
    let history: Vec<(Role, &str)> = (0..2000)
        .map(|i| {
            (
                if i % 2 == 0 { Role::User } else { Role::Bot },
                text.as_str(),
            )
        })
        .collect();
    let before = peak_mb();
    let t = Instant::now();
    let mut app = ready(&history);
    let opened = t.elapsed();
    let t = Instant::now();
    screen(&app, 120, 40);
    let drawn = t.elapsed();
    println!(
        "100k-token chat: opened in {opened:?}, drawn in {drawn:?}, peak RSS {:.1} -> {:.1} MB",
        before,
        peak_mb()
    );

    let paste: String = (0..16_000)
        .map(|i| {
            format!("{i:>6} pasted line of text, eighty characters wide, padded out ........\n")
        })
        .collect();
    assert!(paste.len() >= 1 << 20);
    let t = Instant::now();
    update(&mut app, Input::Paste(paste));
    let pasted = t.elapsed();
    let t = Instant::now();
    screen(&app, 120, 40);
    let drawn = t.elapsed();
    let t = Instant::now();
    for _ in 0..10 {
        update(&mut app, key(KeyCode::Char('a')));
        screen(&app, 120, 40);
    }
    let keystroke = t.elapsed() / 10;
    println!(
        "1 MB paste: taken in {pasted:?}, drawn in {drawn:?}, a keystroke + redraw after it {keystroke:?}, peak RSS {:.1} MB",
        peak_mb()
    );
}

// --- What a newcomer meets ---

#[test]
fn a_paste_with_cr_line_ends_keeps_its_lines() {
    let mut app = ready(CHAT);
    // tmux, xterm and VTE send a pasted line end as CR; text from Windows brings CRLF.
    update(&mut app, Input::Paste("one\rtwo\r\nthree".into()));
    assert_eq!(app.input.text(), "one\ntwo\nthree");
    let s = screen(&app, 80, 24);
    assert!(
        s.contains("│one") && s.contains("│two") && s.contains("│three"),
        "{s}"
    );
    assert_eq!(
        send(&mut app, ""),
        [Command::Turn {
            request_id: 1,
            turn: Turn::Send("one\ntwo\nthree".into())
        }]
    );
}

fn session_info(name: &str, title: &str) -> SessionInfo {
    SessionInfo {
        name: name.into(),
        title: title.into(),
        model: "rwkv-raven-1b5".into(),
        last_used: 1_000_000,
    }
}

#[test]
fn after_a_rename_re_sorts_the_sidebar_the_selection_stays_on_that_session() {
    let mut app = ready(CHAT);
    update(&mut app, key(KeyCode::Tab));
    update(&mut app, key(KeyCode::Down));
    update(&mut app, key(KeyCode::Char('r')));
    update(&mut app, ctrl('u'));
    typed(&mut app, "Alpha");
    update(&mut app, key(KeyCode::Enter));
    // The store lists the renamed session first now.
    ev(
        &mut app,
        Event::Sessions(vec![
            session_info("s2", "Alpha"),
            session_info("s1", "Ravens and crows"),
        ]),
    );
    assert!(screen(&app, 80, 24).contains("▸ Alpha"));
    update(&mut app, key(KeyCode::Char('d')));
    assert!(
        matches!(&app.overlay, Some(Overlay::ConfirmDelete { name, .. }) if name == "s2"),
        "{:?}",
        app.overlay
    );
}

#[test]
fn an_untitled_session_is_renamed_from_an_empty_field_and_titled_by_its_first_message() {
    let mut app = ready(&[]);
    ev(
        &mut app,
        Event::Sessions(vec![session_info("s1", crate::store::UNTITLED)]),
    );
    update(&mut app, key(KeyCode::Tab));
    update(&mut app, key(KeyCode::Char('r')));
    assert!(matches!(&app.overlay, Some(Overlay::Rename { input, .. }) if input.is_empty()));
    let s = screen(&app, 80, 24);
    assert!(s.contains("Title:") && !s.contains("Title: (empty)"), "{s}");
    update(&mut app, key(KeyCode::Esc));
    update(&mut app, key(KeyCode::Tab));

    send(&mut app, "Do ravens remember faces?");
    ev(
        &mut app,
        Event::Finished {
            request_id: 1,
            stats: stats(StopReason::EndOfTurn),
        },
    );
    ev(
        &mut app,
        Event::Sessions(vec![session_info("s1", "Do ravens remember faces?")]),
    );
    let s = screen(&app, 80, 24);
    let title = s.lines().next().unwrap();
    assert!(title.contains(" Do ravens remember faces? "), "{s}");
}

#[test]
fn after_a_model_switch_the_status_bar_shows_the_reopened_session() {
    let mut app = ready(CHAT);
    let cmds = commands(ev(
        &mut app,
        Event::ModelLoaded(ModelInfo {
            name: "other".into(),
            dtype: "f32".into(),
            device: "cpu".into(),
        }),
    ));
    assert_eq!(cmds, [Command::OpenSession { name: "s1".into() }]);
    ev(
        &mut app,
        Event::SessionOpened(SessionView {
            tokens: 4321,
            state_bytes: 2048,
            replayed_tokens: 4321,
            ..view(CHAT)
        }),
    );
    let status = screen(&app, 120, 24).lines().nth(23).unwrap().to_owned();
    assert!(
        status.contains("4321 tokens") && status.contains("state 2 KiB"),
        "{status}"
    );
}

#[test]
fn the_status_bar_keeps_the_speeds_and_the_saved_mark_at_120_and_80_columns() {
    let mut app = finished_app();
    app.model.as_mut().unwrap().name = "RWKV/rwkv-raven-1b5".into();
    app.last_stats.as_mut().unwrap().prefill_tokens_per_s = 427_074.0;
    for w in [120, 80] {
        let status = screen(&app, w, 24).lines().nth(23).unwrap().to_owned();
        assert!(
            status.contains("decode 14.2 tok/s") && status.ends_with("✓ saved"),
            "{w}: {status}"
        );
        assert!(status.contains("rwkv-raven-1b5 f16/cpu"), "{w}: {status}");
    }
    let wide = screen(&app, 160, 24).lines().nth(23).unwrap().to_owned();
    assert!(
        wide.contains("RWKV/rwkv-raven-1b5 f16/cpu │ raven │ 40 tokens │ state 960 KiB"),
        "{wide}"
    );
}

#[test]
fn theme_names_from_file_names_are_defused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("evil\u{202e}txt.toml"),
        "extends = \"light\"\n",
    )
    .unwrap();
    let (themes, problems) = Themes::load(Some(dir.path()));
    assert!(problems.is_empty(), "{problems:?}");
    let mut app = App::new(Setup {
        themes,
        ..setup(Keymap::default())
    });
    update(&mut app, key(KeyCode::F(6)));
    let s = screen(&app, 80, 24);
    assert!(!s.contains('\u{202e}'), "{s}");
    assert!(s.contains("evil\u{FFFD}txt"), "{s}");
}

#[test]
fn a_broken_theme_file_is_reported_whole_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mine.toml"), "extends = \"light\"\n").unwrap();
    std::fs::write(dir.path().join("broken.toml"), "text = \"#zzzzzz\"\n").unwrap();
    let (themes, problems) = Themes::load(Some(dir.path()));
    assert!(themes.get("mine").is_some() && themes.get("dark").is_some());
    assert!(themes.get("broken").is_none());
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("broken") && problems[0].contains("#zzzzzz"));
}

/// Feeds the worker's events to the app and the app's commands to the worker until `done`;
/// panics after a long while, so a broken flow fails instead of hanging (no speed bound).
fn pump(worker: &Worker, app: &mut App, mut effects: Vec<Effect>, done: impl Fn(&App) -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !done(app) {
        assert!(
            std::time::Instant::now() < deadline,
            "never got there: {:?} {:?}",
            app.notice,
            app.session
        );
        for c in commands(std::mem::take(&mut effects)) {
            worker.send(c);
        }
        if let Some(e) = worker.recv_timeout(std::time::Duration::from_millis(50)) {
            effects = update(app, Input::Worker(e));
        }
    }
    for c in commands(effects) {
        worker.send(c);
    }
}

fn tiny() -> String {
    format!("{}/tests/fixtures/tiny-rwkv4", env!("CARGO_MANIFEST_DIR"))
}

/// The real chat backend on its thread; `config` holds `presets/`.
fn chat_worker(data: &Path, config: Option<&Path>) -> Worker {
    let backend = crate::worker::default_backend(&crate::worker::BackendOptions {
        data_dir: Some(data.to_owned()),
        config_dir: config.map(Path::to_owned),
        load: crate::model::LoadOptions::default(),
        max_reply_tokens: None,
    })
    .unwrap();
    Worker::spawn(backend).unwrap()
}

#[test]
fn choosing_a_model_in_the_picker_at_start_resumes_the_last_session() {
    let data = tempfile::tempdir().unwrap();
    // A first run that chatted once.
    let worker = chat_worker(data.path(), None);
    let mut app = new_app();
    let start = vec![
        Effect::Command(Command::LoadModel {
            request_id: 1,
            spec: tiny(),
        }),
        Effect::Command(Command::ListSessions),
    ];
    pump(&worker, &mut app, start, |a| a.session.is_some());
    let first = app.session.clone().unwrap().name;
    let fx = update(&mut app, Input::Paste("Hello".into()));
    let fx = [fx, update(&mut app, key(KeyCode::Enter))].concat();
    pump(&worker, &mut app, fx, |a| a.pending.is_none() && a.saved);
    worker.shutdown();

    // The next start has no model configured: the picker, then the user chooses one.
    let worker = chat_worker(data.path(), None);
    let mut app = new_app();
    let fx = vec![Effect::Command(Command::ListSessions)];
    // Without a model nothing opens: the list comes, and the first model chosen decides.
    pump(&worker, &mut app, fx, |a| !a.sessions.is_empty());
    assert!(app.session.is_none());
    update(&mut app, key(KeyCode::F(3)));
    update(&mut app, Input::Paste(tiny()));
    let fx = update(&mut app, key(KeyCode::Enter));
    pump(&worker, &mut app, fx, |a| a.session.is_some());
    assert_eq!(app.session.as_ref().unwrap().name, first);
    assert_eq!(app.messages.len(), 2);
    pump(&worker, &mut app, Vec::new(), |a| a.sessions.len() == 1);
    worker.shutdown();
    let store = crate::store::Store::open(data.path()).unwrap();
    assert_eq!(store.list().unwrap().len(), 1, "no empty session was added");
}

#[test]
fn a_broken_preset_file_is_shown_and_the_app_still_chats() {
    let data = tempfile::tempdir().unwrap();
    let presets = data.path().join("presets");
    std::fs::create_dir_all(&presets).unwrap();
    std::fs::write(
        presets.join("broken.toml"),
        "name = \"broken\"\nstop = [\"x\"\n",
    )
    .unwrap();
    let worker = chat_worker(data.path(), Some(data.path()));
    let mut app = new_app();
    let start = vec![
        Effect::Command(Command::LoadModel {
            request_id: 1,
            spec: tiny(),
        }),
        Effect::Command(Command::ListSessions),
    ];
    pump(&worker, &mut app, start, |a| a.session.is_some());
    assert_eq!(app.presets.len(), crate::chat::Preset::built_in().len());
    let s = screen(&app, 200, 24);
    assert!(
        s.contains("! skipped a preset: ") && s.contains("broken.toml: TOML parse error at line 2"),
        "{s}"
    );
    typed(&mut app, "Hello");
    let fx = update(&mut app, key(KeyCode::Enter));
    pump(&worker, &mut app, fx, |a| a.pending.is_none() && a.saved);
    assert_eq!(app.messages.len(), 2);
    assert!(!app.messages[1].text.is_empty());
    worker.shutdown();
}

// --- Long chats ---

/// The screen as drawn from the kept lines, and as drawn after forgetting them.
fn cached_and_fresh(app: &App, w: u16, h: u16) -> (String, String) {
    let cached = screen(app, w, h);
    *app.chat_cache.borrow_mut() = super::render::ChatCache::default();
    (cached, screen(app, w, h))
}

#[test]
fn a_frame_wraps_only_the_streaming_message_whatever_the_history() {
    let history: Vec<(Role, &str)> = (0..200)
        .map(|i| {
            let role = if i % 2 == 0 { Role::User } else { Role::Bot };
            (role, "The raven flies over the hills and eats berries.")
        })
        .collect();
    let mut app = ready(&history);
    screen(&app, 80, 24);
    send(&mut app, "More?");
    let before = app.chat_cache.borrow().wrapped;
    for _ in 0..10 {
        ev(
            &mut app,
            Event::Token {
                request_id: 1,
                text: " caw".into(),
            },
        );
        screen(&app, 80, 24);
    }
    update(&mut app, key(KeyCode::PageUp));
    screen(&app, 80, 24);
    let wrapped = app.chat_cache.borrow().wrapped - before;
    // The user's new message once, then the reply once per token: never the 200 before.
    assert!(wrapped <= 12, "{wrapped} messages wrapped");
}

#[test]
fn the_kept_lines_always_match_a_fresh_wrap() {
    let mut app = ready(CHAT);
    let check = |app: &mut App, w: u16, what: &str| {
        let (cached, fresh) = cached_and_fresh(app, w, 24);
        assert_eq!(cached, fresh, "after {what}");
    };
    check(&mut app, 80, "opening");
    send(&mut app, "Tell me a story");
    for t in ["Once", " upon", " a\n```\ncode", "\n```\ntime"] {
        ev(
            &mut app,
            Event::Token {
                request_id: 1,
                text: t.into(),
            },
        );
        screen(&app, 80, 24);
        check(&mut app, 80, t);
    }
    ev(
        &mut app,
        Event::Finished {
            request_id: 1,
            stats: stats(StopReason::Cancelled),
        },
    );
    check(&mut app, 80, "stopping");
    check(&mut app, 50, "a narrower terminal");
    update(&mut app, key(KeyCode::F(6)));
    update(&mut app, key(KeyCode::Down));
    check(&mut app, 50, "another theme");
    update(&mut app, key(KeyCode::Esc));
    // Regenerate drops the reply; the new one starts empty.
    update(&mut app, ctrl('r'));
    check(&mut app, 80, "regenerate");
    // Another session whose messages have the same lengths and roles.
    ev(
        &mut app,
        Event::SessionOpened(view(&[
            (Role::User, "Do crows remember faces?"),
            (
                Role::Bot,
                "No. Ravens and crows recognise individual human faces and remember them for years.",
            ),
        ])),
    );
    let (cached, _) = cached_and_fresh(&app, 80, 24);
    assert!(cached.contains("Do crows remember faces?"), "{cached}");
    check(&mut app, 80, "another session");
}

#[test]
fn the_model_picker_shows_sizes_filters_as_typed_and_asks_before_a_download() {
    let mut app = ready(CHAT);
    app.models = [
        "models/rwkv-4-169m",
        "RWKV/rwkv-raven-1b5",
        "RWKV/rwkv-raven-3b",
    ]
    .map(String::from)
    .to_vec();
    update(&mut app, key(KeyCode::F(3)));
    let s = screen(&app, 100, 30);
    // The field starts empty: one Enter on a pre-filled 3B model was a multi-GB download.
    assert!(
        s.contains("Filter, path or hub id: │") || s.contains("Filter, path or hub id:  "),
        "{s}"
    );
    assert!(
        s.contains("models/rwkv-4-169m") && s.contains("on disk"),
        "{s}"
    );
    let raven = s
        .lines()
        .find(|l| l.contains("RWKV/rwkv-raven-3b"))
        .unwrap();
    assert!(
        raven.contains("GB download") && raven.contains("GB RAM at f16"),
        "{raven}"
    );

    typed(&mut app, "3B");
    let s = screen(&app, 100, 30);
    assert!(s.contains("RWKV/rwkv-raven-3b"), "{s}");
    assert!(
        !s.contains("RWKV/rwkv-raven-1b5") && !s.contains("rwkv-4-169m"),
        "{s}"
    );
    assert!(commands(update(&mut app, key(KeyCode::Enter))).is_empty());
    let s = screen(&app, 100, 30);
    assert!(s.contains("Download RWKV/rwkv-raven-3b?"), "{s}");
    assert!(s.contains("GB download") && s.contains("(y/n)"), "{s}");
    // Anything but y keeps the model as it is.
    assert!(commands(update(&mut app, key(KeyCode::Char('n')))).is_empty());
    assert!(app.overlay.is_none() && app.loading.is_none());

    // A model on disk loads at once; a typed path matching nothing loads as typed.
    update(&mut app, key(KeyCode::F(3)));
    typed(&mut app, "169m");
    assert_eq!(
        commands(update(&mut app, key(KeyCode::Enter))),
        [Command::LoadModel {
            request_id: 1,
            spec: "models/rwkv-4-169m".into()
        }]
    );
}

/// A thinking preset's reply shows its reasoning folded into one dimmed line until the unfold
/// key; the answer is shown as any reply. Replies written with another preset are shown as
/// written, also in a session switched to a thinking preset since; so is a reply of a thinking
/// preset in a session switched away from it: the worker marks each reply.
#[test]
fn a_g1_reply_shows_its_reasoning_folded_until_asked() {
    let reply = ">\nThe user greets me.\nI should greet back.\n</think>\nHello! How can I help?";
    let mut app = ready(&[(Role::User, "Hi"), (Role::Bot, reply)]);
    let mut presets = FakeBackend::default().presets();
    presets.push(PresetInfo {
        name: "g1-think".into(),
        description: String::new(),
        sampling: SamplingParams::default(),
        think: true,
    });
    ev(&mut app, Event::Presets(presets));
    let as_raven = screen(&app, 80, 24);
    assert!(as_raven.contains("</think>"), "{as_raven}");
    let earlier = "Plain words from the world preset.";
    let mut view = view(&[
        (Role::User, "Hello"),
        (Role::Bot, earlier),
        (Role::User, "Hi"),
        (Role::Bot, reply),
    ]);
    view.preset = "g1-think".into();
    view.messages[3].reasons = true;
    ev(&mut app, Event::SessionOpened(view));
    let folded = screen(&app, 80, 24);
    assert!(folded.contains(earlier), "{folded}");
    assert_eq!(folded.matches("┆").count(), 1, "{folded}");
    assert!(
        folded.contains("  ┆ thought (2 lines; Alt+T / F10 unfolds)"),
        "{folded}"
    );
    assert!(folded.contains("Hello! How can I help?"), "{folded}");
    assert!(!folded.contains("I should greet back"), "{folded}");
    assert!(!folded.contains("</think>"), "{folded}");
    update(&mut app, alt('t'));
    let unfolded = screen(&app, 80, 24);
    assert!(unfolded.contains("┆ I should greet back."), "{unfolded}");
    assert!(unfolded.contains("Hello! How can I help?"), "{unfolded}");
    // A reply written now, with the thinking preset, is one with reasoning.
    send(&mut app, "And you?");
    assert!(app.messages.last().is_some_and(|m| m.reasons));

    // Regenerating keeps the user message as it was fed, so the new reply starts as the old
    // one did, whatever the preset is now: here the plain reply of a session now on g1-think.
    let request_id = app.pending.map(|p| p.request_id).unwrap();
    let done = stats(StopReason::EndOfTurn);
    ev(
        &mut app,
        Event::Finished {
            request_id,
            stats: done,
        },
    );
    let mut plain = self::view(&[(Role::User, "Hello"), (Role::Bot, earlier)]);
    plain.preset = "g1-think".into();
    ev(&mut app, Event::SessionOpened(plain));
    update(&mut app, ctrl('r'));
    assert!(
        app.messages
            .last()
            .is_some_and(|m| !m.reasons && m.text.is_empty())
    );
}

/// The preset picker's name column is as wide as the longest name, so a long name never runs
/// into its description.
#[test]
fn a_long_preset_name_keeps_a_space_before_its_description() {
    let mut app = ready(CHAT);
    let mut presets = FakeBackend::default().presets();
    presets.push(PresetInfo {
        name: "user-assistant".into(),
        description: "User and Assistant".into(),
        sampling: SamplingParams::default(),
        think: false,
    });
    ev(&mut app, Event::Presets(presets));
    update(&mut app, key(KeyCode::F(4)));
    let s = screen(&app, 80, 24);
    assert!(s.contains("user-assistant User and Assistant"), "{s}");
}
