//! Scale benchmark, not a timed test (SECURITY.md reports its numbers): listing 10,000
//! sessions, as the sidebar and `sessions list` do. Run with
//! `cargo test --test scale -- --ignored --nocapture`.

use std::time::Instant;

use rwkv_chat::chat::{Message, Preset, Role, Transcript};
use rwkv_chat::sampler::SamplingParams;
use rwkv_chat::store::{SessionFile, Store};

fn peak_mb() -> f64 {
    rwkv_chat::bench::peak_rss_mb().unwrap_or(0.0)
}

#[test]
#[ignore = "benchmark: prints timings and memory"]
fn scale_listing_ten_thousand_sessions() {
    let data = tempfile::tempdir().unwrap();
    let store = Store::open(data.path()).unwrap();
    let text = "The raven flies over the hills and eats berries. ".repeat(5);
    let messages = (0..20)
        .map(|i| Message {
            role: if i % 2 == 0 { Role::User } else { Role::Bot },
            text: text.clone(),
            fed: text.clone(),
        })
        .collect();
    let session = SessionFile::new(
        Preset::built_in().remove(0),
        SamplingParams::default(),
        Transcript {
            intro: String::new(),
            messages,
        },
    );
    let json = serde_json::to_vec_pretty(&session).unwrap();
    // Written directly: 10,000 fsynced saves would measure the disk, not the listing.
    for i in 0..10_000 {
        let dir = data.path().join(format!("sessions/chat-{i:05}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("session.json"), &json).unwrap();
    }
    let before = peak_mb();
    let t = Instant::now();
    let listed = store.list().unwrap();
    let elapsed = t.elapsed();
    assert_eq!(listed.len(), 10_000);
    println!(
        "10,000 sessions of {} bytes: listed in {elapsed:?}, peak RSS {before:.1} -> {:.1} MB",
        json.len(),
        peak_mb()
    );
}
