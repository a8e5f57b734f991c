//! Fetching a model repository into the Hugging Face cache.
//!
//! The hub is asked what to fetch the way `huggingface_hub` asks it: the commit a revision
//! points at and the files in it (`GET /api/models/{repo}/revision/{rev}`: `sha`, `siblings`),
//! then the size and hashes of the files chosen (`POST /api/models/{repo}/paths-info/{commit}`).
//! Those answers are parsed here; the hf-hub crate is not used: hf-hub 1.0's `BlobLfsInfo`
//! expects `lfs.sha256` and `lfs.pointer_size`, while the hub sends `lfs.oid` and
//! `lfs.pointerSize` (huggingface_hub's `RepoFile` reads `lfs["oid"]` as the sha256), so through
//! hf-hub the sha256 of every LFS file is lost against the real hub: nothing would be verified
//! and blobs would be named by the pointer's git id instead of the sha256 huggingface_hub names
//! them by.
//!
//! The bytes are moved with reqwest: the transfer resumes from the `.incomplete` file with an HTTP
//! range request, hashes the bytes as they arrive, gives up on a silent connection after
//! `HF_HUB_DOWNLOAD_TIMEOUT` seconds, and renames the file into place only when its size and
//! hash match the hub's: the sha256 for LFS files, the git blob id for the small files kept in
//! git (`config.json`, `tokenizer.json`). Redirects are followed here, one hop at a time, so that
//! the token goes only to the endpoint's origin (the hub sends LFS files through a CDN with a
//! 302; reqwest's own redirect handling rebuilds each hop from the first request's headers).

use std::collections::HashSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::header::{AUTHORIZATION, CONTENT_RANGE, CONTENT_TYPE, HeaderMap, LOCATION, RANGE};
use reqwest::{Method, StatusCode, Url};
use serde::Deserialize;
use sha1::Sha1;
use sha2::{Digest, Sha256};

use super::cache::RepoCache;
use super::{Hub, HubError, ModelSpec};
use crate::text::sanitize;

/// Transfers that break off are resumed this many times within one run before giving up.
const ATTEMPTS: usize = 3;

/// Redirects followed for one request; the hub needs one (to its CDN), a CDN sometimes another.
const MAX_REDIRECTS: usize = 10;

/// The largest API answer read (repo info, paths-info). A repository listing of thousands of
/// files is well under 1 MiB; anything this large is not an answer from the hub.
pub const MAX_API_BODY: usize = 8 << 20;

/// Why [`Hub::send`] got no answer: the hub's answer was refused, or the network failed (which
/// the caller reports with what it knows of the transfer).
enum SendError {
    Hub(HubError),
    Network(Url, reqwest::Error),
}

impl From<HubError> for SendError {
    fn from(e: HubError) -> Self {
        Self::Hub(e)
    }
}

/// Why a body could not be read whole.
enum BoundedError {
    TooLarge,
    Network(reqwest::Error),
}

/// One file of a repository as the hub describes it.
#[derive(Debug, Clone)]
struct RemoteFile {
    path: String,
    size: u64,
    /// The LFS sha256, for the large files; a small file is checked against its git blob id,
    /// `hash`.
    sha256: Option<String>,
    /// The blob name in the cache: the sha256 for LFS files, the git blob id otherwise, as
    /// huggingface_hub names them (its `X-Linked-Etag`, else `ETag`).
    hash: String,
}

/// `GET /api/models/{repo}/revision/{rev}`, the fields used (huggingface_hub `ModelInfo`).
#[derive(Debug, Deserialize)]
struct RepoInfo {
    sha: Option<String>,
    #[serde(default)]
    siblings: Vec<Sibling>,
}

#[derive(Debug, Deserialize)]
struct Sibling {
    rfilename: String,
}

/// One entry of a `paths-info` answer, in the hub's own field names (huggingface_hub
/// `RepoFile`: `oid` is the git blob id, `lfs.oid` the sha256 of the content).
#[derive(Debug, Deserialize)]
struct PathInfo {
    #[serde(rename = "type")]
    kind: String,
    path: String,
    #[serde(default)]
    oid: String,
    #[serde(default)]
    size: u64,
    lfs: Option<LfsInfo>,
}

#[derive(Debug, Deserialize)]
struct LfsInfo {
    oid: String,
    size: u64,
}

