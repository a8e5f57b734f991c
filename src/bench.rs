//! Throughput and resume benchmarks: `rwkv-chat bench`. Models can be real files or random
//! weights at the real shapes of the RWKV-4 family, made in memory, so the engine can be
//! measured beside transformers and ChatRWKV's (`shared/bench/peer_bench.py` uses the same
//! shapes and initialisation) without downloading anything.

use std::collections::HashMap;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::Context;
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde::Serialize;

use crate::chat::{Conversation, Preset, ReplyOptions};
use crate::engine::Engine;
use crate::model::{Checkpoint, Config, Generation, LoadOptions, Rwkv};
use crate::session::{OpenSession, Rebuild};
use crate::store::Store;
use crate::tokenizer::Tokenizer;

/// A real model's shape: the RWKV-4 Pile and Raven sizes and the World generations' (`v7-1.5b`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    name: &'static str,
    pub generation: Generation,
    pub hidden: usize,
    pub layers: usize,
}

const fn shape(name: &'static str, generation: Generation, hidden: usize, layers: usize) -> Shape {
    Shape {
        name,
        generation,
        hidden,
        layers,
    }
}

/// Every shape `--shape` takes, with the dimensions of the released models.
pub const SHAPES: [Shape; 16] = [
    shape("169m", Generation::Rwkv4, 768, 12),
    shape("430m", Generation::Rwkv4, 1024, 24),
    shape("1b5", Generation::Rwkv4, 2048, 24),
    shape("3b", Generation::Rwkv4, 2560, 32),
    shape("7b", Generation::Rwkv4, 4096, 32),
    shape("v7-0.1b", Generation::V7, 768, 12),
    shape("v7-0.4b", Generation::V7, 1024, 24),
    shape("v7-1.5b", Generation::V7, 2048, 24),
    shape("v7-2.9b", Generation::V7, 2560, 32),
    shape("v6-1.6b", Generation::V6, 2048, 24),
    shape("v6-3b", Generation::V6, 2560, 32),
    shape("v6-7b", Generation::V6, 4096, 32),
    shape("v6-14b", Generation::V6, 4096, 61),
    shape("v5-1.5b", Generation::V5, 2048, 24),
    shape("v5-3b", Generation::V5, 2560, 32),
    shape("v5-7b", Generation::V5, 4096, 32),
];

impl Shape {
    /// `(hidden, layers)`.
    pub fn dims(self) -> (usize, usize) {
        (self.hidden, self.layers)
    }

    pub fn name(self) -> &'static str {
        self.name
    }
}

impl FromStr for Shape {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        SHAPES
            .into_iter()
            .find(|shape| shape.name == s.to_ascii_lowercase())
            .ok_or_else(|| {
                let names: Vec<&str> = SHAPES.iter().map(|s| s.name).collect();
                format!("unknown shape `{s}` (expected one of {})", names.join(", "))
            })
    }
}

/// A model of the given shape with random weights spread like trained ones (the same
/// distributions as `peer_bench.py` for RWKV-4), so that the recurrences behave realistically.
pub fn random_model(shape: Shape, opts: LoadOptions) -> anyhow::Result<Rwkv> {
    let (h, layers) = shape.dims();
    match shape.generation {
        Generation::Rwkv4 => random_model_of(&Config::new(50277, h, layers), opts),
        generation => random_world_model(generation, h, layers, opts),
    }
}

