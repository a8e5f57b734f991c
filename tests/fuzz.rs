//! Property tests over every parser and streaming transform that sees bytes or text from
//! outside: saved state files, session.json, config/preset/theme TOML, the UTF-8 stream
//! decoder, the sampler and the terminal sanitizer. Each must return a value or a typed error
//! for any input, never panic. Case counts stay modest so the whole file runs in seconds on a
//! 2-core CI machine; the input shapes are chosen so that cases reach deep into each parser
//! (mutated valid files with a fixed checksum rather than pure noise).

use std::path::Path;

use proptest::prelude::*;
use rwkv_chat::chat::{Message, Preset, Role, Transcript};
use rwkv_chat::model::{Config, Fingerprint, Generation, State};
use rwkv_chat::sampler::{Sampler, SamplingParams};
use rwkv_chat::store::state_file::{self, Index, StateRef};
use rwkv_chat::store::{SessionFile, Store};

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 96,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn sample_index() -> Index {
    let at = |messages| StateRef {
        messages,
        transcript_checksum: 42,
        tokens: 12 * messages,
        len: 300,
        crc: 0x1234_5678,
    };
    Index {
        fingerprint: Fingerprint {
            generation: Generation::Rwkv4,
            layers: 2,
            hidden: 4,
            attention: 4,
            head_size: 0,
            vocab: 10,
            weights: 7,
        },
        state: at(4),
        checkpoints: vec![at(0), at(2)],
    }
}

fn sample_state() -> State {
    State::new(&Config::new(10, 4, 2))
}

/// Rewrites the header checksum so that a mutated payload reaches the bincode decoder.
fn fix_checksum(bytes: &mut [u8]) {
    if bytes.len() >= 16 {
        let crc = crc32fast::hash(&bytes[16..]);
        bytes[12..16].copy_from_slice(&crc.to_le_bytes());
    }
}

/// Byte edits: (position seed, new byte) pairs, plus an optional truncation or extension.
fn edits() -> impl Strategy<Value = (Vec<(usize, u8)>, Option<usize>, Vec<u8>)> {
    (
        prop::collection::vec((any::<usize>(), any::<u8>()), 0..12),
        prop::option::of(any::<usize>()),
        prop::collection::vec(any::<u8>(), 0..16),
    )
}

