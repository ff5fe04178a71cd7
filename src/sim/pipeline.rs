//! One request, start to end: read the body under a size cap, hand `/__sim/` to the control
//! API, authenticate, wait for a slot under the per-user concurrency cap (Rally queues, it does
//! not refuse), add the simulated latency, route, refuse what the caller may not do (a write
//! with a read-only key, a basic-auth write without the session's token), run the operation,
//! and for TestCaseResult writes apply the seeded fault — before or after storing, as the
//! sidecar's confirmation logic needs to be tested against both.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::Value;
use tokio::sync::Semaphore;

use super::auth::{Auth, INVALID_KEY, session_cookies};
use super::faults::{self, WriteFault, conflict_message};
use super::model::{Type, oids};
use super::ops::{self, Ctx, Done};
use super::respond::{Reply, respond};
use super::route::{self, Route, Target, parse_params};
use super::store::{Principal, Store};
use super::{Simulator, State, schema, write};
use crate::server::{Body, BoxError, ConnInfo};
use crate::wsapi::Envelope;

/// A request once it is authenticated.
struct Call<'a> {
    method: &'a Method,
    path: &'a str,
    query: &'a str,
    headers: &'a HeaderMap,
    body: &'a Bytes,
    origin: &'a str,
    principal: &'a Principal,
    /// The basic-auth session this request opened, if it opened one.
    new_session: Option<&'a str>,
}

/// Where an operation runs: a real request, or one entry of a batch (whole-request faults such
/// as resets and 5xx do not apply to entries).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Scope {
    Request,
    BatchEntry,
}

