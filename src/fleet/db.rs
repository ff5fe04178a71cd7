//! The connection to PostgreSQL: a pool (deadpool-postgres over tokio-postgres, TLS by rustls
//! when the URL's `sslmode` asks for it), a bound on every round trip so an unreachable server
//! turns into an error instead of a hang, and the embedded migrations, applied at start under
//! an advisory lock in one transaction so that pods starting together apply each exactly once.

use std::future::Future;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::FleetError;
use super::config::FleetConfig;

/// The schema, in order. Never edit a migration that has shipped: add one.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
        1,
        "fleet",
        include_str!("../../migrations/fleet/0001_fleet.sql"),
    ),
    (
        2,
        "lanes",
        include_str!("../../migrations/fleet/0002_lanes.sql"),
    ),
];

/// Any fixed number: the key of the advisory lock that serialises migrations across pods.
const MIGRATION_LOCK: i64 = 0x7261_6c6c_795f_6d69;

/// The TLS connector for the database (system and Mozilla roots, plus `ca_file`).
pub(crate) fn tls(cfg: &FleetConfig) -> Result<MakeRustlsConnect, FleetError> {
    let client = crate::tls::client_config(cfg.ca_file.as_deref(), false)
        .map_err(|e| FleetError::Setup(format!("fleet TLS: {e}")))?;
    Ok(MakeRustlsConnect::new(client))
}

/// The parsed connection settings, with a connect timeout so a dead address fails fast.
pub(crate) fn pg_config(
    cfg: &FleetConfig,
    io_timeout: Duration,
) -> Result<tokio_postgres::Config, FleetError> {
    let mut pg: tokio_postgres::Config = cfg
        .url()
        .parse()
        .map_err(|e| FleetError::Setup(format!("fleet.url: {e}")))?;
    if pg.get_connect_timeout().is_none() {
        pg.connect_timeout(io_timeout);
    }
    if pg.get_application_name().is_none() {
        pg.application_name("rally-sidecar");
    }
    Ok(pg)
}

/// A pool of at most `size` connections whose waits are bounded by `io_timeout`.
pub(crate) fn pool(
    cfg: &FleetConfig,
    size: usize,
    io_timeout: Duration,
) -> Result<Pool, FleetError> {
    let manager = Manager::from_config(
        pg_config(cfg, io_timeout)?,
        tls(cfg)?,
        ManagerConfig {
            // A connection the server closed (restart, failover) is noticed and replaced.
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(io_timeout))
        .create_timeout(Some(io_timeout))
        .recycle_timeout(Some(io_timeout))
        .build()
        .map_err(|e| FleetError::Setup(format!("fleet pool: {e}")))
}

/// Runs `f` with a pooled connection, the whole exchange bounded by `io_timeout`.
pub(crate) async fn with_client<T, F, Fut>(
    pool: &Pool,
    io_timeout: Duration,
    f: F,
) -> Result<T, FleetError>
where
    F: FnOnce(deadpool_postgres::Object) -> Fut,
    Fut: Future<Output = Result<T, tokio_postgres::Error>>,
{
    let work = async {
        let client = pool.get().await.map_err(FleetError::from_pool)?;
        f(client).await.map_err(FleetError::from_pg)
    };
    match tokio::time::timeout(io_timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(FleetError::Unreachable(format!(
            "no answer from PostgreSQL within {io_timeout:?}"
        ))),
    }
}

/// Applies the migrations not yet applied. Several pods may call this at once: the advisory
/// lock makes the later ones wait and then find nothing to do. A migration whose text differs
/// from the one recorded is an error (an edited migration would leave pods disagreeing).
pub(crate) async fn migrate(pool: &Pool, io_timeout: Duration) -> Result<usize, FleetError> {
    // Migrations may wait for another pod's; give them more than one round trip.
    let budget = io_timeout.saturating_mul(6);
    with_client(pool, budget, |mut client| async move {
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS fleet_migrations (
                 version    integer PRIMARY KEY,
                 name       text NOT NULL,
                 checksum   text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await?;
        let mut applied = 0;
        for (version, name, sql) in MIGRATIONS {
            let sum = checksum(sql);
            let row = tx
                .query_opt(
                    "SELECT checksum FROM fleet_migrations WHERE version = $1",
                    &[version],
                )
                .await?;
            match row {
                Some(r) if r.get::<_, String>(0) == sum => continue,
                Some(_) => {
                    return Ok(Err(FleetError::Setup(format!(
                        "fleet migration {version} ({name}) differs from the one applied to this database"
                    ))));
                }
                None => {}
            }
            tx.batch_execute(sql).await?;
            tx.execute(
                "INSERT INTO fleet_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                &[version, name, &sum],
            )
            .await?;
            applied += 1;
        }
        tx.commit().await?;
        Ok(Ok(applied))
    })
    .await?
}

fn checksum(sql: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(sql.as_bytes()))
}
