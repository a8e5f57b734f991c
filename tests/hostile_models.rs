//! Model files crafted to attack the loader: headers that lie about sizes, pickles that name
//! code to run or declare tensors larger than their data, configs with absurd sizes. Each is
//! refused with one clear message naming the file, through the real binary (so an abort from
//! a huge allocation would fail the test too), and nothing in a pickle is ever executed.

use crate::common;

use std::io::Write;
use std::path::{Path, PathBuf};

use common::{assert_user_error, rwkv_chat, tiny};

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

/// Hand-assembled pickle opcodes (protocol 2), the way `torch.save` writes a state dict.
#[derive(Default)]
struct Pickle(Vec<u8>);

impl Pickle {
    fn op(mut self, bytes: &[u8]) -> Self {
        self.0.extend_from_slice(bytes);
        self
    }
    fn global(self, module: &str, name: &str) -> Self {
        self.op(format!("c{module}\n{name}\n").as_bytes())
    }
    fn unicode(self, s: &str) -> Self {
        let len = (s.len() as u32).to_le_bytes();
        self.op(b"X").op(&len).op(s.as_bytes())
    }
    fn int(self, i: i32) -> Self {
        self.op(b"J").op(&i.to_le_bytes())
    }
    fn ints(self, values: &[i32]) -> Self {
        values.iter().fold(self.op(b"("), |p, &v| p.int(v)).op(b"t")
    }
    /// `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict())`
    fn tensor(self, key: &str, storage_len: i32, dims: &[i32]) -> Self {
        let strides: Vec<i32> = (0..dims.len())
            .map(|i| {
                dims[i + 1..]
                    .iter()
                    .fold(1, |a: i32, &d| a.saturating_mul(d))
            })
            .collect();
        self.global("torch._utils", "_rebuild_tensor_v2")
            .op(b"((")
            .unicode("storage")
            .global("torch", "FloatStorage")
            .unicode(key)
            .unicode("cpu")
            .int(storage_len)
            .op(b"tQ")
            .int(0)
            .ints(dims)
            .ints(&strides)
            .op(b"\x89")
            .global("collections", "OrderedDict")
            .op(b")Rt")
            .op(b"R")
    }
    fn dict(self) -> Self {
        self.op(b"\x80\x02}(")
    }
    fn end_dict(self) -> Self {
        self.op(b"u.")
    }
}

/// A PyTorch zip archive (`archive/data.pkl` and `archive/data/<key>` entries), stored.
fn write_pth(dir: &Path, pickle: &[u8], storages: &[(&str, Vec<u8>)]) -> PathBuf {
    let path = dir.join("model.pth");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", options).unwrap();
    zip.write_all(pickle).unwrap();
    for (key, bytes) in storages {
        zip.start_file(format!("archive/data/{key}"), options)
            .unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
    path
}

#[test]
fn a_handmade_pickle_is_read_like_torch_save_output() {
    // The builder itself is right: a well-formed tiny tensor loads as far as the model check.
    let dir = tempfile::tempdir().unwrap();
    let pickle = Pickle::default()
        .dict()
        .unicode("emb.weight")
        .tensor("0", 4, &[2, 2])
        .end_dict();
    let path = write_pth(dir.path(), &pickle.0, &[("0", vec![0; 16])]);
    let out = generate(&path);
    assert_user_error(
        &out,
        &["model.pth", "tensor `rwkv.blocks.0.ln1.weight` is missing"],
    );
}

#[test]
fn a_pickle_tensor_larger_than_its_stored_data_is_refused_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    // 2^20 x 2^20 f32 would be 4 TiB; 16 bytes are stored.
    let pickle = Pickle::default()
        .dict()
        .unicode("emb.weight")
        .tensor("0", 4, &[1 << 20, 1 << 20])
        .end_dict();
    let path = write_pth(dir.path(), &pickle.0, &[("0", vec![0; 16])]);
    let out = generate(&path);
    assert_user_error(
        &out,
        &[
            "model.pth",
            "tensor `emb.weight` declares shape [1048576, 1048576]",
            "more than the 16 bytes stored for it",
        ],
    );

    // A shape whose size overflows.
    let pickle = Pickle::default()
        .dict()
        .unicode("emb.weight")
        .tensor("0", 4, &[i32::MAX, i32::MAX, i32::MAX])
        .end_dict();
    let path = write_pth(dir.path(), &pickle.0, &[("0", vec![0; 16])]);
    let out = generate(&path);
    assert_user_error(&out, &["model.pth", "an overflowing size"]);
}

