//! The real binary on a World model: e2e-v7 (a v7 with the real 65536-token vocab) through
//! `generate` and `perplexity`, with the built-in World tokenizer, against rwkv 0.8.32's
//! greedy ids and teacher-forced NLL.

use crate::common::{self, rwkv_chat, stdout};

fn e2e() -> (std::path::PathBuf, serde_json::Value) {
    let dir = common::fixture("world/e2e-v7");
    let golden = serde_json::from_slice(&std::fs::read(dir.join("golden.json")).unwrap()).unwrap();
    (dir.join("model.pth"), golden)
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
    let out = rwkv_chat(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        golden["prompt"].as_str().unwrap(),
        "--temperature",
        "0",
        "--format",
        "jsonl",
        "--max-tokens",
        &want.len().to_string(),
    ]);
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
    session["transcript"]["messages"][1]["text"] =
        ">\nTwo and two make four.\n</think>\nIt is 4.".into();
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
    let with = export(&["--with-thinking"]);
    assert!(with.contains("Two and two make four."), "{with}");
}
