//! `journal replay` in fleet mode: the central replayer (the fleet's CronJob). It replays the
//! fleet's ledger, not a pod's journal: unconfirmed rows, and the pending rows of pods whose
//! lease lapsed (pods that died mid-write), claimed in batches with `FOR UPDATE SKIP LOCKED`
//! so replayers running at once take disjoint rows. The identity rule stays: only rows of the
//! Rally user `RALLY_API_KEY` belongs to are claimed (rows its own key wrote before Rally said
//! whose it was are given that user first). Each row is first looked for by its fingerprint
//! and written again only if absent — a dead pod may have landed it — then read back, and its
//! fate settled under the claim. Its Rally requests take the fleet's permits like any pod's.

use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Method};
use serde_json::Value;

use super::{ReplayReport, Replayed, without_key, workspace_of};
use crate::config::Config;
use crate::confirm::{self, Expected, Fate, Kind, rally::RallyWrite};
use crate::fleet::ledger::{Claim, LedgerRow, Outcome};
use crate::fleet::{Fleet, FleetConfig};
use crate::journal::State;
use crate::rally::Session;
use crate::rally::credential::Operator;

/// Rows claimed at once: few, so replayers running together share the work and a claim's rows
/// are settled well within its lease.
const BATCH: usize = 10;

/// Replays the ledger's rows of the operator's Rally user, each once per run.
pub(super) async fn replay_fleet(
    cfg: Arc<Config>,
    fleet_cfg: FleetConfig,
    api_key: &str,
) -> Result<ReplayReport, String> {
    let fleet = Fleet::connect(fleet_cfg)
        .await
        .map_err(|e| format!("fleet: {e}"))?;
    let r = replay_with(cfg, &fleet, api_key).await;
    fleet.shutdown().await;
    r
}

/// [`replay_fleet`] on a fleet already connected (tests run two at once).
pub async fn replay_with(
    cfg: Arc<Config>,
    fleet: &Fleet,
    api_key: &str,
) -> Result<ReplayReport, String> {
    use futures_util::stream::{self, StreamExt, TryStreamExt};
    let ctx = Session::with_fleet(&cfg, &Operator::ApiKey(api_key.to_string()), fleet)?;
    let me = ctx
        .lookups
        .owner(&ctx.cred)
        .await
        .map_err(|e| format!("Rally did not say whose key RALLY_API_KEY is ({e})"))?;
    let ledger = fleet.ledger();
    ledger
        .resolve_writer(ctx.cred.fingerprint(), &me.reference)
        .await
        .map_err(|e| e.to_string())?;
    let at_once = fleet.config().pod_cap.max(1) as usize;
    let (mut out, mut recovered, mut after) = (Vec::new(), 0, 0);
    loop {
        let claim = ledger
            .claim_next_for_replay(&me.reference, after, BATCH)
            .await
            .map_err(|e| e.to_string())?;
        let Some(last) = claim.rows().last().map(|r| r.id) else {
            break;
        };
        after = last;
        recovered += claim
            .rows()
            .iter()
            .filter(|r| r.state == State::Pending)
            .count();
        // Rows of one result (a client sent it twice) go in separate rounds, so the second
        // finds what the first wrote instead of racing it.
        let mut left: Vec<&LedgerRow> = claim.rows().iter().collect();
        while !left.is_empty() {
            let mut seen = std::collections::HashSet::new();
            let (now, later): (Vec<&LedgerRow>, Vec<&LedgerRow>) = left
                .into_iter()
                .partition(|r| seen.insert(fingerprint(r).unwrap_or_else(|| r.id.to_string())));
            let done: Vec<Replayed> = stream::iter(now)
                .map(|row| replay_row(&cfg, &ctx, &claim, row))
                .buffer_unordered(at_once)
                .try_collect()
                .await?;
            out.extend(done);
            left = later;
        }
    }
    let held_by_owner = ledger
        .counts()
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .find_map(|(s, n)| (s == State::Pending).then_some(n as usize))
        .unwrap_or(0);
    out.sort_by_key(|r| std::cmp::Reverse(r.id));
    Ok(ReplayReport {
        owner: None,
        held_by_owner,
        recovered,
        rows: out,
    })
}

/// The fingerprint query of a row's result, if it can be built.
fn fingerprint(row: &LedgerRow) -> Option<String> {
    confirm::fingerprint_query(&Expected::from_fields(&fields(&row.body)))
}

fn fields(body: &str) -> serde_json::Map<String, Value> {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|b| b.as_object()?.values().next()?.as_object().cloned())
        .unwrap_or_default()
}

/// One claimed row: looked for, written again only if absent, read back, settled.
async fn replay_row(
    cfg: &Arc<Config>,
    ctx: &Session,
    claim: &Claim,
    row: &LedgerRow,
) -> Result<Replayed, String> {
    let skipped = |why: &str| Replayed {
        id: row.id,
        state: row.state,
        object_id: row.object_id,
        adopted: false,
        detail: why.to_string(),
        skipped: Some(why.to_string()),
    };
    // Just before sending: the claim may have lapsed, or the writer settled the row.
    if !claim.holds(row.id).await.map_err(|e| e.to_string())? {
        return Ok(skipped("no longer claimed by this replayer"));
    }
    let expected = Expected::from_fields(&fields(&row.body));
    let uri = format!("{}{}", cfg.upstream.origin_string(), without_key(&row.path));
    let Ok(uri) = uri.parse() else {
        return Ok(skipped(&format!("bad stored path {}", row.path)));
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    ctx.cred.apply(&mut headers);
    let kind = if row.operation == "update" {
        Kind::Update
    } else {
        Kind::Create
    };
    let up = RallyWrite {
        lookups: ctx.lookups.clone(),
        cred: ctx.cred.clone(),
        conn: None,
        workspace: workspace_of(&row.path),
        method: if kind == Kind::Update {
            Method::POST
        } else {
            Method::PUT
        },
        uri,
        headers,
        body: bytes::Bytes::from(row.body.clone()),
        ctx: None,
    };
    let since = time::OffsetDateTime::now_utc() - row.updated_at;
    let since = std::time::Duration::try_from(since).unwrap_or(std::time::Duration::ZERO);
    let fate = confirm::confirm(
        &up,
        kind,
        (kind == Kind::Create).then(|| cfg.confirm.policy.readback_window.saturating_sub(since)),
        &expected,
        &cfg.confirm.policy,
        rand::random::<f64>,
        claim.lost(),
    )
    .await;
    let (state, object_id, adopted, detail) = match &fate {
        Fate::Confirmed {
            object_id, adopted, ..
        } => (
            State::Confirmed,
            Some(*object_id),
            *adopted,
            if *adopted {
                "found in Rally by its fingerprint".to_string()
            } else {
                "written and read back".to_string()
            },
        ),
        Fate::Rejected { cause, .. } => (State::Rejected, None, false, cause.clone()),
        Fate::Unconfirmed { cause, .. } => (State::Unconfirmed, None, false, cause.clone()),
    };
    let outcome = Outcome {
        state,
        attempts: fate.attempts(),
        last_error: Some(format!("replayed: {detail}")),
        object_id,
        latency_ms: None,
    };
    if !claim
        .settle(row.id, &outcome)
        .await
        .map_err(|e| e.to_string())?
    {
        return Ok(skipped("settled elsewhere while it was replayed"));
    }
    Ok(Replayed {
        id: row.id,
        state,
        object_id,
        adopted,
        detail,
        skipped: None,
    })
}
