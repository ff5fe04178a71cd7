//! The shared write ledger: every intercepted TestCaseResult write of the fleet, in
//! `fleet_writes`, with the journal's states and its writer's identity, so that a central
//! replayer can finish what any pod left open — including a pod that died.
//!
//! Invariants (the journal's, plus the fleet's):
//! - a row is recorded `pending` before its write is forwarded, owned by the recording pod;
//! - a row leaves `pending` once, for `confirmed`, `rejected` or `unconfirmed`; `unconfirmed`
//!   may later become `confirmed` or `rejected` — never the other way;
//! - one [`WriteKey`] has one live row: recording a key already present returns that row
//!   ([`Recorded::Existing`]) instead of a second write; only a settled row recorded longer
//!   ago than `retry_window` (database clock) is superseded by a new one;
//! - a row is replayed only under a claim (`claim_for_replay`, `FOR UPDATE SKIP LOCKED`, with a
//!   lease renewed while held), so two replayers never hold the same row; a `pending` row is
//!   claimable only once its owner's pod lease has lapsed;
//! - a local journal row shipped after an outage is keyed by (journal, row id): shipping it
//!   again inserts nothing and only moves its state forward.

mod claim;

use serde::Serialize;
use time::OffsetDateTime;
use tokio_postgres::Row;

pub use crate::journal::State;
pub use claim::Claim;

use super::{Fleet, FleetError};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LedgerError {
    #[error(transparent)]
    Fleet(#[from] FleetError),
    #[error("{0}")]
    Invalid(String),
}

/// Who wrote: never the credential itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Writer {
    /// The credential's digest under the fleet's writer key ([`Fleet::writer_key`]).
    pub credential: String,
    /// The Rally user, once resolved.
    pub rally_user: Option<String>,
}

/// A write's identity in the ledger. Two records with one key are one write.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct WriteKey(String);

impl WriteKey {
    /// The key of a request as the client sent it (before enrichment, which fills `Date` from
    /// the time of receipt and would differ between a request and its retry): the same writer
    /// sending the same body to the same path is the same write.
    pub fn of_request(credential: &str, operation: &str, path: &str, body: &[u8]) -> WriteKey {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for part in [
            b"rally-sidecar/write/1".as_slice(),
            credential.as_bytes(),
            operation.as_bytes(),
            path.as_bytes(),
            body,
        ] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        WriteKey(format!("w1:{}", hex::encode(h.finalize())))
    }

    /// The key of a local journal row that has no request key: unique per journal file.
    pub fn local(journal: &str, row: i64) -> WriteKey {
        WriteKey(format!("local:{journal}:{row}"))
    }