/// Where a download stands, for a progress display.
#[derive(Debug, Clone)]
pub struct Progress {
    pub repo: String,
    pub file: String,
    /// 1-based position of this file among the files to fetch.
    pub index: usize,
    pub count: usize,
    pub done: u64,
    pub total: u64,
    /// Bytes that were already on disk from an earlier, interrupted run.
    pub resumed: u64,
    pub started: Instant,
}

impl Progress {
    /// Bytes per second over this run's part of the transfer.
    pub fn rate(&self) -> f64 {
        let secs = self.started.elapsed().as_secs_f64();
        if secs <= 0.0 {
            return 0.0;
        }
        (self.done - self.resumed) as f64 / secs
    }

    pub fn eta(&self) -> Option<Duration> {
        let rate = self.rate();
        (rate > 0.0).then(|| Duration::from_secs_f64((self.total - self.done) as f64 / rate))
    }
}

/// Receives progress; the command line prints it, the TUI forwards it to its event loop.
pub trait ProgressSink {
    fn update(&mut self, progress: &Progress);
    /// A file is complete and verified (or was already in the cache).
    fn finished(&mut self, progress: &Progress);
    /// Asked between chunks: `true` stops the download with [`HubError::Cancelled`], keeping
    /// what has arrived for the next attempt to resume.
    fn cancelled(&self) -> bool {
        false
    }
}

