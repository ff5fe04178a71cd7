//! Who owns the journal. A running sidecar holds a lease in the `owner` row and renews it
//! every [`HEARTBEAT`]; the operator's commands read it. While a live sidecar owns the file,
//! its `pending` rows are writes it is holding right now: no one else may call them lost
//! (recovery), replay them or sweep them. Recovery runs only when no live sidecar owns the
//! journal: the owner's heartbeat is older than [`LEASE`], or — on the same host — its process
//! is gone.

use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

/// How often the owner renews its lease.
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// How long a lease lasts without a heartbeat.
pub const LEASE: Duration = Duration::from_secs(20);

/// The sidecar that owns (or owned) the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Owner {
    pub instance: String,
    pub pid: u32,
    pub host: String,
    pub started_at: String,
    pub heartbeat_at: String,
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rally-sidecar pid {} on {} (running since {}, last heartbeat {})",
            self.pid, self.host, self.started_at, self.heartbeat_at
        )
    }
}

/// This process, as an owner.
pub fn this_process(instance: &str) -> Owner {
    let now = super::now();
    Owner {
        instance: instance.to_string(),
        pid: std::process::id(),
        host: hostname(),
        started_at: now.clone(),
        heartbeat_at: now,
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".into())
}

/// The recorded owner, if any.
pub fn read(conn: &Connection) -> rusqlite::Result<Option<Owner>> {
    conn.query_row(
        "SELECT instance, pid, host, started_at, heartbeat_at FROM owner WHERE id = 1",
        [],
        |r| {
            Ok(Owner {
                instance: r.get(0)?,
                pid: r.get(1)?,
                host: r.get(2)?,
                started_at: r.get(3)?,
                heartbeat_at: r.get(4)?,
            })
        },
    )
    .optional()
}

/// Whether `owner` is alive now: a fresh heartbeat, and (on this host) a running process.
pub fn is_live(owner: &Owner) -> bool {
    let fresh = time::OffsetDateTime::parse(
        &owner.heartbeat_at,
        &time::format_description::well_known::Rfc3339,
    )
    .map(|t| time::OffsetDateTime::now_utc() - t < LEASE)
    .unwrap_or(false);
    if !fresh {
        return false;
    }
    if owner.host == hostname() && std::path::Path::new("/proc/self").exists() {
        // Same machine: a process that is gone holds nothing, whatever its heartbeat says.
        return std::path::Path::new(&format!("/proc/{}", owner.pid)).exists();
    }
    true
}

/// The live owner other than `me`, if there is one.
pub fn live_other(conn: &Connection, me: Option<&str>) -> rusqlite::Result<Option<Owner>> {
    Ok(read(conn)?.filter(|o| Some(o.instance.as_str()) != me && is_live(o)))
}

/// Takes the lease for `me` unless another live owner holds it (returned then).
pub fn claim(conn: &mut Connection, me: &Owner) -> rusqlite::Result<Option<Owner>> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    if let Some(other) = live_other(&tx, Some(&me.instance))? {
        return Ok(Some(other));
    }
    tx.execute(
        "INSERT INTO owner (id, instance, pid, host, started_at, heartbeat_at) VALUES (1, ?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (id) DO UPDATE SET instance = excluded.instance, pid = excluded.pid, host = excluded.host,
             started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at",
        params![me.instance, me.pid, me.host, me.started_at, me.heartbeat_at],
    )?;
    tx.commit()?;
    Ok(None)
}

/// Renews `me`'s lease; false if another instance has taken the journal over.
pub fn heartbeat(conn: &Connection, me: &str) -> rusqlite::Result<bool> {
    let n = conn.execute(
        "UPDATE owner SET heartbeat_at = ?2 WHERE id = 1 AND instance = ?1",
        params![me, super::now()],
    )?;
    Ok(n == 1)
}

/// Gives the lease up (a clean stop).
pub fn release(conn: &Connection, me: &str) -> rusqlite::Result<()> {
    conn.execute(
        "DELETE FROM owner WHERE id = 1 AND instance = ?1",
        params![me],
    )
    .map(|_| ())
}
