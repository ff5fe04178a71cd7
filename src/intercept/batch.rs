//! `POST /batch`: every TestCaseResult entry — a create, an update, or a `Results/add` — is
//! decided on its own. Refused entries are left out of what is forwarded and answered at their
//! position; allowed ones are journaled (all of the batch's rows or none), sent with the rest
//! of the batch, and then held one by one until confirmed (a later attempt of an entry is a
//! single write). The client always gets a `BatchResult` that says each entry's fate — also
//! when Rally's answer to the batch was lost or was a bare 5xx. Other entries pass as they are.

use std::collections::HashMap;
use std::time::Instant;

use bytes::Bytes;
use http::{StatusCode, header};
use serde_json::{Map, Value, json};

use super::classify::{self, Operation};
use super::decide::{Decided, Decision};
use super::envelope::{self, BodyError};
use super::hold::{Grouped, Held, Record};
use super::ledger::{self, Begun};
use super::results_add::{self, Items};
use super::{Interceptor, Outcome, WriteCtx, answer};
use crate::confirm::rally::RallyWrite;
use crate::confirm::{Answer, Kind, RawAnswer, classify_answer};
use crate::error::ProxyError;
use crate::journal::{Pending, Settled, State};
use crate::rally::governor::Priority;
use crate::wsapi::{SERVICE_ROOT, batch_element, batch_envelope};

/// What one forwarded entry holds for confirmation.
enum Hold {
    /// A create or an update.
    One(Held),
    /// The new results of a `Results/add`.
    Items(Items),
}

impl Hold {
    fn writes(&self) -> Vec<&Held> {
        match self {
            Hold::One(h) => vec![h],
            Hold::Items(g) => g.held.iter().map(|(_, h)| h).collect(),
        }
    }
}

/// The batch after every entry was decided.
#[derive(Default)]
struct Plan {
    /// Entries to forward, in order.
    forwarded: Vec<Value>,
    /// Per client entry: its index in `forwarded`, or the refusal answered in its place.
    slots: Vec<Result<usize, String>>,
    /// Result entries allowed: (index in `forwarded`, what to hold).
    held: Vec<(usize, Hold)>,
    filled: Vec<super::enrich::Filled>,
}

/// What came back for the forwarded batch.
enum First {
    NotSent,
    /// The BatchResult's elements, in forwarded order.
    Results(Vec<Value>),
    /// No usable answer: why.
    Failed(String),
}

