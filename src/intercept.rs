//! TestCaseResult interception: the only place the sidecar changes traffic. A write classified
//! by [`classify`] is buffered (up to `intercept.max_body`), parsed, checked by the guard
//! ([`guard`], with a lookup of the target TestCase made with the caller's credential),
//! enriched ([`enrich`]: Build, Date, Tester where missing), and forwarded; or refused with a
//! Rally-shaped answer. In shadow mode the decisions are only logged and counted, and the
//! original request is forwarded unchanged.
//!
//! One result goes through [`Interceptor::decide`]; creates, updates, batch entries and
//! `Results/add` items all use it, so they behave the same.

pub mod classify;
pub mod context;
pub mod enrich;
pub mod envelope;
pub mod guard;
pub mod lookup;

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::{Map, Value, json};

use crate::config::{Config, Mode};
use crate::credential::{Credential, Fingerprinter};
use crate::error::{ProxyError, wsapi_response};
use crate::journal::Journal;
use crate::metrics::Metrics;
use crate::proxy::Proxy;
use crate::server::{Body, ConnInfo};
use crate::wsapi::Envelope;
use classify::Operation;
use context::BuildContext;
use enrich::{Enriched, Filled, Sources};
use guard::Verdict;
use lookup::Lookups;
use tokio_util::sync::CancellationToken;

/// Header listing what the sidecar filled.
pub const FILLED_HEADER: &str = "x-rally-sidecar-filled";
/// Header naming the sidecar's decision on the write.
pub const DECISION_HEADER: &str = "x-rally-sidecar-decision";
/// Request header carrying a build for this write.
pub const BUILD_HEADER: &str = "x-rally-build";

/// State of the interception layer.
pub struct Interceptor {
    cfg: Arc<Config>,
    pub lookups: Lookups,
    pub context: Arc<BuildContext>,
    fingerprints: Arc<Fingerprinter>,
    metrics: Arc<Metrics>,
    /// Where writes are recorded (absent only when confirmation is off).
    pub journal: Option<Journal>,
    /// Cancelled shortly before the shutdown deadline: held writes answer at once.
    pub give_up: CancellationToken,
}

/// What happens to one result.
#[derive(Debug, Clone)]
enum Decision {
    Forward {
        fields: Map<String, Value>,
        filled: Vec<Filled>,
        decision: &'static str,
    },
    Refuse {
        code: &'static str,
        message: String,
    },
}

/// What one intercepted request brings to every result it carries.
struct Write<'a> {
    cred: &'a Credential,
    request_id: &'a str,
    scope: Scope,
    header_build: Option<String>,
    received_at: &'a str,
}

/// What the request said about its scope (`workspace=`/`project=` query parameters).
#[derive(Debug, Default, Clone)]
struct Scope {
    workspace: Option<String>,
    project: Option<String>,
}

fn query_scope(query: Option<&str>) -> Scope {
    let mut s = Scope::default();
    for pair in query.unwrap_or("").split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_encoding::percent_decode_str(v).decode_utf8_lossy();
        match k.to_ascii_lowercase().as_str() {
            "workspace" => s.workspace = context::scope_id(&v),
            "project" if v != "null" => s.project = context::scope_id(&v),
            _ => {}
        }
    }
    s
}

fn ref_id(v: Option<&Value>) -> Option<String> {
    let r = v?;
    let text = r
        .get("_ref")
        .and_then(Value::as_str)
        .or_else(|| r.as_str())?;
    context::scope_id(text)
}

impl Interceptor {
    pub fn new(
        cfg: Arc<Config>,
        lookups: Lookups,
        context: Arc<BuildContext>,
        metrics: Arc<Metrics>,
        fingerprints: Arc<Fingerprinter>,
        journal: Option<Journal>,
    ) -> Interceptor {
        Interceptor {
            cfg,
            lookups,
            context,
            fingerprints,
            metrics,
            journal,
            give_up: CancellationToken::new(),
        }
    }

    /// The fingerprint of a request's credential, if it carries one.
    pub fn credential(&self, headers: &HeaderMap) -> Option<Credential> {
        self.fingerprints.of(headers)
    }

