//! `POST /batch`: each TestCaseResult entry is decided on its own. Refused entries are left out
//! of what is forwarded and answered at their position in the BatchResult; allowed ones are
//! journaled, sent with the rest of the batch, and then held one by one until confirmed (a
//! later attempt of an entry is a single write). Other entries pass as they are.

use std::collections::HashMap;
use std::time::Instant;

use bytes::Bytes;
use http::StatusCode;
use http::header;
use serde_json::{Map, Value, json};

use super::classify::{self, Operation};
use super::decide::Decision;
use super::envelope::{self, BodyError};
use super::hold::{Grouped, Held};
use super::{Interceptor, Outcome, WriteCtx, answer};
use crate::confirm::rally::RallyWrite;
use crate::confirm::{Answer, Kind, RawAnswer, classify_answer};
use crate::error::ProxyError;
use crate::journal::{Pending, State};
use crate::rally::governor::Priority;
use crate::wsapi::SERVICE_ROOT;

/// The batch after every entry was decided.
#[derive(Default)]
struct Plan {
    /// Entries to forward, in order.
    forwarded: Vec<Value>,
    /// Per client entry: its index in `forwarded`, or the refusal answered in its place.
    slots: Vec<Result<usize, String>>,
    /// Result entries allowed: (index in `forwarded`, the write).
    held: Vec<(usize, Held)>,
    filled: Vec<super::enrich::Filled>,
}

