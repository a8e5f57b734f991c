//! The real binary's chat app, driven the way a user does: in tmux (skipped with a note where
//! tmux is not installed; CI installs it), with the tiny fixture model.

use crate::common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_rwkv-chat");

/// Starts the app with this `config.toml`, which it must refuse before touching the
/// terminal; returns the message.
fn refused_config(config: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.toml"), config).unwrap();
    let out = Command::new(BIN)
        .arg("--config-dir")
        .arg(dir.path())
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "the terminal was written to");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("backtrace"), "{stderr}");
    stderr
}

#[test]
fn a_bad_config_is_refused_before_the_terminal_is_touched() {
    let stderr = refused_config("theme = \"dark\"\n[keys]\nregenerate = \"hyper+r\"\n");
    assert!(stderr.contains("config.toml:3:14:"), "{stderr}");
    assert!(stderr.contains("hyper"), "{stderr}");
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
        self.wait_for_all(&[text])
    }

    /// Waits until one screen shows every one of `texts`. tmux may capture a frame the app is
    /// still writing, so what a test asserts of a screen it waits for, all of it at once.
    fn wait_for_all(&self, texts: &[&str]) -> String {
        self.wait_for_screen(&format!("all of {texts:?}"), |screen| {
            texts.iter().all(|t| screen.contains(t))
        })
    }

    /// Waits until a screen is `what` (`is` says when), with the same deadline as `wait_for`.
    fn wait_for_screen(&self, what: &str, is: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let screen = self.screen();
            if is(&screen) {
                return screen;
            }
            assert!(Instant::now() < deadline, "never showed {what}:\n{screen}");
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
    // No model configured: the model picker is open, its field empty, on the World model
    // recommended for this machine's memory with its size, the catalogue below it.
    tmux.wait_for_all(&[
        "> fla-hub/rwkv7-",
        "Filter, path or hub id:",
        "RAM at f16",
        "Sessions",
        "BlinkDL/rwkv7-g1",
    ]);
    tmux.keys(&["Escape", "F1"]);
    tmux.wait_for("Regenerate the last reply");
    tmux.keys(&["Escape", "h", "i", "?", "C-j", "there"]);
    let screen = tmux.wait_for_all(&["there", "│hi?"]);
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
    // Greedy and without stop sequences, and a reply this long only ends when it is stopped,
    // however fast the machine (at the default 500 tokens the tiny model could finish first).
    long_preset(&config);
    let mut settings = std::fs::read_to_string(config.join("config.toml")).unwrap();
    settings.push_str("max_reply_tokens = 1000000\n");
    std::fs::write(config.join("config.toml"), settings).unwrap();
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
    tmux.wait_for_all(&["[stopped]", "Hello raven"]);
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
    // The reply streams in fast enough to scroll the question away before a capture: the
    // export below finds it.
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
        let (name, _) = transcript(&data);
        assert_opens_again(&data, &dir.path().join("config"), &name, &tiny);
    }
}

#[test]
fn a_key_config_that_gives_ctrl_c_away_is_refused_with_the_reason() {
    let stderr = refused_config("[keys]\nquit = \"f20\"\nregenerate = [\"ctrl+c\", \"ctrl+q\"]\n");
    assert!(
        stderr.contains("config.toml: [keys] regenerate: ctrl+c always saves and quits"),
        "{stderr}"
    );
}

/// The app as a process in tmux, with its pid (written by the shell before it execs).
struct App {
    tmux: Tmux,
    pid: String,
}

impl App {
    /// `env` and `args` as in a shell command line; `stdin` redirects the app's input.
    fn start(dir: &Path, env: &str, args: &str, stdin: &str) -> Option<Self> {
        let pid_file = dir.join("pid");
        let command = format!(
            "{env} sh -c 'echo $$ > {}; exec {} {args} --data-dir {} {stdin}'; echo EXIT=$?; \
             sleep 60",
            pid_file.display(),
            BIN,
            dir.join("data").display(),
        );
        let tmux = Tmux::start(&command)?;
        let mut pid = String::new();
        wait_until("the app wrote its pid", || {
            pid = std::fs::read_to_string(&pid_file).unwrap_or_default();
            pid.ends_with('\n')
        });
        Some(Self {
            tmux,
            pid: pid.trim().to_owned(),
        })
    }