    /// Decides one result's fate: guard, then enrichment.
    async fn decide(
        &self,
        w: &Write<'_>,
        fields: &Map<String, Value>,
        test_case: Option<String>,
        enrich_it: bool,
    ) -> Decision {
        let (cred, header_build, received_at) = (w.cred, w.header_build.as_deref(), w.received_at);
        let mut scope = w.scope.clone();
        let mut decision = "allowed";
        if let (true, Some(id)) = (self.cfg.guard.enabled, test_case.as_deref()) {
            let lookup = self.lookups.test_case(cred, id).await;
            if let guard::Lookup::Found(tc) = &lookup {
                scope.project = ref_id(tc.get("Project")).or(scope.project);
                scope.workspace = scope.workspace.or_else(|| ref_id(tc.get("Workspace")));
            }
            match guard::decide(id, &lookup, &self.cfg.guard) {
                Verdict::Allow => {}
                Verdict::AllowUnchecked(why) => {
                    tracing::warn!(test_case = id, error = %why, "guard lookup failed; forwarding unchecked (guard.on_lookup_error = forward)");
                    decision = "allowed-unchecked";
                }
                Verdict::Block(b) => {
                    return Decision::Refuse {
                        code: b.code(),
                        message: b.message(),
                    };
                }
            }
        }
        if !enrich_it {
            return Decision::Forward {
                fields: fields.clone(),
                filled: vec![],
                decision,
            };
        }
        let (project, workspace, global) = self
            .context
            .lookup(scope.workspace.as_deref(), scope.project.as_deref());
        let mut sources = Sources {
            header_build: header_build.map(str::to_string),
            context_project: project,
            context_workspace: workspace,
            context_global: global,
            config_build: self.cfg.context.build.clone(),
            ci_build: self.cfg.context.build_from_env.clone(),
            received_at: received_at.to_string(),
            configured_tester: self.cfg.context.tester.clone(),
            owner: None,
        };
        if sources.configured_tester.is_none() && envelope::missing(fields.get("Tester")) {
            match self.lookups.owner(cred).await {
                Ok(owner) => sources.owner = Some(owner),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot read the credential's owner; Tester left empty")
                }
            }
        }
        match enrich::enrich(fields, &sources) {
            Enriched::Ready(fields, filled) => {
                for f in &filled {
                    tracing::debug!(field = f.field, source = f.source.label(), value = %f.value, "filled");
                }
                Decision::Forward {
                    fields,
                    filled,
                    decision,
                }
            }
            Enriched::NoBuild => Decision::Refuse {
                code: "refused-no-build",
                message: enrich::no_build_message(&self.cfg.context.build_env),
            },
        }
    }

    /// Drives one held write to its fate (confirm.rs), answering at once when shutdown's
    /// deadline nears.
    async fn drive<U: crate::confirm::Upstream>(
        &self,
        up: &U,
        op: &Operation,
        expected: &crate::confirm::Expected,
    ) -> crate::confirm::Fate {
        use crate::confirm::Kind;
        let kind = if matches!(op, Operation::UpdateResult { .. }) {
            Kind::Update
        } else {
            Kind::Create
        };
        let give_up = self.give_up.clone();
        crate::confirm::confirm(
            up,
            kind,
            false,
            expected,
            &self.cfg.confirm.policy,
            rand::random::<f64>,
            async move { give_up.cancelled().await },
        )
        .await
    }

    fn count(&self, op: &Operation, decision: &Decision) {
        use crate::metrics::{FillLabels, OpLabels, ReasonLabels, ShadowLabels};
        self.metrics
            .intercepted
            .get_or_create(&OpLabels {
                operation: op.label().into(),
            })
            .inc();
        let shadow = self.cfg.intercept.mode == Mode::Shadow;
        match decision {
            Decision::Forward { filled, .. } => {
                for f in filled {
                    let labels = FillLabels {
                        field: f.field.into(),
                        source: f.source.label().into(),
                    };
                    if shadow {
                        self.metrics
                            .shadow
                            .get_or_create(&ShadowLabels {
                                decision: format!("would-fill-{}", f.field),
                            })
                            .inc();
                    } else {
                        self.metrics.filled.get_or_create(&labels).inc();
                    }
                }
            }
            Decision::Refuse { code, message } => {
                if shadow {
                    tracing::info!(decision = code, message = %message, "shadow mode: would refuse this write");
                    self.metrics
                        .shadow
                        .get_or_create(&ShadowLabels {
                            decision: format!("would-{code}"),
                        })
                        .inc();
                } else {
                    tracing::info!(decision = code, message = %message, "write refused");
                    self.metrics
                        .blocked
                        .get_or_create(&ReasonLabels {
                            reason: (*code).into(),
                        })
                        .inc();
                }
            }
        }
    }
}

/// Reads the body up to the limit.
async fn read_body(incoming: Incoming, max: usize) -> Result<Bytes, ProxyError> {
    match Limited::new(incoming, max).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ProxyError::BodyTooLarge(max))
        }
        Err(e) => Err(ProxyError::BadRequest(format!(
            "reading the request body: {e}"
        ))),
    }
}

/// A form body saying `_method=GET` (the .NET toolkit's queries) is a read, not a write.
fn is_form_query(headers: &HeaderMap, body: &[u8]) -> bool {
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
    form && String::from_utf8_lossy(body).split('&').any(|p| {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        k == "_method" && v.eq_ignore_ascii_case("GET")
    })
}

fn full(bytes: Bytes) -> Body {
    Full::new(bytes)
        .map_err(crate::server::box_never)
        .boxed_unsync()
}

fn set(resp: &mut Response<Body>, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().insert(name, v);
    }
}

