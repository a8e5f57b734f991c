//! Finding and opening RWKV checkpoints of every generation in every layout users meet: Hugging
//! Face directories (safetensors or PyTorch `.bin`, single or sharded, incl. the remote-code
//! layouts of `RWKV/v5-Eagle-*-HF` and `RWKV/v6-Finch-*-HF`), flash-linear-attention's
//! `fla-hub/rwkv7-*` and raw BlinkDL `.pth` files.
//!
//! Opening reads only headers: names, shapes and dtypes are checked against the config before
//! any tensor data is read, so a bad file fails fast and never drives a large allocation.
//! Names are normalised to the Hugging Face scheme (`rwkv.blocks.N.attention.key.weight`), and
//! fla's tensors to BlinkDL's forms, so the model code deals with one naming only.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::safetensors::{Load, MmapedSafetensors};
use candle_core::{DType, Device, Tensor};

use super::Generation;
use super::config::Config;
use super::error::LoadError;

/// How the tensors of a checkpoint are stored on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Safetensors,
    /// PyTorch zip pickles (`.bin` or `.pth`), read by candle's pickle reader, which interprets
    /// the pickle opcodes itself and never executes code.
    Pickle,
}

/// The weight files of a model, with the config and tokenizer found beside them.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub weights: Vec<PathBuf>,
    pub format: Format,
    pub config: Option<PathBuf>,
    pub tokenizer: Option<PathBuf>,
    /// A World vocab (`rwkv_vocab_v20230424.txt`) beside the weights, as the HF and fla-hub
    /// World repos ship it; used instead of the built-in copy for the World generations.
    pub world_vocab: Option<PathBuf>,
}

/// The World vocab's file name in BlinkDL's, the HF and the fla-hub repos.
pub const WORLD_VOCAB_FILE: &str = "rwkv_vocab_v20230424.txt";

/// Weight files a Hugging Face directory may hold, in the order they are preferred.
const HF_CANDIDATES: [&str; 4] = [
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
];

impl ModelFiles {
    /// Resolves `--model PATH`: a model directory, or a single weights file.
    pub fn locate(path: &Path) -> Result<Self, LoadError> {
        let meta = std::fs::metadata(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => LoadError::NotFound {
                path: path.to_owned(),
            },
            _ => LoadError::Io {
                path: path.to_owned(),
                source,
            },
        })?;
        let (dir, weights) = if meta.is_dir() {
            (path.to_owned(), Self::weights_in_dir(path)?)
        } else {
            let dir = path.parent().unwrap_or(Path::new(".")).to_owned();
            let weights = if path.to_string_lossy().ends_with(".index.json") {
                read_shard_index(path)?
            } else {
                vec![path.to_owned()]
            };
            (dir, weights)
        };
        let format = detect_format(&weights[0])?;
        let beside = |name: &str| {
            let p = dir.join(name);
            p.is_file().then_some(p)
        };
        Ok(Self {
            weights,
            format,
            config: beside("config.json"),
            tokenizer: beside("tokenizer.json").or_else(|| beside("20B_tokenizer.json")),
            world_vocab: beside(WORLD_VOCAB_FILE),
        })
    }

    fn weights_in_dir(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
        for name in HF_CANDIDATES {
            let p = dir.join(name);
            if p.is_file() {
                return if name.ends_with(".index.json") {
                    read_shard_index(&p)
                } else {
                    Ok(vec![p])
                };
            }
        }
        // A raw BlinkDL download is one `.pth` file; more than one is ambiguous.
        let mut pths: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|source| LoadError::Io {
                path: dir.to_owned(),
                source,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "pth") && p.is_file())
            .collect();
        pths.sort();
        match pths.len() {
            0 => Err(LoadError::NoWeights {
                dir: dir.to_owned(),
            }),
            1 => Ok(pths),
            _ => Err(LoadError::AmbiguousWeights {
                dir: dir.to_owned(),
                files: pths,
            }),
        }
    }
}

