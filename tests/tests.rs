//! Every integration test in one binary (as ripgrep does), so candle, tokenizers and reqwest
//! are linked once, not once per test file. Each file under `tests/` is a module here.

mod common;

mod chat;
mod cli_chat;
mod cli_generate;
mod cli_output;
mod convert;
mod crash_safety;
mod fuzz;
mod golden;
mod hostile_models;
mod hub_download;
mod load_errors;
mod scale;
mod simd_paths;
mod store_hostile;
mod store_turns;
mod tokenizer;
mod tui;
mod untrusted_text;
mod weight_cache;
mod world_cli;
mod world_engine;
mod world_golden;
mod world_tokenizer;
