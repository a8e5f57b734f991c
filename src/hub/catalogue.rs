//! The RWKV models a user can pick from without knowing the hub: what each is, how much disk
//! and memory it needs, and which one suits this machine.
//!
//! Sizes are computed from the architecture rather than copied from the hub, so the numbers stay
//! consistent with each other and with what the loader allocates: the weights are
//! `2 * vocab * hidden` (embedding and head) plus, per block, `13 * hidden^2` for RWKV-4, v5
//! and v6 (v5/v6: five time-mix projections, a 3.5x channel mix and its receptance) and
//! `12 * hidden^2` for v7 (four projections, a 4x channel mix without receptance), plus the
//! vectors and LoRA factors, which are small enough to be counted as `11 * hidden`.

use crate::model::{Generation, WeightDtype};

/// The GPT-NeoX vocabulary every RWKV-4 model uses.
const NEOX_VOCAB: u64 = 50277;
/// The World vocabulary of v5, v6 and v7.
const WORLD_VOCAB: u64 = 65536;

/// Memory the process needs besides the weights: tokenizer, prompt-chunk activations, logits
/// and the allocator's slack. Measured on the 169M model it is well under this.
const RUNTIME_OVERHEAD: u64 = 512 * 1024 * 1024;

/// Which family a model belongs to, which decides what it is good for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Raven: Pile models fine-tuned on instructions and chat (`Bob:`/`Alice:` turns).
    Raven,
    /// Pile: base models that continue text; no chat tuning.
    Pile,
    /// World: v5/v6/v7 trained on 100+ languages with chat data (`User:`/`Assistant:`).
    World,
    /// G1: v7 models trained further on reasoning and instruction data; they can think first.
    G1,
}

/// How the hub repository stores the weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// A transformers repo (`RWKV/...`): `config.json`, `tokenizer.json` and f32 PyTorch
    /// `.bin` shards.
    HuggingFace,
    /// A BlinkDL repo: one bf16 `.pth` per model and version, no config or tokenizer. The repo
    /// holds several files, so the user names one (`BlinkDL/rwkv-4-raven/FILE.pth`).
    RawPth,
    /// The transformers remote-code repos of v5/v6 (`RWKV/v6-Finch-*-HF`): `config.json` and
    /// bf16 `pytorch_model.bin`.
    HuggingFaceWorld,
    /// flash-linear-attention's v7 repos (`fla-hub/rwkv7-*`): `config.json` and
    /// `model.safetensors`, counted as f32.
    Fla,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatalogueEntry {
    pub repo: &'static str,
    pub generation: Generation,
    pub family: Family,
    pub layout: Layout,
    /// Size name used in the model names (`1b5`, `14b`).
    pub size: &'static str,
    pub layers: u64,
    pub hidden: u64,
    /// Tokens the model was trained to attend over; an RNN runs past it, with fading quality.
    pub context_length: u64,
    /// Bytes per weight in the repo's files (`Layout` decides, but an fla-hub upload may be
    /// f32 or bf16).
    pub file_bytes_per_weight: u64,
    pub licence: &'static str,
    pub summary: &'static str,
}

/// Bytes per weight in a layout's files: f32 for the RWKV-4 transformers and (mostly) the fla
/// repos, bf16 for the BlinkDL `.pth` files and the v5/v6 remote-code repos.
const fn file_bytes(layout: Layout) -> u64 {
    match layout {
        Layout::HuggingFace | Layout::Fla => 4,
        Layout::RawPth | Layout::HuggingFaceWorld => 2,
    }
}

impl CatalogueEntry {
    pub fn parameters(&self) -> u64 {
        let h = self.hidden;
        let (vocab, per_block) = match self.generation {
            Generation::Rwkv4 => (NEOX_VOCAB, 13),
            Generation::V5 | Generation::V6 => (WORLD_VOCAB, 13),
            Generation::V7 => (WORLD_VOCAB, 12),
        };
        2 * vocab * h + self.layers * (per_block * h * h + 11 * h) + 4 * h
    }

    /// Bytes the weights take in the hub repo.
    pub fn download_bytes(&self) -> u64 {
        self.parameters() * self.file_bytes_per_weight
    }

    /// True when the repo is one model the app can download without a file name.
    pub fn is_single_model(&self) -> bool {
        self.layout != Layout::RawPth
    }

    /// Memory needed to run the model with weights held in `dtype`.
    pub fn ram_bytes(&self, dtype: WeightDtype) -> u64 {
        dtype.bytes(self.parameters()) + RUNTIME_OVERHEAD
    }
}

