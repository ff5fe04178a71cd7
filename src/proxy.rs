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

pub(crate) mod body;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use tracing::Instrument;

use crate::config::Config;
use crate::error::{ProxyError, rescue};
use crate::intercept::classify::Operation;
use crate::intercept::{Interceptor, Outcome};
use crate::rally::Rally;
use crate::rally::governor::Priority;
use crate::refs;
use crate::request::RequestCtx;
use crate::server::{Body, BoxError, BoxFuture, ConnInfo, Handler};
use crate::telemetry::metrics::{Direction, DirectionLabels, Metrics};
use crate::telemetry::redact;
use crate::wsapi;
use body::{Counted, Ending, Observed};
use prometheus_client::metrics::counter::Counter;

/// Shared state of the forwarding path.
pub(crate) struct Proxy {
    cfg: Arc<Config>,
    rally: Arc<Rally>,
    metrics: Arc<Metrics>,
    interceptor: Arc<Interceptor>,
    /// The two byte counters, looked up once (a labelled lookup per request costs a hash and
    /// a lock).
    bytes_in: Counter,
    bytes_out: Counter,
}

impl Proxy {
    pub(crate) fn new(
        cfg: Arc<Config>,
        rally: Arc<Rally>,
        metrics: Arc<Metrics>,
        interceptor: Arc<Interceptor>,
    ) -> Self {
        let bytes = |direction| {
            metrics
                .bytes
                .get_or_create(&DirectionLabels { direction })
                .clone()
        };
        Proxy {
            bytes_in: bytes(Direction::Request),
            bytes_out: bytes(Direction::Response),
            cfg,
            rally,
            metrics,
            interceptor,
        }
    }

    /// The interception layer (the drain waits for its background read-backs).
    pub(crate) fn interceptor(&self) -> &Arc<Interceptor> {
        &self.interceptor
    }

    /// The token that makes held writes answer at once (cancelled near the shutdown deadline).
    pub(crate) fn give_up(&self) -> tokio_util::sync::CancellationToken {
        self.interceptor.give_up.clone()
    }

    /// Handles one request; always answers. Phase 1, **identify**: the request's context is
    /// built here, once, and every later phase reads it. The two paths are two futures, each
    /// boxed once: a held write does not carry the streaming path's state, and a streamed
    /// request does not carry the interception path's (guard, journal, confirmation).
    pub(crate) fn handle(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        conn: ConnInfo,
    ) -> BoxFuture<Result<Response<Body>, BoxError>> {
        // Classified first: only an intercepted write needs its arrival formatted as a date.
        let op = crate::intercept::classify::classify(req.method(), req.uri().path());
        let started = self.identify(&req, conn, op.is_intercepted());
        // The credential's fingerprint (an HMAC) is computed once, here: `Rally::send` takes it
        // from the request's extensions, whichever path sends it.
        if let Some(cred) = &started.ctx.credential {
            req.extensions_mut().insert(cred.clone());
        }
        if op.is_intercepted() {
            Box::pin(async move {
                let forwarded = self
                    .intercepted(&started.ctx, op, req)
                    .instrument(started.span.clone())
                    .await;
                Ok(self.answer(started, forwarded))
            })
        } else {
            Box::pin(async move {
                // Only debug events (hyper's) happen inside the streaming path; the sidecar's
                // own are written in the span afterwards. So the span is entered on every poll
                // only when some filter lets debug events through.
                let streamed = self.stream(&started.ctx, &op, req);
                let forwarded =
                    if tracing::level_filters::LevelFilter::current() >= tracing::Level::DEBUG {
                        streamed.instrument(started.span.clone()).await
                    } else {
                        streamed.await
                    };
                Ok(self.answer(started, forwarded))
            })
        }
    }

    /// The request's context, span and the parts of it the access line names.
    fn identify(&self, req: &Request<Incoming>, conn: ConnInfo, intercepted: bool) -> Started {
        let credential = self.rally.credential(req.headers());
        let ctx = RequestCtx::new(
            request_id(req),
            conn,
            client_origin_of(req.headers(), req.uri(), conn.tls),
            credential,
            intercepted,
        );
        // Learn whose credential this is (once, in the background): Rally's cap is per user,
        // so the governor counts a user's keys together as soon as it knows. Not again while
        // a lookup has failed recently (a spawned task per request costs the streaming path),
        // and not for an intercepted write, which waits for the same lookup itself.
        if let Some(cred) = ctx.credential.as_ref().filter(|c| {
            !intercepted && !self.rally.knows_user(c) && !self.interceptor.lookups.owner_unknown(c)
        }) {
            let (lookups, cred) = (self.interceptor.lookups.clone(), cred.clone());
            tokio::spawn(async move {
                let _ = lookups.owner(&cred).await;
            });
        }
        Started {
            span: tracing::info_span!("request", id = %ctx.id),
            ctx,
            method: req.method().clone(),
            // Kept as received, redacted only when the access line is written: a cheap
            // reference-counted copy for a streamed request; copied out for an intercepted
            // write, since the reference would keep hyper's whole read buffer (8 KiB) alive
            // for as long as the write is held.
            target: req.uri().path_and_query().map(|pq| {
                if intercepted {
                    pq.as_str().parse().unwrap_or_else(|_| pq.clone())
                } else {
                    pq.clone()
                }
            }),
        }
    }