    /// A key as stored (in a journal row's `write_key`).
    pub fn from_stored(key: &str) -> WriteKey {
        WriteKey(key.to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A write to record (the journal's `NewWrite`, with its key and writer).
#[derive(Debug, Clone, PartialEq)]
pub struct NewEntry {
    pub key: WriteKey,
    pub request_id: String,
    pub received_at: OffsetDateTime,
    pub writer: Writer,
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

/// A write's fate, as the journal's `settle` takes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub state: State,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub object_id: Option<i64>,
    pub latency_ms: Option<f64>,
}

/// A row as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct LedgerRow {
    pub id: i64,
    pub key: String,
    pub request_id: String,
    pub received_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    pub writer: Writer,
    pub owner_pod: String,
    pub operation: String,
    pub target: Option<String>,
    pub path: String,
    pub body: String,
    pub state: State,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub object_id: Option<i64>,
    pub test_case: Option<String>,
    pub build: Option<String>,
    pub verdict: Option<String>,
    pub filled: Option<String>,
    pub decision: Option<String>,
    pub latency_ms: Option<f64>,
    /// (journal, row id) for a row shipped from a local journal.
    pub source: Option<(String, i64)>,
}

pub(crate) const COLUMNS: &str = "id, write_key, request_id, received_at, updated_at, credential, \
    rally_user, owner_pod, operation, target, path, body, state, attempts, last_error, object_id, \
    test_case, build, verdict, filled, decision, latency_ms, source_journal, source_row";

impl LedgerRow {
    pub(crate) fn from_row(r: &Row) -> LedgerRow {
        let state: String = r.get("state");
        let source: (Option<String>, Option<i64>) = (r.get("source_journal"), r.get("source_row"));
        LedgerRow {
            id: r.get("id"),
            key: r.get("write_key"),
            request_id: r.get("request_id"),
            received_at: r.get("received_at"),
            updated_at: r.get("updated_at"),
            writer: Writer {
                credential: r.get("credential"),
                rally_user: r.get("rally_user"),
            },
            owner_pod: r.get("owner_pod"),
            operation: r.get("operation"),
            target: r.get("target"),
            path: r.get("path"),
            body: r.get("body"),
            // The CHECK constraint admits only the four states.
            state: State::parse(&state).unwrap_or(State::Unconfirmed),
            attempts: r.get("attempts"),
            last_error: r.get("last_error"),
            object_id: r.get("object_id"),
            test_case: r.get("test_case"),
            build: r.get("build"),
            verdict: r.get("verdict"),
            filled: r.get("filled"),
            decision: r.get("decision"),
            latency_ms: r.get("latency_ms"),
            source: match source {
                (Some(j), Some(n)) => Some((j, n)),
                _ => None,
            },
        }
    }
}

/// What `record` did.
#[derive(Debug, Clone, PartialEq)]
pub enum Recorded {
    /// A new pending row, owned by this pod: forward the write.
    New(i64),
    /// The key is already recorded (a client's retry, or the same write on another pod): do
    /// not write again; answer from this row (confirmed: its ObjectID; pending: in progress).
    Existing(Box<LedgerRow>),
}

/// A row of a pod's local journal, written while the database was unreachable.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalRow {
    /// A stable identity of the local journal file (persisted in it).
    pub journal: String,
    /// The row's id in that journal.
    pub row: i64,
    pub entry: NewEntry,
    pub outcome: Outcome,
}

/// What shipping one local row did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shipped {
    Inserted(i64),
    /// Shipped before; its state moved forward now.
    Updated(i64),
    /// Shipped before, nothing new.
    Unchanged(i64),
    /// Another live row has the same key (the write was also recorded by a pod that could
    /// reach the database): kept there, not inserted twice.
    DuplicateOf(i64),
}

/// The ledger; cheap to clone.
#[derive(Clone)]
pub struct Ledger {
    fleet: Fleet,
}

fn state_allowed(to: State) -> Result<(), LedgerError> {
    match to {
        State::Pending => Err(LedgerError::Invalid(
            "a write cannot be settled as pending".into(),
        )),
        _ => Ok(()),
    }
}

/// Marks a settled row with this key as superseded once it is older than the retry window.
const SUPERSEDE: &str = "UPDATE fleet_writes SET superseded = true
    WHERE write_key = $1 AND NOT superseded AND state IN ('confirmed', 'rejected')
      AND recorded_at < now() - $2 * interval '1 second'";

const INSERT: &str = "INSERT INTO fleet_writes (write_key, request_id, received_at, credential,
        rally_user, owner_pod, operation, target, path, body, test_case, build, verdict, filled,
        decision, state, attempts, last_error, object_id, latency_ms, source_journal, source_row)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19,
            $20, $21, $22)
    ON CONFLICT DO NOTHING RETURNING id";

impl Ledger {
    pub(crate) fn new(fleet: Fleet) -> Ledger {
        Ledger { fleet }
    }

    /// Records a write as pending, owned by this pod, unless its key is already recorded.
    pub async fn record(&self, e: &NewEntry) -> Result<Recorded, LedgerError> {
        self.record_from(e, None).await
    }

    /// [`Ledger::record`] for a write this pod also journaled locally as row `source.1` of
    /// journal `source.0`: the shipper later moves the row's state forward by that source
    /// (`ship`), without a second insert.
    pub async fn record_from(
        &self,
        e: &NewEntry,
        source: Option<(&str, i64)>,
    ) -> Result<Recorded, LedgerError> {
        let (src_journal, src_row) = (source.map(|s| s.0.to_string()), source.map(|s| s.1));
        let (e, pod, window) = self.args(e);
        let found = self
            .fleet
            .shared
            .with_client(|mut c| async move {
                let tx = c.transaction().await?;
                tx.execute(SUPERSEDE, &[&e.key.0, &window]).await?;
                let w = &e.writer;
                let pending = State::Pending.as_str();
                let (zero, none_s, none_i, none_f) = (0i32, None::<String>, None::<i64>, None::<f64>);
                let inserted = tx
                    .query_opt(
                        INSERT,
                        &[
                            &e.key.0, &e.request_id, &e.received_at, &w.credential, &w.rally_user,
                            &pod, &e.operation, &e.target, &e.path, &e.body, &e.test_case,
                            &e.build, &e.verdict, &e.filled, &e.decision, &pending, &zero,
                            &none_s, &none_i, &none_f, &src_journal, &src_row,
                        ],
                    )
                    .await?;
                let out = match inserted {
                    Some(r) => Recorded::New(r.get(0)),
                    None => {
                        let sql = format!(
                            "SELECT {COLUMNS} FROM fleet_writes WHERE write_key = $1 AND NOT superseded"
                        );
                        let r = tx.query_one(&sql, &[&e.key.0]).await?;
                        Recorded::Existing(Box::new(LedgerRow::from_row(&r)))
                    }
                };
                tx.commit().await?;
                Ok(out)
            })
            .await?;
        Ok(found)
    }