#[test]
fn a_pickle_naming_code_to_run_runs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("pwned");
    let command = format!("touch {}", marker.display());
    // `os.system("touch ...")` as the whole pickle, and as the value of a state dict entry.
    let alone = Pickle::default()
        .op(b"\x80\x02")
        .global("os", "system")
        .unicode(&command)
        .op(b"\x85R.");
    let inside = Pickle::default()
        .dict()
        .unicode("emb.weight")
        .global("os", "system")
        .unicode(&command)
        .op(b"\x85R")
        .end_dict();
    for pickle in [alone, inside] {
        let path = write_pth(dir.path(), &pickle.0, &[]);
        let out = generate(&path);
        assert_user_error(&out, &["model.pth", "not an RWKV checkpoint"]);
        assert!(!marker.exists(), "the pickle ran a command");
    }
}

#[test]
fn a_pickle_with_an_unknown_opcode_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_pth(dir.path(), b"\x80\x02\xfe.", &[]);
    let out = generate(&path);
    assert_user_error(
        &out,
        &[
            "model.pth",
            "not a valid PyTorch zip file",
            "data.pkl",
            "op-code",
        ],
    );
}

#[test]
fn pickle_tensor_records_missing_parts_are_refused_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let short_rebuild = Pickle::default()
        .dict()
        .unicode("emb.weight")
        .global("torch._utils", "_rebuild_tensor_v2")
        .op(b"(")
        .int(0)
        .op(b"tR")
        .end_dict();
    let short_storage = Pickle::default()
        .dict()
        .unicode("emb.weight")
        .global("torch._utils", "_rebuild_tensor_v2")
        .op(b"((")
        .unicode("storage")
        .op(b"tQ")
        .int(0)
        .ints(&[2])
        .ints(&[1])
        .op(b"tR")
        .end_dict();
    let short_typed = Pickle::default()
        .dict()
        .unicode("emb.weight")
        .global("torch._tensor", "_rebuild_from_type_v2")
        .op(b"(")
        .int(0)
        .op(b"tR")
        .end_dict();
    let negative_offset = Pickle::default()
        .dict()
        .unicode("emb.weight")
        .global("torch._utils", "_rebuild_tensor_v2")
        .op(b"((")
        .unicode("storage")
        .global("torch", "FloatStorage")
        .unicode("0")
        .unicode("cpu")
        .int(4)
        .op(b"tQ")
        .int(-1)
        .ints(&[2])
        .ints(&[1])
        .op(b"\x89")
        .op(b"tR")
        .end_dict();
    for pickle in [short_rebuild, short_storage, short_typed, negative_offset] {
        let path = write_pth(dir.path(), &pickle.0, &[("0", vec![0; 16])]);
        let out = generate(&path);
        assert_user_error(
            &out,
            &[
                "model.pth",
                "the record of tensor",
                "emb.weight",
                "is malformed",
            ],
        );
    }
}

fn write_safetensors(dir: &Path, header_len: u64, header: &str, data: usize) -> PathBuf {
    let path = dir.join("model.safetensors");
    let mut bytes = header_len.to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.resize(bytes.len() + data, 0);
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn a_safetensors_header_claiming_a_huge_length_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    for claimed in [u64::MAX, 1 << 40, 200 << 20] {
        let path = write_safetensors(dir.path(), claimed, "{}", 0);
        let out = generate(&path);
        assert_user_error(&out, &["model.safetensors", "not a valid safetensors file"]);
    }
}

#[test]
fn a_safetensors_header_lying_about_offsets_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let lies = [
        // Data far past the end of the file.
        r#"{"rwkv.embeddings.weight":{"dtype":"F32","shape":[1000000,1000000],"data_offsets":[0,4000000000000]}}"#,
        // Offsets that disagree with the shape.
        r#"{"rwkv.embeddings.weight":{"dtype":"F32","shape":[1000,1000],"data_offsets":[0,16]}}"#,
        // Offsets in reverse.
        r#"{"rwkv.embeddings.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[16,0]}}"#,
        // A shape whose size overflows.
        r#"{"rwkv.embeddings.weight":{"dtype":"F32","shape":[18446744073709551615,2],"data_offsets":[0,16]}}"#,
    ];
    for header in lies {
        let path = write_safetensors(dir.path(), header.len() as u64, header, 16);
        let out = generate(&path);
        assert_user_error(&out, &["model.safetensors", "not a valid safetensors file"]);
    }
}

