//! `POST /testcase/<id>/Results/add`, as a request or as a batch entry: new-object maps in
//! `CollectionItems` become results of that test case. Each new result is decided like a single
//! create (guard, enrichment), journaled, and held until confirmed like one: its first attempt
//! is the `Results/add` itself; a later one is a create of its own (`TestCase` set), made only
//! after a fingerprint search found nothing. A refusal refuses the whole request (nothing is
//! forwarded); refs to existing results pass as they are.

use std::time::Instant;

use bytes::Bytes;
use http::{StatusCode, header};
use serde_json::{Map, Value, json};

use super::decide::{Decided, Decision};
use super::enrich::Filled;
use super::envelope::BodyError;
use super::hold::{Grouped, Held, Record};
use super::ledger::{self, Begun};
use super::{Interceptor, Outcome, WriteCtx, answer};
use crate::confirm::rally::RallyWrite;
use crate::confirm::{Answer, Fate, Kind, RawAnswer};
use crate::error::ProxyError;
use crate::journal::Pending;
use crate::rally::governor::Priority;
use crate::wsapi::{API_MAJOR, API_MINOR, SERVICE_ROOT, headers};

/// The new results of one `Results/add`, decided.
pub struct Items {
    /// The `CollectionItems` to forward: enriched new results, refs as they came.
    pub out: Vec<Value>,
    /// The new results allowed: (position in `out`, the write).
    pub held: Vec<(usize, Held)>,
    /// The first refusal, when a result was refused (then nothing is forwarded).
    pub refused: Option<(&'static str, String)>,
    pub filled: Vec<Filled>,
    pub label: &'static str,
}

/// Decides every new result of a `Results/add` for `test_case`.
pub async fn decide_items(
    icpt: &Interceptor,
    w: &WriteCtx<'_>,
    test_case: &str,
    items: &[Value],
) -> Result<Items, BodyError> {
    let mut group = Items {
        out: Vec::with_capacity(items.len()),
        held: Vec::new(),
        refused: None,
        filled: Vec::new(),
        label: "allowed",
    };
    let tc_ref = json!(format!("/testcase/{test_case}"));
    let create_path = format!("{SERVICE_ROOT}/testcaseresult/create");
    for item in items {
        let Some(fields) = item.as_object() else {
            return Err(BodyError::Items);
        };
        // An existing result's ref is not a new result: pass it as it is.
        if fields.len() == 1 && fields.contains_key("_ref") {
            group.out.push(item.clone());
            continue;
        }
        let Decided {
            decision,
            formatted_id,
            workspace,
        } = icpt
            .decide(w, "results_add", fields, Some(test_case.to_string()), true)
            .await;
        if icpt.shadow() {
            group.out.push(item.clone());
            continue;
        }
        // The result as a create of its own would carry its test case: that is what the
        // journal records and what a later attempt sends.
        let with_tc = |mut f: Map<String, Value>| {
            f.entry("TestCase").or_insert_with(|| tc_ref.clone());
            f
        };
        match decision {
            Decision::Refuse { code, message } => {
                let fields = with_tc(fields.clone());
                let refused = Record {
                    operation: "results_add",
                    result_id: None,
                    fields: &fields,
                    filled: &[],
                    decision: code,
                    path: create_path.clone(),
                    formatted_id,
                };
                icpt.record_refusal(w, refused, &message).await;
                group.refused.get_or_insert((code, message));
                group.out.push(item.clone());
            }
            Decision::Forward {
                fields,
                filled,
                decision,
            } => {
                if decision != "allowed" {
                    group.label = decision;
                }
                group.filled.extend(filled.iter().cloned());
                group.held.push((
                    group.out.len(),
                    Held {
                        kind: Kind::Create,
                        operation: "results_add",
                        result_id: None,
                        root: "TestCaseResult".into(),
                        fields: with_tc(fields.clone()),
                        filled,
                        decision,
                        method: http::Method::PUT,
                        path: create_path.clone(),
                        formatted_id,
                        workspace,
                    },
                ));
                group.out.push(Value::Object(fields));
            }
        }
    }
    Ok(group)
}

/// Handles one `Results/add` request for `test_case`.
pub async fn handle(
    icpt: &Interceptor,
    w: &WriteCtx<'_>,
    test_case: &str,
    mut parts: http::request::Parts,
    body: Bytes,
) -> Result<Outcome, ProxyError> {
    let mut map = w.parse(icpt, &body)?;
    let items = map
        .get("CollectionItems")
        .and_then(Value::as_array)
        .ok_or_else(|| w.bad(BodyError::Items))?;
    let group = decide_items(icpt, w, test_case, items)
        .await
        .map_err(|e| w.bad(e))?;
    if icpt.shadow() {
        return Ok(Outcome::forward(parts, body));
    }
    if let Some((code, message)) = group.refused {
        return Err(ProxyError::Refused {
            status: icpt.cfg.intercept.block_status,
            kind: w.kind,
            code,
            message,
        });
    }
    map.insert("CollectionItems".into(), Value::Array(group.out.clone()));
    let forward = answer::to_bytes(&Value::Object(map));
    let Some(journal) = icpt.holding().filter(|_| !group.held.is_empty()) else {
        return Ok(Outcome::Forward {
            parts,
            body: forward,
            headers: answer::decoration(&group.filled, group.label),
        });
    };
    let started = Instant::now();
    let records = group.held.iter().map(|(_, h)| h.record(w)).collect();
    let pendings = match icpt.begin(journal, w, records).await {
        Ok(Begun::Held(p)) => p,
        // Fleet mode: the request repeats one whose results are recorded already.
        Ok(Begun::Existing(found)) => return Err(ledger::duplicate_request(w, &found)),
        Err(e) => {
            return Err(ProxyError::Overloaded(format!(
                "the journal cannot record the results ({e}); nothing was forwarded"
            )));
        }
    };
    let template = parts.headers.clone();
    let query = parts.uri.query().map(str::to_string);
    parts.headers.remove(header::ACCEPT_ENCODING);
    let sent = icpt
        .lookups
        .rally()
        .send_buffered(parts, forward, Some(&w.req.conn), Priority::Normal)
        .await;
    let (status, answered) = match sent {
        Ok(sent) => {
            w.req.record_upstream(sent.upstream_ms);
            let status = sent.response.status();
            match crate::server::collect_limited(sent.response.into_body(), 64 * 1024 * 1024).await
            {
                Ok(bytes) => (
                    status,
                    Ok(serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null)),
                ),
                Err(e) => (status, Err(format!("the answer was cut off: {e}"))),
            }
        }
        Err(e) => (StatusCode::BAD_GATEWAY, Err(e.to_string())),
    };
    let inner = match &answered {
        Ok(v) if status == StatusCode::OK => v.get("OperationResult"),
        _ => None,
    };
    let cause = match &answered {
        Err(e) => e.clone(),
        Ok(_) => format!("Rally answered HTTP {status} to Results/add"),
    };
    let firsts = item_answers(inner, group.out.len(), &group.held, &cause);
    let fates = confirm_items(
        icpt,
        w,
        &group.held,
        firsts,
        pendings,
        &template,
        query.as_deref(),
        started,
    )
    .await;
    let all_confirmed = fates.iter().all(|f| matches!(f, Fate::Confirmed { .. }));
    let attempts = fates.iter().map(Fate::attempts).max().unwrap_or(0);
    let composed = compose(icpt, &group, fates, inner);
    let status = if all_confirmed {
        StatusCode::OK
    } else {
        icpt.cfg.confirm.unconfirmed_status
    };
    let mut resp = answer::json_answer(
        icpt,
        status,
        answer::to_bytes(&json!({ "OperationResult": composed })),
        w.req.client_origin.as_deref(),
    );
    answer::set(
        &mut resp,
        headers::CONFIRMED,
        if all_confirmed { "true" } else { "false" },
    );
    answer::set(&mut resp, headers::ATTEMPTS, &attempts.to_string());
    answer::decorate(&mut resp, &group.filled, group.label);
    Ok(Outcome::Answer(resp))
}

