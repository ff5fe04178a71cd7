//! The guard of a write recorded as pending: it settles the row exactly once, by its fate or,
//! if dropped first, as unconfirmed.

use super::{Journal, JournalError, State};

/// A write recorded as pending and not yet settled. It settles exactly once: by
/// [`Pending::settle`], or — if it is dropped first (the client left, the shutdown deadline cut
/// the request) — as unconfirmed, never left pending.
pub struct Pending {
    pub(super) journal: Journal,
    pub(super) id: i64,
    pub(super) open: bool,
}

impl Pending {
    /// The row's id.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// Records the write's fate. On failure the row stays pending until the drop marks it
    /// unconfirmed, and the error is returned for the caller to log.
    pub async fn settle(mut self, fate: Settled) -> Result<(), JournalError> {
        let Settled {
            state,
            attempts,
            cause,
            object_id,
            latency_ms,
        } = fate;
        self.journal
            .settle(self.id, state, attempts, cause, object_id, latency_ms)
            .await?;
        self.open = false;
        Ok(())
    }

    /// Records the fate in the background: at the shutdown deadline the row is already
    /// unconfirmed (one statement for every held write), so the client is answered first and
    /// the row's details are written behind it, while there is time.
    pub fn settle_behind(mut self, fate: Settled) {
        self.open = false;
        let (journal, id) = (self.journal.clone(), self.id);
        tokio::spawn(async move {
            let Settled {
                state,
                attempts,
                cause,
                object_id,
                latency_ms,
            } = fate;
            let _ = journal
                .settle(id, state, attempts, cause, object_id, latency_ms)
                .await;
        });
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.open {
            self.journal
                .settle_now(self.id, "the request ended before the outcome was known");
        }
    }
}

/// A write's fate as the journal records it.
#[derive(Debug, Clone, PartialEq)]
pub struct Settled {
    pub state: State,
    pub attempts: u32,
    pub cause: Option<String>,
    pub object_id: Option<i64>,
    pub latency_ms: Option<f64>,
}
