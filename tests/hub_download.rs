//! Downloads against a mock of the Hugging Face hub on 127.0.0.1, reached through
//! `HF_ENDPOINT`, with `HF_HOME` in a temp dir: the real download code runs, including broken,
//! corrupt, failing and stalled transfers. Nothing here touches the network.

use crate::common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use common::{Golden, stderr, stdout, tiny};
use rwkv_chat::hub::{Hub, HubError, ModelSpec, Progress, ProgressSink};
use sha2::{Digest, Sha256};

const REPO: &str = "test/tiny-rwkv4";
/// The same model as PyTorch `.bin` shards only, as `RWKV/rwkv-raven-1b5` ships.
const BIN_REPO: &str = "test/tiny-rwkv4-bin";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const WEIGHTS: &str = "model.safetensors";
/// Files above this size are served as LFS files, with a sha256, as the hub does.
const LFS_THRESHOLD: usize = 1 << 20;

#[derive(Default)]
struct Behaviour {
    /// Cut the connection after this many body bytes of `WEIGHTS`, this many times.
    cut: Option<(usize, usize)>,
    /// Serve `WEIGHTS` with one byte changed.
    corrupt: bool,
    /// Answer every request with this status.
    status: Option<u16>,
    /// Read requests and never answer.
    stall: bool,
    /// With `cut`: keep the connection open, silent, instead of hanging up.
    go_silent: bool,
    /// Name this commit in the repo info instead of `COMMIT`.
    commit: Option<String>,
}

#[derive(Debug, Clone)]
struct Request {
    method: String,
    path: String,
    range: Option<String>,
    authorization: Option<String>,
}

struct MockHub {
    url: String,
    behaviour: Arc<Mutex<Behaviour>>,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl MockHub {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let behaviour = Arc::new(Mutex::new(Behaviour::default()));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let repos = Arc::new(repos());
        let (b, r) = (behaviour.clone(), requests.clone());
        std::thread::spawn(move || {
            // Stalled connections are kept open here, never answered.
            let mut held = Vec::new();
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                if let Some(kept) = serve(stream, &repos, &b, &r) {
                    held.push(kept);
                }
            }
        });
        Self {
            url,
            behaviour,
            requests,
        }
    }

    fn set(&self, f: impl FnOnce(&mut Behaviour)) {
        f(&mut self.behaviour.lock().unwrap());
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    /// The `Range` headers of the weight-file requests, from the `skip`-th on.
    fn weight_ranges(&self, skip: usize) -> Vec<Option<String>> {
        self.requests()
            .into_iter()
            .filter(|r| r.path.ends_with(&format!("/resolve/{COMMIT}/{WEIGHTS}")))
            .skip(skip)
            .map(|r| r.range)
            .collect()
    }
}

type Files = BTreeMap<String, Vec<u8>>;

fn repos() -> BTreeMap<&'static str, Files> {
    let read = |names: &[&str]| -> Files {
        let mut files: Files = names
            .iter()
            .map(|n| (n.to_string(), std::fs::read(tiny().join(n)).unwrap()))
            .collect();
        files.insert("README.md".into(), b"# tiny RWKV-4 for tests\n".to_vec());
        files
    };
    let shards = [
        "config.json",
        "tokenizer.json",
        "pytorch_model.bin.index.json",
        "pytorch_model-00001-of-00002.bin",
        "pytorch_model-00002-of-00002.bin",
    ];
    let mut all = shards.to_vec();
    all.push(WEIGHTS);
    BTreeMap::from([(REPO, read(&all)), (BIN_REPO, read(&shards))])
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The blob name the cache uses: the sha256 for LFS files, a git-oid-like id otherwise.
fn blob_name(bytes: &[u8]) -> String {
    let sha = sha256_hex(bytes);
    if bytes.len() > LFS_THRESHOLD {
        sha
    } else {
        sha[..40].to_owned()
    }
}

