//! Helpers shared by the integration tests: fixture paths, golden outputs, running the binary.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{Device, Tensor};
use sha2::{Digest, Sha256};

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn tiny() -> PathBuf {
    fixture("tiny-rwkv4")
}

pub struct Golden {
    pub input_ids: Vec<u32>,
    pub greedy_ids: Vec<u32>,
    pub prompt: String,
    pub tensors: HashMap<String, Tensor>,
}

impl Golden {
    pub fn load() -> Self {
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(tiny().join("golden.json")).unwrap()).unwrap();
        let ids = |key: &str| -> Vec<u32> {
            json[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect()
        };
        let tensors =
            candle_core::safetensors::load(tiny().join("golden.safetensors"), &Device::Cpu)
                .unwrap();
        Self {
            input_ids: ids("input_ids"),
            greedy_ids: ids("greedy_ids"),
            prompt: json["prompt"].as_str().unwrap().to_owned(),
            tensors,
        }
    }

    pub fn f32s(&self, name: &str) -> Vec<f32> {
        self.tensors[name]
            .flatten_all()
            .unwrap()
            .to_dtype(candle_core::DType::F32)
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    pub fn i64s(&self, name: &str) -> Vec<i64> {
        self.tensors[name].flatten_all().unwrap().to_vec1().unwrap()
    }

    /// A `[layers, hidden]` state tensor as rows.
    pub fn rows(&self, name: &str) -> Vec<Vec<f32>> {
        self.tensors[name]
            .to_dtype(candle_core::DType::F32)
            .unwrap()
            .to_vec2()
            .unwrap()
    }
}

/// `f` run on a fresh rayon pool of `threads` threads.
pub fn on_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// A golden's int64 ids as token ids.
pub fn ids(t: &candle_core::Tensor) -> Vec<u32> {
    t.to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|i| i as u32)
        .collect()
}

/// Any tensor's values, flattened.
pub fn f32s(t: &candle_core::Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// The first index of the largest value.
pub fn argmax(v: &[f32]) -> u32 {
    v.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &x)| {
            if x > best.1 { (i, x) } else { best }
        })
        .0 as u32
}

/// The real binary with a backtrace-friendly environment, so a panic or an `Err` from `main`
/// would show in stderr, and no data dir from the environment.
pub fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rwkv-chat"));
    cmd.env("RUST_BACKTRACE", "1")
        .env_remove("RUST_LOG")
        .env_remove("RWKV_CHAT_DATA_DIR");
    cmd
}

pub fn rwkv_chat(args: &[&str]) -> Output {
    bin().args(args).output().expect("run rwkv-chat")
}

/// `rwkv-chat chat`, greedy, one JSON line per reply, sessions and config under `data`.
pub fn chat_command(data: &Path, model: &Path, session: &str, max_tokens: usize) -> Command {
    let mut cmd = bin();
    cmd.arg("chat")
        .arg("--model")
        .arg(model)
        .args([
            "--session",
            session,
            "--temperature",
            "0",
            "--format",
            "jsonl",
        ])
        .args(["--max-tokens", &max_tokens.to_string(), "--data-dir"])
        .arg(data)
        .env("RWKV_CHAT_CONFIG_DIR", data.join("config"));
    cmd
}

/// Runs `cmd` with `lines` on its stdin and waits for it.
pub fn feed_lines(cmd: &mut Command, lines: &[&str]) -> Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run rwkv-chat");
    let mut stdin = child.stdin.take().expect("piped stdin");
    for line in lines {
        // A run that fails early (a bad flag) closes its stdin before reading it.
        let _ = writeln!(stdin, "{line}");
    }
    drop(stdin);
    child.wait_with_output().expect("wait for rwkv-chat")
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A failed run with one clean message: exit status 1, no panic, no backtrace.
pub fn assert_user_error(out: &Output, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    assert!(err.starts_with("error: "), "stderr: {err}");
    for needle in needles {
        assert!(err.contains(needle), "`{needle}` not in: {err}");
    }
    for bad in ["panicked", "backtrace", "Backtrace", "stack backtrace"] {
        assert!(!err.contains(bad), "`{bad}` in: {err}");
    }
}

/// All tensors of the tiny model under their Hugging Face names, for writing variants.
pub fn tiny_tensors() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(tiny().join("model.safetensors"), &Device::Cpu).unwrap()
}

pub fn write_model(dir: &Path, tensors: &HashMap<String, Tensor>) {
    std::fs::create_dir_all(dir).unwrap();
    candle_core::safetensors::save(tensors, dir.join("model.safetensors")).unwrap();
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The git blob id of `bytes` (sha1 of `blob <len>\0` and the bytes), as git itself computes
/// it: what the hub sends as `oid`, and as the `ETag` of a file not in LFS.
pub fn git_oid(bytes: &[u8]) -> String {
    let mut child = Command::new("git")
        .args(["hash-object", "--stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("git hash-object");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// One file as the hub's `paths-info` and `tree` endpoints describe it. The shape is the
/// hub's, as huggingface_hub's `RepoFile.__init__` (hf_api.py) reads it: `type`, `oid` (the git
/// blob id; for an LFS file the pointer's), `size`, `path`, and for LFS files
/// `lfs: {oid: <sha256>, size, pointerSize}`. On the hub `.gitattributes` decides what is in
/// LFS; the caller says.
pub fn path_entry(path: &str, bytes: &[u8], lfs: bool) -> serde_json::Value {
    let mut entry = serde_json::json!({ "type": "file", "path": path, "size": bytes.len() });
    if lfs {
        let pointer = format!(
            "version https://git-lfs.github.com/spec/v1\noid sha256:{}\nsize {}\n",
            sha256_hex(bytes),
            bytes.len()
        );
        entry["oid"] = git_oid(pointer.as_bytes()).into();
        entry["lfs"] = serde_json::json!({
            "oid": sha256_hex(bytes), "size": bytes.len(), "pointerSize": pointer.len(),
        });
    } else {
        entry["oid"] = git_oid(bytes).into();
    }
    entry
}

/// The paths a `paths-info` request asks for: a JSON body (`{"paths": [...]}`, as hf-hub and
/// huggingface.js send it) or a form (`paths=a&paths=b`, as huggingface_hub sends it).
pub fn asked_paths(body: &[u8]) -> Vec<String> {
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) {
        return json["paths"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p.as_str().map(str::to_owned))
            .collect();
    }
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|kv| kv.strip_prefix("paths="))
        .map(percent_decode)
        .collect()
}

pub fn percent_decode(s: &str) -> String {
    let bytes = s.replace('+', " ").into_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
            if let Ok(b) = u8::from_str_radix(hex, 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
