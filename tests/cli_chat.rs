//! `rwkv-chat chat` and `rwkv-chat sessions` as a user runs them: sessions that resume from
//! the saved state, damaged state files, locks, crashes while saving.

use crate::common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Output, Stdio};

use common::{assert_user_error, bin, chat_command, feed_lines, stdout, tiny};
use serde_json::Value;

/// Runs `chat` greedily in `data`, one input line per message.
fn chat(data: &Path, model: &Path, session: &str, lines: &[&str], extra: &[&str]) -> Output {
    feed_lines(chat_command(data, model, session, 12).args(extra), lines)
}

fn replies(out: &Output) -> Vec<Value> {
    assert!(out.status.success(), "{}", common::stderr(out));
    stdout(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn sessions(data: &Path, args: &[&str]) -> Output {
    bin()
        .arg("sessions")
        .args(args)
        .args(["--data-dir", data.to_str().unwrap()])
        .output()
        .unwrap()
}

const TURNS: [&str; 3] = ["Hello there", "What do ravens eat?", "Thank you"];

#[test]
fn three_turns_in_one_process_equal_three_resumed_processes() {
    let data = tempfile::tempdir().unwrap();
    let one = replies(&chat(data.path(), &tiny(), "one", &TURNS, &[]));
    assert_eq!(one.len(), 3);

    let mut split = vec![];
    for turn in TURNS {
        split.extend(replies(&chat(data.path(), &tiny(), "split", &[turn], &[])));
    }
    for (a, b) in one.iter().zip(&split) {
        assert_eq!(a["reply"], b["reply"]);
        assert_eq!(a["generated_tokens"], b["generated_tokens"]);
    }
    // Resuming fed no history through the model.
    for reply in &split {
        assert_eq!(reply["replayed_tokens"], 0, "{reply}");
    }
    let listed = stdout(&sessions(data.path(), &["list", "--format", "json"]));
    let listed: Vec<Value> = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|s| s["turns"] == 3));
}

fn damage(data: &Path, session: &str, how: impl FnOnce(&mut Vec<u8>)) {
    let path = data.join("sessions").join(session).join("state.bin");
    let mut bytes = std::fs::read(&path).unwrap();
    how(&mut bytes);
    std::fs::write(&path, bytes).unwrap();
}

#[test]
fn damaged_state_files_are_named_and_the_transcript_survives() {
    type Damage = fn(&mut Vec<u8>);
    let cases: [(&str, Damage); 3] = [
        ("truncated", |b| b.truncate(b.len() / 2)),
        ("corrupt", |b| {
            let i = b.len() - 3;
            b[i] ^= 0x55
        }),
        ("not an rwkv-chat state file", |b| {
            b.iter_mut().for_each(|x| *x = b'?')
        }),
    ];
    for (expected, how) in cases {
        let data = tempfile::tempdir().unwrap();
        let first = replies(&chat(data.path(), &tiny(), "s", &TURNS[..2], &[]));
        damage(data.path(), "s", how);

        let out = chat(data.path(), &tiny(), "s", &[TURNS[2]], &[]);
        let expected = if expected == "truncated" {
            "corrupt"
        } else {
            expected
        };
        assert_user_error(
            &out,
            &["session `s`", expected, "transcript is intact", "--rebuild"],
        );

        // The transcript is untouched and readable.
        let shown = stdout(&sessions(data.path(), &["show", "s"]));
        assert!(
            shown.contains(first[1]["reply"].as_str().unwrap()),
            "{shown}"
        );

        // Rebuilt, the chat goes on exactly as an undamaged one.
        let rebuilt = replies(&chat(
            data.path(),
            &tiny(),
            "s",
            &[TURNS[2]],
            &["--rebuild"],
        ));
        assert!(rebuilt[0]["replayed_tokens"].as_u64().unwrap() > 0);
        let healthy = replies(&chat(data.path(), &tiny(), "h", &TURNS, &[]));
        assert_eq!(rebuilt[0]["reply"], healthy[2]["reply"]);
    }
}

#[test]
fn a_state_from_another_model_is_refused() {
    let data = tempfile::tempdir().unwrap();
    replies(&chat(data.path(), &tiny(), "s", &TURNS[..1], &[]));
    // The same shapes, other weights.
    let other = data.path().join("other-model");
    let mut tensors = common::tiny_tensors();
    let ln = (tensors["rwkv.ln_out.weight"].clone() * 2.0).unwrap();
    tensors.insert("rwkv.ln_out.weight".into(), ln);
    common::write_model(&other, &tensors);
    let out = chat(data.path(), &other, "s", &[TURNS[1]], &[]);
    assert_user_error(&out, &["belongs to another model", "--rebuild"]);
    let rebuilt = replies(&chat(data.path(), &other, "s", &[TURNS[1]], &["--rebuild"]));
    assert!(rebuilt[0]["replayed_tokens"].as_u64().unwrap() > 0);
}

