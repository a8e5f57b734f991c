//! The RWKV-4 models a user can pick from without knowing the hub: what each is, how much disk
//! and memory it needs, and which one suits this machine.
//!
//! Sizes are computed from the architecture rather than copied from the hub, so the numbers stay
//! consistent with each other and with what the loader allocates: the weights are
//! `2 * vocab * hidden` (embedding and head) plus `13 * hidden^2 + 11 * hidden` per block plus
//! the four layer-norm vectors around the stack.

use crate::model::WeightDtype;

/// The GPT-NeoX vocabulary every RWKV-4 model uses.
const VOCAB: u64 = 50277;

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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatalogueEntry {
    pub repo: &'static str,
    pub family: Family,
    pub layout: Layout,
    /// Size name used in the model names (`1b5`, `14b`).
    pub size: &'static str,
    pub layers: u64,
    pub hidden: u64,
    /// Tokens the model was trained to attend over; an RNN runs past it, with fading quality.
    pub context_length: u64,
    pub licence: &'static str,
    pub summary: &'static str,
}

impl CatalogueEntry {
    pub fn parameters(&self) -> u64 {
        let h = self.hidden;
        2 * VOCAB * h + self.layers * (13 * h * h + 11 * h) + 4 * h
    }

    /// Bytes the weights take in the hub repo: f32 for the transformers repos, bf16 for the
    /// BlinkDL `.pth` files.
    pub fn download_bytes(&self) -> u64 {
        let per_weight = match self.layout {
            Layout::HuggingFace => 4,
            Layout::RawPth => 2,
        };
        self.parameters() * per_weight
    }

    /// Memory needed to run the model with weights held in `dtype`.
    pub fn ram_bytes(&self, dtype: WeightDtype) -> u64 {
        dtype.bytes(self.parameters()) + RUNTIME_OVERHEAD
    }
}

const fn raven(repo: &'static str, size: &'static str, layers: u64, hidden: u64) -> CatalogueEntry {
    CatalogueEntry {
        repo,
        family: Family::Raven,
        layout: Layout::HuggingFace,
        size,
        layers,
        hidden,
        context_length: if hidden >= 4096 { 8192 } else { 4096 },
        licence: "Apache-2.0",
        summary: "Raven chat/instruction model",
    }
}

const fn pile(repo: &'static str, size: &'static str, layers: u64, hidden: u64) -> CatalogueEntry {
    CatalogueEntry {
        repo,
        family: Family::Pile,
        layout: Layout::HuggingFace,
        size,
        layers,
        hidden,
        context_length: 1024,
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
        family,
        layout: Layout::RawPth,
        size,
        layers,
        hidden,
        context_length: match family {
            Family::Raven => 8192,
            Family::Pile => 1024,
        },
        licence: "Apache-2.0",
        summary: match family {
            Family::Raven => {
                "raw BlinkDL .pth files of every Raven size and version (name one file)"
            }
            Family::Pile => "raw BlinkDL .pth files (name one file)",
        },
    }
}

/// Every model the menu offers, smallest first within each family.
pub const CATALOGUE: &[CatalogueEntry] = &[
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

/// The largest Raven model that runs in `dtype` within `total_memory` bytes, keeping 40% of
/// the memory for the system and other programs; the smallest Raven when none fits, since a
/// chat model is what the first run needs.
pub fn recommend_chat_model(total_memory: u64, dtype: WeightDtype) -> &'static CatalogueEntry {
    let budget = total_memory / 10 * 6;
    let ravens = || {
        CATALOGUE
            .iter()
            .filter(|e| e.family == Family::Raven && e.layout == Layout::HuggingFace)
    };
    ravens()
        .filter(|e| e.ram_bytes(dtype) <= budget)
        .max_by_key(|e| e.parameters())
        .or_else(|| ravens().min_by_key(|e| e.parameters()))
        .unwrap_or(&CATALOGUE[0])
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
/// the dtype the chat runs large models in. Without `/proc/meminfo` the smallest Raven.
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

    #[test]
    fn the_1b5_download_is_about_six_gigabytes() {
        let e = find("rwkv/RWKV-raven-1b5").unwrap();
        assert_eq!(e.download_bytes() / (GB / 10), 60);
        assert!(e.ram_bytes(WeightDtype::F16) < e.ram_bytes(WeightDtype::F32));
    }

    #[test]
    fn the_recommendation_grows_with_memory() {
        let pick = |gb: u64| recommend_chat_model(gb * GB, WeightDtype::F16).repo;
        assert_eq!(pick(2), "RWKV/rwkv-raven-1b5");
        assert_eq!(pick(8), "RWKV/rwkv-raven-1b5");
        assert_eq!(pick(16), "RWKV/rwkv-raven-3b");
        assert_eq!(pick(32), "RWKV/rwkv-raven-7b");
        assert_eq!(pick(64), "RWKV/rwkv-raven-14b");
        assert_eq!(
            recommend_chat_model(64 * GB, WeightDtype::F32).repo,
            "RWKV/rwkv-raven-7b"
        );
    }

    #[test]
    fn meminfo_is_read_in_kilobytes() {
        let text = "MemTotal:       16318480 kB\nMemFree:         1000 kB\n";
        assert_eq!(parse_meminfo(text), Some(16318480 * 1024));
        assert_eq!(parse_meminfo("MemFree: 1 kB\n"), None);
        assert_eq!(parse_meminfo("MemTotal: lots kB\n"), None);
    }
}
