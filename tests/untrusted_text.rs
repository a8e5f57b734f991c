//! Transcripts hold model output, which may carry terminal escapes. The command line prints
//! them raw into pipes and files (they are data there) but defused when stdout is a terminal;
//! a pty made by `script` stands in for the user's terminal.

use std::path::Path;
use std::process::Command;

use rwkv_chat::chat::{Message, Preset, Role, Transcript};
use rwkv_chat::sampler::SamplingParams;
use rwkv_chat::store::{SessionFile, Store};

const BIN: &str = env!("CARGO_BIN_EXE_rwkv-chat");
const HOSTILE: &str = "look\x1b]0;pwned\x07\x1b[2J\u{202e}gnp.exe\u{9b}31m";

fn hostile_session(data: &Path) {
    let store = Store::open(data).unwrap();
    let message = |role, text: &str| Message {
        role,
        text: text.into(),
        fed: text.into(),
    };
    let session = SessionFile::new(
        Preset::built_in().remove(0),
        SamplingParams::default(),
        Transcript {
            intro: String::new(),
            messages: vec![message(Role::User, "hi"), message(Role::Bot, HOSTILE)],
        },
    );
    store.save("s", &session, None).unwrap();
}

/// Runs `rwkv-chat ARGS` with stdout on a pty; `None` where `script` is missing.
fn on_a_terminal(args: &[&str]) -> Option<String> {
    let command = std::iter::once(BIN)
        .chain(args.iter().copied())
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let out = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn sessions_show_defuses_escapes_on_a_terminal_and_keeps_them_in_a_pipe() {
    let data = tempfile::tempdir().unwrap();
    hostile_session(data.path());
    let dir = data.path().to_str().unwrap();
    for action in ["show", "export"] {
        let piped = Command::new(BIN)
            .args(["sessions", action, "s", "--data-dir", dir])
            .output()
            .unwrap();
        assert!(piped.status.success());
        let piped = String::from_utf8_lossy(&piped.stdout);
        if action == "show" {
            assert!(piped.contains(HOSTILE), "{piped:?}");
        }
        let Some(shown) = on_a_terminal(&["sessions", action, "s", "--data-dir", dir]) else {
            eprintln!("`script` is not installed: skipping the terminal half");
            return;
        };
        assert!(shown.contains("look"), "{shown:?}");
        for bad in ['\x1b', '\x07', '\u{202e}', '\u{9b}'] {
            assert!(!shown.contains(bad), "{action}: {bad:?} in {shown:?}");
        }
    }
}

#[test]
fn session_names_and_model_ids_cannot_name_paths_outside_their_directories() {
    use rwkv_chat::hub::ModelSpec;
    use rwkv_chat::store::validate_name;
    for bad in [
        "..",
        ".",
        "../x",
        "a/b",
        "/abs",
        "a\\b",
        ".hidden",
        "",
        "a\0b",
        "ä",
        &"x".repeat(65),
    ] {
        assert!(validate_name(bad).is_err(), "{bad:?}");
    }
    for bad in [
        "o/n@/etc/passwd",
        "o/n@../x",
        "o/n/../../x.pth",
        "o/n//x.pth",
        "../n",
        "o/.n",
    ] {
        assert_eq!(ModelSpec::parse(bad), None, "{bad}");
    }
}