fn to_bytes(v: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

/// Handles an intercepted request end to end. Returns the answer and the upstream latency.
pub async fn handle(
    proxy: &Proxy,
    icpt: &Interceptor,
    op: Operation,
    req: Request<Incoming>,
    conn: ConnInfo,
    received_at: String,
    request_id: String,
) -> Result<(Response<Body>, Option<f64>), ProxyError> {
    let kind = match op {
        Operation::CreateResult => Envelope::Create,
        Operation::Batch => Envelope::Batch,
        _ => Envelope::Operation,
    };
    let (mut parts, incoming) = req.into_parts();
    let body = read_body(incoming, icpt.cfg.intercept.max_body).await.map_err(|e| match e {
        ProxyError::BodyTooLarge(n) => ProxyError::Refused {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            kind,
            code: "body-too-large",
            message: format!("rally-sidecar: the request body is larger than intercept.max_body ({n} bytes); nothing was forwarded"),
        },
        other => other,
    })?;
    let client_origin = crate::proxy::client_origin_of(&parts.headers, &parts.uri, conn.tls);
    let Some(cred) = icpt
        .credential(&parts.headers)
        .filter(|_| !is_form_query(&parts.headers, &body))
    else {
        // Anonymous (the Node toolkit's first, challenge-seeking attempt) or a form query:
        // forward as it came.
        return proxy
            .forward_buffered(parts, body, client_origin.as_deref(), &conn)
            .await;
    };
    let header_build = parts
        .headers
        .get(BUILD_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    parts.headers.remove(BUILD_HEADER);
    let write = Write {
        cred: &cred,
        request_id: &request_id,
        scope: query_scope(parts.uri.query()),
        header_build,
        received_at: &received_at,
    };
    let bad = |e: envelope::BodyError| ProxyError::Refused {
        status: StatusCode::BAD_REQUEST,
        kind,
        code: "bad-body",
        message: format!("rally-sidecar: {e}; nothing was forwarded"),
    };
    let shadow = icpt.cfg.intercept.mode == Mode::Shadow;

    match &op {
        Operation::CreateResult | Operation::UpdateResult { .. } => {
            let map = envelope::parse(&body).map_err(bad)?;
            let (root, fields) = envelope::result_fields(&map).map_err(bad)?;
            let (test_case, enrich_it) = match &op {
                Operation::UpdateResult { id } => {
                    let tc = match envelope::test_case_id(&fields) {
                        Some(tc) => Some(tc),
                        None => icpt
                            .lookups
                            .result_test_case(&cred, id)
                            .await
                            .ok()
                            .flatten(),
                    };
                    (tc, icpt.cfg.intercept.enrich_updates)
                }
                _ => (envelope::test_case_id(&fields), true),
            };
            let decision = icpt.decide(&write, &fields, test_case, enrich_it).await;
            icpt.count(&op, &decision);
            if shadow {
                let (mut resp, ms) = proxy
                    .forward_buffered(parts, body, client_origin.as_deref(), &conn)
                    .await?;
                set(&mut resp, DECISION_HEADER, &shadow_label(&decision));
                return Ok((resp, ms));
            }
            match decision {
                Decision::Refuse { code, message } => Err(ProxyError::Refused {
                    status: icpt.cfg.intercept.block_status,
                    kind,
                    code,
                    message,
                }),
                Decision::Forward {
                    fields,
                    filled,
                    decision,
                } => {
                    let mut out = Map::new();
                    out.insert(root, Value::Object(fields.clone()));
                    let sent = to_bytes(&Value::Object(out));
                    if let (Some(journal), true) = (&icpt.journal, icpt.cfg.confirm.enabled) {
                        let held = Held {
                            journal,
                            op: &op,
                            fields: &fields,
                            filled: &filled,
                            decision,
                            request_id: &request_id,
                            received_at: &received_at,
                            kind,
                        };
                        return confirm_write(
                            proxy,
                            icpt,
                            held,
                            parts,
                            sent,
                            &cred,
                            client_origin.as_deref(),
                            conn,
                        )
                        .await;
                    }
                    let (mut resp, ms) = proxy
                        .forward_buffered(parts, sent, client_origin.as_deref(), &conn)
                        .await?;
                    decorate(&mut resp, &filled, decision);
                    Ok((resp, ms))
                }
            }
        }
        Operation::AddResults { test_case } => {
            let map = envelope::parse(&body).map_err(bad)?;
            let items = map
                .get("CollectionItems")
                .and_then(Value::as_array)
                .ok_or_else(|| bad(envelope::BodyError::Items))?;
            let mut out_items = Vec::new();
            let mut all_filled = Vec::new();
            let mut decision_label = "allowed";
            for item in items {
                let Some(fields) = item.as_object() else {
                    return Err(bad(envelope::BodyError::Items));
                };
                // An existing result's ref is not a new result: pass it as it is.
                if fields.len() == 1 && fields.contains_key("_ref") {
                    out_items.push(item.clone());
                    continue;
                }
                let d = icpt
                    .decide(&write, fields, Some(test_case.clone()), true)
                    .await;
                icpt.count(&op, &d);
                match d {
                    Decision::Refuse { code, message } if !shadow => {
                        return Err(ProxyError::Refused {
                            status: icpt.cfg.intercept.block_status,
                            kind,
                            code,
                            message,
                        });
                    }
                    Decision::Forward {
                        fields,
                        filled,
                        decision,
                    } => {
                        out_items.push(Value::Object(fields));
                        all_filled.extend(filled);
                        if decision != "allowed" {
                            decision_label = decision;
                        }
                    }
                    Decision::Refuse { .. } => out_items.push(item.clone()),
                }
            }
            let forward = if shadow {
                body
            } else {
                let mut m = map.clone();
                m.insert("CollectionItems".into(), Value::Array(out_items));
                to_bytes(&Value::Object(m))
            };
            let (mut resp, ms) = proxy
                .forward_buffered(parts, forward, client_origin.as_deref(), &conn)
                .await?;
            if !shadow {
                decorate(&mut resp, &all_filled, decision_label);
            }
            Ok((resp, ms))
        }
        Operation::Batch => {
            batch(
                proxy,
                icpt,
                parts,
                body,
                &write,
                client_origin.as_deref(),
                &conn,
            )
            .await
        }
        Operation::Passthrough => {
            proxy
                .forward_buffered(parts, body, client_origin.as_deref(), &conn)
                .await
        }
    }
}

fn shadow_label(d: &Decision) -> String {
    match d {
        Decision::Refuse { code, .. } => format!("shadow-would-{code}"),
        Decision::Forward { filled, .. } if !filled.is_empty() => format!(
            "shadow-would-fill-{}",
            enrich::header_value(filled).replace(',', "-")
        ),
        Decision::Forward { .. } => "shadow-allowed".into(),
    }
}

fn decorate(resp: &mut Response<Body>, filled: &[Filled], decision: &str) {
    let mut fields: Vec<&str> = filled.iter().map(|f| f.field).collect();
    fields.sort();
    fields.dedup();
    if !fields.is_empty() {
        set(resp, FILLED_HEADER, &fields.join(","));
    }
    set(resp, DECISION_HEADER, decision);
}

/// `POST /batch`: each TestCaseResult entry is decided on its own; refused entries are left out
/// of what is forwarded and answered at their position in the BatchResult.
#[allow(clippy::too_many_arguments)]
async fn batch(
    proxy: &Proxy,
    icpt: &Interceptor,
    mut parts: http::request::Parts,
    body: Bytes,
    write: &Write<'_>,
    client_origin: Option<&str>,
    conn: &ConnInfo,
) -> Result<(Response<Body>, Option<f64>), ProxyError> {
    let cred = write.cred;
    let bad = |e: envelope::BodyError| ProxyError::Refused {
        status: StatusCode::BAD_REQUEST,
        kind: Envelope::Batch,
        code: "bad-body",
        message: format!("rally-sidecar: {e}; nothing was forwarded"),
    };
    let map = envelope::parse(&body).map_err(bad)?;
    let entries = map
        .get("Batch")
        .and_then(Value::as_array)
        .ok_or_else(|| bad(envelope::BodyError::Batch))?
        .clone();
    let shadow = icpt.cfg.intercept.mode == Mode::Shadow;
    let mut forwarded = Vec::new();
    // Position in the client's batch → Ok(index in the forwarded batch) or Err(refusal).
    let mut slots: Vec<Result<usize, String>> = Vec::new();
    let mut all_filled = Vec::new();
    let mut held_entries: Vec<(usize, BatchEntry)> = Vec::new();
    for entry in &entries {
        let e = entry.get("Entry").unwrap_or(entry);
        let op = classify::classify_entry(
            e.get("Method").and_then(Value::as_str).unwrap_or(""),
            e.get("Path").and_then(Value::as_str).unwrap_or(""),
        );
        let result = match (&op, e.get("Body").and_then(Value::as_object)) {
            (Operation::CreateResult | Operation::UpdateResult { .. }, Some(b)) => {
                match envelope::result_fields(b) {
                    Ok((root, fields)) => {
                        let (tc, enrich_it) = match &op {
                            Operation::UpdateResult { id } => (
                                match envelope::test_case_id(&fields) {
                                    Some(tc) => Some(tc),
                                    None => {
                                        icpt.lookups.result_test_case(cred, id).await.ok().flatten()
                                    }
                                },
                                icpt.cfg.intercept.enrich_updates,
                            ),
                            _ => (envelope::test_case_id(&fields), true),
                        };
                        let d = icpt.decide(write, &fields, tc, enrich_it).await;
                        icpt.count(&op, &d);
                        Some((root, d))
                    }
                    Err(err) => Some((
                        String::new(),
                        Decision::Refuse {
                            code: "bad-body",
                            message: format!("rally-sidecar: {err}"),
                        },
                    )),
                }
            }
            _ => None,
        };
        match result {
            None => {
                slots.push(Ok(forwarded.len()));
                forwarded.push(entry.clone());
            }
            Some(_) if shadow => {
                slots.push(Ok(forwarded.len()));
                forwarded.push(entry.clone());
            }
            Some((_, Decision::Refuse { message, .. })) => slots.push(Err(message)),
            Some((root, Decision::Forward { fields, filled, .. })) => {
                let method = e
                    .get("Method")
                    .and_then(Value::as_str)
                    .unwrap_or("POST")
                    .to_ascii_uppercase();
                let raw_path = e.get("Path").and_then(Value::as_str).unwrap_or("");
                let rel = raw_path.split('?').next().unwrap_or(raw_path);
                let rel = match rel.find(crate::wsapi::SERVICE_ROOT) {
                    Some(i) => rel[i + crate::wsapi::SERVICE_ROOT.len()..].to_string(),
                    None => rel.to_string(),
                };
                held_entries.push((
                    forwarded.len(),
                    BatchEntry {
                        op: op.clone(),
                        root: root.clone(),
                        fields: fields.clone(),
                        filled: filled.clone(),
                        method: http::Method::from_bytes(method.as_bytes())
                            .unwrap_or(http::Method::POST),
                        path: format!(
                            "{}/{}",
                            crate::wsapi::SERVICE_ROOT,
                            rel.trim_start_matches('/')
                        ),
                    },
                ));
                all_filled.extend(filled);
                let mut new_entry = entry.clone();
                let target = if new_entry.get("Entry").is_some() {
                    &mut new_entry["Entry"]
                } else {
                    &mut new_entry
                };
                target["Body"] = json!({ root: Value::Object(fields) });
                slots.push(Ok(forwarded.len()));
                forwarded.push(new_entry);
            }
        }
    }
    let refused = slots.iter().any(Result::is_err);
    let mut out = map.clone();
    out.insert("Batch".into(), Value::Array(forwarded.clone()));
    // Result entries to confirm one by one: (index in the forwarded batch, entry).
    let confirmables: Vec<(usize, BatchEntry)> = if shadow {
        vec![]
    } else {
        held_entries.into_iter().collect()
    };
    let journal = icpt
        .journal
        .as_ref()
        .filter(|_| icpt.cfg.confirm.enabled && !confirmables.is_empty());
    if !refused && journal.is_none() {
        let fwd = if shadow {
            body
        } else {
            to_bytes(&Value::Object(out))
        };
        let (mut resp, ms) = proxy
            .forward_buffered(parts, fwd, client_origin, conn)
            .await?;
        if !shadow {
            decorate(&mut resp, &all_filled, "allowed");
        }
        return Ok((resp, ms));
    }
    // Record the result entries before anything is sent.
    let mut rows = Vec::new();
    if let Some(j) = journal {
        for (_, e) in &confirmables {
            let expected = crate::confirm::Expected::from_fields(&e.fields);
            let row = crate::journal::NewWrite {
                request_id: write.request_id.to_string(),
                received_at: write.received_at.to_string(),
                credential: cred.fingerprint().to_string(),
                operation: e.op.label().to_string(),
                target: match &e.op {
                    Operation::UpdateResult { id } => Some(id.clone()),
                    _ => expected.test_case.clone(),
                },
                path: e.path.clone(),
                body: String::from_utf8_lossy(&to_bytes(
                    &json!({ e.root.clone(): Value::Object(e.fields.clone()) }),
                ))
                .into_owned(),
                test_case: expected.test_case.clone(),
                build: expected.build.clone(),
                verdict: expected.verdict.clone(),
                filled: Some(enrich::header_value(&e.filled)).filter(|f| !f.is_empty()),
                decision: Some("allowed".into()),
            };
            rows.push(j.insert(row).await.map_err(|err| {
                ProxyError::Overloaded(format!(
                    "the journal cannot record the write ({err}); nothing was forwarded"
                ))
            })?);
        }
    }
    let template_headers = parts.headers.clone();
    let query = parts.uri.query().map(str::to_string);
    let mut upstream_results: Option<Vec<Value>> = None;
    let mut batch_error: Option<String> = None;
    let mut ms = None;
    let mut status = StatusCode::OK;
    if !forwarded.is_empty() {
        parts.headers.remove(header::ACCEPT_ENCODING);
        match proxy
            .send_buffered(parts, to_bytes(&Value::Object(out)), conn)
            .await
        {
            Ok((resp, t)) => {
                ms = t;
                status = resp.status();
                let bytes = crate::server::collect_limited(resp.into_body(), 64 * 1024 * 1024)
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
                            Some(r) => upstream_results = Some(r.clone()),
                            None if journal.is_none() || !status.is_server_error() => {
                                // Not a BatchResult (an error page, a 401): relay it as it is.
                                let mut resp = Response::new(full(bytes));
                                *resp.status_mut() = status;
                                resp.headers_mut().insert(
                                    header::CONTENT_TYPE,
                                    HeaderValue::from_static("application/json"),
                                );
                                for id in &rows {
                                    if let Some(j) = journal {
                                        let _ = j
                                            .settle(
                                                *id,
                                                crate::journal::State::Rejected,
                                                1,
                                                Some(format!("Rally answered HTTP {status}")),
                                                None,
                                                None,
                                            )
                                            .await;
                                    }
                                }
                                return Ok((resp, ms));
                            }
                            None => batch_error = Some(format!("Rally answered HTTP {status}")),
                        }
                    }
                    Err(e) if journal.is_some() => batch_error = Some(e.to_string()),
                    Err(e) => return Err(e),
                }
            }
            Err(e) if journal.is_some() => {
                status = StatusCode::OK;
                batch_error = Some(e.to_string());
            }
            Err(e) => return Err(e),
        }
    }
    // Each result entry to its fate, concurrently.
    let mut finals: std::collections::HashMap<usize, Value> = std::collections::HashMap::new();
    if let Some(j) = journal {
        let fates = futures_util::future::join_all(confirmables.iter().zip(rows.iter()).map(
            |((i, e), id)| {
                let first = match (&upstream_results, &batch_error) {
                    (Some(r), _) => match r.get(*i) {
                        Some(element) => {
                            let wrapped = json!({"Entry": element});
                            let answer = crate::confirm::classify_answer(200, &wrapped, None);
                            (
                                answer,
                                Some(crate::confirm::RawAnswer {
                                    status: 200,
                                    headers: http::HeaderMap::new(),
                                    body: to_bytes(element),
                                }),
                            )
                        }
                        None => (
                            crate::confirm::Answer::Ambiguous {
                                cause: "Rally returned no result for this entry".into(),
                                retry_after: None,
                            },
                            None,
                        ),
                    },
                    (None, Some(err)) => (
                        crate::confirm::Answer::Ambiguous {
                            cause: err.clone(),
                            retry_after: None,
                        },
                        None,
                    ),
                    (None, None) => (
                        crate::confirm::Answer::Ambiguous {
                            cause: "no answer".into(),
                            retry_after: None,
                        },
                        None,
                    ),
                };
                confirm_entry(
                    proxy,
                    icpt,
                    cred,
                    e,
                    first,
                    &template_headers,
                    query.as_deref(),
                    *conn,
                    j,
                    *id,
                )
            },
        ))
        .await;
        for ((i, _), element) in confirmables.iter().zip(fates) {
            finals.insert(*i, element);
        }
    }
    let upstream = upstream_results.unwrap_or_default();
    let results: Vec<Value> = slots
        .iter()
        .map(|s| match s {
            Ok(i) => finals.remove(i).or_else(|| upstream.get(*i).cloned()).unwrap_or_else(|| {
                json!({"Errors": [format!("rally-sidecar: Rally returned no result for this entry{}", batch_error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default())], "Warnings": []})
            }),
            Err(msg) => json!({"Errors": [msg], "Warnings": []}),
        })
        .collect();
    let answer = json!({"BatchResult": {"_rallyAPIMajor": "2", "_rallyAPIMinor": "0", "Errors": [], "Warnings": [], "Results": results}});
    let mut resp = json_answer(icpt, status, to_bytes(&answer), client_origin);
    decorate(
        &mut resp,
        &all_filled,
        if refused {
            "partially-refused"
        } else {
            "allowed"
        },
    );
    Ok((resp, ms))
}

