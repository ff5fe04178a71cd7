//! The concurrency governor: Rally serves at most 12 concurrent requests per user and slows
//! the rest (rally-wsapi.md §13). The sidecar caps its own in-flight upstream requests per
//! credential fingerprint — client traffic, read-backs, fingerprint queries, guard lookups and
//! the cleanup job together — and queues the excess in two FIFO queues: follow-ups of writes
//! already sent (read-backs, fingerprint searches) go before new requests, so a write that is
//! in Rally is confirmed before more writes are started. The queue is bounded and a wait has a
//! timeout, after which the caller gets a 503.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

/// Why a request was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    #[error("more than {0} requests are already waiting for this credential")]
    QueueFull(usize),
    #[error("waited {0:?} for one of this credential's {1} upstream slots")]
    Timeout(Duration, usize),
}

/// Which queue a request waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// A new request (client traffic, a first write, a guard lookup).
    Normal,
    /// The follow-up of a write already sent: served before any `Normal` request.
    FollowUp,
}

#[derive(Default)]
struct Queues {
    free: usize,
    follow_ups: VecDeque<oneshot::Sender<Slot>>,
    normal: VecDeque<oneshot::Sender<Slot>>,
}

impl Queues {
    fn waiting(&self) -> usize {
        self.follow_ups.len() + self.normal.len()
    }
}

struct Lane {
    queues: Mutex<Queues>,
}

impl Lane {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot came back: hand it to the first live waiter, follow-ups first, or keep it.
    fn release(self: &Arc<Lane>) {
        loop {
            let next = {
                let mut q = self.lock();
                match q.follow_ups.pop_front().or_else(|| q.normal.pop_front()) {
                    Some(tx) => tx,
                    None => {
                        q.free += 1;
                        return;
                    }
                }
            };
            match next.send(Slot {
                lane: Some(self.clone()),
            }) {
                Ok(()) => return,
                // That waiter gave up; try the next without releasing twice.
                Err(mut slot) => slot.lane = None,
            }
        }
    }
}

/// Per-credential slots.
pub(crate) struct Governor {
    cap: usize,
    max_queue: usize,
    wait: Duration,
    lanes: Mutex<HashMap<String, Arc<Lane>>>,
}

/// Held while a request is in flight upstream; dropping it frees the slot.
pub(crate) struct Slot {
    lane: Option<Arc<Lane>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(lane) = self.lane.take() {
            lane.release();
        }
    }
}

impl Governor {
    pub(crate) fn new(cap: usize, max_queue: usize, wait: Duration) -> Governor {
        Governor {
            cap: cap.max(1),
            max_queue,
            wait,
            lanes: Mutex::new(HashMap::new()),
        }
    }

    fn lane(&self, fingerprint: &str) -> Arc<Lane> {
        let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        // Forget idle lanes now and then so the map stays bounded by active credentials.
        if lanes.len() > 10_000 {
            let cap = self.cap;
            lanes.retain(|_, l| {
                let q = l.lock();
                q.free < cap || q.waiting() > 0
            });
        }
        lanes
            .entry(fingerprint.to_string())
            .or_insert_with(|| {
                Arc::new(Lane {
                    queues: Mutex::new(Queues {
                        free: self.cap,
                        ..Queues::default()
                    }),
                })
            })
            .clone()
    }

    /// Waits for a slot for this credential, as a new request.
    #[cfg(test)]
    pub(crate) async fn acquire(&self, fingerprint: &str) -> Result<Slot, Refusal> {
        self.acquire_as(fingerprint, Priority::Normal).await
    }

    /// Waits for a slot for this credential in the given queue.
    pub(crate) async fn acquire_as(
        &self,
        fingerprint: &str,
        priority: Priority,
    ) -> Result<Slot, Refusal> {
        let lane = self.lane(fingerprint);
        let rx = {
            let mut q = lane.lock();
            if q.free > 0 {
                q.free -= 1;
                return Ok(Slot {
                    lane: Some(lane.clone()),
                });
            }
            if q.waiting() >= self.max_queue {
                return Err(Refusal::QueueFull(self.max_queue));
            }
            let (tx, rx) = oneshot::channel();
            match priority {
                Priority::FollowUp => q.follow_ups.push_back(tx),
                Priority::Normal => q.normal.push_back(tx),
            }
            rx
        };
        // On timeout the receiver is dropped; a slot sent meanwhile is dropped with it and so
        // goes back to the lane.
        match tokio::time::timeout(self.wait, rx).await {
            Ok(Ok(slot)) => Ok(slot),
            _ => Err(Refusal::Timeout(self.wait, self.cap)),
        }
    }

    /// Requests waiting across all credentials (for metrics; may count waiters that have just
    /// given up).
    pub(crate) fn waiting(&self) -> usize {
        let lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        lanes.values().map(|l| l.lock().waiting()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn caps_queues_fairly_and_times_out() {
        let g = Arc::new(Governor::new(2, 1, Duration::from_secs(5)));
        let a = g.acquire("x").await.expect("1");
        let _b = g.acquire("x").await.expect("2");
        let other = g.acquire("y").await;
        assert!(other.is_ok(), "another credential has its own slots");
        let g2 = g.clone();
        let waiter = tokio::spawn(async move { g2.acquire("x").await.map(|_| ()) });
        tokio::task::yield_now().await;
        assert_eq!(
            g.acquire("x").await.err(),
            Some(Refusal::QueueFull(1)),
            "the queue is bounded"
        );
        drop(a);
        assert_eq!(
            waiter.await.expect("join"),
            Ok(()),
            "the waiter got the freed slot"
        );
        let late = g.acquire("x").await;
        let late2 = g.acquire("x").await;
        assert!(late.is_ok());
        assert!(
            matches!(late2, Err(Refusal::Timeout(..))),
            "waits at most the timeout"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn follow_ups_go_before_new_requests() {
        let g = Arc::new(Governor::new(1, 10, Duration::from_secs(60)));
        let held = g.acquire("x").await.expect("the only slot");
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (name, p) in [
            ("new-1", Priority::Normal),
            ("new-2", Priority::Normal),
            ("follow-up", Priority::FollowUp),
        ] {
            let (g, order) = (g.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _slot = g.acquire_as("x", p).await.expect("slot");
                order.lock().expect("order").push(name);
            }));
            tokio::task::yield_now().await;
        }
        assert_eq!(g.waiting(), 3);
        drop(held);
        for t in tasks {
            t.await.expect("join");
        }
        assert_eq!(
            *order.lock().expect("order"),
            ["follow-up", "new-1", "new-2"],
            "the follow-up jumped the queue; new requests kept their order"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_that_gave_up_does_not_lose_the_slot() {
        let g = Arc::new(Governor::new(1, 10, Duration::from_secs(1)));
        let held = g.acquire("x").await.expect("slot");
        assert!(matches!(g.acquire("x").await, Err(Refusal::Timeout(..))));
        drop(held);
        let again = tokio::time::timeout(Duration::from_millis(10), g.acquire("x")).await;
        assert!(matches!(again, Ok(Ok(_))), "the slot came back to the lane");
    }
}
