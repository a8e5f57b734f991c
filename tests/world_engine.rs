//! The World engine the app runs ([`Rwkv`] on a v5.2, v6 or v7 checkpoint) against BlinkDL's
//! reference outputs (rwkv 0.8.32) in every layout users meet: logits at every position,
//! argmax, state and greedy ids; step mode against sequence mode and any chunking; every
//! weight format with the tolerance it is held to.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use rwkv_chat::model::{Generation, LoadOptions, Rwkv, State, WeightDtype, WorldState};

use crate::common::{self, argmax, f32s, ids};

/// Every layout of each generation: BlinkDL `.pth`, the HF remote-code layout, fla's.
const LAYOUTS: [(&str, Generation); 6] = [
    ("tiny-v5", Generation::V5),
    ("tiny-v5-hf", Generation::V5),
    ("tiny-v6", Generation::V6),
    ("tiny-v6-hf", Generation::V6),
    ("tiny-v7", Generation::V7),
    ("tiny-v7-fla", Generation::V7),
];

fn dir(name: &str) -> PathBuf {
    common::fixture(&format!("world/{name}"))
}

/// The golden of a layout; the HF and fla copies share their .pth twin's weights.
fn golden(name: &str) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(dir(name).join("golden.safetensors"), &Device::Cpu).unwrap()
}