/// A World model of the generation at a real shape: head size 64, the released models' LoRA
/// widths, random weights.
fn random_world_model(
    generation: Generation,
    h: usize,
    layers: usize,
    opts: LoadOptions,
) -> anyhow::Result<Rwkv> {
    const VOCAB: usize = 65536;
    const HEAD: usize = 64;
    let dev = Device::Cpu;
    let normal =
        |shape: &[usize], mean: f64, std: f64| Tensor::randn(mean as f32, std as f32, shape, &dev);
    let uniform =
        |shape: &[usize], lo: f64, hi: f64| Tensor::rand(lo as f32, hi as f32, shape, &dev);
    let matrix = |rows: usize, cols: usize| normal(&[rows, cols], 0.0, 1.0 / (cols as f64).sqrt());
    let mut t: HashMap<String, Tensor> = HashMap::new();
    let mut put = |name: String, v: candle_core::Result<Tensor>| -> anyhow::Result<()> {
        t.insert(name, v?);
        Ok(())
    };
    put("rwkv.embeddings.weight".into(), matrix(VOCAB, h))?;
    put("head.weight".into(), matrix(VOCAB, h))?;
    let ffn_size = match generation {
        Generation::V7 => 4 * h,
        _ => h * 7 / 2 / 32 * 32,
    };
    let mut all_norms = vec!["rwkv.ln_out".to_owned(), "rwkv.blocks.0.pre_ln".to_owned()];
    for i in 0..layers {
        let p = format!("rwkv.blocks.{i}");
        all_norms.extend([
            format!("{p}.ln1"),
            format!("{p}.ln2"),
            format!("{p}.attention.ln_x"),
        ]);
        let att = |leaf: &str| format!("{p}.attention.{leaf}");
        let ffn = |leaf: &str| format!("{p}.feed_forward.{leaf}");
        for m in ["receptance", "key", "value", "output"] {
            put(att(&format!("{m}.weight")), matrix(h, h))?;
        }
        put(ffn("key.weight"), matrix(ffn_size, h))?;
        put(ffn("value.weight"), matrix(h, ffn_size))?;
        let heads = [h / HEAD, HEAD];
        match generation {
            Generation::V7 => {
                let (w, a, v, g) = if h >= 2048 {
                    (96, 96, 64, 256)
                } else {
                    (64, 64, 32, 128)
                };
                for m in ["r", "w", "k", "v", "a", "g"] {
                    put(att(&format!("x_{m}")), uniform(&[h], 0.0, 1.0))?;
                }
                for (name, d) in [("w", w), ("a", a), ("v", v), ("g", g)] {
                    if name == "v" && i == 0 {
                        continue;
                    }
                    put(att(&format!("{name}1")), matrix(h, d))?;
                    put(att(&format!("{name}2")), matrix(d, h))?;
                    if name != "g" {
                        put(att(&format!("{name}0")), uniform(&[h], -2.0, 2.0))?;
                    }
                }
                put(att("k_k"), uniform(&[h], 0.5, 1.0))?;
                put(att("k_a"), uniform(&[h], 0.5, 1.0))?;
                put(att("r_k"), normal(&heads, 0.0, 0.3))?;
                put(ffn("x_k"), uniform(&[h], 0.0, 1.0))?;
            }
            Generation::V6 => {
                let (mix, decay) = if h >= 4096 { (64, 128) } else { (32, 64) };
                for m in ["x", "w", "k", "v", "r", "g"] {
                    put(att(&format!("time_maa_{m}")), uniform(&[h], 0.0, 1.0))?;
                }
                put(att("time_maa_w1"), matrix(h, 5 * mix))?;
                put(att("time_maa_w2"), normal(&[5, mix, h], 0.0, 0.01))?;
                put(att("time_decay"), uniform(&[h], -6.0, 1.0))?;
                put(att("time_decay_w1"), matrix(h, decay))?;
                put(att("time_decay_w2"), normal(&[decay, h], 0.0, 0.01))?;
            }
            _ => {
                for m in ["key", "value", "receptance", "gate"] {
                    put(att(&format!("time_mix_{m}")), uniform(&[h], 0.0, 1.0))?;
                }
                put(att("time_decay"), uniform(&heads, -6.0, 1.0))?;
            }
        }
        if generation != Generation::V7 {
            put(att("time_faaaa"), uniform(&heads, -1.0, 1.0))?;
            put(att("gate.weight"), matrix(h, h))?;
            put(ffn("receptance.weight"), matrix(h, h))?;
            let mix = if generation == Generation::V6 {
                "time_maa"
            } else {
                "time_mix"
            };
            let (k, r) = if generation == Generation::V6 {
                ("k", "r")
            } else {
                ("key", "receptance")
            };
            put(ffn(&format!("{mix}_{k}")), uniform(&[h], 0.0, 1.0))?;
            put(ffn(&format!("{mix}_{r}")), uniform(&[h], 0.0, 1.0))?;
        }
    }
    for name in all_norms {
        put(format!("{name}.weight"), normal(&[h], 1.0, 0.1))?;
        put(format!("{name}.bias"), normal(&[h], 0.0, 0.1))?;
    }
    Ok(Rwkv::new(&Checkpoint::from_tensors(t)?, opts)?)
}