/// Handles one `/batch` request.
pub async fn handle(
    icpt: &Interceptor,
    w: &WriteCtx<'_>,
    mut parts: http::request::Parts,
    body: Bytes,
) -> Result<Outcome, ProxyError> {
    let map = w.parse(icpt, &body)?;
    let entries = map
        .get("Batch")
        .and_then(Value::as_array)
        .ok_or_else(|| w.bad(BodyError::Batch))?;
    let plan = plan(icpt, w, entries).await;
    let refused = plan.slots.iter().any(Result::is_err);
    let shadow = icpt.shadow();
    let journal = icpt.holding().filter(|_| !shadow && !plan.held.is_empty());
    let mut out = map.clone();
    out.insert("Batch".into(), Value::Array(plan.forwarded.clone()));
    if !refused && journal.is_none() {
        if shadow {
            return Ok(Outcome::forward(parts, body));
        }
        return Ok(Outcome::Forward {
            parts,
            body: answer::to_bytes(&Value::Object(out)),
            headers: answer::decoration(&plan.filled, "allowed"),
        });
    }
    // All of a batch's rows, or none: a batch answered "nothing was forwarded" leaves no row.
    let records: Vec<_> = plan
        .held
        .iter()
        .flat_map(|(_, h)| h.writes())
        .map(|h| h.record(w))
        .collect();
    let mut rows: Vec<Pending> = match journal {
        Some(j) => match icpt.begin(j, w, records).await {
            Ok(Begun::Held(rows)) => rows,
            // Fleet mode: the batch repeats one whose writes are recorded already.
            Ok(Begun::Existing(found)) => return Err(ledger::duplicate_request(w, &found)),
            Err(err) => {
                return Err(ProxyError::Overloaded(format!(
                    "the journal cannot record the batch ({err}); nothing was forwarded"
                )));
            }
        },
        None => Vec::new(),
    };
    let started = Instant::now();
    let template = parts.headers.clone();
    let query = parts.uri.query().map(str::to_string);
    let mut first = First::NotSent;
    if !plan.forwarded.is_empty() {
        parts.headers.remove(header::ACCEPT_ENCODING);
        let sent = icpt
            .lookups
            .rally()
            .send_buffered(
                parts,
                answer::to_bytes(&Value::Object(out)),
                Some(&w.req.conn),
                Priority::Normal,
            )
            .await;
        first = match sent {
            Ok(sent) => {
                w.req.record_upstream(sent.upstream_ms);
                let status = sent.response.status();
                match crate::server::collect_limited(sent.response.into_body(), 64 * 1024 * 1024)
                    .await
                {
                    Ok(bytes) => {
                        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                        match v
                            .get("BatchResult")
                            .and_then(|b| b.get("Results"))
                            .and_then(Value::as_array)
                        {
                            Some(r) => First::Results(r.clone()),
                            None if journal.is_none() || !status.is_server_error() => {
                                // Not a BatchResult and not an outage (a 401 page, a 404):
                                // nothing was written; relay it as it is.
                                for pending in rows {
                                    let _ = pending
                                        .settle(Settled {
                                            state: State::Rejected,
                                            attempts: 1,
                                            cause: Some(format!("Rally answered HTTP {status}")),
                                            object_id: None,
                                            latency_ms: None,
                                        })
                                        .await;
                                }
                                let mut resp = http::Response::new(crate::error::full(bytes));
                                *resp.status_mut() = status;
                                resp.headers_mut().insert(
                                    header::CONTENT_TYPE,
                                    http::HeaderValue::from_static("application/json"),
                                );
                                return Ok(Outcome::Answer(resp));
                            }
                            None => First::Failed(format!("Rally answered HTTP {status}")),
                        }
                    }
                    Err(e) if journal.is_some() => {
                        First::Failed(format!("the batch answer was cut off: {e}"))
                    }
                    Err(e) => return Err(ProxyError::UpstreamBroken(e)),
                }
            }
            Err(e) if journal.is_some() => First::Failed(e.to_string()),
            Err(e) => return Err(e),
        };
    }
    // Each held entry to its fate, concurrently.
    let held_work = plan.held.iter().map(|(i, hold)| {
        let n = hold.writes().len();
        let pendings: Vec<Pending> = rows.drain(..n.min(rows.len())).collect();
        let first_element = match &first {
            First::Results(r) => r.get(*i).cloned(),
            _ => None,
        };
        let cause = match &first {
            First::Failed(e) => e.clone(),
            First::Results(_) => "Rally returned no result for this entry".into(),
            First::NotSent => "no answer".into(),
        };
        confirm_entry(
            icpt,
            w,
            hold,
            first_element,
            cause,
            pendings,
            &template,
            query.as_deref(),
            started,
        )
    });
    let elements = futures_util::future::join_all(held_work).await;
    let mut finals: HashMap<usize, Value> =
        plan.held.iter().map(|(i, _)| *i).zip(elements).collect();
    let results: Vec<Value> = plan
        .slots
        .iter()
        .map(|s| match s {
            Ok(i) => finals.remove(i).unwrap_or_else(|| match &first {
                First::Results(r) => r.get(*i).cloned().unwrap_or_else(|| {
                    batch_element(
                        &["rally-sidecar: Rally returned no result for this entry".into()],
                        &[],
                        None,
                    )
                }),
                First::Failed(e) => batch_element(
                    &[format!(
                        "rally-sidecar: {e}; this entry's outcome is unknown (it is not a TestCaseResult write, so the sidecar did not confirm it)"
                    )],
                    &[],
                    None,
                ),
                First::NotSent => batch_element(&["rally-sidecar: not sent".into()], &[], None),
            }),
            Err(msg) => batch_element(std::slice::from_ref(msg), &[], None),
        })
        .collect();
    let mut resp = answer::json_answer(
        icpt,
        StatusCode::OK,
        answer::to_bytes(&batch_envelope(&[], &[], results)),
        w.req.client_origin.as_deref(),
    );
    let label = if refused {
        "partially-refused"
    } else {
        "allowed"
    };
    answer::decorate(&mut resp, &plan.filled, label);
    Ok(Outcome::Answer(resp))
}

/// Decides every entry; builds what to forward and where each answer comes from.
async fn plan(icpt: &Interceptor, w: &WriteCtx<'_>, entries: &[Value]) -> Plan {
    let mut plan = Plan::default();
    for entry in entries {
        let e = entry.get("Entry").unwrap_or(entry);
        let method = e.get("Method").and_then(Value::as_str).unwrap_or("");
        let raw_path = e.get("Path").and_then(Value::as_str).unwrap_or("");
        let op = classify::classify_entry(method, raw_path);
        let body = e.get("Body").and_then(Value::as_object);
        let decided = match (&op, body) {
            (Operation::CreateResult | Operation::UpdateResult { .. }, Some(b)) => {
                decide_entry(icpt, w, &op, method, raw_path, b).await
            }
            (Operation::AddResults { test_case }, Some(b)) => {
                match b.get("CollectionItems").and_then(Value::as_array) {
                    Some(items) => match results_add::decide_items(icpt, w, test_case, items).await
                    {
                        Ok(g) => match g.refused.clone() {
                            Some((_, message)) => Err(message),
                            None => Ok(Some((
                                {
                                    let mut b = b.clone();
                                    b.insert("CollectionItems".into(), Value::Array(g.out.clone()));
                                    Value::Object(b)
                                },
                                Hold::Items(g),
                            ))),
                        },
                        Err(err) => Err(format!("rally-sidecar: {err}")),
                    },
                    None => Err(format!("rally-sidecar: {}", BodyError::Items)),
                }
            }
            _ => Ok(None),
        };
        match decided {
            Ok(None) => {
                plan.slots.push(Ok(plan.forwarded.len()));
                plan.forwarded.push(entry.clone());
            }
            Ok(Some(_)) if icpt.shadow() => {
                plan.slots.push(Ok(plan.forwarded.len()));
                plan.forwarded.push(entry.clone());
            }
            Err(message) => plan.slots.push(Err(message)),
            Ok(Some((new_body, hold))) => {
                let mut new_entry = entry.clone();
                let target = if new_entry.get("Entry").is_some() {
                    &mut new_entry["Entry"]
                } else {
                    &mut new_entry
                };
                target["Body"] = new_body;
                match &hold {
                    Hold::One(h) => plan.filled.extend(h.filled.iter().cloned()),
                    Hold::Items(g) => plan.filled.extend(g.filled.iter().cloned()),
                }
                plan.held.push((plan.forwarded.len(), hold));
                plan.slots.push(Ok(plan.forwarded.len()));
                plan.forwarded.push(new_entry);
            }
        }
    }
    plan
}