const fn raven(repo: &'static str, size: &'static str, layers: u64, hidden: u64) -> CatalogueEntry {
    CatalogueEntry {
        repo,
        generation: Generation::Rwkv4,
        family: Family::Raven,
        layout: Layout::HuggingFace,
        size,
        layers,
        hidden,
        context_length: if hidden >= 4096 { 8192 } else { 4096 },
        file_bytes_per_weight: file_bytes(Layout::HuggingFace),
        licence: "Apache-2.0",
        summary: "Raven chat/instruction model",
    }
}

const fn pile(repo: &'static str, size: &'static str, layers: u64, hidden: u64) -> CatalogueEntry {
    CatalogueEntry {
        repo,
        generation: Generation::Rwkv4,
        family: Family::Pile,
        layout: Layout::HuggingFace,
        size,
        layers,
        hidden,
        context_length: 1024,
        file_bytes_per_weight: file_bytes(Layout::HuggingFace),
        licence: "Apache-2.0",
        summary: "Pile base model (continues text, not tuned for chat)",
    }
}

const fn blinkdl(
    repo: &'static str,
    family: Family,
    size: &'static str,
    layers: u64,
    hidden: u64,
) -> CatalogueEntry {
    CatalogueEntry {
        repo,
        generation: Generation::Rwkv4,
        family,
        layout: Layout::RawPth,
        size,
        layers,
        hidden,
        context_length: match family {
            Family::Pile => 1024,
            _ => 8192,
        },
        file_bytes_per_weight: file_bytes(Layout::RawPth),
        licence: "Apache-2.0",
        summary: match family {
            Family::Raven => {
                "raw BlinkDL .pth files of every Raven size and version (name one file)"
            }
            _ => "raw BlinkDL .pth files (name one file)",
        },
    }
}

/// A World or G1 model of the v5/v6/v7 generations.
const fn world(
    repo: &'static str,
    generation: Generation,
    family: Family,
    layout: Layout,
    size: &'static str,
    (layers, hidden): (u64, u64),
    summary: &'static str,
) -> CatalogueEntry {
    CatalogueEntry {
        repo,
        generation,
        family,
        layout,
        size,
        layers,
        hidden,
        context_length: 4096,
        file_bytes_per_weight: file_bytes(layout),
        licence: "Apache-2.0",
        summary,
    }
}

use Family::{G1, World};
use Generation::{V5, V6, V7};
use Layout::{Fla, HuggingFaceWorld, RawPth};