/// A model of any size with random weights spread like trained ones.
pub fn random_model_of(cfg: &Config, opts: LoadOptions) -> anyhow::Result<Rwkv> {
    let (h, layers) = (cfg.hidden_size, cfg.num_hidden_layers);
    let dev = Device::Cpu;
    let normal =
        |shape: &[usize], mean: f64, std: f64| Tensor::randn(mean as f32, std as f32, shape, &dev);
    let uniform = |n: usize, lo: f64, hi: f64| Tensor::rand(lo as f32, hi as f32, n, &dev);
    let matrix = |rows: usize, cols: usize| normal(&[rows, cols], 0.0, 1.0 / (cols as f64).sqrt());
    let mut t: HashMap<String, Tensor> = HashMap::new();
    t.insert("rwkv.embeddings.weight".into(), matrix(cfg.vocab_size, h)?);
    t.insert("head.weight".into(), matrix(cfg.vocab_size, h)?);
    let norm = |t: &mut HashMap<String, Tensor>, name: String| -> candle_core::Result<()> {
        t.insert(format!("{name}.weight"), normal(&[h], 1.0, 0.1)?);
        t.insert(format!("{name}.bias"), normal(&[h], 0.0, 0.1)?);
        Ok(())
    };
    norm(&mut t, "rwkv.ln_out".into())?;
    for i in 0..layers {
        let p = format!("rwkv.blocks.{i}");
        if i == 0 {
            norm(&mut t, format!("{p}.pre_ln"))?;
        }
        norm(&mut t, format!("{p}.ln1"))?;
        norm(&mut t, format!("{p}.ln2"))?;
        let att = format!("{p}.attention");
        t.insert(format!("{att}.time_decay"), uniform(h, -6.0, 2.5)?);
        t.insert(format!("{att}.time_first"), uniform(h, -3.0, 3.0)?);
        for m in ["key", "value", "receptance"] {
            t.insert(format!("{att}.time_mix_{m}"), uniform(h, 0.0, 1.0)?);
            t.insert(format!("{att}.{m}.weight"), matrix(h, h)?);
        }
        t.insert(format!("{att}.output.weight"), matrix(h, h)?);
        let ffn = format!("{p}.feed_forward");
        for m in ["key", "receptance"] {
            t.insert(format!("{ffn}.time_mix_{m}"), uniform(h, 0.0, 1.0)?);
        }
        t.insert(format!("{ffn}.key.weight"), matrix(4 * h, h)?);
        t.insert(format!("{ffn}.receptance.weight"), matrix(h, h)?);
        t.insert(format!("{ffn}.value.weight"), matrix(h, 4 * h)?);
    }
    Ok(Rwkv::new(&Checkpoint::from_tensors(t)?, opts)?)
}

#[derive(Debug, Clone)]
pub enum ModelSource {
    Path(PathBuf),
    Random(Shape),
}

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub source: ModelSource,
    pub load: LoadOptions,
    pub chunk_size: usize,
    pub prefill: usize,
    pub decode: usize,
    /// History lengths (in tokens) to measure resuming a session at.
    pub resume: Vec<usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ResumeReport {
    pub history_tokens: usize,
    /// Reopening the saved session until its first new token.
    pub resume_first_token_s: f64,
    /// Feeding the same history again until the first new token.
    pub refeed_first_token_s: f64,
    pub replayed_tokens: usize,
    /// Bytes the save after the resumed session's first new turn wrote: `session.json`, the
    /// `state.bin` index and the one new state file, whatever the history.
    pub bytes_written_last_turn: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub dtype: String,
    pub threads: usize,
    /// The kernels the dot products ran on (`RWKV_CHAT_SIMD` forces a path).
    pub simd: String,
    /// How far ahead the AVX-512 float dots prefetched, in bytes (`RWKV_CHAT_PREFETCH`).
    pub float_prefetch_bytes: usize,
    pub load_s: f64,
    /// The quantized weights came from the weight cache (`--cache-weights`).
    pub weights_from_cache: bool,
    pub prefill_tokens: usize,
    pub prefill_tok_s: f64,
    pub decode_tokens: usize,
    pub decode_tok_s: f64,
    pub peak_rss_mb: f64,
    pub state_bytes: usize,
    pub resume: Vec<ResumeReport>,
}

