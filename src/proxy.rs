//! The forwarding core: every request reaches the configured Rally upstream unchanged and every
//! answer reaches the client unchanged, except for the documented header rules and `_ref`
//! rewriting. One request goes through these phases, top to bottom in [`Proxy::handle`]:
//!
//! 1. **identify** — take or make the request id; open the request's tracing span;
//! 2. **admit** — refuse CONNECT and absolute-form targets naming another host (not an open proxy);
//! 3. **forward** — same method, byte-exact path and query, headers minus hop-by-hop, `Host` set
//!    to the upstream, the body streamed as it arrives;
//! 4. **relay** — the answer's head within `upstream.response_timeout`, its body streamed back,
//!    rewritten only where it names the upstream origin;
//! 5. **log** — one access line when the response body ends, with secrets redacted.
//!
//! Failures become [`ProxyError`]s and are answered in one place, [`crate::error::rescue`].

pub mod body;
pub mod headers;
pub mod refs;
pub mod upstream;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tracing::Instrument;

use crate::config::Config;
use crate::credential::Fingerprinter;
use crate::error::{ProxyError, rescue};
use crate::governor::Governor;
use crate::intercept::Interceptor;
use crate::intercept::classify::Operation;
use crate::intercept::context::BuildContext;
use crate::intercept::lookup::Lookups;
use crate::metrics::{Direction, DirectionLabels, Metrics};
use crate::redact;
use crate::server::{Body, BoxError, BoxFuture, ConnInfo, Handler};
use body::{Ending, Observed};
use upstream::UpstreamClient;

/// Header carrying the request id, propagated or generated.
pub const REQUEST_ID: &str = "x-request-id";

/// Shared state of the forwarding path.
pub struct Proxy {
    cfg: Arc<Config>,
    client: UpstreamClient,
    metrics: Arc<Metrics>,
    upstream_origin: String,
    upstream_authority: HeaderValue,
    /// TestCaseResult interception (always present in `serve`; tests may run without).
    interceptor: Option<Interceptor>,
    fingerprints: Arc<Fingerprinter>,
    governor: Arc<Governor>,
    health: Arc<crate::admin::UpstreamHealth>,
}

impl Proxy {
    pub fn new(
        cfg: Arc<Config>,
        client: UpstreamClient,
        metrics: Arc<Metrics>,
        context: Arc<BuildContext>,
        journal: Option<crate::journal::Journal>,
    ) -> Result<Self, BoxError> {
        let authority = cfg
            .upstream
            .origin
            .authority()
            .ok_or("upstream has no authority")?
            .as_str()
            .to_string();
        let upstream_authority = HeaderValue::from_str(&authority)?;
        let rule_fields: Vec<String> = cfg.guard.rules.iter().map(|r| r.field.clone()).collect();
        let fingerprints = Arc::new(Fingerprinter::new());
        let governor = Arc::new(Governor::new(
            cfg.upstream.max_concurrency_per_credential,
            cfg.upstream.max_queue_per_credential,
            cfg.upstream.queue_timeout,
        ));
        let lookups = Lookups::new(
            client.clone(),
            governor.clone(),
            cfg.upstream.origin_string(),
            upstream_authority.clone(),
            cfg.upstream.response_timeout,
            &rule_fields,
            cfg.guard.cache_ttl,
        );
        let interceptor = Interceptor::new(
            cfg.clone(),
            lookups,
            context,
            metrics.clone(),
            fingerprints.clone(),
            journal,
        );
        Ok(Proxy {
            upstream_origin: cfg.upstream.origin_string(),
            upstream_authority,
            cfg,
            client,
            metrics,
            interceptor: Some(interceptor),
            fingerprints,
            governor,
            health: Arc::new(crate::admin::UpstreamHealth::default()),
        })
    }

    /// Reports upstream answers and failures to `health` (the status page reads it).
    pub fn with_health(mut self, health: Arc<crate::admin::UpstreamHealth>) -> Self {
        self.health = health;
        self
    }