/// A TestCaseResult entry of a batch, enriched and allowed.
struct BatchEntry {
    op: Operation,
    root: String,
    fields: Map<String, Value>,
    filled: Vec<Filled>,
    method: http::Method,
    /// `/slm/webservice/v2.0/...` of the entry, for a single re-send.
    path: String,
}

/// The first answer comes from the batch; later attempts are single writes.
struct EntryWrite<'a> {
    first: std::sync::Mutex<Option<(crate::confirm::Answer, Option<crate::confirm::RawAnswer>)>>,
    inner: crate::confirm::rally::RallyWrite<'a>,
}

#[async_trait::async_trait]
impl crate::confirm::Upstream for EntryWrite<'_> {
    async fn submit(&self) -> (crate::confirm::Answer, Option<crate::confirm::RawAnswer>) {
        let first = self.first.lock().ok().and_then(|mut f| f.take());
        match first {
            Some(f) => f,
            None => self.inner.submit().await,
        }
    }
    async fn read(&self, object_id: i64) -> crate::confirm::ReadBack {
        self.inner.read(object_id).await
    }
    async fn find(&self, query: &str) -> Result<Vec<i64>, String> {
        self.inner.find(query).await
    }
}

/// A BatchResult element from any answer: an element as it is, or a single write's envelope.
fn element_of(body: &Bytes) -> Value {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    match v.get("CreateResult").or_else(|| v.get("OperationResult")) {
        Some(root) => {
            let mut e = serde_json::Map::new();
            if let Some(o) = root.get("Object") {
                e.insert("Object".into(), o.clone());
            }
            e.insert(
                "Errors".into(),
                root.get("Errors").cloned().unwrap_or(json!([])),
            );
            e.insert(
                "Warnings".into(),
                root.get("Warnings").cloned().unwrap_or(json!([])),
            );
            Value::Object(e)
        }
        None => v,
    }
}

