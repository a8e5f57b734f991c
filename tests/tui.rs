//! The real binary's chat app, driven the way a user does: in tmux (skipped with a note where
//! tmux is not installed; CI installs it), with the tiny fixture model.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_rwkv-chat");

#[test]
fn a_bad_config_is_refused_before_the_terminal_is_touched() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.toml"),
        "theme = \"dark\"\n[keys]\nregenerate = \"hyper+r\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("--config-dir")
        .arg(dir.path())
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("config.toml:3:14:"), "{stderr}");
    assert!(stderr.contains("hyper"), "{stderr}");
    assert!(out.stdout.is_empty(), "the terminal was written to");
}

/// A tmux server of its own, killed when the test ends however it ends.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(command: &str) -> Option<Self> {
        // One server per test: tests run in parallel in one process.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let socket = format!("rwkv-chat-test-{}-{n}", std::process::id());
        let status = Command::new("tmux")
            .args(["-L", &socket, "-f", "/dev/null", "new-session", "-d"])
            .args(["-x", "100", "-y", "30", command])
            .status()
            .ok()?;
        status.success().then_some(Self { socket })
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        for k in keys {
            self.run(&["send-keys", "-t", "0", k]);
            // Separate writes, so Esc followed by a key is not read as Alt+key.
            std::thread::sleep(Duration::from_millis(150));
        }
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "0"])
    }

    /// Waits until the screen shows `text`; panics with the screen after a long while, so a
    /// broken app fails the test instead of hanging it (this bounds nothing about speed).
    fn wait_for(&self, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let screen = self.screen();
            if screen.contains(text) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "never showed {text:?}:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        self.run(&["kill-server"]);
    }
}

fn quoted(p: &Path) -> String {
    format!("'{}'", p.display())
}

#[test]
fn the_app_starts_takes_keys_and_gives_the_terminal_back_in_tmux() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(config.join("config.toml"), "[keys]\nquit = \"ctrl+q\"\n").unwrap();
    let command = format!(
        "HF_HOME={} RWKV_CHAT_CONFIG_DIR={} {} --data-dir {}; echo EXIT=$?; sleep 60",
        quoted(&dir.path().join("hf")),
        quoted(&config),
        quoted(Path::new(BIN)),
        quoted(&dir.path().join("data")),
    );
    let Some(tmux) = Tmux::start(&command) else {
        eprintln!("tmux is not installed: skipping the terminal test");
        return;
    };
    // No model configured: the model picker is open, its field empty, on the Raven model
    // recommended for this machine's memory with its size, the catalogue below it.
    let screen = tmux.wait_for("> RWKV/rwkv-raven-");
    assert!(screen.contains("Filter, path or hub id:"), "{screen}");
    assert!(screen.contains("RAM at f16"), "{screen}");
    assert!(screen.contains("Sessions"), "{screen}");
    assert!(screen.contains("RWKV/rwkv-4-169m-pile"), "{screen}");
    tmux.keys(&["Escape", "F1"]);
    tmux.wait_for("Regenerate the last reply");
    tmux.keys(&["Escape", "h", "i", "?", "C-j", "there"]);
    let screen = tmux.wait_for("there");
    assert!(screen.contains("│hi?"), "{screen}");
    assert!(!screen.contains("Regenerate the last reply"), "{screen}");
    tmux.keys(&["C-q"]);
    let screen = tmux.wait_for("EXIT=0");
    assert!(
        !screen.contains("Sessions"),
        "alternate screen left:\n{screen}"
    );
    let log = std::fs::read_to_string(dir.path().join("data/rwkv-chat.log")).unwrap();
    assert!(log.contains("rwkv-chat stopped"), "{log}");
}

fn tiny_model() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-rwkv4")
}