    /// One unauthenticated request to the upstream while it is unreachable: any answer (Rally
    /// says 401) marks it reachable again; another connect failure keeps it down.
    pub async fn probe(&self) {
        let uri = format!(
            "{}/slm/webservice/v2.0/security/authorize",
            self.upstream_origin
        );
        let Ok(req) = Request::get(uri)
            .header(header::HOST, self.upstream_authority.clone())
            .body(
                http_body_util::Empty::new()
                    .map_err(crate::server::box_never)
                    .boxed_unsync(),
            )
        else {
            return;
        };
        match tokio::time::timeout(
            self.cfg.upstream.connect_timeout * 2,
            self.client.request(req),
        )
        .await
        {
            Ok(Ok(_)) => self.health.ok(),
            Ok(Err(e)) if e.is_connect() => self
                .health
                .unreachable(&ProxyError::UpstreamUnreachable(error_chain(&e)).to_string()),
            // Connected but no answer in time: not down, not proven up.
            _ => {}
        }
    }

    /// The interception layer's lookups (for replay and sweep).
    pub fn lookups(&self) -> Option<&Lookups> {
        self.interceptor.as_ref().map(|i| &i.lookups)
    }

    /// The token that makes held writes answer at once (cancelled near the shutdown deadline).
    pub fn give_up(&self) -> Option<tokio_util::sync::CancellationToken> {
        self.interceptor.as_ref().map(|i| i.give_up.clone())
    }

    /// Handles one request; always answers.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>, conn: ConnInfo) -> Response<Body> {
        let start = Instant::now();
        let received_at = crate::wsapi::format_date(time::OffsetDateTime::now_utc());
        let request_id = request_id(&req);
        let span = tracing::info_span!("request", id = %request_id);
        let method = req.method().clone();
        let path = redact::path_and_query(
            req.uri()
                .path_and_query()
                .map(|pq| pq.as_str())
                .unwrap_or("/"),
        )
        .into_owned();
        let bytes_in = Arc::new(AtomicU64::new(0));

