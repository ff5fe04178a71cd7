//! The journal: every intercepted TestCaseResult write is recorded before it is forwarded and
//! updated as its fate becomes known, in a SQLite file operators can open with standard tools.
//!
//! Invariants:
//! - a row is inserted as `pending` before the first byte of the write goes upstream;
//! - a row leaves `pending` exactly once, for `confirmed`, `rejected` or `unconfirmed`;
//!   `unconfirmed` may later become `confirmed` (replay, sweep) — never the other way;
//! - at start, rows still `pending` (the sidecar stopped mid-write) are reported and marked
//!   `unconfirmed`, never dropped;
//! - only `confirmed`, `rejected` and `refused` rows are pruned (by age and count, and near
//!   `journal.max_bytes`: [`capacity`]); `pending` and `unconfirmed` rows never are.
//!
//! - a write the sidecar refused (archived test case, no build, bad body) is recorded as
//!   `refused` with its reason; it was never forwarded;
//! - only a live owner's absence makes a `pending` row `unconfirmed`: while a sidecar owns the
//!   journal ([`owner`]), inspecting changes nothing and recovery does not run.
//!
//! Record (table `writes`, [`schema`]): id, request_id, received_at, updated_at, credential (the
//! writer's digest under the journal's own secret, never the credential), the writer's Rally
//! user once resolved, operation (create/update), target (test case or result ObjectID), path
//! (redacted), body (the enriched JSON sent), state, attempts, last_error, object_id, and for
//! people test_case, formatted_id, build, verdict, filled, decision, latency_ms.
//!
//! The file uses WAL with `synchronous = FULL`: a row committed before its write is forwarded
//! is on disk when the write leaves, so neither a killed process nor a power loss can lose a
//! forwarded write's row (docs/confirmation.md has the measured cost). It is created 0600: it
//! holds result bodies and Notes.

pub mod capacity;
pub mod owner;
mod pending;
mod report;
mod schema;
mod summary;
// Fleet mode: rows also recorded in the fleet's ledger, and their shipping (issue 15).
mod ship;

pub use pending::{Pending, Settled};

pub use report::{BuildCounts, WriteView};

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
    /// Refused by the sidecar (never forwarded).
    Refused,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Confirmed => "confirmed",
            State::Rejected => "rejected",
            State::Unconfirmed => "unconfirmed",
            State::Refused => "refused",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        match s {
            "pending" => Some(State::Pending),
            "confirmed" => Some(State::Confirmed),
            "rejected" => Some(State::Rejected),
            "unconfirmed" => Some(State::Unconfirmed),
            "refused" => Some(State::Refused),
            _ => None,
        }
    }
}

/// A new row.
#[derive(Debug, Clone, Default)]
pub struct NewWrite {
    pub request_id: String,
    pub received_at: String,
    /// The writer's digest ([`Journal::writer_secret`]).
    pub credential: String,
    /// The writer's Rally user (`/user/<oid>`) and UserName, once resolved.
    pub rally_user: Option<String>,
    pub rally_user_name: Option<String>,
    pub formatted_id: Option<String>,
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
    pub rally_user: Option<String>,
    pub rally_user_name: Option<String>,
    pub operation: String,
    pub target: Option<String>,
    pub path: String,
    pub body: String,
    pub state: State,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub object_id: Option<i64>,
    pub test_case: Option<String>,
    pub formatted_id: Option<String>,
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
    #[error(
        "journal {path} is owned by a live {owner}; stop it first (or point this one at another journal.path)"
    )]
    Owned {
        path: String,
        owner: Box<owner::Owner>,
    },
}

/// The journal; cheap to clone.
#[derive(Clone)]
pub struct Journal {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
    secret: [u8; 32],
    /// The owner lease this handle holds (`serve`), if any.
    instance: Option<String>,
    /// Whether the last insert failed for lack of space ([`capacity`]).
    room: Arc<capacity::Room>,
}

/// SQLite's `synchronous` level for the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Every commit reaches the disk before it returns: a forwarded write's row survives a
    /// power loss.
    Full,
    /// WAL commits reach the disk at checkpoints: survives the process, not the machine.
    Normal,
}

/// What [`Journal::recover_unowned`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// No live sidecar owned the journal: this many pending rows became unconfirmed.
    Recovered(usize),
    /// A live sidecar owns it: its pending rows are writes it is holding; nothing changed.
    Owned(owner::Owner),
}

