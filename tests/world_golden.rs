//! RWKV-7 against BlinkDL's reference (rwkv 0.8.32, `RWKV_x070`, fp32 on the bf16-rounded
//! weights): the tiny-v7 fixture's logits at every prompt position, argmax, the state after
//! the prompt and the greedy continuation.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use rwkv_chat::model::finch::Finch;
use rwkv_chat::model::v7::V7;
use rwkv_chat::model::{Generation, WorldState};

use crate::common::{self, argmax, f32s, ids};

fn golden(dir: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        common::fixture(&format!("world/{dir}/golden.safetensors")),
        &Device::Cpu,
    )
    .unwrap()
}

/// Feeds the fixture's prompt token by token from the zero state and checks the logits at
/// every position (1e-3), their argmax, the state after the prompt (1e-4) and the greedy
/// continuation (exact).
fn check_against_golden(
    dir: &str,
    vocab: usize,
    mut state: WorldState,
    mut forward: impl FnMut(u32, &mut WorldState) -> Vec<f32>,
) {
    let g = golden(dir);
    let want = f32s(&g["logits"]);
    let mut logits = Vec::new();
    for (pos, &t) in ids(&g["input_ids"]).iter().enumerate() {
        logits = forward(t, &mut state);
        let row = &want[pos * vocab..(pos + 1) * vocab];
        let diff = common::max_abs_diff(&logits, row);
        assert!(diff < 1e-3, "{dir} position {pos}: logits differ by {diff}");
        assert_eq!(argmax(&logits), argmax(row), "{dir} position {pos}");
    }
    for (i, layer) in state.layers.iter().enumerate() {
        for (name, got) in [
            ("att_x_prev", &layer.att_x),
            ("att_kv", &layer.att_kv),
            ("ffn_x_prev", &layer.ffn_x),
        ] {
            let diff = common::max_abs_diff(got, &f32s(&g[&format!("state.{i}.{name}")]));
            assert!(diff < 1e-4, "{dir} layer {i} {name} differs by {diff}");
        }
    }
    let mut greedy = Vec::new();
    for _ in 0..ids(&g["greedy_ids"]).len() {
        let next = argmax(&logits);
        greedy.push(next);
        logits = forward(next, &mut state);
    }
    assert_eq!(greedy, ids(&g["greedy_ids"]), "{dir}");
}

#[test]
fn tiny_v7_pth_matches_the_reference() {
    let model = V7::from_tensors(&pth("world/tiny-v7/model.pth")).unwrap();
    assert_eq!(
        (model.cfg.layers, model.cfg.heads, model.cfg.head_size),
        (2, 2, 64)
    );
    check_against_golden(
        "tiny-v7",
        model.cfg.vocab,
        WorldState::new(&model.cfg),
        |t, s| model.forward_token(t, s).unwrap(),
    );
}

fn pth(path: &str) -> HashMap<String, Tensor> {
    candle_core::pickle::read_all(common::fixture(path))
        .unwrap()
        .into_iter()
        .collect()
}

fn fla() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        common::fixture("world/tiny-v7-fla/model.safetensors"),
        &Device::Cpu,
    )
    .unwrap()
}

/// The fla layout, as stored and with the six mixers fused into the older `attn.x_x`, holds
/// the same model as BlinkDL's file.
#[test]
fn tiny_v7_in_the_fla_layouts_is_the_same_model() {
    let reference = V7::from_tensors(&pth("world/tiny-v7/model.pth")).unwrap();
    let split = fla();
    let mut fused = split.clone();
    for layer in 0..2 {
        let rows: Vec<Tensor> = ["r", "w", "k", "v", "a", "g"]
            .iter()
            .map(|m| {
                fused
                    .remove(&format!("model.layers.{layer}.attn.x_{m}"))
                    .unwrap()
                    .flatten_all()
                    .unwrap()
            })
            .collect();
        fused.insert(
            format!("model.layers.{layer}.attn.x_x"),
            Tensor::stack(&rows, 0).unwrap(),
        );
    }
    let g = golden("tiny-v7-fla");
    for tensors in [split, fused] {
        let model = V7::from_tensors(&rwkv_chat::model::v7::from_fla(tensors).unwrap()).unwrap();
        assert_eq!(model.cfg, reference.cfg);
        let mut state = WorldState::new(&model.cfg);
        let mut logits = Vec::new();
        for &t in &ids(&g["input_ids"]) {
            logits = model.forward_token(t, &mut state).unwrap();
        }
        let want = f32s(&g["logits"]);
        let last = &want[want.len() - model.cfg.vocab..];
        let diff = common::max_abs_diff(&logits, last);
        assert!(diff < 1e-3, "last logits differ by {diff}");
        let kv = f32s(&g["state.1.att_kv"]);
        assert!(common::max_abs_diff(&state.layers[1].att_kv, &kv) < 1e-4);
    }
}

