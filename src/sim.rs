//! A faithful stand-in for Rally's WSAPI v2.0, judged against ../shared/rally-wsapi.md: used by
//! every test of this project, by `rally-sidecar simulate`, by `rally-sidecar demo`, and by
//! users' own CI. It depends only on the WSAPI vocabulary ([`crate::wsapi`]) and the shared
//! server plumbing; nothing on the proxy path imports it.
//!
//! One request: authenticate (API key, or basic auth with a session-bound security token) →
//! wait for a slot under the per-user concurrency cap → simulated latency → route to an
//! operation in [`ops`] → for TestCaseResult writes, apply the seeded fault decided in
//! [`faults`] → answer JSON (gzip when asked), with `_ref`s pointing at the origin the client
//! used. The control API under `/__sim/` exposes statistics, stored objects and live fault knobs.

pub mod faults;
pub mod model;
pub mod ops;
pub mod query;
pub mod render;
pub mod schema;
pub mod store;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::error::full;
use crate::server::{Body, BoxError, BoxFuture, ConnInfo, Handler, ServeOptions};
use crate::wsapi::{self, Envelope, SCHEMA_ROOT, SERVICE_ROOT, error_envelope};
use faults::{Dice, FaultConfig, WriteFault};
use model::{Fixtures, Type};
use ops::Ctx;
use store::{Principal, Store};

/// How the simulator runs.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub fixtures: Fixtures,
    pub seed: u64,
    pub faults: FaultConfig,
    /// Requests one user may have in service at once; more wait in a FIFO queue (§13).
    pub max_concurrency_per_user: usize,
    /// Serve `/__sim/` (statistics, objects, fault knobs, reset).
    pub control_api: bool,
    /// Largest request body accepted.
    pub max_body: usize,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            fixtures: Fixtures::default(),
            seed: 1,
            faults: FaultConfig::default(),
            max_concurrency_per_user: 12,
            control_api: true,
            max_body: 64 * 1024 * 1024,
        }
    }
}

/// Counters served at `GET /__sim/stats`.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Stats {
    pub requests: u64,
    pub requests_by_method: BTreeMap<String, u64>,
    pub unauthorized: u64,
    /// TestCaseResult write requests received (creates + updates, batch entries included).
    pub writes_received: u64,
    /// TestCaseResult writes stored.
    pub persisted: u64,
    pub dropped: u64,
    pub conflicts: u64,
    pub errors: u64,
    pub gateway_timeouts: u64,
    pub resets_before_persist: u64,
    pub resets_after_persist: u64,
    /// Requests that waited because their user already had the maximum in service.
    pub queued: u64,
    /// Highest number of requests one user had open at once (arrived, queued or in service).
    pub max_open_per_user: BTreeMap<String, usize>,
}

struct State {
    store: Store,
    faults: FaultConfig,
    dice: Dice,
    stats: Stats,
    open: HashMap<i64, usize>,
}

/// The simulator: shared by every connection.
pub struct Simulator {
    opts: SimOptions,
    state: Mutex<State>,
    slots: Mutex<HashMap<i64, Arc<Semaphore>>>,
}

/// A running simulator started by [`start`].
pub struct SimHandle {
    pub addr: std::net::SocketAddr,
    /// `http://127.0.0.1:port` or `https://localhost:port`.
    pub base_url: String,
    pub sim: Arc<Simulator>,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<usize>,
}