impl Hub {
    /// Fetches what `spec` names into the cache and returns the local path to load.
    pub(super) fn download(
        &self,
        spec: &ModelSpec,
        sink: &mut dyn ProgressSink,
    ) -> Result<PathBuf, HubError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| HubError::Io {
                path: PathBuf::from("tokio runtime"),
                source,
            })?;
        runtime.block_on(self.download_async(spec, sink))
    }

    fn http(&self) -> Result<reqwest::Client, HubError> {
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("rwkv-chat/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(self.timeout)
            .read_timeout(self.timeout)
            // Followed by `send`, which decides per hop whether the token goes along.
            .redirect(reqwest::redirect::Policy::none());
        // A mirror on this machine is never behind the proxy the environment names.
        let local = Url::parse(&self.endpoint)
            .is_ok_and(|u| matches!(u.host_str(), Some("localhost" | "127.0.0.1" | "[::1]")));
        if local {
            builder = builder.no_proxy();
        }
        builder
            .build()
            .map_err(|e| self.network_error(&self.endpoint, e, 0, 0))
    }

    async fn download_async(
        &self,
        spec: &ModelSpec,
        sink: &mut dyn ProgressSink,
    ) -> Result<PathBuf, HubError> {
        let http = self.http()?;
        let revision = spec.revision_or_main();
        let info_url = self.api_url(&spec.repo, &["revision", revision])?;
        let info: RepoInfo = self
            .api_json(&http, spec, Method::GET, info_url.clone(), None)
            .await?;
        let commit = info.sha.ok_or_else(|| HubError::Protocol {
            url: info_url.to_string(),
            reason: format!("the hub gave no commit id for {}", spec.repo),
        })?;
        // The commit names the snapshot directory: a server must not choose another path.
        if !super::cache::is_commit_hash(&commit) {
            return Err(HubError::Protocol {
                url: info_url.to_string(),
                reason: format!("`{commit}` is not a commit id"),
            });
        }
        let names: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
        let wanted = select_files(&spec.repo, &names, spec.file.as_deref())?;
        // File names come from the server and become links in the snapshot.
        if let Some(bad) = wanted.iter().find(|f| !is_plain_relative(f)) {
            return Err(HubError::Protocol {
                url: info_url.to_string(),
                reason: format!("file name `{bad}` points outside the repository"),
            });
        }

        // The body huggingface.js sends (`paths-info.ts`); huggingface_hub sends the same
        // fields form-encoded.
        let paths_url = self.api_url(&spec.repo, &["paths-info", &commit])?;
        let body = serde_json::json!({ "paths": wanted }).to_string();
        let entries: Vec<PathInfo> = self
            .api_json(&http, spec, Method::POST, paths_url.clone(), Some(body))
            .await?;
        let files = wanted
            .iter()
            .map(|path| remote_file(&spec.repo, path, &entries, &paths_url))
            .collect::<Result<Vec<_>, _>>()?;

        let cache = RepoCache::new(&self.cache_dir, &spec.repo);
        for (i, file) in files.iter().enumerate() {
            let mut progress = Progress {
                repo: spec.repo.clone(),
                file: file.path.clone(),
                index: i + 1,
                count: files.len(),
                done: 0,
                total: file.size,
                resumed: 0,
                started: Instant::now(),
            };
            self.fetch_blob(&http, &cache, &commit, file, &mut progress, sink)
                .await?;
            cache
                .link(&commit, &file.path, &file.hash)
                .map_err(|source| HubError::Io {
                    path: cache.snapshot(&commit).join(&file.path),
                    source,
                })?;
            progress.done = file.size;
            sink.finished(&progress);
        }
        cache
            .write_ref(revision, &commit)
            .map_err(|source| HubError::Io {
                path: cache.root().join("refs").join(revision),
                source,
            })?;
        cache
            .complete_model(&commit, spec.file.as_deref())
            .ok_or_else(|| HubError::Protocol {
                url: self.endpoint.clone(),
                reason: format!(
                    "{}@{commit} downloaded, but its files do not make a loadable model",
                    spec.repo
                ),
            })
    }

    /// `{endpoint}/api/models/{owner}/{name}/{segments...}`, each segment escaped as one (a
    /// revision `refs/pr/3` becomes `refs%2Fpr%2F3`, as huggingface_hub quotes it).
    fn api_url(&self, repo: &str, segments: &[&str]) -> Result<Url, HubError> {
        let mut url = self.endpoint_url()?;
        url.path_segments_mut()
            .map_err(|()| self.bad_endpoint("it cannot hold a path".into()))?
            .pop_if_empty()
            .extend(["api", "models"])
            .extend(repo.split('/'))
            .extend(segments);
        Ok(url)
    }

    fn endpoint_url(&self) -> Result<Url, HubError> {
        Url::parse(&self.endpoint).map_err(|e| self.bad_endpoint(e.to_string()))
    }

    fn bad_endpoint(&self, reason: String) -> HubError {
        HubError::BadEndpoint {
            endpoint: self.endpoint.clone(),
            reason,
        }
    }

    /// An API answer as JSON, read up to [`MAX_API_BODY`] bytes.
    async fn api_json<T: serde::de::DeserializeOwned>(
        &self,
        http: &reqwest::Client,
        spec: &ModelSpec,
        method: Method,
        url: Url,
        body: Option<String>,
    ) -> Result<T, HubError> {
        let mut headers = HeaderMap::new();
        if body.is_some() {
            headers.insert(
                CONTENT_TYPE,
                reqwest::header::HeaderValue::from_static("application/json"),
            );
        }
        let (response, url) = match self.send(http, method, url, headers, body).await {
            Ok(answer) => answer,
            Err(SendError::Hub(e)) => return Err(e),
            Err(SendError::Network(at, e)) => return Err(self.network_error(at.as_str(), e, 0, 0)),
        };
        let status = response.status();
        if !status.is_success() {
            return Err(self.api_status_error(spec, &url, &response));
        }
        let bytes = read_bounded(response).await.map_err(|e| match e {
            BoundedError::Network(e) => self.network_error(url.as_str(), e, 0, 0),
            BoundedError::TooLarge => HubError::Protocol {
                url: url.to_string(),
                reason: format!(
                    "the answer is larger than {} MiB, more than any repository listing; refused",
                    MAX_API_BODY >> 20
                ),
            },
        })?;
        serde_json::from_slice(&bytes).map_err(|e| HubError::Protocol {
            url: url.to_string(),
            reason: format!("the answer is not what the hub sends ({e})"),
        })
    }

    /// Sends a request, following redirects one hop at a time: the token goes only to the
    /// endpoint's origin, never to a CDN a redirect names, however long the chain. Returns the
    /// final answer and its URL.
    async fn send(
        &self,
        http: &reqwest::Client,
        method: Method,
        mut url: Url,
        headers: HeaderMap,
        body: Option<String>,
    ) -> Result<(reqwest::Response, Url), SendError> {
        let origin = self.endpoint_url()?.origin();
        let mut seen = HashSet::new();
        loop {
            seen.insert(url.clone());
            let mut request = http
                .request(method.clone(), url.clone())
                .headers(headers.clone());
            if let Some(token) = self.token.as_ref().filter(|_| url.origin() == origin) {
                request = request.header(AUTHORIZATION, format!("Bearer {token}"));
            }
            if let Some(body) = &body {
                request = request.body(body.clone());
            }
            let response = match request.send().await {
                Ok(r) => r,
                Err(e) => return Err(SendError::Network(url, e)),
            };
            if !response.status().is_redirection() {
                return Ok((response, url));
            }
            let refuse = |reason: String| HubError::Protocol {
                url: url.to_string(),
                reason,
            };
            let location = response
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| refuse("a redirect without a usable Location".into()))?;
            let next = url
                .join(location)
                .map_err(|e| refuse(format!("a redirect to `{location}` ({e})")))?;
            if !matches!(next.scheme(), "http" | "https") {
                return Err(refuse(format!(
                    "a redirect to `{next}`, which is not http or https; refused"
                ))
                .into());
            }
            if seen.contains(&next) {
                return Err(refuse(format!("a redirect loop through `{next}`")).into());
            }
            if seen.len() > MAX_REDIRECTS {
                return Err(refuse(format!("more than {MAX_REDIRECTS} redirects")).into());
            }
            url = next;
        }
    }

    /// What a failed API answer means, from its status and the hub's `X-Error-Code`.
    fn api_status_error(
        &self,
        spec: &ModelSpec,
        url: &Url,
        response: &reqwest::Response,
    ) -> HubError {
        let code = response
            .headers()
            .get("x-error-code")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let repo = spec.repo.clone();
        let endpoint = self.endpoint.clone();
        match (response.status().as_u16(), code) {
            (404, "RevisionNotFound") => HubError::RevisionNotFound {
                repo,
                revision: spec.revision_or_main().to_owned(),
                endpoint,
            },
            (404, "EntryNotFound") => HubError::FileNotFound {
                repo,
                file: spec.file.clone().unwrap_or_default(),
                endpoint,
            },
            (404, _) => HubError::RepoNotFound { repo, endpoint },
            (status @ (401 | 403), _) => HubError::Auth {
                repo,
                endpoint,
                status,
            },
            (status, _) => HubError::Server {
                url: url.to_string(),
                status,
            },
        }
    }

    async fn fetch_blob(
        &self,
        http: &reqwest::Client,
        cache: &RepoCache,
        commit: &str,
        file: &RemoteFile,
        progress: &mut Progress,
        sink: &mut dyn ProgressSink,
    ) -> Result<(), HubError> {
        let blob = cache.blob(&file.hash);
        if blob.is_file() {
            return Ok(());
        }
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| HubError::Io { path, source }
        };
        let lock_path = cache.lock_file(&file.hash);
        if let Some(parent) = lock_path.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        std::fs::create_dir_all(cache.root().join("blobs")).map_err(io(&cache.root()))?;
        // Another rwkv-chat or a Python process may be fetching the same blob; wait for it.
        let lock = std::fs::File::create(&lock_path).map_err(io(&lock_path))?;
        lock.lock().map_err(io(&lock_path))?;
        if blob.is_file() {
            return Ok(());
        }

        let partial = cache.incomplete(&file.hash);
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&partial)
            .map_err(io(&partial))?;
        let mut offset = out.metadata().map_err(io(&partial))?.len();
        if offset > file.size {
            out.set_len(0).map_err(io(&partial))?;
            offset = 0;
        }
        let mut hasher = FileHasher::new(file);
        if offset > 0 {
            hash_prefix(&partial, &mut hasher).map_err(io(&partial))?;
        }
        progress.done = offset;
        progress.resumed = offset;

        let url = self.file_url(&cache.repo, commit, &file.path)?;
        let mut last_error = None;
        for attempt in 1..=ATTEMPTS {
            if offset == file.size {
                break;
            }
            if let Some(e) = &last_error {
                let why = match e {
                    HubError::Interrupted { reason, .. } => reason.clone(),
                    other => other.to_string(),
                };
                // On stderr, and the name and reason come from the server.
                let line = format!(
                    "{}: {why}; resuming at byte {offset} (attempt {attempt} of {ATTEMPTS})",
                    file.path
                );
                tracing::warn!("{}", sanitize(&line));
            }
            let mut headers = HeaderMap::new();
            if offset > 0 {
                let range = format!("bytes={offset}-");
                headers.insert(RANGE, range.parse().map_err(|_| self.bad_endpoint(range))?);
            }
            let mut response = match self
                .send(http, Method::GET, url.clone(), headers, None)
                .await
            {
                Ok((r, _)) => r,
                Err(SendError::Hub(e)) => return Err(e),
                Err(SendError::Network(at, e)) => {
                    let error = self.network_error(at.as_str(), e, offset, file.size);
                    if matches!(error, HubError::Unreachable { .. }) {
                        return Err(error);
                    }
                    last_error = Some(error);
                    continue;
                }
            };
            match response.status() {
                StatusCode::PARTIAL_CONTENT
                    if range_start(response.headers().get(CONTENT_RANGE)) == Some(offset) => {}
                StatusCode::OK | StatusCode::PARTIAL_CONTENT => {
                    // The server ignored the range (or answered another): start over.
                    out.set_len(0).map_err(io(&partial))?;
                    hasher = FileHasher::new(file);
                    offset = 0;
                    progress.resumed = 0;
                }
                status => return Err(self.status_error(&cache.repo, &file.path, &url, status)),
            }
            loop {
                match response.chunk().await {
                    Ok(Some(bytes)) => {
                        if offset + bytes.len() as u64 > file.size {
                            drop(out);
                            let _ = std::fs::remove_file(&partial);
                            return Err(HubError::TooLarge {
                                repo: cache.repo.clone(),
                                file: file.path.clone(),
                                expected: file.size,
                            });
                        }
                        out.write_all(&bytes).map_err(io(&partial))?;
                        hasher.update(&bytes);
                        offset += bytes.len() as u64;
                        progress.done = offset;
                        sink.update(progress);
                        if sink.cancelled() {
                            out.sync_all().map_err(io(&partial))?;
                            return Err(HubError::Cancelled {
                                repo: cache.repo.clone(),
                                done: offset,
                                total: file.size,
                            });
                        }
                    }
                    Ok(None) => {
                        if offset < file.size {
                            last_error = Some(HubError::Interrupted {
                                url: url.to_string(),
                                done: offset,
                                total: file.size,
                                reason: "the server ended the transfer early".into(),
                            });
                        }
                        break;
                    }
                    Err(e) => {
                        last_error = Some(self.network_error(url.as_str(), e, offset, file.size));
                        break;
                    }
                }
            }
        }
        if offset < file.size {
            out.sync_all().map_err(io(&partial))?;
            return Err(last_error.unwrap_or(HubError::Interrupted {
                url: url.to_string(),
                done: offset,
                total: file.size,
                reason: "no data".into(),
            }));
        }
        out.sync_all().map_err(io(&partial))?;
        drop(out);
        let (kind, expected) = match &file.sha256 {
            Some(sha256) => ("sha256", sha256),
            None => ("git blob id", &file.hash),
        };
        let actual = hasher.finish();
        if !actual.eq_ignore_ascii_case(expected) {
            // Resuming garbage cannot fix it: the next run starts from zero.
            let _ = std::fs::remove_file(&partial);
            return Err(HubError::Corrupt {
                repo: cache.repo.clone(),
                file: file.path.clone(),
                kind,
                expected: expected.clone(),
                actual,
            });
        }
        std::fs::rename(&partial, &blob).map_err(io(&blob))
    }

    fn file_url(&self, repo: &str, commit: &str, file: &str) -> Result<Url, HubError> {
        let mut url = self.endpoint_url()?;
        url.path_segments_mut()
            .map_err(|()| self.bad_endpoint("it cannot hold a path".into()))?
            .pop_if_empty()
            .extend(repo.split('/'))
            .extend(["resolve", commit])
            .extend(file.split('/'));
        Ok(url)
    }

    fn status_error(
        &self,
        repo: &str,
        file: &str,
        url: &reqwest::Url,
        status: StatusCode,
    ) -> HubError {
        match status.as_u16() {
            404 => HubError::FileNotFound {
                repo: repo.to_owned(),
                file: file.to_owned(),
                endpoint: self.endpoint.clone(),
            },
            401 | 403 => HubError::Auth {
                repo: repo.to_owned(),
                endpoint: self.endpoint.clone(),
                status: status.as_u16(),
            },
            code => HubError::Server {
                url: url.to_string(),
                status: code,
            },
        }
    }

    fn network_error(&self, url: &str, e: reqwest::Error, done: u64, total: u64) -> HubError {
        if e.is_timeout() {
            HubError::Stalled {
                url: url.to_owned(),
                secs: self.timeout.as_secs_f64(),
            }
        } else if e.is_connect() {
            HubError::Unreachable {
                endpoint: self.endpoint.clone(),
                reason: root_cause(&e),
            }
        } else {
            HubError::Interrupted {
                url: url.to_owned(),
                done,
                total,
                reason: root_cause(&e),
            }
        }
    }
}

