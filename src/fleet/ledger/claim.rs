//! A replayer's claim on ledger rows: taken with `FOR UPDATE SKIP LOCKED` so concurrent
//! replayers get disjoint rows, held under one token whose lease is renewed in the background
//! while the claim lives, and given back (unsettled rows only) when it is dropped. A replayer
//! that dies leaves its claim to lapse, and the rows become claimable again.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use uuid::Uuid;

use super::{COLUMNS, LedgerError, LedgerRow, Outcome, state_allowed};
use crate::fleet::{Fleet, Shared};

/// Rows claimed for replay. Settle each with [`Claim::settle`]; drop the claim to give the rest
/// back.
pub struct Claim {
    rows: Vec<LedgerRow>,
    token: Uuid,
    shared: Arc<Shared>,
    lost: CancellationToken,
    renewer: tokio::task::JoinHandle<()>,
    // Keeps the fleet's background tasks running while the claim is held.
    _fleet: Fleet,
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claim")
            .field("rows", &self.rows.len())
            .field("lost", &self.lost.is_cancelled())
            .finish()
    }
}

impl Claim {
    pub(super) async fn take(
        fleet: Fleet,
        limit: usize,
        user: Option<String>,
        after: i64,
    ) -> Result<Claim, LedgerError> {
        let shared = fleet.shared.clone();
        let token = Uuid::new_v4();
        let args = (
            shared.pod_id.clone(),
            shared.lease_secs(),
            limit.min(i64::MAX as usize) as i64,
        );
        let sent = Instant::now();
        let sql = format!(
            "WITH c AS (
                SELECT w.id FROM fleet_writes w LEFT JOIN fleet_pods p ON p.pod_id = w.owner_pod
                WHERE NOT w.superseded
                  AND (w.state = 'unconfirmed'
                       OR (w.state = 'pending' AND (p.pod_id IS NULL OR p.lease_until < now())))
                  AND (w.claim_until IS NULL OR w.claim_until < now())
                  AND ($5::text IS NULL OR w.rally_user = $5)
                  AND w.id > $6
                ORDER BY w.id LIMIT $3
                FOR UPDATE OF w SKIP LOCKED)
             UPDATE fleet_writes w
             SET claim_token = $1, claimed_by = $2, claim_until = now() + $4 * interval '1 second'
             FROM c WHERE w.id = c.id
             RETURNING {}",
            COLUMNS
                .split(", ")
                .map(|c| format!("w.{}", c.trim()))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let rows = shared
            .with_client(|c| async move {
                let (pod, lease, limit) = args;
                c.query(&sql, &[&token, &pod, &limit, &lease, &user, &after])
                    .await
            })
            .await?;
        let mut rows: Vec<LedgerRow> = rows.iter().map(LedgerRow::from_row).collect();
        rows.sort_by_key(|r| r.id);
        let lost = CancellationToken::new();
        let renewer = tokio::spawn(renew(shared.clone(), token, lost.clone(), sent));
        Ok(Claim {
            rows,
            token,
            shared,
            lost,
            renewer,
            _fleet: fleet,
        })
    }

    pub fn rows(&self) -> &[LedgerRow] {
        &self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Whether the claim may have lapsed (see [`Claim::lost`]).
    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// Resolves when the claim can no longer be guaranteed: no renewal succeeded for a whole
    /// lease. A replayer should stop sending this claim's rows then.
    pub fn lost(&self) -> WaitForCancellationFuture<'_> {
        self.lost.cancelled()
    }

    /// Whether this claim still holds row `id` and it is still to be replayed: check just
    /// before sending it.
    pub async fn holds(&self, id: i64) -> Result<bool, LedgerError> {
        let token = self.token;
        let n = self
            .shared
            .with_client(|c| async move {
                c.query_opt(
                    "SELECT 1 FROM fleet_writes WHERE id = $1 AND claim_token = $2
                       AND claim_until >= now() AND state IN ('pending', 'unconfirmed')",
                    &[&id, &token],
                )
                .await
            })
            .await?;
        Ok(n.is_some() && !self.is_lost())
    }

    /// Records a claimed row's fate and lets go of it. Returns false when the claim no longer
    /// held the row (it lapsed and another replayer took it, or its writer settled it).
    pub async fn settle(&self, id: i64, o: &Outcome) -> Result<bool, LedgerError> {
        state_allowed(o.state)?;
        let (o, token) = (o.clone(), self.token);
        let n = self
            .shared
            .with_client(|c| async move {
                c.execute(
                    "UPDATE fleet_writes SET state = $3, attempts = attempts + $4, last_error = $5,
                            object_id = COALESCE($6, object_id),
                            latency_ms = COALESCE($7, latency_ms), updated_at = now(),
                            claim_token = NULL, claimed_by = NULL, claim_until = NULL
                     WHERE id = $1 AND claim_token = $2 AND state IN ('pending', 'unconfirmed')",
                    &[
                        &id,
                        &token,
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
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.renewer.abort();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (shared, token) = (self.shared.clone(), self.token);
            rt.spawn(async move {
                let _ = shared
                    .with_client(|c| async move {
                        c.execute(
                            "UPDATE fleet_writes SET claim_token = NULL, claimed_by = NULL,
                                    claim_until = NULL
                             WHERE claim_token = $1",
                            &[&token],
                        )
                        .await
                    })
                    .await;
            });
        }
    }
}

async fn renew(shared: Arc<Shared>, token: Uuid, lost: CancellationToken, sent: Instant) {
    let lease = shared.cfg.lease;
    let mut valid_until = sent + lease;
    let mut next = sent + shared.renew_every();
    loop {
        tokio::time::sleep_until(next.min(valid_until)).await;
        if Instant::now() >= valid_until {
            lost.cancel();
        }
        let sent = Instant::now();
        let secs = shared.lease_secs();
        let r = shared
            .with_client(|c| async move {
                c.execute(
                    "UPDATE fleet_writes SET claim_until = now() + $2 * interval '1 second'
                     WHERE claim_token = $1",
                    &[&token, &secs],
                )
                .await
            })
            .await;
        match r {
            Ok(_) => {
                valid_until = sent + lease;
                next = sent + shared.renew_every();
            }
            Err(_) => next = Instant::now() + Duration::from_millis(250),
        }
    }
}
