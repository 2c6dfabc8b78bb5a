//! The live event stream (`GET /api/events`): every subscriber gets a bounded
//! queue of ready-to-send server-sent-event frames; a subscriber that does not
//! keep up loses its queue and reconnects (the browser's `EventSource` does).

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Mutex;

/// Frames queued per subscriber before it is dropped.
const QUEUE: usize = 512;

/// The subscribers.
#[derive(Debug, Default)]
pub(crate) struct Hub {
    subscribers: Mutex<Vec<SyncSender<String>>>,
}

impl Hub {
    /// A new subscriber's queue of frames.
    pub(crate) fn subscribe(&self) -> Receiver<String> {
        let (tx, rx) = sync_channel(QUEUE);
        self.subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tx);
        rx
    }

    /// Sends `event: NAME` with `data` (one line of JSON) to every subscriber.
    pub(crate) fn publish(&self, name: &str, data: &str) {
        let frame = format!("event: {name}\ndata: {data}\n\n");
        self.subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|tx| match tx.try_send(frame.clone()) {
                Ok(()) => true,
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_reach_subscribers_and_dead_ones_are_dropped() {
        let hub = Hub::default();
        let a = hub.subscribe();
        let b = hub.subscribe();
        drop(b);
        hub.publish("session", "{\"id\":1}");
        assert_eq!(
            a.try_recv().expect("frame"),
            "event: session\ndata: {\"id\":1}\n\n"
        );
        assert_eq!(hub.subscribers.lock().expect("lock").len(), 1);
    }
}
