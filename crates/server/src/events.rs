//! The live event stream (`GET /api/events`): every event gets a server-wide
//! id (`id:` in the stream); the last few are kept, so a browser that
//! reconnects with `Last-Event-ID` gets what it missed, and one that missed
//! more than is kept is told to reload (`event: reload`). Every subscriber has
//! a bounded queue; one that does not keep up loses it and reconnects (the
//! browser's `EventSource` does).

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::mpsc::{channel, error::TrySendError, Receiver, Sender};

/// Frames queued per subscriber before it is dropped.
const QUEUE: usize = 512;
/// Frames kept for reconnecting subscribers.
const KEEP: usize = 256;

/// One event: its id, name and one line of JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Frame {
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) data: String,
}

#[derive(Debug, Default)]
struct Inner {
    /// The id of the last event published.
    next_id: u64,
    recent: VecDeque<Frame>,
    subscribers: Vec<Sender<Frame>>,
}

/// The subscribers and the recent frames.
#[derive(Debug, Default)]
pub(crate) struct Hub {
    inner: Mutex<Inner>,
}

/// What a new subscriber must be sent before the live frames.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Catchup {
    /// A first connection (no `Last-Event-ID`): send the current state,
    /// marked with the id of the last event sent so far.
    Fresh(u64),
    /// A reconnection whose missed frames are all kept: these.
    Replay(Vec<Frame>),
    /// A reconnection that missed more than is kept: tell it to reload.
    Reload,
}

impl Hub {
    /// A hub whose ids continue past any earlier server's: they start at the
    /// time in milliseconds, so an id from before a restart is never taken for
    /// a new event (that would take more than one event per millisecond).
    pub(crate) fn new() -> Self {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0));
        Self {
            inner: Mutex::new(Inner {
                next_id: ms,
                ..Inner::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new subscriber's queue, and what it missed since `last_id` (under one
    /// lock, so no frame falls between the catch-up and the queue).
    pub(crate) fn subscribe(&self, last_id: Option<u64>) -> (Receiver<Frame>, Catchup) {
        let (tx, rx) = channel(QUEUE);
        let mut inner = self.lock();
        inner.subscribers.push(tx);
        let catchup = match last_id {
            None => Catchup::Fresh(inner.next_id),
            // Ids from before a restart, or from the future, cannot be replayed.
            Some(last) if last > inner.next_id => Catchup::Reload,
            Some(last) => match inner.recent.front() {
                Some(first) if first.id <= last + 1 => Catchup::Replay(
                    inner
                        .recent
                        .iter()
                        .filter(|f| f.id > last)
                        .cloned()
                        .collect(),
                ),
                None if last == inner.next_id => Catchup::Replay(Vec::new()),
                _ => Catchup::Reload,
            },
        };
        (rx, catchup)
    }

    /// Sends `event: NAME` with `data` (one line of JSON) to every subscriber.
    pub(crate) fn publish(&self, name: &str, data: &str) {
        let mut inner = self.lock();
        inner.next_id += 1;
        let frame = Frame {
            id: inner.next_id,
            name: name.to_string(),
            data: data.to_string(),
        };
        if inner.recent.len() >= KEEP {
            inner.recent.pop_front();
        }
        inner.recent.push_back(frame.clone());
        inner
            .subscribers
            .retain(|tx| match tx.try_send(frame.clone()) {
                Ok(()) => true,
                Err(TrySendError::Full(_) | TrySendError::Closed(_)) => false,
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_reach_subscribers_and_dead_ones_are_dropped() {
        let hub = Hub::default();
        let (mut a, first) = hub.subscribe(None);
        assert!(matches!(first, Catchup::Fresh(0)));
        let (b, _) = hub.subscribe(None);
        drop(b);
        hub.publish("session", "{\"id\":1}");
        let f = a.try_recv().expect("frame");
        assert_eq!((f.id, f.name.as_str()), (1, "session"));
        assert!(Hub::new().lock().next_id > 1_000_000_000_000);
        assert_eq!(hub.lock().subscribers.len(), 1);
    }

    #[test]
    fn reconnects_replay_what_they_missed_or_reload() {
        let hub = Hub::default();
        for i in 0..5 {
            hub.publish("session", &i.to_string());
        }
        let (_rx, c) = hub.subscribe(Some(3));
        let Catchup::Replay(frames) = c else {
            panic!("{c:?}")
        };
        assert_eq!(frames.iter().map(|f| f.id).collect::<Vec<_>>(), [4, 5]);
        assert_eq!(hub.subscribe(Some(5)).1, Catchup::Replay(Vec::new()));
        // An id this server never gave (a restart happened): reload.
        assert_eq!(hub.subscribe(Some(99)).1, Catchup::Reload);
        for i in 0..KEEP {
            hub.publish("session", &i.to_string());
        }
        assert_eq!(hub.subscribe(Some(2)).1, Catchup::Reload);
    }
}
