//! Every bad model input a user can give gets one clear message naming the file, exit status
//! 1, and no panic or backtrace. Bad copies are made in temp dirs.

use crate::common;

use std::path::Path;

use candle_core::Tensor;
use common::{assert_user_error, rwkv_chat, tiny, tiny_tensors, write_model};

fn generate(model: &Path) -> std::process::Output {
    rwkv_chat(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--prompt",
        "hi",
        "--max-tokens",
        "2",
    ])
}

fn copy(names: &[&str], dir: &Path) {
    for name in names {
        std::fs::copy(tiny().join(name), dir.join(name)).unwrap();
    }
}

#[test]
fn a_path_that_does_not_exist() {
    let out = generate(Path::new("/nonexistent/model-dir"));
    assert_user_error(
        &out,
        &["/nonexistent/model-dir", "no such file or directory"],
    );
}

#[test]
fn a_directory_without_weights() {
    let dir = tempfile::tempdir().unwrap();
    copy(&["config.json", "tokenizer.json"], dir.path());
    let out = generate(dir.path());
    assert_user_error(
        &out,
        &[dir.path().to_str().unwrap(), "no model weights found"],
    );
}

#[test]
fn a_config_that_disagrees_with_the_weights() {
    let dir = tempfile::tempdir().unwrap();
    copy(&["model.safetensors"], dir.path());
    let config = std::fs::read_to_string(tiny().join("config.json")).unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        config.replace("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 24"),
    )
    .unwrap();
    let out = generate(dir.path());
    assert_user_error(
        &out,
        &[
            "config.json",
            "num_hidden_layers is 24",
            "model.safetensors have 2",
        ],
    );
}

#[test]
fn a_config_that_is_not_json() {
    let dir = tempfile::tempdir().unwrap();
    copy(&["model.safetensors"], dir.path());
    std::fs::write(dir.path().join("config.json"), "{\"hidden_size\": 16,").unwrap();
    let out = generate(dir.path());
    assert_user_error(&out, &["config.json", "invalid config.json"]);
}

#[test]
fn a_missing_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let mut tensors = tiny_tensors();
    tensors
        .remove("rwkv.blocks.1.feed_forward.value.weight")
        .unwrap();
    write_model(dir.path(), &tensors);
    let out = generate(dir.path());
    assert_user_error(
        &out,
        &[
            "model.safetensors",
            "`rwkv.blocks.1.feed_forward.value.weight` is missing",
        ],
    );
}

#[test]
fn a_tensor_of_the_wrong_shape() {
    let dir = tempfile::tempdir().unwrap();
    let mut tensors = tiny_tensors();
    let name = "rwkv.blocks.0.attention.output.weight";
    tensors.insert(
        name.into(),
        Tensor::zeros((16, 8), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap(),
    );
    write_model(dir.path(), &tensors);
    let out = generate(dir.path());
    assert_user_error(
        &out,
        &["model.safetensors", name, "[16, 8]", "expected [16, 16]"],
    );
}

fn truncated(name: &str, keep: f64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(tiny().join(name)).unwrap();
    std::fs::write(
        dir.path().join(name),
        &bytes[..(bytes.len() as f64 * keep) as usize],
    )
    .unwrap();
    dir
}

#[test]
fn a_truncated_safetensors_file() {
    let dir = truncated("model.safetensors", 0.6);
    let out = generate(&dir.path().join("model.safetensors"));
    assert_user_error(
        &out,
        &[
            "model.safetensors",
            "not a valid safetensors file",
            "truncated or corrupt",
        ],
    );
}

#[test]
fn a_truncated_pytorch_file() {
    let dir = truncated("rwkv4-raw.pth", 0.6);
    let out = generate(&dir.path().join("rwkv4-raw.pth"));
    assert_user_error(
        &out,
        &[
            "rwkv4-raw.pth",
            "not a valid PyTorch zip file",
            "truncated or corrupt",
        ],
    );
}

#[test]
fn a_corrupt_safetensors_header() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(tiny().join("model.safetensors")).unwrap();
    bytes[10..40].fill(b'#');
    let path = dir.path().join("model.safetensors");
    std::fs::write(&path, bytes).unwrap();
    let out = generate(&path);
    assert_user_error(&out, &["model.safetensors", "not a valid safetensors file"]);
}

#[test]
fn a_shard_index_naming_a_missing_shard() {
    let dir = tempfile::tempdir().unwrap();
    copy(
        &[
            "pytorch_model.bin.index.json",
            "pytorch_model-00001-of-00002.bin",
            "config.json",
        ],
        dir.path(),
    );
    let out = generate(dir.path());
    assert_user_error(
        &out,
        &[
            "pytorch_model.bin.index.json",
            "pytorch_model-00002-of-00002.bin",
            "does not exist",
        ],
    );
}