/// Every model the menu offers, smallest first within each family; the World models first.
pub const CATALOGUE: &[CatalogueEntry] = &[
    // The names and file formats of fla-hub's uploads: 191M, 1.5B and 2.9B are f32 (2.9B in
    // three shards), 0.4B is bf16.
    world(
        "fla-hub/rwkv7-191M-world",
        V7,
        World,
        Fla,
        "0.1b",
        (12, 768),
        "RWKV-7 World chat model",
    ),
    CatalogueEntry {
        file_bytes_per_weight: 2,
        ..world(
            "fla-hub/rwkv7-0.4B-world",
            V7,
            World,
            Fla,
            "0.4b",
            (24, 1024),
            "RWKV-7 World chat model",
        )
    },
    world(
        "fla-hub/rwkv7-1.5B-world",
        V7,
        World,
        Fla,
        "1.5b",
        (24, 2048),
        "RWKV-7 World chat model",
    ),
    world(
        "fla-hub/rwkv7-2.9B-world",
        V7,
        World,
        Fla,
        "2.9b",
        (32, 2560),
        "RWKV-7 World chat model",
    ),
    // The raw repos hold every size; the numbers shown are for the largest.
    world(
        "BlinkDL/rwkv7-g1",
        V7,
        G1,
        RawPth,
        "0.1b-2.9b",
        (32, 2560),
        "RWKV-7 G1 reasoning/chat .pth files of every size (name one file)",
    ),
    world(
        "BlinkDL/rwkv-7-world",
        V7,
        World,
        RawPth,
        "0.1b-2.9b",
        (32, 2560),
        "RWKV-7 World .pth files of every size (name one file)",
    ),
    world(
        "RWKV/v6-Finch-1B6-HF",
        V6,
        World,
        HuggingFaceWorld,
        "1.6b",
        (24, 2048),
        "RWKV-6 Finch World chat model",
    ),
    world(
        "RWKV/v6-Finch-3B-HF",
        V6,
        World,
        HuggingFaceWorld,
        "3b",
        (32, 2560),
        "RWKV-6 Finch World chat model",
    ),
    world(
        "RWKV/v6-Finch-7B-HF",
        V6,
        World,
        HuggingFaceWorld,
        "7b",
        (32, 4096),
        "RWKV-6 Finch World chat model",
    ),
    world(
        "RWKV/v6-Finch-14B-HF",
        V6,
        World,
        HuggingFaceWorld,
        "14b",
        (61, 4096),
        "RWKV-6 Finch World chat model",
    ),
    world(
        "BlinkDL/rwkv-6-world",
        V6,
        World,
        RawPth,
        "1.6b-14b",
        (61, 4096),
        "RWKV-6 World .pth files of every size (name one file)",
    ),
    world(
        "RWKV/v5-Eagle-7B-HF",
        V5,
        World,
        HuggingFaceWorld,
        "7b",
        (32, 4096),
        "RWKV-5 Eagle World chat model",
    ),
    world(
        "BlinkDL/rwkv-5-world",
        V5,
        World,
        RawPth,
        "0.4b-7b",
        (32, 4096),
        "RWKV-5 World .pth files of every size (name one file)",
    ),
    raven("RWKV/rwkv-raven-1b5", "1b5", 24, 2048),
    raven("RWKV/rwkv-raven-3b", "3b", 32, 2560),
    raven("RWKV/rwkv-raven-7b", "7b", 32, 4096),
    raven("RWKV/rwkv-raven-14b", "14b", 40, 5120),
    pile("RWKV/rwkv-4-169m-pile", "169m", 12, 768),
    pile("RWKV/rwkv-4-430m-pile", "430m", 24, 1024),
    pile("RWKV/rwkv-4-1b5-pile", "1b5", 24, 2048),
    pile("RWKV/rwkv-4-3b-pile", "3b", 32, 2560),
    pile("RWKV/rwkv-4-7b-pile", "7b", 32, 4096),
    pile("RWKV/rwkv-4-14b-pile", "14b", 40, 5120),
    // The raw Raven repo holds every size; the numbers shown are for its largest (14B).
    blinkdl("BlinkDL/rwkv-4-raven", Family::Raven, "1b5-14b", 40, 5120),
    blinkdl("BlinkDL/rwkv-4-pile-169m", Family::Pile, "169m", 12, 768),
    blinkdl("BlinkDL/rwkv-4-pile-430m", Family::Pile, "430m", 24, 1024),
    blinkdl("BlinkDL/rwkv-4-pile-1b5", Family::Pile, "1b5", 24, 2048),
    blinkdl("BlinkDL/rwkv-4-pile-3b", Family::Pile, "3b", 32, 2560),
    blinkdl("BlinkDL/rwkv-4-pile-7b", Family::Pile, "7b", 32, 4096),
    blinkdl("BlinkDL/rwkv-4-pile-14b", Family::Pile, "14b", 40, 5120),
];

/// The catalogue entry of a repo id, compared without case as the hub does.
pub fn find(repo: &str) -> Option<&'static CatalogueEntry> {
    CATALOGUE.iter().find(|e| e.repo.eq_ignore_ascii_case(repo))
}

/// The chat model the first run offers for `total_memory` bytes in `dtype`, keeping 40% of
/// the memory for the system and other programs: the largest RWKV-7 World model that fits
/// (the newest generation is the better model size for size), unless an RWKV-6 World model
/// that fits has more than twice its parameters; the smallest RWKV-7 World model when none
/// fits. Only repos that download without a file name are offered.
pub fn recommend_chat_model(total_memory: u64, dtype: WeightDtype) -> &'static CatalogueEntry {
    let budget = total_memory / 10 * 6;
    let chat = |generation: Generation| {
        CATALOGUE.iter().filter(move |e| {
            e.generation == generation && e.family == Family::World && e.is_single_model()
        })
    };
    let largest_fitting = |generation| {
        chat(generation)
            .filter(|e| e.ram_bytes(dtype) <= budget)
            .max_by_key(|e| e.parameters())
    };
    match (largest_fitting(V7), largest_fitting(V6)) {
        (Some(v7), Some(v6)) if v6.parameters() > 2 * v7.parameters() => v6,
        (Some(v7), _) => v7,
        _ => chat(V7)
            .min_by_key(|e| e.parameters())
            .unwrap_or(&CATALOGUE[0]),
    }
}

/// Total memory of this machine in bytes, from `/proc/meminfo`.
pub fn total_memory() -> std::io::Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    parse_meminfo(&text).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "/proc/meminfo has no MemTotal line",
        )
    })
}

/// The `MemTotal:  16318480 kB` line of `/proc/meminfo`, in bytes.
pub fn parse_meminfo(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line["MemTotal:".len()..].split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    let scale = match words.next() {
        Some("kB") => 1024,
        None => 1,
        Some(_) => return None,
    };
    Some(value * scale)
}