pub fn run(opts: &BenchOptions) -> anyhow::Result<BenchReport> {
    let started = Instant::now();
    let (engine, label) = match &opts.source {
        ModelSource::Path(path) => (
            Engine::load(path, opts.load.clone(), None)?,
            path.display().to_string(),
        ),
        ModelSource::Random(shape) => (
            Engine {
                model: random_model(*shape, opts.load.clone())?,
                tokenizer: if shape.generation.is_world() {
                    Tokenizer::world()
                } else {
                    Tokenizer::neox()
                },
                files: crate::model::ModelFiles {
                    weights: vec![],
                    format: crate::model::checkpoint::Format::Safetensors,
                    config: None,
                    tokenizer: None,
                    world_vocab: None,
                },
            },
            format!("random {}", shape.name()),
        ),
    };
    let mut engine = engine;
    engine.model.chunk_size = opts.chunk_size;
    let load_s = started.elapsed().as_secs_f64();
    let model = &engine.model;

    let mut rng = StdRng::seed_from_u64(0);
    let prompt: Vec<u32> = (0..opts.prefill.max(1))
        .map(|_| rng.random_range(2..50000))
        .collect();
    // A short warm-up, as the peers do, so one-time set-up is not timed.
    model.forward(&prompt[..prompt.len().min(8)], &mut model.new_state())?;
    let mut state = model.new_state();
    let t = Instant::now();
    let mut logits: Vec<f32> = model.forward(&prompt, &mut state)?.to_vec1()?;
    let prefill_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for _ in 0..opts.decode {
        let next = argmax(&logits);
        logits = model.forward(&[next], &mut state)?.to_vec1()?;
    }
    let decode_s = t.elapsed().as_secs_f64();

    let resume = opts
        .resume
        .iter()
        .map(|&n| measure_resume(&engine, n))
        .collect::<anyhow::Result<_>>()?;
    Ok(BenchReport {
        model: label,
        dtype: model.dtype().to_string(),
        threads: candle_core::utils::get_num_threads(),
        simd: crate::model::simd::chosen().to_string(),
        float_prefetch_bytes: crate::model::simd::float_prefetch(),
        load_s,
        weights_from_cache: model.weights_from_cache(),
        prefill_tokens: prompt.len(),
        prefill_tok_s: prompt.len() as f64 / prefill_s,
        decode_tokens: opts.decode,
        decode_tok_s: if decode_s > 0.0 {
            opts.decode as f64 / decode_s
        } else {
            0.0
        },
        peak_rss_mb: peak_rss_mb().unwrap_or(0.0),
        state_bytes: state.size_bytes(),
        resume,
    })
}

fn argmax(xs: &[f32]) -> u32 {
    xs.iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i as u32)
}