/// Drives one batch entry to its fate and returns its BatchResult element.
#[allow(clippy::too_many_arguments)]
async fn confirm_entry(
    proxy: &Proxy,
    icpt: &Interceptor,
    cred: &Credential,
    e: &BatchEntry,
    first: (crate::confirm::Answer, Option<crate::confirm::RawAnswer>),
    headers: &http::HeaderMap,
    query: Option<&str>,
    conn: ConnInfo,
    journal: &Journal,
    id: i64,
) -> Value {
    use crate::confirm::{Expected, Fate, rally::RallyWrite};
    let started = std::time::Instant::now();
    let mut unsettled = Unsettled {
        journal,
        id,
        open: true,
    };
    let expected = Expected::from_fields(&e.fields);
    let uri = match query {
        Some(q) => format!("{}{}?{q}", icpt.cfg.upstream.origin_string(), e.path),
        None => format!("{}{}", icpt.cfg.upstream.origin_string(), e.path),
    };
    let mut headers = headers.clone();
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let Ok(uri) = uri.parse() else {
        return json!({"Errors": ["rally-sidecar: this entry's path cannot be re-sent"], "Warnings": []});
    };
    let up = EntryWrite {
        first: std::sync::Mutex::new(Some(first)),
        inner: RallyWrite {
            proxy,
            lookups: &icpt.lookups,
            cred,
            method: e.method.clone(),
            uri,
            headers,
            body: to_bytes(&json!({ e.root.clone(): Value::Object(e.fields.clone()) })),
            conn,
        },
    };
    let fate = icpt.drive(&up, &e.op, &expected).await;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    record_fate(icpt, &mut unsettled, &fate, ms).await;
    match fate {
        Fate::Confirmed {
            answer: Some(a), ..
        } => element_of(&a.body),
        Fate::Confirmed { object_id, .. } => {
            let r = format!(
                "{}{}/testcaseresult/{object_id}",
                icpt.cfg.upstream.origin_string(),
                crate::wsapi::SERVICE_ROOT
            );
            json!({"Object": {"_rallyAPIMajor": "2", "_rallyAPIMinor": "0", "_ref": r, "_type": "TestCaseResult", "ObjectID": object_id},
                   "Errors": [], "Warnings": ["rally-sidecar: Rally's answer to this entry was lost; the stored result was found by its fingerprint and read back"]})
        }
        Fate::Rejected {
            answer: Some(a), ..
        } => element_of(&a.body),
        Fate::Rejected { cause, .. } => json!({"Errors": [cause], "Warnings": []}),
        Fate::Unconfirmed {
            attempts, cause, ..
        } => {
            json!({"Errors": [format!("rally-sidecar: result not confirmed after {attempts} attempts: {cause}")], "Warnings": []})
        }
    }
}