const COLUMNS: &str = "id, request_id, received_at, updated_at, credential, rally_user, rally_user_name, \
    operation, target, path, body, state, attempts, last_error, object_id, test_case, formatted_id, build, \
    verdict, filled, decision, latency_ms";

fn row_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    let state: String = r.get(11)?;
    Ok(Row {
        id: r.get(0)?,
        request_id: r.get(1)?,
        received_at: r.get(2)?,
        updated_at: r.get(3)?,
        credential: r.get(4)?,
        rally_user: r.get(5)?,
        rally_user_name: r.get(6)?,
        operation: r.get(7)?,
        target: r.get(8)?,
        path: r.get(9)?,
        body: r.get(10)?,
        state: State::parse(&state).unwrap_or(State::Unconfirmed),
        attempts: r.get(12)?,
        last_error: r.get(13)?,
        object_id: r.get(14)?,
        test_case: r.get(15)?,
        formatted_id: r.get(16)?,
        build: r.get(17)?,
        verdict: r.get(18)?,
        filled: r.get(19)?,
        decision: r.get(20)?,
        latency_ms: r.get(21)?,
    })
}

fn insert_row(c: &Connection, w: &NewWrite, state: State) -> rusqlite::Result<i64> {
    c.execute(
        "INSERT INTO writes (request_id, received_at, updated_at, credential, rally_user, rally_user_name, operation,
                             target, path, body, state, last_error, test_case, formatted_id, build, verdict, filled, decision)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
        params![w.request_id, w.received_at, now(), w.credential, w.rally_user, w.rally_user_name, w.operation,
                w.target, w.path, w.body, state.as_str(), Option::<String>::None, w.test_case, w.formatted_id, w.build,
                w.verdict, w.filled, w.decision],
    )?;
    Ok(c.last_insert_rowid())
}

/// Creates the file readable and writable by its owner only (it holds result bodies and
/// Notes); an existing file keeps its mode. SQLite gives its -wal and -shm files the same mode.
fn create_private(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path);
    }
}

pub(crate) fn now() -> String {
    crate::wsapi::format_date(time::OffsetDateTime::now_utc())
}

impl Journal {
    /// Opens (creating if needed, 0600) the journal at `path` to read and record, migrating an
    /// older file. Changes no row: this is how the operator's commands open it.
    pub fn open(path: &Path) -> Result<Journal, JournalError> {
        Journal::open_with(path, Durability::Full)
    }

    /// [`Journal::open`] with a chosen `synchronous` level: only benchmarks choose `Normal`,
    /// to measure what `Full` costs (docs/confirmation.md).
    pub fn open_with(path: &Path, durability: Durability) -> Result<Journal, JournalError> {
        let err = |source| JournalError::Sqlite {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(dir);
        }
        create_private(path);
        let mut conn = Connection::open(path).map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        let level = match durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", level)
            .map_err(err)?;
        schema::migrate(&mut conn).map_err(err)?;
        let secret = schema::writer_secret(&conn).map_err(err)?;
        Ok(Journal {
            conn: Arc::new(Mutex::new(conn)),
            path: path.to_path_buf(),
            secret,
            instance: None,
            room: Arc::default(),
        })
    }

    /// Opens the journal for a running sidecar: takes the owner lease (waiting up to one lease
    /// for a previous owner that is stopping), then marks the rows a previous run left pending
    /// as unconfirmed. Returns the journal and how many rows that recovered.
    pub async fn own(path: &Path) -> Result<(Journal, usize), JournalError> {
        let mut journal = Journal::open(path)?;
        let me = owner::this_process(&uuid::Uuid::new_v4().to_string());
        let deadline = tokio::time::Instant::now() + owner::LEASE + owner::HEARTBEAT;
        loop {
            let claimed = {
                let me = me.clone();
                journal.with_mut(move |c| owner::claim(c, &me)).await?
            };
            match claimed {
                None => break,
                Some(other) if tokio::time::Instant::now() >= deadline => {
                    return Err(JournalError::Owned {
                        path: path.display().to_string(),
                        owner: Box::new(other),
                    });
                }
                Some(other) => {
                    tracing::warn!(%other, "the journal is owned by another sidecar; waiting for its lease to end");
                    tokio::time::sleep(owner::HEARTBEAT).await;
                }
            }
        }
        journal.instance = Some(me.instance);
        let recovered = journal.recover_pending().await?;
        Ok((journal, recovered))
    }

