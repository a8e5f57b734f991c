//! Quantized weights kept on disk, so that a q8, q5 or q4 model loads without reading and
//! quantizing its f32 checkpoint again (at 1b5: 0.8 GB read instead of 6 GB, and no
//! quantization).
//!
//! One file per checkpoint and format in the cache directory, named by a hash of the weight
//! files' paths, sizes and modification times, so a changed checkpoint gets a new file. A file
//! that fails any check (magic, header, sizes, CRC) is ignored and replaced, never trusted;
//! files are written to a temporary name, fsynced and renamed into place.
//!
//! Layout: `RWKVQNT3`, a little-endian u64 length and a JSON [`Header`], then each matrix's
//! quants and its f16 values (little-endian) in header order, then a CRC32 of everything
//! before it. The quants are q8's bytes, or q4's and q5's levels in groups of interleaved rows
//! as [`Q4`] and [`Q5`] hold them; the f16 values are the scales, for q5 followed by the
//! minima. The header's dtype must be the one asked for, so a file of one format is never
//! read as another. (`RWKVQNT1` files held q4 and q5 a row at a time, `RWKVQNT2` q5 so:
//! they are ignored and replaced.)

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use half::f16;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::WeightDtype;
use super::gemv::{BLOCK, GROUP, Q4, Q4_GROUP_BLOCK, Q5, Q5_GROUP_BLOCK, Q8};
use super::linear::Weight;

const MAGIC: &[u8; 8] = b"RWKVQNT3";

#[derive(Serialize, Deserialize)]
struct Header {
    dtype: WeightDtype,
    matrices: Vec<Entry>,
}

#[derive(Serialize, Deserialize)]
struct Entry {
    name: String,
    rows: usize,
    cols: usize,
}

impl Entry {
    /// Bytes of quants and of f16 values; `None` for sizes no real matrix has (a damaged
    /// header).
    fn sizes(&self, dtype: WeightDtype) -> Option<(usize, usize)> {
        // q4's and q5's rows come in whole groups.
        let rows = match dtype {
            WeightDtype::Q4 | WeightDtype::Q5 => self.rows.div_ceil(GROUP).checked_mul(GROUP)?,
            _ => self.rows,
        };
        let blocks = rows.checked_mul(self.cols.div_ceil(BLOCK))?;
        let (quants, halves) = match dtype {
            WeightDtype::Q4 => (Q4_GROUP_BLOCK / GROUP, 1),
            WeightDtype::Q5 => (Q5_GROUP_BLOCK / GROUP, 2),
            _ => (BLOCK, 1),
        };
        Some((blocks.checked_mul(quants)?, blocks.checked_mul(2 * halves)?))
    }
}

/// The cache file for one checkpoint in one format, as opened by a load.
pub(super) struct WeightCache {
    path: PathBuf,
    dtype: WeightDtype,
    found: Found,
    missed: bool,
}

/// The matrices a cache file holds, by name: rows, columns and weights.
type Found = HashMap<String, (usize, usize, Weight)>;

impl WeightCache {
    /// Opens the cache for `weights` in `dtype` under `dir`. A missing or unusable file gives
    /// an empty cache (the reason is logged), which the load then fills.
    pub fn open(dir: &Path, weights: &[PathBuf], dtype: WeightDtype) -> Self {
        let path = dir.join(format!("{}.{dtype}", key(weights)));
        let found = match read(&path, dtype) {
            Ok(found) => found,
            Err(e) => {
                if path.exists() {
                    tracing::warn!("ignoring weight cache {}: {e:#}", path.display());
                }
                HashMap::new()
            }
        };
        Self {
            path,
            dtype,
            found,
            missed: false,
        }
    }

    /// The cached matrix `name`, if the file holds one of this shape.
    pub fn take(&mut self, name: &str, rows: usize, cols: usize) -> Option<Weight> {
        match self.found.remove(name) {
            Some((r, c, w)) if (r, c) == (rows, cols) => Some(w),
            _ => {
                self.missed = true;
                None
            }
        }
    }

    /// True when every matrix asked for came from the file, and the file held no others.
    pub fn complete(&self) -> bool {
        !self.missed && self.found.is_empty()
    }

    /// Writes `matrices` (every quantized matrix of the loaded model) unless the file already
    /// held exactly them. Failing to write costs only the next load's time, so it is logged.
    pub fn save<'a>(self, matrices: impl Iterator<Item = (&'a str, usize, usize, &'a Weight)>) {
        if self.complete() {
            return;
        }
        match write(&self.path, self.dtype, matrices) {
            Ok(()) => tracing::info!("wrote weight cache {}", self.path.display()),
            Err(e) => tracing::warn!(
                "could not write weight cache {}: {e:#}",
                self.path.display()
            ),
        }
    }
}