/// Peak resident memory of this process, from Linux's `/proc/self/status`.
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Saves a session with about `history` tokens, then times its first new token twice: reopened
/// from the saved state, and with the history fed again.
fn measure_resume(engine: &Engine, history: usize) -> anyhow::Result<ResumeReport> {
    let dir = tempfile_dir()?;
    let store = Store::open(&dir)?;
    let preset = Preset::find(&Preset::built_in(), "completion")?;
    let mut rng = StdRng::seed_from_u64(history as u64);
    let ids: Vec<u32> = (0..history).map(|_| rng.random_range(2..50000)).collect();
    let text = engine.tokenizer.decode(&ids);
    let never = AtomicBool::new(false);
    let one = ReplyOptions {
        max_tokens: 1,
        seed: 0,
    };
    let history_tokens = {
        let mut session = OpenSession::create(&store, engine, "bench", preset, None)?;
        session.turn(&store, engine, |c, e| {
            c.send(e, &text, one, &never, &mut |_| {})
        })?;
        session.conversation.tokens
    };

    let t = Instant::now();
    let mut session = OpenSession::open(&store, engine, "bench", Rebuild::Ask, &mut |_, _| {})?;
    let replayed_tokens = session.replayed_tokens;
    session
        .conversation
        .send(engine, " next", one, &never, &mut |_| {})?;
    let resume_first_token_s = t.elapsed().as_secs_f64();
    // Saved as every turn is, after the timing: a save is not part of the first token.
    session.save(&store, engine)?;
    let bytes_written_last_turn = session.last_save.total();

    let t = Instant::now();
    let file = store.load("bench")?;
    let mut conv = Conversation::rebuild(
        engine,
        file.preset,
        file.sampling,
        file.transcript,
        &mut |_, _| {},
    )?;
    conv.send(engine, " next", one, &never, &mut |_| {})?;
    let refeed_first_token_s = t.elapsed().as_secs_f64();
    drop(session);
    std::fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    Ok(ResumeReport {
        history_tokens,
        resume_first_token_s,
        refeed_first_token_s,
        replayed_tokens,
        bytes_written_last_turn,
    })
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("rwkv-chat-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// Frame and scroll cost of the chat view at one history length (`rwkv-chat bench --ui`).
#[derive(Debug, Clone, Serialize)]
pub struct UiReport {
    pub history_tokens: usize,
    pub messages: usize,
    pub width: u16,
    pub height: u16,
    /// Median of one streamed token taken in and the screen drawn.
    pub frame_ms: f64,
    /// Median of a page scrolled (up or down) and the screen drawn.
    pub scroll_ms: f64,
}

/// Rounds timed per measure; the median is reported.
const UI_ROUNDS: usize = 41;

/// Times the chat view with `history` tokens of conversation (counted with the built-in
/// tokenizer) while a reply streams and while the user pages through it, drawn into a
/// ratatui `TestBackend` of a common terminal size, so only the app's own work is timed.
pub fn ui(history: &[usize]) -> anyhow::Result<Vec<UiReport>> {
    use crate::ui::app::{self, App, Input, Setup};
    use crate::worker::{ChatMessage, Event, ModelInfo, Role, SessionView};
    use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

    let (width, height) = (120, 40);
    let message = "The raven flies over the hills and eats berries, then rests a while. ".repeat(4);
    let per_message = Tokenizer::neox().encode(&message)?.len().max(1);
    let mut reports = Vec::new();
    for &tokens in history {
        let messages = tokens.div_ceil(per_message).max(1);
        let mut app = App::new(Setup {
            keymap: crate::ui::keymap::Keymap::default(),
            themes: crate::ui::theme::Themes::load(None).0,
            theme: "dark".into(),
            depth: crate::ui::theme::ColorDepth::TrueColor,
            models: Vec::new(),
            local: Vec::new(),
            recent: Vec::new(),
            preset: None,
        });
        let feed = |app: &mut App, input: Input| drop(app::update(app, input));
        feed(&mut app, Input::Resize(width, height));
        feed(
            &mut app,
            Input::Worker(Event::ModelLoaded(ModelInfo {
                name: "bench".into(),
                dtype: "f32".into(),
                device: "cpu".into(),
            })),
        );
        feed(
            &mut app,
            Input::Worker(Event::SessionOpened(SessionView {
                name: "bench".into(),
                title: "bench".into(),
                messages: (0..messages)
                    .map(|i| ChatMessage {
                        role: if i.is_multiple_of(2) {
                            Role::User
                        } else {
                            Role::Bot
                        },
                        text: message.clone(),
                        reasons: false,
                    })
                    .collect(),
                preset: "raven".into(),
                sampling: Default::default(),
                tokens,
                state_bytes: 0,
                replayed_tokens: 0,
            })),
        );
        for c in "Tell me more".chars() {
            feed(
                &mut app,
                Input::Key(KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)),
            );
        }
        feed(
            &mut app,
            Input::Key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE)),
        );
        let request_id = app
            .pending
            .map(|p| p.request_id)
            .context("the bench message was not sent")?;
        let mut terminal =
            ratatui::Terminal::new(ratatui::backend::TestBackend::new(width, height))?;
        let mut timed = |app: &mut App, input: &dyn Fn(usize) -> Input| -> anyhow::Result<f64> {
            let mut times = Vec::with_capacity(UI_ROUNDS);
            for round in 0..UI_ROUNDS {
                let t = Instant::now();
                drop(app::update(app, input(round)));
                terminal.draw(|f| crate::ui::render::render(f, app))?;
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
            times.sort_by(f64::total_cmp);
            Ok(times[times.len() / 2])
        };
        let frame_ms = timed(&mut app, &|_| {
            Input::Worker(Event::Token {
                request_id,
                text: " word".into(),
            })
        })?;
        let page = |round: usize| {
            let code = if round.is_multiple_of(2) {
                KeyCode::PageUp
            } else {
                KeyCode::PageDown
            };
            Input::Key(KeyEvent::new(code, KeyModifiers::NONE))
        };
        // Away from the bottom first, so paging down does not stop at the end.
        for _ in 0..4 {
            feed(&mut app, page(0));
        }
        let scroll_ms = timed(&mut app, &page)?;
        reports.push(UiReport {
            history_tokens: tokens,
            messages,
            width,
            height,
            frame_ms,
            scroll_ms,
        });
    }
    Ok(reports)
}