fn serve(
    mut stream: TcpStream,
    repos: &BTreeMap<&'static str, Files>,
    behaviour: &Mutex<Behaviour>,
    requests: &Mutex<Vec<Request>>,
) -> Option<TcpStream> {
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    requests.lock().unwrap().push(Request {
        method: method.clone(),
        path: path.clone(),
        range: headers.get("range").cloned(),
        authorization: headers.get("authorization").cloned(),
    });

    let mut b = behaviour.lock().unwrap();
    if b.stall {
        return Some(stream);
    }
    if let Some(status) = b.status {
        respond(&mut stream, status, &[], b"{\"error\":\"mock failure\"}");
        return None;
    }
    let path = path.split('?').next().unwrap_or_default();
    let found = repos.iter().find(|(repo, _)| {
        let api = format!("/api/models/{repo}");
        path == api
            || path.starts_with(&format!("{api}/"))
            || path.starts_with(&format!("/{repo}/resolve/"))
    });
    let Some((repo, files)) = found else {
        respond(
            &mut stream,
            404,
            &[("x-error-code", "RepoNotFound")],
            b"{\"error\":\"Repository not found\"}",
        );
        return None;
    };
    let api = format!("/api/models/{repo}");
    let resolve = format!("/{repo}/resolve/");
    if path == api
        || path == format!("{api}/revision/main")
        || path == format!("{api}/revision/{COMMIT}")
    {
        let siblings: Vec<_> = files
            .keys()
            .map(|k| serde_json::json!({ "rfilename": k }))
            .collect();
        let sha = b.commit.as_deref().unwrap_or(COMMIT);
        let info = serde_json::json!({ "id": repo, "sha": sha, "siblings": siblings });
        respond(&mut stream, 200, &[], info.to_string().as_bytes());
    } else if path.starts_with(&format!("{api}/revision/")) {
        respond(
            &mut stream,
            404,
            &[("x-error-code", "RevisionNotFound")],
            b"{\"error\":\"Invalid rev id\"}",
        );
    } else if path == format!("{api}/paths-info/{COMMIT}") {
        let asked: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let entries: Vec<_> = asked["paths"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p.as_str())
            .filter_map(|p| files.get(p).map(|bytes| (p, bytes)))
            .map(|(p, bytes)| {
                let mut entry = serde_json::json!({
                    "type": "file", "oid": &blob_name(bytes)[..40], "size": bytes.len(), "path": p,
                });
                if bytes.len() > LFS_THRESHOLD {
                    entry["lfs"] = serde_json::json!({
                        "sha256": sha256_hex(bytes), "size": bytes.len(), "pointerSize": 134,
                    });
                }
                entry
            })
            .collect();
        respond(
            &mut stream,
            200,
            &[],
            serde_json::Value::from(entries).to_string().as_bytes(),
        );
    } else if let Some(rest) = path.strip_prefix(&resolve) {
        let name = rest.split_once('/').map_or("", |(_, f)| f);
        let Some(bytes) = files.get(name) else {
            respond(
                &mut stream,
                404,
                &[("x-error-code", "EntryNotFound")],
                b"{}",
            );
            return None;
        };
        let mut bytes = bytes.clone();
        if name == WEIGHTS && b.corrupt {
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0x55;
        }
        let start: usize = headers
            .get("range")
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.trim_end_matches('-').parse().ok())
            .unwrap_or(0);
        let etag = format!("\"{}\"", blob_name(&bytes));
        let total = bytes.len().to_string();
        let content_range = format!("bytes {start}-{}/{total}", bytes.len() - 1);
        let mut extra = vec![
            ("etag", etag.as_str()),
            ("x-repo-commit", COMMIT),
            ("accept-ranges", "bytes"),
        ];
        let status = if start > 0 {
            extra.push(("content-range", content_range.as_str()));
            206
        } else {
            200
        };
        let body = &bytes[start..];
        let cut = match b.cut {
            Some((after, times)) if name == WEIGHTS && times > 0 => {
                b.cut = Some((after, times - 1));
                Some(after)
            }
            _ => None,
        };
        match cut {
            Some(after) => {
                // Announce the whole body, send part of it, hang up or fall silent.
                write_head(&mut stream, status, &extra, body.len());
                let _ = stream.write_all(&body[..after.min(body.len())]);
                let _ = stream.flush();
                if b.go_silent {
                    return Some(stream);
                }
            }
            // hf-hub's own downloader asks for the headers first.
            None if method == "HEAD" => write_head(&mut stream, status, &extra, body.len()),
            None => respond(&mut stream, status, &extra, body),
        }
    } else {
        respond(&mut stream, 404, &[], b"{}");
    }
    None
}