/// Counts a fate in the metrics, settles its journal row and logs it; returns its state.
async fn record_fate(
    icpt: &Interceptor,
    unsettled: &mut Unsettled<'_>,
    fate: &crate::confirm::Fate,
    ms: f64,
) -> crate::journal::State {
    use crate::confirm::Fate;
    use crate::journal::State;
    let (state, cause, object_id, outcome) = match fate {
        Fate::Confirmed {
            object_id, adopted, ..
        } => {
            if *adopted {
                icpt.metrics.duplicates_avoided.inc();
            }
            (
                State::Confirmed,
                None,
                Some(*object_id),
                if *adopted {
                    "confirmed_adopted"
                } else {
                    "confirmed"
                },
            )
        }
        Fate::Rejected { cause, .. } => (State::Rejected, Some(cause.clone()), None, "rejected"),
        Fate::Unconfirmed {
            cause, object_id, ..
        } => (
            State::Unconfirmed,
            Some(cause.clone()),
            *object_id,
            "unconfirmed",
        ),
    };
    let attempts = fate.attempts();
    icpt.metrics
        .confirmations
        .get_or_create(&crate::metrics::OutcomeLabels {
            outcome: outcome.into(),
        })
        .inc();
    icpt.metrics.attempts.observe(attempts as f64);
    icpt.metrics.confirm_latency.observe(ms / 1000.0);
    let id = unsettled.id;
    if state == State::Unconfirmed && icpt.give_up.is_cancelled() {
        // Shutting down: the row is already unconfirmed (one statement for all held writes
        // when the give-up came, or recovery at the next start), so the client is answered
        // first and the row's details are written behind it, while there is time.
        let journal = unsettled.journal.clone();
        let cause = cause.clone();
        tokio::spawn(async move {
            let _ = journal
                .settle(id, state, attempts, cause, object_id, Some(ms))
                .await;
        });
        unsettled.open = false;
    } else {
        match unsettled
            .journal
            .settle(id, state, attempts, cause.clone(), object_id, Some(ms))
            .await
        {
            Ok(()) => unsettled.open = false,
            Err(e) => {
                tracing::error!(journal_id = id, error = %e, "cannot record the write's fate; it stays unconfirmed in the journal")
            }
        }
    }
    tracing::info!(
        journal_id = id,
        outcome,
        attempts,
        object_id,
        latency_ms = ms,
        cause = cause.as_deref().unwrap_or(""),
        "write settled"
    );
    state
}