impl Simulator {
    pub(super) async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: ConnInfo,
    ) -> Result<Response<Body>, BoxError> {
        let (parts, body) = req.into_parts();
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
            .or_else(|| parts.uri.authority().map(|a| a.to_string()))
            .unwrap_or_else(|| conn.local.to_string());
        let origin = format!("{}://{host}", if conn.tls { "https" } else { "http" });
        let gzip = parts
            .headers
            .get(header::ACCEPT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("gzip"));
        {
            let mut st = self.lock();
            st.stats.requests += 1;
            *st.stats
                .requests_by_method
                .entry(parts.method.to_string())
                .or_default() += 1;
        }
        let bytes = match Limited::new(body, self.opts.max_body).collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) => {
                let reply = Reply::Json(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    crate::wsapi::error_envelope(
                        Envelope::Operation,
                        &[format!("request body refused: {e}")],
                        &[],
                    ),
                );
                return Ok(respond(reply, &[], false));
            }
        };
        let path = parts.uri.path();
        if let Target::Control(rest) = route::target(path)
            && self.opts.control_api
        {
            let reply = self.control(&parts.method, rest, &bytes, &origin);
            return Ok(respond(reply, &[], false));
        }

        // Authenticate, then count this request as open for its user.
        let (principal, new_session) = {
            let mut st = self.lock();
            match self.authenticate(&mut st, &parts.headers) {
                Auth::Ok(p, s) => (p, s),
                Auth::Missing | Auth::Bad => {
                    st.stats.unauthorized += 1;
                    return Ok(respond(Reply::Unauthorized, &[], false));
                }
            }
        };
        let _open = OpenGuard::new(&self, principal.user);
        let _permit = self.slot(principal.user).await;
        let latency = {
            let mut st = self.lock();
            let State { dice, faults, .. } = &mut *st;
            dice.latency(faults)
        };
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }

        let call = Call {
            method: &parts.method,
            path,
            query: parts.uri.query().unwrap_or(""),
            headers: &parts.headers,
            body: &bytes,
            origin: &origin,
            principal: &principal,
            new_session: new_session.as_deref(),
        };
        let reply = self.dispatch(&call);
        let cookies = new_session
            .and_then(|sid| {
                let st = self.lock();
                st.store
                    .sessions
                    .get(&sid)
                    .map(|s| session_cookies(&sid, s))
            })
            .unwrap_or_default();
        match reply {
            Reply::Reset => Err("simulated connection reset".into()),
            other => Ok(respond(other, &cookies, gzip)),
        }
    }

    /// Waits for one of the user's service slots.
    async fn slot(&self, user: i64) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let sem = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            slots
                .entry(user)
                .or_insert_with(|| {
                    Arc::new(Semaphore::new(self.opts.max_concurrency_per_user.max(1)))
                })
                .clone()
        };
        if sem.available_permits() == 0 {
            self.lock().stats.queued += 1;
        }
        sem.acquire_owned().await.ok()
    }

    fn dispatch(&self, call: &Call) -> Reply {
        match route::target(call.path) {
            Target::Schema { version, rest } => self.schema(call.origin, version, rest),
            Target::Service { version, rest } => self.service(call, version, rest),
            Target::Control(_) | Target::Elsewhere => Reply::Text(
                StatusCode::NOT_FOUND,
                format!("no such resource: {}", call.path),
            ),
        }
    }

    /// The schema service: `.../workspace/<oid>` redirects to a hashed URL, as Rally appears to
    /// (pyral's comments say the URL it lands on ends in a hash), which answers the document.
    fn schema(&self, origin: &str, version: &str, rest: &str) -> Reply {
        let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        match segs.as_slice() {
            ["workspace", ws] => Reply::Redirect(format!(
                "{origin}/slm/schema/{version}/workspace/{ws}/sim0001"
            )),
            ["workspace", ws, _hash] => {
                let st = self.lock();
                let ws = ws.parse().unwrap_or(oids::WORKSPACE);
                let base = route::service_base(origin, version);
                Reply::Json(StatusCode::OK, schema::document(&base, ws, &st.store))
            }
            _ => Reply::Text(StatusCode::NOT_FOUND, "not found".into()),
        }
    }

    fn service(&self, call: &Call, version: &str, rest: &str) -> Reply {
        let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        let mut params = parse_params(call.query);
        let form = call
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        let mut form_get = false;
        if form && *call.method == Method::POST {
            // The .NET toolkit queries with POST and `_method=GET` in a form body.
            let form_params = parse_params(&String::from_utf8_lossy(call.body));
            if form_params
                .get("_method")
                .is_some_and(|m| m.eq_ignore_ascii_case("GET"))
            {
                form_get = true;
                for (k, v) in form_params {
                    params.entry(k).or_insert(v);
                }
            }
        }
        let r = route::route(
            call.method,
            &segments,
            params.contains_key("query"),
            form_get,
        );
        let read = r.is_read();
        if !read && call.principal.read_only {
            // A read-only key may only read; Rally answers 401 (KB 98242).
            self.lock().stats.unauthorized += 1;
            return Reply::Unauthorized;
        }
        if r == Route::Authorize {
            return self.authorize(call.headers, call.new_session);
        }
        if !read && call.principal.basic && !self.token_ok(call.headers, &params, call.new_session)
        {
            return Reply::refuse(r.envelope(), INVALID_KEY);
        }
        let base = route::service_base(call.origin, version);
        let needs_body = !read
            && matches!(
                r,
                Route::Create(_) | Route::Update(..) | Route::CollectionEdit(..)
            );
        let body = if needs_body {
            match serde_json::from_slice::<Value>(call.body) {
                Ok(v) => v,
                Err(e) => {
                    return Reply::refuse(
                        r.envelope(),
                        format!("Cannot parse input stream due to I/O error as JSON document: {e}"),
                    );
                }
            }
        } else {
            Value::Null
        };
        match r {
            Route::Batch => self.batch(call.body, &base, call.principal, &params),
            other => self.operation(other, &body, &base, call.principal, &params, Scope::Request),
        }
    }

    /// Runs one routed operation under the state lock.
    pub(super) fn operation(
        &self,
        r: Route<'_>,
        body: &Value,
        base: &str,
        principal: &Principal,
        params: &HashMap<String, String>,
        scope: Scope,
    ) -> Reply {
        let mut guard = self.lock();
        let State {
            store,
            faults,
            switches,
            dice,
            stats,
            ..
        } = &mut *guard;
        let ctx = Ctx {
            base,
            principal,
            params,
            now: time::OffsetDateTime::now_utc(),
            instant: tokio::time::Instant::now(),
            read_lag: dice.read_lag(faults),
            switches,
        };
        let ok = |d: Done| Reply::Json(StatusCode::OK, d.body);
        match r {
            Route::Singleton(t) => ok(ops::singleton(store, &ctx, t)),
            Route::Query(t) => ok(ops::query(store, &ctx, t, None)),
            Route::Read(t, id) => ok(ops::read(store, &ctx, t, id)),
            Route::Collection(t, id, coll) => {
                let obj = store
                    .resolve_id(id)
                    .and_then(|o| store.visible(Some(t), o, ctx.instant))
                    .cloned();
                match obj.as_ref().and_then(|o| store.collection(o, coll)) {
                    Some((member_ty, members)) => {
                        ok(ops::query(store, &ctx, member_ty, Some(members)))
                    }
                    None => Reply::refuse(Envelope::Query, "Cannot find object to read"),
                }
            }
            Route::Create(Type::TestCaseResult) | Route::Update(Type::TestCaseResult, _) => {
                let mut fate = Fate {
                    store,
                    faults,
                    dice,
                    stats,
                };
                fate.result_write(&ctx, &r, body, scope)
            }
            Route::Create(t) => ok(write::create(store, &ctx, t, body, true)),
            Route::Update(t, id) => ok(write::update(store, &ctx, t, id, body)),
            Route::Delete(t, id) => ok(write::delete(store, &ctx, t, id)),
            Route::CollectionEdit(t, id, coll, add) => {
                ok(write::collection_edit(store, &ctx, t, id, coll, add, body))
            }
            Route::UnknownType { name, kind, .. } => {
                // The wording the official toolkits' live tests assert.
                Reply::refuse(kind, format!("Requested type name \"{name}\" is unknown."))
            }
            Route::Unroutable { path, .. } => Reply::refuse(
                Envelope::Operation,
                format!("Not able to route request: /{path}"),
            ),
            Route::Authorize | Route::Batch => {
                Reply::Text(StatusCode::INTERNAL_SERVER_ERROR, "misrouted".into())
            }
        }
    }
}