/// Each held item's first answer, from its group's `OperationResult` (or batch element). Rally
/// lists the objects it created in `Results`, in order, and does not say which item an error
/// is about: unless every item came back, no item's outcome is known, and each is looked for
/// by its fingerprint before anything is written again.
pub fn item_answers(
    inner: Option<&Value>,
    sent: usize,
    held: &[(usize, Held)],
    cause: &str,
) -> Vec<(Answer, Option<RawAnswer>)> {
    let errors_empty = inner
        .and_then(|i| i.get("Errors"))
        .and_then(Value::as_array)
        .is_some_and(|e| e.is_empty());
    let results = inner
        .and_then(|i| i.get("Results"))
        .and_then(Value::as_array)
        .filter(|r| errors_empty && r.len() == sent);
    held.iter()
        .map(|(pos, _)| {
            let object = results.and_then(|r| r.get(*pos));
            let oid = object.and_then(|o| o.get("ObjectID")).and_then(|v| {
                v.as_i64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            });
            match (object, oid) {
                (Some(o), Some(object_id)) => (
                    Answer::Accepted { object_id },
                    Some(RawAnswer {
                        status: 200,
                        headers: http::HeaderMap::new(),
                        body: answer::to_bytes(&json!({"CreateResult": {
                            "_rallyAPIMajor": API_MAJOR, "_rallyAPIMinor": API_MINOR,
                            "Errors": [], "Warnings": [], "Object": o}})),
                    }),
                ),
                _ => (
                    Answer::Ambiguous {
                        cause: if inner.is_some() {
                            "Rally's Results/add answer does not say whether this result was stored"
                                .into()
                        } else {
                            cause.to_string()
                        },
                        retry_after: None,
                    },
                    None,
                ),
            }
        })
        .collect()
}

