//! The data dir as an attacker (or a damaged disk) leaves it: symbolic links where sessions
//! are, FIFOs and huge sparse files where session files are, settings that cannot be saved,
//! states of the wrong shape, escapes in damaged files. Each test makes the condition on disk
//! and runs the real binary.

use crate::common;

use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rwkv_chat::store::state_file;

fn chat(data: &Path, session: &str) -> Command {
    chat_command(data, &tiny(), session, 4)
}

/// A session `name` with one saved turn.
fn saved_session(data: &Path, name: &str) {
    let out = feed_lines(&mut chat(data, name), &["Hello"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

fn session_dir(data: &Path, name: &str) -> std::path::PathBuf {
    data.join("sessions").join(name)
}

/// A listing of `dir`: names and contents, to show nothing there changed.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap_or_default(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Waits for a child that must not hang; a hang kills it and fails the test (generous bound,
/// only there so a regression fails instead of blocking the suite).
fn wait_bounded(mut child: Child) -> Output {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("rwkv-chat hung");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn run_bounded(cmd: &mut Command) -> Output {
    wait_bounded(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

fn sessions(data: &Path, args: &[&str]) -> Output {
    run_bounded(bin().arg("sessions").args(args).arg("--data-dir").arg(data))
}

#[test]
fn a_session_dir_that_is_a_symlink_is_never_written_through() {
    let data = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    saved_session(data.path(), "good");
    // What a victim directory holds: a state file and a temp file the stale-temp cleanup
    // would delete.
    std::fs::write(elsewhere.path().join("state.bin"), b"precious").unwrap();
    std::fs::write(elsewhere.path().join(".x.tmp"), b"also precious").unwrap();
    let before = snapshot(elsewhere.path());
    symlink(elsewhere.path(), session_dir(data.path(), "evil")).unwrap();

    let out = feed_lines(&mut chat(data.path(), "evil"), &["Hello"]);
    assert_user_error(&out, &["sessions/evil", "symbolic link"]);
    let out = sessions(data.path(), &["fork", "good", "evil"]);
    assert_user_error(&out, &["symbolic link"]);
    let out = sessions(data.path(), &["delete", "evil"]);
    assert_user_error(&out, &["symbolic link"]);
    let out = sessions(data.path(), &["rename", "good", "evil"]);
    assert_user_error(&out, &["symbolic link"]);

    assert_eq!(snapshot(elsewhere.path()), before);
    assert!(session_dir(data.path(), "evil").is_symlink());
    // The listing names the link as a problem and still shows the good session.
    let out = sessions(data.path(), &["list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("good"), "{text}");
    assert!(text.contains("symbolic link"), "{text}");
}

#[test]
fn a_lock_or_state_that_is_a_symlink_is_not_followed() {
    let data = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    saved_session(data.path(), "s");
    let dir = session_dir(data.path(), "s");

    // A dangling lock link would have the lock created at its target.
    let target = elsewhere.path().join("created-by-lock");
    std::fs::remove_file(dir.join("lock")).unwrap();
    symlink(&target, dir.join("lock")).unwrap();
    let out = feed_lines(&mut chat(data.path(), "s"), &["Again"]);
    assert_user_error(&out, &["lock", "symbolic link"]);
    assert!(!target.exists());
    std::fs::remove_file(dir.join("lock")).unwrap();

    // A state link is not read through, and the save replaces the link, not its target.
    let victim = elsewhere.path().join("state.bin");
    std::fs::copy(dir.join("state.bin"), &victim).unwrap();
    let victim_bytes = std::fs::read(&victim).unwrap();
    std::fs::remove_file(dir.join("state.bin")).unwrap();
    symlink(&victim, dir.join("state.bin")).unwrap();
    let out = feed_lines(&mut chat(data.path(), "s"), &["Again"]);
    assert_user_error(&out, &["symbolic link", "--rebuild"]);
    let out = feed_lines(chat(data.path(), "s").arg("--rebuild"), &["Again"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!dir.join("state.bin").is_symlink());
    assert_eq!(std::fs::read(&victim).unwrap(), victim_bytes);
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

#[test]
fn fifos_as_session_files_do_not_hang_anything() {
    let data = tempfile::tempdir().unwrap();
    saved_session(data.path(), "a");
    saved_session(data.path(), "b");
    let a = session_dir(data.path(), "a");
    std::fs::remove_file(a.join("session.json")).unwrap();
    mkfifo(&a.join("session.json"));
    let out = sessions(data.path(), &["list"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("not a regular file"),
        "{}",
        stdout(&out)
    );

    let b = session_dir(data.path(), "b");
    std::fs::remove_file(b.join("state.bin")).unwrap();
    mkfifo(&b.join("state.bin"));
    let out = run_bounded(chat(data.path(), "b").stdin(Stdio::null()));
    assert_user_error(&out, &["not a regular file", "--rebuild"]);
    let out = feed_lines(chat(data.path(), "b").arg("--rebuild"), &["Again"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        std::fs::symlink_metadata(b.join("state.bin"))
            .unwrap()
            .is_file()
    );
}

/// Runs `cmd` and returns its output and its peak RSS in kB. The count comes from a small
/// Python parent (`RUSAGE_CHILDREN`): a process spawned from this test binary starts with the
/// binary's own high-water mark (vfork shares its memory until exec, and Linux keeps the
/// larger mark), which would measure the test suite instead of rwkv-chat.
fn peak_rss_kb(cmd: &Command) -> (Output, i64) {
    const SCRIPT: &str = "import resource, subprocess, sys\n\
        p = subprocess.run(sys.argv[1:], stdin=subprocess.DEVNULL, capture_output=True)\n\
        sys.stdout.buffer.write(p.stdout)\n\
        sys.stderr.buffer.write(p.stderr)\n\
        sys.stderr.write('\\nPEAK_RSS_KB=%d' % resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n\
        sys.exit(p.returncode)\n";
    let mut python = Command::new("python3");
    python
        .arg("-c")
        .arg(SCRIPT)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(v) => python.env(key, v),
            None => python.env_remove(key),
        };
    }
    let mut out = run_bounded(&mut python);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let (rest, rss) = err
        .rsplit_once("\nPEAK_RSS_KB=")
        .expect("python3 reports the peak");
    let rss = rss.trim().parse().unwrap();
    out.stderr = rest.as_bytes().to_vec();
    (out, rss)
}

#[test]
fn huge_sparse_state_files_are_refused_without_reading_them_into_memory() {
    let data = tempfile::tempdir().unwrap();
    saved_session(data.path(), "s");
    let index = session_dir(data.path(), "s").join("state.bin");
    let saved_index = std::fs::read(&index).unwrap();
    let sparse = |path: &Path, header: &[u8], size: u64| {
        let file = std::fs::File::create(path).unwrap();
        std::io::Write::write_all(&mut &file, header).unwrap();
        file.set_len(size).unwrap();
    };
    let check = |what: &str, size: u64, needle: &str| {
        let (out, rss_kb) = peak_rss_kb(&chat(data.path(), "s"));
        assert_user_error(&out, &[needle, "--rebuild"]);
        eprintln!("{size} byte sparse {what}: peak RSS {rss_kb} kB");
        assert!(
            rss_kb < 300 * 1024,
            "peak RSS {rss_kb} kB for a {size} byte {what}"
        );
    };
    for (size, needle) in [
        // Larger than any state: refused by its size.
        (4u64 << 30, "more than a valid one can be"),
        // Larger than any index: refused by its size too, before the checksum.
        ((1u64 << 30) + 16, "more than any"),
    ] {
        sparse(&index, &saved_index[..16], size);
        check("state.bin", size, needle);
    }
    std::fs::write(&index, &saved_index).unwrap();
    // A state file of the largest size, its index entry saying so, its header the real one:
    // only the checksum of the rest is wrong, found by hashing it as a stream.
    let size = (1u64 << 30) + 16;
    let mut entry = state_file::decode_index(&saved_index).unwrap();
    let main = session_dir(data.path(), "s").join(entry.state.file_name());
    let header = std::fs::read(&main).unwrap()[..16].to_vec();
    sparse(&main, &header, size);
    entry.state.len = size;
    std::fs::write(&index, state_file::encode_index(&entry).unwrap()).unwrap();
    check("state file", size, "checksum mismatch");
    // The transcript is intact: a rebuild brings the session back.
    let out = feed_lines(chat(data.path(), "s").arg("--rebuild"), &["Again"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn a_huge_session_json_is_refused_without_reading_it() {
    let data = tempfile::tempdir().unwrap();
    saved_session(data.path(), "s");
    let path = session_dir(data.path(), "s").join("session.json");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(4 << 30)
        .unwrap();
    let (out, rss_kb) = peak_rss_kb(
        bin()
            .args(["sessions", "show", "s", "--data-dir"])
            .arg(data.path()),
    );
    assert_user_error(&out, &["session.json", "more than a valid one can be"]);
    assert!(rss_kb < 300 * 1024, "peak RSS {rss_kb} kB");
}

#[test]
fn a_setting_that_cannot_be_saved_falls_back_and_the_session_stays_readable() {
    let data = tempfile::tempdir().unwrap();
    saved_session(data.path(), "s");
    let dir = session_dir(data.path(), "s");
    let path = dir.join("session.json");
    let mut json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    // serde_json cannot write 1e39 as an f32 setting, so the number is put in as text.
    json["sampling"]["penalty_decay"] = serde_json::json!(12345.5);
    let text = serde_json::to_string(&json)
        .unwrap()
        .replace("12345.5", "1e39");
    std::fs::write(&path, text).unwrap();
    assert!(std::fs::read_to_string(&path).unwrap().contains("1e39"));
    std::fs::remove_file(dir.join("state.bin")).unwrap();

    let out = feed_lines(chat(data.path(), "s").arg("--rebuild"), &["Again"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("penalty_decay"), "{}", stderr(&out));
    let saved = std::fs::read_to_string(&path).unwrap();
    assert!(!saved.contains("null"), "{saved}");
    for args in [["list", ""], ["show", "s"]] {
        let args: Vec<&str> = args.into_iter().filter(|a| !a.is_empty()).collect();
        let out = sessions(data.path(), &args);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(!stdout(&out).contains("unreadable"), "{}", stdout(&out));
    }
}

/// Replaces the file of the session's state after its transcript by `make(old bytes)`, and the
/// index entry naming it to match, so only what the new file holds is wrong. Returns the
/// session's fingerprint.
fn rewrite_main_state(
    data: &Path,
    name: &str,
    make: impl FnOnce(Vec<u8>) -> Vec<u8>,
) -> rwkv_chat::model::Fingerprint {
    let dir = session_dir(data, name);
    let mut index =
        state_file::decode_index(&std::fs::read(dir.join("state.bin")).unwrap()).unwrap();
    let path = dir.join(index.state.file_name());
    let bytes = make(std::fs::read(&path).unwrap());
    std::fs::write(&path, &bytes).unwrap();
    index.state.len = bytes.len() as u64;
    index.state.crc = state_file::crc_of(&bytes);
    std::fs::write(
        dir.join("state.bin"),
        state_file::encode_index(&index).unwrap(),
    )
    .unwrap();
    index.fingerprint
}

#[test]
fn a_state_of_the_wrong_shape_is_rebuilt_not_trusted() {
    use rwkv_chat::model::{Config, State};
    let data = tempfile::tempdir().unwrap();
    saved_session(data.path(), "s");
    // A state half the fixture's width, with valid checksums and the right fingerprint: only
    // the shape is wrong.
    let fp = rewrite_main_state(data.path(), "s", |_| {
        state_file::encode_state(&State::new(&Config::new(50277, 8, 2))).unwrap()
    });

    let out = feed_lines(&mut chat(data.path(), "s"), &["Again"]);
    assert_user_error(&out, &["model's sizes", "--rebuild"]);
    // A fork does not copy it.
    let out = sessions(data.path(), &["fork", "s", "t"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let store = rwkv_chat::store::Store::open(data.path()).unwrap();
    if let Ok(forked) = store.load_state("t") {
        assert!(forked.state.state.fits(&fp));
        assert!(forked.checkpoints.iter().all(|c| c.state.fits(&fp)));
    }
    let out = feed_lines(chat(data.path(), "s").arg("--rebuild"), &["Again"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(store.load_state("s").unwrap().state.state.fits(&fp));
    // And the next open resumes from it without a rebuild.
    let out = feed_lines(&mut chat(data.path(), "s"), &["More"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn escapes_in_a_damaged_session_file_never_reach_the_terminal() {
    let data = tempfile::tempdir().unwrap();
    saved_session(data.path(), "s");
    let path = session_dir(data.path(), "s").join("session.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let evil = text.replacen("\"user\"", "\"\\u001b]52;c;ZXZpbA==\\u0007\\u001b[2J\"", 1);
    assert_ne!(evil, text);
    std::fs::write(&path, evil).unwrap();
    let outputs = [
        sessions(data.path(), &["show", "s"]),
        sessions(data.path(), &["export", "s"]),
        sessions(data.path(), &["fork", "s", "t"]),
        feed_lines(&mut chat(data.path(), "s"), &["Hi"]),
        sessions(data.path(), &["list"]),
    ];
    for out in &outputs {
        for stream in [&out.stdout, &out.stderr] {
            assert!(
                !stream.iter().any(|&b| b == 0x1b || b == 0x07),
                "raw escape in: {}",
                String::from_utf8_lossy(stream)
            );
        }
    }
    // The message still says what is wrong, with the escape shown as a picture.
    assert_user_error(&outputs[0], &["session.json", "␛]52"]);
}

#[test]
fn a_state_that_is_a_directory_is_named_once() {
    let data = tempfile::tempdir().unwrap();
    saved_session(data.path(), "s");
    let state = session_dir(data.path(), "s").join("state.bin");
    std::fs::remove_file(&state).unwrap();
    std::fs::create_dir(&state).unwrap();
    let out = feed_lines(&mut chat(data.path(), "s"), &["Again"]);
    assert_user_error(&out, &["state file", "not a regular file", "--rebuild"]);
    let err = stderr(&out);
    assert_eq!(err.matches("not a regular file").count(), 1, "{err}");
}