/// Reads a `*.index.json` shard index and returns its shard files, refusing names that would
/// leave the model directory.
fn read_shard_index(index: &Path) -> Result<Vec<PathBuf>, LoadError> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: HashMap<String, String>,
    }
    let text = std::fs::read_to_string(index).map_err(|source| LoadError::Io {
        path: index.to_owned(),
        source,
    })?;
    let parsed: Index = serde_json::from_str(&text).map_err(|e| LoadError::BadIndex {
        index: index.to_owned(),
        reason: e.to_string(),
    })?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let files: BTreeSet<&String> = parsed.weight_map.values().collect();
    if files.is_empty() {
        return Err(LoadError::BadIndex {
            index: index.to_owned(),
            reason: "its weight_map is empty".into(),
        });
    }
    files
        .into_iter()
        .map(|file| {
            let plain = Path::new(file)
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
            if !plain || file.is_empty() {
                return Err(LoadError::BadShard {
                    index: index.to_owned(),
                    file: file.clone(),
                    problem: "points outside the model directory".into(),
                });
            }
            let path = dir.join(file);
            if !path.is_file() {
                return Err(LoadError::BadShard {
                    index: index.to_owned(),
                    file: file.clone(),
                    problem: "does not exist".into(),
                });
            }
            Ok(path)
        })
        .collect()
}

/// Zip archives (PyTorch's format since 1.6) start with `PK`; a file named like a PyTorch file
/// is read as one too, anything else as safetensors, so that the reader's own check reports
/// what is wrong in the terms of the format the user expects.
fn detect_format(path: &Path) -> Result<Format, LoadError> {
    use std::io::Read;
    let mut magic = [0u8; 2];
    let mut file = std::fs::File::open(path).map_err(|source| LoadError::Io {
        path: path.to_owned(),
        source,
    })?;
    let n = file.read(&mut magic).map_err(|source| LoadError::Io {
        path: path.to_owned(),
        source,
    })?;
    let pytorch_name = path
        .extension()
        .is_some_and(|e| e == "pth" || e == "bin" || e == "pt");
    Ok(if (n == 2 && &magic == b"PK") || pytorch_name {
        Format::Pickle
    } else {
        Format::Safetensors
    })
}

/// What is known of one tensor before its data is read.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub file: usize,
    pub stored_name: String,
    /// The shape after `transform`.
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub transform: Transform,
}

/// How a stored tensor becomes the one the model code reads under its normalised name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    None,
    /// fla stores LoRA factors as `nn.Linear` weights, the transpose of BlinkDL's.
    Transpose,
    /// Row `n` of fla's older fused `[6, C]` token-shift mixers.
    Row(usize),
}

impl Transform {
    pub fn shape(self, stored: &[usize]) -> Vec<usize> {
        match (self, stored) {
            (Transform::Transpose, [a, b]) => vec![*b, *a],
            (Transform::Row(_), [_, rest @ ..]) => rest.to_vec(),
            _ => stored.to_vec(),
        }
    }

    pub fn apply(self, t: Tensor) -> candle_core::Result<Tensor> {
        match self {
            Transform::None => Ok(t),
            Transform::Transpose => t.t()?.contiguous(),
            Transform::Row(n) => t.get(n),
        }
    }
}