/// A name for the checkpoint: its files' paths, sizes and modification times.
fn key(weights: &[PathBuf]) -> String {
    let mut hash = Sha256::new();
    for path in weights {
        let path = path.canonicalize().unwrap_or_else(|_| path.clone());
        hash.update(path.to_string_lossy().as_bytes());
        if let Ok(meta) = std::fs::metadata(&path) {
            hash.update(meta.len().to_le_bytes());
            if let Ok(since) = meta
                .modified()
                .map(|t| t.duration_since(std::time::UNIX_EPOCH))
            {
                hash.update(since.unwrap_or_default().as_nanos().to_le_bytes());
            }
        }
        hash.update([0]);
    }
    hash.finalize()
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Reads through a CRC.
struct Checked<R> {
    inner: R,
    crc: crc32fast::Hasher,
}

impl<R: Read> Checked<R> {
    fn bytes(&mut self, n: usize) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0u8; n];
        self.inner.read_exact(&mut buf)?;
        self.crc.update(&buf);
        Ok(buf)
    }
}

fn read(path: &Path, dtype: WeightDtype) -> anyhow::Result<Found> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut r = Checked {
        inner: BufReader::with_capacity(1 << 20, file),
        crc: crc32fast::Hasher::new(),
    };
    anyhow::ensure!(r.bytes(8)? == MAGIC, "not a weight cache file");
    let header_len = u64::from_le_bytes(r.bytes(8)?.try_into().unwrap_or_default());
    anyhow::ensure!(
        header_len < len.min(1 << 24),
        "header length {header_len} is wrong"
    );
    let header: Header = serde_json::from_slice(&r.bytes(header_len as usize)?)?;
    anyhow::ensure!(header.dtype == dtype, "holds {}, not {dtype}", header.dtype);
    // Every size comes from the header; check they add up to the file before allocating.
    let mut sizes = Vec::with_capacity(header.matrices.len());
    let mut expected = 16 + header_len + 4;
    for e in &header.matrices {
        let (q, s) = e
            .sizes(dtype)
            .with_context(|| format!("impossible size for {}", e.name))?;
        expected = expected.saturating_add(q as u64).saturating_add(s as u64);
        sizes.push((q, s));
    }
    anyhow::ensure!(
        expected == len,
        "{len} bytes where the header describes {expected}"
    );
    let mut found = HashMap::new();
    for (e, (nq, ns)) in header.matrices.into_iter().zip(sizes) {
        let quants = r.bytes(nq)?;
        let mut scales: Vec<f16> = r
            .bytes(ns)?
            .chunks_exact(2)
            .map(|b| f16::from_bits(u16::from_le_bytes([b[0], b[1]])))
            .collect();
        let q = match dtype {
            WeightDtype::Q4 => Weight::Q4(Q4 { quants, scales }),
            WeightDtype::Q5 => {
                let mins = scales.split_off(scales.len() / 2);
                Weight::Q5(Q5 {
                    quants,
                    scales,
                    mins,
                })
            }
            _ => Weight::Q8(Q8 {
                quants: quants.into_iter().map(|b| b as i8).collect(),
                scales,
            }),
        };
        found.insert(e.name, (e.rows, e.cols, q));
    }
    let want = r.crc.clone().finalize();
    let mut stored = [0u8; 4];
    r.inner.read_exact(&mut stored)?;
    anyhow::ensure!(u32::from_le_bytes(stored) == want, "checksum mismatch");
    Ok(found)
}

fn write<'a>(
    path: &Path,
    dtype: WeightDtype,
    matrices: impl Iterator<Item = (&'a str, usize, usize, &'a Weight)>,
) -> anyhow::Result<()> {
    let mut entries = Vec::new();
    let mut data: Vec<(&[u8], Vec<&[f16]>)> = Vec::new();
    for (name, rows, cols, w) in matrices {
        data.push(match w {
            Weight::Q8(q) => (as_bytes(&q.quants), vec![&q.scales]),
            Weight::Q5(q) => (&q.quants, vec![&q.scales, &q.mins]),
            Weight::Q4(q) => (&q.quants, vec![&q.scales]),
            Weight::Dense(_) => anyhow::bail!("{name} is not quantized"),
        });
        entries.push(Entry {
            name: name.to_owned(),
            rows,
            cols,
        });
    }
    let header = serde_json::to_vec(&Header {
        dtype,
        matrices: entries,
    })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension(format!("partial-{}", std::process::id()));
    let written = (|| -> std::io::Result<()> {
        let mut file = File::create(&tmp)?;
        let mut out = BufWriter::with_capacity(1 << 20, &mut file);
        let mut crc = crc32fast::Hasher::new();
        let mut put = |bytes: &[u8]| -> std::io::Result<()> {
            crc.update(bytes);
            out.write_all(bytes)
        };
        put(MAGIC)?;
        put(&(header.len() as u64).to_le_bytes())?;
        put(&header)?;
        for (quants, halves) in data {
            put(quants)?;
            for values in halves {
                let bytes: Vec<u8> = values
                    .iter()
                    .flat_map(|s| s.to_bits().to_le_bytes())
                    .collect();
                put(&bytes)?;
            }
        }
        out.write_all(&crc.finalize().to_le_bytes())?;
        out.flush()?;
        drop(out);
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    Ok(written?)
}

/// `i8` quants as the bytes they are.
fn as_bytes(q: &[i8]) -> &[u8] {
    // SAFETY: i8 and u8 have the same size and alignment, and every bit pattern is valid for
    // both; the slice covers exactly the same memory.
    unsafe { std::slice::from_raw_parts(q.as_ptr().cast(), q.len()) }
}
