//! The real [`Backend`]: the chat engine and the session store behind the worker protocol.
//! One session is open at a time (its lock held); switching saves and closes the old one.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, bail};

use super::{
    Backend, ChatMessage, LoadProgress, ModelInfo, PresetInfo, ReplyStats, SessionInfo,
    SessionView, StopReason,
};
use crate::chat::{self, Conversation, Preset, Turn, preset};
use crate::engine::Engine;
use crate::model::LoadOptions;
use crate::sampler::SamplingParams;
use crate::session::{OpenSession, Rebuild};
use crate::store::Store;

fn loaded(engine: &Option<(Engine, String)>) -> anyhow::Result<&Engine> {
    engine
        .as_ref()
        .map(|(e, _)| e)
        .context("no model is loaded: choose one in the model menu")
}

/// Download progress from the hub, as the worker's load progress; the worker's cancel flag
/// stops the download between chunks.
struct DownloadProgress<'a> {
    progress: &'a mut dyn FnMut(LoadProgress),
    cancel: &'a AtomicBool,
}

impl crate::hub::ProgressSink for DownloadProgress<'_> {
    fn update(&mut self, p: &crate::hub::Progress) {
        let eta = p
            .eta()
            .map(|t| format!(", {}:{:02} left", t.as_secs() / 60, t.as_secs() % 60))
            .unwrap_or_default();
        let rate = crate::hub::human_bytes(p.rate() as u64);
        (self.progress)(LoadProgress {
            stage: format!(
                "downloading {} ({}/{}), {rate}/s{eta}",
                p.file, p.index, p.count
            ),
            done: p.done,
            total: p.total,
        });
    }

    fn finished(&mut self, p: &crate::hub::Progress) {
        self.update(p);
    }

    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }
}

pub struct ChatBackend {
    store: Store,
    presets: Vec<Preset>,
    /// Preset files that were skipped, and why.
    problems: Vec<String>,
    load: LoadOptions,
    engine: Option<(Engine, String)>,
    session: Option<OpenSession>,
    max_reply_tokens: usize,
}

impl ChatBackend {
    pub fn new(
        data_dir: &Path,
        presets_dir: Option<PathBuf>,
        load: LoadOptions,
    ) -> anyhow::Result<Self> {
        let loaded = Preset::load_all(presets_dir.as_deref());
        let problems = loaded
            .problems
            .iter()
            .map(|e| {
                let e = e.to_string();
                tracing::warn!("skipped a preset: {e}");
                // TOML errors span lines (a caret under the column); a notice is one line.
                format!(
                    "skipped a preset: {}",
                    e.split_whitespace().collect::<Vec<_>>().join(" ")
                )
            })
            .collect();
        Ok(Self {
            store: Store::open(data_dir)?,
            presets: loaded.presets,
            problems,
            load,
            engine: None,
            session: None,
            max_reply_tokens: crate::chat::conversation::DEFAULT_MAX_REPLY_TOKENS,
        })
    }

    /// Cuts replies after `n` tokens instead of the default.
    pub fn max_reply_tokens(self, n: NonZeroUsize) -> Self {
        Self {
            max_reply_tokens: n.get(),
            ..self
        }
    }

    fn engine(&self) -> anyhow::Result<&Engine> {
        loaded(&self.engine)
    }

    fn view(&self) -> anyhow::Result<SessionView> {
        let session = self.session.as_ref().context("no session is open")?;
        let conv = &session.conversation;
        Ok(SessionView {
            name: session.name.clone(),
            title: session.file.display_title(),
            messages: conv
                .messages()
                .iter()
                .enumerate()
                .map(|(i, m)| ChatMessage {
                    role: m.role,
                    text: m.text.trim().to_owned(),
                    reasons: conv.transcript.reasons(i),
                })
                .collect(),
            preset: conv.preset.name.clone(),
            sampling: conv.sampling.clone(),
            tokens: conv.tokens,
            state_bytes: conv.state.size_bytes() as u64,
            replayed_tokens: session.replayed_tokens,
        })
    }

    /// Saves and closes the open session, releasing its lock.
    fn close(&mut self) -> anyhow::Result<()> {
        if let Some(mut session) = self.session.take()
            && let Some((engine, _)) = &self.engine
        {
            session.save(&self.store, engine)?;
        }
        Ok(())
    }

