//! `rwkv-chat convert` from the raw `.pth` and the sharded `.bin` fixture: the directory it
//! writes loads and matches the reference outputs.

use crate::common;

use std::path::Path;

use common::{Golden, assert_user_error, max_abs_diff, rwkv_chat, stderr, tiny};
use rwkv_chat::engine::Engine;
use rwkv_chat::model::{LoadOptions, WeightDtype};

fn convert(src: &Path, dst: &Path, dtype: &str) {
    let out = rwkv_chat(&[
        "convert",
        src.to_str().unwrap(),
        dst.to_str().unwrap(),
        "--dtype",
        dtype,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Last-position logits and a greedy continuation of the golden prompt.
fn run(dir: &Path) -> (Vec<f32>, Vec<u32>) {
    let golden = Golden::load();
    let engine = Engine::load(dir, LoadOptions::default(), None).unwrap();
    assert_eq!(
        engine.tokenizer.encode(&golden.prompt).unwrap(),
        golden.input_ids
    );
    let model = &engine.model;
    let mut state = model.new_state();
    let mut logits: Vec<f32> = model
        .forward(&golden.input_ids, &mut state)
        .unwrap()
        .to_vec1()
        .unwrap();
    let last = logits.clone();
    let mut ids = vec![];
    for _ in 0..golden.greedy_ids.len() {
        let id = logits
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i as u32)
            .unwrap();
        ids.push(id);
        logits = model.forward(&[id], &mut state).unwrap().to_vec1().unwrap();
    }
    (last, ids)
}

fn assert_hf_directory(dir: &Path, dtype: candle_core::DType) {
    let names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        ["config.json", "model.safetensors", "tokenizer.json"]
    );
    let tensors =
        candle_core::safetensors::load(dir.join("model.safetensors"), &candle_core::Device::Cpu)
            .unwrap();
    let reference = common::tiny_tensors();
    assert_eq!(tensors.len(), reference.len());
    for (name, t) in &reference {
        let ours = &tensors[name];
        assert_eq!(ours.dims(), t.dims(), "{name}");
        assert_eq!(ours.dtype(), dtype, "{name}");
    }
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["model_type"], "rwkv");
    assert_eq!(config["num_hidden_layers"], 2);
    assert_eq!(config["architectures"][0], "RwkvForCausalLM");
}

/// Converts `src` at f32 into a fresh directory and checks it against the reference outputs.
fn convert_and_check(src: &Path) -> tempfile::TempDir {
    let golden = Golden::load();
    let out = tempfile::tempdir().unwrap();
    let dst = out.path().join("converted");
    convert(src, &dst, "f32");
    assert_hf_directory(&dst, candle_core::DType::F32);
    let (last, ids) = run(&dst);
    let diff = max_abs_diff(&last, &golden.f32s("logits_last"));
    assert!(diff < 1e-4, "last logits differ by {diff}");
    assert_eq!(ids, golden.greedy_ids);
    // Only the finished directory is left: no temporary directory beside it.
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 1);
    out
}

#[test]
fn the_raw_pth_converts_to_a_directory_that_matches_the_reference() {
    let out = convert_and_check(&tiny().join("rwkv4-raw.pth"));
    // The raw file has no tokenizer beside it: the built-in one is written.
    assert_eq!(
        std::fs::read(out.path().join("converted/tokenizer.json")).unwrap(),
        std::fs::read(tiny().join("tokenizer.json")).unwrap()
    );
}

#[test]
fn the_sharded_bin_converts_to_a_directory_that_matches_the_reference() {
    convert_and_check(&tiny().join("pytorch_model.bin.index.json"));
}

/// Measured on this fixture: the f16 file, computed in f32, gives logits identical to the f32
/// file (max difference 0: the fixture's weights were rounded to bf16, and f16 holds every one
/// of them exactly); tolerance 1e-3, for the rounding real f32 weights would see. Loaded with
/// `--dtype f16` (matrix products in f16) the max difference is 8.5e-3; tolerance 2e-2.
#[test]
fn an_f16_conversion_stays_close_to_f32() {
    const TOLERANCE: f32 = 1e-3;
    let golden = Golden::load();
    let out = tempfile::tempdir().unwrap();
    convert(
        &tiny().join("rwkv4-raw.pth"),
        &out.path().join("f32"),
        "f32",
    );
    convert(
        &tiny().join("rwkv4-raw.pth"),
        &out.path().join("f16"),
        "f16",
    );
    assert_hf_directory(&out.path().join("f16"), candle_core::DType::F16);
    let size = |d: &str| {
        std::fs::metadata(out.path().join(d).join("model.safetensors"))
            .unwrap()
            .len()
    };
    assert!(size("f16") < size("f32") / 100 * 51);
    let (f32_logits, _) = run(&out.path().join("f32"));
    let (f16_logits, f16_ids) = run(&out.path().join("f16"));
    let diff = max_abs_diff(&f16_logits, &f32_logits);
    eprintln!("f16 vs f32 max logit difference: {diff:e}");
    assert!(diff <= TOLERANCE, "f16 logits differ by {diff}");
    assert_eq!(f16_ids, golden.greedy_ids);
    // Loaded as f16 in memory too, it still picks the same tokens.
    let engine = Engine::load(
        &out.path().join("f16"),
        LoadOptions {
            dtype: WeightDtype::F16,
            ..LoadOptions::default()
        },
        None,
    )
    .unwrap();
    let mut state = engine.model.new_state();
    let logits: Vec<f32> = engine
        .model
        .forward(&golden.input_ids, &mut state)
        .unwrap()
        .to_vec1()
        .unwrap();
    let diff = max_abs_diff(&logits, &f32_logits);
    eprintln!("f16 in memory vs f32 max logit difference: {diff:e}");
    assert!(diff < 2e-2, "f16 compute differs by {diff}");
}

#[test]
fn an_existing_destination_is_refused() {
    let out = tempfile::tempdir().unwrap();
    let res = rwkv_chat(&[
        "convert",
        tiny().join("rwkv4-raw.pth").to_str().unwrap(),
        out.path().to_str().unwrap(),
    ]);
    assert_user_error(&res, &[out.path().to_str().unwrap(), "already exists"]);
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0);
}

#[test]
fn a_bad_source_is_refused_without_leaving_anything() {
    let out = tempfile::tempdir().unwrap();
    let src = out.path().join("broken.pth");
    std::fs::write(&src, b"PK not really a zip").unwrap();
    let dst = out.path().join("dst");
    let res = rwkv_chat(&["convert", src.to_str().unwrap(), dst.to_str().unwrap()]);
    assert_user_error(&res, &["broken.pth", "not a valid PyTorch zip file"]);
    assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 1);
}