/// The whole loop a user goes through: chat, stop a reply, quit, come back to the session with
/// its history, and go on without the history being fed through the model again.
#[test]
fn chat_stop_quit_and_resume_without_refeeding_in_tmux() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    let data = dir.path().join("data");
    std::fs::create_dir_all(config.join("presets")).unwrap();
    // Greedy and without stop sequences, so a reply runs long enough to be stopped.
    std::fs::write(
        config.join("presets/long.toml"),
        "name = \"long\"\nuser_prefix = \"User: \"\nuser_suffix = \"\\n\\n\"\nbot_prefix = \"Bot:\"\n\
         bot_suffix = \"\\n\\n\"\nbanned_tokens = [0]\n[sampling]\ntemperature = 0.0\n",
    )
    .unwrap();
    std::fs::write(config.join("config.toml"), "preset = \"long\"\n").unwrap();
    let command = format!(
        "RWKV_CHAT_CONFIG_DIR={} {} --model {} --data-dir {}; echo EXIT=$?; sleep 60",
        quoted(&config),
        quoted(Path::new(BIN)),
        quoted(&tiny_model()),
        quoted(&data),
    );
    let Some(tmux) = Tmux::start(&command) else {
        eprintln!("tmux is not installed: skipping the terminal test");
        return;
    };
    tmux.wait_for("Loaded");
    tmux.wait_for("✓ saved");
    tmux.keys(&["Hello raven", "Enter"]);
    // The reply streams in; Esc stops it and the partial reply stays.
    tmux.wait_for("Esc stops");
    tmux.keys(&["Escape"]);
    let screen = tmux.wait_for("[stopped]");
    assert!(screen.contains("Hello raven"), "{screen}");
    tmux.wait_for("Message (F1 help)");
    tmux.keys(&["C-q"]);
    tmux.wait_for("EXIT=0");
    drop(tmux);

    let sessions = std::fs::read_dir(data.join("sessions")).unwrap().count();
    assert_eq!(sessions, 1);
    let tmux = Tmux::start(&command).unwrap();
    tmux.wait_for("Loaded");
    // Pick the session in the sidebar: its history is back.
    tmux.keys(&["Tab", "Enter"]);
    tmux.wait_for("Hello raven");
    tmux.keys(&["Tell me more", "Enter"]);
    tmux.wait_for("Tell me more");
    tmux.wait_for("Esc stops");
    tmux.keys(&["Escape"]);
    tmux.wait_for("Message (F1 help)");
    tmux.keys(&["C-q"]);
    tmux.wait_for("EXIT=0");

    // Both runs opened the session from its saved state: no history token was fed again.
    let log = std::fs::read_to_string(data.join("rwkv-chat.log")).unwrap();
    let opened: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("session opened"))
        .collect();
    assert!(opened.len() >= 2, "{log}");
    assert!(
        opened.iter().all(|l| l.contains("replayed_tokens=0")),
        "{log}"
    );
    let export = Command::new(BIN)
        .args(["sessions", "export", "--format", "json", "--data-dir"])
        .arg(&data)
        .arg(
            std::fs::read_dir(data.join("sessions"))
                .unwrap()
                .next()
                .unwrap()
                .unwrap()
                .file_name(),
        )
        .output()
        .unwrap();
    let session: serde_json::Value = serde_json::from_slice(&export.stdout).unwrap();
    let messages = session["transcript"]["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 4, "{session}");
    assert_eq!(messages[2]["text"], "Tell me more");
}

/// Waits until `check` holds; panics with `what` after a generous while.
fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn saved_messages(data: &Path) -> usize {
    let Ok(store) = rwkv_chat::store::Store::open(data) else {
        return 0;
    };
    let list = store.list().unwrap_or_default();
    list.first()
        .and_then(|s| store.load(&s.name).ok())
        .map_or(0, |s| s.transcript.messages.len())
}