    fn open(
        &mut self,
        name: &str,
        progress: &mut dyn FnMut(usize, usize),
    ) -> anyhow::Result<SessionView> {
        self.close()?;
        let engine = self.engine()?;
        // The UI cannot stop to ask: a state that does not fit is rebuilt from the transcript
        // and the view reports how many tokens that took.
        let session = OpenSession::open(&self.store, engine, name, Rebuild::Allow, progress)?;
        tracing::info!(
            session = name,
            replayed_tokens = session.replayed_tokens,
            "session opened"
        );
        self.session = Some(session);
        self.view()
    }

    fn stats(&self, reply: chat::Reply) -> ReplyStats {
        let conv = self.session.as_ref().map(|s| &s.conversation);
        ReplyStats {
            stop: match reply.stop {
                chat::StopReason::Stop | chat::StopReason::EndOfText => StopReason::EndOfTurn,
                chat::StopReason::MaxTokens => StopReason::MaxTokens,
                chat::StopReason::Cancelled => StopReason::Cancelled,
            },
            prompt_tokens: reply.prompt_tokens,
            generated_tokens: reply.generated_tokens,
            prefill_tokens_per_s: reply.prefill_tok_s,
            decode_tokens_per_s: reply.decode_tok_s,
            session_tokens: conv.map_or(0, |c| c.tokens),
            state_bytes: conv.map_or(0, |c| c.state.size_bytes() as u64),
        }
    }

    fn new_name(&self) -> String {
        self.store.new_name()
    }
}

impl Backend for ChatBackend {
    fn problems(&self) -> Vec<String> {
        self.problems.clone()
    }

    fn presets(&self) -> Vec<PresetInfo> {
        self.presets
            .iter()
            .map(|p| PresetInfo {
                name: p.name.clone(),
                description: p.description.clone(),
                sampling: p.sampling.clone(),
                think: p.think,
            })
            .collect()
    }

    fn load_model(
        &mut self,
        spec: &str,
        cancel: &AtomicBool,
        progress: &mut dyn FnMut(LoadProgress),
    ) -> anyhow::Result<ModelInfo> {
        progress(LoadProgress {
            stage: format!("looking for {spec}"),
            done: 0,
            total: 0,
        });
        let path = crate::hub::resolve_model(
            spec,
            &crate::hub::Hub::from_env(),
            &mut DownloadProgress {
                progress: &mut *progress,
                cancel,
            },
        )?;
        progress(LoadProgress {
            stage: format!("loading {spec}"),
            done: 0,
            total: 0,
        });
        let engine = Engine::load(&path, self.load.clone(), None)?;
        // Loading the weights cannot be interrupted; a load the user gave up on meanwhile
        // (another model chosen, or quitting) must not replace the model in use.
        if cancel.load(Ordering::SeqCst) {
            bail!("loading {spec} was cancelled");
        }
        let info = ModelInfo {
            name: spec.to_owned(),
            dtype: engine.model.dtype().to_string(),
            device: self.load.device.to_string(),
        };
        let reopen = self.session.as_ref().map(|s| s.name.clone());
        self.close()?;
        self.engine = Some((engine, spec.to_owned()));
        if let Some(name) = reopen {
            // The state belonged to the old model: it is rebuilt for the new one.
            self.open(&name, &mut |done, total| {
                progress(LoadProgress {
                    stage: "rebuilding the session's state".into(),
                    done: done as u64,
                    total: total as u64,
                })
            })?;
            // The file names the model it now runs on, next to that model's fingerprint.
            if let Some(session) = &mut self.session {
                session.file.model = Some(spec.to_owned());
            }
            self.save()?;
        }
        Ok(info)
    }

    fn list_sessions(&mut self) -> anyhow::Result<Vec<SessionInfo>> {
        Ok(self
            .store
            .list()?
            .into_iter()
            .filter(|s| s.problem.is_none())
            .map(|s| SessionInfo {
                name: s.name,
                title: s.title,
                model: s.model.unwrap_or_default(),
                last_used: s.updated,
            })
            .collect())
    }

    fn new_session(&mut self, preset: Option<&str>) -> anyhow::Result<SessionView> {
        let generation = loaded(&self.engine)?.model.generation();
        let preset = Preset::find(
            &self.presets,
            preset.unwrap_or(preset::default_for(generation)),
        )?;
        self.close()?;
        let name = self.new_name();
        let engine = loaded(&self.engine)?;
        let label = self.engine.as_ref().map(|(_, l)| l.clone());
        let session = OpenSession::create(&self.store, engine, &name, preset, label)?;
        self.session = Some(session);
        self.view()
    }