pub(crate) fn load(path: &Path, dtype: WeightDtype) -> Rwkv {
    Rwkv::load(
        path,
        LoadOptions {
            dtype,
            ..LoadOptions::default()
        },
    )
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn world(state: &State) -> &WorldState {
    state.as_world().expect("a World state")
}

/// Token by token from the zero state: logits at every position within `tolerance`, the same
/// argmax, the state after the prompt within 1e-4 and the greedy ids exact.
pub(crate) fn check_steps(name: &str, model: &Rwkv, tolerance: f32) {
    let g = golden(name);
    let vocab = model.vocab_size();
    let want = f32s(&g["logits"]);
    let mut state = model.new_state();
    let mut logits = Vec::new();
    for (pos, &t) in ids(&g["input_ids"]).iter().enumerate() {
        logits = f32s(&model.forward(&[t], &mut state).unwrap());
        let row = &want[pos * vocab..(pos + 1) * vocab];
        let diff = common::max_abs_diff(&logits, row);
        assert!(
            diff < tolerance,
            "{name} position {pos}: logits differ by {diff}"
        );
        assert_eq!(argmax(&logits), argmax(row), "{name} position {pos}");
    }
    for (i, layer) in world(&state).layers.iter().enumerate() {
        for (field, got) in [
            ("att_x_prev", &layer.att_x),
            ("att_kv", &layer.att_kv),
            ("ffn_x_prev", &layer.ffn_x),
        ] {
            let diff = common::max_abs_diff(got, &f32s(&g[&format!("state.{i}.{field}")]));
            assert!(diff < 1e-4, "{name} layer {i} {field} differs by {diff}");
        }
    }
    let mut greedy = Vec::new();
    for _ in 0..ids(&g["greedy_ids"]).len() {
        let next = argmax(&logits);
        greedy.push(next);
        logits = f32s(&model.forward(&[next], &mut state).unwrap());
    }
    assert_eq!(greedy, ids(&g["greedy_ids"]), "{name}");
}

#[test]
fn every_layout_of_every_generation_matches_the_reference() {
    for (name, generation) in LAYOUTS {
        let model = load(&dir(name), WeightDtype::F32);
        assert_eq!(model.generation(), generation, "{name}");
        check_steps(name, &model, 1e-3);
    }
}

/// fla checkpoints written before fla 6b673e6b hold the six token-shift mixers as one
/// `attn.x_x` [6, C] (rows r, w, k, v, a, g): made here from tiny-v7-fla, as fla's own loader
/// migrates it back.
#[test]
fn the_fused_fla_layout_matches_the_reference() {
    let src = dir("tiny-v7-fla");
    let mut tensors =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    for layer in 0..2 {
        let rows: Vec<Tensor> = ["r", "w", "k", "v", "a", "g"]
            .iter()
            .map(|m| {
                tensors
                    .remove(&format!("model.layers.{layer}.attn.x_{m}"))
                    .unwrap()
                    .flatten_all()
                    .unwrap()
            })
            .collect();
        tensors.insert(
            format!("model.layers.{layer}.attn.x_x"),
            Tensor::stack(&rows, 0).unwrap(),
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    candle_core::safetensors::save(&tensors, tmp.path().join("model.safetensors")).unwrap();
    std::fs::copy(src.join("config.json"), tmp.path().join("config.json")).unwrap();
    check_steps("tiny-v7-fla", &load(tmp.path(), WeightDtype::F32), 1e-3);
}

/// One call over the whole prompt (every position's logits), and the prompt cut into chunks
/// of any size, give what token-by-token feeding gives.
#[test]
fn sequence_mode_and_any_chunking_equal_step_mode() {
    for (name, _) in LAYOUTS {
        let g = golden(name);
        let prompt = ids(&g["input_ids"]);
        let mut model = load(&dir(name), WeightDtype::F32);
        let mut whole = model.new_state();
        let all = f32s(&model.forward_chunk(&prompt, &mut whole, true).unwrap());
        let diff = common::max_abs_diff(&all, &f32s(&g["logits"]));
        assert!(diff < 1e-3, "{name}: sequence-mode logits differ by {diff}");
        let mut steps = model.new_state();
        let mut last = Vec::new();
        for &t in &prompt {
            last = f32s(&model.forward(&[t], &mut steps).unwrap());
        }
        let vocab = model.vocab_size();
        assert!(
            common::max_abs_diff(&all[all.len() - vocab..], &last) < 1e-5,
            "{name}"
        );
        for chunk in [1, 2, 5, 7, prompt.len()] {
            model.chunk_size = chunk;
            let mut state = model.new_state();
            let got = f32s(&model.forward(&prompt, &mut state).unwrap());
            let diff = common::max_abs_diff(&got, &last);
            assert!(diff < 1e-5, "{name} chunk {chunk}: logits differ by {diff}");
            for (a, b) in world(&state).layers.iter().zip(&world(&steps).layers) {
                for (x, y) in [
                    (&a.att_kv, &b.att_kv),
                    (&a.att_x, &b.att_x),
                    (&a.ffn_x, &b.ffn_x),
                ] {
                    let diff = common::max_abs_diff(x, y);
                    assert!(diff < 1e-4, "{name} chunk {chunk}: state differs by {diff}");
                }
            }
        }
    }
}

/// The candle path (what runs on a GPU: every projection a candle matmul on the weights'
/// device) on the CPU device, in every layout and in f32, bf16 and f16: the goldens' logits at
/// every position, and the state, as the host path meets them; then a second chunk from that
/// state, as a chat's next turn is fed.
#[test]
fn the_candle_path_meets_the_goldens() {
    for (name, _) in LAYOUTS {
        let g = golden(name);
        let prompt = ids(&g["input_ids"]);
        let want = f32s(&g["logits"]);
        for dtype in [WeightDtype::F32, WeightDtype::Bf16, WeightDtype::F16] {
            let model = load(&dir(name), dtype);
            let (first, rest) = prompt.split_at(prompt.len() / 2);
            let mut state = model.new_state();
            let mut got = f32s(&model.forward_chunk_candle(first, &mut state, true).unwrap());
            got.extend(f32s(
                &model.forward_chunk_candle(rest, &mut state, true).unwrap(),
            ));
            let (logit_tolerance, state_tolerance) = tolerances(dtype);
            let diff = common::max_abs_diff(&got, &want);
            assert!(
                diff < logit_tolerance,
                "{name} {dtype}: candle logits differ by {diff}"
            );
            for (i, layer) in world(&state).layers.iter().enumerate() {
                let diff =
                    common::max_abs_diff(&layer.att_kv, &f32s(&g[&format!("state.{i}.att_kv")]));
                assert!(
                    diff < state_tolerance,
                    "{name} {dtype} layer {i}: state differs by {diff}"
                );
            }
        }
    }
}

/// The largest logit and state differences the candle path is held to. It multiplies in the
/// weights' dtype, as a GPU does, so its inputs are rounded to bf16 (8 bits of mantissa) or f16
/// (11) where the host path keeps them in f32. Measured on these fixtures: f32 6e-6 and 1.3e-5,
/// f16 0.005 and 0.008, bf16 0.04 and 0.10.
fn tolerances(dtype: WeightDtype) -> (f32, f32) {
    match dtype {
        WeightDtype::F16 => (0.015, 0.025),
        WeightDtype::Bf16 => (0.12, 0.25),
        _ => (1e-3, 1e-4),
    }
}

/// The fixtures' weights are bf16, which bf16 holds exactly and f16 too (their magnitudes are
/// in f16's range): both formats must meet the f32 goldens.
#[test]
fn the_16_bit_formats_meet_the_goldens() {
    for (name, _) in LAYOUTS {
        for dtype in [WeightDtype::Bf16, WeightDtype::F16] {
            check_steps(name, &load(&dir(name), dtype), 1e-3);
        }
    }
}

/// q8, q5 and q4 round the weights, so they are held to the largest logit difference and the
/// top-1 agreement measured on these fixtures, with a margin, and fewer bits must cost more.
/// Measured: q8 0.10 to 0.11 with top-1 equal everywhere; q5 0.44 to 0.65 with 96%; q4 1.08
/// to 1.47 with 75% to 92%.
#[test]
fn the_quantized_formats_stay_close_to_f32() {
    for (name, _) in LAYOUTS {
        let g = golden(name);
        let prompt = ids(&g["input_ids"]);
        let want = f32s(&g["logits"]);
        let mut diffs = vec![];
        for (dtype, tolerance, min_agree) in [
            (WeightDtype::Q8, 0.2, 0.9),
            (WeightDtype::Q5, 1.0, 0.8),
            (WeightDtype::Q4, 2.5, 0.6),
        ] {
            let model = load(&dir(name), dtype);
            let mut state = model.new_state();
            let got = f32s(&model.forward_chunk(&prompt, &mut state, true).unwrap());
            let diff = common::max_abs_diff(&got, &want);
            let vocab = model.vocab_size();
            let agree = got
                .chunks(vocab)
                .zip(want.chunks(vocab))
                .filter(|(a, b)| argmax(a) == argmax(b))
                .count() as f32
                / prompt.len() as f32;
            eprintln!("{name} {dtype}: max diff {diff}, top-1 agreement {agree}");
            assert!(diff < tolerance, "{name} {dtype}: logits differ by {diff}");
            assert!(
                agree >= min_agree,
                "{name} {dtype}: top-1 agreement {agree}"
            );
            diffs.push(diff);
        }
        assert!(
            diffs.is_sorted(),
            "{name}: q8, q5, q4 differences {diffs:?}"
        );
    }
}

/// A state of one generation is never fed to another: RWKV-4's to a v7 model, a v5's to a v7
/// of the same width.
#[test]
fn a_state_of_another_model_is_refused() {
    let v7 = load(&dir("tiny-v7"), WeightDtype::F32);
    let v5 = load(&dir("tiny-v5"), WeightDtype::F32);
    assert_ne!(v7.fingerprint(), v5.fingerprint());
    let rwkv4 = load(&common::fixture("tiny-rwkv4"), WeightDtype::F32);
    for mut foreign in [rwkv4.new_state(), v5.new_state()] {
        let e = v7.forward(&[1], &mut foreign).unwrap_err().to_string();
        assert!(e.contains("does not fit"), "{e}");
    }
    let e = v7
        .forward(&[5000], &mut v7.new_state())
        .unwrap_err()
        .to_string();
    assert!(e.contains("outside the vocabulary"), "{e}");
}

/// `convert` turns every World layout into safetensors that load as the same model: the
/// goldens still hold, the World vocab is written beside it, no GPT-NeoX tokenizer.
#[test]
fn world_checkpoints_convert_to_safetensors_that_meet_the_goldens() {
    for (name, generation) in [
        ("tiny-v5", Generation::V5),
        ("tiny-v6-hf", Generation::V6),
        ("tiny-v7-fla", Generation::V7),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("converted");
        rwkv_chat::convert::convert(&dir(name), &out, None).unwrap();
        assert!(out.join("rwkv_vocab_v20230424.txt").is_file(), "{name}");
        assert!(!out.join("tokenizer.json").exists(), "{name}");
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
        let model = load(&out, WeightDtype::F32);
        assert_eq!(model.generation(), generation, "{name}: {config}");
        check_steps(name, &model, 1e-3);
    }
}

/// A `config.json` beside World weights that disagrees with them is refused, naming the field
/// and both values; one naming another generation is refused by generation.
#[test]
fn a_world_config_for_another_model_is_refused() {
    let src = dir("tiny-v7-fla");
    let config = std::fs::read_to_string(src.join("config.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&config).unwrap();
    let layers = json["num_hidden_layers"].as_u64().unwrap();
    for (field, value, message) in [
        (
            "num_hidden_layers",
            serde_json::json!(layers + 1),
            "num_hidden_layers",
        ),
        ("model_type", serde_json::json!("rwkv6"), "RWKV-6"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::copy(
            src.join("model.safetensors"),
            tmp.path().join("model.safetensors"),
        )
        .unwrap();
        let mut bad = json.clone();
        bad[field] = value;
        std::fs::write(tmp.path().join("config.json"), bad.to_string()).unwrap();
        let e = Rwkv::load(tmp.path(), LoadOptions::default())
            .err()
            .expect("a config for another model")
            .to_string();
        assert!(e.contains("config.json") && e.contains(message), "{e}");
    }
}

/// A LoRA factor of width 0 (a damaged or hand-made checkpoint) is refused with its name, not
/// divided by.
#[test]
fn a_lora_factor_of_width_zero_is_refused() {
    let src = dir("tiny-v7-fla");
    let mut tensors =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    for leaf in ["lora.0.weight", "lora.2.weight"] {
        let name = format!("model.layers.1.attn.g_lora.{leaf}");
        let shape = if leaf.starts_with("lora.0") {
            (0, 128)
        } else {
            (128, 0)
        };
        tensors.insert(
            name,
            Tensor::zeros(shape, candle_core::DType::F32, &Device::Cpu).unwrap(),
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    candle_core::safetensors::save(&tensors, tmp.path().join("model.safetensors")).unwrap();
    std::fs::copy(src.join("config.json"), tmp.path().join("config.json")).unwrap();
    let err = match Rwkv::load(tmp.path(), LoadOptions::default()) {
        Ok(_) => panic!("a LoRA of width 0 loaded"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("a LoRA factor of width 0"), "{err}");
}

/// A World layer runs its independent products together on rayon's threads, nested in each
/// other: the thread count must not change a single bit of the token step, nor more than
/// rounding of a prompt (whose panels are split by the thread count).
#[test]
fn world_results_do_not_depend_on_thread_count() {
    let ids: Vec<u32> = (0..24).map(|i| (i * 37 % 1000) as u32).collect();
    for name in ["tiny-v5", "tiny-v6", "tiny-v7"] {
        for dtype in WeightDtype::ALL {
            let model = load(&dir(name), dtype);
            let run = |threads: usize| {
                common::on_threads(threads, || {
                    let mut state = model.new_state();
                    let prompt = f32s(&model.forward(&ids, &mut state).unwrap());
                    let step = f32s(&model.forward(&[7], &mut state).unwrap());
                    (prompt, step)
                })
            };
            let (prompt1, step1) = run(1);
            for threads in [2, 3] {
                let (prompt, step) = run(threads);
                let diff = common::max_abs_diff(&prompt, &prompt1);
                assert!(diff < 1e-5, "{name} {dtype}, {threads} threads: {diff}");
                assert_eq!(step, step1, "{name} {dtype}, {threads} threads");
            }
        }
    }
}

/// Two threads sharing one model, from outside a pool of three threads and from inside it,
/// each get what they would alone, in both engines. Outside, they take turns on the model's
/// lock. Inside, a pool thread waiting within a product may steal the other call; it must not
/// sleep on the lock that call's owner holds while waiting for the tasks below it (with the
/// lock taken as before `model::lock_outside_pool`, this test hung in 5 of 25 runs: a
/// regression shows as a hang, not a failure).
#[test]
fn two_threads_sharing_a_model_get_what_they_would_alone() {
    let ids: Vec<u32> = (0..24).map(|i| (i * 37 % 1000) as u32).collect();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap();
    for (name, path) in [("v7", dir("tiny-v7")), ("rwkv4", common::tiny())] {
        let model = load(&path, WeightDtype::Q8);
        let ids: Vec<u32> = ids.iter().map(|&i| i % model.vocab_size() as u32).collect();
        let alone = f32s(&model.forward(&ids, &mut model.new_state()).unwrap());
        for inside in [false, true] {
            let results: Vec<Vec<Vec<f32>>> = std::thread::scope(|s| {
                let calls: Vec<_> = (0..2)
                    .map(|_| {
                        s.spawn(|| {
                            let run = || {
                                (0..8)
                                    .map(|_| {
                                        let mut state = model.new_state();
                                        f32s(&model.forward(&ids, &mut state).unwrap())
                                    })
                                    .collect::<Vec<_>>()
                            };
                            if inside { pool.install(run) } else { run() }
                        })
                    })
                    .collect();
                calls.into_iter().map(|c| c.join().unwrap()).collect()
            });
            for r in results.iter().flatten() {
                assert_eq!(r, &alone, "{name}, inside the pool: {inside}");
            }
        }
    }
}