    /// The last phase: a failure rescued into an answer, the request id, the metrics, and
    /// the access line written when the answer's body ends.
    fn answer(
        &self,
        started: Started,
        forwarded: Result<Response<Body>, ProxyError>,
    ) -> Response<Body> {
        let Started {
            ctx,
            span,
            method,
            target,
        } = started;
        let mut resp = match forwarded {
            Ok(resp) => resp,
            Err(err) => {
                span.in_scope(|| tracing::warn!(error = %err, code = err.code(), "answering with a sidecar error"));
                self.metrics
                    .proxy_errors
                    .get_or_create(&crate::telemetry::metrics::ErrorLabels {
                        kind: err.code().into(),
                    })
                    .inc();
                rescue(&err)
            }
        };
        if let Ok(v) = HeaderValue::from_str(&ctx.id) {
            resp.headers_mut().insert(REQUEST_ID, v);
        }
        let status = resp.status();
        self.metrics.record_request(&method, status);

        let access = AccessLog {
            ctx,
            span,
            method,
            target,
            status,
            bytes_in: self.bytes_in.clone(),
            bytes_out: self.bytes_out.clone(),
        };
        resp.map(|b| Observed::new(b, access).boxed_unsync())
    }

    /// Pass-through (phases 2–4 for everything that is not an intercepted write): admit,
    /// forward with the body streamed as it arrives, relay.
    async fn stream(
        &self,
        ctx: &RequestCtx,
        op: &Operation,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, ProxyError> {
        self.admit(&req, &ctx.conn)?;
        self.count_other_version(op);
        let is_head = req.method() == Method::HEAD;
        let (parts, incoming) = req.into_parts();
        // A body known to be empty (most GETs) is sent as is: nothing to count.
        let body = if incoming.is_end_stream() {
            incoming.map_err(crate::server::box_hyper).boxed_unsync()
        } else {
            // A streamed body may not stall longer than listen.body_read_timeout between chunks.
            let paced =
                crate::server::deadline::Paced::new(incoming, self.cfg.listen.body_read_timeout);
            Counted::new(paced, ctx.bytes_in.clone()).boxed_unsync()
        };
        let sent = self
            .rally
            .send(parts, body, Some(&ctx.conn), Priority::Normal)
            .await?;
        ctx.record_upstream(sent.upstream_ms);
        Ok(self.relay(sent.response, ctx.client_origin.as_deref(), is_head))
    }

    /// Phases 2–4 for a TestCaseResult write: admit, hand it to the interception layer, and
    /// forward what it gives back from a buffer.
    async fn intercepted(
        &self,
        ctx: &RequestCtx,
        op: Operation,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, ProxyError> {
        self.admit(&req, &ctx.conn)?;
        match crate::intercept::handle(&self.interceptor, ctx, op, req).await? {
            Outcome::Answer(resp) => Ok(resp),
            Outcome::Forward {
                parts,
                body,
                headers,
            } => {
                // Boxed: sending is a large future, and inline its state would be carried by
                // every held write too, which never takes this branch.
                let mut resp = Box::pin(self.forward_buffered(ctx, parts, body)).await?;
                for (k, v) in headers {
                    if let Ok(v) = HeaderValue::from_str(&v) {
                        resp.headers_mut().insert(k, v);
                    }
                }
                Ok(resp)
            }
        }
    }

    /// Counts requests for other WSAPI versions (they pass through untouched).
    fn count_other_version(&self, op: &Operation) {
        if let Operation::OtherVersion { version } = op {
            self.metrics
                .other_versions
                .get_or_create(&crate::telemetry::metrics::VersionLabels {
                    version: version.clone(),
                })
                .inc();
        }
    }

    /// Forwards a request whose (possibly rewritten) body is already in memory, and relays
    /// the answer like any other.
    async fn forward_buffered(
        &self,
        ctx: &RequestCtx,
        parts: http::request::Parts,
        body: bytes::Bytes,
    ) -> Result<Response<Body>, ProxyError> {
        let is_head = parts.method == Method::HEAD;
        let sent = self
            .rally
            .send_buffered(parts, body, Some(&ctx.conn), Priority::Normal)
            .await?;
        ctx.record_upstream(sent.upstream_ms);
        Ok(self.relay(sent.response, ctx.client_origin.as_deref(), is_head))
    }

    /// Phase 2: not an open proxy.
    fn admit(&self, req: &Request<Incoming>, conn: &ConnInfo) -> Result<(), ProxyError> {
        if req.method() == Method::CONNECT {
            return Err(ProxyError::Connect(self.rally.origin().to_string()));
        }
        // HTTP/2 always carries an authority (the sidecar's own); only an HTTP/1 absolute-form
        // target can name another host. It is accepted when it names the upstream (a client
        // that uses the sidecar as its forward proxy for Rally) or the sidecar's own address;
        // anything else is refused. The sidecar never contacts another host either way.
        if req.version() <= Version::HTTP_11
            && let Some(authority) = req.uri().authority()
        {
            let upstream = self.rally.authority().to_str().unwrap_or_default();
            let named = authority.as_str();
            let own = named == conn.local.to_string()
                || (authority.port_u16() == Some(conn.local.port())
                    && matches!(authority.host(), "localhost" | "127.0.0.1" | "[::1]"));
            if !own && !named.eq_ignore_ascii_case(upstream) {
                return Err(ProxyError::ForeignTarget {
                    target: named.to_string(),
                    upstream: self.rally.origin().to_string(),
                });
            }
        }
        Ok(())
    }

    /// Phase 4: hop-by-hop headers out, `Location` and JSON bodies rewritten to the client's
    /// origin. A rewriter is built only for what it will rewrite: most answers stream as they
    /// came.
    fn relay(
        &self,
        resp: Response<Body>,
        client_origin: Option<&str>,
        is_head: bool,
    ) -> Response<Body> {
        let (mut parts, mut body) = resp.into_parts();
        crate::rally::headers::strip_hop_by_hop(&mut parts.headers);
        let Some(to) = client_origin.filter(|_| self.cfg.rewrite_refs) else {
            return Response::from_parts(parts, body);
        };
        let from = self.rally.origin();
        if let Some(loc) = parts
            .headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            && let Some(new) = refs::rewrite_location(loc, from, to)
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
            && let Some(rw) = refs::Rewriter::new(from, to)
        {
            parts.headers.remove(header::CONTENT_LENGTH);
            self.metrics.ref_rewrites.inc();
            body = refs::rewrite_body(body, coding, rw);
        }
        Response::from_parts(parts, body)
    }
}

/// Phase 5, **log**: what the access line needs, kept until the response body ends. Written
/// once, from [`Observed`], with the real byte counts.
struct AccessLog {
    ctx: RequestCtx,
    span: tracing::Span,
    method: Method,
    /// The request target as received; redacted when the line is written.
    target: Option<http::uri::PathAndQuery>,
    status: StatusCode,
    bytes_in: Counter,
    bytes_out: Counter,
}

impl body::Finish for AccessLog {
    fn finish(self, bytes_out: u64, ending: Ending) {
        let bytes_in = self.ctx.bytes_in.load(Ordering::Relaxed);
        self.bytes_out.inc_by(bytes_out);
        self.bytes_in.inc_by(bytes_in);
        let path = redact::path_and_query(self.target.as_ref().map_or("/", |pq| pq.as_str()));
        self.span.in_scope(|| {
            tracing::info!(
                target: "rally_sidecar::access",
                method = %self.method,
                path = %path,
                status = self.status.as_u16(),
                bytes_in,
                bytes_out,
                total_ms = self.ctx.started.elapsed().as_secs_f64() * 1000.0,
                upstream_ms = self.ctx.upstream_ms().unwrap_or(-1.0),
                complete = ending == Ending::Complete,
                "access"
            )
        });
    }
}

/// The client-facing handler.
pub(crate) struct ProxyHandler(pub Arc<Proxy>);

/// What [`Proxy::identify`] learned of a request, carried to [`Proxy::answer`].
struct Started {
    ctx: RequestCtx,
    span: tracing::Span,
    method: Method,
    target: Option<http::uri::PathAndQuery>,
}

impl Handler for ProxyHandler {
    fn call(
        &self,
        req: Request<Incoming>,
        conn: ConnInfo,
    ) -> BoxFuture<Result<Response<Body>, BoxError>> {
        self.0.clone().handle(req, conn)
    }
}

/// The request id header, named once (a `&str` name is parsed on every use).
const REQUEST_ID: header::HeaderName = header::HeaderName::from_static(wsapi::headers::REQUEST_ID);

/// `X-Request-Id` if the client sent a sane one, else a new UUID.
fn request_id<B>(req: &Request<B>) -> String {
    req.headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| {
            let mut buf = uuid::Uuid::encode_buffer();
            uuid::Uuid::new_v4()
                .hyphenated()
                .encode_lower(&mut buf)
                .to_string()
        })
}

/// The origin the client used: scheme of the listener + `Host` (or the HTTP/2 authority).
fn client_origin_of(headers: &http::HeaderMap, uri: &http::Uri, tls: bool) -> Option<String> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))?;
    let scheme = if tls { "https://" } else { "http://" };
    let mut origin = String::with_capacity(scheme.len() + host.len());
    origin.push_str(scheme);
    origin.push_str(host);
    refs::safe_origin(&origin).then_some(origin)
}

/// Whether a `Content-Type` names JSON (or JSONP's JavaScript), in any letter case.
fn is_json(headers: &http::HeaderMap) -> bool {
    let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let ct = ct.as_bytes();
    let has = |word: &[u8]| ct.windows(word.len()).any(|w| w.eq_ignore_ascii_case(word));
    has(b"json") || has(b"javascript")
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