    fn open_session(&mut self, name: &str) -> anyhow::Result<SessionView> {
        if self.session.as_ref().is_some_and(|s| s.name == name) {
            return self.view();
        }
        self.open(name, &mut |_, _| {})
    }

    /// Runs the turn with a fresh seed; the session is saved before the stats are reported.
    fn turn(
        &mut self,
        turn: &Turn,
        cancel: &AtomicBool,
        on_token: &mut dyn FnMut(&str),
    ) -> anyhow::Result<ReplyStats> {
        let engine = loaded(&self.engine)?;
        let session = self.session.as_mut().context("no session is open")?;
        let opts = chat::ReplyOptions {
            max_tokens: self.max_reply_tokens,
            seed: rand::random(),
        };
        let reply = session.turn(&self.store, engine, |c, e| {
            c.turn(e, turn, opts, cancel, on_token)
        })?;
        Ok(self.stats(reply))
    }

    fn fork(&mut self, at_turn: usize) -> anyhow::Result<SessionView> {
        let source = self
            .session
            .as_ref()
            .context("no session is open")?
            .name
            .clone();
        let new = self.new_name();
        // Saved first, so the fork starts from the state kept at that turn.
        self.save()?;
        crate::session::fork(&self.store, &source, Some(at_turn), &new)?;
        self.open(&new, &mut |_, _| {})
    }

    fn rename(&mut self, name: &str, title: &str) -> anyhow::Result<()> {
        let title = title.trim();
        if title.is_empty() {
            bail!("the title is empty");
        }
        if let Some(session) = self.session.as_mut().filter(|s| s.name == name) {
            session.file.title = title.to_owned();
            return self.save().map(drop);
        }
        let _lock = self.store.lock(name)?;
        let mut file = self.store.load(name)?;
        file.title = title.to_owned();
        self.store.save(name, &file, None)?;
        Ok(())
    }

    fn delete(&mut self, name: &str) -> anyhow::Result<()> {
        if self.session.as_ref().is_some_and(|s| s.name == name) {
            self.session = None;
        }
        self.store.delete(name)?;
        Ok(())
    }

    fn set_preset(&mut self, name: &str) -> anyhow::Result<SessionView> {
        let preset = Preset::find(&self.presets, name)?;
        let engine = loaded(&self.engine)?;
        let session = self.session.as_mut().context("no session is open")?;
        if session.conversation.messages().is_empty() {
            // Nothing said yet: the session starts over as a new one with this preset would,
            // its introduction instead of the old preset's.
            session.conversation = Conversation::new(engine, preset)?;
        } else {
            session.conversation.sampling = preset.sampling.clone();
            session.conversation.preset = preset;
        }
        self.save()?;
        self.view()
    }

    fn set_sampling(&mut self, sampling: &SamplingParams) -> anyhow::Result<()> {
        sampling.validate().map_err(anyhow::Error::msg)?;
        let session = self.session.as_mut().context("no session is open")?;
        session.conversation.sampling = sampling.clone();
        self.save().map(drop)
    }