/// Chooses what to fetch from a repo listing: the named file, or the config, the tokenizer and
/// one set of weights (safetensors before PyTorch, a single `.pth` for a raw repo). Weights come
/// last and a shard index after its shards, so an interrupted download never leaves a snapshot
/// that looks loadable.
fn select_files(repo: &str, names: &[String], file: Option<&str>) -> Result<Vec<String>, HubError> {
    let has = |n: &str| names.iter().any(|x| x == n);
    if let Some(file) = file {
        if !has(file) {
            return Err(HubError::FileNotFound {
                repo: repo.to_owned(),
                file: file.to_owned(),
                endpoint: String::new(),
            });
        }
        return Ok(vec![file.to_owned()]);
    }
    let mut wanted: Vec<String> = ["config.json", "tokenizer.json"]
        .into_iter()
        .filter(|n| has(n))
        .map(str::to_owned)
        .collect();
    let shards = |prefix: &str, suffix: &str| -> Vec<String> {
        let mut v: Vec<String> = names
            .iter()
            .filter(|n| n.starts_with(prefix) && n.ends_with(suffix) && n.contains("-of-"))
            .cloned()
            .collect();
        v.sort();
        v
    };
    if has("model.safetensors") {
        wanted.push("model.safetensors".into());
    } else if has("model.safetensors.index.json") {
        wanted.extend(shards("model-", ".safetensors"));
        wanted.push("model.safetensors.index.json".into());
    } else if has("pytorch_model.bin") {
        wanted.push("pytorch_model.bin".into());
    } else if has("pytorch_model.bin.index.json") {
        wanted.extend(shards("pytorch_model-", ".bin"));
        wanted.push("pytorch_model.bin.index.json".into());
    } else {
        // A snapshot is loadable as a directory only with its weights at the top; one in a
        // subfolder loads when named, so a user is told its name before anything is fetched.
        let pths: Vec<&String> = names.iter().filter(|n| n.ends_with(".pth")).collect();
        let top: Vec<&String> = pths.iter().copied().filter(|n| !n.contains('/')).collect();
        match (top.as_slice(), pths.as_slice()) {
            ([one], _) => wanted.push((*one).clone()),
            ([], []) => {
                return Err(HubError::NoWeights {
                    repo: repo.to_owned(),
                });
            }
            ([], [one]) => {
                return Err(HubError::NestedFile {
                    repo: repo.to_owned(),
                    file: (*one).clone(),
                });
            }
            ([], many) | (many, _) => {
                return Err(HubError::ChooseFile {
                    repo: repo.to_owned(),
                    files: many.iter().map(|s| s.to_string()).collect(),
                });
            }
        }
    }
    Ok(wanted)
}