        let (mut resp, upstream_ms) = match self
            .clone()
            .forward(req, conn, bytes_in.clone(), received_at, request_id.clone())
            .instrument(span.clone())
            .await
        {
            Ok(pair) => pair,
            Err(err) => {
                span.in_scope(|| tracing::warn!(error = %err, code = err.code(), "answering with a sidecar error"));
                self.metrics
                    .proxy_errors
                    .get_or_create(&crate::metrics::ErrorLabels {
                        kind: err.code().into(),
                    })
                    .inc();
                (rescue(&err), None)
            }
        };
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            resp.headers_mut().insert(REQUEST_ID, v);
        }
        let status = resp.status();
        self.metrics.record_request(&method, status);

        let metrics = self.metrics.clone();
        let done = Box::new(move |bytes_out: u64, ending: Ending| {
            metrics
                .bytes
                .get_or_create(&DirectionLabels {
                    direction: Direction::Response,
                })
                .inc_by(bytes_out);
            metrics
                .bytes
                .get_or_create(&DirectionLabels {
                    direction: Direction::Request,
                })
                .inc_by(bytes_in.load(std::sync::atomic::Ordering::Relaxed));
            span.in_scope(|| {
                tracing::info!(
                    target: "rally_sidecar::access",
                    method = %method,
                    path = %path,
                    status = status.as_u16(),
                    bytes_in = bytes_in.load(std::sync::atomic::Ordering::Relaxed),
                    bytes_out,
                    total_ms = start.elapsed().as_secs_f64() * 1000.0,
                    upstream_ms = upstream_ms.unwrap_or(-1.0),
                    complete = ending == Ending::Complete,
                    "access"
                )
            });
        });
        resp.map(|b| Observed::new(b, Arc::new(AtomicU64::new(0)), Some(done)).boxed_unsync())
    }

    /// Phases 2–4. Returns the response and the upstream latency in milliseconds.
    async fn forward(
        self: Arc<Self>,
        req: Request<Incoming>,
        conn: ConnInfo,
        bytes_in: Arc<AtomicU64>,
        received_at: String,
        request_id: String,
    ) -> Result<(Response<Body>, Option<f64>), ProxyError> {
        self.admit(&req, &conn)?;
        // Classified once: only TestCaseResult writes leave the streaming path.
        let op = crate::intercept::classify::classify(req.method(), req.uri().path());
        if let (Some(icpt), false) = (&self.interceptor, op == Operation::Passthrough) {
            return crate::intercept::handle(&self, icpt, op, req, conn, received_at, request_id)
                .await;
        }
        let client_origin = client_origin(&req, conn.tls);
        let is_head = req.method() == Method::HEAD;
        let (parts, incoming) = req.into_parts();
        let body = Observed::new(incoming, bytes_in, None).boxed_unsync();
        let (resp, ms) = self.send(parts, body, &conn).await?;
        Ok((self.relay(resp, client_origin.as_deref(), is_head), ms))
    }

    /// Forwards a request whose (possibly rewritten) body is already in memory, and relays
    /// the answer like any other.
    pub(crate) async fn forward_buffered(
        &self,
        parts: http::request::Parts,
        body: bytes::Bytes,
        client_origin: Option<&str>,
        conn: &ConnInfo,
    ) -> Result<(Response<Body>, Option<f64>), ProxyError> {
        let is_head = parts.method == Method::HEAD;
        let (resp, ms) = self.send_buffered(parts, body, conn).await?;
        Ok((self.relay(resp, client_origin, is_head), ms))
    }

    /// Sends a buffered request upstream; the caller reads the answer itself.
    pub(crate) async fn send_buffered(
        &self,
        mut parts: http::request::Parts,
        body: bytes::Bytes,
        conn: &ConnInfo,
    ) -> Result<(Response<Body>, Option<f64>), ProxyError> {
        parts.headers.remove(header::TRANSFER_ENCODING);
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        let body = http_body_util::Full::new(body)
            .map_err(crate::server::box_never)
            .boxed_unsync();
        self.send(parts, body, conn).await
    }

    /// Phase 3: the upstream request (same method, byte-exact path and query, headers minus
    /// hop-by-hop, `Host` set to the upstream) sent with the response-head timeout.
    async fn send(
        &self,
        mut parts: http::request::Parts,
        body: Body,
        conn: &ConnInfo,
    ) -> Result<(Response<Body>, Option<f64>), ProxyError> {
        // Within the caller's slots (anonymous requests have none to count against).
        let slot = match self.fingerprints.of(&parts.headers) {
            Some(c) => Some(
                self.governor
                    .acquire(c.fingerprint())
                    .await
                    .map_err(|e| ProxyError::Overloaded(e.to_string()))?,
            ),
            None => None,
        };
        let pq = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        parts.uri = http::Uri::builder()
            .scheme(self.cfg.upstream.origin.scheme_str().unwrap_or("https"))
            .authority(self.upstream_authority.to_str().unwrap_or_default())
            .path_and_query(pq)
            .build()
            .map_err(|e| ProxyError::BadRequest(format!("cannot build upstream URI: {e}")))?;
        parts.version = Version::HTTP_11;
        let forwarded = self
            .cfg
            .upstream
            .forwarded_headers
            .then_some((&conn.peer, if conn.tls { "https" } else { "http" }));
        headers::request_headers(&mut parts.headers, &self.upstream_authority, forwarded);
        let upstream_req = Request::from_parts(parts, body);

        let sent = Instant::now();
        let result = tokio::time::timeout(
            self.cfg.upstream.response_timeout,
            self.client.request(upstream_req),
        )
        .await;
        let upstream_ms = sent.elapsed().as_secs_f64() * 1000.0;
        self.metrics
            .upstream_latency
            .observe(sent.elapsed().as_secs_f64());
        match result {
            Err(_) => {
                let err = ProxyError::UpstreamTimeout(self.cfg.upstream.response_timeout);
                self.health.failed(&err.to_string());
                Err(err)
            }
            Ok(Err(e)) if e.is_connect() => {
                let err = ProxyError::UpstreamUnreachable(error_chain(&e));
                self.health.unreachable(&err.to_string());
                Err(err)
            }
            Ok(Err(e)) => {
                let err = ProxyError::UpstreamBroken(error_chain(&e));
                self.health.failed(&err.to_string());
                Err(err)
            }
            Ok(Ok(resp)) => {
                self.health.ok();
                // The slot is held until the answer's body has been relayed.
                let resp = resp.map(|b| {
                    b.map_err(crate::server::box_hyper)
                        .map_frame(move |f| {
                            let _held = &slot;
                            f
                        })
                        .boxed_unsync()
                });
                Ok((resp, Some(upstream_ms)))
            }
        }
    }

    /// Phase 2: not an open proxy.
    fn admit(&self, req: &Request<Incoming>, conn: &ConnInfo) -> Result<(), ProxyError> {
        if req.method() == Method::CONNECT {
            return Err(ProxyError::Connect(self.upstream_origin.clone()));
        }
        // HTTP/2 always carries an authority (the sidecar's own); only an HTTP/1 absolute-form
        // target can name another host. It is accepted when it names the upstream (a client
        // that uses the sidecar as its forward proxy for Rally) or the sidecar's own address;
        // anything else is refused. The sidecar never contacts another host either way.
        if req.version() <= Version::HTTP_11
            && let Some(authority) = req.uri().authority()
        {
            let upstream = self.upstream_authority.to_str().unwrap_or_default();
            let named = authority.as_str();
            let own = named == conn.local.to_string()
                || (authority.port_u16() == Some(conn.local.port())
                    && matches!(authority.host(), "localhost" | "127.0.0.1" | "[::1]"));
            if !own && !named.eq_ignore_ascii_case(upstream) {
                return Err(ProxyError::ForeignTarget {
                    target: named.to_string(),
                    upstream: self.upstream_origin.clone(),
                });
            }
        }
        Ok(())
    }

    /// Phase 4: hop-by-hop headers out, `Location` and JSON bodies rewritten to the client's origin.
    fn relay(
        &self,
        resp: Response<Body>,
        client_origin: Option<&str>,
        is_head: bool,
    ) -> Response<Body> {
        let (mut parts, mut body) = resp.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);

        let rewriter = client_origin
            .filter(|_| self.cfg.rewrite_refs)
            .and_then(|to| refs::Rewriter::new(&self.upstream_origin, to));
        if let Some(rw) = rewriter {
            if let Some(loc) = parts
                .headers
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                && let Some(new) = refs::rewrite_location(
                    loc,
                    &self.upstream_origin,
                    client_origin.unwrap_or_default(),
                )
                && let Ok(v) = HeaderValue::from_str(&new)
            {
                parts.headers.insert(header::LOCATION, v);
            }
            let has_body = !is_head
                && parts.status != StatusCode::NO_CONTENT
                && parts.status != StatusCode::NOT_MODIFIED
                && !parts.status.is_informational();
            if has_body
                && is_json(&parts.headers)
                && let Some(coding) = coding(&parts.headers)
            {
                parts.headers.remove(header::CONTENT_LENGTH);
                self.metrics.ref_rewrites.inc();
                body = refs::rewrite_body(body, coding, rw);
            }
        }
        Response::from_parts(parts, body)
    }
}

