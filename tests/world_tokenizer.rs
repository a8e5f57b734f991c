//! The World tokenizer against BlinkDL's `TRIE_TOKENIZER` (rwkv 0.8.32): every text and byte
//! vector exact, the vocab file read with either line end and beside a model, streaming decode
//! that never shows a broken character, and time linear in the input.

use crate::common;

use rwkv_chat::tokenizer::Tokenizer;

struct Vector {
    name: String,
    bytes: Vec<u8>,
    ids: Vec<u32>,
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn vectors() -> Vec<Vector> {
    let json: serde_json::Value = serde_json::from_slice(
        &std::fs::read(common::fixture("world/tokenizer_vectors.json")).unwrap(),
    )
    .unwrap();
    let read = |v: &serde_json::Value, bytes_key: &str| Vector {
        name: v["name"].as_str().unwrap().to_owned(),
        bytes: hex(v[bytes_key].as_str().unwrap()),
        ids: v["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_u64().unwrap() as u32)
            .collect(),
    };
    let mut out: Vec<Vector> = json["vectors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let vector = read(v, "utf8_hex");
            assert_eq!(vector.bytes, v["text"].as_str().unwrap().as_bytes());
            vector
        })
        .collect();
    out.extend(
        json["byte_vectors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| read(v, "bytes_hex")),
    );
    assert_eq!(out.len(), 29);
    out
}

fn check_all(tok: &Tokenizer) {
    for v in vectors() {
        assert_eq!(tok.encode_bytes(&v.bytes).unwrap(), v.ids, "{}", v.name);
        let decoded: Vec<u8> = v
            .ids
            .iter()
            .flat_map(|&id| tok.piece(id).to_vec())
            .collect();
        assert_eq!(decoded, v.bytes, "{}", v.name);
    }
}

#[test]
fn every_vector_encodes_exactly() {
    check_all(&Tokenizer::world());
}

#[test]
fn the_vocab_file_reads_with_crlf_or_lf_line_ends() {
    let shipped = include_str!("../src/assets/rwkv_vocab_v20230424.txt");
    assert!(
        shipped.contains("\r\n"),
        "the wheel's file has CRLF line ends"
    );
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in [
        ("crlf.txt", shipped.to_owned()),
        ("lf.txt", shipped.replace("\r\n", "\n")),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        check_all(&Tokenizer::from_file(&path).unwrap());
    }
}

#[test]
fn a_broken_vocab_file_is_refused_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vocab.txt");
    std::fs::write(&path, "1 'a' 1\n2 'b\n").unwrap();
    let e = Tokenizer::from_file(&path).err().unwrap().to_string();
    assert!(e.contains("vocab.txt") && e.contains("line 2"), "{e}");
}

#[test]
fn streaming_never_shows_a_broken_character() {
    let tok = Tokenizer::world();
    let text = "emoji 🎉🙂👩🏽\u{200d}💻🇫🇷 第0段：中文、日本語 한국어";
    let ids = tok.encode(text).unwrap();
    // The vocab splits some of these characters across tokens.
    assert!(
        ids.iter()
            .any(|&id| std::str::from_utf8(tok.piece(id)).is_err())
    );
    let mut stream = tok.stream();
    let mut shown = String::new();
    for id in ids {
        let part = stream.push(id);
        assert!(!part.contains('\u{FFFD}'), "{part:?}");
        shown.push_str(&part);
    }
    shown.push_str(&stream.finish());
    assert_eq!(shown, text);
}

/// 1 MB of mixed-script text round-trips. Encoding walks the trie from each token's start at
/// most as far as the longest token (128 bytes), so its work is linear in the input; the time
/// is printed, not asserted.
#[test]
fn a_megabyte_of_text_tokenizes_in_one_pass() {
    let tok = Tokenizer::world();
    let para = vectors().into_iter().find(|v| v.name == "five_kb").unwrap();
    let mut big = Vec::new();
    while big.len() < 1 << 20 {
        big.extend_from_slice(&para.bytes);
    }
    let ids = tok.encode_bytes(&big).unwrap();
    let decoded: Vec<u8> = ids.iter().flat_map(|&id| tok.piece(id).to_vec()).collect();
    assert_eq!(decoded, big);
    let start = std::time::Instant::now();
    let _ = tok.encode_bytes(&big).unwrap();
    eprintln!("1 MB encoded in {:?}", start.elapsed());
}

#[test]
fn a_vocab_file_too_large_for_a_tokenizer_is_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vocab.txt");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(65 << 20)
        .unwrap();
    let e = Tokenizer::from_file(&path).err().unwrap().to_string();
    assert!(e.contains("too large for a tokenizer"), "{e}");
}