/// The size, sha256 and blob name of `path` from a `paths-info` answer. Every name and hash
/// from the server is checked before it names a file.
fn remote_file(
    repo: &str,
    path: &str,
    entries: &[PathInfo],
    url: &Url,
) -> Result<RemoteFile, HubError> {
    let entry = entries
        .iter()
        .find(|e| e.kind == "file" && e.path == path)
        .ok_or_else(|| HubError::FileNotFound {
            repo: repo.to_owned(),
            file: path.to_owned(),
            endpoint: String::new(),
        })?;
    let refuse = |reason: String| HubError::Protocol {
        url: url.to_string(),
        reason: format!("{path}: {reason}"),
    };
    let file = match &entry.lfs {
        Some(lfs) => {
            if lfs.oid.len() != 64 || !is_safe_blob_name(&lfs.oid) {
                return Err(refuse(format!("`{}` is not a sha256", lfs.oid)));
            }
            RemoteFile {
                path: path.to_owned(),
                size: lfs.size,
                sha256: Some(lfs.oid.to_ascii_lowercase()),
                hash: lfs.oid.to_ascii_lowercase(),
            }
        }
        None => {
            // A sha1: the file is checked against it, so it must be one.
            if entry.oid.len() != 40 || !is_safe_blob_name(&entry.oid) {
                return Err(refuse(format!("`{}` is not a git blob id", entry.oid)));
            }
            RemoteFile {
                path: path.to_owned(),
                size: entry.size,
                sha256: None,
                hash: entry.oid.to_ascii_lowercase(),
            }
        }
    };
    Ok(file)
}