    fn save(&mut self) -> anyhow::Result<Option<String>> {
        let (Some((engine, _)), Some(session)) = (&self.engine, &mut self.session) else {
            return Ok(None);
        };
        session.save(&self.store, engine)?;
        Ok(Some(session.name.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> String {
        format!("{}/tests/fixtures/tiny-rwkv4", env!("CARGO_MANIFEST_DIR"))
    }

    fn backend(data: &Path) -> ChatBackend {
        let mut b = ChatBackend::new(data, None, LoadOptions::default()).unwrap();
        b.load_model(&tiny(), &AtomicBool::new(false), &mut |_| {})
            .unwrap();
        b
    }

    /// With no preset chosen, a session speaks its model's chat format; a World session opened
    /// again after the model changed to RWKV-4 is rebuilt, never fed the other's state.
    #[test]
    fn a_new_session_speaks_the_chat_format_of_its_model() {
        let data = tempfile::tempdir().unwrap();
        let mut b = backend(data.path());
        assert_eq!(b.new_session(None).unwrap().preset, "raven");
        let never = AtomicBool::new(false);
        let world = format!("{}/tests/fixtures/world/e2e-v7", env!("CARGO_MANIFEST_DIR"));
        b.load_model(&world, &never, &mut |_| {}).unwrap();
        let view = b.new_session(None).unwrap();
        assert_eq!(view.preset, "world");
        b.turn(&Turn::Send("Bonjour !".into()), &never, &mut |_| {})
            .unwrap();
        let name = view.name;
        b.load_model(&tiny(), &never, &mut |_| {}).unwrap();
        let reopened = b.open_session(&name).unwrap();
        assert_eq!(reopened.messages.len(), 2);
        assert!(reopened.replayed_tokens > 0, "a foreign state was used");
    }

    /// `config.toml`'s `max_reply_tokens` cuts a reply where it says.
    #[test]
    fn a_reply_is_cut_at_the_configured_length() {
        let data = tempfile::tempdir().unwrap();
        let never = AtomicBool::new(false);
        let mut b = backend(data.path()).max_reply_tokens(NonZeroUsize::new(3).unwrap());
        b.new_session(Some("completion")).unwrap();
        b.set_sampling(&SamplingParams::greedy()).unwrap();
        let stats = b
            .turn(&Turn::Send("The raven".into()), &never, &mut |_| {})
            .unwrap();
        assert_eq!(stats.generated_tokens, 3);
        assert!(matches!(stats.stop, StopReason::MaxTokens), "{stats:?}");
    }

    #[test]
    fn a_session_goes_through_every_command() {
        let data = tempfile::tempdir().unwrap();
        let mut b = backend(data.path());
        let never = AtomicBool::new(false);
        assert!(
            b.turn(&Turn::Send("hi".into()), &never, &mut |_| {})
                .unwrap_err()
                .to_string()
                .contains("no session")
        );

        let view = b.new_session(Some("completion")).unwrap();
        assert_eq!(view.preset, "completion");
        let mut streamed = String::new();
        let stats = b
            .turn(&Turn::Send("The raven".into()), &never, &mut |t| {
                streamed.push_str(t)
            })
            .unwrap();
        assert!(stats.generated_tokens > 0 && !streamed.is_empty());
        assert_eq!(stats.session_tokens, b.view().unwrap().tokens);
        b.turn(&Turn::Regenerate, &never, &mut |_| {}).unwrap();
        b.turn(&Turn::ReplaceLast("A crow".into()), &never, &mut |_| {})
            .unwrap();
        let view = b.view().unwrap();
        assert_eq!(view.messages.len(), 2);
        assert_eq!(view.messages[0].text, "A crow");

        let greedy = SamplingParams::greedy();
        b.set_sampling(&greedy).unwrap();
        assert_eq!(b.view().unwrap().sampling, greedy);
        assert!(
            b.set_sampling(&SamplingParams {
                top_p: 7.0,
                ..greedy
            })
            .is_err()
        );
        let view = b.set_preset("raven").unwrap();
        assert_eq!(view.preset, "raven");

        let original = view.name.clone();
        b.rename(&original, "Corvids").unwrap();
        assert_eq!(b.view().unwrap().title, "Corvids");
        let fork = b.fork(1).unwrap();
        assert_ne!(fork.name, original);
        assert_eq!(fork.messages.len(), 2);
        assert_eq!(fork.replayed_tokens, 0);

        let listed = b.list_sessions().unwrap();
        assert_eq!(listed.len(), 2);
        b.delete(&fork.name).unwrap();
        assert_eq!(b.list_sessions().unwrap().len(), 1);
        assert_eq!(
            b.save().unwrap(),
            None,
            "the deleted session was the open one"
        );
        let view = b.open_session(&original).unwrap();
        assert_eq!(view.title, "Corvids");
        assert_eq!(view.replayed_tokens, 0);
    }

    #[test]
    fn another_model_rebuilds_the_open_session() {
        let data = tempfile::tempdir().unwrap();
        let mut b = backend(data.path());
        b.new_session(Some("raven")).unwrap();
        let never = AtomicBool::new(false);
        b.turn(&Turn::Send("Hello".into()), &never, &mut |_| {})
            .unwrap();
        // The same model from another layout has the same fingerprint: nothing is replayed.
        let raw = format!("{}/rwkv4-raw.pth", tiny());
        let mut stages = vec![];
        b.load_model(&raw, &never, &mut |p| stages.push(p.stage))
            .unwrap();
        assert_eq!(b.view().unwrap().replayed_tokens, 0, "{stages:?}");
        // Other weights: the session's state is rebuilt from its transcript, with progress.
        let mut tensors = candle_core::safetensors::load(
            format!("{}/model.safetensors", tiny()),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let doubled = (tensors["rwkv.ln_out.weight"].clone() * 2.0).unwrap();
        tensors.insert("rwkv.ln_out.weight".into(), doubled);
        let other = data.path().join("other");
        std::fs::create_dir_all(&other).unwrap();
        candle_core::safetensors::save(&tensors, other.join("model.safetensors")).unwrap();
        let mut stages = vec![];
        let name = b.view().unwrap().name;
        b.load_model(other.to_str().unwrap(), &never, &mut |p| {
            stages.push(p.stage)
        })
        .unwrap();
        assert!(b.view().unwrap().replayed_tokens > 0);
        // On disk, the session names the model its fingerprint is of.
        let file = b.store.load(&name).unwrap();
        assert_eq!(file.model.as_deref(), other.to_str());
        assert_eq!(
            file.fingerprint,
            Some(b.engine().unwrap().model.fingerprint())
        );
        assert!(
            stages.iter().any(|s| s.contains("rebuilding")),
            "{stages:?}"
        );
        assert!(
            b.load_model("/nonexistent/model", &never, &mut |_| {})
                .is_err()
        );
        // A load given up on while the weights were read leaves the model in use.
        let err = b
            .load_model(&raw, &AtomicBool::new(true), &mut |_| {})
            .unwrap_err();
        assert!(err.to_string().contains("cancelled"), "{err:#}");
        assert_eq!(b.engine.as_ref().unwrap().1, other.to_str().unwrap());
        assert!(b.view().is_ok(), "a failed load keeps the session");
    }

    #[test]
    fn an_empty_session_takes_the_new_presets_introduction() {
        let data = tempfile::tempdir().unwrap();
        let mut b = backend(data.path());
        let name = b.new_session(Some("raven")).unwrap().name;
        let raven_tokens = b.view().unwrap().tokens;
        assert!(!b.store.load(&name).unwrap().transcript.intro.is_empty());
        let view = b.set_preset("completion").unwrap();
        assert_eq!(view.preset, "completion");
        // What is on disk and in the state: the completion preset's (empty) introduction.
        let file = b.store.load(&name).unwrap();
        assert_eq!(file.transcript.intro, "");
        assert_eq!(file.preset.name, "completion");
        assert!(view.tokens < raven_tokens, "{} {raven_tokens}", view.tokens);
        assert_eq!(
            view.tokens,
            b.new_session(Some("completion")).unwrap().tokens
        );

        // Once something was said, only the format and sampling change.
        b.open_session(&name).unwrap();
        b.turn(
            &Turn::Send("Hello".into()),
            &AtomicBool::new(false),
            &mut |_| {},
        )
        .unwrap();
        b.set_preset("raven").unwrap();
        assert_eq!(b.store.load(&name).unwrap().transcript.intro, "");
    }

    #[test]
    fn a_broken_preset_file_is_reported_and_the_rest_still_work() {
        let data = tempfile::tempdir().unwrap();
        let presets = data.path().join("presets");
        std::fs::create_dir_all(&presets).unwrap();
        std::fs::write(
            presets.join("mine.toml"),
            "name = \"mine\"\nintro = \"Hi\"\n",
        )
        .unwrap();
        std::fs::write(
            presets.join("broken.toml"),
            "name = \"broken\"\nstop = [\"x\"\n",
        )
        .unwrap();
        let mut b = ChatBackend::new(data.path(), Some(presets), LoadOptions::default()).unwrap();
        let names: Vec<String> = b.presets().into_iter().map(|p| p.name).collect();
        assert_eq!(
            names,
            [
                "raven",
                "world",
                "g1-think",
                "user-assistant",
                "instruction",
                "completion",
                "mine"
            ]
        );
        let problems = b.problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("broken.toml"), "{problems:?}");
        assert!(
            problems[0].contains("TOML parse error at line 2"),
            "{problems:?}"
        );
        assert!(
            !problems[0].contains('\n'),
            "one line for the notice: {problems:?}"
        );
        b.load_model(&tiny(), &AtomicBool::new(false), &mut |_| {})
            .unwrap();
        b.new_session(Some("mine")).unwrap();
        b.turn(
            &Turn::Send("Hello".into()),
            &AtomicBool::new(false),
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(b.view().unwrap().messages.len(), 2);
    }
}
