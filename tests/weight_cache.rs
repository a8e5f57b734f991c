//! q8/q5/q4 weights kept on disk between loads (`--cache-weights`): a second load reads them and
//! gives the same model; a damaged or stale file is never trusted.

use crate::common;

use std::path::{Path, PathBuf};

use common::{Golden, bin, stderr, tiny};
use rwkv_chat::model::{LoadOptions, Rwkv, WeightDtype};

fn load(model: &Path, dtype: WeightDtype, cache: &Path) -> Rwkv {
    Rwkv::load(
        model,
        LoadOptions {
            dtype,
            weight_cache: Some(cache.to_owned()),
            ..LoadOptions::default()
        },
    )
    .unwrap()
}

fn logits(model: &Rwkv) -> Vec<f32> {
    let golden = Golden::load();
    let mut state = model.new_state();
    model
        .forward_chunk(&golden.input_ids, &mut state, true)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn cache_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

#[test]
fn a_second_load_reads_the_cache_and_gives_the_same_model() {
    for dtype in [WeightDtype::Q8, WeightDtype::Q5, WeightDtype::Q4] {
        let cache = tempfile::tempdir().unwrap();
        let first = load(&tiny(), dtype, cache.path());
        assert!(!first.weights_from_cache(), "{dtype}: nothing cached yet");
        let files = cache_files(cache.path());
        assert_eq!(files.len(), 1, "{dtype}: one cache file, no temporary left");
        assert!(files[0].to_string_lossy().ends_with(&format!(".{dtype}")));

        let second = load(&tiny(), dtype, cache.path());
        assert!(second.weights_from_cache(), "{dtype}: read from the cache");
        assert_eq!(logits(&first), logits(&second), "{dtype}: the same weights");
        assert_eq!(
            cache_files(cache.path()),
            files,
            "{dtype}: not written again"
        );
    }
}

#[test]
fn float_formats_and_loads_without_a_cache_write_nothing() {
    let cache = tempfile::tempdir().unwrap();
    let model = load(&tiny(), WeightDtype::Bf16, cache.path());
    assert!(!model.weights_from_cache());
    assert!(cache_files(cache.path()).is_empty());
}

/// Damage anywhere (a flipped byte in the weights, a cut, a file of another format, of an
/// older layout or of nothing) makes the load quantize afresh and replace the file.
#[test]
fn a_damaged_cache_is_ignored_and_replaced() {
    let cache = tempfile::tempdir().unwrap();
    let fresh = logits(&load(&tiny(), WeightDtype::Q8, cache.path()));
    let file = cache_files(cache.path()).remove(0);
    let good = std::fs::read(&file).unwrap();
    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x40;
    let header = br#"{"dtype":"q8","matrices":[{"name":"head.weight","rows":18446744073709551615,"cols":64}]}"#;
    let mut huge = b"RWKVQNT3".to_vec();
    huge.extend((header.len() as u64).to_le_bytes());
    huge.extend(header);
    huge.extend([0; 4]);
    // The magics of the files that held q4 and q5 (`RWKVQNT1`) or q5 (`RWKVQNT2`) a row at
    // a time: of the same size as today's when the rows come in whole groups.
    let older = |magic: &[u8; 8]| [&magic[..], &good[8..]].concat();
    let damaged: [(&str, Vec<u8>); 8] = [
        ("a flipped byte", flipped),
        (
            "a file of the layout before q4's groups",
            older(b"RWKVQNT1"),
        ),
        (
            "a file of the layout before q5's groups",
            older(b"RWKVQNT2"),
        ),
        ("a header with sizes that overflow", huge),
        ("cut short", good[..good.len() - 100].to_vec()),
        ("only the magic", good[..8].to_vec()),
        ("empty", vec![]),
        (
            "not a cache",
            b"hello, world, this is not a cache file at all".to_vec(),
        ),
    ];
    for (what, bytes) in damaged {
        std::fs::write(&file, bytes).unwrap();
        let model = load(&tiny(), WeightDtype::Q8, cache.path());
        assert!(!model.weights_from_cache(), "{what}: not trusted");
        assert_eq!(logits(&model), fresh, "{what}: quantized afresh");
        assert_eq!(std::fs::read(&file).unwrap(), good, "{what}: replaced");
    }
}

/// The file is named by the checkpoint's files, sizes and times: a changed checkpoint and the
/// other formats each get their own.
#[test]
fn another_checkpoint_or_format_gets_its_own_file() {
    let cache = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    for name in ["config.json", "model.safetensors"] {
        std::fs::copy(tiny().join(name), dir.path().join(name)).unwrap();
    }
    for dtype in [WeightDtype::Q8, WeightDtype::Q5, WeightDtype::Q4] {
        load(dir.path(), dtype, cache.path());
    }
    assert_eq!(cache_files(cache.path()).len(), 3);

    // The same bytes written again: a new modification time, so a new file.
    let weights = dir.path().join("model.safetensors");
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&weights, std::fs::read(&weights).unwrap()).unwrap();
    let model = load(dir.path(), WeightDtype::Q8, cache.path());
    assert!(!model.weights_from_cache());
    assert_eq!(cache_files(cache.path()).len(), 4);
}