/// The BlinkDL names and transforms of a flash-linear-attention RWKV-7 tensor, following fla's
/// `utils/convert_from_rwkv7.py`: LoRA factors are stored transposed (`nn.Linear` weights) and
/// their final bias is the `*0` vector. Checkpoints written before fla 6b673e6b hold the six
/// mixers as one `attn.x_x` [6, C] (rows r, w, k, v, a, g), split as fla's own loader
/// migrates them.
pub fn fla_names(name: &str) -> Result<Vec<(String, Transform)>, String> {
    let one = |n: &str| Ok(vec![(n.to_owned(), Transform::None)]);
    match name {
        "model.embeddings.weight" => return one("emb.weight"),
        "model.norm.weight" => return one("ln_out.weight"),
        "model.norm.bias" => return one("ln_out.bias"),
        "lm_head.weight" => return one("head.weight"),
        _ => {}
    }
    let rest = name
        .strip_prefix("model.layers.")
        .ok_or_else(|| format!("`{name}` is not a flash-linear-attention RWKV-7 name"))?;
    let (layer, leaf) = rest
        .split_once('.')
        .ok_or_else(|| format!("`{name}` has no layer"))?;
    let p = |leaf: &str| format!("blocks.{layer}.{leaf}");
    if leaf == "attn.x_x" {
        return Ok(["r", "w", "k", "v", "a", "g"]
            .iter()
            .enumerate()
            .map(|(row, mix)| (p(&format!("att.x_{mix}")), Transform::Row(row)))
            .collect());
    }
    if let Some((kind, part)) = leaf
        .strip_prefix("attn.")
        .and_then(|lora| lora.split_once("_lora.lora."))
    {
        let (suffix, transform) = match part {
            "0.weight" => ("1", Transform::Transpose),
            "2.weight" => ("2", Transform::Transpose),
            "2.bias" => ("0", Transform::None),
            _ => return Err(format!("unknown LoRA tensor `{name}`")),
        };
        return Ok(vec![(p(&format!("att.{kind}{suffix}")), transform)]);
    }
    let mapped = match leaf {
        "pre_norm.weight" => "ln0.weight".to_owned(),
        "pre_norm.bias" => "ln0.bias".to_owned(),
        "attn_norm.weight" => "ln1.weight".to_owned(),
        "attn_norm.bias" => "ln1.bias".to_owned(),
        "ffn_norm.weight" => "ln2.weight".to_owned(),
        "ffn_norm.bias" => "ln2.bias".to_owned(),
        "attn.r_proj.weight" => "att.receptance.weight".to_owned(),
        "attn.k_proj.weight" => "att.key.weight".to_owned(),
        "attn.v_proj.weight" => "att.value.weight".to_owned(),
        "attn.o_proj.weight" => "att.output.weight".to_owned(),
        "attn.g_norm.weight" => "att.ln_x.weight".to_owned(),
        "attn.g_norm.bias" => "att.ln_x.bias".to_owned(),
        // ffn.x_k, ffn.key.weight, ffn.value.weight keep their names.
        other => match other.strip_prefix("attn.") {
            Some(att) => format!("att.{att}"),
            None => other.to_owned(),
        },
    };
    Ok(vec![(p(&mapped), Transform::None)])
}

enum Reader {
    Safetensors(MmapedSafetensors),
    Pickle(candle_core::pickle::PthTensors),
    /// Tensors made in memory (benchmarks at real shapes with random weights).
    Memory(HashMap<String, Tensor>),
}

/// An opened checkpoint: tensor infos by Hugging Face name, data read on demand.
pub struct Checkpoint {
    pub files: ModelFiles,
    readers: Vec<Reader>,
    tensors: HashMap<String, TensorInfo>,
    generation: Generation,
}

impl Checkpoint {
    pub fn open(files: ModelFiles) -> Result<Self, LoadError> {
        let mut readers = Vec::with_capacity(files.weights.len());
        let mut stored = Vec::new();
        for (index, path) in files.weights.iter().enumerate() {
            let corrupt = |e: candle_core::Error| LoadError::Corrupt {
                path: path.clone(),
                format: match files.format {
                    Format::Safetensors => "safetensors",
                    Format::Pickle => "PyTorch zip",
                },
                reason: error_reason(&e),
            };
            let reader = match files.format {
                Format::Safetensors => {
                    // SAFETY: the mapping is read-only; a model file changed by another
                    // process while loaded is outside what the tool promises to survive.
                    let st = unsafe { MmapedSafetensors::new(path) }.map_err(corrupt)?;
                    for (name, view) in st.tensors() {
                        let dtype = match DType::try_from(view.dtype()) {
                            Ok(d) => d,
                            Err(_) => {
                                return Err(LoadError::BadDtype {
                                    path: path.clone(),
                                    name,
                                    dtype: format!("{:?}", view.dtype()),
                                });
                            }
                        };
                        stored.push(TensorInfo {
                            file: index,
                            shape: view.shape().to_vec(),
                            dtype,
                            stored_name: name,
                            transform: Transform::None,
                        });
                    }
                    Reader::Safetensors(st)
                }
                Format::Pickle => {
                    check_pickle_structure(path)?;
                    let pth = candle_core::pickle::PthTensors::new(path, None).map_err(corrupt)?;
                    check_pickle_sizes(path, pth.tensor_infos())?;
                    for (name, info) in pth.tensor_infos() {
                        stored.push(TensorInfo {
                            file: index,
                            shape: info.layout.dims().to_vec(),
                            dtype: info.dtype,
                            stored_name: name.clone(),
                            transform: Transform::None,
                        });
                    }
                    Reader::Pickle(pth)
                }
            };
            readers.push(reader);
        }
        let first = files.weights[0].clone();
        let tensors = normalise(stored).map_err(|reason| LoadError::Corrupt {
            path: first.clone(),
            format: "flash-linear-attention RWKV-7",
            reason,
        })?;
        let generation = detect_generation(&tensors, &first)?;
        Ok(Self {
            files,
            readers,
            tensors,
            generation,
        })
    }

