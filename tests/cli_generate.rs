//! The real binary's `generate` and `perplexity` on the fixture model.

use crate::common;

use common::{Golden, rwkv_chat, stdout, tiny};
use rwkv_chat::model::{LoadOptions, Rwkv};

#[test]
fn greedy_jsonl_prints_the_golden_ids() {
    let golden = Golden::load();
    let model = tiny();
    let out = rwkv_chat(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        &golden.prompt,
        "--temperature",
        "0",
        "--format",
        "jsonl",
        "--max-tokens",
        "16",
    ]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 17, "16 tokens and a summary");
    let ids: Vec<u32> = lines[..16]
        .iter()
        .map(|l| l["id"].as_u64().unwrap() as u32)
        .collect();
    assert_eq!(ids, golden.greedy_ids);
    let summary = &lines[16];
    assert_eq!(summary["prompt_tokens"], golden.input_ids.len());
    assert_eq!(summary["generated_tokens"], 16);
    assert!(summary["prefill_tok_s"].as_f64().unwrap() > 0.0);
    assert!(summary["decode_tok_s"].as_f64().unwrap() > 0.0);
    let text: String = lines[..16]
        .iter()
        .map(|l| l["text"].as_str().unwrap())
        .collect();
    assert_eq!(summary["text"], text.as_str());
}

#[test]
fn text_output_streams_the_decoded_continuation_and_reads_stdin() {
    let golden = Golden::load();
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tiny().join("golden.json")).unwrap()).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rwkv-chat"))
        .args([
            "generate",
            "--model",
            tiny().to_str().unwrap(),
            "--temperature",
            "0",
            "--max-tokens",
            "16",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(golden.prompt.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(stdout(&out), json["greedy_text"].as_str().unwrap());
}

#[test]
fn the_same_seed_gives_the_same_sample() {
    let run = |seed: &str| {
        let out = rwkv_chat(&[
            "generate",
            "--model",
            tiny().to_str().unwrap(),
            "--prompt",
            "Hello",
            "--seed",
            seed,
            "--max-tokens",
            "12",
            "--format",
            "jsonl",
        ]);
        assert!(out.status.success());
        let ids: Vec<u64> = stdout(&out)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_u64())
            .collect();
        ids
    };
    assert_eq!(run("5"), run("5"));
    assert_ne!(run("5"), run("6"));
}

/// The mean NLL of tokens 2..n, recomputed here from the library's logits in f64.
fn reference_nll(text: &str) -> (usize, f64) {
    let engine = rwkv_chat::engine::Engine::load(&tiny(), LoadOptions::default(), None).unwrap();
    let ids = engine.tokenizer.encode(text).unwrap();
    let model: &Rwkv = &engine.model;
    let mut state = model.new_state();
    let rows: Vec<Vec<f32>> = model
        .forward_chunk(&ids, &mut state, true)
        .unwrap()
        .to_vec2()
        .unwrap();
    let mut total = 0.0;
    for (p, row) in rows.iter().enumerate().take(ids.len() - 1) {
        let lse = row.iter().map(|&x| (x as f64).exp()).sum::<f64>().ln();
        total += lse - row[ids[p + 1] as usize] as f64;
    }
    (ids.len(), total / (ids.len() - 1) as f64)
}

#[test]
fn perplexity_matches_a_recomputation() {
    let text =
        "The raven is a large black bird. It lives in forests and mountains, and it is clever.";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("text.txt");
    std::fs::write(&file, text).unwrap();
    // A chunk size that splits the text, so the chunk boundaries are exercised too.
    let out = rwkv_chat(&[
        "perplexity",
        "--model",
        tiny().to_str().unwrap(),
        "--file",
        file.to_str().unwrap(),
        "--format",
        "json",
        "--chunk-size",
        "7",
    ]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let report: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    let (tokens, nll) = reference_nll(text);
    assert_eq!(report["tokens"], tokens);
    let got = report["nll"].as_f64().unwrap();
    assert!((got - nll).abs() < 1e-4, "{got} vs {nll}");
    let ppl = report["perplexity"].as_f64().unwrap();
    assert!((ppl - nll.exp()).abs() < 1e-4 * nll.exp(), "{ppl}");
}

#[test]
fn perplexity_text_report() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.txt");
    std::fs::write(&file, "Hello world, hello ravens.").unwrap();
    let out = rwkv_chat(&[
        "perplexity",
        "--model",
        tiny().to_str().unwrap(),
        "--file",
        file.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let text = stdout(&out);
    assert!(text.starts_with("tokens: "), "{text}");
    assert!(text.contains("\nperplexity: "), "{text}");
}

#[test]
fn bench_reports_speed_memory_and_resume() {
    let out = rwkv_chat(&[
        "bench",
        "--model",
        tiny().to_str().unwrap(),
        "--prefill",
        "16",
        "--decode",
        "4",
        "--resume",
        "20,200",
        "--threads",
        "1",
        "--format",
        "json",
    ]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let report: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(report["prefill_tokens"], 16);
    assert_eq!(report["decode_tokens"], 4);
    assert_eq!(report["threads"], 1);
    assert!(report["peak_rss_mb"].as_f64().unwrap() > 0.0);
    // 2 layers x (2 shifts of 16 + 3 accumulators of 16) f32.
    assert_eq!(report["state_bytes"], 2 * 5 * 16 * 4);
    let resume = report["resume"].as_array().unwrap();
    assert_eq!(resume.len(), 2);
    for r in resume {
        assert_eq!(r["replayed_tokens"], 0, "{r}");
        assert!(r["history_tokens"].as_u64().unwrap() >= 20);
        // At least the one new state (with the index and session.json).
        let written = r["bytes_written_last_turn"].as_u64().unwrap();
        let state = report["state_bytes"].as_u64().unwrap();
        assert!(written > state, "{r}");
    }
    // A usage error: clap's exit status 2, and the reason.
    let out = rwkv_chat(&["bench", "--shape", "13b"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(common::stderr(&out).contains("unknown shape `13b`"));
}

#[test]
fn perplexity_compares_a_quantized_model_with_f32() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.txt");
    std::fs::write(
        &file,
        "The raven is a large black bird that lives in forests.",
    )
    .unwrap();
    let args = |dtype: &'static str| {
        vec![
            "perplexity".to_owned(),
            "--model".into(),
            tiny().to_str().unwrap().into(),
            "--file".into(),
            file.to_str().unwrap().into(),
            "--format".into(),
            "json".into(),
            "--dtype".into(),
            dtype.into(),
            "--compare-f32".into(),
        ]
    };
    for dtype in ["f32", "q8", "q5"] {
        let owned = args(dtype);
        let out = rwkv_chat(&owned.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(out.status.success(), "{}", common::stderr(&out));
        let report: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
        assert_eq!(report["dtype"], dtype);
        let agreement = report["top1_agreement"].as_f64().unwrap();
        let diff = report["max_logit_diff"].as_f64().unwrap();
        if dtype == "f32" {
            assert_eq!(agreement, 1.0);
            assert_eq!(diff, 0.0);
        } else {
            assert!((0.0..=1.0).contains(&agreement) && diff > 0.0, "{report}");
        }
    }
}