fn mutate(
    mut bytes: Vec<u8>,
    (edits, cut, tail): (Vec<(usize, u8)>, Option<usize>, Vec<u8>),
) -> Vec<u8> {
    for (at, value) in edits {
        if !bytes.is_empty() {
            let i = at % bytes.len();
            bytes[i] = value;
        }
    }
    if let Some(cut) = cut {
        bytes.truncate(cut % (bytes.len() + 1));
    }
    bytes.extend(tail);
    bytes
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn state_files_of_any_bytes_decode_or_are_refused(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = state_file::decode_index(&bytes);
        let _ = state_file::decode_state(&bytes);
    }

    #[test]
    fn mutated_state_files_with_a_valid_checksum_decode_or_are_refused(e in edits()) {
        let mut bytes = mutate(state_file::encode_index(&sample_index()).unwrap(), e.clone());
        fix_checksum(&mut bytes);
        if let Ok(index) = state_file::decode_index(&bytes) {
            // Whatever decodes is a well-formed value that encodes again, and names only
            // state files (no path).
            prop_assert!(state_file::encode_index(&index).is_ok());
            for at in index.refs() {
                prop_assert!(state_file::is_state_file_name(&at.file_name()));
            }
        }
        let mut bytes = mutate(state_file::encode_state(&sample_state()).unwrap(), e);
        fix_checksum(&mut bytes);
        if let Ok(state) = state_file::decode_state(&bytes) {
            prop_assert!(state_file::encode_state(&state).is_ok());
        }
    }

    #[test]
    fn session_json_of_any_shape_loads_or_names_the_file(e in edits(), text in ".{0,64}") {
        let data = tempfile::tempdir().unwrap();
        let store = Store::open(data.path()).unwrap();
        let session = SessionFile::new(
            Preset::built_in().remove(0),
            SamplingParams::default(),
            Transcript {
                intro: "intro".into(),
                messages: vec![Message { role: Role::User, text: text.clone(), fed: text }],
            },
        );
        store.save("s", &session, None).unwrap();
        let path = data.path().join("sessions/s/session.json");
        let bytes = mutate(std::fs::read(&path).unwrap(), e);
        std::fs::write(&path, &bytes).unwrap();
        match store.load("s") {
            Ok(_) => {}
            Err(err) => prop_assert!(err.to_string().contains("session.json"), "{err}"),
        }
        // Listing shows the broken session with its problem instead of failing.
        let listed = store.list().unwrap();
        prop_assert_eq!(listed.len(), 1);
    }

    #[test]
    fn config_toml_parses_or_names_the_line(text in "[a-z_=\"\\[\\]{}.,0-9 \n#-]{0,120}") {
        let path = Path::new("config.toml");
        if let Err(e) = rwkv_chat::config::Config::parse(path, &text) {
            prop_assert!(e.to_string().contains("config.toml"), "{e}");
        }
    }

    #[test]
    fn preset_toml_parses_or_is_refused(text in "[a-z_=\"\\[\\]{}.,0-9 \n#\\\\-]{0,160}") {
        let origin = Path::new("presets/fuzz.toml");
        if let Err(e) = Preset::parse(&text, origin) {
            prop_assert!(e.to_string().contains("fuzz.toml"), "{e}");
        }
    }

    #[test]
    fn mutated_built_in_presets_parse_or_are_refused(e in edits()) {
        let text = include_str!("../src/chat/presets/raven.toml").as_bytes().to_vec();
        let text = String::from_utf8_lossy(&mutate(text, e)).into_owned();
        let _ = Preset::parse(&text, Path::new("raven.toml"));
    }

    #[test]
    fn theme_toml_parses_or_is_refused(
        text in "[a-z_=\"#\\[\\]0-9A-F \n-]{0,120}",
        depth in 0..4usize,
    ) {
        use rwkv_chat::ui::theme::{ColorDepth, FALLBACK, Theme};
        if let Ok(theme) = Theme::parse("fuzz", &text, &FALLBACK) {
            let depth = [ColorDepth::None, ColorDepth::Ansi16, ColorDepth::Ansi256, ColorDepth::TrueColor][depth];
            let _ = theme.fit(depth);
        }
    }

    #[test]
    fn streamed_tokens_decode_like_the_whole_sequence(ids in prop::collection::vec(0u32..60_000, 0..48)) {
        let tokenizer = tokenizer();
        let mut stream = tokenizer.stream();
        let mut text: String = ids.iter().map(|&id| stream.push(id)).collect();
        text.push_str(&stream.finish());
        prop_assert!(!stream.has_pending());
        // Ids past the vocabulary are empty pieces; the rest decodes exactly as a whole.
        prop_assert_eq!(text, tokenizer.decode(&ids));
    }

    #[test]
    fn the_sampler_picks_an_id_in_range_whatever_the_logits_and_settings(
        logits in prop::collection::vec(
            prop_oneof![
                any::<f32>(),
                Just(f32::NAN),
                Just(f32::INFINITY),
                Just(f32::NEG_INFINITY),
                -50.0f32..50.0,
            ],
            1..40,
        ),
        temperature in prop_oneof![any::<f32>(), 0.0f32..3.0],
        top_p in prop_oneof![any::<f32>(), 0.0f32..=1.0],
        top_k in 0usize..50,
        presence in prop_oneof![any::<f32>(), 0.0f32..2.0],
        frequency in prop_oneof![any::<f32>(), 0.0f32..2.0],
        decay in prop_oneof![any::<f32>(), 0.0f32..=1.0],
        banned in prop::collection::vec(0u32..60, 0..5),
        seed in any::<u64>(),
    ) {
        let params = SamplingParams {
            temperature,
            top_p,
            top_k,
            presence_penalty: presence,
            frequency_penalty: frequency,
            penalty_decay: decay,
        };
        let mut sampler = Sampler::new(params, seed, banned);
        for _ in 0..4 {
            let id = sampler.sample(&mut logits.clone());
            prop_assert!((id as usize) < logits.len(), "{id} of {}", logits.len());
        }
    }

    #[test]
    fn sanitized_text_holds_nothing_a_terminal_acts_on(text in any::<String>()) {
        let safe = rwkv_chat::text::sanitize(&text);
        let acted_on = |c: char| {
            (c.is_control() && c != '\n' && c != '\t')
                || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{200e}' | '\u{200f}' | '\u{061c}')
        };
        prop_assert!(!safe.chars().any(acted_on), "{safe:?}");
        // Lines survive: sanitizing never joins or splits them.
        prop_assert_eq!(safe.matches('\n').count(), text.matches('\n').count());
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn an_accepted_session_name_is_one_plain_path_component(name in "[a-z./\\\\-_]{0,8}|.{0,8}") {
        if rwkv_chat::store::validate_name(&name).is_ok() {
            let parts: Vec<_> = Path::new(&name).components().collect();
            prop_assert!(matches!(parts[..], [std::path::Component::Normal(_)]), "{name:?}");
        }
    }

    #[test]
    fn an_accepted_model_id_names_only_paths_inside_the_cache(spec in "[a-z./@-]{0,16}") {
        if let Some(spec) = rwkv_chat::hub::ModelSpec::parse(&spec) {
            for part in [Some(spec.repo), spec.file, spec.revision].into_iter().flatten() {
                let plain = Path::new(&part)
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)));
                prop_assert!(plain && !part.is_empty(), "{part:?}");
            }
        }
    }
}

fn tokenizer() -> &'static rwkv_chat::tokenizer::Tokenizer {
    static TOKENIZER: std::sync::OnceLock<rwkv_chat::tokenizer::Tokenizer> =
        std::sync::OnceLock::new();
    TOKENIZER.get_or_init(rwkv_chat::tokenizer::Tokenizer::neox)
}
