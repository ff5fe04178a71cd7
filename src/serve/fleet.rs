//! Fleet mode in the running sidecar (docs/fleet.md): connect to the fleet's PostgreSQL at
//! start, keep `/readyz`'s `fleet` line saying whether it is reachable and what that means for
//! requests, follow the fleet's shared build context into the local one, ship journal rows to
//! the ledger, and after the drain ship the last rows and leave the fleet. Nothing here runs
//! without `[fleet] url`.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::RunError;
use crate::admin::Readiness;
use crate::config::Config;
use crate::fleet::{Fleet, SharedContext, shipper};
use crate::intercept::context::BuildContext;
use crate::intercept::ledger::FleetWrites;
use crate::journal::Journal;

/// How often journal rows are shipped: a retry on another pod waits for a row's fate about
/// this long at most beyond the write itself.
const SHIP_EVERY: Duration = Duration::from_millis(500);

/// The fleet's parts in a running sidecar.
pub(super) struct FleetMode {
    pub fleet: Fleet,
    pub context: SharedContext,
    journal_id: Option<String>,
    tasks: Vec<JoinHandle<()>>,
    stop: CancellationToken,
}

impl FleetMode {
    /// Connects when `[fleet]` is configured; `None` otherwise. A database that cannot be
    /// reached at start stops the start (the orchestrator restarts the pod), since without it
    /// no request could be given a permit.
    pub(super) async fn start(
        cfg: &Config,
        journal: Option<&Journal>,
        readiness: &Arc<Readiness>,
        context: &Arc<BuildContext>,
    ) -> Result<Option<FleetMode>, RunError> {
        let Some(fc) = cfg.fleet.clone() else {
            return Ok(None);
        };
        readiness.set("fleet", false, "connecting to PostgreSQL");
        let fleet = Fleet::connect(fc)
            .await
            .map_err(|e| RunError::Setup(format!("fleet: {e}")))?;
        let shared = fleet
            .context()
            .await
            .map_err(|e| RunError::Setup(format!("fleet context: {e}")))?;
        let journal_id = match journal {
            Some(j) => Some(
                j.identity()
                    .await
                    .map_err(|e| RunError::Setup(e.to_string()))?,
            ),
            None => None,
        };
        let stop = CancellationToken::new();
        let mut tasks = vec![
            tokio::spawn(follow_context(shared.clone(), context.clone())),
            tokio::spawn(watch(fleet.clone(), readiness.clone(), stop.clone())),
        ];
        if let (Some(j), Some(id)) = (journal, &journal_id) {
            tasks.push(tokio::spawn(shipper::run(
                fleet.ledger(),
                j.clone(),
                id.clone(),
                SHIP_EVERY,
                stop.clone(),
            )));
        }
        Ok(Some(FleetMode {
            fleet,
            context: shared,
            journal_id,
            tasks,
            stop,
        }))
    }

    /// What the interception layer records writes with.
    pub(super) fn writes(&self) -> Option<FleetWrites> {
        self.journal_id.as_ref().map(|id| FleetWrites {
            ledger: self.fleet.ledger(),
            journal_id: id.clone(),
        })
    }

    /// After the drain: the last rows shipped (within a few seconds), then this pod leaves the
    /// fleet, so its pending rows are at once the central replayer's.
    pub(super) async fn stop(self, journal: Option<&Journal>) {
        self.stop.cancel();
        for t in &self.tasks {
            t.abort();
        }
        if let (Some(j), Some(id)) = (journal, &self.journal_id) {
            let ledger = self.fleet.ledger();
            let last = shipper::ship_once(&ledger, j, id);
            match tokio::time::timeout(Duration::from_secs(5), last).await {
                Ok(Ok(_)) => {}
                _ => tracing::warn!(
                    "fleet: some journal rows are not in the ledger yet; the next start ships them"
                ),
            }
        }
        self.fleet.shutdown().await;
    }
}

/// Copies every snapshot of the fleet's context into this pod's.
async fn follow_context(shared: SharedContext, local: Arc<BuildContext>) {
    let mut rx = shared.watch();
    local.replace(rx.borrow_and_update().clone());
    while rx.changed().await.is_ok() {
        local.replace(rx.borrow_and_update().clone());
    }
}

/// Keeps `/readyz`'s `fleet` line current.
async fn watch(fleet: Fleet, readiness: Arc<Readiness>, stop: CancellationToken) {
    let cfg = fleet.config().clone();
    loop {
        let s = fleet.status();
        let detail = match (&s.last_error, s.unreachable_for) {
            (Some(e), Some(d)) => format!(
                "PostgreSQL unreachable for {}s ({e}): requests to Rally wait up to {:?} for a \
                 permit of the fleet's budget, then get 503; writes are journaled here and \
                 shipped to the ledger when it is back",
                d.as_secs(),
                cfg.unavailable_timeout
            ),
            _ => format!(
                "PostgreSQL reachable; pod {}; budget {} concurrent Rally requests per user ({} from this pod)",
                fleet.pod_id(),
                cfg.budget,
                cfg.pod_cap
            ),
        };
        readiness.set("fleet", s.reachable, detail);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}
