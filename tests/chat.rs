//! The conversation engine on the fixture model: the state always equals feeding the visible
//! transcript, and regenerate, edit and fork equal a fresh session given the same text.

use crate::common;

use std::sync::atomic::{AtomicBool, Ordering};

use common::{max_abs_diff, tiny};
use rwkv_chat::chat::{Conversation, Preset, ReplyOptions, StopReason};
use rwkv_chat::engine::Engine;
use rwkv_chat::model::{LoadOptions, State};
use rwkv_chat::sampler::SamplingParams;

fn engine() -> Engine {
    Engine::load(&tiny(), LoadOptions::default(), None).unwrap()
}

fn greedy_preset(name: &str) -> Preset {
    let mut preset = Preset::find(&Preset::built_in(), name).unwrap();
    preset.sampling = SamplingParams::greedy();
    preset
}

const OPTS: ReplyOptions = ReplyOptions {
    max_tokens: 12,
    seed: 0,
};

fn send(conv: &mut Conversation, engine: &Engine, text: &str) -> String {
    let never = AtomicBool::new(false);
    let mut streamed = String::new();
    let reply = conv
        .send(engine, text, OPTS, &never, &mut |t| streamed.push_str(t))
        .unwrap();
    assert_eq!(streamed, reply.text, "what streams is the reply");
    reply.text
}

fn assert_same_state(a: &State, b: &State) {
    for (x, y) in a
        .as_rwkv4()
        .unwrap()
        .layers
        .iter()
        .zip(&b.as_rwkv4().unwrap().layers)
    {
        for (p, q) in [
            (&x.att_x, &y.att_x),
            (&x.ffn_x, &y.ffn_x),
            (&x.att_num, &y.att_num),
            (&x.att_den, &y.att_den),
            (&x.att_max, &y.att_max),
        ] {
            let diff = max_abs_diff(p, q);
            assert!(diff < 1e-4, "state differs by {diff}");
        }
    }
}

fn rebuilt(conv: &Conversation, engine: &Engine) -> Conversation {
    Conversation::rebuild(
        engine,
        conv.preset.clone(),
        conv.sampling.clone(),
        conv.transcript.clone(),
        &mut |_, _| {},
    )
    .unwrap()
}

#[test]
fn after_each_reply_the_state_is_what_feeding_the_transcript_gives() {
    let engine = engine();
    for preset in ["raven", "user-assistant", "instruction", "completion"] {
        let mut conv = Conversation::new(&engine, greedy_preset(preset)).unwrap();
        for msg in ["Hello there", "Tell me\n\nabout ravens", "Thanks!"] {
            send(&mut conv, &engine, msg);
            let fresh = rebuilt(&conv, &engine);
            assert_eq!(fresh.tokens, conv.tokens, "{preset}");
            assert_same_state(&conv.state, &fresh.state);
        }
        assert_eq!(conv.messages().len(), 6);
    }
}

#[test]
fn raven_messages_are_normalised_and_the_format_is_fed() {
    let engine = engine();
    let mut conv = Conversation::new(&engine, greedy_preset("raven")).unwrap();
    send(&mut conv, &engine, "  one\n\n\ntwo ");
    let user = &conv.messages()[0];
    assert_eq!(user.text, "one\ntwo");
    assert_eq!(user.fed, "Bob: one\ntwo\n\nAlice:");
    let bot = &conv.messages()[1];
    assert_eq!(bot.fed, format!("{}\n\n", bot.text));
    assert!(!bot.text.contains("\n\n"));
}

#[test]
fn regenerate_edit_and_fork_equal_a_fresh_session() {
    let engine = engine();
    let mut conv = Conversation::new(&engine, greedy_preset("raven")).unwrap();
    let first = send(&mut conv, &engine, "Hello");
    let second = send(&mut conv, &engine, "What do ravens eat?");
    let never = AtomicBool::new(false);

    // Greedy regenerate gives the same reply and the same state.
    let state_before = conv.state.clone();
    let again = conv.regenerate(&engine, OPTS, &never, &mut |_| {}).unwrap();
    assert_eq!(again.text, second);
    assert_same_state(&conv.state, &state_before);
    assert_eq!(conv.messages().len(), 4);

    // Edit: the same as a fresh session fed "Hello" then the new text.
    let edited = conv
        .edit_last(&engine, "Where do ravens live?", OPTS, &never, &mut |_| {})
        .unwrap();
    let mut fresh = Conversation::new(&engine, greedy_preset("raven")).unwrap();
    assert_eq!(send(&mut fresh, &engine, "Hello"), first);
    assert_eq!(
        send(&mut fresh, &engine, "Where do ravens live?"),
        edited.text
    );
    assert_eq!(conv.transcript, fresh.transcript);
    assert_same_state(&conv.state, &fresh.state);

    // Fork after the first turn, then continue: the same as a fresh session.
    let mut fork = conv.fork(1).unwrap();
    assert_eq!(fork.messages().len(), 2);
    let forked_reply = send(&mut fork, &engine, "Tell me a story");
    let mut fresh = Conversation::new(&engine, greedy_preset("raven")).unwrap();
    send(&mut fresh, &engine, "Hello");
    assert_eq!(send(&mut fresh, &engine, "Tell me a story"), forked_reply);
    assert_same_state(&fork.state, &fresh.state);

    // Fork at zero turns: just the introduction.
    let empty = conv.fork(0).unwrap();
    assert!(empty.messages().is_empty());
    assert_same_state(
        &empty.state,
        &Conversation::new(&engine, greedy_preset("raven"))
            .unwrap()
            .state,
    );
    assert!(conv.fork(9).is_err());
}