impl SimHandle {
    /// Stops accepting and closes connections (in-flight requests get one second).
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

/// Starts the simulator on `listener` (optionally TLS) in the background.
pub fn start(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    opts: SimOptions,
) -> std::io::Result<SimHandle> {
    start_shared(listener, tls, Arc::new(Simulator::new(opts)))
}

/// Serves an existing simulator on `listener`: a simulator stopped with [`SimHandle::stop`] can
/// be started again with everything it stored (the outage run does this).
pub fn start_shared(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    sim: Arc<Simulator>,
) -> std::io::Result<SimHandle> {
    let addr = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let host = if tls.is_some() {
        "localhost".to_string()
    } else {
        addr.ip().to_string()
    };
    let shutdown = CancellationToken::new();
    let mut serve_opts = ServeOptions::plain("simulator");
    serve_opts.tls = tls;
    serve_opts.grace = std::time::Duration::from_secs(1);
    let task = tokio::spawn(crate::server::serve(
        listener,
        serve_opts,
        Arc::new(SimHandler(sim.clone())),
        Arc::new(crate::server::NoObserver),
        shutdown.clone(),
    ));
    Ok(SimHandle {
        addr,
        base_url: format!("{scheme}://{host}:{}", addr.port()),
        sim,
        shutdown,
        task,
    })
}

/// An answer before it becomes an HTTP response.
enum Reply {
    Json(StatusCode, Value),
    Unauthorized,
    Redirect(String),
    Text(StatusCode, String),
    /// Drop the connection without answering.
    Reset,
}

/// What the request is, after routing.
enum Route<'a> {
    Authorize,
    Batch,
    Singleton(Type),
    Query(Type),
    Read(Type, &'a str),
    Create(Type),
    Update(Type, &'a str),
    Delete(Type, &'a str),
    Collection(Type, &'a str, &'a str),
    CollectionEdit(Type, &'a str, &'a str, bool),
    Unknown(String),
}

fn route<'a>(method: &Method, segments: &[&'a str], has_query: bool, form_get: bool) -> Route<'a> {
    let seg: Vec<&'a str> = segments.iter().map(|s| wsapi::strip_js(s)).collect();
    let ty = |s: &str| Type::parse(s);
    match (method, seg.as_slice()) {
        (&Method::GET, ["security", "authorize"]) => Route::Authorize,
        (&Method::POST, ["batch"]) => Route::Batch,
        (&Method::GET, [t]) | (&Method::POST, [t])
            if ty(t).is_some() && (method == Method::GET || form_get) =>
        {
            let t = ty(t).unwrap_or(Type::User);
            let singular = !seg[0].to_ascii_lowercase().ends_with('s');
            if (t == Type::User || t == Type::Subscription) && singular && !has_query {
                Route::Singleton(t)
            } else {
                Route::Query(t)
            }
        }
        (&Method::POST, [t, c]) | (&Method::PUT, [t, c])
            if ty(t).is_some() && c.eq_ignore_ascii_case("create") =>
        {
            Route::Create(ty(t).unwrap_or(Type::TestCaseResult))
        }
        (&Method::GET, [t, id]) if ty(t).is_some() => Route::Read(ty(t).unwrap_or(Type::User), id),
        (&Method::POST, [t, id]) | (&Method::PUT, [t, id]) if ty(t).is_some() => {
            Route::Update(ty(t).unwrap_or(Type::User), id)
        }
        (&Method::DELETE, [t, id]) if ty(t).is_some() => {
            Route::Delete(ty(t).unwrap_or(Type::User), id)
        }
        (&Method::GET, [t, id, coll]) if ty(t).is_some() => {
            Route::Collection(ty(t).unwrap_or(Type::User), id, coll)
        }
        (&Method::POST, [t, id, coll, op])
            if ty(t).is_some()
                && (op.eq_ignore_ascii_case("add") || op.eq_ignore_ascii_case("remove")) =>
        {
            Route::CollectionEdit(
                ty(t).unwrap_or(Type::User),
                id,
                coll,
                op.eq_ignore_ascii_case("add"),
            )
        }
        _ => Route::Unknown(seg.join("/")),
    }
}

/// Percent-decodes a query string into lower-cased names → values (first occurrence wins).
pub fn parse_params(query: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            let s = s.replace('+', " ");
            percent_encoding::percent_decode_str(&s)
                .decode_utf8_lossy()
                .into_owned()
        };
        out.entry(decode(k).to_ascii_lowercase())
            .or_insert_with(|| decode(v));
    }
    out
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

/// Outcome of authentication.
enum Auth {
    Ok(Principal, Option<String>),
    Missing,
    Bad,
}

