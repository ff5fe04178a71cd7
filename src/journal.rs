//! The journal: every intercepted TestCaseResult write is recorded before it is forwarded and
//! updated as its fate becomes known, in a SQLite file operators can open with standard tools.
//!
//! Invariants:
//! - a row is inserted as `pending` before the first byte of the write goes upstream;
//! - a row leaves `pending` exactly once, for `confirmed`, `rejected` or `unconfirmed`;
//!   `unconfirmed` may later become `confirmed` (replay, sweep) — never the other way;
//! - at start, rows still `pending` (the sidecar stopped mid-write) are reported and marked
//!   `unconfirmed`, never dropped;
//! - only `confirmed` rows are pruned (by age and count).
//!
//! Record (table `writes`): id, request_id, received_at, updated_at, credential (fingerprint,
//! never the credential), operation (create/update), target (test case or result ObjectID),
//! path (redacted), body (the enriched JSON sent), state, attempts, last_error, object_id, and
//! for the status page test_case, build, verdict, filled, decision, latency_ms.
//!
//! The file uses WAL with `synchronous = NORMAL`: a committed row survives the sidecar being
//! killed; an operating-system crash may lose the last transactions (docs/confirmation.md).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

/// A write's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Pending,
    Confirmed,
    Rejected,
    Unconfirmed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Confirmed => "confirmed",
            State::Rejected => "rejected",
            State::Unconfirmed => "unconfirmed",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        match s {
            "pending" => Some(State::Pending),
            "confirmed" => Some(State::Confirmed),
            "rejected" => Some(State::Rejected),
            "unconfirmed" => Some(State::Unconfirmed),
            _ => None,
        }
    }
}

/// A new row.
#[derive(Debug, Clone, Default)]
pub struct NewWrite {
    pub request_id: String,
    pub received_at: String,
    pub credential: String,
    pub operation: String,
    pub target: Option<String>,
    pub path: String,
    pub body: String,
    pub test_case: Option<String>,
    pub build: Option<String>,
    pub verdict: Option<String>,
    pub filled: Option<String>,
    pub decision: Option<String>,
}

/// A row as read back.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Row {
    pub id: i64,
    pub request_id: String,
    pub received_at: String,
    pub updated_at: String,
    pub credential: String,
    pub operation: String,
    pub target: Option<String>,
    pub path: String,
    pub body: String,
    pub state: State,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub object_id: Option<i64>,
    pub test_case: Option<String>,
    pub build: Option<String>,
    pub verdict: Option<String>,
    pub filled: Option<String>,
    pub decision: Option<String>,
    pub latency_ms: Option<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Sqlite {
        path: String,
        source: rusqlite::Error,
    },
    #[error("journal task failed: {0}")]
    Task(String),
}

/// The journal; cheap to clone.
#[derive(Clone)]
pub struct Journal {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS writes (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id  TEXT NOT NULL,
    received_at TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    credential  TEXT NOT NULL,
    operation   TEXT NOT NULL,
    target      TEXT,
    path        TEXT NOT NULL,
    body        TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('pending', 'confirmed', 'rejected', 'unconfirmed')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT,
    object_id   INTEGER,
    test_case   TEXT,
    build       TEXT,
    verdict     TEXT,
    filled      TEXT,
    decision    TEXT,
    latency_ms  REAL
);
CREATE INDEX IF NOT EXISTS writes_by_state ON writes (state, received_at);
";

fn now() -> String {
    crate::wsapi::format_date(time::OffsetDateTime::now_utc())
}

impl Journal {
    /// Opens (creating if needed) the journal at `path` and recovers rows left pending.
    /// Returns the journal and how many pending rows were found and marked unconfirmed.
    pub fn open(path: &Path) -> Result<(Journal, usize), JournalError> {
        let err = |source| JournalError::Sqlite {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(dir);
        }
        let conn = Connection::open(path).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        let recovered = conn
            .execute(
                "UPDATE writes SET state = 'unconfirmed', updated_at = ?1,
                 last_error = COALESCE(last_error || '; ', '') || 'the sidecar stopped before the outcome was known'
                 WHERE state = 'pending'",
                params![now()],
            )
            .map_err(err)?;
        Ok((
            Journal {
                conn: Arc::new(Mutex::new(conn)),
                path: path.to_path_buf(),
            },
            recovered,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, JournalError> {
        let conn = self.conn.clone();
        let path = self.path.display().to_string();
        tokio::task::spawn_blocking(move || {
            let c = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&c).map_err(|source| JournalError::Sqlite { path, source })
        })
        .await
        .map_err(|e| JournalError::Task(e.to_string()))?
    }

    /// Records a write as pending; returns its id.
    pub async fn insert(&self, w: NewWrite) -> Result<i64, JournalError> {
        self.with(move |c| {
            c.execute(
                "INSERT INTO writes (request_id, received_at, updated_at, credential, operation, target, path, body, state,
                                     test_case, build, verdict, filled, decision)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'pending', ?9, ?10, ?11, ?12, ?13)",
                params![w.request_id, w.received_at, now(), w.credential, w.operation, w.target, w.path, w.body,
                        w.test_case, w.build, w.verdict, w.filled, w.decision],
            )?;
            Ok(c.last_insert_rowid())
        })
        .await
    }