#[test]
fn a_config_with_absurd_sizes_is_refused_against_the_weights() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        tiny().join("model.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    let config = std::fs::read_to_string(tiny().join("config.json")).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&config).unwrap();
    for (field, value) in [
        ("hidden_size", 1_000_000_000_000u64),
        ("num_hidden_layers", 1 << 40),
        ("vocab_size", u64::MAX),
        ("intermediate_size", 1 << 50),
    ] {
        let mut bad = config.clone();
        bad[field] = value.into();
        std::fs::write(dir.path().join("config.json"), bad.to_string()).unwrap();
        let out = generate(dir.path());
        assert_user_error(&out, &["config.json", field]);
    }
    config["hidden_size"] = (-1).into();
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    let out = generate(dir.path());
    assert_user_error(&out, &["config.json", "invalid config.json"]);
}

#[test]
fn a_shard_index_with_an_absolute_path_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let index = std::fs::read_to_string(tiny().join("pytorch_model.bin.index.json")).unwrap();
    let index = index.replace("pytorch_model-00002-of-00002.bin", "/etc/passwd");
    std::fs::write(dir.path().join("pytorch_model.bin.index.json"), index).unwrap();
    std::fs::copy(
        tiny().join("pytorch_model-00001-of-00002.bin"),
        dir.path().join("pytorch_model-00001-of-00002.bin"),
    )
    .unwrap();
    let out = generate(dir.path());
    assert_user_error(&out, &["/etc/passwd", "outside the model directory"]);
}

/// A tokenizer whose ids lie beyond the model's embedding (or anywhere absurd) is refused at
/// load, naming it, instead of failing at the first such token or sizing a table by the id.
#[test]
fn a_tokenizer_with_ids_beyond_the_model_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["config.json", "model.safetensors"] {
        std::fs::copy(tiny().join(name), dir.path().join(name)).unwrap();
    }
    let text = std::fs::read_to_string(tiny().join("tokenizer.json")).unwrap();
    let tokenizer: serde_json::Value = serde_json::from_str(&text).unwrap();
    for (id, expected) in [
        (60_000u64, "this tokenizer belongs to another model"),
        (4_000_000_000, "token id 4000000000 is far beyond"),
    ] {
        let mut bad = tokenizer.clone();
        bad["model"]["vocab"]["hi"] = id.into();
        std::fs::write(dir.path().join("tokenizer.json"), bad.to_string()).unwrap();
        let out = generate(dir.path());
        assert_user_error(&out, &["tokenizer.json", expected]);
    }
}

/// Weights beyond what an f16 block scale or minimum spans would quantize to inf and compute
/// NaN: such a matrix is refused by name for the quantized formats, and f32 still loads it.
#[test]
fn weights_too_large_to_quantize_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut tensors = common::tiny_tensors();
    let name = "rwkv.blocks.0.attention.key.weight";
    let mut values: Vec<f32> = tensors[name].flatten_all().unwrap().to_vec1().unwrap();
    // q5 keeps the block's minimum in f16 (beyond 65504 it overflows); q8's scale is the
    // largest magnitude over 127, q4's over 8.
    values[3] = -1e9;
    let shape = tensors[name].shape().clone();
    tensors.insert(
        name.into(),
        candle_core::Tensor::from_vec(values, shape, &candle_core::Device::Cpu).unwrap(),
    );
    let copy = dir.path().join("m");
    common::write_model(&copy, &tensors);
    for file in ["config.json", "tokenizer.json"] {
        std::fs::copy(tiny().join(file), copy.join(file)).unwrap();
    }
    for dtype in ["q8", "q5", "q4"] {
        let out = rwkv_chat(&[
            "generate",
            "--model",
            copy.to_str().unwrap(),
            "--dtype",
            dtype,
            "--prompt",
            "hi",
            "--max-tokens",
            "1",
        ]);
        assert_user_error(
            &out,
            &[
                name,
                &format!("too large for {dtype}"),
                "load the model as f32 or bf16",
            ],
        );
    }
    let out = generate(&copy);
    assert!(out.status.success(), "{}", common::stderr(&out));
}