    /// Deletes a row this pod recorded for a write it then did not send (the rest of its
    /// request was a retry of writes already recorded): only while still pending and ours.
    pub async fn discard(&self, id: i64) -> Result<bool, LedgerError> {
        let pod = self.fleet.shared.pod_id.clone();
        let n = self
            .fleet
            .shared
            .with_client(|c| async move {
                c.execute(
                    "DELETE FROM fleet_writes WHERE id = $1 AND owner_pod = $2 AND state = 'pending'",
                    &[&id, &pod],
                )
                .await
            })
            .await?;
        Ok(n == 1)
    }

    fn args(&self, e: &NewEntry) -> (NewEntry, String, f64) {
        (
            e.clone(),
            self.fleet.shared.pod_id.clone(),
            self.fleet.shared.cfg.retry_window.as_secs_f64(),
        )
    }

    /// Records a write's fate (the writer's own settle). Returns whether the row changed: a
    /// row already confirmed or rejected (by a replayer, say) is left as it is.
    pub async fn settle(&self, id: i64, o: &Outcome) -> Result<bool, LedgerError> {
        state_allowed(o.state)?;
        let o = o.clone();
        let n = self
            .fleet
            .shared
            .with_client(|c| async move {
                c.execute(
                    "UPDATE fleet_writes SET state = $2, attempts = attempts + $3, last_error = $4,
                            object_id = COALESCE($5, object_id),
                            latency_ms = COALESCE($6, latency_ms), updated_at = now()
                     WHERE id = $1 AND state IN ('pending', 'unconfirmed')",
                    &[
                        &id,
                        &o.state.as_str(),
                        &(o.attempts as i32),
                        &o.last_error,
                        &o.object_id,
                        &o.latency_ms,
                    ],
                )
                .await
            })
            .await?;
        Ok(n == 1)
    }

    /// Records the Rally user behind a credential digest on the rows that lacked it.
    pub async fn resolve_writer(
        &self,
        credential: &str,
        rally_user: &str,
    ) -> Result<u64, LedgerError> {
        let (cred, user) = (credential.to_string(), rally_user.to_string());
        Ok(self
            .fleet
            .shared
            .with_client(|c| async move {
                c.execute(
                    "UPDATE fleet_writes SET rally_user = $2 WHERE credential = $1 AND rally_user IS NULL",
                    &[&cred, &user],
                )
                .await
            })
            .await?)
    }

    /// One row by id.
    pub async fn get(&self, id: i64) -> Result<Option<LedgerRow>, LedgerError> {
        let sql = format!("SELECT {COLUMNS} FROM fleet_writes WHERE id = $1");
        let r = self
            .fleet
            .shared
            .with_client(|c| async move { c.query_opt(&sql, &[&id]).await })
            .await?;
        Ok(r.as_ref().map(LedgerRow::from_row))
    }

    /// Whether `pod` still holds its lease (a pending row of a pod that does not is the
    /// central replayer's to land).
    pub async fn pod_alive(&self, pod: &str) -> Result<bool, LedgerError> {
        let pod = pod.to_string();
        let r = self
            .fleet
            .shared
            .with_client(|c| async move {
                c.query_opt(
                    "SELECT 1 FROM fleet_pods WHERE pod_id = $1 AND lease_until >= now()",
                    &[&pod],
                )
                .await
            })
            .await?;
        Ok(r.is_some())
    }

    /// Live rows per state.
    pub async fn counts(&self) -> Result<Vec<(State, i64)>, LedgerError> {
        let rows = self
            .fleet
            .shared
            .with_client(|c| async move {
                c.query(
                    "SELECT state, count(*) FROM fleet_writes GROUP BY state ORDER BY state",
                    &[],
                )
                .await
            })
            .await?;
        Ok(rows
            .iter()
            .filter_map(|r| State::parse(r.get(0)).map(|s| (s, r.get(1))))
            .collect())
    }