/// One create or update entry, decided: `Ok(Some((body to forward, the write)))`, or the
/// refusal answered in its place.
async fn decide_entry(
    icpt: &Interceptor,
    w: &WriteCtx<'_>,
    op: &Operation,
    method: &str,
    raw_path: &str,
    body: &Map<String, Value>,
) -> Result<Option<(Value, Hold)>, String> {
    let (root, fields) =
        envelope::result_fields(body).map_err(|err| format!("rally-sidecar: {err}"))?;
    let (kind, result_id, tc, enrich_it) = match op {
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
    } = icpt.decide(w, op.label(), &fields, tc, enrich_it).await;
    let path = format!("{SERVICE_ROOT}{}", classify::entry_relative(raw_path));
    match decision {
        Decision::Refuse { code, message } => {
            if !icpt.shadow() {
                let refused = Record {
                    operation: op.label(),
                    result_id,
                    fields: &fields,
                    filled: &[],
                    decision: code,
                    path,
                    formatted_id,
                };
                icpt.record_refusal(w, refused, &message).await;
            }
            Err(message)
        }
        Decision::Forward {
            fields,
            filled,
            decision,
        } => {
            let new_body = json!({ root.clone(): Value::Object(fields.clone()) });
            Ok(Some((
                new_body,
                Hold::One(Held {
                    kind,
                    operation: op.label(),
                    result_id,
                    root,
                    fields,
                    filled,
                    decision,
                    method: http::Method::from_bytes(method.trim().to_ascii_uppercase().as_bytes())
                        .unwrap_or(http::Method::POST),
                    path,
                    formatted_id,
                    workspace,
                }),
            )))
        }
    }
}

/// Drives one held entry to its fate and returns its BatchResult element.
#[allow(clippy::too_many_arguments)]
async fn confirm_entry(
    icpt: &Interceptor,
    w: &WriteCtx<'_>,
    hold: &Hold,
    element: Option<Value>,
    cause: String,
    mut pendings: Vec<Pending>,
    template: &http::HeaderMap,
    query: Option<&str>,
    started: Instant,
) -> Value {
    match hold {
        Hold::Items(group) => {
            let firsts =
                results_add::item_answers(element.as_ref(), group.out.len(), &group.held, &cause);
            let fates = results_add::confirm_items(
                icpt,
                w,
                &group.held,
                firsts,
                pendings,
                template,
                query,
                started,
            )
            .await;
            results_add::compose(icpt, group, fates, element.as_ref())
        }
        Hold::One(held) => {
            let Some(pending) = pendings.pop() else {
                return batch_element(&["rally-sidecar: not journaled".into()], &[], None);
            };
            let first = match element {
                Some(el) => (
                    classify_answer(200, &json!({ "Entry": el }), None),
                    Some(RawAnswer {
                        status: 200,
                        headers: http::HeaderMap::new(),
                        body: answer::to_bytes(&el),
                    }),
                ),
                None => (
                    Answer::Ambiguous {
                        cause,
                        retry_after: None,
                    },
                    None,
                ),
            };
            let mut headers = template.clone();
            headers.remove(header::CONTENT_LENGTH);
            headers.insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            let uri = match query {
                Some(q) => format!("{}?{q}", held.path),
                None => held.path.clone(),
            };
            let Ok(uri) = uri.parse() else {
                drop(pending);
                return batch_element(
                    &["rally-sidecar: this entry's path cannot be re-sent".into()],
                    &[],
                    None,
                );
            };
            let up = Grouped::new(
                first,
                RallyWrite {
                    lookups: icpt.lookups.clone(),
                    cred: w.cred.clone(),
                    conn: Some(w.req.conn),
                    method: held.method.clone(),
                    uri,
                    headers,
                    body: held.body(),
                    workspace: held.workspace.clone(),
                    ctx: Some(w.req),
                },
            );
            let fate = icpt.confirm(&up, held, pending, started).await;
            answer::element(icpt, fate, &held.expected())
        }
    }
}
