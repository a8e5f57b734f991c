use std::time::Duration;

use super::fake::FakeBackend;
use super::*;

const WAIT: Duration = Duration::from_secs(10);

fn next(worker: &Worker) -> Event {
    match worker.recv_timeout(WAIT) {
        Some(e) => e,
        None => panic!("no event from the worker"),
    }
}

/// Events until (and including) the first one `stop` accepts.
fn until(worker: &Worker, stop: impl Fn(&Event) -> bool) -> Vec<Event> {
    let mut seen = Vec::new();
    loop {
        let e = next(worker);
        let done = stop(&e);
        seen.push(e);
        if done {
            return seen;
        }
    }
}

#[test]
fn commands_in_events_out() {
    let worker = Worker::spawn(Box::new(FakeBackend::default())).unwrap();
    assert!(matches!(next(&worker), Event::Presets(p) if p.len() == 2));

    worker.send(Command::LoadModel {
        request_id: 1,
        spec: "tiny".into(),
    });
    let events = until(&worker, |e| matches!(e, Event::ModelLoaded(_)));
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(
        matches!(&events[0], Event::ModelLoading { progress: p, .. } if p.done == 1 && p.total == 2)
    );

    worker.send(Command::NewSession {
        preset: Some("raven".into()),
    });
    assert!(matches!(next(&worker), Event::SessionOpened(v) if v.preset == "raven"));
    assert!(matches!(next(&worker), Event::Sessions(l) if l.len() == 1));

    worker.send(Command::Turn {
        request_id: 7,
        turn: Turn::Send("hi".into()),
    });
    let events = until(&worker, |e| matches!(e, Event::Sessions(_)));
    let tokens: String = events
        .iter()
        .filter_map(|e| match e {
            Event::Token {
                request_id: 7,
                text,
            } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(tokens, "Hello, world!");
    assert!(events.iter().any(|e| matches!(
        e,
        Event::Finished { request_id: 7, stats } if stats.stop == StopReason::EndOfTurn && stats.generated_tokens == 4
    )));
    assert!(events.contains(&Event::Saved { name: "s1".into() }));

    worker.send(Command::LoadModel {
        request_id: 8,
        spec: "missing".into(),
    });
    assert!(
        matches!(next(&worker), Event::Error { request_id: Some(8), message } if message.contains("no model"))
    );

    worker.send(Command::Shutdown);
    assert_eq!(next(&worker), Event::Saved { name: "s1".into() });
    worker.shutdown();
}

/// A worker whose replies never end on their own, with a session open.
fn endless_session() -> Worker {
    let backend = FakeBackend {
        endless: true,
        ..FakeBackend::default()
    };
    let worker = Worker::spawn(Box::new(backend)).unwrap();
    worker.send(Command::NewSession {
        preset: Some("raven".into()),
    });
    worker
}

#[test]
fn cancel_stops_a_stream() {
    let worker = endless_session();
    worker.send(Command::Turn {
        request_id: 1,
        turn: Turn::Send("go on forever".into()),
    });
    until(&worker, |e| matches!(e, Event::Token { .. }));
    worker.send(Command::Cancel { request_id: 1 });
    let events = until(&worker, |e| matches!(e, Event::Finished { .. }));
    assert!(matches!(
        events.last(),
        Some(Event::Finished { request_id: 1, stats }) if stats.stop == StopReason::Cancelled
    ));
    worker.shutdown();
}

#[test]
fn a_cancel_sent_before_the_request_starts_still_counts_and_spares_the_next() {
    let worker = endless_session();
    worker.send(Command::Turn {
        request_id: 1,
        turn: Turn::Send("a".into()),
    });
    worker.send(Command::Cancel { request_id: 1 });
    let events = until(&worker, |e| matches!(e, Event::Finished { .. }));
    assert!(matches!(
        events.last(),
        Some(Event::Finished { stats, .. }) if stats.stop == StopReason::Cancelled && stats.generated_tokens == 0
    ));
    worker.send(Command::Turn {
        request_id: 2,
        turn: Turn::Send("b".into()),
    });
    until(&worker, |e| matches!(e, Event::Token { request_id: 2, .. }));
    worker.send(Command::Cancel { request_id: 2 });
    until(&worker, |e| {
        matches!(e, Event::Finished { request_id: 2, .. })
    });
    worker.shutdown();
}

#[test]
fn a_panicking_backend_is_reported_and_the_thread_goes_on() {
    let worker = endless_session();
    worker.send(Command::Turn {
        request_id: 3,
        turn: Turn::Send("panic".into()),
    });
    let events = until(&worker, |e| matches!(e, Event::Error { .. }));
    assert!(matches!(
        events.last(),
        Some(Event::Error { request_id: Some(3), message }) if message.contains("asked to panic")
    ));
    worker.send(Command::ListSessions);
    until(&worker, |e| matches!(e, Event::Sessions(_)));
    worker.shutdown();
}

#[test]
fn cancel_stops_a_model_download() {
    let worker = Worker::spawn(Box::new(FakeBackend::default())).unwrap();
    worker.send(Command::LoadModel {
        request_id: 4,
        spec: "slow".into(),
    });
    worker.send(Command::LoadModel {
        request_id: 5,
        spec: "tiny".into(),
    });
    // Choosing another model gives up on the first; the second loads.
    worker.send(Command::Cancel { request_id: 4 });
    let events = until(&worker, |e| matches!(e, Event::ModelLoaded(_)));
    assert!(
        events.iter().any(|e| matches!(
            e,
            Event::Error { request_id: Some(4), message } if message.contains("cancelled")
        )),
        "{events:?}"
    );
    assert!(
        matches!(events.last(), Some(Event::ModelLoaded(m)) if m.name == "tiny"),
        "{events:?}"
    );
    worker.shutdown();
}

#[test]
fn shutting_down_stops_a_download_and_a_reply_in_flight() {
    let worker = Worker::spawn(Box::new(FakeBackend::default())).unwrap();
    worker.send(Command::LoadModel {
        request_id: 1,
        spec: "slow".into(),
    });
    until(&worker, |e| matches!(e, Event::Presets(_)));
    // Generous: the promise is 2 s; this only shows that leaving does not wait for the end.
    assert!(worker.shutdown_within(WAIT), "the download held the thread");

    let worker = endless_session();
    worker.send(Command::Turn {
        request_id: 1,
        turn: Turn::Send("go on forever".into()),
    });
    until(&worker, |e| matches!(e, Event::Token { .. }));
    // From another thread, as the signal handler does.
    let stopper = worker.stopper();
    let stopped = std::thread::spawn(move || stopper.stop(WAIT))
        .join()
        .unwrap();
    assert!(stopped);
    let events: Vec<Event> = std::iter::from_fn(|| worker.try_recv()).collect();
    assert!(
        events.iter().any(|e| matches!(
            e,
            Event::Finished { request_id: 1, stats } if stats.stop == StopReason::Cancelled
        )),
        "{events:?}"
    );
    assert_eq!(events.last(), Some(&Event::Saved { name: "s1".into() }));
}