    /// The generation the tensor names give away.
    pub fn generation(&self) -> Generation {
        self.generation
    }

    /// The vocabulary size: the embedding's rows.
    pub fn vocab_size(&self) -> usize {
        self.tensors
            .get(EMBEDDING)
            .and_then(|t| t.shape.first().copied())
            .unwrap_or(0)
    }

    /// A checkpoint of tensors already in memory, named in either scheme.
    pub fn from_tensors(tensors: HashMap<String, Tensor>) -> Result<Self, LoadError> {
        let stored = tensors
            .iter()
            .map(|(name, t)| TensorInfo {
                file: 0,
                stored_name: name.clone(),
                shape: t.dims().to_vec(),
                dtype: t.dtype(),
                transform: Transform::None,
            })
            .collect();
        let path = PathBuf::from("<memory>");
        let infos = normalise(stored).map_err(|reason| LoadError::Corrupt {
            path: path.clone(),
            format: "flash-linear-attention RWKV-7",
            reason,
        })?;
        let generation = detect_generation(&infos, &path)?;
        Ok(Self {
            files: ModelFiles {
                weights: vec![path],
                format: Format::Safetensors,
                config: None,
                tokenizer: None,
                world_vocab: None,
            },
            readers: vec![Reader::Memory(tensors)],
            tensors: infos,
            generation,
        })
    }

    pub fn info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// The file a tensor lives in, or the first weights file for a missing one.
    pub fn path_of(&self, name: &str) -> &Path {
        let index = self.tensors.get(name).map_or(0, |t| t.file);
        &self.files.weights[index]
    }

    /// The config: `config.json` checked against the tensor shapes, or inferred from them.
    pub fn config(&self) -> Result<Config, LoadError> {
        let inferred = self.infer_config()?;
        let Some(path) = &self.files.config else {
            return Ok(inferred);
        };
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
            path: path.clone(),
            source,
        })?;
        let cfg: Config = serde_json::from_str(&text).map_err(|e| LoadError::BadConfig {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        check_config_generation(path, cfg.model_type.as_deref(), Generation::Rwkv4)?;
        let checks = [
            ("vocab_size", cfg.vocab_size, inferred.vocab_size),
            ("hidden_size", cfg.hidden_size, inferred.hidden_size),
            (
                "num_hidden_layers",
                cfg.num_hidden_layers,
                inferred.num_hidden_layers,
            ),
            (
                "attention_hidden_size",
                cfg.attention_size(),
                inferred.attention_size(),
            ),
            ("intermediate_size", cfg.ffn_size(), inferred.ffn_size()),
        ];
        for (field, config_value, weights_value) in checks {
            if config_value != weights_value {
                return Err(LoadError::ConfigMismatch {
                    config: path.clone(),
                    weights: self.files.weights[0].clone(),
                    field,
                    config_value,
                    weights_value,
                });
            }
        }
        Ok(cfg)
    }

    fn infer_config(&self) -> Result<Config, LoadError> {
        let dims = |name: &str, rank: usize| -> Result<Vec<usize>, LoadError> {
            let info = self
                .tensors
                .get(name)
                .ok_or_else(|| LoadError::MissingTensor {
                    path: self.path_of(name).to_owned(),
                    name: name.to_owned(),
                })?;
            if info.shape.len() != rank || info.shape.contains(&0) {
                return Err(LoadError::BadRank {
                    path: self.path_of(name).to_owned(),
                    name: name.to_owned(),
                    rank,
                    found: info.shape.clone(),
                });
            }
            Ok(info.shape.clone())
        };
        let emb = dims(EMBEDDING, 2)?;
        let layers = self
            .tensors
            .keys()
            .filter_map(|n| {
                n.strip_prefix("rwkv.blocks.")?
                    .strip_suffix(".ln1.weight")?
                    .parse::<usize>()
                    .ok()
            })
            .max()
            .map_or(0, |n| n + 1);
        if layers == 0 {
            return Err(LoadError::MissingTensor {
                path: self.files.weights[0].clone(),
                name: "rwkv.blocks.0.ln1.weight".into(),
            });
        }
        let att = dims("rwkv.blocks.0.attention.key.weight", 2)?;
        let ffn = dims("rwkv.blocks.0.feed_forward.key.weight", 2)?;
        let mut cfg = Config::new(emb[0], emb[1], layers);
        cfg.attention_hidden_size = Some(att[0]);
        cfg.intermediate_size = Some(ffn[0]);
        Ok(cfg)
    }

    /// Reads a tensor after checking its shape, as f32 on `device`.
    ///
    /// Vectors are stored as `[n]` or `[1, 1, n]` depending on the layout; `shape` of one
    /// element accepts any of those forms and returns `[n]`.
    pub fn tensor(
        &self,
        name: &str,
        shape: &[usize],
        device: &Device,
    ) -> Result<Tensor, LoadError> {
        let path = self.path_of(name).to_owned();
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| LoadError::MissingTensor {
                path: path.clone(),
                name: name.to_owned(),
            })?;
        let fits = if shape.len() == 1 {
            info.shape.iter().product::<usize>() == shape[0]
                && info.shape.iter().rev().skip(1).all(|&d| d == 1)
        } else {
            info.shape == shape
        };
        if !fits {
            return Err(LoadError::BadShape {
                path,
                name: name.to_owned(),
                expected: shape.to_vec(),
                found: info.shape.clone(),
            });
        }
        if !matches!(
            info.dtype,
            DType::F32 | DType::F16 | DType::BF16 | DType::F64
        ) {
            return Err(LoadError::BadDtype {
                path,
                name: name.to_owned(),
                dtype: format!("{:?}", info.dtype),
            });
        }
        let read = match &self.readers[info.file] {
            Reader::Safetensors(st) => st.get(&info.stored_name).and_then(|view| {
                let tensor = view.load(&Device::Cpu)?;
                release_pages(view.data());
                Ok(tensor)
            }),
            Reader::Pickle(pth) => pth.get(&info.stored_name).and_then(|t| {
                t.ok_or_else(|| candle_core::Error::Msg("tensor vanished from the archive".into()))
            }),
            Reader::Memory(map) => map
                .get(&info.stored_name)
                .cloned()
                .ok_or_else(|| candle_core::Error::Msg("tensor vanished".into())),
        };
        let corrupt = |e: candle_core::Error| LoadError::Corrupt {
            path: path.clone(),
            format: match self.files.format {
                Format::Safetensors => "safetensors",
                Format::Pickle => "PyTorch zip",
            },
            reason: format!("tensor `{name}`: {}", error_reason(&e)),
        };
        read.and_then(|t| {
            info.transform
                .apply(t)?
                .reshape(shape)?
                .to_dtype(DType::F32)?
                .to_device(device)
        })
        .map_err(corrupt)
    }
}

