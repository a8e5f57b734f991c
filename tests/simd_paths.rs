//! Every SIMD path this CPU runs, forced with `RWKV_CHAT_SIMD`, against the portable loops
//! through the real binary: the same NLL over a text in every weight format, with the token
//! step (one row) and few-row products (the kernels' two ways of running); and a path that
//! cannot run is refused with the reason before anything loads.

use std::path::Path;

use rwkv_chat::model::simd::Simd;

use crate::common::{self, stderr, stdout};

fn nll(model: &Path, text: &Path, dtype: &str, chunk: &str, simd: &str) -> f64 {
    let out = common::bin()
        .args(["perplexity", "--model"])
        .arg(model)
        .arg("-f")
        .arg(text)
        .args(["--dtype", dtype, "--chunk-size", chunk, "--format", "json"])
        .env("RWKV_CHAT_SIMD", simd)
        .output()
        .unwrap();
    assert!(out.status.success(), "{simd} {dtype}: {}", stderr(&out));
    let report: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    // The run says which path it took: the setting reached the kernels.
    assert_eq!(report["simd"], simd, "{dtype}");
    report["nll"].as_f64().unwrap()
}

#[test]
fn every_path_gives_the_portable_loops_results_in_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("text.txt");
    let readme = std::fs::read_to_string(common::fixture("README.md")).unwrap();
    std::fs::write(&text, readme.chars().take(300).collect::<String>()).unwrap();
    let models = [common::tiny(), common::fixture("world/e2e-v7/model.pth")];
    let paths = Simd::supported();
    if !paths.contains(&Simd::Avx512) {
        eprintln!("this CPU has no AVX-512 with VNNI: the avx512 kernels are not run here");
    }
    if paths.len() < 2 {
        eprintln!("this CPU runs the portable path only: nothing to compare it with");
        return;
    }
    for model in &models {
        for dtype in ["f32", "f16", "bf16", "q8", "q5", "q4"] {
            // One row at a time (the token step), seven (the most the row-by-row kernels
            // take; q4 and q5 on AVX2 and AVX-512 take the integer panels from two on), and
            // sixteen: prompt chunks, where q4 and q5 on AVX2 and AVX-512, and q8 on AVX-512,
            // are multiplied in integers and the portable path widens them for `gemm`.
            for chunk in ["1", "7", "16"] {
                let portable = nll(model, &text, dtype, chunk, "portable");
                // The paths sum in different orders, so their results differ in the last bits;
                // the 8-, 5- and 4-bit formats round each product's input to 8 bits, and a
                // value that lands on the other side of a rounding step moves the NLL by up
                // to about 1e-3 on these small random models (the products themselves agree
                // to 1e-6, see `gemv`'s tests). A broken kernel moves it by far more.
                let tolerance = if dtype.starts_with('q') { 2e-3 } else { 1e-6 };
                for simd in &paths[1..] {
                    let got = nll(model, &text, dtype, chunk, &simd.to_string());
                    assert!(
                        (got - portable).abs() < tolerance,
                        "{} {dtype} chunk {chunk}: {simd} {got} vs portable {portable}",
                        model.display()
                    );
                }
            }
        }
    }
}

#[test]
fn a_path_that_cannot_run_is_refused_with_the_reason() {
    let run = |simd: &str| {
        common::bin()
            .args(["generate", "--model"])
            .arg(common::tiny())
            .args(["--prompt", "hi", "--max-tokens", "1"])
            .env("RWKV_CHAT_SIMD", simd)
            .output()
            .unwrap()
    };
    common::assert_user_error(&run("sse9"), &["RWKV_CHAT_SIMD=`sse9` is not a SIMD path"]);
    let supported = Simd::supported();
    let has: Vec<String> = supported.iter().map(Simd::to_string).collect();
    let lacks = format!("this CPU cannot run it (it has: {})", has.join(", "));
    for path in [Simd::Portable, Simd::Avx2, Simd::Avx512] {
        let out = run(&path.to_string());
        if supported.contains(&path) {
            assert!(out.status.success(), "{path}: {}", stderr(&out));
        } else {
            common::assert_user_error(&out, &[&format!("RWKV_CHAT_SIMD={path}: {lacks}")]);
        }
    }
}

/// `RWKV_CHAT_PREFETCH` is checked before anything loads, is taken (`bench` reports the
/// distance; only the AVX-512 float dots use it) and, being a prefetch, changes no result.
#[test]
fn a_prefetch_distance_is_checked_reported_and_changes_nothing() {
    let bad = common::bin()
        .args(["bench", "--model"])
        .arg(common::tiny())
        .env("RWKV_CHAT_PREFETCH", "100")
        .output()
        .unwrap();
    common::assert_user_error(
        &bad,
        &["RWKV_CHAT_PREFETCH=`100` is not a prefetch distance; expected a number of bytes"],
    );
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("text.txt");
    std::fs::write(&text, "Prefetching moves no bits of any result. ".repeat(4)).unwrap();
    let mut nlls = Vec::new();
    for bytes in ["0", "4096"] {
        let out = common::bin()
            .args(["bench", "--model"])
            .arg(common::tiny())
            .args(["--prefill", "4", "--decode", "2", "--format", "json"])
            .env("RWKV_CHAT_PREFETCH", bytes)
            .output()
            .unwrap();
        assert!(out.status.success(), "{bytes}: {}", stderr(&out));
        let report: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
        assert_eq!(report["float_prefetch_bytes"].to_string(), bytes);
        let out = common::bin()
            .args(["perplexity", "--model"])
            .arg(common::tiny())
            .arg("-f")
            .arg(&text)
            .args(["--chunk-size", "1", "--format", "json"])
            .env("RWKV_CHAT_PREFETCH", bytes)
            .output()
            .unwrap();
        assert!(out.status.success(), "{bytes}: {}", stderr(&out));
        let report: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
        nlls.push(report["nll"].as_f64().unwrap());
    }
    assert_eq!(nlls[0], nlls[1]);
}