#[test]
fn an_fla_name_it_does_not_know_is_refused() {
    let mut t = fla();
    let any = t.values().next().unwrap().clone();
    t.insert(
        "model.layers.0.attn.w_lora.lora.1.weight".into(),
        any.clone(),
    );
    let e = rwkv_chat::model::v7::from_fla(t).unwrap_err();
    assert!(e.contains("unknown LoRA tensor"), "{e}");
    let mut t = fla();
    t.insert("transformer.h.0.attn.c_attn.weight".into(), any);
    let e = rwkv_chat::model::v7::from_fla(t).unwrap_err();
    assert!(
        e.contains("not a flash-linear-attention RWKV-7 name"),
        "{e}"
    );
}

/// The real vocab and tokenizer: the World chat prompt tokenizes to the reference ids, the
/// greedy reply decodes to the reference text, and the NLL of a mixed-language text matches.
#[test]
fn e2e_v7_with_the_world_tokenizer_matches_the_reference() {
    let model = V7::from_tensors(&pth("world/e2e-v7/model.pth")).unwrap();
    let tok = rwkv_chat::tokenizer::Tokenizer::world();
    let json: serde_json::Value = serde_json::from_slice(
        &std::fs::read(common::fixture("world/e2e-v7/golden.json")).unwrap(),
    )
    .unwrap();
    let g = golden("e2e-v7");
    let prompt = tok.encode(json["prompt"].as_str().unwrap()).unwrap();
    assert_eq!(prompt, ids(&g["input_ids"]));
    let mut state = WorldState::new(&model.cfg);
    let mut logits = Vec::new();
    for &t in &prompt {
        logits = model.forward_token(t, &mut state).unwrap();
    }
    assert!(common::max_abs_diff(&logits, &f32s(&g["logits_last"])) < 1e-3);
    let mut stream = tok.stream();
    let mut text = String::new();
    let mut greedy = Vec::new();
    for _ in 0..ids(&g["greedy_ids"]).len() {
        let next = argmax(&logits);
        greedy.push(next);
        text.push_str(&stream.push(next));
        logits = model.forward_token(next, &mut state).unwrap();
    }
    text.push_str(&stream.finish());
    assert_eq!(greedy, ids(&g["greedy_ids"]));
    assert_eq!(text, json["greedy_text"].as_str().unwrap());

    let nll_ids = ids(&g["nll_token_ids"]);
    let want: Vec<f64> = g["nll_per_token"].to_vec1::<f64>().unwrap();
    let mut state = WorldState::new(&model.cfg);
    let mut total = 0.0f64;
    for (i, pair) in nll_ids.windows(2).enumerate() {
        let logits = model.forward_token(pair[0], &mut state).unwrap();
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let lse = max as f64
            + logits
                .iter()
                .map(|&l| ((l - max) as f64).exp())
                .sum::<f64>()
                .ln();
        let nll = lse - logits[pair[1] as usize] as f64;
        assert!(
            (nll - want[i]).abs() < 1e-3,
            "token {i}: {nll} vs {}",
            want[i]
        );
        total += nll;
    }
    let mean = total / want.len() as f64;
    let want_mean = want.iter().sum::<f64>() / want.len() as f64;
    assert!((mean - want_mean).abs() < 1e-4, "{mean} vs {want_mean}");
}

/// v5.2 and v6 from BlinkDL's .pth against the reference.
#[test]
fn tiny_v5_and_v6_pth_match_the_reference() {
    for (dir, generation) in [("tiny-v5", Generation::V5), ("tiny-v6", Generation::V6)] {
        let model = Finch::from_tensors(&pth(&format!("world/{dir}/model.pth"))).unwrap();
        assert_eq!(model.cfg.generation, generation);
        check_against_golden(dir, model.cfg.vocab, WorldState::new(&model.cfg), |t, s| {
            model.forward_token(t, s).unwrap()
        });
    }
}

#[test]
fn a_checkpoint_of_another_generation_is_refused_by_name() {
    let e = Finch::from_tensors(&pth("world/tiny-v7/model.pth"))
        .err()
        .unwrap();
    assert!(e.contains("neither an RWKV-5 nor an RWKV-6"), "{e}");
    let mut t = pth("world/tiny-v7/model.pth");
    t.remove("blocks.1.att.k_k");
    let e = V7::from_tensors(&t).err().unwrap();
    assert_eq!(e, "no tensor `blocks.1.att.k_k`");
}