/// candle's pickle reader only interprets opcodes into plain values (a `GLOBAL os system` is a
/// name, a `REDUCE` a pair of values; nothing is imported or called), but its tensor
/// extraction indexes argument tuples without checking their length, so a hostile pickle
/// would panic it. The state dict is read here first with candle's own reader and every
/// tensor record candle would take apart is checked to have the parts it expects.
fn check_pickle_structure(path: &Path) -> Result<(), LoadError> {
    use candle_core::pickle::{Object, Stack};
    let corrupt = |reason: String| LoadError::Corrupt {
        path: path.to_owned(),
        format: "PyTorch zip",
        reason,
    };
    let file = std::fs::File::open(path).map_err(|source| LoadError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mut zip =
        zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| corrupt(e.to_string()))?;
    let names = zip
        .file_names()
        .map(|n| n.map(|n| n.into_owned()))
        .collect::<Result<Vec<String>, _>>()
        .map_err(|e| corrupt(e.to_string()))?;
    let pickles = names.into_iter().filter(|n| n.ends_with("data.pkl"));
    for pickle in pickles {
        let entry = zip.by_name(&pickle).map_err(|e| corrupt(e.to_string()))?;
        let mut stack = Stack::empty();
        stack
            .read_loop(&mut std::io::BufReader::new(entry))
            .and_then(|()| stack.finalize())
            .map_err(|e| corrupt(format!("{pickle}: {}", error_reason(&e))))
            .and_then(|obj| {
                let obj = match obj {
                    Object::Build { args, .. } => *args,
                    obj => obj,
                };
                let Object::Dict(entries) = obj else {
                    return Ok(());
                };
                entries.iter().try_for_each(|(name, value)| {
                    if tensor_record_is_complete(value) {
                        Ok(())
                    } else {
                        Err(corrupt(format!(
                            "{pickle}: the record of tensor {name:?} is malformed"
                        )))
                    }
                })
            })?;
    }
    Ok(())
}