#[test]
fn a_shard_index_pointing_outside_the_model_directory() {
    let dir = tempfile::tempdir().unwrap();
    let index = std::fs::read_to_string(tiny().join("pytorch_model.bin.index.json")).unwrap();
    let index = index.replace("pytorch_model-00002-of-00002.bin", "../../etc/passwd");
    std::fs::write(dir.path().join("pytorch_model.bin.index.json"), index).unwrap();
    copy(&["pytorch_model-00001-of-00002.bin"], dir.path());
    let out = generate(dir.path());
    assert_user_error(&out, &["../../etc/passwd", "outside the model directory"]);
}

/// What rwkv-chat does not run is named by what it looks like: an RWKV-8 checkpoint (its ROSA
/// layers give it away) and a transformer.
#[test]
fn checkpoints_it_does_not_run_are_named() {
    let cases = [
        (&["emb.weight", "blocks.0.rosa.emb"][..], "RWKV-8"),
        (
            &[
                "model.embed_tokens.weight",
                "model.layers.0.self_attn.q_proj.weight",
            ],
            "not an RWKV checkpoint",
        ),
    ];
    for (names, message) in cases {
        let dir = tempfile::tempdir().unwrap();
        let t = Tensor::zeros((8, 4), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        let tensors: std::collections::HashMap<String, Tensor> =
            names.iter().map(|n| (n.to_string(), t.clone())).collect();
        let path = dir.path().join("model.safetensors");
        candle_core::safetensors::save(&tensors, &path).unwrap();
        let out = generate(&path);
        assert_user_error(&out, &[message]);
    }
}

/// A World checkpoint with a tensor missing is refused with the tensor's name.
#[test]
fn a_world_checkpoint_with_a_tensor_missing() {
    let src = common::fixture("world/e2e-v7/model.pth");
    let mut tensors = candle_core::pickle::read_all(&src)
        .unwrap()
        .into_iter()
        .collect::<std::collections::HashMap<_, _>>();
    tensors.remove("blocks.1.att.k_k").unwrap();
    let dir = tempfile::tempdir().unwrap();
    candle_core::safetensors::save(&tensors, dir.path().join("model.safetensors")).unwrap();
    let out = generate(dir.path());
    assert_user_error(&out, &["rwkv.blocks.1.attention.k_k", "missing"]);
}

#[test]
fn a_config_of_a_later_version() {
    let dir = tempfile::tempdir().unwrap();
    copy(&["model.safetensors"], dir.path());
    let config = std::fs::read_to_string(tiny().join("config.json")).unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        config.replace("\"model_type\": \"rwkv\"", "\"model_type\": \"rwkv7\""),
    )
    .unwrap();
    let out = generate(dir.path());
    assert_user_error(&out, &["config.json", "RWKV-7"]);
}

#[test]
fn a_file_that_is_no_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.pth");
    std::fs::write(&path, "these are not the weights you are looking for").unwrap();
    let out = generate(&path);
    assert_user_error(&out, &["notes.pth", "not a valid PyTorch zip file"]);
}

#[test]
fn a_tokenizer_too_large_for_the_model() {
    // A model with a 100-token vocabulary, next to the 50277-token NeoX tokenizer.
    let dir = tempfile::tempdir().unwrap();
    let mut tensors = tiny_tensors();
    for name in ["rwkv.embeddings.weight", "head.weight"] {
        let small = tensors[name].narrow(0, 0, 100).unwrap();
        tensors.insert(name.into(), small);
    }
    write_model(dir.path(), &tensors);
    copy(&["tokenizer.json"], dir.path());
    let out = generate(dir.path());
    assert_user_error(&out, &["tokenizer.json", "50277 tokens", "only 100"]);
}

#[test]
fn a_tokenizer_that_does_not_parse() {
    let dir = tempfile::tempdir().unwrap();
    copy(&["model.safetensors", "config.json"], dir.path());
    std::fs::write(dir.path().join("tokenizer.json"), "{\"model\": 3}").unwrap();
    let out = generate(dir.path());
    assert_user_error(&out, &["tokenizer.json", "invalid tokenizer"]);
}

#[test]
fn bad_flags_are_refused_by_name() {
    let model = tiny();
    let model = model.to_str().unwrap();
    let out = rwkv_chat(&[
        "generate", "--model", model, "--prompt", "hi", "--top-p", "0",
    ]);
    assert_user_error(&out, &["top_p"]);
    let out = rwkv_chat(&[
        "generate", "--model", model, "--prompt", "hi", "--device", "cuda",
    ]);
    if !cfg!(feature = "cuda") {
        assert_user_error(&out, &["built without CUDA", "--features cuda"]);
    }
    let out = rwkv_chat(&["generate", "--model", model, "--prompt", ""]);
    assert_user_error(&out, &["the prompt is empty"]);
    let out = rwkv_chat(&["perplexity", "--model", model, "--file", "/nonexistent.txt"]);
    assert_user_error(&out, &["/nonexistent.txt"]);
}