/// The model the first run offers: [`recommend_chat_model`] for this machine's memory at f16,
/// the dtype the chat runs large models in. Without `/proc/meminfo` the smallest v7 World.
pub fn recommended_chat_model() -> &'static CatalogueEntry {
    recommend_chat_model(total_memory().unwrap_or(0), WeightDtype::F16)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GB: u64 = 1_000_000_000;

    #[test]
    fn parameter_counts_match_the_model_names() {
        let expect = [
            ("RWKV/rwkv-4-169m-pile", 169),
            ("RWKV/rwkv-4-430m-pile", 430),
            ("RWKV/rwkv-raven-1b5", 1515),
            ("RWKV/rwkv-raven-3b", 2985),
            ("RWKV/rwkv-raven-7b", 7393),
            ("RWKV/rwkv-raven-14b", 14145),
        ];
        for (repo, millions) in expect {
            let got = find(repo).unwrap().parameters() / 1_000_000;
            assert!(got.abs_diff(millions) <= 3, "{repo}: {got}M");
        }
    }

    /// The sizes of fla-hub's files as its trees list them (1.5B: one 6.11 GB f32 file;
    /// 0.4B: 902 MB, bf16; 2.9B: shards of 4.97 + 4.96 + 1.53 GB, f32).
    #[test]
    fn fla_hub_downloads_are_the_size_of_their_files() {
        for (repo, gb_tenths) in [
            ("fla-hub/rwkv7-0.4B-world", 9),
            ("fla-hub/rwkv7-1.5B-world", 61),
            ("fla-hub/rwkv7-2.9B-world", 115),
        ] {
            let got = find(repo).unwrap().download_bytes() / (GB / 10);
            assert!(got.abs_diff(gb_tenths) <= 2, "{repo}: {got} tenths of a GB");
        }
    }

    #[test]
    fn the_1b5_download_is_about_six_gigabytes() {
        let e = find("rwkv/RWKV-raven-1b5").unwrap();
        assert_eq!(e.download_bytes() / (GB / 10), 60);
        assert!(e.ram_bytes(WeightDtype::F16) < e.ram_bytes(WeightDtype::F32));
    }

    #[test]
    fn world_parameter_counts_match_the_model_names() {
        let expect = [
            ("fla-hub/rwkv7-191M-world", 191),
            ("fla-hub/rwkv7-0.4B-world", 450),
            ("fla-hub/rwkv7-1.5B-world", 1527),
            ("fla-hub/rwkv7-2.9B-world", 2947),
            ("RWKV/v6-Finch-1B6-HF", 1600),
            ("RWKV/v6-Finch-3B-HF", 3100),
            ("RWKV/v6-Finch-7B-HF", 7636),
            ("RWKV/v6-Finch-14B-HF", 13850),
        ];
        for (repo, millions) in expect {
            let got = find(repo).unwrap().parameters() / 1_000_000;
            // Within 4%: the LoRA factors are counted roughly.
            assert!(
                got.abs_diff(millions) * 100 <= 4 * millions,
                "{repo}: {got}M, not about {millions}M"
            );
        }
    }

    #[test]
    fn the_recommendation_is_a_world_chat_model_that_grows_with_memory() {
        let pick = |gb: u64| recommend_chat_model(gb * GB, WeightDtype::F16).repo;
        assert_eq!(pick(1), "fla-hub/rwkv7-191M-world");
        assert_eq!(pick(4), "fla-hub/rwkv7-0.4B-world");
        assert_eq!(pick(8), "fla-hub/rwkv7-1.5B-world");
        assert_eq!(pick(24), "fla-hub/rwkv7-2.9B-world");
        assert_eq!(pick(32), "RWKV/v6-Finch-7B-HF");
        assert_eq!(pick(64), "RWKV/v6-Finch-14B-HF");
        for gb in [1, 2, 8, 24, 32, 64, 512] {
            let e = recommend_chat_model(gb * GB, WeightDtype::F16);
            assert!(
                e.family == Family::World && e.is_single_model(),
                "{}",
                e.repo
            );
        }
    }

    #[test]
    fn meminfo_is_read_in_kilobytes() {
        let text = "MemTotal:       16318480 kB\nMemFree:         1000 kB\n";
        assert_eq!(parse_meminfo(text), Some(16318480 * 1024));
        assert_eq!(parse_meminfo("MemFree: 1 kB\n"), None);
        assert_eq!(parse_meminfo("MemTotal: lots kB\n"), None);
    }
}
