//! Fleet mode beside the journal (issue 15): every held write is recorded in the fleet's
//! ledger before it is sent, keyed by its writer and the request as the client sent it, so a
//! client's retry — on this pod or another — finds the first attempt's row instead of writing
//! the result again. The local journal row comes first and carries the key: if PostgreSQL
//! cannot be reached the write goes on with its local row only, and the shipper
//! (`crate::fleet::shipper`) sends it to the ledger once the database is back. Settling stays
//! the journal's; the shipper carries each row's fate to the ledger by its (journal, row) key.

use std::time::Duration;

use http::{Response, StatusCode};

use super::hold::Held;
use super::{Interceptor, WriteCtx, answer};
use crate::confirm::Fate;
use crate::error::ProxyError;
use crate::fleet::ledger::{Ledger, LedgerRow, NewEntry, Recorded, WriteKey, Writer};
use crate::journal::{Journal, JournalError, NewWrite, Pending, State};
use crate::server::Body;
use crate::wsapi::headers;

/// The ledger, as the interception layer uses it.
pub struct FleetWrites {
    pub ledger: Ledger,
    /// The local journal's identity in the ledger (`Journal::identity`).
    pub journal_id: String,
}

/// What recording a request's writes found.
pub enum Begun {
    /// Journaled (and in the ledger, when it could be reached): send them.
    Held(Vec<Pending>),
    /// Already recorded by an earlier request — a client's retry: nothing is sent again.
    Existing(Vec<LedgerRow>),
}

/// Header naming the ledger row a retried write was answered from.
pub const LEDGER_ID: &str = "x-rally-sidecar-ledger-id";

impl Interceptor {
    /// Records a request's held writes (all or none): in the journal, and in fleet mode in the
    /// ledger too, before anything is sent.
    pub(super) async fn begin(
        &self,
        journal: &Journal,
        w: &WriteCtx<'_>,
        records: Vec<NewWrite>,
    ) -> Result<Begun, JournalError> {
        let Some(fleet) = &self.fleet else {
            return journal.begin_all(records).await.map(Begun::Held);
        };
        // The n-th write of a request is the n-th write of its retry: same writer, path, body.
        let keyed: Vec<(NewWrite, String)> = records
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                let op = format!("{}#{i}", r.operation);
                let key = WriteKey::of_request(&w.writer.digest, &op, &r.path, &w.raw);
                (r, key.as_str().to_string())
            })
            .collect();
        let entries: Vec<NewEntry> = keyed.iter().map(|(r, k)| entry(r, k)).collect();
        let pendings = journal.begin_all_keyed(keyed).await?;
        let (mut fresh, mut existing) = (Vec::new(), Vec::new());
        for (e, p) in entries.iter().zip(&pendings) {
            match fleet
                .ledger
                .record_from(e, Some((&fleet.journal_id, p.id())))
                .await
            {
                Ok(Recorded::New(id)) => fresh.push(id),
                Ok(Recorded::Existing(row)) => existing.push(*row),
                Err(err) => {
                    // The rest waits for the shipper too: each try would wait as long.
                    tracing::warn!(error = %err, "fleet ledger unreachable: the write is journaled here and shipped when it is back");
                    break;
                }
            }
        }
        if existing.is_empty() {
            return Ok(Begun::Held(pendings));
        }
        for id in fresh {
            let _ = fleet.ledger.discard(id).await;
        }
        journal.forget(pendings).await?;
        Ok(Begun::Existing(existing))
    }

    /// The answer to a client's retry of a single write: the first attempt's fate, waited for
    /// (up to `confirm.timeout`) while it is still pending.
    pub(super) async fn answer_existing(
        &self,
        w: &WriteCtx<'_>,
        held: &Held,
        row: LedgerRow,
    ) -> Response<Body> {
        let row = match &self.fleet {
            Some(f) => settled(&f.ledger, row, self.cfg.confirm.policy.timeout).await,
            None => row,
        };
        tracing::info!(
            ledger_id = row.id,
            state = row.state.as_str(),
            "a retried write answered from its first attempt"
        );
        let fate = fate_of(&row);
        let confirmed = matches!(fate, Fate::Confirmed { .. });
        let mut resp = answer::single(
            self,
            w.kind,
            fate,
            &held.expected(),
            w.req.client_origin.as_deref(),
        );
        answer::set(
            &mut resp,
            headers::CONFIRMED,
            if confirmed { "true" } else { "false" },
        );
        answer::set(&mut resp, LEDGER_ID, &row.id.to_string());
        answer::decorate(&mut resp, &held.filled, held.decision);
        resp
    }
}

/// A retried batch or `Results/add`: refused whole, since its writes were recorded before.
pub fn duplicate_request(w: &WriteCtx<'_>, rows: &[LedgerRow]) -> ProxyError {
    let list: Vec<String> = rows
        .iter()
        .map(|r| format!("{} ({})", r.id, r.state.as_str()))
        .collect();
    ProxyError::Refused {
        status: StatusCode::CONFLICT,
        kind: w.kind,
        code: "duplicate-request",
        message: format!(
            "rally-sidecar: this request repeats one received earlier; its results are ledger rows {}; nothing was forwarded again",
            list.join(", ")
        ),
    }
}

/// Polls a pending row until it settles, `wait` has passed, or the pod holding it is gone
/// (then only the central replayer will settle it).
async fn settled(ledger: &Ledger, mut row: LedgerRow, wait: Duration) -> LedgerRow {
    let until = tokio::time::Instant::now() + wait;
    let mut polls = 0u32;
    while row.state == State::Pending && tokio::time::Instant::now() < until {
        if polls.is_multiple_of(5) && !ledger.pod_alive(&row.owner_pod).await.unwrap_or(true) {
            break;
        }
        polls += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
        match ledger.get(row.id).await {
            Ok(Some(r)) => row = r,
            // Gone (discarded) or unreachable: keep what we know.
            _ => break,
        }
    }
    row
}

fn fate_of(row: &LedgerRow) -> Fate {
    let cause = |what: &str| {
        format!(
            "an earlier attempt of this write (ledger row {}) {what}{}",
            row.id,
            row.last_error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        )
    };
    match (row.state, row.object_id) {
        (State::Confirmed, Some(object_id)) => Fate::Confirmed {
            object_id,
            attempts: 0,
            adopted: true,
            answer: None,
        },
        (State::Rejected, _) => Fate::Rejected {
            attempts: 0,
            cause: cause("was refused by Rally"),
            answer: None,
        },
        (State::Pending, _) => Fate::Unconfirmed {
            attempts: 0,
            cause: cause(
                "is still pending (its sidecar may have stopped; the fleet's replayer lands it)",
            ),
            object_id: None,
        },
        _ => Fate::Unconfirmed {
            attempts: 0,
            cause: cause("is not confirmed yet; the fleet's replayer lands it"),
            object_id: row.object_id,
        },
    }
}

/// The ledger's record of a journal row.
fn entry(r: &NewWrite, key: &str) -> NewEntry {
    let received_at = time::OffsetDateTime::parse(
        &r.received_at,
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap_or_else(|_| time::OffsetDateTime::now_utc());
    NewEntry {
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
    }
}