/// A response body whole, refused beyond [`MAX_API_BODY`] bytes (checked as it arrives: a
/// hostile server need not announce its length).
async fn read_bounded(mut response: reqwest::Response) -> Result<Vec<u8>, BoundedError> {
    if response
        .content_length()
        .is_some_and(|n| n > MAX_API_BODY as u64)
    {
        return Err(BoundedError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(BoundedError::Network)? {
        if body.len() + chunk.len() > MAX_API_BODY {
            return Err(BoundedError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn is_plain_relative(path: &str) -> bool {
    path.split('/')
        .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\\'))
}

/// Blob names come from the server and become file names: hex digits only.
fn is_safe_blob_name(hash: &str) -> bool {
    !hash.is_empty() && hash.len() <= 128 && hash.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The first byte of a `Content-Range: bytes START-END/TOTAL` header.
fn range_start(header: Option<&reqwest::header::HeaderValue>) -> Option<u64> {
    let text = header?.to_str().ok()?;
    text.strip_prefix("bytes ")?
        .split('-')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// The hash a file is checked against, fed as its bytes arrive: the sha256 of an LFS file's
/// content, or the git blob id of a file kept in git, which is the sha1 of `blob <size>\0`
/// followed by the content (what `git hash-object` computes and the hub lists as `oid`).
enum FileHasher {
    Lfs(Sha256),
    Git(Sha1),
}

impl FileHasher {
    fn new(file: &RemoteFile) -> Self {
        if file.sha256.is_some() {
            Self::Lfs(Sha256::new())
        } else {
            // The header holds the size the hub lists; only content of that size is taken.
            let mut sha1 = Sha1::new();
            sha1.update(format!("blob {}\0", file.size).as_bytes());
            Self::Git(sha1)
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            Self::Lfs(h) => h.update(bytes),
            Self::Git(h) => h.update(bytes),
        }
    }

    fn finish(self) -> String {
        match self {
            Self::Lfs(h) => hex(&h.finalize()),
            Self::Git(h) => hex(&h.finalize()),
        }
    }
}

fn hash_prefix(path: &Path, hasher: &mut FileHasher) -> std::io::Result<()> {
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        hasher.update(&buf[..n]);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// reqwest's own message is "error sending request" or "error decoding response body"; the
/// innermost cause ("connection refused", "end of file before message length reached") says why.
fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn server_file_names_that_leave_the_repository_are_refused() {
        for bad in [
            "pytorch_model-a/../../../../tmp/x-of-.bin",
            "/etc/passwd",
            "a//b",
            "./a",
            "a\\..\\b",
            "",
        ] {
            assert!(!is_plain_relative(bad), "{bad}");
        }
        assert!(is_plain_relative("sub/pytorch_model-00001-of-00002.bin"));
    }

    #[test]
    fn sharded_weights_come_after_their_shards() {
        let listing = names(&[
            ".gitattributes",
            "README.md",
            "config.json",
            "pytorch_model-00002-of-00002.bin",
            "pytorch_model-00001-of-00002.bin",
            "pytorch_model.bin.index.json",
            "tokenizer.json",
        ]);
        assert_eq!(
            select_files("r", &listing, None).unwrap(),
            names(&[
                "config.json",
                "tokenizer.json",
                "pytorch_model-00001-of-00002.bin",
                "pytorch_model-00002-of-00002.bin",
                "pytorch_model.bin.index.json",
            ])
        );
    }

    #[test]
    fn safetensors_are_preferred_and_raw_repos_need_a_file() {
        let listing = names(&["config.json", "model.safetensors", "pytorch_model.bin"]);
        assert_eq!(
            select_files("r", &listing, None).unwrap(),
            names(&["config.json", "model.safetensors"])
        );
        let raw = names(&["a.pth", "b.pth", "README.md"]);
        let err = select_files("BlinkDL/x", &raw, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("BlinkDL/x/a.pth"), "{err}");
        assert_eq!(
            select_files("r", &raw, Some("b.pth")).unwrap(),
            names(&["b.pth"])
        );
    }

    fn paths_info(json: &str) -> Vec<PathInfo> {
        serde_json::from_str(json).unwrap()
    }

    /// The hub's answer as it arrives (the shape huggingface_hub's `RepoFile` reads).
    #[test]
    fn an_lfs_file_is_named_and_checked_by_its_sha256() {
        let sha = "2185abc1".repeat(8);
        let entries = paths_info(&format!(
            r#"[{{"type":"file","oid":"bf14037d0123456789abcdef0123456789abcdef","size":2700000,
                "path":"model.safetensors","xetHash":"ab","lfs":{{"oid":"{sha}","size":2700000,
                "pointerSize":134}}}},
               {{"type":"file","oid":"0123456789abcdef0123456789abcdef01234567","size":519,
                "path":"config.json"}},
               {{"type":"directory","oid":"89abcdef0123456789abcdef0123456789abcdef",
                "path":"sub"}}]"#
        ));
        let url = Url::parse("http://127.0.0.1/api").unwrap();
        let weights = remote_file("r", "model.safetensors", &entries, &url).unwrap();
        assert_eq!(weights.sha256.as_deref(), Some(sha.as_str()));
        assert_eq!(
            (weights.hash.as_str(), weights.size),
            (sha.as_str(), 2_700_000)
        );
        let config = remote_file("r", "config.json", &entries, &url).unwrap();
        assert_eq!(config.sha256, None);
        assert_eq!(config.hash, "0123456789abcdef0123456789abcdef01234567");
        let err = remote_file("r", "sub", &entries, &url).unwrap_err();
        assert!(err.to_string().contains("file `sub` not found"), "{err}");
    }

    #[test]
    fn hashes_that_are_not_hex_are_refused() {
        let url = Url::parse("http://127.0.0.1/api").unwrap();
        let entries = paths_info(
            r#"[{"type":"file","oid":"../../x","size":1,"path":"a"},
                {"type":"file","oid":"0123","size":1,"path":"c"},
                {"type":"file","oid":"00","size":1,"path":"b","lfs":{"oid":"abc","size":1}}]"#,
        );
        let err = remote_file("r", "a", &entries, &url).unwrap_err();
        assert!(
            err.to_string()
                .contains("a: `../../x` is not a git blob id"),
            "{err}"
        );
        // Hex, but too short for the sha1 the file is checked against.
        let err = remote_file("r", "c", &entries, &url).unwrap_err();
        assert!(
            err.to_string().contains("c: `0123` is not a git blob id"),
            "{err}"
        );
        let err = remote_file("r", "b", &entries, &url).unwrap_err();
        assert!(
            err.to_string().contains("b: `abc` is not a sha256"),
            "{err}"
        );
    }

    /// Against what git itself gives (`printf 'hello\n' | git hash-object --stdin`), fed in
    /// two pieces as a resumed transfer feeds it.
    #[test]
    fn a_small_file_is_checked_by_its_git_blob_id() {
        let file = |size| RemoteFile {
            path: "config.json".into(),
            size,
            sha256: None,
            hash: String::new(),
        };
        let mut hasher = FileHasher::new(&file(6));
        hasher.update(b"hel");
        hasher.update(b"lo\n");
        assert_eq!(hasher.finish(), "ce013625030ba8dba906f756967f9e9ca394464a");
        assert_eq!(
            FileHasher::new(&file(0)).finish(),
            "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
        );
    }

    #[test]
    fn content_range_start_is_parsed() {
        let v = reqwest::header::HeaderValue::from_static("bytes 100-199/200");
        assert_eq!(range_start(Some(&v)), Some(100));
        assert_eq!(range_start(None), None);
    }
}
