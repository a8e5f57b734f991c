//! The GPT-NeoX tokenizer against the reference ids, and streaming decode against broken
//! UTF-8.

use crate::common;

use rwkv_chat::tokenizer::Tokenizer;

fn vectors() -> Vec<(String, Vec<u32>)> {
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(common::fixture("tokenizer_vectors.json")).unwrap())
            .unwrap();
    json.as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let ids = v["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i.as_u64().unwrap() as u32)
                .collect();
            (v["text"].as_str().unwrap().to_owned(), ids)
        })
        .collect()
}

#[test]
fn every_vector_encodes_exactly() {
    for tok in [
        Tokenizer::neox(),
        Tokenizer::from_file(&common::tiny().join("tokenizer.json")).unwrap(),
    ] {
        for (text, ids) in vectors() {
            assert_eq!(tok.encode(&text).unwrap(), ids, "{text:?}");
        }
    }
}

#[test]
fn streaming_decode_gives_the_exact_text_and_only_whole_characters() {
    let tok = Tokenizer::neox();
    for (text, ids) in vectors() {
        let mut stream = tok.stream();
        let mut out = String::new();
        for &id in &ids {
            let piece = stream.push(id);
            // A piece is a `String`, so valid UTF-8 by construction; what must not happen is a
            // half character shown as a replacement character.
            assert!(!piece.contains('\u{FFFD}'), "{text:?}: piece {piece:?}");
            out.push_str(&piece);
        }
        assert!(!stream.has_pending(), "{text:?}");
        out.push_str(&stream.finish());
        assert_eq!(out, text);
        assert_eq!(tok.decode(&ids), text);
    }
}

#[test]
fn a_character_split_across_tokens_waits_for_its_last_byte() {
    let tok = Tokenizer::neox();
    // "語" is split over two byte-level tokens by this vocabulary.
    let ids = tok.encode(" 日本語").unwrap();
    assert!(ids.len() > 1, "{ids:?}");
    let mut stream = tok.stream();
    let pieces: Vec<String> = ids.iter().map(|&id| stream.push(id)).collect();
    assert_eq!(pieces.concat(), " 日本語");
    assert!(
        pieces.iter().any(String::is_empty),
        "some token must be held back: {pieces:?}"
    );
}