fn write_head(stream: &mut TcpStream, status: u16, headers: &[(&str, &str)], length: usize) {
    let mut head =
        format!("HTTP/1.1 {status} Mock\r\ncontent-length: {length}\r\nconnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes());
}

fn respond(stream: &mut TcpStream, status: u16, headers: &[(&str, &str)], body: &[u8]) {
    write_head(stream, status, headers, body.len());
    let _ = stream.write_all(body);
    let _ = stream.flush();
}

/// The binary with the hub environment pointed at the mock and a fresh HF_HOME.
struct Env {
    hub: MockHub,
    home: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        Self {
            hub: MockHub::start(),
            home: tempfile::tempdir().unwrap(),
        }
    }

    fn cache(&self) -> PathBuf {
        self.home.path().join("hub")
    }

    fn repo_dir(&self) -> PathBuf {
        self.cache().join("models--test--tiny-rwkv4")
    }

    fn run(&self, args: &[&str], offline: bool) -> Output {
        self.run_with(args, offline, &[])
    }

    fn run_with(&self, args: &[&str], offline: bool, vars: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rwkv-chat"));
        cmd.args(args)
            .env("RUST_BACKTRACE", "1")
            .env("HF_HOME", self.home.path())
            .env("HF_ENDPOINT", &self.hub.url)
            .env("HF_HUB_DOWNLOAD_TIMEOUT", "1")
            .env("RWKV_CHAT_MODELS_DIR", self.home.path().join("models"))
            .env("NO_PROXY", "127.0.0.1");
        for var in [
            "RUST_LOG",
            "HF_TOKEN",
            "HF_TOKEN_PATH",
            "HF_HUB_CACHE",
            "HUGGINGFACE_HUB_CACHE",
            "HF_HUB_OFFLINE",
            "XDG_CACHE_HOME",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "ALL_PROXY",
            "http_proxy",
            "https_proxy",
            "all_proxy",
        ] {
            cmd.env_remove(var);
        }
        if offline {
            cmd.env("HF_HUB_OFFLINE", "1");
        }
        cmd.envs(vars.iter().copied());
        cmd.output().unwrap()
    }

    fn download(&self) -> Output {
        self.run(&["models", "download", REPO], false)
    }

    /// Greedy generation of the golden prompt from the repo id.
    fn generate(&self, offline: bool) -> Output {
        self.generate_from(REPO, offline, &[])
    }

    fn generate_from(&self, repo: &str, offline: bool, extra: &[&str]) -> Output {
        let golden = Golden::load();
        let mut args = vec![
            "generate",
            "--model",
            repo,
            "--temperature",
            "0",
            "--format",
            "jsonl",
            "--max-tokens",
            "16",
            "--prompt",
            &golden.prompt,
        ];
        args.extend(extra);
        self.run(&args, offline)
    }

    /// Offline, so the model can only come from the cache.
    fn generate_offline(&self) -> Output {
        self.generate(true)
    }

    fn assert_golden_offline(&self) {
        assert_golden(&self.generate_offline());
    }

    fn snapshot_weights(&self) -> PathBuf {
        self.repo_dir().join("snapshots").join(COMMIT).join(WEIGHTS)
    }

    fn weights_blob(&self) -> PathBuf {
        let bytes = std::fs::read(tiny().join(WEIGHTS)).unwrap();
        self.repo_dir().join("blobs").join(sha256_hex(&bytes))
    }

    fn partial(&self) -> PathBuf {
        let mut p = self.weights_blob().into_os_string();
        p.push(".incomplete");
        PathBuf::from(p)
    }

    /// The partial file is never taken for a model: offline loading refuses the repo.
    fn assert_not_loadable(&self) {
        assert!(
            !self.snapshot_weights().exists(),
            "weights linked into the snapshot"
        );
        assert!(!self.weights_blob().exists(), "weights blob present");
        let out = self.generate_offline();
        assert_failure(
            &out,
            &[REPO, "not in the local model cache", "HF_HUB_OFFLINE"],
        );
    }
}