    /// Records a write as pending and returns the guard that settles it exactly once.
    pub async fn begin(&self, w: NewWrite) -> Result<Pending, JournalError> {
        let id = self.insert(w).await?;
        Ok(Pending {
            journal: self.clone(),
            id,
            open: true,
        })
    }

    /// Records a write's fate.
    pub async fn settle(
        &self,
        id: i64,
        state: State,
        attempts: u32,
        last_error: Option<String>,
        object_id: Option<i64>,
        latency_ms: Option<f64>,
    ) -> Result<(), JournalError> {
        self.with(move |c| {
            c.execute(
                "UPDATE writes SET state = ?2, attempts = attempts + ?3, last_error = ?4,
                        object_id = COALESCE(?5, object_id), latency_ms = COALESCE(?6, latency_ms), updated_at = ?7
                 WHERE id = ?1 AND state IN ('pending', 'unconfirmed')",
                params![id, state.as_str(), attempts, last_error, object_id, latency_ms, now()],
            )
            .map(|_| ())
        })
        .await
    }

    /// Marks every pending write unconfirmed in one statement (at the shutdown deadline, so
    /// the held writes can be answered without a journal write each). Returns how many.
    pub async fn settle_all_pending(&self, cause: &str) -> Result<usize, JournalError> {
        let cause = cause.to_string();
        self.with(move |c| {
            c.execute(
                "UPDATE writes SET state = 'unconfirmed', last_error = ?1, updated_at = ?2 WHERE state = 'pending'",
                params![cause, now()],
            )
        })
        .await
    }

    /// Marks a write unconfirmed without waiting (from a destructor at shutdown).
    pub fn settle_now(&self, id: i64, cause: &str) {
        let c = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        let _ = c.execute(
            "UPDATE writes SET state = 'unconfirmed', last_error = ?2, updated_at = ?3 WHERE id = ?1 AND state = 'pending'",
            params![id, cause, now()],
        );
    }

    /// Rows, newest first, optionally in one state or with the given ids.
    pub async fn list(
        &self,
        state: Option<State>,
        ids: Vec<i64>,
        limit: usize,
    ) -> Result<Vec<Row>, JournalError> {
        self.with(move |c| {
            let mut sql = String::from(
                "SELECT id, request_id, received_at, updated_at, credential, operation, target, path, body, state, attempts,
                        last_error, object_id, test_case, build, verdict, filled, decision, latency_ms FROM writes",
            );
            let mut clauses = Vec::new();
            if let Some(s) = state {
                clauses.push(format!("state = '{}'", s.as_str()));
            }
            if !ids.is_empty() {
                clauses.push(format!("id IN ({})", ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(",")));
            }
            if !clauses.is_empty() {
                sql.push_str(" WHERE ");
                sql.push_str(&clauses.join(" AND "));
            }
            sql.push_str(&format!(" ORDER BY id DESC LIMIT {limit}"));
            let mut stmt = c.prepare(&sql)?;
            let rows = stmt.query_map([], |r| {
                let state: String = r.get(9)?;
                Ok(Row {
                    id: r.get(0)?,
                    request_id: r.get(1)?,
                    received_at: r.get(2)?,
                    updated_at: r.get(3)?,
                    credential: r.get(4)?,
                    operation: r.get(5)?,
                    target: r.get(6)?,
                    path: r.get(7)?,
                    body: r.get(8)?,
                    state: State::parse(&state).unwrap_or(State::Unconfirmed),
                    attempts: r.get(10)?,
                    last_error: r.get(11)?,
                    object_id: r.get(12)?,
                    test_case: r.get(13)?,
                    build: r.get(14)?,
                    verdict: r.get(15)?,
                    filled: r.get(16)?,
                    decision: r.get(17)?,
                    latency_ms: r.get(18)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    /// Rows per state.
    pub async fn counts(&self) -> Result<Vec<(State, i64)>, JournalError> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT state, COUNT(*) FROM writes GROUP BY state")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            Ok(rows
                .filter_map(|r| r.ok())
                .filter_map(|(s, n)| State::parse(&s).map(|s| (s, n)))
                .collect())
        })
        .await
    }

    /// Pending and unconfirmed rows: what is not yet known to be in Rally.
    pub async fn backlog(&self) -> Result<i64, JournalError> {
        self.with(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM writes WHERE state IN ('pending', 'unconfirmed')",
                [],
                |r| r.get(0),
            )
        })
        .await
    }

    /// Deletes confirmed rows older than `max_age` and beyond the newest `max_rows`.
    pub async fn prune(
        &self,
        max_age: std::time::Duration,
        max_rows: i64,
    ) -> Result<usize, JournalError> {
        let cutoff = crate::wsapi::format_date(time::OffsetDateTime::now_utc() - max_age);
        self.with(move |c| {
            let by_age = c.execute(
                "DELETE FROM writes WHERE state = 'confirmed' AND updated_at < ?1",
                params![cutoff],
            )?;
            let by_count = c.execute(
                "DELETE FROM writes WHERE state = 'confirmed' AND id NOT IN
                 (SELECT id FROM writes WHERE state = 'confirmed' ORDER BY id DESC LIMIT ?1)",
                params![max_rows],
            )?;
            Ok(by_age + by_count)
        })
        .await
    }

    /// One row by id.
    pub async fn get(&self, id: i64) -> Result<Option<Row>, JournalError> {
        Ok(self.list(None, vec![id], 1).await?.into_iter().next())
    }

    /// The state of one row (for tests and replay).
    pub async fn state_of(&self, id: i64) -> Result<Option<State>, JournalError> {
        self.with(move |c| {
            c.query_row("SELECT state FROM writes WHERE id = ?1", params![id], |r| {
                r.get::<_, String>(0)
            })
            .optional()
            .map(|s| s.and_then(|s| State::parse(&s)))
        })
        .await
    }
}

/// A write recorded as pending and not yet settled. It settles exactly once: by
/// [`Pending::settle`], or — if it is dropped first (the client left, the shutdown deadline cut
/// the request) — as unconfirmed, never left pending.
pub struct Pending {
    journal: Journal,
    id: i64,
    open: bool,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn temp() -> PathBuf {
        std::env::temp_dir().join(format!("rs-journal-{}.sqlite", uuid::Uuid::new_v4()))
    }

