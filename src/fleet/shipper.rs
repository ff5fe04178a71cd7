//! The shipper: carries this pod's journal rows to the fleet's ledger. Every held write is
//! journaled here first with its write key; once settled, its row is shipped — its fate for a
//! write the ledger recorded before it was sent, the whole row for one written while
//! PostgreSQL was unreachable — and marked shipped. Shipping is keyed by (journal identity,
//! row id), so a row sent twice (the pod died between shipping and marking) is inserted once;
//! a row whose key another pod recorded meanwhile is not inserted at all. It runs every
//! `every`, and once more after the drain so a clean stop leaves nothing behind.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::ledger::{Ledger, LedgerError, LocalRow, NewEntry, Outcome, WriteKey, Writer};
use crate::journal::{Journal, Row};

/// How many rows one ledger transaction carries.
const BATCH: usize = 200;

/// What one pass shipped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pass {
    pub shipped: usize,
    /// Rows the ledger did not have at all (journaled while PostgreSQL was unreachable).
    pub inserted: usize,
}

/// Ships every settled, unshipped row; stops at the first error (the next pass resumes).
pub async fn ship_once(
    ledger: &Ledger,
    journal: &Journal,
    journal_id: &str,
) -> Result<Pass, LedgerError> {
    let mut pass = Pass::default();
    loop {
        let rows = journal
            .unshipped(BATCH)
            .await
            .map_err(|e| LedgerError::Invalid(e.to_string()))?;
        if rows.is_empty() {
            return Ok(pass);
        }
        let local: Vec<LocalRow> = rows
            .iter()
            .map(|(r, key)| local_row(journal_id, r, key))
            .collect();
        let out = ledger.ship(&local).await?;
        pass.inserted += out
            .iter()
            .filter(|s| matches!(s, super::ledger::Shipped::Inserted(_)))
            .count();
        let n = rows.len();
        journal
            .mark_shipped(rows.iter().map(|(r, _)| (r.id, r.state)).collect())
            .await
            .map_err(|e| LedgerError::Invalid(e.to_string()))?;
        pass.shipped += n;
        if n < BATCH {
            return Ok(pass);
        }
    }
}

/// Ships every `every` until `stop`.
pub async fn run(
    ledger: Ledger,
    journal: Journal,
    journal_id: String,
    every: Duration,
    stop: CancellationToken,
) {
    loop {
        match ship_once(&ledger, &journal, &journal_id).await {
            Ok(p) if p.inserted > 0 => tracing::info!(
                shipped = p.shipped,
                inserted = p.inserted,
                "fleet: journal rows written while PostgreSQL was unreachable are in the ledger now"
            ),
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "fleet: shipping waits for PostgreSQL"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// A journal row as the ledger takes it.
fn local_row(journal_id: &str, r: &Row, key: &str) -> LocalRow {
    let received_at = time::OffsetDateTime::parse(
        &r.received_at,
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap_or_else(|_| time::OffsetDateTime::now_utc());
    LocalRow {
        journal: journal_id.to_string(),
        row: r.id,
        entry: NewEntry {
            key: WriteKey::from_stored(key),
            request_id: r.request_id.clone(),
            received_at,
            writer: Writer {
                credential: r.credential.clone(),
                rally_user: r.rally_user.clone(),
            },
            operation: r.operation.clone(),
            target: r.target.clone(),
            path: r.path.clone(),
            body: r.body.clone(),
            test_case: r.test_case.clone(),
            build: r.build.clone(),
            verdict: r.verdict.clone(),
            filled: r.filled.clone(),
            decision: r.decision.clone(),
        },
        outcome: Outcome {
            state: r.state,
            attempts: u32::try_from(r.attempts).unwrap_or(0),
            last_error: r.last_error.clone(),
            object_id: r.object_id,
            latency_ms: r.latency_ms,
        },
    }
}