#[test]
fn a_locked_session_is_refused() {
    let data = tempfile::tempdir().unwrap();
    replies(&chat(data.path(), &tiny(), "s", &TURNS[..1], &[]));
    let store = rwkv_chat::store::Store::open(data.path()).unwrap();
    let lock = store.lock("s").unwrap();
    let out = chat(data.path(), &tiny(), "s", &[TURNS[1]], &[]);
    assert_user_error(&out, &["session `s` is open in another rwkv-chat"]);
    let out = sessions(data.path(), &["delete", "s"]);
    assert_user_error(&out, &["open in another rwkv-chat"]);
    drop(lock);
    replies(&chat(data.path(), &tiny(), "s", &[TURNS[1]], &[]));
}

/// A chat killed at random points, saves included, always leaves a session that opens without
/// asking for a rebuild; at most the turn in flight is lost or fed again.
#[test]
fn a_writer_killed_at_any_point_leaves_a_session_that_opens() {
    let data = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (0..40).map(|i| format!("message number {i}")).collect();
    for round in 0..12u64 {
        let mut child = bin()
            .args([
                "chat",
                "--model",
                tiny().to_str().unwrap(),
                "--session",
                "k",
                "--temperature",
                "0",
            ])
            .args([
                "--max-tokens",
                "4",
                "--format",
                "jsonl",
                "--data-dir",
                data.path().to_str().unwrap(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        for line in &lines {
            let _ = writeln!(stdin, "{line}");
        }
        // Wait for a few saved replies, then kill after a varying delay.
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        for _ in 0..(round % 3 + 1) {
            line.clear();
            out.read_line(&mut line).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_micros(round * 1700 % 9000));
        child.kill().unwrap();
        child.wait().unwrap();
        drop(stdin);

        let reply = replies(&chat(data.path(), &tiny(), "k", &["after the crash"], &[]));
        assert_eq!(reply.len(), 1, "round {round}");
    }
    let shown = sessions(data.path(), &["export", "k", "--format", "json"]);
    let session: Value = serde_json::from_str(&stdout(&shown)).unwrap();
    let messages = session["transcript"]["messages"].as_array().unwrap();
    // At least the replies read before each kill, and one after each crash.
    assert!(messages.len() >= 2 * (24 + 12), "{}", messages.len());
}

#[test]
fn sessions_can_be_shown_exported_renamed_forked_and_deleted() {
    let data = tempfile::tempdir().unwrap();
    let original = replies(&chat(data.path(), &tiny(), "orig", &TURNS, &[]));

    let md = stdout(&sessions(
        data.path(),
        &["export", "orig", "--format", "markdown"],
    ));
    assert!(md.starts_with("# Hello there\n"), "{md}");
    assert!(md.contains("**You:** What do ravens eat?"), "{md}");

    assert!(
        sessions(data.path(), &["fork", "orig", "--at", "1", "forked"])
            .status
            .success()
    );
    // The fork resumes from the kept checkpoint, without re-feeding, and continues like the
    // original did at its second turn.
    let forked = replies(&chat(data.path(), &tiny(), "forked", &[TURNS[1]], &[]));
    assert_eq!(forked[0]["replayed_tokens"], 0);
    assert_eq!(forked[0]["reply"], original[1]["reply"]);

    assert!(
        sessions(data.path(), &["rename", "orig", "renamed"])
            .status
            .success()
    );
    let list = stdout(&sessions(data.path(), &["list"]));
    assert!(
        list.contains("renamed") && !list.contains("orig "),
        "{list}"
    );
    let out = sessions(data.path(), &["rename", "renamed", "forked"]);
    assert_user_error(&out, &["`forked` already exists"]);

    assert!(
        sessions(data.path(), &["delete", "renamed"])
            .status
            .success()
    );
    let out = sessions(data.path(), &["show", "renamed"]);
    assert_user_error(&out, &["no session named `renamed`"]);
}

#[test]
fn session_names_cannot_escape_the_data_dir() {
    let data = tempfile::tempdir().unwrap();
    for bad in ["../escape", "a/b", ".hidden"] {
        let out = chat(data.path(), &tiny(), bad, &["hi"], &[]);
        assert_user_error(&out, &["is not a valid session name"]);
        let out = sessions(data.path(), &["show", bad]);
        assert_user_error(&out, &["is not a valid session name"]);
    }
    assert!(!data.path().join("escape").exists());
    let out = sessions(data.path(), &["fork", "nope", "x"]);
    assert_user_error(&out, &["no session named `nope`"]);
}

#[test]
fn presets_are_chosen_by_name_and_unknown_ones_listed() {
    let data = tempfile::tempdir().unwrap();
    let out = chat(
        data.path(),
        &tiny(),
        "p",
        &["hi"],
        &["--preset", "nonsense"],
    );
    assert_user_error(
        &out,
        &["no preset named `nonsense`", "raven", "instruction"],
    );
    replies(&chat(
        data.path(),
        &tiny(),
        "p",
        &["hi"],
        &["--preset", "instruction"],
    ));
    let exported = stdout(&sessions(data.path(), &["export", "p", "--format", "json"]));
    let session: Value = serde_json::from_str(&exported).unwrap();
    assert_eq!(session["preset"]["name"], "instruction");
    assert_eq!(
        session["transcript"]["messages"][0]["fed"],
        "### Instruction: hi\n### Response:"
    );
}