/// Handles one `/batch` request.
pub async fn handle(
    icpt: &Interceptor,
    w: &WriteCtx<'_>,
    mut parts: http::request::Parts,
    body: Bytes,
) -> Result<Outcome, ProxyError> {
    let map = envelope::parse(&body).map_err(|e| w.bad(e))?;
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
    // Record the result entries before anything is sent.
    // All of a batch's rows, or none: a batch answered "nothing was forwarded" leaves no row.
    let rows: Vec<Pending> = match journal {
        Some(j) => j
            .begin_all(plan.held.iter().map(|(_, h)| h.record(w)).collect())
            .await
            .map_err(|err| {
                ProxyError::Overloaded(format!(
                    "the journal cannot record the batch ({err}); nothing was forwarded"
                ))
            })?,
        None => Vec::new(),
    };
    let template = parts.headers.clone();
    let query = parts.uri.query().map(str::to_string);
    let mut first = First::NotSent;
    let mut status = StatusCode::OK;
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
        match sent {
            Ok(sent) => {
                w.req.record_upstream(sent.upstream_ms);
                status = sent.response.status();
                let bytes =
                    crate::server::collect_limited(sent.response.into_body(), 64 * 1024 * 1024)
                        .await
                        .map_err(|e| {
                            ProxyError::UpstreamBroken(format!("reading the batch answer: {e}"))
                        });
                match bytes {
                    Ok(bytes) => {
                        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                        match v
                            .get("BatchResult")
                            .and_then(|b| b.get("Results"))
                            .and_then(Value::as_array)
                        {
                            Some(r) => first = First::Results(r.clone()),
                            None if journal.is_none() || !status.is_server_error() => {
                                // Not a BatchResult (an error page, a 401): relay it as it is.
                                for pending in rows {
                                    let _ = pending
                                        .settle(crate::journal::Settled {
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
                            None => first = First::Failed(format!("Rally answered HTTP {status}")),
                        }
                    }
                    Err(e) if journal.is_some() => first = First::Failed(e.to_string()),
                    Err(e) => return Err(e),
                }
            }
            Err(e) if journal.is_some() => {
                status = StatusCode::OK;
                first = First::Failed(e.to_string());
            }
            Err(e) => return Err(e),
        }
    }
    // Each result entry to its fate, concurrently.
    let mut finals: HashMap<usize, Value> = HashMap::new();
    let held_entries = plan.held.iter().zip(rows);
    let fates = futures_util::future::join_all(held_entries.map(|((i, held), pending)| {
        confirm_entry(
            icpt,
            w,
            held,
            first.answer_for(*i),
            &template,
            query.as_deref(),
            pending,
        )
    }))
    .await;
    for ((i, _), element) in plan.held.iter().zip(fates) {
        finals.insert(*i, element);
    }
    let upstream = match &first {
        First::Results(r) => r.clone(),
        _ => Vec::new(),
    };
    let failure = match &first {
        First::Failed(e) => format!(" ({e})"),
        _ => String::new(),
    };
    let results: Vec<Value> = plan
        .slots
        .iter()
        .map(|s| match s {
            Ok(i) => finals.remove(i).or_else(|| upstream.get(*i).cloned()).unwrap_or_else(|| {
                json!({"Errors": [format!("rally-sidecar: Rally returned no result for this entry{failure}")], "Warnings": []})
            }),
            Err(msg) => json!({"Errors": [msg], "Warnings": []}),
        })
        .collect();
    let answer = json!({"BatchResult": {"_rallyAPIMajor": "2", "_rallyAPIMinor": "0", "Errors": [], "Warnings": [], "Results": results}});
    let mut resp = answer::json_answer(
        icpt,
        status,
        answer::to_bytes(&answer),
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

/// What came back for the forwarded batch.
enum First {
    NotSent,
    /// The BatchResult's elements, in forwarded order.
    Results(Vec<Value>),
    /// No usable answer: why.
    Failed(String),
}

impl First {
    /// The first answer of the forwarded entry at `i`.
    fn answer_for(&self, i: usize) -> (Answer, Option<RawAnswer>) {
        let ambiguous = |cause: String| {
            (
                Answer::Ambiguous {
                    cause,
                    retry_after: None,
                },
                None,
            )
        };
        match self {
            First::Results(r) => match r.get(i) {
                Some(element) => (
                    classify_answer(200, &json!({"Entry": element}), None),
                    Some(RawAnswer {
                        status: 200,
                        headers: http::HeaderMap::new(),
                        body: answer::to_bytes(element),
                    }),
                ),
                None => ambiguous("Rally returned no result for this entry".into()),
            },
            First::Failed(e) => ambiguous(e.clone()),
            First::NotSent => ambiguous("no answer".into()),
        }
    }
}

/// Decides every entry; builds what to forward and where each answer comes from.
async fn plan(icpt: &Interceptor, w: &WriteCtx<'_>, entries: &[Value]) -> Plan {
    let mut plan = Plan::default();
    for entry in entries {
        let e = entry.get("Entry").unwrap_or(entry);
        let method = e.get("Method").and_then(Value::as_str).unwrap_or("");
        let raw_path = e.get("Path").and_then(Value::as_str).unwrap_or("");
        let op = classify::classify_entry(method, raw_path);
        let decided = match (&op, e.get("Body").and_then(Value::as_object)) {
            (Operation::CreateResult | Operation::UpdateResult { .. }, Some(b)) => {
                Some(decide_entry(icpt, w, &op, b).await)
            }
            _ => None,
        };
        match decided {
            None => {
                plan.slots.push(Ok(plan.forwarded.len()));
                plan.forwarded.push(entry.clone());
            }
            Some(_) if icpt.shadow() => {
                plan.slots.push(Ok(plan.forwarded.len()));
                plan.forwarded.push(entry.clone());
            }
            Some((_, Decision::Refuse { message, .. })) => plan.slots.push(Err(message)),
            Some((
                root,
                Decision::Forward {
                    fields,
                    filled,
                    decision: _,
                },
            )) => {
                let mut new_entry = entry.clone();
                let target = if new_entry.get("Entry").is_some() {
                    &mut new_entry["Entry"]
                } else {
                    &mut new_entry
                };
                target["Body"] = json!({ root.clone(): Value::Object(fields.clone()) });
                plan.filled.extend(filled.iter().cloned());
                plan.held.push((
                    plan.forwarded.len(),
                    entry_write(&op, method, raw_path, root, fields, filled),
                ));
                plan.slots.push(Ok(plan.forwarded.len()));
                plan.forwarded.push(new_entry);
            }
        }
    }
    plan
}

/// One result entry's decision, with the body's root key.
async fn decide_entry(
    icpt: &Interceptor,
    w: &WriteCtx<'_>,
    op: &Operation,
    body: &Map<String, Value>,
) -> (String, Decision) {
    match envelope::result_fields(body) {
        Ok((root, fields)) => {
            let (tc, enrich_it) = match op {
                Operation::UpdateResult { id } => (
                    icpt.update_target(w, id, &fields).await,
                    icpt.cfg.intercept.enrich_updates,
                ),
                _ => (envelope::test_case_id(&fields), true),
            };
            let d = icpt.decide(w, op.label(), &fields, tc, enrich_it).await;
            (root, d)
        }
        Err(err) => (
            String::new(),
            Decision::Refuse {
                code: "bad-body",
                message: format!("rally-sidecar: {err}"),
            },
        ),
    }
}

/// An allowed result entry as a write of its own (its path under the service root).
fn entry_write(
    op: &Operation,
    method: &str,
    raw_path: &str,
    root: String,
    fields: Map<String, Value>,
    filled: Vec<super::enrich::Filled>,
) -> Held {
    let rel = raw_path.split('?').next().unwrap_or(raw_path);
    let rel = match rel.find(SERVICE_ROOT) {
        Some(i) => &rel[i + SERVICE_ROOT.len()..],
        None => rel,
    };
    let method = http::Method::from_bytes(method.trim().to_ascii_uppercase().as_bytes())
        .unwrap_or(http::Method::POST);
    let (kind, result_id) = match op {
        Operation::UpdateResult { id } => (Kind::Update, Some(id.clone())),
        _ => (Kind::Create, None),
    };
    Held {
        kind,
        operation: op.label(),
        result_id,
        root,
        fields,
        filled,
        decision: "allowed",
        method,
        path: format!("{SERVICE_ROOT}/{}", rel.trim_start_matches('/')),
    }
}

/// Drives one batch entry to its fate and returns its BatchResult element.
async fn confirm_entry(
    icpt: &Interceptor,
    w: &WriteCtx<'_>,
    held: &Held,
    first: (Answer, Option<RawAnswer>),
    template: &http::HeaderMap,
    query: Option<&str>,
    pending: Pending,
) -> Value {
    let started = Instant::now();
    let method = held.method.clone();
    let uri = match query {
        Some(q) => format!("{}?{q}", held.path),
        None => held.path.clone(),
    };
    let mut headers = template.clone();
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    let Ok(uri) = uri.parse() else {
        drop(pending);
        return json!({"Errors": ["rally-sidecar: this entry's path cannot be re-sent"], "Warnings": []});
    };
    let up = Grouped::new(
        first,
        RallyWrite {
            lookups: &icpt.lookups,
            cred: w.cred,
            method,
            uri,
            headers,
            body: held.body(),
            ctx: Some(w.req),
        },
    );
    let fate = icpt.confirm(&up, held, pending, started).await;
    answer::element(icpt, fate, &held.expected())
}
