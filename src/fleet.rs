//! Fleet mode: many sidecars writing as one Rally user share one PostgreSQL (docs/fleet.md).
//! [`Fleet::connect`] opens the pool, applies the embedded migrations, registers this pod with
//! a lease its heartbeat renews, and listens for the database's notifications; from it come the
//! fleet-wide [`Budget`] of concurrent Rally requests per user, the shared write [`Ledger`] and
//! the [`SharedContext`]. Every lease is measured on the database's clock, so pods' clocks may
//! disagree. Off by default: without `[fleet] url` none of this runs.

pub mod budget;
/// `[fleet]` settings live with the rest of the configuration.
pub use crate::config::fleet as config;
pub mod context;
pub(crate) mod db;
pub mod ledger;
mod listen;
pub mod shipper;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use tokio::sync::broadcast;
use tokio_util::sync::{CancellationToken, DropGuard};

pub use budget::{Budget, BudgetError, Permit};
pub use config::FleetConfig;
pub use context::SharedContext;
pub use ledger::{Ledger, LedgerError};

/// What went wrong talking to the fleet's database.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FleetError {
    /// No connection, no answer in time, or the connection broke: the database may be fine
    /// and unreachable, so callers wait a bounded time and then answer without it.
    #[error("PostgreSQL unreachable: {0}")]
    Unreachable(String),
    /// The database answered with an error.
    #[error("PostgreSQL: {0}")]
    Database(String),
    /// Configuration or schema problem found at start.
    #[error("{0}")]
    Setup(String),
}

impl FleetError {
    pub(crate) fn from_pg(e: tokio_postgres::Error) -> FleetError {
        match e.as_db_error() {
            Some(db) => FleetError::Database(format!("{}: {}", db.code().code(), db.message())),
            None => FleetError::Unreachable(e.to_string()),
        }
    }

    pub(crate) fn from_pool(e: deadpool_postgres::PoolError) -> FleetError {
        match e {
            deadpool_postgres::PoolError::Backend(e) => FleetError::from_pg(e),
            other => FleetError::Unreachable(other.to_string()),
        }
    }

    /// Whether the database could not be reached (as opposed to refusing a statement).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, FleetError::Unreachable(_))
    }
}

/// What `/readyz` can say about the fleet's database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetStatus {
    pub reachable: bool,
    /// The last error of the heartbeat, while the database is unreachable.
    pub last_error: Option<String>,
    /// How long the heartbeat has been failing.
    pub unreachable_for: Option<Duration>,
}

/// A database notification, fanned out to the parts that wait for one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Notice {
    /// A permit of this Rally user was released.
    Budget(String),
    /// The shared context changed.
    Context,
    /// Notifications may have been missed (the listener reconnected): look again.
    Resync,
}

/// Channels the database notifies on.
pub(crate) const BUDGET_CHANNEL: &str = "rally_sidecar_budget";
pub(crate) const CONTEXT_CHANNEL: &str = "rally_sidecar_context";

pub(crate) struct Shared {
    pub(crate) pool: Pool,
    pub(crate) cfg: FleetConfig,
    pub(crate) pod_id: String,
    /// The bound on one round trip to the database.
    pub(crate) io_timeout: Duration,
    pub(crate) notices: broadcast::Sender<Notice>,
    pub(crate) stop: CancellationToken,
    /// The runtime the fleet was connected on, where its background tasks run.
    pub(crate) rt: tokio::runtime::Handle,
    writer_key: [u8; 32],
    down_since: Mutex<Option<(Instant, String)>>,
}

impl Shared {
    pub(crate) async fn with_client<T, F, Fut>(&self, f: F) -> Result<T, FleetError>
    where
        F: FnOnce(deadpool_postgres::Object) -> Fut,
        Fut: std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    {
        db::with_client(&self.pool, self.io_timeout, f).await
    }

    /// A third of the lease: how often leases are renewed.
    pub(crate) fn renew_every(&self) -> Duration {
        self.cfg.lease / 3
    }

    pub(crate) fn lease_secs(&self) -> f64 {
        self.cfg.lease.as_secs_f64()
    }
}

/// The fleet: cheap to clone; the background tasks stop when the last clone is dropped.
#[derive(Clone)]
pub struct Fleet {
    shared: Arc<Shared>,
    _stop_on_drop: Arc<DropGuard>,
}