/// A sound file of one format under another's name is refused and replaced. (q5's and q4's
/// files differ in size, so the size check refuses them before the header's dtype is read;
/// this holds the outcome, whichever check catches it.)
#[test]
fn a_file_of_another_format_is_not_read_as_this_one() {
    let cache = tempfile::tempdir().unwrap();
    for (written, asked) in [
        (WeightDtype::Q5, WeightDtype::Q4),
        (WeightDtype::Q4, WeightDtype::Q5),
    ] {
        load(&tiny(), written, cache.path());
        let fresh = logits(&load(&tiny(), asked, cache.path()));
        let file = |dtype: WeightDtype| {
            let name = format!(".{dtype}");
            let files = cache_files(cache.path());
            files
                .into_iter()
                .find(|f| f.to_string_lossy().ends_with(&name))
                .unwrap()
        };
        let good = std::fs::read(file(asked)).unwrap();
        std::fs::copy(file(written), file(asked)).unwrap();
        let model = load(&tiny(), asked, cache.path());
        assert!(!model.weights_from_cache(), "{written} read as {asked}");
        assert_eq!(logits(&model), fresh, "{asked}: quantized afresh");
        assert_eq!(
            std::fs::read(file(asked)).unwrap(),
            good,
            "{asked}: replaced"
        );
    }
}

#[test]
fn the_cli_flag_caches_under_the_data_dir_and_warns_about_a_bad_file() {
    let data = tempfile::tempdir().unwrap();
    let generate = || {
        bin()
            .env("RWKV_CHAT_DATA_DIR", data.path())
            .args(["generate", "--model"])
            .arg(tiny())
            .args([
                "--dtype",
                "q4",
                "--cache-weights",
                "--prompt",
                "Hello",
                "--max-tokens",
                "3",
                "--temperature",
                "0",
            ])
            .output()
            .unwrap()
    };
    let first = generate();
    assert!(first.status.success(), "{}", stderr(&first));
    let files = cache_files(&data.path().join("quantized"));
    assert_eq!(files.len(), 1);

    std::fs::write(&files[0], b"RWKVQNT3 and then nonsense").unwrap();
    let second = generate();
    assert!(second.status.success(), "{}", stderr(&second));
    assert!(
        stderr(&second).contains("ignoring weight cache"),
        "{}",
        stderr(&second)
    );
    assert_eq!(first.stdout, second.stdout, "the same text either way");
}

#[test]
fn bench_times_a_load_from_the_cache() {
    let data = tempfile::tempdir().unwrap();
    let bench = || {
        let out = bin()
            .env("RWKV_CHAT_DATA_DIR", data.path())
            .args(["bench", "--model"])
            .arg(tiny())
            .args(["--dtype", "q8", "--cache-weights", "--prefill", "4"])
            .args(["--decode", "1", "--format", "json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        report["weights_from_cache"].as_bool().unwrap()
    };
    assert!(!bench(), "the first load quantizes");
    assert!(bench(), "the second reads the cache");
}

/// A cache that cannot be written costs only time: the load succeeds and says why.
#[test]
fn an_unwritable_cache_still_loads_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let blocked = dir.path().join("not-a-dir");
    std::fs::write(&blocked, b"a file where the cache dir should be").unwrap();
    let model = load(&tiny(), WeightDtype::Q4, &blocked);
    assert!(!model.weights_from_cache());
    let fresh = Rwkv::load(
        &tiny(),
        LoadOptions {
            dtype: WeightDtype::Q4,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    assert_eq!(logits(&model), logits(&fresh));

    let out = bin()
        .env("RWKV_CHAT_DATA_DIR", &blocked)
        .args(["generate", "--model"])
        .arg(tiny())
        .args(["--dtype", "q4", "--cache-weights", "--prompt", "Hi"])
        .args(["--max-tokens", "2", "--temperature", "0"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("could not write weight cache"),
        "{}",
        stderr(&out)
    );
}