impl Simulator {
    pub fn new(opts: SimOptions) -> Simulator {
        let state = State {
            store: Store::new(opts.fixtures.clone()),
            faults: opts.faults.clone(),
            dice: Dice::new(opts.seed),
            stats: Stats::default(),
            open: HashMap::new(),
        };
        Simulator {
            opts,
            state: Mutex::new(state),
            slots: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock means a bug panicked mid-update; the data is still the best we have.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Current statistics.
    pub fn stats(&self) -> Stats {
        self.lock().stats.clone()
    }

    /// Every stored object of a type, rendered in full (recycled ones included, with `Recycled`).
    pub fn objects(&self, ty: Type, origin: &str) -> Vec<Value> {
        let st = self.lock();
        let r = render::Renderer {
            store: &st.store,
            origin,
            now: time::OffsetDateTime::now_utc(),
        };
        st.store
            .objects_of(ty)
            .map(|o| r.object(o, &render::Fetch::All, false))
            .collect()
    }

    /// Replaces the fault knobs.
    pub fn set_faults(&self, f: FaultConfig) -> Result<(), String> {
        f.validate()?;
        self.lock().faults = f;
        Ok(())
    }

    pub fn faults(&self) -> FaultConfig {
        self.lock().faults.clone()
    }

    /// Back to the fixtures, zeroed statistics, the original fault knobs and seed.
    pub fn reset(&self) {
        let mut st = self.lock();
        st.store = Store::new(self.opts.fixtures.clone());
        st.stats = Stats::default();
        st.faults = self.opts.faults.clone();
        st.dice = Dice::new(self.opts.seed);
    }

    fn authenticate(&self, st: &mut State, headers: &HeaderMap) -> Auth {
        if let Some(key) = headers.get("zsessionid").and_then(|v| v.to_str().ok()) {
            return match st.store.user_for_key(key.trim()) {
                Some(p) => Auth::Ok(p, None),
                None => Auth::Bad,
            };
        }
        if let Some(auth) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        {
            let Some(encoded) = auth
                .strip_prefix("Basic ")
                .or_else(|| auth.strip_prefix("basic "))
            else {
                return Auth::Bad;
            };
            use base64::Engine;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok());
            let Some((user, pass)) = decoded.as_deref().and_then(|d| d.split_once(':')) else {
                return Auth::Bad;
            };
            return match st.store.user_for_password(user, pass) {
                Some(p) => {
                    // Keep the client's session if it is this user's; otherwise open one.
                    let existing = cookie(headers, "JSESSIONID")
                        .filter(|s| st.store.sessions.get(s).is_some_and(|x| x.user == p.user));
                    match existing {
                        Some(_) => Auth::Ok(p, None),
                        None => {
                            let sid = st.store.new_session(p.user);
                            Auth::Ok(p, Some(sid))
                        }
                    }
                }
                None => Auth::Bad,
            };
        }
        Auth::Missing
    }

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

    async fn handle(
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
        let path = parts.uri.path().to_string();
        let raw_query = parts.uri.query().unwrap_or("").to_string();
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
                    error_envelope(
                        Envelope::Operation,
                        &[format!("request body refused: {e}")],
                        &[],
                    ),
                );
                return Ok(respond(reply, None, false));
            }
        };

        if let Some(rest) = path.strip_prefix("/__sim/")
            && self.opts.control_api
        {
            return Ok(respond(
                self.control(&parts.method, rest, &bytes, &origin),
                None,
                false,
            ));
        }

        // Authenticate, then count this request as open for its user.
        let (principal, new_session) = {
            let mut st = self.lock();
            match self.authenticate(&mut st, &parts.headers) {
                Auth::Ok(p, s) => (p, s),
                Auth::Missing | Auth::Bad => {
                    st.stats.unauthorized += 1;
                    return Ok(respond(Reply::Unauthorized, None, false));
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

        let reply = self.dispatch(
            &parts.method,
            &path,
            &raw_query,
            &parts.headers,
            &bytes,
            &origin,
            &principal,
            new_session.as_deref(),
        );
        let set_cookie = new_session.map(|s| format!("JSESSIONID={s}; Path=/; HttpOnly"));
        match reply {
            Reply::Reset => Err("simulated connection reset".into()),
            other => Ok(respond(other, set_cookie, gzip)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn dispatch(
        &self,
        method: &Method,
        path: &str,
        raw_query: &str,
        headers: &HeaderMap,
        body: &Bytes,
        origin: &str,
        principal: &Principal,
        new_session: Option<&str>,
    ) -> Reply {
        if let Some(rest) = path.strip_prefix(SCHEMA_ROOT) {
            let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
            return match segs.as_slice() {
                ["workspace", ws] => {
                    Reply::Redirect(format!("{origin}{SCHEMA_ROOT}/workspace/{ws}/sim0001"))
                }
                ["workspace", ws, _hash] => {
                    let st = self.lock();
                    let ws = ws.parse().unwrap_or(model::oids::WORKSPACE);
                    let custom = |t: Type| st.store.custom_fields(t);
                    Reply::Json(
                        StatusCode::OK,
                        schema::document(origin, ws, &st.store.fixtures.verdicts, &custom),
                    )
                }
                _ => Reply::Text(StatusCode::NOT_FOUND, "not found".into()),
            };
        }
        let Some(rest) = path.strip_prefix(SERVICE_ROOT) else {
            return Reply::Text(StatusCode::NOT_FOUND, format!("no such resource: {path}"));
        };
        let segments: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
        let mut params = parse_params(raw_query);
        let form = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        let mut form_get = false;
        if form && method == Method::POST {
            let form_params = parse_params(&String::from_utf8_lossy(body));
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
        let r = route(method, &segments, params.contains_key("query"), form_get);
        let is_read = matches!(
            r,
            Route::Authorize
                | Route::Singleton(_)
                | Route::Query(_)
                | Route::Read(..)
                | Route::Collection(..)
        );
        if !is_read && principal.read_only {
            // A read-only key may only read; Rally answers 401 (KB 98242).
            self.lock().stats.unauthorized += 1;
            return Reply::Unauthorized;
        }
        if let Route::Authorize = r {
            let mut st = self.lock();
            let token = format!("simtoken{:016x}", st.dice_u64());
            let sid = new_session
                .map(str::to_string)
                .or_else(|| cookie(headers, "JSESSIONID"));
            if let Some(session) = sid.as_ref().and_then(|s| st.store.sessions.get_mut(s)) {
                session.token = Some(token.clone());
            }
            let mut env = error_envelope(Envelope::Operation, &[], &[]);
            env["OperationResult"]["SecurityToken"] = json!(token);
            return Reply::Json(StatusCode::OK, env);
        }
        if !is_read && principal.basic && !self.token_ok(headers, &params, new_session) {
            let kind = if matches!(r, Route::Create(_)) {
                Envelope::Create
            } else {
                Envelope::Operation
            };
            return Reply::Json(
                StatusCode::OK,
                error_envelope(
                    kind,
                    &["Not authorized to perform action: Invalid key".into()],
                    &[],
                ),
            );
        }
        match r {
            Route::Batch => self.batch(body, origin, principal, &params),
            other => {
                let parsed_body = if is_read || matches!(other, Route::Delete(..)) {
                    Value::Null
                } else {
                    match serde_json::from_slice::<Value>(body) {
                        Ok(v) => v,
                        Err(e) => {
                            let kind = if matches!(other, Route::Create(_)) {
                                Envelope::Create
                            } else {
                                Envelope::Operation
                            };
                            return Reply::Json(
                                StatusCode::OK,
                                error_envelope(
                                    kind,
                                    &[format!(
                                        "Cannot parse input stream due to I/O error as JSON document: {e}"
                                    )],
                                    &[],
                                ),
                            );
                        }
                    }
                };
                self.operation(other, &parsed_body, origin, principal, &params, true)
            }
        }
    }

    fn token_ok(
        &self,
        headers: &HeaderMap,
        params: &HashMap<String, String>,
        new_session: Option<&str>,
    ) -> bool {
        if new_session.is_some() {
            return false;
        }
        let st = self.lock();
        let Some(sid) = cookie(headers, "JSESSIONID") else {
            return false;
        };
        let Some(session) = st.store.sessions.get(&sid) else {
            return false;
        };
        match (session.token.as_deref(), params.get("key")) {
            (Some(t), Some(k)) => t == k,
            _ => false,
        }
    }

    /// Runs one routed operation; `top` = a real request (faults apply to whole requests).
    fn operation(
        &self,
        r: Route<'_>,
        body: &Value,
        origin: &str,
        principal: &Principal,
        params: &HashMap<String, String>,
        top: bool,
    ) -> Reply {
        let mut st = self.lock();
        let st = &mut *st;
        let ctx = Ctx {
            origin,
            principal,
            params,
            now: time::OffsetDateTime::now_utc(),
            instant: tokio::time::Instant::now(),
            read_lag: st.dice.read_lag(&st.faults),
        };
        let ok = |d: ops::Done| Reply::Json(StatusCode::OK, d.body);
        match r {
            Route::Singleton(t) => ok(ops::singleton(&st.store, &ctx, t)),
            Route::Query(t) => ok(ops::query(&st.store, &ctx, t, None)),
            Route::Read(t, id) => ok(ops::read(&st.store, &ctx, t, id)),
            Route::Collection(t, id, coll) => {
                let obj = st
                    .store
                    .resolve_id(id)
                    .and_then(|o| st.store.visible(Some(t), o, ctx.instant))
                    .cloned();
                match obj.as_ref().and_then(|o| st.store.collection(o, coll)) {
                    Some((member_ty, members)) => {
                        ok(ops::query(&st.store, &ctx, member_ty, Some(members)))
                    }
                    None => Reply::Json(
                        StatusCode::OK,
                        error_envelope(
                            Envelope::Query,
                            &["Cannot find object to read".into()],
                            &[],
                        ),
                    ),
                }
            }
            Route::Create(t) | Route::Update(t, _) if t == Type::TestCaseResult => {
                st.stats.writes_received += 1;
                let is_create = matches!(r, Route::Create(_));
                let fault = if st.faults.script.is_empty() {
                    st.dice.write_fault(&st.faults, is_create)
                } else {
                    let next = st.faults.script.remove(0);
                    faults::scripted(&next).unwrap_or(WriteFault::None)
                };
                let fault = if top { fault } else { batch_entry_fault(fault) };
                match fault {
                    WriteFault::ResetBefore => {
                        st.stats.resets_before_persist += 1;
                        return Reply::Reset;
                    }
                    WriteFault::Error(code) => {
                        st.stats.errors += 1;
                        let status =
                            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                        return Reply::Text(
                            status,
                            format!("<html><body><h2>HTTP ERROR {code}</h2></body></html>"),
                        );
                    }
                    WriteFault::Conflict => {
                        st.stats.conflicts += 1;
                        let msg = format!(
                            "Concurrency conflict: [Object has been modified since being read for update in this context] - ConcurrencyConflictException : Modified since read on update : Object Class : com.f4tech.slm.domain.TestCaseResult : ObjectID : {}",
                            st.store.objects.keys().next_back().copied().unwrap_or(0)
                        );
                        let kind = if is_create {
                            Envelope::Create
                        } else {
                            Envelope::Operation
                        };
                        return Reply::Json(StatusCode::OK, error_envelope(kind, &[msg], &[]));
                    }
                    _ => {}
                }
                let persist = fault != WriteFault::Drop;
                let done = match r {
                    Route::Update(t, id) => ops::update(&mut st.store, &ctx, t, id, body),
                    _ => ops::create(&mut st.store, &ctx, t, body, persist),
                };
                let stored = done.stored.is_some();
                if stored {
                    st.stats.persisted += 1;
                }
                match fault {
                    WriteFault::Drop
                        if is_create
                            && done.body["CreateResult"]["Errors"]
                                .as_array()
                                .is_some_and(|e| e.is_empty()) =>
                    {
                        st.stats.dropped += 1;
                        ok(done)
                    }
                    WriteFault::ResetAfter => {
                        st.stats.resets_after_persist += 1;
                        Reply::Reset
                    }
                    WriteFault::GatewayTimeout(code) => {
                        st.stats.gateway_timeouts += 1;
                        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY);
                        Reply::Text(
                            status,
                            format!("<html><body><h2>{code} gateway timeout</h2></body></html>"),
                        )
                    }
                    _ => ok(done),
                }
            }
            Route::Create(t) => ok(ops::create(&mut st.store, &ctx, t, body, true)),
            Route::Update(t, id) => ok(ops::update(&mut st.store, &ctx, t, id, body)),
            Route::Delete(t, id) => ok(ops::delete(&mut st.store, &ctx, t, id)),
            Route::CollectionEdit(t, id, coll, add) => ok(ops::collection_edit(
                &mut st.store,
                &ctx,
                t,
                id,
                coll,
                add,
                body,
            )),
            Route::Unknown(p) => Reply::Json(
                StatusCode::OK,
                error_envelope(
                    Envelope::Operation,
                    &[format!("Not able to route request: /{p}")],
                    &[],
                ),
            ),
            Route::Authorize | Route::Batch => {
                Reply::Text(StatusCode::INTERNAL_SERVER_ERROR, "misrouted".into())
            }
        }
    }

    /// `POST /batch` (§9): each entry runs on its own; per-entry errors stay in that entry.
    fn batch(
        &self,
        body: &Bytes,
        origin: &str,
        principal: &Principal,
        params: &HashMap<String, String>,
    ) -> Reply {
        let parsed: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => {
                return Reply::Json(
                    StatusCode::OK,
                    error_envelope(
                        Envelope::Batch,
                        &[format!(
                            "Cannot parse input stream due to I/O error as JSON document: {e}"
                        )],
                        &[],
                    ),
                );
            }
        };
        let Some(entries) = parsed.get("Batch").and_then(Value::as_array) else {
            return Reply::Json(
                StatusCode::OK,
                error_envelope(
                    Envelope::Batch,
                    &["Batch must be an array of entries".into()],
                    &[],
                ),
            );
        };
        // Whole-request faults (reset, 5xx, gateway timeout) apply to a batch holding result writes.
        let mut results = Vec::new();
        for entry in entries {
            let e = entry.get("Entry").unwrap_or(entry);
            let path = e.get("Path").and_then(Value::as_str).unwrap_or("");
            let method = e
                .get("Method")
                .and_then(Value::as_str)
                .unwrap_or("GET")
                .to_ascii_uppercase();
            let method = Method::from_bytes(method.as_bytes()).unwrap_or(Method::GET);
            let path = match path.find(SERVICE_ROOT) {
                Some(i) => &path[i + SERVICE_ROOT.len()..],
                None => path,
            };
            let (p, q) = path.split_once('?').unwrap_or((path, ""));
            let mut entry_params = params.clone();
            entry_params.extend(parse_params(q));
            let segments: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
            let r = route(
                &method,
                &segments,
                entry_params.contains_key("query"),
                false,
            );
            let entry_body = e.get("Body").cloned().unwrap_or(Value::Null);
            let reply = match r {
                Route::Batch | Route::Authorize => Reply::Json(
                    StatusCode::OK,
                    error_envelope(Envelope::Operation, &["Not allowed in a batch".into()], &[]),
                ),
                other => {
                    self.operation(other, &entry_body, origin, principal, &entry_params, false)
                }
            };
            results.push(batch_result(reply));
        }
        Reply::Json(
            StatusCode::OK,
            json!({"BatchResult": {"_rallyAPIMajor": "2", "_rallyAPIMinor": "0", "Errors": [], "Warnings": [], "Results": results}}),
        )
    }

    fn control(&self, method: &Method, rest: &str, body: &Bytes, origin: &str) -> Reply {
        match (method, rest.trim_end_matches('/')) {
            (&Method::GET, "stats") => Reply::Json(
                StatusCode::OK,
                serde_json::to_value(self.stats()).unwrap_or(Value::Null),
            ),
            (&Method::GET, "faults") => Reply::Json(
                StatusCode::OK,
                serde_json::to_value(self.faults()).unwrap_or(Value::Null),
            ),
            (&Method::POST, "faults") => {
                // Partial updates: fields not given keep their value.
                let current = serde_json::to_value(self.faults()).unwrap_or(Value::Null);
                let patch: Value = match serde_json::from_slice(body) {
                    Ok(v) => v,
                    Err(e) => {
                        return Reply::Json(
                            StatusCode::BAD_REQUEST,
                            json!({"error": format!("invalid JSON: {e}")}),
                        );
                    }
                };
                let mut merged = current;
                if let (Some(m), Some(p)) = (merged.as_object_mut(), patch.as_object()) {
                    for (k, v) in p {
                        m.insert(k.clone(), v.clone());
                    }
                }
                match serde_json::from_value::<FaultConfig>(merged)
                    .map_err(|e| e.to_string())
                    .and_then(|f| self.set_faults(f.clone()).map(|_| f))
                {
                    Ok(f) => Reply::Json(
                        StatusCode::OK,
                        serde_json::to_value(f).unwrap_or(Value::Null),
                    ),
                    Err(e) => Reply::Json(StatusCode::BAD_REQUEST, json!({"error": e})),
                }
            }
            (&Method::POST, "reset") => {
                self.reset();
                Reply::Json(StatusCode::OK, json!({"reset": true}))
            }
            (&Method::GET, path) if path.starts_with("objects/") => {
                match Type::parse(&path["objects/".len()..]) {
                    Some(t) => Reply::Json(
                        StatusCode::OK,
                        json!({"Type": t.name(), "Results": self.objects(t, origin)}),
                    ),
                    None => Reply::Json(StatusCode::NOT_FOUND, json!({"error": "unknown type"})),
                }
            }
            _ => Reply::Json(
                StatusCode::NOT_FOUND,
                json!({"error": "control API: GET stats, GET|POST faults, POST reset, GET objects/<type>"}),
            ),
        }
    }
}

impl State {
    fn dice_u64(&mut self) -> u64 {
        self.dice.token()
    }
}

impl faults::Dice {
    /// A token value from the seeded source.
    pub fn token(&mut self) -> u64 {
        use rand::RngExt;
        self.rng_mut().random::<u64>()
    }
}

/// Inside a batch, only per-entry faults (drop, conflict) make sense.
fn batch_entry_fault(f: WriteFault) -> WriteFault {
    match f {
        WriteFault::Drop | WriteFault::Conflict => f,
        _ => WriteFault::None,
    }
}

fn batch_result(reply: Reply) -> Value {
    let Reply::Json(_, v) = reply else {
        return json!({"Errors": ["entry failed"], "Warnings": []});
    };
    let Some((key, inner)) = v.as_object().and_then(|m| m.iter().next()) else {
        return json!({"Errors": ["entry failed"], "Warnings": []});
    };
    let errors = inner.get("Errors").cloned().unwrap_or(json!([]));
    let warnings = inner.get("Warnings").cloned().unwrap_or(json!([]));
    let object = match key.as_str() {
        "CreateResult" | "OperationResult" => inner.get("Object").cloned(),
        "QueryResult" => Some(
            json!({"Results": inner.get("Results").cloned().unwrap_or(json!([])), "TotalResultCount": inner.get("TotalResultCount").cloned().unwrap_or(json!(0))}),
        ),
        _ => {
            let mut o = inner.clone();
            if let Some(m) = o.as_object_mut() {
                m.remove("Errors");
                m.remove("Warnings");
                m.insert("_type".into(), json!(key));
            }
            Some(o)
        }
    };
    let mut out = serde_json::Map::new();
    if let Some(o) = object.filter(|_| errors.as_array().is_some_and(|e| e.is_empty())) {
        out.insert("Object".into(), o);
    }
    out.insert("Errors".into(), errors);
    out.insert("Warnings".into(), warnings);
    Value::Object(out)
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

const UNAUTHORIZED_HTML: &str = "<html>\n<head>\n<meta http-equiv=\"Content-Type\" content=\"text/html; charset=ISO-8859-1\"/>\n<title>Error 401 Full authentication is required to access this resource</title>\n</head>\n<body><h2>HTTP ERROR 401</h2>\n<p>Problem accessing /slm/webservice/. Reason:\n<pre>    Full authentication is required to access this resource</pre></p><hr /><i><small>Powered by Jetty://</small></i>\n</body>\n</html>\n";

fn respond(reply: Reply, set_cookie: Option<String>, gzip: bool) -> Response<Body> {
    let (status, content_type, bytes, location) = match reply {
        Reply::Json(s, v) => (
            s,
            "application/json; charset=utf-8",
            wsapi::to_bytes(&v),
            None,
        ),
        Reply::Unauthorized => (
            StatusCode::UNAUTHORIZED,
            "text/html; charset=ISO-8859-1",
            Bytes::from_static(UNAUTHORIZED_HTML.as_bytes()),
            None,
        ),
        Reply::Redirect(to) => (StatusCode::FOUND, "text/plain", Bytes::new(), Some(to)),
        Reply::Text(s, t) => (s, "text/html; charset=utf-8", Bytes::from(t), None),
        Reply::Reset => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            Bytes::new(),
            None,
        ),
    };
    let (bytes, encoded) =
        if gzip && bytes.len() > 256 && content_type.starts_with("application/json") {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            match enc.write_all(&bytes).and_then(|_| enc.finish()) {
                Ok(z) => (Bytes::from(z), true),
                Err(_) => (bytes, false),
            }
        } else {
            (bytes, false)
        };
    let mut resp = Response::new(full(bytes));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if encoded {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
    if status == StatusCode::UNAUTHORIZED {
        h.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"Rally ALM\""),
        );
    }
    if let Some(loc) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        h.insert(header::LOCATION, loc);
    }
    if let Some(c) = set_cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        h.append(header::SET_COOKIE, c);
    }
    resp
}

struct SimHandler(Arc<Simulator>);

impl Handler for SimHandler {
    fn call(
        &self,
        req: Request<Incoming>,
        conn: ConnInfo,
    ) -> BoxFuture<Result<Response<Body>, BoxError>> {
        let sim = self.0.clone();
        Box::pin(sim.handle(req, conn))
    }
}
