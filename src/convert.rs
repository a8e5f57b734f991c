//! `rwkv-chat convert`: any checkpoint the loader reads (raw BlinkDL `.pth`, PyTorch `.bin`,
//! single or sharded) into a Hugging Face directory with one `model.safetensors`, `config.json`
//! and `tokenizer.json`, so it loads by mmap in seconds and also opens in transformers.
//!
//! Tensors go through the loader ([`Checkpoint`]), which already maps raw names to Hugging Face
//! names and checks shapes against the config, and are written one at a time, so converting a
//! 14B model needs memory for one tensor, not for the model. The directory is built under a
//! temporary name beside the destination and renamed into place when complete, so an
//! interrupted conversion never leaves something that looks like a model.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use candle_core::{DType, Device, Tensor};

use crate::model::checkpoint::WORLD_VOCAB_FILE;
use crate::model::{Checkpoint, Generation, ModelFiles, WeightDtype};

/// What a conversion wrote.
#[derive(Debug, Clone)]
pub struct Converted {
    pub dir: PathBuf,
    pub tensors: usize,
    pub parameters: u64,
    pub bytes: u64,
}

/// Converts the model at `src` into a new directory `dst` holding weights in `dtype`, or in
/// the dtype the source stores them in when `None` (a lossless copy).
pub fn convert(src: &Path, dst: &Path, dtype: Option<WeightDtype>) -> anyhow::Result<Converted> {
    if dst.exists() {
        bail!(
            "{}: already exists; choose a new directory to convert into",
            dst.display()
        );
    }
    if let Some(q) = dtype.filter(|d| d.is_quantized()) {
        bail!("convert writes f32, f16 or bf16 safetensors; --dtype {q} is made at load time");
    }
    let files = ModelFiles::locate(src)?;
    let ckpt = Checkpoint::open(files.clone())?;
    // RWKV-4's config is checked against the weights and rewritten; a World model's is kept as
    // it is (its loader checks it), or made from the shapes.
    let cfg = match ckpt.generation() {
        Generation::Rwkv4 => Some(ckpt.config()?),
        _ => None,
    };
    let dtype = dtype.unwrap_or_else(|| {
        match ckpt
            .info(crate::model::checkpoint::EMBEDDING)
            .map(|i| i.dtype)
        {
            Some(DType::F16) => WeightDtype::F16,
            Some(DType::BF16) => WeightDtype::Bf16,
            _ => WeightDtype::F32,
        }
    });

    let name = dst
        .file_name()
        .with_context(|| format!("{}: not a directory name", dst.display()))?;
    let parent = match dst.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)
        .with_context(|| format!("{}: cannot create directory", parent.display()))?;
    let tmp = parent.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = write_model(&ckpt, &files, cfg.as_ref(), &tmp, dtype).and_then(
        |(tensors, parameters, bytes)| {
            std::fs::rename(&tmp, dst).with_context(|| {
                format!("{}: cannot move the converted model here", dst.display())
            })?;
            Ok(Converted {
                dir: dst.to_owned(),
                tensors,
                parameters,
                bytes,
            })
        },
    );
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

fn write_model(
    ckpt: &Checkpoint,
    files: &ModelFiles,
    cfg: Option<&crate::model::Config>,
    dir: &Path,
    dtype: WeightDtype,
) -> anyhow::Result<(usize, u64, u64)> {
    std::fs::create_dir(dir)
        .with_context(|| format!("{}: cannot create directory", dir.display()))?;
    let weights = dir.join("model.safetensors");
    let (tensors, parameters, bytes) = write_safetensors(ckpt, &weights, dtype.candle())
        .with_context(|| format!("{}: cannot write", weights.display()))?;

    // Keep the source config's extra fields (architectures, token ids) when there is one.
    let mut config = match &files.config {
        Some(path) => serde_json::from_str::<serde_json::Value>(
            &std::fs::read_to_string(path)
                .with_context(|| format!("{}: cannot read", path.display()))?,
        )
        .with_context(|| format!("{}: invalid JSON", path.display()))?,
        None => serde_json::json!({
            "architectures": ["RwkvForCausalLM"],
            "bos_token_id": 0,
            "eos_token_id": 0,
            "tie_word_embeddings": false,
        }),
    };
    let ours = match cfg {
        Some(cfg) => serde_json::to_value(cfg)?,
        None => world_config(ckpt, files.config.is_some()),
    };
    if let (Some(target), Some(fields)) = (config.as_object_mut(), ours.as_object()) {
        for (k, v) in fields {
            target.insert(k.clone(), v.clone());
        }
        if cfg.is_some() {
            target.insert("model_type".into(), "rwkv".into());
        }
        target.insert(
            "torch_dtype".into(),
            match dtype {
                WeightDtype::F16 => "float16",
                WeightDtype::Bf16 => "bfloat16",
                _ => "float32",
            }
            .into(),
        );
    }
    write_synced(
        &dir.join("config.json"),
        serde_json::to_string_pretty(&config)?.as_bytes(),
    )?;

    if ckpt.generation().is_world() {
        let vocab = match &files.world_vocab {
            Some(path) => {
                std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?
            }
            None => crate::tokenizer::WORLD_VOCAB.as_bytes().to_vec(),
        };
        write_synced(&dir.join(WORLD_VOCAB_FILE), &vocab)?;
        return Ok((tensors, parameters, bytes));
    }
    let tokenizer = match &files.tokenizer {
        Some(path) => {
            std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?
        }
        None => crate::tokenizer::NEOX_20B.to_vec(),
    };
    write_synced(&dir.join("tokenizer.json"), &tokenizer)?;
    Ok((tensors, parameters, bytes))
}

