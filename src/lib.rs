//! rwkv-chat: a terminal chat for RWKV language models running on the user's own machine.
//!
//! The library holds everything; `main.rs` only installs [`alloc::HugePages`] and calls
//! [`cli::main`], so tests drive the same code the binary runs.

pub mod alloc;
pub mod bench;
pub mod chat;
pub mod cli;
pub mod config;
pub mod convert;
pub mod engine;
pub mod eval;
pub mod hub;
pub mod model;
pub mod paths;
pub mod report;
pub mod sampler;
pub mod session;
pub mod store;
pub mod text;
pub mod tokenizer;
pub mod ui;
pub mod worker;