/// A successful `generate --format jsonl` run that printed the golden greedy ids.
fn assert_golden(out: &Output) {
    assert!(out.status.success(), "{}", stderr(out));
    let ids: Vec<u32> = stdout(out)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?["id"].as_u64())
        .map(|id| id as u32)
        .collect();
    assert_eq!(ids, Golden::load().greedy_ids);
}

/// A failed run: exit status 1, the last stderr line one `error: ` message with the needles,
/// no panic or backtrace. Progress lines may come before it.
fn assert_failure(out: &Output, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "stderr: {err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(last.starts_with("error: "), "stderr: {err}");
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error: ")).count(),
        1,
        "stderr: {err}"
    );
    for needle in needles {
        assert!(last.contains(needle), "`{needle}` not in: {last}");
    }
    for bad in ["panicked", "backtrace", "Backtrace", "RUST_BACKTRACE"] {
        assert!(!err.contains(bad), "`{bad}` in: {err}");
    }
}

fn is_symlink(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

#[test]
fn a_download_fills_the_cache_and_loads_offline() {
    let env = Env::new();
    let out = env.download();
    assert!(out.status.success(), "{}", stderr(&out));
    let snapshot = env.repo_dir().join("snapshots").join(COMMIT);
    assert_eq!(stdout(&out).trim(), snapshot.to_str().unwrap());
    let progress = stderr(&out);
    assert!(
        progress.contains("model.safetensors") && progress.contains("ETA"),
        "{progress}"
    );
    assert!(progress.contains("/s"), "{progress}");

    // The layout huggingface_hub uses, so Python tools find the files too.
    let main = std::fs::read_to_string(env.repo_dir().join("refs/main")).unwrap();
    assert_eq!(main, COMMIT);
    assert!(is_symlink(&env.snapshot_weights()));
    assert_eq!(
        std::fs::read_link(env.snapshot_weights()).unwrap(),
        Path::new("../../blobs").join(env.weights_blob().file_name().unwrap())
    );
    for name in ["config.json", "tokenizer.json"] {
        assert!(is_symlink(&snapshot.join(name)), "{name}");
    }
    // Sizes and hashes come from the hub's file metadata.
    assert!(
        env.hub
            .requests()
            .iter()
            .any(|r| r.method == "POST" && r.path.ends_with(&format!("/paths-info/{COMMIT}")))
    );
    // One set of weights only: the safetensors, not the .bin shards beside them.
    assert!(!snapshot.join("pytorch_model-00001-of-00002.bin").exists());

    let before = env.hub.requests().len();
    env.assert_golden_offline();
    assert_eq!(
        env.hub.requests().len(),
        before,
        "offline run used the network"
    );

    let out = env.run(&["models", "list"], true);
    assert!(out.status.success(), "{}", stderr(&out));
    let listed = stdout(&out);
    let line = listed
        .lines()
        .find(|l| l.contains(REPO))
        .unwrap_or_default();
    assert!(line.contains("downloaded"), "{listed}");

    let out = env.run(&["models", "remove", REPO], true);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!env.repo_dir().exists());
    assert_failure(&env.generate_offline(), &["models available offline: none"]);
}