/// Mirrors the tuple indexing of candle's `Object::into_tensor_info` and `rebuild_args`.
fn tensor_record_is_complete(value: &candle_core::pickle::Object) -> bool {
    use candle_core::pickle::Object;
    let class = |o: &Object, module: &str, name: &str| matches!(o, Object::Class { module_name, class_name } if module_name == module && class_name == name);
    let Object::Reduce { callable, args } = value else {
        return true;
    };
    let (callable, args): (&Object, &Object) =
        if class(callable, "torch._tensor", "_rebuild_from_type_v2") {
            match &**args {
                Object::Tuple(a) if a.len() >= 3 => (&a[0], &a[2]),
                Object::Tuple(_) => return false,
                _ => return true,
            }
        } else if class(callable, "torch._utils", "_rebuild_parameter") {
            match &**args {
                Object::Tuple(a) if a.is_empty() => return false,
                Object::Tuple(a) => match &a[0] {
                    Object::Reduce { callable, args } => (callable, args),
                    _ => return true,
                },
                _ => return true,
            }
        } else {
            (callable, args)
        };
    if !class(callable, "torch._utils", "_rebuild_tensor_v2") {
        return true;
    }
    let Object::Tuple(args) = args else {
        return true;
    };
    if args.len() < 4 {
        return false;
    }
    // The storage offset is multiplied by the element size; keep it far from overflowing.
    let offset_ok = match &args[1] {
        Object::Int(o) => *o >= 0,
        Object::Long(o) => (0..1 << 40).contains(o),
        _ => true,
    };
    let storage_ok = match &args[0] {
        Object::PersistentLoad(id) => match &**id {
            Object::Tuple(parts) => parts.len() >= 5,
            _ => true,
        },
        _ => true,
    };
    offset_ok && storage_ok
}

/// candle's `PthTensors::get` allocates the shape a pickle declares before reading the data,
/// so a file declaring a huge tensor would exhaust memory. Every tensor's bytes must lie
/// within its zip entry and within the file itself (an entry's declared size can lie too).
fn check_pickle_sizes(
    path: &Path,
    infos: &HashMap<String, candle_core::pickle::TensorInfo>,
) -> Result<(), LoadError> {
    let corrupt = |reason: String| LoadError::Corrupt {
        path: path.to_owned(),
        format: "PyTorch zip",
        reason,
    };
    let io = |source| LoadError::Io {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let file_len = file.metadata().map_err(io)?.len();
    let mut zip =
        zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| corrupt(e.to_string()))?;
    for (name, info) in infos {
        let entry = zip
            .by_name(&info.path)
            .map_err(|e| corrupt(format!("tensor `{name}`: {e}")))?;
        let available = entry.size().min(file_len);
        let needed = info
            .layout
            .dims()
            .iter()
            .try_fold(info.dtype.size_in_bytes(), |n, &d| n.checked_mul(d))
            .and_then(|n| n.checked_add(info.layout.start_offset()))
            .and_then(|n| u64::try_from(n).ok());
        match needed {
            Some(needed) if needed <= available => {}
            _ => {
                return Err(corrupt(format!(
                    "tensor `{name}` declares shape {:?} ({}), more than the {available} bytes stored for it",
                    info.layout.dims(),
                    needed.map_or_else(
                        || "an overflowing size".to_owned(),
                        |n| format!("{n} bytes")
                    ),
                )));
            }
        }
    }
    Ok(())
}

/// Drops the mapped file pages of a tensor once they have been copied into its own memory, so
/// that loading holds the weights once, not once in the tensors and again in the mapping.
#[cfg(unix)]
fn release_pages(bytes: &[u8]) {
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    let start = bytes.as_ptr() as usize;
    let begin = start - start % page.max(1);
    let len = start + bytes.len() - begin;
    // SAFETY: the range lies in the read-only mapping of the safetensors file, which stays
    // mapped. MADV_DONTNEED only drops its resident pages; touching them again reads them
    // back from the file, so every reference into the mapping still sees the same bytes.
    unsafe { libc::madvise(begin as *mut libc::c_void, len, libc::MADV_DONTNEED) };
}

#[cfg(not(unix))]
fn release_pages(_bytes: &[u8]) {}

