//! What the command line prints, read as a user reads it: counts in words, no colour codes
//! where no terminal reads them, a negative number taken as a value.

use crate::common;

use common::{assert_user_error, bin, chat_command, feed_lines, stderr, stdout, tiny};

#[test]
fn convert_names_the_parameter_count_like_a_model_size() {
    let dir = tempfile::tempdir().unwrap();
    let dst = dir.path().join("out");
    let out = bin()
        .arg("convert")
        .arg(tiny().join("rwkv4-raw.pth"))
        .arg(&dst)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let count = text
        .split(" tensors, ")
        .nth(1)
        .and_then(|rest| rest.split(" parameters").next())
        .unwrap_or_else(|| panic!("no parameter count in {text}"));
    // The tiny model has tens of thousands of parameters: `0.000 B` said nothing.
    assert!(count.ends_with('K') || count.ends_with('M'), "{text}");
    assert!(!count.starts_with("0."), "{text}");
}

#[test]
fn a_session_of_one_turn_is_listed_as_one_turn() {
    let data = tempfile::tempdir().unwrap();
    let out = feed_lines(
        &mut chat_command(data.path(), &tiny(), "one", 3),
        &["Hello"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = bin()
        .args(["sessions", "list", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let list = stdout(&out);
    assert!(list.contains("   1 turn "), "{list}");
    assert!(!list.contains("1 turns"), "{list}");
}

#[test]
fn warnings_on_a_pipe_carry_no_colour_codes() {
    let data = tempfile::tempdir().unwrap();
    // A q4 weight cache file that is damaged is a WARN line from tracing.
    let generate = || {
        bin()
            .env("RWKV_CHAT_DATA_DIR", data.path())
            .args(["generate", "--model"])
            .arg(tiny())
            .args(["--dtype", "q4", "--cache-weights", "--prompt", "Hi"])
            .args(["--max-tokens", "2", "--temperature", "0"])
            .output()
            .unwrap()
    };
    assert!(generate().status.success());
    let cache = data.path().join("quantized");
    for entry in std::fs::read_dir(&cache).unwrap() {
        std::fs::write(entry.unwrap().path(), b"RWKVQNT3 and then nonsense").unwrap();
    }
    let out = generate();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("WARN") && err.contains("ignoring weight cache"),
        "{err}"
    );
    assert!(!err.contains('\x1b'), "{err:?}");
}

#[test]
fn a_negative_temperature_is_refused_as_a_value() {
    let out = bin()
        .args(["generate", "--model"])
        .arg(tiny())
        .args(["--prompt", "Hi", "--temperature", "-1"])
        .output()
        .unwrap();
    assert_user_error(&out, &["temperature must be between 0 and 5, not -1"]);
}

#[test]
fn a_broken_preset_is_skipped_by_chat_with_a_warning() {
    let data = tempfile::tempdir().unwrap();
    let presets = data.path().join("config/presets");
    std::fs::create_dir_all(&presets).unwrap();
    std::fs::write(
        presets.join("broken.toml"),
        "name = \"broken\"\nstop = [\"x\"\n",
    )
    .unwrap();
    let out = feed_lines(&mut chat_command(data.path(), &tiny(), "s", 3), &["Hello"]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("warning: skipped a preset: "), "{err}");
    assert!(err.contains("broken.toml"), "{err}");
}

#[test]
fn bench_ui_reports_frame_and_scroll_medians_per_history_length() {
    let out = bin()
        .args(["bench", "--ui", "--history", "200,3000", "--format", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = report["ui"].as_array().unwrap();
    let lengths: Vec<u64> = rows
        .iter()
        .map(|r| r["history_tokens"].as_u64().unwrap())
        .collect();
    assert_eq!(lengths, [200, 3000]);
    assert!(rows[0]["messages"].as_u64().unwrap() < rows[1]["messages"].as_u64().unwrap());
    for r in rows {
        for key in ["frame_ms", "scroll_ms"] {
            let v = r[key].as_f64().unwrap();
            assert!(v.is_finite() && v >= 0.0, "{key}: {r}");
        }
    }

    let out = bin()
        .args(["bench", "--ui", "--history", "0"])
        .output()
        .unwrap();
    assert_user_error(&out, &["--history lengths must be at least 1 token"]);
    let out = bin().args(["bench", "--history", "10"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--ui"), "{}", stderr(&out));
}

/// The chat app's flags before a subcommand would be ignored by it (`generate` has its own
/// `--dtype`; `sessions` its own `--data-dir`): refused with both named, nothing run.
#[test]
fn the_chat_apps_flags_before_a_subcommand_are_refused() {
    let data = tempfile::tempdir().unwrap();
    let cases: [(&[&str], &str, &str); 2] = [
        (
            &["--dtype", "q4", "generate", "--model"],
            "generate",
            "--dtype",
        ),
        (
            &["--data-dir", "elsewhere", "sessions", "list"],
            "sessions",
            "--data-dir",
        ),
    ];
    for (args, subcommand, flag) in cases {
        let out = bin()
            .env("RWKV_CHAT_DATA_DIR", data.path())
            .args(args)
            .arg(tiny())
            .output()
            .unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.starts_with("error: "), "{err}");
        assert!(
            err.contains(&format!("'{subcommand}'")) && err.contains(flag),
            "{err}"
        );
        assert!(
            !err.contains("backtrace") && !err.contains("panicked"),
            "{err}"
        );
        assert!(stdout(&out).is_empty());
    }
    assert_eq!(std::fs::read_dir(data.path()).unwrap().count(), 0);
}