/// The fields a World model's `config.json` must have: its generation, and when there was no
/// config to keep, the shapes.
fn world_config(ckpt: &Checkpoint, has_config: bool) -> serde_json::Value {
    let model_type = match ckpt.generation() {
        Generation::V5 => "rwkv5",
        Generation::V6 => "rwkv6",
        _ => "rwkv7",
    };
    let mut fields = serde_json::json!({ "model_type": model_type });
    if !has_config {
        let emb = ckpt
            .info(crate::model::checkpoint::EMBEDDING)
            .map(|i| i.shape.clone())
            .unwrap_or_default();
        let layers = (0..)
            .take_while(|i| ckpt.info(&format!("rwkv.blocks.{i}.ln1.weight")).is_some())
            .count();
        fields["vocab_size"] = emb.first().copied().unwrap_or(0).into();
        fields["hidden_size"] = emb.get(1).copied().unwrap_or(0).into();
        fields["num_hidden_layers"] = layers.into();
    }
    fields
}

fn write_synced(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut file = std::fs::File::create(path)
        .with_context(|| format!("{}: cannot create", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("{}: cannot write", path.display()))
}

/// Writes the safetensors format by hand (8-byte header length, JSON header, raw data) so each
/// tensor is read, converted and written before the next is touched.
fn write_safetensors(
    ckpt: &Checkpoint,
    path: &Path,
    dtype: DType,
) -> anyhow::Result<(usize, u64, u64)> {
    let mut names: Vec<&str> = ckpt.names().collect();
    names.sort_unstable();
    let (tag, width) = match dtype {
        DType::F16 => ("F16", 2),
        DType::BF16 => ("BF16", 2),
        _ => ("F32", 4),
    };
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({ "format": "pt" }));
    let mut offset = 0u64;
    let mut parameters = 0u64;
    for name in &names {
        let shape = ckpt.info(name).map(|i| i.shape.clone()).unwrap_or_default();
        let count: u64 = shape.iter().map(|&d| d as u64).product();
        let end = offset + count * width;
        header.insert(
            (*name).to_owned(),
            serde_json::json!({ "dtype": tag, "shape": shape, "data_offsets": [offset, end] }),
        );
        offset = end;
        parameters += count;
    }
    let mut header = serde_json::to_vec(&serde_json::Value::Object(header))?;
    // The data must start 8-byte aligned; the format pads the header with spaces.
    while header.len() % 8 != 0 {
        header.push(b' ');
    }
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    out.write_all(&(header.len() as u64).to_le_bytes())?;
    out.write_all(&header)?;
    for name in &names {
        let shape = ckpt.info(name).map(|i| i.shape.clone()).unwrap_or_default();
        let tensor = ckpt.tensor(name, &shape, &Device::Cpu)?;
        out.write_all(&tensor_bytes(&tensor, dtype)?)?;
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok((names.len(), parameters, 8 + header.len() as u64 + offset))
}

fn tensor_bytes(tensor: &Tensor, dtype: DType) -> candle_core::Result<Vec<u8>> {
    let flat = tensor.flatten_all()?.to_dtype(dtype)?;
    Ok(match dtype {
        DType::F16 => flat
            .to_vec1::<half::f16>()?
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
        DType::BF16 => flat
            .to_vec1::<half::bf16>()?
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
        _ => flat
            .to_vec1::<f32>()?
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect(),
    })
}