    /// For the commands that act (`journal replay`, `sweep`): when no live sidecar owns the
    /// journal, rows left pending by a stopped one become unconfirmed; otherwise nothing
    /// changes and the owner is returned.
    pub async fn recover_unowned(&self) -> Result<Recovery, JournalError> {
        let owned = self.with(|c| owner::live_other(c, None)).await?;
        match owned {
            Some(o) => Ok(Recovery::Owned(o)),
            None => Ok(Recovery::Recovered(self.recover_pending().await?)),
        }
    }

    /// The live sidecar that owns the journal, if any (other than this handle).
    pub async fn live_owner(&self) -> Result<Option<owner::Owner>, JournalError> {
        let me = self.instance.clone();
        self.with(move |c| owner::live_other(c, me.as_deref()))
            .await
    }

    /// Renews this handle's lease; false if another sidecar has taken the journal over.
    pub async fn heartbeat(&self) -> Result<bool, JournalError> {
        let Some(me) = self.instance.clone() else {
            return Ok(false);
        };
        self.with(move |c| owner::heartbeat(c, &me)).await
    }

    /// Gives the lease up (at the end of a clean stop).
    pub async fn release(&self) -> Result<(), JournalError> {
        let Some(me) = self.instance.clone() else {
            return Ok(());
        };
        self.with(move |c| owner::release(c, &me)).await
    }

    async fn recover_pending(&self) -> Result<usize, JournalError> {
        self.with(|c| {
            c.execute(
                "UPDATE writes SET state = 'unconfirmed', updated_at = ?1,
                 last_error = COALESCE(last_error || '; ', '') || 'the sidecar stopped before the outcome was known'
                 WHERE state = 'pending'",
                params![now()],
            )
        })
        .await
    }

    /// The secret writer digests are keyed with (kept in the file).
    pub fn writer_secret(&self) -> [u8; 32] {
        self.secret
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn with_mut<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, JournalError> {
        let conn = self.conn.clone();
        let path = self.path.display().to_string();
        let room = self.room.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut c).map_err(|source| {
                room.note(&source);
                JournalError::Sqlite { path, source }
            })
        })
        .await
        .map_err(|e| JournalError::Task(e.to_string()))?
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, JournalError> {
        let conn = self.conn.clone();
        let path = self.path.display().to_string();
        let room = self.room.clone();
        tokio::task::spawn_blocking(move || {
            let c = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&c).map_err(|source| {
                room.note(&source);
                JournalError::Sqlite { path, source }
            })
        })
        .await
        .map_err(|e| JournalError::Task(e.to_string()))?
    }

    /// Records a write as pending; returns its id.
    pub async fn insert(&self, w: NewWrite) -> Result<i64, JournalError> {
        self.with(move |c| insert_row(c, &w, State::Pending)).await
    }

    /// Records writes as pending in one transaction: all of them, or none (a batch's rows).
    pub async fn begin_all(&self, ws: Vec<NewWrite>) -> Result<Vec<Pending>, JournalError> {
        let ids = self
            .with_mut(move |c| {
                let tx = c.transaction()?;
                let mut ids = Vec::with_capacity(ws.len());
                for w in &ws {
                    ids.push(insert_row(&tx, w, State::Pending)?);
                }
                tx.commit()?;
                Ok(ids)
            })
            .await?;
        Ok(ids
            .into_iter()
            .map(|id| Pending {
                journal: self.clone(),
                id,
                open: true,
            })
            .collect())
    }

    /// Records a write the sidecar refused (never forwarded), with the reason.
    pub async fn record_refusal(&self, w: NewWrite, reason: String) -> Result<i64, JournalError> {
        self.with(move |c| {
            let id = insert_row(c, &w, State::Refused)?;
            c.execute(
                "UPDATE writes SET last_error = ?2 WHERE id = ?1",
                params![id, reason],
            )?;
            Ok(id)
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
            let mut sql = format!("SELECT {COLUMNS} FROM writes");
            let mut clauses = Vec::new();
            if let Some(s) = state {
                clauses.push(format!("state = '{}'", s.as_str()));
            }
            if !ids.is_empty() {
                clauses.push(format!(
                    "id IN ({})",
                    ids.iter()
                        .map(|i| i.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                ));
            }
            if !clauses.is_empty() {
                sql.push_str(" WHERE ");
                sql.push_str(&clauses.join(" AND "));
            }
            sql.push_str(&format!(" ORDER BY id DESC LIMIT {limit}"));
            let mut stmt = c.prepare(&sql)?;
            let rows = stmt.query_map([], row_of)?;
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

#[cfg(test)]
mod tests;