/// The client-facing handler.
pub struct ProxyHandler(pub Arc<Proxy>);

impl Handler for ProxyHandler {
    fn call(
        &self,
        req: Request<Incoming>,
        conn: ConnInfo,
    ) -> BoxFuture<Result<Response<Body>, BoxError>> {
        let proxy = self.0.clone();
        Box::pin(async move { Ok(proxy.handle(req, conn).await) })
    }
}

/// `X-Request-Id` if the client sent a sane one, else a new UUID.
fn request_id<B>(req: &Request<B>) -> String {
    req.headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// The origin the client used: scheme of the listener + `Host` (or the HTTP/2 authority).
fn client_origin<B>(req: &Request<B>, tls: bool) -> Option<String> {
    client_origin_of(req.headers(), req.uri(), tls)
}

/// [`client_origin`] from the parts of a request.
pub(crate) fn client_origin_of(
    headers: &http::HeaderMap,
    uri: &http::Uri,
    tls: bool,
) -> Option<String> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| uri.authority().map(|a| a.as_str().to_string()))?;
    let origin = format!("{}://{}", if tls { "https" } else { "http" }, host);
    refs::safe_origin(&origin).then_some(origin)
}

fn is_json(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|ct| {
            let ct = ct.to_ascii_lowercase();
            ct.contains("json") || ct.contains("javascript")
        })
        .unwrap_or(false)
}

fn coding(headers: &http::HeaderMap) -> Option<refs::Coding> {
    match headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
    {
        None => Some(refs::Coding::Identity),
        Some(v) if v.trim().eq_ignore_ascii_case("identity") => Some(refs::Coding::Identity),
        Some(v) if v.trim().eq_ignore_ascii_case("gzip") => Some(refs::Coding::Gzip),
        // Other codings (br, deflate, stacked) pass through untouched.
        Some(_) => None,
    }
}

/// `a: b: c` from an error and its sources, for messages that say what really failed.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut src = err.source();
    while let Some(s) = src {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        src = s.source();
    }
    out
}