    fn alive(&self) -> bool {
        // A zombie has ended; only its parent has not looked yet.
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).is_ok_and(|stat| {
            !stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
    }

    /// Closes the terminal the way closing a window or losing ssh does, and waits for the
    /// process to end. The promise is 2 seconds; 10 keeps a loaded machine from failing it.
    fn close_terminal_and_wait(&self) {
        self.tmux.run(&["kill-server"]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.alive() {
            assert!(Instant::now() < deadline, "the app outlived its terminal");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (10 s, for 2 s promised) until the process is gone.
    fn wait_gone(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.alive() {
            assert!(Instant::now() < deadline, "the app is still running");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The tiny model widened from 16 to 192 channels (random weights, the built-in tokenizer):
/// a token costs about 12 times as much, so a reply of the app's full length takes seconds
/// and is surely still streaming when the terminal goes away.
fn slow_model(dir: &Path) -> std::path::PathBuf {
    const WIDE: usize = 192;
    let tensors = common::tiny_tensors()
        .into_iter()
        .map(|(name, t)| {
            let dims: Vec<usize> = t
                .dims()
                .iter()
                .map(|&d| match d {
                    16 => WIDE,
                    64 => 4 * WIDE,
                    d => d,
                })
                .collect();
            let wide =
                candle_core::Tensor::randn(0f32, 0.3, dims, &candle_core::Device::Cpu).unwrap();
            (name, wide)
        })
        .collect();
    let model = dir.join("slow-model");
    common::write_model(&model, &tensors);
    let config = std::fs::read_to_string(tiny_model().join("config.json"))
        .unwrap()
        .replace(
            "\"attention_hidden_size\": 16",
            &format!("\"attention_hidden_size\": {WIDE}"),
        )
        .replace("\"hidden_size\": 16", &format!("\"hidden_size\": {WIDE}"))
        .replace(
            "\"intermediate_size\": 64",
            &format!("\"intermediate_size\": {}", 4 * WIDE),
        );
    std::fs::write(model.join("config.json"), config).unwrap();
    model
}

/// A preset that replies greedily with no stop sequence, so a reply runs to its length limit.
fn long_preset(config: &Path) {
    std::fs::create_dir_all(config.join("presets")).unwrap();
    std::fs::write(
        config.join("presets/long.toml"),
        "name = \"long\"\nuser_prefix = \"User: \"\nuser_suffix = \"\\n\\n\"\nbot_prefix = \"Bot:\"\n\
         bot_suffix = \"\\n\\n\"\nbanned_tokens = [0]\n[sampling]\ntemperature = 0.0\n",
    )
    .unwrap();
    std::fs::write(config.join("config.toml"), "preset = \"long\"\n").unwrap();
}

fn transcript(data: &Path) -> (String, Vec<(String, String)>) {
    let store = rwkv_chat::store::Store::open(data).unwrap();
    let name = store.list().unwrap()[0].name.clone();
    let file = store.load(&name).unwrap();
    let messages = file
        .transcript
        .messages
        .iter()
        .map(|m| (format!("{:?}", m.role), m.text.clone()))
        .collect();
    (name, messages)
}

/// The session is not locked: `chat` opens it and goes on from it.
fn assert_opens_again(data: &Path, config: &Path, name: &str, model: &Path) {
    let mut chat = Command::new(BIN)
        .args(["chat", "--model"])
        .arg(model)
        .args(["--session", name, "--max-tokens", "3", "--format", "jsonl"])
        .arg("--data-dir")
        .arg(data)
        .env("RWKV_CHAT_CONFIG_DIR", config)
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
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn closing_the_terminal_while_idle_saves_and_ends_the_app() {
    let dir = tempfile::tempdir().unwrap();
    let (data, config) = (dir.path().join("data"), dir.path().join("config"));
    let env = format!("RWKV_CHAT_CONFIG_DIR={}", quoted(&config));
    let args = format!("--model {}", quoted(&tiny_model()));
    let Some(app) = App::start(dir.path(), &env, &args, "") else {
        eprintln!("tmux is not installed: skipping the terminal test");
        return;
    };
    app.tmux.wait_for("✓ saved");
    app.tmux.keys(&["hello", "Enter"]);
    wait_until("the reply is saved", || saved_messages(&data) >= 2);
    app.tmux.wait_for("✓ saved");
    app.close_terminal_and_wait();
    let log = std::fs::read_to_string(data.join("rwkv-chat.log")).unwrap();
    assert!(log.contains("rwkv-chat stopped"), "{log}");
    let (name, messages) = transcript(&data);
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert_opens_again(&data, &config, &name, &tiny_model());
}

#[test]
fn closing_the_terminal_mid_reply_keeps_the_partial_reply_and_the_lock_is_released() {
    let dir = tempfile::tempdir().unwrap();
    let (data, config) = (dir.path().join("data"), dir.path().join("config"));
    long_preset(&config);
    let model = slow_model(dir.path());
    let env = format!("RWKV_CHAT_CONFIG_DIR={}", quoted(&config));
    let args = format!("--model {}", quoted(&model));
    let Some(app) = App::start(dir.path(), &env, &args, "") else {
        eprintln!("tmux is not installed: skipping the terminal test");
        return;
    };
    app.tmux.wait_for("✓ saved");
    app.tmux.keys(&["Hello raven", "Enter"]);
    app.tmux.wait_for("Esc stops");
    app.close_terminal_and_wait();

    let (name, messages) = transcript(&data);
    assert_eq!(messages.len(), 2, "{messages:?}");
    let partial = messages[1].1.trim().to_owned();
    // The whole reply, greedy from the same start, for comparison: what was kept is a
    // proper beginning of it, so the terminal really went away mid-reply.
    let out = Command::new(BIN)
        .args(["chat", "--model"])
        .arg(&model)
        .args([
            "--session",
            "whole",
            "--preset",
            "long",
            "--temperature",
            "0",
        ])
        .args(["--max-tokens", "500", "--format", "jsonl", "--data-dir"])
        .arg(dir.path().join("other"))
        .env("RWKV_CHAT_CONFIG_DIR", &config)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            writeln!(child.stdin.take().unwrap(), "Hello raven")?;
            child.wait_with_output()
        })
        .unwrap();
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let whole = line["reply"].as_str().unwrap().trim().to_owned();
    assert!(!partial.is_empty(), "nothing of the reply was kept");
    assert!(
        partial.len() < whole.len() && whole.starts_with(&partial),
        "kept {partial:?}\nof {whole:?}"
    );
    assert_opens_again(&data, &config, &name, &model);
}

/// With stdin elsewhere the app reads the terminal through /dev/tty, where crossterm's reader
/// spins on end of file: the UI thread is stuck, and SIGHUP alone must end the app.
#[test]
fn the_app_ends_on_sighup_even_with_its_event_loop_stuck() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let env = format!(
        "RWKV_CHAT_CONFIG_DIR={}",
        quoted(&dir.path().join("config"))
    );
    let args = format!("--model {}", quoted(&tiny_model()));
    let Some(app) = App::start(dir.path(), &env, &args, "< /dev/null") else {
        eprintln!("tmux is not installed: skipping the terminal test");
        return;
    };
    app.tmux.wait_for("✓ saved");
    app.close_terminal_and_wait();
    let log = std::fs::read_to_string(data.join("rwkv-chat.log")).unwrap();
    assert!(log.contains("termination signal"), "{log}");
}

#[test]
fn ctrl_c_quits_from_the_model_picker_that_opens_on_the_first_run() {
    let dir = tempfile::tempdir().unwrap();
    let env = format!(
        "HF_HOME={} RWKV_CHAT_CONFIG_DIR={}",
        quoted(&dir.path().join("hf")),
        quoted(&dir.path().join("config"))
    );
    let Some(app) = App::start(dir.path(), &env, "", "") else {
        eprintln!("tmux is not installed: skipping the terminal test");
        return;
    };
    app.tmux
        .wait_for_all(&["Filter, path or hub id:", "> fla-hub/rwkv7-"]);
    app.tmux.keys(&["C-c"]);
    let screen = app.tmux.wait_for("EXIT=0");
    assert!(
        !screen.contains("Sessions"),
        "alternate screen left:\n{screen}"
    );
    app.wait_gone();
}

#[cfg(not(feature = "cuda"))]
#[test]
fn a_cuda_device_on_a_cpu_build_is_reported_in_the_app() {
    let dir = tempfile::tempdir().unwrap();
    let env = format!(
        "RWKV_CHAT_CONFIG_DIR={}",
        quoted(&dir.path().join("config"))
    );
    let args = format!("--model {} --device cuda", quoted(&tiny_model()));
    let Some(app) = App::start(dir.path(), &env, &args, "") else {
        eprintln!("tmux is not installed: skipping the terminal test");
        return;
    };
    let screen = app
        .tmux
        .wait_for_all(&["model load failed", "built without CUDA"]);
    assert!(!screen.contains("loading"), "{screen}");
    app.tmux.keys(&["C-c"]);
    app.tmux.wait_for("EXIT=0");
}

/// A hub on loopback that answers the way huggingface.co does for a repo of the tiny model
/// (a complete set of files), sending `model.safetensors` slowly, like a large model on a
/// slow line; or answering 500 to everything. Shapes: the repo info of
/// `GET /api/models/{repo}/revision/{rev}` (huggingface_hub `ModelInfo`: `sha`, `siblings`),
/// `POST .../paths-info/{rev}` entries for the paths asked (`common::path_entry`, as
/// huggingface_hub's `RepoFile` reads them), and the resolve headers huggingface_hub reads (`X-Repo-Commit`,
/// `X-Linked-Etag` with the sha256 of an LFS file, `X-Linked-Size`, `ETag`).
struct SlowHub {
    endpoint: String,
    /// Set when the client hung up in the middle of sending `model.safetensors`.
    hung_up: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

const SLOW_REPO: &str = "test/slow-tiny";
const SLOW_COMMIT: &str = "89abcdef0123456789abcdef0123456789abcdef";

impl SlowHub {
    fn start(fail: bool) -> Self {
        let files: Vec<(String, Vec<u8>)> = ["config.json", "tokenizer.json", "model.safetensors"]
            .iter()
            .map(|f| {
                (
                    (*f).to_owned(),
                    std::fs::read(tiny_model().join(f)).unwrap(),
                )
            })
            .collect();
        Self::serve(SLOW_REPO, files, Some("model.safetensors"), fail)
    }

    /// `repo` with `files`, the one named `slow` sent slowly.
    fn serve(
        repo: &'static str,
        files: Vec<(String, Vec<u8>)>,
        slow: Option<&'static str>,
        fail: bool,
    ) -> Self {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let files = std::sync::Arc::new(files);
        let hung_up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let hang_ups = std::sync::Arc::clone(&hung_up);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let files = std::sync::Arc::clone(&files);
                let hung_up = std::sync::Arc::clone(&hang_ups);
                std::thread::spawn(move || {
                    let mut stream = stream;
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut line = String::new();
                    let _ = reader.read_line(&mut line);
                    let mut parts = line.split_whitespace();
                    let method = parts.next().unwrap_or_default().to_owned();
                    let path = parts.next().unwrap_or_default().to_owned();
                    let mut length = 0;
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                            break;
                        }
                        if let Some((k, v)) = h.split_once(':')
                            && k.eq_ignore_ascii_case("content-length")
                        {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    let _ = reader.read_exact(&mut body);
                    let head = |status: u16, headers: &[(&str, String)], len: usize| {
                        let mut h = format!(
                            "HTTP/1.1 {status} X\r\ncontent-length: {len}\r\nconnection: close\r\n"
                        );
                        for (k, v) in headers {
                            h.push_str(&format!("{k}: {v}\r\n"));
                        }
                        h + "\r\n"
                    };
                    if fail {
                        let body = b"{\"error\":\"Internal Error - We're working hard to fix this as soon as possible!\"}";
                        let _ = stream.write_all(head(500, &[], body.len()).as_bytes());
                        let _ = stream.write_all(body);
                        return;
                    }
                    let api = format!("/api/models/{repo}");
                    let path = path.split('?').next().unwrap_or_default();
                    let (status, headers, bytes, slow): (u16, Vec<(&str, String)>, Vec<u8>, bool) =
                        if path == api || path.starts_with(&format!("{api}/revision/")) {
                            let siblings: Vec<_> = files
                                .iter()
                                .map(|(f, _)| serde_json::json!({ "rfilename": f }))
                                .collect();
                            let info = serde_json::json!({
                                "id": repo, "sha": SLOW_COMMIT, "siblings": siblings,
                            });
                            (200, vec![], info.to_string().into_bytes(), false)
                        } else if path.starts_with(&format!("{api}/paths-info/")) {
                            // As the hub: an entry for each path asked for that exists.
                            let asked = common::asked_paths(&body);
                            let entries: Vec<_> = files
                                .iter()
                                .filter(|(f, _)| asked.contains(f))
                                .map(|(f, b)| common::path_entry(f, b, b.len() > 1 << 20))
                                .collect();
                            (
                                200,
                                vec![],
                                serde_json::Value::from(entries).to_string().into_bytes(),
                                false,
                            )
                        } else if let Some((f, b)) = files.iter().find(|(f, _)| {
                            path == format!("/{repo}/resolve/{SLOW_COMMIT}/{f}")
                                || path == format!("/{repo}/resolve/main/{f}")
                        }) {
                            // As the hub: an LFS file's `X-Linked-Etag` is its sha256,
                            // a small file's `ETag` its git blob id.
                            let etag = if b.len() > 1 << 20 {
                                format!("\"{}\"", common::sha256_hex(b))
                            } else {
                                format!("\"{}\"", common::git_oid(b))
                            };
                            let headers = vec![
                                ("etag", etag.clone()),
                                ("x-linked-etag", etag),
                                ("x-linked-size", b.len().to_string()),
                                ("x-repo-commit", SLOW_COMMIT.to_owned()),
                                ("accept-ranges", "bytes".to_owned()),
                            ];
                            (200, headers, b.clone(), slow == Some(f.as_str()))
                        } else {
                            (404, vec![], b"{}".to_vec(), false)
                        };
                    let _ = stream.write_all(head(status, &headers, bytes.len()).as_bytes());
                    if method == "HEAD" {
                        return;
                    }
                    // 32 KiB every 100 ms: the 6 MB file takes some 20 s.
                    let chunk = if slow { 32 << 10 } else { bytes.len().max(1) };
                    for piece in bytes.chunks(chunk) {
                        if stream.write_all(piece).is_err() {
                            if slow {
                                hung_up.store(true, std::sync::atomic::Ordering::SeqCst);
                            }
                            return;
                        }
                        if slow {
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                });
            }
        });
        Self { endpoint, hung_up }
    }

    fn hung_up(&self) -> bool {
        self.hung_up.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The app in tmux, asked for the slow hub's repo on its first start.
fn app_on_hub(fail: bool) -> Option<(SlowHub, tempfile::TempDir, App)> {
    app_on(SlowHub::start(fail), SLOW_REPO)
}

/// The app in tmux, asked for `repo` of `hub` on its first start.
fn app_on(hub: SlowHub, repo: &str) -> Option<(SlowHub, tempfile::TempDir, App)> {
    let dir = tempfile::tempdir().unwrap();
    let env = format!(
        "HF_ENDPOINT={} HF_HOME={} RWKV_CHAT_CONFIG_DIR={}",
        hub.endpoint,
        quoted(&dir.path().join("hf")),
        quoted(&dir.path().join("config"))
    );
    let app = App::start(dir.path(), &env, &format!("--model {repo}"), "")?;
    Some((hub, dir, app))
}

fn incomplete_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else if path.to_string_lossy().ends_with(".incomplete") {
                found.push(path);
            }
        }
    }
    found
}

#[test]
fn ctrl_c_during_a_slow_download_quits_at_once_and_keeps_the_partial_file() {
    let Some((_hub, dir, app)) = app_on_hub(false) else {
        eprintln!("tmux is not installed: skipping the terminal test");
        return;
    };
    let hf = dir.path().join("hf");
    app.tmux.wait_for("downloading model.safetensors");
    let partial = incomplete_files(&hf);
    assert_eq!(partial.len(), 1, "{partial:?}");
    app.tmux.keys(&["C-c"]);
    // The download has some 20 s to go; the promise is 2 s, 10 keeps a loaded machine from
    // failing the test.
    app.wait_gone();
    let screen = app.tmux.wait_for("EXIT=0");
    assert!(
        !screen.contains("Sessions"),
        "alternate screen left:\n{screen}"
    );
    let kept = std::fs::metadata(&partial[0]).unwrap().len();
    assert!(kept > 0 && kept < 6_467_984, "{kept} bytes kept");
}

#[test]
fn a_failed_download_says_so_in_the_status_bar_with_the_whole_reason() {
    let Some((_hub, _dir, app)) = app_on_hub(true) else {
        eprintln!("tmux is not installed: skipping the terminal test");
        return;
    };
    let screen = app.tmux.wait_for("model load failed (F3: choose a model)");
    assert!(!screen.contains("loading"), "{screen}");
    // The reason, wrapped over as many rows as it needs above the input box: every word of
    // it is on the screen, up to its last.
    let rows: Vec<&str> = screen.lines().collect();
    let start = rows
        .iter()
        .position(|r| r.starts_with(" ! "))
        .expect(&screen);
    let end = rows
        .iter()
        .position(|r| r.contains("Message (F1 help)"))
        .expect(&screen);
    let reason = rows[start..end].join(" ");
    assert!(reason.contains("500"), "{screen}");
    assert!(reason.contains(SLOW_REPO), "{screen}");
    assert!(end - start >= 1, "{screen}");
    app.tmux.keys(&["C-c"]);
    app.tmux.wait_for("EXIT=0");
}

#[test]
fn sigterm_during_a_slow_download_ends_the_app_at_once() {
    let Some((_hub, dir, app)) = app_on_hub(false) else {
        eprintln!("tmux is not installed: skipping the terminal test");
        return;
    };
    app.tmux.wait_for("downloading model.safetensors");
    let killed = Command::new("kill")
        .args(["-TERM", &app.pid])
        .status()
        .unwrap();
    assert!(killed.success());
    app.wait_gone();
    let screen = app.tmux.wait_for("EXIT=");
    assert!(
        !screen.contains("Sessions"),
        "alternate screen left:\n{screen}"
    );
    let log = std::fs::read_to_string(dir.path().join("data/rwkv-chat.log")).unwrap();
    assert!(log.contains("rwkv-chat stopped"), "{log}");
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
    tmux.wait_for_all(&["skipped a preset", "broken.toml"]);
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

/// Esc in the model picker stops the download it shows running: the client hangs up on the
/// hub (left alone, the transfer runs some 20 s to its end), the status bar says the load was
/// cancelled, the partial file stays for the next run to resume, and the app goes on.
#[test]
fn esc_in_the_picker_stops_a_slow_download_and_keeps_the_partial_file() {
    let Some((hub, dir, app)) = app_on_hub(false) else {
        eprintln!("tmux is not installed: skipping the terminal test");
        return;
    };
    app.tmux.wait_for("downloading model.safetensors");
    let partial = incomplete_files(&dir.path().join("hf"));
    assert_eq!(partial.len(), 1, "{partial:?}");
    app.tmux.keys(&["F3"]);
    app.tmux
        .wait_for("Loading (Esc stops it): downloading model.safetensors");
    app.tmux.keys(&["Escape"]);
    app.tmux
        .wait_for_all(&["model load cancelled (F3: choose a model)", "Load stopped"]);
    wait_until(
        "the download is stopped: the hub sees the client hang up",
        || hub.hung_up(),
    );
    let kept = std::fs::metadata(&partial[0]).unwrap().len();
    assert!(kept > 0 && kept < 6_467_984, "{kept} bytes kept");
    // The picker stays open to choose another model; Esc now closes it.
    app.tmux.keys(&["Escape"]);
    let screen = app.tmux.wait_for_screen("the picker closed", |screen| {
        let status = screen.lines().last().unwrap_or_default();
        screen.contains("Message (F1 help)") && status.contains("model load cancelled")
    });
    assert!(!screen.contains("Filter, path or hub id:"), "{screen}");
    let status = screen.lines().last().unwrap_or_default();
    assert!(!status.contains("loading"), "{screen}");
    assert!(app.alive());
    app.tmux.keys(&["C-c"]);
    app.tmux.wait_for("EXIT=0");
}

/// A model loaded once heads the picker that opens on the next start without `--model`,
/// marked recent and selected, so Enter loads it again. It was given as a path relative to
/// the first run's directory; the second run starts elsewhere and still finds it.
#[test]
fn the_model_used_last_heads_the_picker_of_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m");
    std::fs::create_dir_all(&model).unwrap();
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::fs::copy(tiny_model().join(f), model.join(f)).unwrap();
    }
    let env = format!(
        "HF_HOME={} RWKV_CHAT_CONFIG_DIR={}",
        quoted(&dir.path().join("hf")),
        quoted(&dir.path().join("config"))
    );
    let in_dir = format!("cd {} && {env}", quoted(dir.path()));
    let Some(app) = App::start(dir.path(), &in_dir, "--model m", "") else {
        eprintln!("tmux is not installed: skipping the terminal test");
        return;
    };
    app.tmux.wait_for("✓ saved");
    app.tmux.keys(&["C-c"]);
    app.tmux.wait_for("EXIT=0");
    app.wait_gone();
    drop(app);

    // The next start writes its own pid.
    std::fs::remove_file(dir.path().join("pid")).unwrap();
    let app = App::start(dir.path(), &env, "", "").unwrap();
    // The picker's rows: the filter's, then past the field the list's first two.
    let rows = |screen: &str| -> Option<[String; 3]> {
        let rows: Vec<&str> = screen.lines().collect();
        let filter = rows
            .iter()
            .position(|r| r.contains("Filter, path or hub id:"))?;
        let row = |i: usize| rows.get(filter + i).map(|r| r.to_string());
        Some([row(0)?, row(2)?, row(3)?])
    };
    let screen = app
        .tmux
        .wait_for_screen("the picker's first two rows", |screen| {
            rows(screen).is_some_and(|[_, _, second]| second.contains("fla-hub/"))
        });
    let [_, first, second] = rows(&screen).unwrap();
    assert!(
        first.contains(&format!("> {} ", model.display())) && first.contains("recent"),
        "{screen}"
    );
    // The catalogue follows, unmarked.
    assert!(!second.contains("recent"), "{screen}");
    app.tmux.keys(&["Enter"]);
    app.tmux.wait_for("✓ saved");
    let screen = app.tmux.wait_for("Loaded");
    assert!(!screen.contains("Filter, path or hub id:"), "{screen}");
    app.tmux.keys(&["C-c"]);
    app.tmux.wait_for("EXIT=0");
}

/// A hub repo of several models (BlinkDL's layout) named with `--model`: the picker opens
/// listing its files, nothing downloaded yet; the one picked downloads and loads, a World
/// model with the World preset.
#[test]
fn a_repo_of_several_models_offers_its_files_in_the_picker() {
    const RAW: &str = "test/raw-models";
    let rwkv4 = "RWKV-4-tiny-20230101-ctx1024.pth";
    let v7 = "RWKV-x070-World-e2e-20250101-ctx4096.pth";
    let files = vec![
        (
            rwkv4.to_owned(),
            std::fs::read(tiny_model().join("rwkv4-raw.pth")).unwrap(),
        ),
        (
            v7.to_owned(),
            std::fs::read(common::fixture("world/e2e-v7").join("model.pth")).unwrap(),
        ),
    ];
    let Some((_hub, dir, app)) = app_on(SlowHub::serve(RAW, files, None, false), RAW) else {
        eprintln!("tmux is not installed: skipping the terminal test");
        return;
    };
    let listed =
        |screen: &str, name: &str| screen.lines().any(|l| l.contains(&format!("{RAW}/{name}")));
    app.tmux.wait_for_screen("both models listed", |screen| {
        screen.contains("holds 2 models; pick one")
            && screen.contains("Filter, path or hub id:")
            && listed(screen, rwkv4)
            && listed(screen, v7)
    });
    assert!(incomplete_files(&dir.path().join("hf")).is_empty());
    assert!(
        !dir.path()
            .join("hf/hub/models--test--raw-models/blobs")
            .exists()
    );
    app.tmux.keys(&["Down"]);
    app.tmux.keys(&["Enter"]);
    app.tmux.wait_for("✓ saved");
    app.tmux
        .wait_for_screen("the World model loaded", |screen| {
            let status = screen.lines().last().unwrap_or_default();
            screen.contains("Loaded") && status.contains("world")
        });
    let snapshot = dir.path().join(format!(
        "hf/hub/models--test--raw-models/snapshots/{SLOW_COMMIT}"
    ));
    assert!(snapshot.join(v7).exists() && !snapshot.join(rwkv4).exists());
    // The picker knows the downloaded file is on disk now (so a catalogue repo's file would
    // load without being asked about as a download), and the other one is not.
    app.tmux.keys(&["F3"]);
    let line = |screen: &str, name: &str| {
        let entry = format!("{RAW}/{name}");
        // The list's line, not the picker's "Loaded: …" above it.
        screen
            .lines()
            .find(|l| l.contains(&entry) && !l.contains("Loaded:"))
            .map(str::to_owned)
    };
    let screen = app.tmux.wait_for_screen("the picker's list", |screen| {
        screen.contains("Filter, path or hub id:")
            && line(screen, v7).is_some_and(|l| l.contains("on disk"))
            && line(screen, rwkv4).is_some()
    });
    assert!(
        line(&screen, rwkv4).is_some_and(|l| !l.contains("on disk")),
        "{screen}"
    );
    app.tmux.keys(&["Escape"]);
    app.tmux.keys(&["C-c"]);
    app.tmux.wait_for("EXIT=0");
}