#[test]
fn cancel_keeps_the_partial_reply_and_a_consistent_state() {
    let engine = engine();
    let mut conv = Conversation::new(&engine, greedy_preset("completion")).unwrap();
    let cancel = AtomicBool::new(false);
    let mut pieces = 0;
    let opts = ReplyOptions {
        max_tokens: 40,
        seed: 0,
    };
    let reply = conv
        .send(&engine, "The raven", opts, &cancel, &mut |_| {
            pieces += 1;
            if pieces == 3 {
                cancel.store(true, Ordering::Relaxed);
            }
        })
        .unwrap();
    assert_eq!(reply.stop, StopReason::Cancelled);
    assert!(
        reply.generated_tokens >= 3 && reply.generated_tokens < 40,
        "{}",
        reply.generated_tokens
    );
    assert_eq!(conv.messages()[1].text, reply.text);
    assert_same_state(&conv.state, &rebuilt(&conv, &engine).state);
    // The next turn works from there.
    send(&mut conv, &engine, " and then");
    assert_same_state(&conv.state, &rebuilt(&conv, &engine).state);
}

#[test]
fn stop_sequences_end_the_reply_and_are_never_shown() {
    let engine = engine();
    // A stop sequence the tiny model is sure to produce: its first greedy token's text.
    let mut conv = Conversation::new(&engine, greedy_preset("completion")).unwrap();
    let free = send(&mut conv, &engine, "Hello");
    let word = free.split_whitespace().nth(1).unwrap().to_owned();
    let mut preset = greedy_preset("completion");
    preset.stop = vec![word.clone()];
    let mut conv = Conversation::new(&engine, preset).unwrap();
    let never = AtomicBool::new(false);
    let mut streamed = String::new();
    let reply = conv
        .send(&engine, "Hello", OPTS, &never, &mut |t| {
            streamed.push_str(t)
        })
        .unwrap();
    assert_eq!(reply.stop, StopReason::Stop);
    assert!(
        !reply.text.contains(&word) && !streamed.contains(&word),
        "{reply:?}"
    );
    assert!(free.starts_with(&reply.text));
    assert_same_state(&conv.state, &rebuilt(&conv, &engine).state);
}

#[test]
fn the_same_seed_samples_the_same_reply() {
    let engine = engine();
    let run = |seed| {
        let mut conv =
            Conversation::new(&engine, Preset::find(&Preset::built_in(), "raven").unwrap())
                .unwrap();
        let never = AtomicBool::new(false);
        conv.send(
            &engine,
            "Hi",
            ReplyOptions {
                max_tokens: 12,
                seed,
            },
            &never,
            &mut |_| {},
        )
        .unwrap()
        .text
    };
    assert_eq!(run(3), run(3));
    assert_ne!(run(3), run(4));
}

#[test]
fn bad_requests_are_refused_and_change_nothing() {
    let engine = engine();
    let mut conv = Conversation::new(&engine, greedy_preset("raven")).unwrap();
    let never = AtomicBool::new(false);
    let err = conv
        .send(&engine, "  \n\n ", OPTS, &never, &mut |_| {})
        .unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
    let err = conv
        .regenerate(&engine, OPTS, &never, &mut |_| {})
        .unwrap_err();
    assert!(err.to_string().contains("no reply to regenerate"), "{err}");
    let err = conv
        .edit_last(&engine, "x", OPTS, &never, &mut |_| {})
        .unwrap_err();
    assert!(err.to_string().contains("no message to edit"), "{err}");
    assert!(conv.messages().is_empty());
}

#[test]
fn only_the_configured_number_of_turns_is_kept() {
    let engine = engine();
    let mut conv = Conversation::new(&engine, greedy_preset("raven")).unwrap();
    conv.kept_turns = 1;
    for msg in ["one", "two", "three"] {
        send(&mut conv, &engine, msg);
    }
    assert_eq!(conv.saved_state().checkpoints.len(), 1);
    let err = conv.fork(1).err().unwrap().to_string();
    assert!(err.contains("no longer kept"), "{err}");
    // The last turn is kept: regenerate and edit still work, and fork at the end.
    let never = AtomicBool::new(false);
    conv.regenerate(&engine, OPTS, &never, &mut |_| {}).unwrap();
    conv.edit_last(&engine, "four", OPTS, &never, &mut |_| {})
        .unwrap();
    assert_eq!(conv.fork(3).unwrap().messages().len(), 6);
}