/// The parts of the state a TestCaseResult write's fate is decided with.
struct Fate<'a> {
    store: &'a mut Store,
    faults: &'a mut faults::FaultConfig,
    dice: &'a mut faults::Dice,
    stats: &'a mut super::Stats,
}

impl Fate<'_> {
    /// A TestCaseResult create or update: the seeded (or scripted) fault decides whether it is
    /// refused before storing, stored and then answered badly, or answered without storing.
    fn result_write(&mut self, ctx: &Ctx, r: &Route, body: &Value, scope: Scope) -> Reply {
        self.stats.writes_received += 1;
        let is_create = matches!(r, Route::Create(_));
        let kind = r.envelope();
        let fault = if self.faults.script.is_empty() {
            self.dice.write_fault(self.faults, is_create)
        } else {
            let next = self.faults.script.remove(0);
            faults::scripted(&next).unwrap_or(WriteFault::None)
        };
        let fault = match (scope, fault) {
            (Scope::Request, f) => f,
            // Inside a batch only the per-entry faults make sense.
            (Scope::BatchEntry, f @ (WriteFault::Drop | WriteFault::Conflict)) => f,
            (Scope::BatchEntry, _) => WriteFault::None,
        };
        match fault {
            WriteFault::ResetBefore => {
                self.stats.resets_before_persist += 1;
                return Reply::Reset;
            }
            WriteFault::Error(code) => {
                self.stats.errors += 1;
                let status =
                    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                return Reply::Text(
                    status,
                    format!("<html><body><h2>HTTP ERROR {code}</h2></body></html>"),
                );
            }
            WriteFault::Conflict => {
                self.stats.conflicts += 1;
                let variant = self.dice.conflict_variant();
                let tc = test_case_of(self.store, r, body);
                return Reply::refuse(kind, conflict_message(variant, oids::SUBSCRIPTION, tc));
            }
            WriteFault::InvalidKey => {
                self.stats.invalid_keys += 1;
                return Reply::refuse(kind, INVALID_KEY);
            }
            _ => {}
        }
        let persist = fault != WriteFault::Drop;
        let done = match r {
            Route::Update(t, id) => write::update(self.store, ctx, *t, id, body),
            _ => write::create(self.store, ctx, Type::TestCaseResult, body, persist),
        };
        if done.stored.is_some() {
            self.stats.persisted += 1;
        }
        let accepted = done.body[kind.key()]["Errors"]
            .as_array()
            .is_some_and(|e| e.is_empty());
        match fault {
            WriteFault::Drop if is_create && accepted => {
                self.stats.dropped += 1;
                Reply::Json(StatusCode::OK, done.body)
            }
            WriteFault::ResetAfter => {
                self.stats.resets_after_persist += 1;
                Reply::Reset
            }
            WriteFault::GatewayTimeout(code) => {
                self.stats.gateway_timeouts += 1;
                let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
                Reply::Text(
                    status,
                    format!("<html><body><h2>{code} gateway timeout</h2></body></html>"),
                )
            }
            _ => Reply::Json(StatusCode::OK, done.body),
        }
    }
}

/// The test case a result write concerns, for the conflict wording: the body's `TestCase`, or
/// the stored result's.
fn test_case_of(store: &Store, r: &Route, body: &Value) -> Option<i64> {
    let from_body = write::body_fields(body, Type::TestCaseResult)
        .ok()
        .and_then(|(_, m)| m.get("TestCase").and_then(|v| store.parse_ref(v)))
        .map(|(_, oid)| oid);
    let stored = || match r {
        Route::Update(_, id) => store
            .resolve_id(id)
            .and_then(|oid| store.objects.get(&oid))
            .and_then(|o| o.get_ref("TestCase"))
            .map(|(_, tc)| tc),
        _ => None,
    };
    from_body.or_else(stored)
}

/// Counts a user's open requests for the `max_open_per_user` statistic.
struct OpenGuard<'a> {
    sim: &'a Simulator,
    user: i64,
}

impl<'a> OpenGuard<'a> {
    fn new(sim: &'a Simulator, user: i64) -> Self {
        let mut st = sim.lock();
        let name = st
            .store
            .objects
            .get(&user)
            .and_then(|u| u.str_field("UserName"))
            .unwrap_or("?")
            .to_string();
        let open = st.open.entry(user).or_default();
        *open += 1;
        let now = *open;
        let max = st.stats.max_open_per_user.entry(name).or_default();
        *max = (*max).max(now);
        OpenGuard { sim, user }
    }
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.sim.lock();
        if let Some(n) = st.open.get_mut(&self.user) {
            *n = n.saturating_sub(1);
        }
    }
}
