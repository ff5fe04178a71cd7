//! A single TestCaseResult create or update: the body parsed, the result decided (guard,
//! enrichment), then refused with a Rally-shaped answer, or sent — held until confirmed when
//! the journal is on, forwarded as any request otherwise. In shadow mode the original goes out.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::Response;

use super::classify::Operation;
use super::decide::{Decided, Decision};
use super::hold::{Held, Record};
use super::ledger::Begun;
use super::{Interceptor, Outcome, WriteCtx, answer, envelope};
use crate::config::Hold;
use crate::confirm::rally::RallyWrite;
use crate::confirm::{Fate, Kind};
use crate::error::ProxyError;
use crate::server::Body;
use crate::wsapi::headers;

/// Handles `POST|PUT /testcaseresult/create` and `POST|PUT /testcaseresult/<id>`.
pub async fn handle(
    icpt: &Arc<Interceptor>,
    w: &WriteCtx<'_>,
    op: &Operation,
    parts: http::request::Parts,
    body: Bytes,
) -> Result<Outcome, ProxyError> {
    let map = w.parse(icpt, &body)?;
    let (root, fields) = envelope::result_fields(&map).map_err(|e| w.bad(e))?;
    let (kind, result_id, test_case, enrich_it) = match op {
        Operation::UpdateResult { id } => (
            Kind::Update,
            Some(id.clone()),
            icpt.update_target(w, id, &fields).await,
            icpt.cfg.intercept.enrich_updates,
        ),
        _ => (Kind::Create, None, envelope::test_case_id(&fields), true),
    };
    let Decided {
        decision,
        formatted_id,
        workspace,
    } = icpt
        .decide(w, op.label(), &fields, test_case, enrich_it)
        .await;
    let path = crate::telemetry::redact::path_and_query(
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/"),
    )
    .into_owned();
    if icpt.shadow() {
        return Ok(Outcome::Forward {
            parts,
            body,
            headers: vec![(headers::DECISION, decision.shadow_label())],
        });
    }
    let (fields, filled, decision) = match decision {
        Decision::Refuse { code, message } => {
            let refused = Record {
                operation: op.label(),
                result_id: result_id.clone(),
                fields: &fields,
                filled: &[],
                decision: code,
                path,
                formatted_id,
            };
            icpt.record_refusal(w, refused, &message).await;
            return Err(ProxyError::Refused {
                status: icpt.cfg.intercept.block_status,
                kind: w.kind,
                code,
                message,
            });
        }
        Decision::Forward {
            fields,
            filled,
            decision,
        } => (fields, filled, decision),
    };
    let held = Held {
        kind,
        operation: op.label(),
        result_id,
        root,
        fields,
        filled,
        decision,
        method: parts.method.clone(),
        path,
        formatted_id,
        workspace,
    };
    if icpt.holding().is_none() {
        let headers = answer::decoration(&held.filled, held.decision);
        return Ok(Outcome::Forward {
            parts,
            body: held.body(),
            headers,
        });
    }
    Ok(Outcome::Answer(hold(icpt, w, held, parts).await?))
}

/// Records the write, drives it to its fate, settles the journal and answers.
async fn hold(
    icpt: &Arc<Interceptor>,
    w: &WriteCtx<'_>,
    held: Held,
    parts: http::request::Parts,
) -> Result<Response<Body>, ProxyError> {
    let started = Instant::now();
    let Some(journal) = icpt.holding() else {
        return Err(ProxyError::Overloaded("the journal is not open".into()));
    };
    let begun = icpt.begin(journal, w, vec![held.record(w)]).await;
    let pending = match begun {
        Ok(Begun::Held(mut p)) if p.len() == 1 => p.remove(0),
        // Fleet mode: a client's retry of a write already recorded is answered from it.
        Ok(Begun::Existing(mut rows)) if !rows.is_empty() => {
            return Ok(icpt.answer_existing(w, &held, rows.remove(0)).await);
        }
        Ok(_) => {
            return Err(ProxyError::Overloaded(
                "the journal recorded no row for the write; nothing was forwarded".into(),
            ));
        }
        Err(e) => {
            return Err(ProxyError::Overloaded(format!(
                "the journal cannot record the write ({e}); nothing was forwarded"
            )));
        }
    };
    let id = pending.id();
    if icpt.cfg.confirm.hold == Hold::Ambiguous && held.kind == Kind::Create {
        return hold_ambiguous(icpt, w, held, parts, pending, started).await;
    }
    let up = RallyWrite {
        lookups: icpt.lookups.clone(),
        cred: w.cred.clone(),
        conn: Some(w.req.conn),
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        headers: parts.headers.clone(),
        body: held.body(),
        workspace: held.workspace.clone(),
        ctx: Some(w.req),
    };
    let fate = icpt.confirm(&up, &held, pending, started).await;
    let expected = held.expected();
    let confirmed = matches!(fate, Fate::Confirmed { .. });
    let attempts = fate.attempts();
    let fate = match fate {
        Fate::Confirmed {
            object_id,
            attempts,
            adopted,
            answer: Some(mut a),
        } if held.kind == Kind::Create && icpt.cfg.confirm.check_rollup => {
            if let Some(warning) = icpt.rollup_warning(w, &expected, object_id).await {
                a.body = answer::with_warning(&a.body, &warning);
            }
            Fate::Confirmed {
                object_id,
                attempts,
                adopted,
                answer: Some(a),
            }
        }
        fate => fate,
    };
    let mut resp = answer::single(
        icpt,
        w.kind,
        fate,
        &expected,
        w.req.client_origin.as_deref(),
    );
    answer::set(
        &mut resp,
        headers::CONFIRMED,
        if confirmed { "true" } else { "false" },
    );
    answer::set(&mut resp, headers::ATTEMPTS, &attempts.to_string());
    answer::set(&mut resp, headers::JOURNAL_ID, &id.to_string());
    answer::decorate(&mut resp, &held.filled, held.decision);
    Ok(resp)
}