/// Drives every held item to its fate (concurrently); a later attempt is a create of its own.
#[allow(clippy::too_many_arguments)]
pub async fn confirm_items(
    icpt: &Interceptor,
    w: &WriteCtx<'_>,
    held: &[(usize, Held)],
    firsts: Vec<(Answer, Option<RawAnswer>)>,
    pendings: Vec<Pending>,
    template: &http::HeaderMap,
    query: Option<&str>,
    started: Instant,
) -> Vec<Fate> {
    let mut headers = template.clone();
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    let uri: http::Uri = match query {
        Some(q) => format!("{SERVICE_ROOT}/testcaseresult/create?{q}"),
        None => format!("{SERVICE_ROOT}/testcaseresult/create"),
    }
    .parse()
    .unwrap_or_else(|_| http::Uri::from_static("/slm/webservice/v2.0/testcaseresult/create"));
    let work = held
        .iter()
        .zip(firsts)
        .zip(pendings)
        .map(|(((_, h), first), pending)| {
            let up = Grouped::new(
                first,
                RallyWrite {
                    lookups: icpt.lookups.clone(),
                    cred: w.cred.clone(),
                    conn: Some(w.req.conn),
                    method: http::Method::PUT,
                    uri: uri.clone(),
                    headers: headers.clone(),
                    body: h.body(),
                    workspace: h.workspace.clone(),
                    ctx: Some(w.req),
                },
            );
            async move { icpt.confirm(&up, h, pending, started).await }
        });
    futures_util::future::join_all(work).await
}

/// The `OperationResult` of a `Results/add` whose results were held: the objects stored, in
/// order, and an error for each result that was not confirmed.
pub fn compose(
    icpt: &Interceptor,
    group: &Items,
    fates: Vec<Fate>,
    rally: Option<&Value>,
) -> Value {
    let rally_results = rally
        .and_then(|i| i.get("Results"))
        .and_then(Value::as_array)
        .filter(|r| r.len() == group.out.len());
    let mut warnings: Vec<Value> = rally
        .and_then(|i| i.get("Warnings"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut by_pos: std::collections::HashMap<usize, (Fate, &Held)> = group
        .held
        .iter()
        .zip(fates)
        .map(|((pos, h), f)| (*pos, (f, h)))
        .collect();
    let mut results = Vec::new();
    let mut errors = Vec::new();
    for pos in 0..group.out.len() {
        match by_pos.remove(&pos) {
            Some((fate, held)) => {
                let e = answer::element(icpt, fate, &held.expected());
                match e.get("Object") {
                    Some(o) if e["Errors"].as_array().is_some_and(|a| a.is_empty()) => {
                        results.push(o.clone())
                    }
                    _ => errors.extend(e["Errors"].as_array().cloned().unwrap_or_default()),
                }
                warnings.extend(e["Warnings"].as_array().cloned().unwrap_or_default());
            }
            None => {
                if let Some(o) = rally_results.and_then(|r| r.get(pos)) {
                    results.push(o.clone());
                }
            }
        }
    }
    json!({"_rallyAPIMajor": API_MAJOR, "_rallyAPIMinor": API_MINOR,
           "Errors": errors, "Warnings": warnings, "Results": results})
}
