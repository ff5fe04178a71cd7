//! Where a request to Rally waits for its turn: the seam between [`super::Rally::send`] and the
//! two ways of counting Rally's concurrent requests per user. Alone, a sidecar counts its own
//! ([`Governor`], in memory); in fleet mode every pod counts against one budget per Rally user
//! in PostgreSQL ([`crate::fleet::Budget`]), so client traffic, read-backs, lookups and the
//! sweep of every pod together stay within it. Either way the caller gets a [`Turn`] to hold
//! while its request is open, or a [`ProxyError::Overloaded`] the client sees as a
//! WSAPI-shaped 503 — in fleet mode also when PostgreSQL could not be reached for
//! `fleet.unavailable_timeout`, because sending without a permit could pass the budget.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use super::governor::{Governor, Priority, Slot};
use crate::error::ProxyError;
use crate::fleet::{Budget, Permit};

/// How requests are counted.
pub(crate) enum Slots {
    Local(Governor),
    Fleet(FleetSlots),
}

/// The fleet's budget, and the credentials whose Rally user is being recorded in it.
pub(crate) struct FleetSlots {
    budget: Budget,
    learning: Arc<Mutex<HashSet<String>>>,
}

/// A request's turn; dropping it ends the turn.
pub(crate) enum Turn {
    // Held, never read: dropping it gives the slot back.
    Local(#[allow(dead_code)] Slot),
    Fleet(Permit),
}

impl Turn {
    /// Resolves when the turn can no longer be guaranteed (a fleet permit whose lease could
    /// not be renewed); a local slot never lapses.
    pub(crate) async fn lost(&self) {
        match self {
            Turn::Local(_) => std::future::pending().await,
            Turn::Fleet(p) => p.lost().await,
        }
    }
}

impl Slots {
    /// The fleet's budget instead of the local governor.
    pub(crate) fn fleet(budget: Budget) -> Slots {
        Slots::Fleet(FleetSlots {
            budget,
            learning: Arc::default(),
        })
    }

    /// Waits for a turn in `lane` (`user:<ref>` or `credential:<digest>`).
    pub(crate) async fn acquire(&self, lane: &str, priority: Priority) -> Result<Turn, ProxyError> {
        match self {
            Slots::Local(g) => g
                .acquire_as(lane, priority)
                .await
                .map(Turn::Local)
                .map_err(|e| ProxyError::Overloaded(e.to_string())),
            Slots::Fleet(f) => f
                .budget
                .acquire(lane, fleet_class(priority))
                .await
                .map(Turn::Fleet)
                .map_err(|e| ProxyError::Overloaded(e.to_string())),
        }
    }

    /// Requests waiting for a turn on this process (for metrics).
    pub(crate) fn waiting(&self) -> usize {
        match self {
            Slots::Local(g) => g.waiting(),
            Slots::Fleet(f) => f.budget.waiting(),
        }
    }

    /// Makes `user_lane` the lane of `credential_lane`'s requests: at once locally; in fleet
    /// mode only after the fleet has recorded it (in the background), since until then other
    /// pods count the credential's requests under its own lane — switching first would let
    /// the two lanes together pass the budget. `switch` is called once it may be used.
    pub(crate) fn learn(
        &self,
        credential_lane: String,
        user_lane: String,
        switch: impl FnOnce() + Send + 'static,
    ) {
        let Slots::Fleet(f) = self else {
            return switch();
        };
        {
            let mut busy = f.learning.lock().unwrap_or_else(|p| p.into_inner());
            if !busy.insert(credential_lane.clone()) {
                return;
            }
        }
        let (budget, learning) = (f.budget.clone(), f.learning.clone());
        tokio::spawn(async move {
            match budget.learn(&credential_lane, &user_lane).await {
                Ok(()) => switch(),
                // Tried again on the next request that learns it.
                Err(e) => {
                    tracing::debug!(error = %e, "fleet: cannot record a credential's user yet")
                }
            }
            learning
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&credential_lane);
        });
    }
}

/// The governor's class as the fleet's budget names it.
fn fleet_class(p: Priority) -> crate::fleet::budget::Priority {
    match p {
        Priority::Normal => crate::fleet::budget::Priority::Normal,
        Priority::FollowUp => crate::fleet::budget::Priority::FollowUp,
    }
}