#[test]
fn a_cached_model_loads_without_the_network_even_online() {
    let env = Env::new();
    assert!(env.download().status.success());
    env.hub.set(|b| b.status = Some(500));
    let before = env.hub.requests().len();
    assert_golden(&env.generate(false));
    assert_eq!(env.hub.requests().len(), before);
}

#[test]
fn a_broken_transfer_resumes_within_the_run() {
    let env = Env::new();
    env.hub.set(|b| b.cut = Some((1_000_000, 1)));
    let out = env.download();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        env.hub.weight_ranges(0),
        [None, Some("bytes=1000000-".into())]
    );
    env.assert_golden_offline();
}

#[test]
fn an_interrupted_download_resumes_on_the_next_run() {
    let env = Env::new();
    // Every attempt of the first run breaks off after 1 MB.
    env.hub.set(|b| b.cut = Some((1_000_000, 3)));
    let out = env.download();
    assert_failure(
        &out,
        &[
            WEIGHTS,
            "broke off after 3000000 of",
            "run the command again to resume",
        ],
    );
    assert_eq!(std::fs::metadata(env.partial()).unwrap().len(), 3_000_000);
    env.assert_not_loadable();
    let listed = stdout(&env.run(&["models", "list"], true));
    let line = listed
        .lines()
        .find(|l| l.contains(REPO))
        .unwrap_or_default();
    assert!(line.contains("partial (3.0 MB)"), "{listed}");

    let seen = env.hub.weight_ranges(0).len();
    let out = env.download();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(env.hub.weight_ranges(seen), [Some("bytes=3000000-".into())]);
    assert!(!env.partial().exists());
    assert_eq!(
        std::fs::read(env.snapshot_weights()).unwrap(),
        std::fs::read(tiny().join(WEIGHTS)).unwrap()
    );
    env.assert_golden_offline();
}

#[test]
fn a_corrupt_file_is_detected_and_never_used() {
    let env = Env::new();
    env.hub.set(|b| b.corrupt = true);
    let out = env.download();
    assert_failure(
        &out,
        &[
            WEIGHTS,
            REPO,
            "is corrupt",
            "sha256",
            "the download was deleted",
        ],
    );
    assert!(!env.partial().exists());
    env.assert_not_loadable();
    // Loading by repo id online refetches; a good server then gives a good model.
    env.hub.set(|b| b.corrupt = false);
    assert!(env.download().status.success());
    env.assert_golden_offline();
}

#[test]
fn a_missing_repo_or_revision_is_a_clear_404() {
    let env = Env::new();
    let out = env.run(
        &["generate", "-m", "test/no-such-model", "--prompt", "hi"],
        false,
    );
    assert_failure(
        &out,
        &[
            "test/no-such-model",
            "no such file or directory",
            "no model repository",
            &env.hub.url,
        ],
    );
    let out = env.run(
        &["models", "download", &format!("{REPO}@no-such-branch")],
        false,
    );
    assert_failure(&out, &[REPO, "revision `no-such-branch` not found"]);
    assert!(!env.repo_dir().join("snapshots").exists());
}

#[test]
fn a_server_error_is_reported() {
    let env = Env::new();
    env.hub.set(|b| b.status = Some(500));
    let out = env.download();
    assert_failure(
        &out,
        &[REPO, "the hub answered HTTP 500", "try again later"],
    );
    assert!(!env.repo_dir().join("snapshots").exists());
}

/// A hostile hub naming a commit that is a path: refused before anything is written.
#[test]
fn a_commit_id_that_is_a_path_is_refused() {
    let env = Env::new();
    env.hub
        .set(|b| b.commit = Some("../../../../escaped".into()));
    let out = env.download();
    assert_failure(&out, &["`../../../../escaped` is not a commit id"]);
    assert!(!env.repo_dir().join("snapshots").exists());
    assert!(!env.repo_dir().join("blobs").exists());
}

