//! An in-memory [`Backend`] that streams canned tokens, so the worker and the UI can be
//! tested without a model or a disk.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;

use super::{
    Backend, ChatMessage, LoadProgress, ModelInfo, PresetInfo, ReplyStats, Role, SessionInfo,
    SessionView, StopReason, Turn,
};
use crate::sampler::SamplingParams;

pub struct FakeBackend {
    /// Each reply streams these pieces.
    pub reply: Vec<String>,
    /// When set, replies never end on their own: they repeat `reply` until cancelled.
    pub endless: bool,
    pub sessions: Vec<SessionView>,
    pub open: Option<usize>,
    pub saves: usize,
}

impl Default for FakeBackend {
    fn default() -> Self {
        Self {
            reply: ["Hello", ", ", "world", "!"].map(String::from).to_vec(),
            endless: false,
            sessions: Vec::new(),
            open: None,
            saves: 0,
        }
    }
}

fn stats(stop: StopReason, generated: usize) -> ReplyStats {
    ReplyStats {
        stop,
        prompt_tokens: 7,
        generated_tokens: generated,
        prefill_tokens_per_s: 120.0,
        decode_tokens_per_s: 12.5,
        session_tokens: 7 + generated,
        state_bytes: 983_040,
    }
}

impl FakeBackend {
    fn current(&mut self) -> anyhow::Result<&mut SessionView> {
        let i = self.open.context("no session is open")?;
        Ok(&mut self.sessions[i])
    }

    fn stream(
        &mut self,
        cancel: &AtomicBool,
        on_token: &mut dyn FnMut(&str),
    ) -> anyhow::Result<ReplyStats> {
        let mut text = String::new();
        let mut n = 0;
        loop {
            for piece in &self.reply {
                if cancel.load(Ordering::SeqCst) {
                    self.current()?.messages.push(ChatMessage {
                        role: Role::Bot,
                        text,
                        reasons: false,
                    });
                    return Ok(stats(StopReason::Cancelled, n));
                }
                on_token(piece);
                text.push_str(piece);
                n += 1;
                if self.endless {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            if !self.endless {
                break;
            }
        }
        self.current()?.messages.push(ChatMessage {
            role: Role::Bot,
            text,
            reasons: false,
        });
        Ok(stats(StopReason::EndOfTurn, n))
    }
}

impl Backend for FakeBackend {
    fn presets(&self) -> Vec<PresetInfo> {
        vec![
            PresetInfo {
                name: "raven".into(),
                description: "Raven chat".into(),
                sampling: SamplingParams::default(),
                think: false,
            },
            PresetInfo {
                name: "instruct".into(),
                description: "Instruction / response".into(),
                sampling: SamplingParams::greedy(),
                think: false,
            },
        ]
    }

    fn load_model(
        &mut self,
        spec: &str,
        cancel: &AtomicBool,
        progress: &mut dyn FnMut(LoadProgress),
    ) -> anyhow::Result<ModelInfo> {
        if spec == "missing" {
            anyhow::bail!("no model at {spec}");
        }
        // A download that never ends on its own, like a large model on a slow line.
        if spec == "slow" {
            while !cancel.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(2));
            }
            anyhow::bail!("download of {spec} cancelled");
        }
        for done in 1..=2 {
            progress(LoadProgress {
                stage: "weights".into(),
                done,
                total: 2,
            });
        }
        Ok(ModelInfo {
            name: spec.into(),
            dtype: "f16".into(),
            device: "cpu".into(),
        })
    }

    fn list_sessions(&mut self) -> anyhow::Result<Vec<SessionInfo>> {
        Ok(self
            .sessions
            .iter()
            .map(|s| SessionInfo {
                name: s.name.clone(),
                title: s.title.clone(),
                model: "fake".into(),
                last_used: 0,
            })
            .collect())
    }

    fn new_session(&mut self, preset: Option<&str>) -> anyhow::Result<SessionView> {
        let preset = preset.unwrap_or("raven");
        let name = format!("s{}", self.sessions.len() + 1);
        self.sessions.push(SessionView {
            title: format!("Chat {}", self.sessions.len() + 1),
            name,
            messages: Vec::new(),
            preset: preset.into(),
            sampling: SamplingParams::default(),
            tokens: 0,
            state_bytes: 983_040,
            replayed_tokens: 0,
        });
        self.open = Some(self.sessions.len() - 1);
        Ok(self.sessions[self.sessions.len() - 1].clone())
    }

    fn open_session(&mut self, name: &str) -> anyhow::Result<SessionView> {
        let i = self
            .sessions
            .iter()
            .position(|s| s.name == name)
            .with_context(|| format!("no session named {name}"))?;
        self.open = Some(i);
        Ok(self.sessions[i].clone())
    }

    fn turn(
        &mut self,
        turn: &Turn,
        cancel: &AtomicBool,
        on_token: &mut dyn FnMut(&str),
    ) -> anyhow::Result<ReplyStats> {
        let session = self.current()?;
        let text = match turn {
            Turn::Send(text) => text,
            Turn::Regenerate => {
                if session.messages.last().map(|m| m.role) != Some(Role::Bot) {
                    anyhow::bail!("there is no reply to regenerate");
                }
                session.messages.pop();
                return self.stream(cancel, on_token);
            }
            Turn::ReplaceLast(text) => {
                while session.messages.last().map(|m| m.role) == Some(Role::Bot) {
                    session.messages.pop();
                }
                session.messages.pop();
                text
            }
        };
        assert!(text != "panic", "the fake backend was asked to panic");
        session.messages.push(ChatMessage {
            role: Role::User,
            text: text.clone(),
            reasons: false,
        });
        self.stream(cancel, on_token)
    }

    fn fork(&mut self, at_turn: usize) -> anyhow::Result<SessionView> {
        let mut copy = self.current()?.clone();
        copy.messages.truncate(at_turn * 2);
        copy.name = format!("s{}", self.sessions.len() + 1);
        copy.title = format!("{} (fork)", copy.title);
        self.sessions.push(copy.clone());
        self.open = Some(self.sessions.len() - 1);
        Ok(copy)
    }

    fn rename(&mut self, name: &str, title: &str) -> anyhow::Result<()> {
        let session = self
            .sessions
            .iter_mut()
            .find(|s| s.name == name)
            .with_context(|| format!("no session named {name}"))?;
        session.title = title.into();
        Ok(())
    }

    fn delete(&mut self, name: &str) -> anyhow::Result<()> {
        self.sessions.retain(|s| s.name != name);
        self.open = None;
        Ok(())
    }

    fn set_preset(&mut self, name: &str) -> anyhow::Result<SessionView> {
        let session = self.current()?;
        session.preset = name.into();
        Ok(session.clone())
    }

    fn set_sampling(&mut self, sampling: &SamplingParams) -> anyhow::Result<()> {
        self.current()?.sampling = sampling.clone();
        Ok(())
    }

    fn save(&mut self) -> anyhow::Result<Option<String>> {
        self.saves += 1;
        Ok(self.open.map(|i| self.sessions[i].name.clone()))
    }
}
