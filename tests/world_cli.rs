//! The real binary on a World model: e2e-v7 (a v7 with the real 65536-token vocab) through
//! `generate` and `perplexity`, with the built-in World tokenizer, against rwkv 0.8.32's
//! greedy ids and teacher-forced NLL.

use crate::common::{self, rwkv_chat, stdout};

fn e2e() -> (std::path::PathBuf, serde_json::Value) {
    let dir = common::fixture("world/e2e-v7");
    let golden = serde_json::from_slice(&std::fs::read(dir.join("golden.json")).unwrap()).unwrap();
    (dir.join("model.pth"), golden)
}

/// `generate --format jsonl` of `max_tokens` greedy tokens.
fn greedy(model: &std::path::Path, prompt: &str, max_tokens: usize) -> std::process::Output {
    rwkv_chat(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        prompt,
        "--temperature",
        "0",
        "--format",
        "jsonl",
        "--max-tokens",
        &max_tokens.to_string(),
    ])
}

#[test]
fn generate_prints_the_reference_greedy_ids_and_text() {
    let (model, golden) = e2e();
    let want: Vec<u64> = golden["greedy_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let out = greedy(&model, golden["prompt"].as_str().unwrap(), want.len());
    assert!(out.status.success(), "{}", common::stderr(&out));
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ids: Vec<u64> = lines[..want.len()]
        .iter()
        .map(|l| l["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, want);
    let summary = &lines[want.len()];
    assert_eq!(
        summary["prompt_tokens"],
        golden["input_ids"].as_array().unwrap().len()
    );
    assert_eq!(summary["text"], golden["greedy_text"]);
}

#[test]
fn perplexity_matches_the_reference_nll() {
    let (model, golden) = e2e();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("text.txt");
    std::fs::write(&file, golden["nll"]["text"].as_str().unwrap()).unwrap();
    let out = rwkv_chat(&[
        "perplexity",
        "--model",
        model.to_str().unwrap(),
        "--file",
        file.to_str().unwrap(),
        "--format",
        "json",
        "--chunk-size",
        "64",
    ]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let report: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(report["tokens"], golden["nll"]["n_tokens"]);
    let got = report["nll"].as_f64().unwrap();
    let want = golden["nll"]["mean"].as_f64().unwrap();
    assert!((got - want).abs() < 1e-4, "nll {got}, reference {want}");
}

const TURNS: [&str; 3] = ["Bonjour ! Ça va ?", "你好，请介绍一下你自己。", "Thank you"];

fn replies(out: &std::process::Output) -> Vec<serde_json::Value> {
    assert!(out.status.success(), "{}", common::stderr(out));
    stdout(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn chat(
    data: &std::path::Path,
    session: &str,
    lines: &[&str],
    extra: &[&str],
) -> std::process::Output {
    let model = common::fixture("world/e2e-v7");
    common::feed_lines(
        common::chat_command(data, &model, session, 12).args(extra),
        lines,
    )
}

/// A v7 chat in the world preset, split over three processes, equals one run, and each
/// resume feeds no history through the model.
#[test]
fn a_v7_chat_split_over_processes_equals_one_run() {
    let data = tempfile::tempdir().unwrap();
    let one = replies(&chat(data.path(), "one", &TURNS, &[]));
    assert_eq!(one.len(), 3);
    let mut split = vec![];
    for turn in TURNS {
        split.extend(replies(&chat(data.path(), "split", &[turn], &[])));
    }
    for (a, b) in one.iter().zip(&split) {
        assert_eq!(a["reply"], b["reply"]);
        assert_eq!(a["generated_tokens"], b["generated_tokens"]);
    }
    for reply in &split {
        assert_eq!(reply["replayed_tokens"], 0, "{reply}");
    }
    let shown = stdout(
        &common::bin()
            .args(["sessions", "show", "split", "--data-dir"])
            .arg(data.path())
            .output()
            .unwrap(),
    );
    assert!(
        shown.contains("world"),
        "the session is not in the world preset: {shown}"
    );
}

/// An RWKV-4 session opened with a v7 model is rebuilt from its text with the World
/// tokenizer, never fed the RWKV-4 state.
#[test]
fn an_rwkv4_session_opened_with_a_v7_model_is_rebuilt() {
    let data = tempfile::tempdir().unwrap();
    replies(&common::feed_lines(
        &mut common::chat_command(data.path(), &common::tiny(), "s", 12),
        &TURNS[..1],
    ));
    let out = chat(data.path(), "s", &[TURNS[1]], &[]);
    common::assert_user_error(&out, &["belongs to another model", "RWKV-7", "--rebuild"]);
    let rebuilt = replies(&chat(data.path(), "s", &[TURNS[1]], &["--rebuild"]));
    assert!(rebuilt[0]["replayed_tokens"].as_u64().unwrap() > 0);
}

/// A G1 session's export leaves the reasoning out unless asked for.
#[test]
fn exports_leave_the_reasoning_out_unless_asked() {
    let data = tempfile::tempdir().unwrap();
    replies(&chat(
        data.path(),
        "g1",
        &["2+2?"],
        &["--preset", "g1-think"],
    ));
    let path = data.path().join("sessions/g1/session.json");
    let mut session: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let reply = ">\nTwo and two make four.\n</think>\nIt is 4.";
    session["transcript"]["messages"][1]["text"] = reply.into();
    session["transcript"]["messages"][1]["fed"] = format!("{reply}\n\n").into();
    // Since switched to a preset that ends a turn otherwise.
    session["preset"]["bot_suffix"] = "<end>".into();
    std::fs::write(&path, serde_json::to_vec(&session).unwrap()).unwrap();
    let export = |extra: &[&str]| {
        let out = common::bin()
            .args(["sessions", "export", "g1", "--data-dir"])
            .arg(data.path())
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", common::stderr(&out));
        stdout(&out)
    };
    let plain = export(&[]);
    assert!(plain.contains("**Bot:** It is 4."), "{plain}");
    assert!(!plain.contains("Two and two"), "{plain}");
    let json = export(&["--format", "json"]);
    assert!(!json.contains("Two and two"), "{json}");
    let exported: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        exported["transcript"]["messages"][1]["fed"], "It is 4.\n\n",
        "{json}"
    );
    let with = export(&["--with-thinking"]);
    assert!(with.contains("Two and two make four."), "{with}");

    // A reply that followed no `<think` (written with another preset, before the session
    // switched to this one) is not reasoning: it is exported whole.
    let user = &mut session["transcript"]["messages"][0]["fed"];
    assert!(
        user.as_str().unwrap().ends_with("Assistant: <think"),
        "{user}"
    );
    *user = user.as_str().unwrap().trim_end_matches(" <think").into();
    std::fs::write(&path, serde_json::to_vec(&session).unwrap()).unwrap();
    let plain = export(&[]);
    assert!(plain.contains("Two and two make four."), "{plain}");
}

/// A byte-level BPE `tokenizer.json` (the format of GPT-NeoX's) of `size` ids: the 256 bytes
/// in GPT-2's printable mapping, then filler pieces no merge reaches.
fn byte_level_tokenizer(size: usize) -> serde_json::Value {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
    let mut vocab = serde_json::Map::new();
    let mut shifted = 0;
    for b in 0..256u32 {
        let c = if printable(b) {
            char::from_u32(b).unwrap()
        } else {
            shifted += 1;
            char::from_u32(255 + shifted).unwrap()
        };
        vocab.insert(c.to_string(), b.into());
    }
    for id in 256..size {
        vocab.insert(format!("filler{id}"), id.into());
    }
    serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "vocab": vocab, "merges": []}
    })
}

/// fla-hub's v7 Pile models (`rwkv7-168M-pile`) have fewer embedding rows than the World vocab
/// and ship the tokenizer.json they were trained with: that one is used (without one, the
/// World vocab is refused with the reason). A World-sized model's tokenizer.json is not.
#[test]
fn a_v7_trained_on_another_vocab_uses_the_tokenizer_json_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    let src = common::fixture("world/tiny-v7-fla");
    for name in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(name), dir.path().join(name)).unwrap();
    }
    let run = || greedy(dir.path(), "hi there", 4);
    common::assert_user_error(
        &run(),
        &["the tokenizer has 65530 tokens but the model's vocabulary has only 1024"],
    );
    std::fs::write(
        dir.path().join("tokenizer.json"),
        byte_level_tokenizer(1024).to_string(),
    )
    .unwrap();
    let out = run();
    assert!(out.status.success(), "{}", common::stderr(&out));
    let summary: serde_json::Value =
        serde_json::from_str(stdout(&out).lines().last().unwrap()).unwrap();
    // No merges: one token per byte.
    assert_eq!(summary["prompt_tokens"], "hi there".len());
}

#[test]
fn a_world_model_keeps_the_world_tokenizer_beside_a_tokenizer_json() {
    let (model, golden) = e2e();
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("model.pth");
    std::fs::copy(model, &copy).unwrap();
    std::fs::write(
        dir.path().join("tokenizer.json"),
        byte_level_tokenizer(1024).to_string(),
    )
    .unwrap();
    let out = greedy(&copy, golden["prompt"].as_str().unwrap(), 1);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let summary: serde_json::Value =
        serde_json::from_str(stdout(&out).lines().last().unwrap()).unwrap();
    assert_eq!(
        summary["prompt_tokens"],
        golden["input_ids"].as_array().unwrap().len()
    );
}