/// `confirm.hold = "ambiguous"`: the write goes to its fate in the background; the client is
/// answered at Rally's first clean acknowledgement, or with the fate when there is none (an
/// ambiguous outcome holds it as in `readback` mode).
async fn hold_ambiguous(
    icpt: &Arc<Interceptor>,
    w: &WriteCtx<'_>,
    held: Held,
    parts: http::request::Parts,
    pending: crate::journal::Pending,
    started: Instant,
) -> Result<Response<Body>, ProxyError> {
    let id = pending.id();
    let (filled, decision, expected) = (held.filled.clone(), held.decision, held.expected());
    let up = RallyWrite {
        lookups: icpt.lookups.clone(),
        cred: w.cred.clone(),
        conn: Some(w.req.conn),
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        headers: parts.headers.clone(),
        body: held.body(),
        workspace: held.workspace.clone(),
        ctx: None,
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let bg = icpt.clone();
    let task = icpt.background.spawn(async move {
        let fate = bg.confirm_telling(&up, &held, pending, started, Some(tx)).await;
        if !matches!(fate, Fate::Confirmed { .. }) {
            tracing::warn!(
                journal_id = id,
                "a write answered at Rally's acknowledgement (confirm.hold = ambiguous) was not read back; it is journaled unconfirmed"
            );
        }
        fate
    });
    let origin = w.req.client_origin.as_deref();
    let (mut resp, confirmed, attempts) = match rx.await {
        Ok(raw) => (answer::relay(icpt, raw, origin), "pending", 1),
        Err(_) => {
            let fate = task.await.map_err(|e| {
                ProxyError::Overloaded(format!("the held write's task failed: {e}"))
            })?;
            let confirmed = if matches!(fate, Fate::Confirmed { .. }) {
                "true"
            } else {
                "false"
            };
            let attempts = fate.attempts();
            (
                answer::single(icpt, w.kind, fate, &expected, origin),
                confirmed,
                attempts,
            )
        }
    };
    answer::set(&mut resp, headers::CONFIRMED, confirmed);
    answer::set(&mut resp, headers::ATTEMPTS, &attempts.to_string());
    answer::set(&mut resp, headers::JOURNAL_ID, &id.to_string());
    answer::decorate(&mut resp, &filled, decision);
    Ok(resp)
}

impl Interceptor {
    /// `confirm.check_rollup`: does the TestCase's roll-up reflect the confirmed result?
    async fn rollup_warning(
        &self,
        w: &WriteCtx<'_>,
        expected: &crate::confirm::Expected,
        object_id: i64,
    ) -> Option<String> {
        let tc = expected.test_case.as_deref()?;
        let (_, json) = self
            .lookups
            .get_json(
                w.cred,
                &format!("testcase/{tc}?fetch=FormattedID,LastVerdict,LastBuild,LastResult"),
            )
            .await
            .ok()?;
        let t = json.get("TestCase")?;
        let last = t
            .get("LastResult")
            .and_then(crate::wsapi::parse_ref)
            .map(|(_, id)| id);
        let verdict = t
            .get("LastVerdict")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("");
        let build = t
            .get("LastBuild")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("");
        if last.as_deref() == Some(object_id.to_string().as_str())
            || (Some(verdict) == expected.verdict.as_deref()
                && Some(build) == expected.build.as_deref())
        {
            return None;
        }
        let name = t
            .get("FormattedID")
            .and_then(serde_json::Value::as_str)
            .unwrap_or(tc);
        Some(format!(
            "rally-sidecar: TestCase {name} does not reflect this result yet (LastVerdict = {verdict:?}, LastBuild = {build:?}); \
             Rally's roll-ups follow the result with the latest Date"
        ))
    }
}
