//! A session on disk turn by turn: a save writes the one new state (and small files), never the
//! kept checkpoints again; pruned checkpoints' files go; a checkpoint file that is lost or
//! damaged costs a replay of that turn's text, never the session.

use crate::common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use common::tiny;
use rwkv_chat::chat::{Preset, ReplyOptions, Turn};
use rwkv_chat::engine::Engine;
use rwkv_chat::model::LoadOptions;
use rwkv_chat::sampler::SamplingParams;
use rwkv_chat::session::{OpenError, OpenSession, Rebuild};
use rwkv_chat::store::{StateError, Store, StoreError, state_file};

const KEPT: usize = 5;
const OPTS: ReplyOptions = ReplyOptions {
    max_tokens: 6,
    seed: 0,
};

fn engine() -> Engine {
    Engine::load(&tiny(), LoadOptions::default(), None).unwrap()
}

fn preset() -> Preset {
    let mut preset = Preset::find(&Preset::built_in(), "raven").unwrap();
    preset.sampling = SamplingParams::greedy();
    preset
}

fn run(session: &mut OpenSession, store: &Store, engine: &Engine, turn: Turn) -> String {
    let never = AtomicBool::new(false);
    session
        .turn(store, engine, |c, e| {
            c.turn(e, &turn, OPTS, &never, &mut |_| {})
        })
        .unwrap()
        .text
}

fn say(session: &mut OpenSession, store: &Store, engine: &Engine, text: &str) -> String {
    run(session, store, engine, Turn::Send(text.into()))
}

/// Runs `f` until the session's lock is free. Another test in this binary may spawn a process
/// just as this one closes a session: the child holds a copy of every open file, the lock
/// included, until its exec closes them.
fn when_unlocked<T>(mut f: impl FnMut() -> Result<T, OpenError>) -> Result<T, OpenError> {
    for _ in 0..500 {
        match f() {
            Err(OpenError::Store(StoreError::Locked(_))) => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            other => return other,
        }
    }
    f()
}

fn open_with(
    store: &Store,
    engine: &Engine,
    name: &str,
    rebuild: Rebuild,
) -> Result<OpenSession, OpenError> {
    when_unlocked(|| OpenSession::open(store, engine, name, rebuild, &mut |_, _| {}))
}

fn open(store: &Store, engine: &Engine, name: &str) -> OpenSession {
    let mut session =
        open_with(store, engine, name, Rebuild::Ask).unwrap_or_else(|e| panic!("{e}"));
    session.conversation.kept_turns = KEPT;
    session
}

/// A session `name` with `turns` turns, closed.
fn saved(store: &Store, engine: &Engine, name: &str, turns: usize) -> Vec<String> {
    let mut session = OpenSession::create(store, engine, name, preset(), None).unwrap();
    session.conversation.kept_turns = KEPT;
    (0..turns)
        .map(|i| {
            say(
                &mut session,
                store,
                engine,
                &format!("Tell me about bird {i}."),
            )
        })
        .collect()
}

/// The state files of a session directory: name, then inode and modification time, which
/// change whenever a file is written again (a write is a new file renamed into place).
fn state_files(dir: &Path) -> BTreeMap<String, (u64, i64, i64, u64)> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(Result::unwrap)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".state"))
        .map(|e| {
            let m = e.metadata().unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                (m.ino(), m.mtime(), m.mtime_nsec(), m.len()),
            )
        })
        .collect()
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().len()
}

fn session_dir(data: &Path, name: &str) -> PathBuf {
    data.join("sessions").join(name)
}

