//! What the fleet run watches while it runs: the kill of pod 0 (its permits in PostgreSQL
//! until they lapse), PostgreSQL's stop (what `/readyz` and the clients said meanwhile), and
//! the ledger, read straight from the database the way an operator would.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use super::{FleetOptions, KillReport, OutageReport, PgOutage, Seen};
use crate::account::client;
use crate::drain::get_text;
use crate::pg::PgServer;
use crate::run::Outcome;

/// The ledger, read with SQL (a fresh connection each time: PostgreSQL may have restarted).
#[derive(Clone)]
pub struct Ledger {
    url: String,
}

impl Ledger {
    pub async fn connect(url: &str) -> Result<Ledger, String> {
        let l = Ledger { url: url.into() };
        l.count("SELECT 1::bigint", &[]).await?;
        Ok(l)
    }

    async fn count(
        &self,
        sql: &str,
        args: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<i64, String> {
        let (c, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .map_err(|e| pg_err(&e))?;
        let task = tokio::spawn(conn);
        let r = c.query_one(sql, args).await.map_err(|e| pg_err(&e));
        drop(c);
        let _ = task.await;
        Ok(r?.get(0))
    }

    /// Permits of `pod` that still count.
    pub async fn permits_of(&self, pod: &str) -> Result<i64, String> {
        self.count(
            "SELECT count(*) FROM fleet_permits WHERE pod_id = $1 AND lease_until >= now()",
            &[&pod],
        )
        .await
    }

    pub async fn pending_of(&self, pod: &str) -> Result<i64, String> {
        self.count(
            "SELECT count(*) FROM fleet_writes WHERE owner_pod = $1 AND state = 'pending'",
            &[&pod],
        )
        .await
    }

    /// Rows a replayer still has to land.
    pub async fn open_rows(&self) -> Result<i64, String> {
        self.count(
            "SELECT count(*) FROM fleet_writes WHERE NOT superseded AND state IN ('pending', 'unconfirmed')",
            &[],
        )
        .await
    }

    /// Rows that reached the ledger only by shipping, seconds after their request (journaled
    /// locally while PostgreSQL was unreachable).
    pub async fn shipped_late(&self) -> Result<i64, String> {
        self.count(
            "SELECT count(*) FROM fleet_writes WHERE recorded_at > received_at + interval '2 seconds'",
            &[],
        )
        .await
    }

    async fn rows(&self, sql: &str) -> Result<Vec<tokio_postgres::Row>, String> {
        let (c, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .map_err(|e| pg_err(&e))?;
        let task = tokio::spawn(conn);
        let r = c.query(sql, &[]).await.map_err(|e| pg_err(&e));
        drop(c);
        let _ = task.await;
        r
    }

    pub async fn counts(&self) -> Result<BTreeMap<String, i64>, String> {
        let rows = self
            .rows("SELECT state, count(*) FROM fleet_writes GROUP BY state")
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Builds of the rows still pending or unconfirmed.
    pub async fn open_builds(&self) -> Result<HashSet<String>, String> {
        let rows = self
            .rows(
                "SELECT build FROM fleet_writes WHERE NOT superseded
                   AND state IN ('pending', 'unconfirmed') AND build IS NOT NULL",
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}

/// The kill and the outage, as they happen.
#[derive(Clone)]
pub struct Watch {
    inner: Arc<Inner>,
}

struct Inner {
    kill_after: Option<usize>,
    outage: Option<PgOutage>,
    pg: Option<Arc<PgServer>>,
    ledger: Option<Ledger>,
    /// Per pod: admin address, fleet pod id, journal.
    pods: Vec<(SocketAddr, Option<String>, PathBuf)>,
    began: Instant,
    lease: Duration,
    kill: Mutex<Option<JoinHandle<KillReport>>>,
    down: Mutex<Option<JoinHandle<OutageReport>>>,
}

impl Watch {
    pub fn new(
        opts: &FleetOptions,
        pg: Option<Arc<PgServer>>,
        ledger: Option<Ledger>,
        pods: Vec<(SocketAddr, Option<String>, PathBuf)>,
        began: Instant,
    ) -> Watch {
        Watch {
            inner: Arc::new(Inner {
                kill_after: opts.kill_after.filter(|_| opts.fleet),
                outage: opts.pg_outage.filter(|_| opts.fleet),
                pg,
                ledger,
                pods,
                began,
                lease: humantime::parse_duration(&opts.lease)
                    .unwrap_or_else(|e| panic!("lease {:?}: {e}", opts.lease)),
                kill: Mutex::new(None),
                down: Mutex::new(None),
            }),
        }
    }

    pub fn kill_after(&self) -> Option<usize> {
        self.inner.kill_after
    }

    /// Called as each write is started: stops PostgreSQL when it is time.
    pub fn started(&self, k: usize) {
        let (Some(o), Some(pg)) = (self.inner.outage, self.inner.pg.clone()) else {
            return;
        };
        if k != o.after {
            return;
        }
        let inner = self.inner.clone();
        let task = tokio::spawn(async move { outage(inner, pg, o.length).await });
        *self.inner.down.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
    }

    /// Pod 0's live permits, just before it is killed.
    pub async fn before_kill(&self) -> i64 {
        match (&self.inner.ledger, &self.inner.pods[0].1) {
            (Some(l), Some(pod)) => l.permits_of(pod).await.unwrap_or(-1),
            _ => -1,
        }
    }

    /// Pod 0 was just killed: times how long its permits keep counting.
    pub fn killed(&self, permits_held: i64) {
        let inner = self.inner.clone();
        let task = tokio::spawn(async move {
            let at = Instant::now();
            let mut r = KillReport {
                at_s: inner.began.elapsed().as_secs_f64(),
                permits_held,
                lease_s: inner.lease.as_secs_f64(),
                ..KillReport::default()
            };
            let (Some(l), Some(pod)) = (&inner.ledger, &inner.pods[0].1) else {
                return r;
            };
            r.pending_rows = l.pending_of(pod).await.unwrap_or(-1);
            while at.elapsed() < inner.lease * 3 {
                if l.permits_of(pod).await == Ok(0) {
                    r.permits_back_after_s = Some(at.elapsed().as_secs_f64());
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            r
        });
        *self.inner.kill.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
    }

    /// The reports, once the clients are done.
    pub async fn finish(
        &self,
        outcomes: &[(Outcome, Seen)],
    ) -> (Option<KillReport>, Option<OutageReport>) {
        let kill = self
            .inner
            .kill
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let down = self
            .inner
            .down
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let kill = match kill {
            Some(t) => t.await.ok(),
            None => None,
        };
        let mut down = match down {
            Some(t) => t.await.ok(),
            None => None,
        };
        if let Some(d) = down.as_mut() {
            let during: Vec<&Outcome> = outcomes
                .iter()
                .map(|o| &o.0)
                .filter(|o| o.at >= d.down_at_s && o.at <= d.up_at_s)
                .collect();
            d.answers_during = during.len();
            d.unconfirmed_during = during.iter().filter(|o| o.confirmed != Some(true)).count();
            d.example_error = during.iter().find_map(|o| o.error.clone());
            if let Some(l) = &self.inner.ledger {
                d.shipped_after = l.shipped_late().await.unwrap_or(-1);
            }
        }
        (kill, down)
    }
}

/// Stops PostgreSQL for `length`, watching the last pod's `/readyz` meanwhile.
async fn outage(inner: Arc<Inner>, pg: Arc<PgServer>, length: Duration) -> OutageReport {
    let stop = pg.clone();
    let _ = tokio::task::spawn_blocking(move || stop.stop()).await;
    let mut r = OutageReport {
        down_at_s: inner.began.elapsed().as_secs_f64(),
        ..OutageReport::default()
    };
    let until = Instant::now() + length;
    let admin = inner.pods.last().map(|p| p.0);
    let probe = client(1);
    while Instant::now() < until {
        if r.readyz.is_none()
            && let Some(a) = admin
            && let Some((_, text)) = get_text(&probe, format!("http://{a}/readyz"), None).await
        {
            r.readyz = text
                .lines()
                .find(|l| l.starts_with("FAIL fleet"))
                .map(str::to_string);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = tokio::task::spawn_blocking(move || pg.restart()).await;
    r.up_at_s = inner.began.elapsed().as_secs_f64();
    r
}

/// A PostgreSQL error with the server's message (`Display` alone says only "db error").
fn pg_err(e: &tokio_postgres::Error) -> String {
    rally_sidecar::error_chain(e)
}
