//! How big the journal may grow, what is dropped to keep it there, and whether it can take
//! another row. The serving connection caps the file at `journal.max_bytes` (SQLite's
//! `max_page_count`: past it an insert fails as on a full disk, and the write is refused
//! before it is forwarded). Rejected and refused rows age out — bodies after
//! `rejected_body_retention`, rows after `rejected_retention` — and near the cap they go first
//! (bodies, then rows, oldest first), then the oldest confirmed rows; pending and unconfirmed
//! rows are never dropped. [`Room`] remembers the last insert that failed for lack of space
//! (a full disk looks the same) until a probe of one row's size succeeds, so `/readyz` says
//! "cannot take a row" exactly while that is true.

use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, params};

use super::{Journal, JournalError};

/// The last failure for lack of space, until space is found again.
#[derive(Default)]
pub struct Room {
    full: Mutex<Option<String>>,
}

impl Room {
    /// Called with every SQLite error the journal meets.
    pub(super) fn note(&self, e: &rusqlite::Error) {
        if let rusqlite::Error::SqliteFailure(f, _) = e
            && f.code == rusqlite::ErrorCode::DiskFull
            && let Ok(mut full) = self.full.lock()
        {
            *full = Some(e.to_string());
        }
    }

    fn get(&self) -> Option<String> {
        self.full.lock().ok().and_then(|f| f.clone())
    }

    fn clear(&self) {
        if let Ok(mut f) = self.full.lock() {
            *f = None;
        }
    }
}

/// Whether the journal can take a row, and what `/readyz` says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub ok: bool,
    pub detail: String,
}

/// The limits [`Journal::upkeep`] keeps.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: u64,
    /// The most one row can need (an intercepted body of `intercept.max_body`, and its fields).
    pub row: u64,
}

/// Rows dropped per statement while making room, so the lock is never held long.
const CHUNK: i64 = 200;

fn used_bytes(c: &Connection) -> rusqlite::Result<u64> {
    let pages: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let free: i64 = c.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
    let size: i64 = c.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    Ok(((pages - free).max(0) * size) as u64)
}

fn cutoff(age: Duration) -> String {
    crate::wsapi::format_date(time::OffsetDateTime::now_utc() - age)
}

/// One step towards room, in order of what matters least; 0 when nothing is left to drop.
fn drop_some(c: &Connection) -> rusqlite::Result<usize> {
    let steps = [
        "UPDATE writes SET body = '' WHERE id IN (SELECT id FROM writes
             WHERE state IN ('rejected', 'refused') AND body != '' ORDER BY id LIMIT ?1)",
        "DELETE FROM writes WHERE id IN (SELECT id FROM writes
             WHERE state IN ('rejected', 'refused') ORDER BY id LIMIT ?1)",
        "DELETE FROM writes WHERE id IN (SELECT id FROM writes
             WHERE state = 'confirmed' ORDER BY id LIMIT ?1)",
    ];
    for sql in steps {
        let n = c.execute(sql, params![CHUNK])?;
        if n > 0 {
            return Ok(n);
        }
    }
    Ok(0)
}