#[test]
fn a_stalled_server_times_out() {
    let env = Env::new();
    env.hub.set(|b| b.stall = true);
    let out = env.download();
    assert_failure(
        &out,
        &[
            REPO,
            &env.hub.url,
            "the server stalled (no data for 1 s)",
            "HF_HUB_DOWNLOAD_TIMEOUT",
        ],
    );
    assert!(!env.repo_dir().join("snapshots").exists());
}

#[test]
fn a_transfer_that_falls_silent_times_out_and_resumes_later() {
    let env = Env::new();
    env.hub.set(|b| {
        b.cut = Some((1_000_000, 3));
        b.go_silent = true;
    });
    let out = env.download();
    assert_failure(
        &out,
        &[
            WEIGHTS,
            "the server stalled (no data for 1 s)",
            "run the command again to resume",
        ],
    );
    assert_eq!(std::fs::metadata(env.partial()).unwrap().len(), 3_000_000);
    env.assert_not_loadable();
    let out = env.download();
    assert!(out.status.success(), "{}", stderr(&out));
    env.assert_golden_offline();
}

#[test]
fn offline_without_the_model_lists_what_is_available() {
    let env = Env::new();
    assert!(env.download().status.success());
    let out = env.run(
        &["generate", "-m", "RWKV/rwkv-raven-1b5", "--prompt", "hi"],
        true,
    );
    assert_failure(
        &out,
        &[
            "RWKV/rwkv-raven-1b5",
            "HF_HUB_OFFLINE is set",
            "models available offline: test/tiny-rwkv4",
        ],
    );
    assert!(env.hub.requests().iter().all(|r| !r.path.contains("raven")));
}

#[test]
fn a_bin_model_is_fetched_in_shards_and_converted_once() {
    let env = Env::new();
    let out = env.run(&["models", "download", BIN_REPO], false);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("converting test/tiny-rwkv4-bin to safetensors once"));
    let snapshot = env
        .cache()
        .join("models--test--tiny-rwkv4-bin/snapshots")
        .join(COMMIT);
    for name in [
        "pytorch_model-00001-of-00002.bin",
        "pytorch_model-00002-of-00002.bin",
        "pytorch_model.bin.index.json",
    ] {
        assert!(is_symlink(&snapshot.join(name)), "{name}");
    }
    let copy = env
        .home
        .path()
        .join("models/.converted")
        .join(format!("models--test--tiny-rwkv4-bin--{COMMIT}"));
    assert_eq!(stdout(&out).trim(), copy.to_str().unwrap());
    assert!(copy.join("model.safetensors").is_file());

    // Later loads use the copy (the shards are not even read); nothing is converted again.
    let shards = [
        "pytorch_model-00001-of-00002.bin",
        "pytorch_model-00002-of-00002.bin",
    ];
    let blob = |name: &str| std::fs::canonicalize(snapshot.join(name)).unwrap();
    for name in shards {
        std::fs::write(blob(name), b"gone").unwrap();
    }
    let out = env.generate_from(BIN_REPO, true, &[]);
    assert_golden(&out);
    assert!(!stderr(&out).contains("converting"), "{}", stderr(&out));
    for name in shards {
        std::fs::copy(tiny().join(name), blob(name)).unwrap();
    }

    // Without conversion the shards load as they are.
    std::fs::remove_dir_all(&copy).unwrap();
    assert_golden(&env.generate_from(BIN_REPO, true, &["--no-convert"]));
    assert!(!copy.exists());

    // Removing the model removes its copy too.
    assert_golden(&env.generate_from(BIN_REPO, true, &[]));
    assert!(copy.exists());
    let out = env.run(&["models", "remove", BIN_REPO], true);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!copy.exists());
    assert_failure(
        &env.generate_from(BIN_REPO, true, &[]),
        &[BIN_REPO, "not in the local model cache"],
    );
}