    fn write(n: usize) -> NewWrite {
        NewWrite {
            request_id: format!("r{n}"),
            received_at: now(),
            credential: "fp".into(),
            operation: "create".into(),
            path: "/slm/webservice/v2.0/testcaseresult/create".into(),
            body: "{}".into(),
            ..NewWrite::default()
        }
    }

    /// The journal against a simple model: a map from id to state, following the invariants.
    #[tokio::test]
    async fn behaves_like_its_model_across_a_crash() {
        let path = temp();
        let (j, recovered) = Journal::open(&path).expect("open");
        assert_eq!(recovered, 0);
        let mut model = std::collections::BTreeMap::new();
        for n in 0..20 {
            let id = j.insert(write(n)).await.expect("insert");
            model.insert(id, State::Pending);
        }
        let ids: Vec<i64> = model.keys().copied().collect();
        for (i, id) in ids.iter().enumerate() {
            let to = match i % 4 {
                0 => Some(State::Confirmed),
                1 => Some(State::Rejected),
                2 => Some(State::Unconfirmed),
                _ => None, // still pending at the "crash"
            };
            if let Some(s) = to {
                j.settle(*id, s, 1, None, Some(*id * 10), Some(1.0))
                    .await
                    .expect("settle");
                model.insert(*id, s);
            }
        }
        // A settled row never goes back: confirming a rejected row changes nothing.
        j.settle(ids[1], State::Confirmed, 1, None, None, None)
            .await
            .expect("settle");
        drop(j);
        let (j, recovered) = Journal::open(&path).expect("reopen");
        assert_eq!(recovered, 5, "pending rows found at start");
        for (id, s) in model.iter_mut() {
            if *s == State::Pending {
                *s = State::Unconfirmed;
            }
            assert_eq!(j.state_of(*id).await.expect("state"), Some(*s), "row {id}");
        }
        assert_eq!(j.backlog().await.expect("backlog"), 10);
        let un = j
            .list(Some(State::Unconfirmed), vec![], 100)
            .await
            .expect("list");
        assert!(un.iter().all(|r| r.state == State::Unconfirmed));
        assert!(un.iter().any(|r| {
            r.last_error
                .as_deref()
                .is_some_and(|e| e.contains("stopped before"))
        }));
        // An unconfirmed row may become confirmed (replay).
        j.settle(un[0].id, State::Confirmed, 1, None, Some(1), None)
            .await
            .expect("settle");
        assert_eq!(
            j.state_of(un[0].id).await.expect("state"),
            Some(State::Confirmed)
        );
        // Pruning keeps the newest confirmed row and every other state.
        let pruned = j
            .prune(std::time::Duration::from_secs(3600), 1)
            .await
            .expect("prune");
        assert_eq!(pruned, 5, "6 confirmed, keep 1");
        assert_eq!(j.backlog().await.expect("backlog"), 9);
        let _ = std::fs::remove_file(&path);
    }
}