/// candle errors can carry a backtrace in their `Display`; users get the first line only.
fn error_reason(e: &candle_core::Error) -> String {
    let text = e.to_string();
    text.lines().next().unwrap_or_default().trim().to_owned()
}

pub const EMBEDDING: &str = "rwkv.embeddings.weight";

/// Maps a raw BlinkDL name (`blocks.3.att.time_mix_k`) to its Hugging Face name
/// (`rwkv.blocks.3.attention.time_mix_key`); Hugging Face names pass through unchanged.
pub fn hf_name(name: &str) -> String {
    if name.starts_with("rwkv.") || name == "head.weight" {
        return name.to_owned();
    }
    if let Some(rest) = name.strip_prefix("emb.") {
        return format!("rwkv.embeddings.{rest}");
    }
    if let Some(rest) = name.strip_prefix("ln_out.") {
        return format!("rwkv.ln_out.{rest}");
    }
    let Some(rest) = name.strip_prefix("blocks.") else {
        return name.to_owned();
    };
    let rest = rest
        .replacen(".ln0.", ".pre_ln.", 1)
        .replacen(".att.", ".attention.", 1)
        .replacen(".ffn.", ".feed_forward.", 1);
    let rest = match rest.rsplit_once(".time_mix_") {
        Some((head, "k")) => format!("{head}.time_mix_key"),
        Some((head, "v")) => format!("{head}.time_mix_value"),
        Some((head, "r")) => format!("{head}.time_mix_receptance"),
        // v5.2's gate mix, named as the HF remote-code layout of v5 names it.
        Some((head, "g")) => format!("{head}.time_mix_gate"),
        _ => rest,
    };
    format!("rwkv.blocks.{rest}")
}

/// Maps stored names to normalised ones: fla's (`model.layers.N.attn...`) to BlinkDL's with
/// their transforms, then every name to the Hugging Face scheme.
fn normalise(stored: Vec<TensorInfo>) -> Result<HashMap<String, TensorInfo>, String> {
    // Llama-style transformers also name their layers `model.layers.N`; fla's RWKV-7 has
    // `model.embeddings` and `attn` (not `self_attn`) blocks.
    let fla = stored.iter().any(|t| {
        t.stored_name == "model.embeddings.weight"
            || (t.stored_name.starts_with("model.layers.") && t.stored_name.contains(".attn."))
    });
    let mut out = HashMap::with_capacity(stored.len());
    for info in stored {
        if !fla {
            out.insert(hf_name(&info.stored_name), info);
            continue;
        }
        for (name, transform) in fla_names(&info.stored_name)? {
            let shape = transform.shape(&info.shape);
            out.insert(
                hf_name(&name),
                TensorInfo {
                    shape,
                    transform,
                    ..info.clone()
                },
            );
        }
    }
    Ok(out)
}

/// Tells the generation by the tensors only it has, and refuses what is not a model
/// rwkv-chat runs with a message that says what it looks like.
fn detect_generation(
    tensors: &HashMap<String, TensorInfo>,
    path: &Path,
) -> Result<Generation, LoadError> {
    let has = |leaf: &str| tensors.contains_key(&format!("rwkv.blocks.0.attention.{leaf}"));
    if tensors
        .keys()
        .any(|n| n.contains(".rosa") || n.contains("rosa_"))
    {
        return Err(LoadError::UnsupportedVersion {
            path: path.to_owned(),
            version: "RWKV-8 (Heron, with ROSA)",
        });
    }
    if !tensors.contains_key(EMBEDDING) {
        return Err(LoadError::NotRwkv {
            path: path.to_owned(),
            looks_like: looks_like(tensors.keys().map(String::as_str)),
        });
    }
    Ok(if has("r_k") || has("w0") || has("x_r") {
        Generation::V7
    } else if has("time_maa_x") || has("time_maa_w1") {
        Generation::V6
    } else if has("time_faaaa") || has("ln_x.weight") {
        Generation::V5
    } else {
        Generation::Rwkv4
    })
}