#[test]
fn hf_token_is_sent_with_every_request() {
    let env = Env::new();
    let out = env.run_with(
        &["models", "download", REPO],
        false,
        &[("HF_TOKEN", "hf_test")],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let requests = env.hub.requests();
    assert!(requests.len() >= 5, "{requests:?}");
    for r in requests {
        assert_eq!(r.authorization.as_deref(), Some("Bearer hf_test"), "{r:?}");
    }
}

/// What the TUI does: fetch on a worker with a sink that forwards progress and can cancel.
#[test]
fn a_library_download_reports_progress_and_can_be_cancelled() {
    struct Sink {
        updates: usize,
        finished: Vec<String>,
        cancel_after: usize,
    }
    impl ProgressSink for Sink {
        fn update(&mut self, p: &Progress) {
            assert!(p.done <= p.total && p.count == 3);
            self.updates += 1;
        }
        fn finished(&mut self, p: &Progress) {
            assert_eq!(p.done, p.total);
            self.finished.push(p.file.clone());
        }
        fn cancelled(&self) -> bool {
            self.updates >= self.cancel_after
        }
    }
    let env = Env::new();
    let mut hub = Hub::from_env();
    hub.endpoint = env.hub.url.clone();
    hub.cache_dir = env.cache();
    hub.offline = false;
    let spec = ModelSpec::parse(REPO).unwrap();
    let mut sink = Sink {
        updates: 0,
        finished: vec![],
        cancel_after: 1,
    };
    let err = hub.fetch(&spec, false, &mut sink).unwrap_err();
    assert!(matches!(err, HubError::Cancelled { .. }), "{err}");
    assert!(sink.finished.is_empty());

    sink.cancel_after = usize::MAX;
    let path = hub.fetch(&spec, false, &mut sink).unwrap();
    assert_eq!(path, env.repo_dir().join("snapshots").join(COMMIT));
    assert_eq!(sink.finished, ["config.json", "tokenizer.json", WEIGHTS]);
    assert!(sink.updates > 3);
}

/// The cache is shared with Python's huggingface_hub both ways; hf-hub, which follows its
/// layout, stands in for it: its scanner reads what rwkv-chat wrote, and a model its own
/// downloader fetched loads here by repo id, offline.
#[test]
fn the_cache_is_shared_with_huggingface_hub_tools() {
    let env = Env::new();
    let hf = |cache: PathBuf| {
        hf_hub::HFClient::builder()
            .client(reqwest::Client::builder().no_proxy().build().unwrap())
            .endpoint(env.hub.url.clone())
            .cache_dir(cache)
            .build_sync()
            .unwrap()
    };
    assert!(env.download().status.success());
    let scan = hf(env.cache()).scan_cache().send().unwrap();
    assert!(scan.warnings.is_empty(), "{:?}", scan.warnings);
    let repo = scan.repos.iter().find(|r| r.repo_id == REPO).unwrap();
    assert_eq!(repo.revisions.len(), 1);
    assert_eq!(repo.revisions[0].commit_hash, COMMIT);
    assert_eq!(repo.revisions[0].refs, ["main"]);
    let mut files: Vec<&str> = repo.revisions[0]
        .files
        .iter()
        .map(|f| f.file_name.as_str())
        .collect();
    files.sort();
    assert_eq!(files, ["config.json", WEIGHTS, "tokenizer.json"]);

    std::fs::remove_dir_all(env.cache()).unwrap();
    let client = hf(env.cache());
    let model = client.model("test", "tiny-rwkv4");
    for name in ["config.json", "tokenizer.json", WEIGHTS] {
        model.download_file().filename(name).send().unwrap();
    }
    env.assert_golden_offline();
}