impl Journal {
    /// Caps the file at `max_bytes` for this handle's inserts (a file already larger keeps its
    /// size and takes no new pages).
    pub async fn cap(&self, max_bytes: u64) -> Result<(), JournalError> {
        self.with(move |c| {
            let size: i64 = c.query_row("PRAGMA page_size", [], |r| r.get(0))?;
            let pages = (max_bytes / size.max(512) as u64).max(1);
            c.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))
        })
        .await
    }

    /// Bytes of the file's pages in use (free pages are reused before the file grows).
    pub async fn used_bytes(&self) -> Result<u64, JournalError> {
        self.with(used_bytes).await
    }

    /// Drops the bodies of rejected and refused rows older than `bodies_after` and those rows
    /// older than `rows_after`. Returns (bodies dropped, rows deleted).
    pub async fn prune_rejected(
        &self,
        rows_after: Duration,
        bodies_after: Duration,
    ) -> Result<(usize, usize), JournalError> {
        let (rows, bodies) = (cutoff(rows_after), cutoff(bodies_after));
        self.with(move |c| {
            let dropped = c.execute(
                "UPDATE writes SET body = '' WHERE state IN ('rejected', 'refused')
                 AND body != '' AND updated_at < ?1",
                params![bodies],
            )?;
            let deleted = c.execute(
                "DELETE FROM writes WHERE state IN ('rejected', 'refused') AND updated_at < ?1",
                params![rows],
            )?;
            Ok((dropped, deleted))
        })
        .await
    }

    /// Makes room for a row if needed, probes after a failure for lack of space, and says
    /// whether the journal can take a row now.
    pub async fn upkeep(&self, limits: Limits) -> Result<Health, JournalError> {
        let fits = move |used: u64| used.saturating_add(limits.row) <= limits.max_bytes;
        let mut used = self.used_bytes().await?;
        let mut dropped = 0;
        loop {
            let flagged = self.room.get().is_some();
            if fits(used) && (!flagged || self.probe(limits.row).await?) {
                break;
            }
            let n = self.with(drop_some).await?;
            if n == 0 {
                break;
            }
            dropped += n;
            used = self.used_bytes().await?;
        }
        if dropped > 0 {
            tracing::warn!(
                dropped,
                used,
                max_bytes = limits.max_bytes,
                "journal near journal.max_bytes: dropped rejected, refused or old confirmed rows"
            );
        }
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        Ok(match (self.room.get(), fits(used)) {
            (Some(e), _) => Health {
                ok: false,
                detail: format!("cannot take a row: the last write could not be recorded ({e})"),
            },
            (None, false) => Health {
                ok: false,
                detail: format!(
                    "cannot take a row: {:.1} MiB in use of journal.max_bytes = {:.1} MiB, and a row may need {:.1} MiB; only pending and unconfirmed rows are left (journal replay, sweep)",
                    mib(used),
                    mib(limits.max_bytes),
                    mib(limits.row)
                ),
            },
            (None, true) => Health {
                ok: true,
                detail: format!(
                    "{:.1} MiB in use of journal.max_bytes = {:.1} MiB",
                    mib(used),
                    mib(limits.max_bytes)
                ),
            },
        })
    }

    /// Writes (and removes) `bytes` to see whether a row of that size fits on disk and under
    /// the cap; clears the remembered failure when it does.
    async fn probe(&self, bytes: u64) -> Result<bool, JournalError> {
        let written = self
            .with(move |c| {
                c.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('room_probe', zeroblob(?1))",
                    params![bytes as i64],
                )
            })
            .await;
        let _ = self
            .with(|c| c.execute("DELETE FROM meta WHERE key = 'room_probe'", []))
            .await;
        match written {
            Ok(_) => {
                self.room.clear();
                Ok(true)
            }
            Err(JournalError::Sqlite { source, .. }) if matches!(&source, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull) => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{NewWrite, State, now};
    use super::*;

    fn write(body: usize) -> NewWrite {
        NewWrite {
            request_id: "r".into(),
            received_at: now(),
            credential: "fp".into(),
            operation: "create".into(),
            path: "/p".into(),
            body: "x".repeat(body),
            ..NewWrite::default()
        }
    }

    async fn journal() -> Journal {
        let path =
            std::env::temp_dir().join(format!("rs-capacity-{}.sqlite", uuid::Uuid::new_v4()));
        Journal::open(&path).expect("open")
    }

    #[tokio::test]
    async fn rejected_rows_lose_their_bodies_first_then_go() {
        let j = journal().await;
        let rejected = j.insert(write(1000)).await.expect("insert");
        let refused = j
            .record_refusal(write(1000), "archived".into())
            .await
            .expect("refusal");
        let pending = j.insert(write(1000)).await.expect("insert");
        j.settle(rejected, State::Rejected, 1, None, None, None)
            .await
            .expect("settle");
        // Every row is now older than "now" by a few milliseconds.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let day = Duration::from_secs(86_400);
        assert_eq!(
            j.prune_rejected(day, day).await.expect("prune"),
            (0, 0),
            "nothing is old yet"
        );
        assert_eq!(
            j.prune_rejected(day, Duration::ZERO).await.expect("prune"),
            (2, 0),
            "bodies first"
        );
        let body = |id| {
            let j = j.clone();
            async move { j.get(id).await.expect("get").map(|r| r.body) }
        };
        assert_eq!(body(refused).await.as_deref(), Some(""));
        assert_eq!(body(pending).await.map(|b| b.len()), Some(1000));
        assert_eq!(
            j.prune_rejected(Duration::ZERO, Duration::ZERO)
                .await
                .expect("prune"),
            (0, 2),
            "then the rows"
        );
        assert_eq!(
            j.state_of(pending).await.expect("state"),
            Some(State::Pending)
        );
    }

    #[tokio::test]
    async fn at_the_cap_rows_are_dropped_in_order_and_readiness_says_why() {
        let j = journal().await;
        let limits = Limits {
            max_bytes: 256 * 1024,
            row: 40 * 1024,
        };
        j.cap(limits.max_bytes).await.expect("cap");
        let mut confirmed = Vec::new();
        let mut full = None;
        for _ in 0..20 {
            let settled = match j.insert(write(30 * 1024)).await {
                Ok(id) => j
                    .settle(id, State::Confirmed, 1, None, None, None)
                    .await
                    .map(|_| id),
                Err(e) => Err(e),
            };
            match settled {
                Ok(id) => confirmed.push(id),
                Err(e) => {
                    full = Some(e.to_string());
                    break;
                }
            }
        }
        let full = full.expect("the cap stops inserts");
        assert!(full.contains("full"), "{full}");
        let h = j.upkeep(limits).await.expect("upkeep");
        assert!(h.ok, "old confirmed rows made room: {h:?}");
        assert!(
            j.state_of(confirmed[0]).await.expect("state").is_none(),
            "the oldest confirmed row went"
        );
        assert!(j.used_bytes().await.expect("used") + limits.row <= limits.max_bytes);
        // Pending rows are never dropped: with only those, no room can be made.
        let mut h = j.upkeep(limits).await.expect("upkeep");
        for _ in 0..50 {
            while j.insert(write(30 * 1024)).await.is_ok() {}
            h = j.upkeep(limits).await.expect("upkeep");
            if !h.ok {
                break;
            }
        }
        assert!(!h.ok, "{h:?}");
        assert!(h.detail.contains("cannot take a row"), "{h:?}");
        assert!(
            j.list(Some(State::Pending), vec![], 100)
                .await
                .expect("list")
                .len()
                >= 4
        );
    }
}