impl Fleet {
    /// Connects, migrates, registers this pod and starts its heartbeat and listener. Fails when
    /// the database cannot be reached or migrated; the caller decides whether to retry.
    pub async fn connect(cfg: FleetConfig) -> Result<Fleet, FleetError> {
        let io_timeout = (cfg.lease / 3).clamp(Duration::from_secs(1), Duration::from_secs(10));
        let pool = db::pool(&cfg, cfg.pod_cap as usize + 8, io_timeout)?;
        let applied = db::migrate(&pool, io_timeout).await?;
        if applied > 0 {
            tracing::info!(applied, "fleet: database schema migrated");
        }
        let fresh: Vec<u8> = [uuid::Uuid::new_v4(), uuid::Uuid::new_v4()]
            .iter()
            .flat_map(|u| *u.as_bytes())
            .collect();
        let stored: Vec<u8> = db::with_client(&pool, io_timeout, |c| async move {
            c.execute(
                "INSERT INTO fleet_secrets (name, value) VALUES ('writer_key', $1)
                 ON CONFLICT (name) DO NOTHING",
                &[&fresh],
            )
            .await?;
            let row = c
                .query_one(
                    "SELECT value FROM fleet_secrets WHERE name = 'writer_key'",
                    &[],
                )
                .await?;
            Ok(row.get(0))
        })
        .await?;
        let writer_key: [u8; 32] = stored
            .try_into()
            .map_err(|_| FleetError::Setup("fleet_secrets.writer_key is not 32 bytes".into()))?;
        let stop = CancellationToken::new();
        let shared = Arc::new(Shared {
            pool,
            pod_id: pod_id(),
            io_timeout,
            notices: broadcast::channel(1024).0,
            stop: stop.clone(),
            rt: tokio::runtime::Handle::current(),
            writer_key,
            down_since: Mutex::new(None),
            cfg,
        });
        heartbeat_once(&shared).await?;
        tokio::spawn(heartbeat(shared.clone()));
        tokio::spawn(listen::run(shared.clone()));
        tracing::info!(pod = %shared.pod_id, budget = shared.cfg.budget, "fleet mode on");
        Ok(Fleet {
            shared,
            _stop_on_drop: Arc::new(stop.drop_guard()),
        })
    }

    /// This process's identity in the fleet (host name and a random suffix).
    pub fn pod_id(&self) -> &str {
        &self.shared.pod_id
    }

    pub fn config(&self) -> &FleetConfig {
        &self.shared.cfg
    }

    /// The secret that keys writer digests, the same on every pod (issue 12 item 8): the
    /// credential fingerprinter should use it instead of a per-process key in fleet mode.
    pub fn writer_key(&self) -> &[u8; 32] {
        &self.shared.writer_key
    }

    /// The fleet-wide budget (each handle keeps the fleet's background tasks running).
    pub fn budget(&self) -> Budget {
        Budget::new(self.clone())
    }

    pub fn ledger(&self) -> Ledger {
        Ledger::new(self.clone())
    }

    /// The shared build context, loaded now and then kept in step with the database.
    pub async fn context(&self) -> Result<SharedContext, FleetError> {
        SharedContext::start(self.clone()).await
    }

    /// Whether the heartbeat reaches the database (for `/readyz`).
    pub fn status(&self) -> FleetStatus {
        let down = self
            .shared
            .down_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match down {
            None => FleetStatus {
                reachable: true,
                last_error: None,
                unreachable_for: None,
            },
            Some((since, e)) => FleetStatus {
                reachable: false,
                last_error: Some(e),
                unreachable_for: Some(since.elapsed()),
            },
        }
    }

    /// Stops the background tasks and removes this pod's registration, so that its pending
    /// writes (settled as unconfirmed by the drain) are at once a replayer's to take.
    pub async fn shutdown(&self) {
        self.shared.stop.cancel();
        let pod = self.shared.pod_id.clone();
        let _ = self
            .shared
            .with_client(|c| async move {
                c.execute("DELETE FROM fleet_pods WHERE pod_id = $1", &[&pod])
                    .await
            })
            .await;
    }
}

fn pod_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "sidecar".into());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}", &suffix[..8])
}

async fn heartbeat_once(shared: &Shared) -> Result<(), FleetError> {
    let pod = shared.pod_id.clone();
    let host = pod
        .rsplit_once('-')
        .map(|(h, _)| h.to_string())
        .unwrap_or_default();
    let lease = shared.lease_secs();
    let r = shared
        .with_client(|c| async move {
            c.execute(
                "INSERT INTO fleet_pods (pod_id, hostname, lease_until)
                 VALUES ($1, $2, now() + $3 * interval '1 second')
                 ON CONFLICT (pod_id) DO UPDATE SET lease_until = EXCLUDED.lease_until",
                &[&pod, &host, &lease],
            )
            .await
        })
        .await;
    let mut down = shared.down_since.lock().unwrap_or_else(|p| p.into_inner());
    match &r {
        Ok(_) => {
            if down.take().is_some() {
                tracing::info!("fleet: PostgreSQL reachable again");
            }
        }
        Err(e) => {
            if down.is_none() {
                tracing::warn!(error = %e, "fleet: PostgreSQL unreachable");
            }
            let since = down.as_ref().map_or_else(Instant::now, |d| d.0);
            *down = Some((since, e.to_string()));
        }
    }
    r.map(|_| ())
}

/// Renews this pod's lease every third of it, until the fleet stops.
async fn heartbeat(shared: Arc<Shared>) {
    loop {
        tokio::select! {
            _ = shared.stop.cancelled() => return,
            _ = tokio::time::sleep(shared.renew_every()) => {}
        }
        let _ = heartbeat_once(&shared).await;
    }
}