/// SIGTERM, SIGHUP and SIGINT mid-reply: the app gives the terminal back (cooked mode, main
/// screen), logs that it saved, and the session opens afterwards in `chat` with the saved
/// turn intact (at most the reply in flight is lost).
#[test]
fn termination_signals_restore_the_terminal_and_save_the_session() {
    let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-rwkv4");
    for signal in ["TERM", "HUP", "INT"] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let pid_file = dir.path().join("pid");
        let command = format!(
            "RWKV_CHAT_CONFIG_DIR={} sh -c 'echo $$ > {}; exec {} --model {} --data-dir {}'; \
             echo EXIT=$?; stty -a | grep -q -- -icanon && echo RAW || echo COOKED; sleep 60",
            quoted(&dir.path().join("config")),
            pid_file.display(),
            BIN,
            tiny.display(),
            data.display(),
        );
        let Some(tmux) = Tmux::start(&command) else {
            eprintln!("tmux is not installed: skipping the signal test");
            return;
        };
        tmux.wait_for("tokens");
        tmux.keys(&["hello", "Enter"]);
        wait_until("the first reply is saved", || saved_messages(&data) >= 2);
        tmux.keys(&["tell me more", "Enter"]);
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        let killed = Command::new("kill")
            .args([&format!("-{signal}"), pid.trim()])
            .status()
            .unwrap();
        assert!(killed.success());
        let screen = tmux.wait_for("EXIT=");
        let screen = if screen.contains("COOKED") || screen.contains("RAW") {
            screen
        } else {
            tmux.wait_for("COOKED")
        };
        assert!(screen.contains("EXIT=0"), "SIG{signal}:\n{screen}");
        assert!(
            screen.contains("COOKED"),
            "SIG{signal} left raw mode:\n{screen}"
        );
        assert!(
            !screen.contains("Sessions"),
            "SIG{signal} left the alternate screen:\n{screen}"
        );
        let log = std::fs::read_to_string(data.join("rwkv-chat.log")).unwrap();
        assert!(log.contains("termination signal"), "{log}");
        assert!(log.contains("rwkv-chat stopped"), "{log}");
        assert!(saved_messages(&data) >= 2);

        // The session opens in line mode and goes on from its saved state.
        let store = rwkv_chat::store::Store::open(&data).unwrap();
        let name = store.list().unwrap()[0].name.clone();
        let mut chat = Command::new(BIN)
            .args(["chat", "--model"])
            .arg(&tiny)
            .args(["--session", &name, "--max-tokens", "3", "--format", "jsonl"])
            .arg("--data-dir")
            .arg(&data)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        writeln!(chat.stdin.take().unwrap(), "and then?").unwrap();
        let out = chat.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "SIG{signal}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn a_tmux_paste_keeps_its_lines_and_a_broken_preset_is_shown_in_tmux() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir_all(config.join("presets")).unwrap();
    std::fs::write(
        config.join("presets/broken.toml"),
        "name = \"broken\"\nstop = [\"x\"\n",
    )
    .unwrap();
    let command = format!(
        "RWKV_CHAT_CONFIG_DIR={} {} --model {} --data-dir {}; echo EXIT=$?; sleep 60",
        quoted(&config),
        quoted(Path::new(BIN)),
        quoted(&tiny_model()),
        quoted(&dir.path().join("data")),
    );
    let Some(tmux) = Tmux::start(&command) else {
        eprintln!("tmux is not installed: skipping the terminal test");
        return;
    };
    let screen = tmux.wait_for("skipped a preset");
    assert!(screen.contains("broken.toml"), "{screen}");
    tmux.wait_for("✓ saved");
    // tmux's paste-buffer sends each line end as CR, as xterm and VTE do; -p brackets it.
    tmux.run(&["set-buffer", "-b", "p", "first line\nsecond line"]);
    tmux.run(&["paste-buffer", "-p", "-b", "p", "-t", "0"]);
    let screen = tmux.wait_for("second line");
    assert!(!screen.contains("first linesecond line"), "{screen}");
    let rows: Vec<&str> = screen.lines().collect();
    let first = rows.iter().position(|r| r.contains("│first line")).unwrap();
    assert!(rows[first + 1].contains("│second line"), "{screen}");
    tmux.keys(&["C-c"]);
    tmux.wait_for("EXIT=0");
}