/// A refusal in the shape the client expects.
pub fn refusal(status: StatusCode, kind: Envelope, code: &str, message: &str) -> Response<Body> {
    let mut resp = wsapi_response(status, kind, code, message);
    set(&mut resp, DECISION_HEADER, code);
    resp
}

/// Header saying whether the result was read back from Rally and found as sent.
pub const CONFIRMED_HEADER: &str = "x-rally-sidecar-confirmed";
/// Header counting the attempts made.
pub const ATTEMPTS_HEADER: &str = "x-rally-sidecar-attempts";
/// Header naming the journal row of the write.
pub const JOURNAL_HEADER: &str = "x-rally-sidecar-journal-id";

/// One write whose answer is held until its fate is known.
struct Held<'a> {
    journal: &'a Journal,
    op: &'a Operation,
    fields: &'a Map<String, Value>,
    filled: &'a [Filled],
    decision: &'static str,
    request_id: &'a str,
    received_at: &'a str,
    kind: Envelope,
}

/// A journal row not yet settled; if the request is dropped (the client left, the shutdown
/// deadline cut it), the row is marked unconfirmed rather than left pending.
struct Unsettled<'a> {
    journal: &'a Journal,
    id: i64,
    open: bool,
}

impl Drop for Unsettled<'_> {
    fn drop(&mut self) {
        if self.open {
            self.journal
                .settle_now(self.id, "the request ended before the outcome was known");
        }
    }
}

/// `confirm.check_rollup`: does the TestCase's roll-up reflect the confirmed result?
async fn rollup_warning(
    icpt: &Interceptor,
    cred: &Credential,
    expected: &crate::confirm::Expected,
    object_id: i64,
) -> Option<String> {
    let tc = expected.test_case.as_deref()?;
    let (_, json) = icpt
        .lookups
        .get_json(
            cred,
            &format!("testcase/{tc}?fetch=FormattedID,LastVerdict,LastBuild,LastResult"),
        )
        .await
        .ok()?;
    let t = json.get("TestCase")?;
    let last = t
        .get("LastResult")
        .and_then(envelope::parse_ref)
        .map(|(_, id)| id);
    let verdict = t.get("LastVerdict").and_then(Value::as_str).unwrap_or("");
    let build = t.get("LastBuild").and_then(Value::as_str).unwrap_or("");
    if last.as_deref() == Some(object_id.to_string().as_str())
        || (Some(verdict) == expected.verdict.as_deref()
            && Some(build) == expected.build.as_deref())
    {
        return None;
    }
    let name = t.get("FormattedID").and_then(Value::as_str).unwrap_or(tc);
    Some(format!(
        "rally-sidecar: TestCase {name} does not reflect this result yet (LastVerdict = {verdict:?}, LastBuild = {build:?}); \
         Rally's roll-ups follow the result with the latest Date"
    ))
}

/// Adds a Warning to the first root object of a WSAPI answer.
fn with_warning(body: &Bytes, warning: &str) -> Bytes {
    let Ok(mut v) = serde_json::from_slice::<Value>(body) else {
        return body.clone();
    };
    if let Some(root) = v
        .as_object_mut()
        .and_then(|m| m.values_mut().next())
        .and_then(Value::as_object_mut)
    {
        let warnings = root.entry("Warnings").or_insert_with(|| json!([]));
        if let Some(a) = warnings.as_array_mut() {
            a.push(json!(warning));
        }
    }
    to_bytes(&v)
}

/// Rally's answer relayed: its status and end-to-end headers, the body with refs rewritten.
fn relay_answer(
    icpt: &Interceptor,
    a: crate::confirm::RawAnswer,
    client_origin: Option<&str>,
) -> Response<Body> {
    let mut resp = json_answer(
        icpt,
        StatusCode::from_u16(a.status).unwrap_or(StatusCode::OK),
        a.body,
        client_origin,
    );
    let mut headers = a.headers;
    crate::proxy::headers::strip_hop_by_hop(&mut headers);
    headers.remove(header::CONTENT_LENGTH);
    headers.remove(header::CONTENT_ENCODING);
    for (k, v) in headers.iter() {
        if k != header::CONTENT_TYPE {
            resp.headers_mut().append(k.clone(), v.clone());
        }
    }
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        resp.headers_mut().insert(header::CONTENT_TYPE, ct.clone());
    }
    resp
}

