//! The concurrency governor: Rally serves at most 12 concurrent requests per user and slows
//! the rest (rally-wsapi.md §13). The sidecar caps its own in-flight upstream requests per
//! credential fingerprint — client traffic, read-backs, fingerprint queries, guard lookups and
//! the cleanup job together — and queues the excess fairly (tokio's semaphore is FIFO), with a
//! bound on the queue and a wait timeout after which the caller gets a 503.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why a request was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("more than {0} requests are already waiting for this credential")]
    QueueFull(usize),
    #[error("waited {0:?} for one of this credential's {1} upstream slots")]
    Timeout(Duration, usize),
}

struct Lane {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
}

/// Per-credential slots.
pub struct Governor {
    cap: usize,
    max_queue: usize,
    wait: Duration,
    lanes: Mutex<HashMap<String, Arc<Lane>>>,
}

/// Held while a request is in flight upstream; dropping it frees the slot.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
}

impl Governor {
    pub fn new(cap: usize, max_queue: usize, wait: Duration) -> Governor {
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
                l.slots.available_permits() < cap || l.waiting.load(Ordering::Relaxed) > 0
            });
        }
        lanes
            .entry(fingerprint.to_string())
            .or_insert_with(|| {
                Arc::new(Lane {
                    slots: Arc::new(Semaphore::new(self.cap)),
                    waiting: AtomicUsize::new(0),
                })
            })
            .clone()
    }

    /// Waits for a slot for this credential.
    pub async fn acquire(&self, fingerprint: &str) -> Result<Slot, Refusal> {
        let lane = self.lane(fingerprint);
        if let Ok(p) = lane.slots.clone().try_acquire_owned() {
            return Ok(Slot { _permit: p });
        }
        if lane.waiting.fetch_add(1, Ordering::SeqCst) >= self.max_queue {
            lane.waiting.fetch_sub(1, Ordering::SeqCst);
            return Err(Refusal::QueueFull(self.max_queue));
        }
        let got = tokio::time::timeout(self.wait, lane.slots.clone().acquire_owned()).await;
        lane.waiting.fetch_sub(1, Ordering::SeqCst);
        match got {
            Ok(Ok(p)) => Ok(Slot { _permit: p }),
            _ => Err(Refusal::Timeout(self.wait, self.cap)),
        }
    }

    /// Requests waiting across all credentials (for metrics).
    pub fn waiting(&self) -> usize {
        let lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        lanes
            .values()
            .map(|l| l.waiting.load(Ordering::Relaxed))
            .sum()
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
}