/// The file of the checkpoint before the user message at `at`.
fn checkpoint_file(dir: &Path, at: usize) -> PathBuf {
    let prefix = format!("after-{at}-");
    let name = state_files(dir)
        .into_keys()
        .find(|n| n.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no {prefix}* in {:?}", state_files(dir).keys()));
    dir.join(name)
}

#[test]
fn each_turn_writes_one_state_and_every_kept_checkpoint_is_written_once() {
    let data = tempfile::tempdir().unwrap();
    let store = Store::open(data.path()).unwrap();
    let engine = engine();
    let dir = session_dir(data.path(), "s");
    let mut session = OpenSession::create(&store, &engine, "s", preset(), None).unwrap();
    session.conversation.kept_turns = KEPT;
    let state_size = session.conversation.state.size_bytes() as u64;
    let mut before = state_files(&dir);
    for turn in 1..=10 {
        say(
            &mut session,
            &store,
            &engine,
            &format!("Question number {turn}?"),
        );
        let stats = session.last_save;
        let after = state_files(&dir);

        // One new state file: the state after this turn. The state before it is the one the
        // last save wrote, and every other kept checkpoint is a file already there.
        assert_eq!(stats.state_files, 1, "turn {turn}: {stats:?}");
        let new: Vec<_> = after.keys().filter(|n| !before.contains_key(*n)).collect();
        assert_eq!(new.len(), 1, "turn {turn}: {new:?}");
        assert!(
            new[0].starts_with(&format!("after-{}-", 2 * turn)),
            "{new:?}"
        );
        for (name, meta) in &after {
            if let Some(old) = before.get(name) {
                assert_eq!(old, meta, "turn {turn}: {name} was written again");
            }
        }
        // Pruned as before: the states before the last KEPT turns, and the state after.
        let kept = turn.min(KEPT);
        let expected: Vec<String> = (turn - kept..=turn)
            .map(|t| format!("after-{}-", 2 * t))
            .collect();
        let names: Vec<&String> = after.keys().collect();
        assert_eq!(names.len(), kept + 1, "turn {turn}: {names:?}");
        for prefix in &expected {
            assert!(
                names.iter().any(|n| n.starts_with(prefix)),
                "turn {turn}: {prefix} in {names:?}"
            );
        }
        assert_eq!(session.conversation.checkpoints().count(), kept);

        // The count is exact: what the files hold.
        assert_eq!(stats.session_bytes, file_len(&dir.join("session.json")));
        assert_eq!(stats.index_bytes, file_len(&dir.join("state.bin")));
        assert_eq!(stats.state_bytes, after[new[0]].3);
        // And the state side of a save stays about one state however long the chat grows
        // (session.json is the transcript's text, small beside a real model's state).
        assert!(
            stats.index_bytes + stats.state_bytes < 2 * state_size,
            "turn {turn}: {stats:?}, a state is {state_size} bytes"
        );
        before = after;
    }
    let last = session.last_save;
    assert!(
        last.total() - last.session_bytes < 2 * state_size,
        "{last:?}"
    );
    let replies: Vec<String> = session
        .conversation
        .messages()
        .iter()
        .skip(1)
        .step_by(2)
        .map(|m| m.text.clone())
        .collect();
    drop(session);

    // Resumed: nothing fed again, and a save with nothing new writes no state file.
    let mut session = open(&store, &engine, "s");
    assert_eq!(session.replayed_tokens, 0);
    assert_eq!(session.conversation.checkpoints().count(), KEPT);
    session.save(&store, &engine).unwrap();
    assert_eq!(session.last_save.state_files, 0, "{:?}", session.last_save);
    assert_eq!(state_files(&dir), before);
    // Regenerating feeds the last message again from the state before it, which a save keeps:
    // greedy, the same reply; and the new checkpoint is one file.
    let again = run(&mut session, &store, &engine, Turn::Regenerate);
    assert_eq!(&again, replies.last().unwrap());
    assert!(
        session.last_save.state_files <= 1,
        "{:?}",
        session.last_save
    );
}

/// What a damaged checkpoint file can look like on disk.
fn damage(path: &Path, how: &str, elsewhere: &Path) {
    match how {
        "flipped" => {
            let mut bytes = std::fs::read(path).unwrap();
            let i = bytes.len() - 5;
            bytes[i] ^= 0x55;
            std::fs::write(path, bytes).unwrap();
        }
        "truncated" => {
            let bytes = std::fs::read(path).unwrap();
            std::fs::write(path, &bytes[..bytes.len() / 2]).unwrap();
        }
        "missing" => std::fs::remove_file(path).unwrap(),
        "huge" => std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_len(8 << 30)
            .unwrap(),
        "fifo" => {
            std::fs::remove_file(path).unwrap();
            let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        }
        "symlink" => {
            let victim = elsewhere.join("victim.state");
            std::fs::rename(path, &victim).unwrap();
            std::os::unix::fs::symlink(&victim, path).unwrap();
        }
        _ => unreachable!(),
    }
}

#[test]
fn a_damaged_checkpoint_file_loses_only_that_checkpoint() {
    let engine = engine();
    for how in ["flipped", "truncated", "missing", "huge", "fifo", "symlink"] {
        let data = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let store = Store::open(data.path()).unwrap();
        let replies = saved(&store, &engine, "s", 3);
        let dir = session_dir(data.path(), "s");
        // The checkpoint of the last turn: the one regenerate starts from.
        damage(&checkpoint_file(&dir, 4), how, elsewhere.path());
        let victim = std::fs::read(elsewhere.path().join("victim.state")).ok();

        let mut session = open(&store, &engine, "s");
        assert_eq!(session.replayed_tokens, 0, "{how}");
        let ats: Vec<usize> = session.conversation.checkpoints().map(|c| c.at).collect();
        assert_eq!(ats, [0, 2], "{how}");
        // That turn's regenerate replays its text from the checkpoint before: greedy, the
        // same reply.
        let again = run(&mut session, &store, &engine, Turn::Regenerate);
        assert_eq!(again, replies[2], "{how}");
        drop(session);

        // The save after it wrote the checkpoint again, a plain file in place of the damage;
        // a link's target was never written.
        let path = checkpoint_file(&dir, 4);
        assert!(std::fs::symlink_metadata(&path).unwrap().is_file(), "{how}");
        if let Some(victim) = victim {
            assert_eq!(
                std::fs::read(elsewhere.path().join("victim.state")).unwrap(),
                victim
            );
        }
        let session = open(&store, &engine, "s");
        assert_eq!(session.replayed_tokens, 0, "{how}");
        assert_eq!(session.conversation.checkpoints().count(), 3, "{how}");
    }
}

#[test]
fn a_save_cut_short_before_its_index_leaves_a_session_that_opens() {
    let data = tempfile::tempdir().unwrap();
    let store = Store::open(data.path()).unwrap();
    let engine = engine();
    let dir = session_dir(data.path(), "s");
    saved(&store, &engine, "s", 2);
    let index = std::fs::read(dir.join("state.bin")).unwrap();
    let mut session = open(&store, &engine, "s");
    say(&mut session, &store, &engine, "One more?");
    let turn_tokens = session.conversation.tokens;
    drop(session);
    // As if killed after the new state file was written and before the index: the old index
    // names the states of two turns, the transcript has three.
    std::fs::write(dir.join("state.bin"), index).unwrap();

    let session = open(&store, &engine, "s");
    assert!(session.replayed_tokens > 0);
    assert!(
        session.replayed_tokens < turn_tokens / 2,
        "{}",
        session.replayed_tokens
    );
    assert_eq!(session.conversation.messages().len(), 6);
    drop(session);
    assert_eq!(open(&store, &engine, "s").replayed_tokens, 0);
}

#[test]
fn state_files_no_index_names_are_removed_when_the_lock_is_taken() {
    let data = tempfile::tempdir().unwrap();
    let store = Store::open(data.path()).unwrap();
    let engine = engine();
    let dir = session_dir(data.path(), "s");
    saved(&store, &engine, "s", 1);
    let kept = state_files(&dir);
    std::fs::write(
        dir.join("after-99-0badf00d.state"),
        b"left by a save cut short",
    )
    .unwrap();
    std::fs::write(dir.join(".after-2-0badf00d.state.123.tmp"), b"temp").unwrap();
    std::fs::write(dir.join("notes.txt"), b"the user's").unwrap();
    let _lock = when_unlocked(|| Ok(store.lock("s")?)).unwrap();
    assert_eq!(state_files(&dir), kept);
    assert!(!dir.join(".after-2-0badf00d.state.123.tmp").exists());
    assert!(dir.join("notes.txt").exists());
}

#[test]
fn a_state_of_the_older_format_is_rebuilt_from_the_transcript_and_says_so() {
    let data = tempfile::tempdir().unwrap();
    let store = Store::open(data.path()).unwrap();
    let engine = engine();
    let replies = saved(&store, &engine, "s", 2);
    let dir = session_dir(data.path(), "s");
    // A version 1 state.bin: every state inline, a larger file than an index.
    let payload = vec![3u8; 5000];
    let mut old = b"RWKVCHAT".to_vec();
    old.extend_from_slice(&1u32.to_le_bytes());
    old.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    old.extend_from_slice(&payload);
    std::fs::write(dir.join("state.bin"), old).unwrap();

    let err = open_with(&store, &engine, "s", Rebuild::Ask).err().unwrap();
    let message = err.to_string();
    assert!(
        matches!(
            err,
            OpenError::NeedsRebuild {
                reason: StateError::Version(1),
                ..
            }
        ),
        "{message}"
    );
    assert!(message.contains("saved by an older rwkv-chat"), "{message}");
    assert!(message.contains("rebuilt"), "{message}");

    let session = open_with(&store, &engine, "s", Rebuild::Allow).unwrap();
    assert!(session.replayed_tokens > 0);
    assert_eq!(session.conversation.messages()[3].text, replies[1]);
    drop(session);
    let index = state_file::decode_index(&std::fs::read(dir.join("state.bin")).unwrap()).unwrap();
    assert_eq!(index.checkpoints.len(), 2);
    assert_eq!(open(&store, &engine, "s").replayed_tokens, 0);
}