/// Our answer (or Rally's body), with refs rewritten to the client's origin.
fn json_answer(
    icpt: &Interceptor,
    status: StatusCode,
    bytes: Bytes,
    client_origin: Option<&str>,
) -> Response<Body> {
    let mut bytes = bytes;
    if let Some(to) = client_origin.filter(|_| icpt.cfg.rewrite_refs)
        && let Some(mut rw) =
            crate::proxy::refs::Rewriter::new(&icpt.cfg.upstream.origin_string(), to)
    {
        let mut v = rw.push(&bytes).to_vec();
        v.extend_from_slice(&rw.finish());
        bytes = Bytes::from(v);
    }
    let mut resp = Response::new(full(bytes));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    resp
}

/// Records the write, drives it to its fate (confirm.rs), settles the journal and answers.
#[allow(clippy::too_many_arguments)]
async fn confirm_write(
    proxy: &Proxy,
    icpt: &Interceptor,
    held: Held<'_>,
    parts: http::request::Parts,
    body: Bytes,
    cred: &Credential,
    client_origin: Option<&str>,
    conn: ConnInfo,
) -> Result<(Response<Body>, Option<f64>), ProxyError> {
    use crate::confirm::{Expected, Fate, rally::RallyWrite};
    use crate::journal::{NewWrite, State};
    let started = std::time::Instant::now();
    let expected = Expected::from_fields(held.fields);
    let target = match held.op {
        Operation::UpdateResult { id } => Some(id.clone()),
        _ => expected.test_case.clone(),
    };
    let path = crate::redact::path_and_query(
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/"),
    )
    .into_owned();
    let row = NewWrite {
        request_id: held.request_id.to_string(),
        received_at: held.received_at.to_string(),
        credential: cred.fingerprint().to_string(),
        operation: held.op.label().to_string(),
        target,
        path,
        body: String::from_utf8_lossy(&body).into_owned(),
        test_case: expected.test_case.clone(),
        build: expected.build.clone(),
        verdict: expected.verdict.clone(),
        filled: Some(enrich::header_value(held.filled)).filter(|f| !f.is_empty()),
        decision: Some(held.decision.to_string()),
    };
    let id = held.journal.insert(row).await.map_err(|e| {
        ProxyError::Overloaded(format!(
            "the journal cannot record the write ({e}); nothing was forwarded"
        ))
    })?;
    let mut unsettled = Unsettled {
        journal: held.journal,
        id,
        open: true,
    };
    let up = RallyWrite {
        proxy,
        lookups: &icpt.lookups,
        cred,
        method: parts.method.clone(),
        uri: parts.uri.clone(),
        headers: parts.headers.clone(),
        body,
        conn,
    };
    let fate = icpt.drive(&up, held.op, &expected).await;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let state = record_fate(icpt, &mut unsettled, &fate, ms).await;
    let attempts = fate.attempts();

    let rollup = match (&fate, held.op) {
        (Fate::Confirmed { object_id, .. }, Operation::CreateResult)
            if icpt.cfg.confirm.check_rollup =>
        {
            rollup_warning(icpt, cred, &expected, *object_id).await
        }
        _ => None,
    };
    let fate = match (fate, rollup) {
        (
            Fate::Confirmed {
                object_id,
                attempts,
                adopted,
                answer: Some(mut a),
            },
            Some(w),
        ) => {
            a.body = with_warning(&a.body, &w);
            Fate::Confirmed {
                object_id,
                attempts,
                adopted,
                answer: Some(a),
            }
        }
        (fate, _) => fate,
    };
    let mut resp = match fate {
        Fate::Confirmed {
            answer: Some(a), ..
        } => relay_answer(icpt, a, client_origin),
        Fate::Confirmed { object_id, .. } => {
            // Adopted: the winning attempt's answer was lost, so answer as Rally would have.
            let r = format!(
                "{}{}/testcaseresult/{object_id}",
                icpt.cfg.upstream.origin_string(),
                crate::wsapi::SERVICE_ROOT
            );
            let object = json!({"_rallyAPIMajor": "2", "_rallyAPIMinor": "0", "_ref": r, "_type": "TestCaseResult",
                                "ObjectID": object_id, "_refObjectName": format!("{} {}", expected.build.clone().unwrap_or_default(), expected.verdict.clone().unwrap_or_default())});
            let warning = "rally-sidecar: Rally's answer to this write was lost; the stored result was found by its fingerprint and read back";
            let root = if held.kind == Envelope::Create {
                "CreateResult"
            } else {
                "OperationResult"
            };
            let answer = json!({root: {"_rallyAPIMajor": "2", "_rallyAPIMinor": "0", "Errors": [], "Warnings": [warning], "Object": object}});
            json_answer(icpt, StatusCode::OK, to_bytes(&answer), client_origin)
        }
        Fate::Rejected {
            answer: Some(a), ..
        } => relay_answer(icpt, a, client_origin),
        Fate::Rejected { cause, .. } => {
            wsapi_response(StatusCode::OK, held.kind, "rejected", &cause)
        }
        Fate::Unconfirmed {
            attempts, cause, ..
        } => wsapi_response(
            icpt.cfg.confirm.unconfirmed_status,
            held.kind,
            "unconfirmed",
            &format!("rally-sidecar: result not confirmed after {attempts} attempts: {cause}"),
        ),
    };
    set(
        &mut resp,
        CONFIRMED_HEADER,
        if state == State::Confirmed {
            "true"
        } else {
            "false"
        },
    );
    set(&mut resp, ATTEMPTS_HEADER, &attempts.to_string());
    set(&mut resp, JOURNAL_HEADER, &id.to_string());
    decorate(&mut resp, held.filled, held.decision);
    Ok((resp, None))
}