/// What a checkpoint without RWKV's embedding seems to be, by the names other families use.
fn looks_like<'a>(names: impl Iterator<Item = &'a str>) -> &'static str {
    let mut found = "no language model rwkv-chat knows";
    for name in names {
        if name.contains("embed_tokens") || name.contains("self_attn") {
            return "a transformer (Llama-style)";
        }
        if name.starts_with("transformer.wte") || name.contains(".attn.c_attn") {
            return "a transformer (GPT-2-style)";
        }
        if name.starts_with("gpt_neox.") {
            return "a transformer (GPT-NeoX)";
        }
        if name.contains("mixer.") || name.contains("A_log") {
            found = "a state-space model (Mamba-style)";
        }
    }
    found
}

/// Refuses a `config.json` whose `model_type` names another generation than the weights.
pub(super) fn check_config_generation(
    path: &Path,
    model_type: Option<&str>,
    weights: Generation,
) -> Result<(), LoadError> {
    let says = match model_type {
        Some("rwkv") => Generation::Rwkv4,
        Some("rwkv5") => Generation::V5,
        Some("rwkv6") => Generation::V6,
        Some("rwkv7") => Generation::V7,
        _ => return Ok(()),
    };
    if says != weights {
        return Err(LoadError::GenerationMismatch {
            config: path.to_owned(),
            says,
            weights,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_names_map_to_hugging_face_names() {
        let cases = [
            ("emb.weight", "rwkv.embeddings.weight"),
            ("blocks.0.ln0.bias", "rwkv.blocks.0.pre_ln.bias"),
            ("blocks.1.ln2.weight", "rwkv.blocks.1.ln2.weight"),
            (
                "blocks.3.att.time_mix_k",
                "rwkv.blocks.3.attention.time_mix_key",
            ),
            (
                "blocks.3.ffn.time_mix_r",
                "rwkv.blocks.3.feed_forward.time_mix_receptance",
            ),
            (
                "blocks.0.att.output.weight",
                "rwkv.blocks.0.attention.output.weight",
            ),
            ("ln_out.weight", "rwkv.ln_out.weight"),
            ("head.weight", "head.weight"),
            (
                "rwkv.blocks.0.attention.key.weight",
                "rwkv.blocks.0.attention.key.weight",
            ),
        ];
        for (raw, hf) in cases {
            assert_eq!(hf_name(raw), hf, "{raw}");
        }
    }

    fn generation_of(names: &[&str]) -> Result<Generation, LoadError> {
        let infos = names
            .iter()
            .map(|n| TensorInfo {
                file: 0,
                stored_name: n.to_string(),
                shape: vec![4],
                dtype: DType::F32,
                transform: Transform::None,
            })
            .collect();
        detect_generation(&normalise(infos).unwrap(), Path::new("m.pth"))
    }

    #[test]
    fn generations_are_told_by_their_tensors() {
        let cases = [
            (
                &["emb.weight", "blocks.0.att.time_first"][..],
                Generation::Rwkv4,
            ),
            (&["emb.weight", "blocks.0.att.time_faaaa"], Generation::V5),
            (
                &[
                    "emb.weight",
                    "blocks.0.att.time_maa_x",
                    "blocks.0.att.time_faaaa",
                ],
                Generation::V6,
            ),
            (
                &["emb.weight", "blocks.0.att.r_k", "blocks.0.att.w0"],
                Generation::V7,
            ),
            (
                &["model.embeddings.weight", "model.layers.0.attn.r_k"],
                Generation::V7,
            ),
        ];
        for (names, want) in cases {
            assert_eq!(generation_of(names).unwrap(), want, "{names:?}");
        }
    }

    #[test]
    fn what_is_not_a_model_rwkv_chat_runs_is_named() {
        let e = generation_of(&["emb.weight", "blocks.0.rosa.emb"]).unwrap_err();
        assert!(e.to_string().contains("RWKV-8"), "{e}");
        let e = generation_of(&[
            "model.embed_tokens.weight",
            "model.layers.0.self_attn.q_proj.weight",
        ])
        .unwrap_err();
        assert!(e.to_string().contains("Llama-style"), "{e}");
    }

    #[test]
    fn fla_names_map_to_blinkdl_forms() {
        assert_eq!(
            fla_names("model.layers.2.attn.w_lora.lora.0.weight").unwrap(),
            vec![("blocks.2.att.w1".to_owned(), Transform::Transpose)]
        );
        assert_eq!(
            fla_names("model.layers.0.attn.x_x").unwrap()[4],
            ("blocks.0.att.x_a".to_owned(), Transform::Row(4))
        );
        assert!(fla_names("model.layers.0.attn.w_lora.lora.1.weight").is_err());
    }
}