    /// Claims up to `limit` rows to replay: unconfirmed rows, and pending rows of pods whose
    /// lease lapsed. Rows another replayer holds are skipped, not waited for.
    pub async fn claim_for_replay(&self, limit: usize) -> Result<Claim, LedgerError> {
        Claim::take(self.fleet.clone(), limit, None, 0).await
    }

    /// [`Ledger::claim_for_replay`], only rows of this Rally user (a replayer replays a row
    /// only with a credential of its writer's user).
    pub async fn claim_for_replay_as(
        &self,
        rally_user: &str,
        limit: usize,
    ) -> Result<Claim, LedgerError> {
        Claim::take(self.fleet.clone(), limit, Some(rally_user.to_string()), 0).await
    }

    /// [`Ledger::claim_for_replay_as`], only rows after `after` (by id): a replayer goes
    /// through the backlog once per run, even when rows stay unconfirmed.
    pub async fn claim_next_for_replay(
        &self,
        rally_user: &str,
        after: i64,
        limit: usize,
    ) -> Result<Claim, LedgerError> {
        Claim::take(
            self.fleet.clone(),
            limit,
            Some(rally_user.to_string()),
            after,
        )
        .await
    }

    /// Ships rows of a local journal (written while the database was unreachable), in one
    /// transaction. Idempotent: a row shipped before is found by (journal, row) and only its
    /// state moves forward. Returns what happened to each row, in order.
    pub async fn ship(&self, rows: &[LocalRow]) -> Result<Vec<Shipped>, LedgerError> {
        let rows = rows.to_vec();
        let (pod, window) = (
            self.fleet.shared.pod_id.clone(),
            self.fleet.shared.cfg.retry_window.as_secs_f64(),
        );
        Ok(self
            .fleet
            .shared
            .with_client(|mut c| async move {
                let tx = c.transaction().await?;
                let mut out = Vec::with_capacity(rows.len());
                for r in &rows {
                    out.push(ship_one(&tx, r, &pod, window).await?);
                }
                tx.commit().await?;
                Ok(out)
            })
            .await?)
    }
}

async fn ship_one(
    tx: &deadpool_postgres::Transaction<'_>,
    r: &LocalRow,
    pod: &str,
    window: f64,
) -> Result<Shipped, tokio_postgres::Error> {
    let (e, o, w) = (&r.entry, &r.outcome, &r.entry.writer);
    tx.execute(SUPERSEDE, &[&e.key.0, &window]).await?;
    let inserted = tx
        .query_opt(
            INSERT,
            &[
                &e.key.0,
                &e.request_id,
                &e.received_at,
                &w.credential,
                &w.rally_user,
                &pod,
                &e.operation,
                &e.target,
                &e.path,
                &e.body,
                &e.test_case,
                &e.build,
                &e.verdict,
                &e.filled,
                &e.decision,
                &o.state.as_str(),
                &(o.attempts as i32),
                &o.last_error,
                &o.object_id,
                &o.latency_ms,
                &r.journal,
                &r.row,
            ],
        )
        .await?;
    if let Some(row) = inserted {
        return Ok(Shipped::Inserted(row.get(0)));
    }
    // Shipped before: move its state forward the way the journal's rules allow.
    let moved = tx
        .query_opt(
            "UPDATE fleet_writes SET state = $3, attempts = $4, last_error = $5,
                    object_id = COALESCE($6, object_id), latency_ms = COALESCE($7, latency_ms),
                    updated_at = now()
             WHERE source_journal = $1 AND source_row = $2 AND state <> $3
               AND (state = 'pending' OR (state = 'unconfirmed' AND $3 IN ('confirmed', 'rejected')))
             RETURNING id",
            &[
                &r.journal,
                &r.row,
                &o.state.as_str(),
                &(o.attempts as i32),
                &o.last_error,
                &o.object_id,
                &o.latency_ms,
            ],
        )
        .await?;
    if let Some(row) = moved {
        return Ok(Shipped::Updated(row.get(0)));
    }
    let same = tx
        .query_opt(
            "SELECT id FROM fleet_writes WHERE source_journal = $1 AND source_row = $2",
            &[&r.journal, &r.row],
        )
        .await?;
    if let Some(row) = same {
        return Ok(Shipped::Unchanged(row.get(0)));
    }
    let other = tx
        .query_one(
            "SELECT id FROM fleet_writes WHERE write_key = $1 AND NOT superseded",
            &[&e.key.0],
        )
        .await?;
    Ok(Shipped::DuplicateOf(other.get(0)))
}
