//! The one Rally client. Every request the sidecar sends to Rally goes through [`Rally`]:
//! client traffic streamed through the proxy, intercepted writes sent (and re-sent) from a
//! buffer, and the sidecar's own reads (guard lookups, read-backs, fingerprint searches) made
//! with the caller's credential by [`lookups`]. So this is the one place that owns the pooled
//! connection ([`connect`]), the concurrency budget per Rally user ([`governor`]), the caller's
//! credential and its fingerprint ([`credential`]), and what was last seen of Rally's health
//! ([`health`]). The commands (`check`, `sweep`, `journal replay`) use it the same way.

pub(crate) mod coalesce;
pub(crate) mod connect;
pub(crate) mod credential;
pub(crate) mod governor;
pub(crate) mod headers;
pub(crate) mod health;
pub(crate) mod lookups;
pub(crate) mod slots;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use serde_json::Value;

use crate::config::Config;
use crate::error::ProxyError;
use crate::server::{Body, ConnInfo};
use crate::telemetry::metrics::Metrics;
use crate::wsapi::SERVICE_ROOT;
use connect::{Route, UpstreamClient, UpstreamError};
use credential::{Credential, Fingerprinter};
use governor::{Governor, Priority};
use health::UpstreamHealth;
use slots::Slots;

/// Largest answer the sidecar reads for itself (lookups, read-backs, searches).
const MAX_READ: usize = 4 * 1024 * 1024;

/// The Rally upstream, shared by the proxy, the interception layer and the commands.
pub struct Rally {
    client: UpstreamClient,
    cfg: Arc<Config>,
    origin: String,
    authority: HeaderValue,
    /// Turns per Rally user: the local governor, or the fleet's budget ([`Rally::with_fleet`]).
    slots: Slots,
    fingerprints: Fingerprinter,
    /// Credential fingerprint → its Rally user, once known: the governor's key.
    users: moka::sync::Cache<String, Arc<str>>,
    health: Arc<UpstreamHealth>,
    metrics: Arc<Metrics>,
}

/// Rally's answer: the response (its body still streaming) and how long its head took.
pub struct Sent {
    pub response: Response<Body>,
    pub upstream_ms: f64,
}

impl Rally {
    /// Builds the pooled client for `cfg.upstream`; reports the route it takes.
    pub fn new(
        cfg: Arc<Config>,
        metrics: Arc<Metrics>,
        health: Arc<UpstreamHealth>,
    ) -> Result<(Rally, Route), UpstreamError> {
        let (client, route) = connect::build(&cfg.upstream)?;
        let authority = cfg
            .upstream
            .origin
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            .ok_or(UpstreamError::NoAuthority)?;
        let governor = Governor::new(
            cfg.upstream.max_concurrency_per_credential,
            cfg.upstream.max_queue_per_credential,
            cfg.upstream.queue_timeout,
        );
        Ok((
            Rally {
                client,
                origin: cfg.upstream.origin_string(),
                authority,
                slots: Slots::Local(governor),
                fingerprints: Fingerprinter::new(),
                users: moka::sync::Cache::builder()
                    .max_capacity(100_000)
                    .time_to_idle(Duration::from_secs(3600))
                    .build(),
                health,
                metrics,
                cfg,
            },
            route,
        ))
    }

    /// Names writers with digests keyed by `key` (the journal's secret) instead of a key of
    /// this process's own.
    pub fn with_writer_key(mut self, key: [u8; 32]) -> Rally {
        self.fingerprints = Fingerprinter::with_key(key);
        self
    }

    /// Fleet mode: every request to Rally takes a permit of the fleet's budget for its Rally
    /// user instead of a local slot, and writers are named by the fleet's writer key, so one
    /// credential has one digest (and one budget lane) on every pod.
    pub fn with_fleet(mut self, fleet: &crate::fleet::Fleet) -> Rally {
        self.slots = Slots::fleet(fleet.budget());
        self.fingerprints = Fingerprinter::with_key(*fleet.writer_key());
        self
    }

    /// The client a command uses (`check`, `sweep`, `journal replay`): its own metrics and
    /// health, nothing shared with a running sidecar.
    pub fn standalone(cfg: &Config) -> Result<(Arc<Rally>, Route), UpstreamError> {
        let (rally, route) = Rally::new(
            Arc::new(cfg.clone()),
            Arc::new(Metrics::new()),
            Arc::new(UpstreamHealth::default()),
        )?;
        Ok((Arc::new(rally), route))
    }

    /// `scheme://host[:port]` of Rally.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// `host[:port]` of Rally, as a `Host` header.
    pub fn authority(&self) -> &HeaderValue {
        &self.authority
    }

    /// What the sidecar last saw of Rally.
    pub fn health(&self) -> &Arc<UpstreamHealth> {
        &self.health
    }

    /// The credential a request carries, if any.
    pub fn credential(&self, headers: &http::HeaderMap) -> Option<Credential> {
        self.fingerprints.of(headers)
    }

    /// Records the Rally user a credential belongs to: from then on its requests count
    /// against that user's slots, shared with every other key of the same user (Rally's cap
    /// is per user: KB 95713, KB 10814).
    pub fn learn_user(&self, cred: &Credential, user: &str) {
        let (users, fp) = (self.users.clone(), cred.fingerprint().to_string());
        let lane: Arc<str> = Arc::from(format!("user:{user}"));
        // In fleet mode the switch waits until every pod counts the credential as this user.
        self.slots
            .learn(format!("credential:{fp}"), lane.to_string(), move || {
                users.insert(fp, lane)
            });
    }

    /// Whether the credential's Rally user is known.
    pub fn knows_user(&self, cred: &Credential) -> bool {
        self.users.contains_key(cred.fingerprint())
    }

    /// The key a credential's requests are governed and coalesced under: its Rally user once
    /// known, else the credential.
    pub fn lane_key(&self, cred: &Credential) -> Arc<str> {
        self.lane_of(cred.fingerprint())
    }

    /// The governor's key for a credential: its Rally user once known, else the credential.
    fn lane_of(&self, fingerprint: &str) -> Arc<str> {
        self.users
            .get(fingerprint)
            .unwrap_or_else(|| Arc::from(format!("credential:{fingerprint}")))
    }

    /// Requests waiting for a slot, across all users (for metrics).
    pub fn waiting(&self) -> usize {
        self.slots.waiting()
    }

    /// Sends one request to Rally within its credential's slots (anonymous requests have none
    /// to count against): same method, byte-exact path and query, headers minus hop-by-hop,
    /// `Host` set to Rally; `X-Forwarded-*` added for a client's request (`conn`). The head
    /// must arrive within `upstream.response_timeout`; the slot is held until the body has
    /// been read or dropped.
    pub async fn send(
        &self,
        mut parts: http::request::Parts,
        body: Body,
        conn: Option<&ConnInfo>,
        priority: Priority,
    ) -> Result<Sent, ProxyError> {
        // The proxy has already fingerprinted a client's credential (an HMAC) and passes it
        // along in the request's extensions rather than have it computed twice.
        let cred = parts
            .extensions
            .remove::<Credential>()
            .or_else(|| self.fingerprints.of(&parts.headers));
        let slot = match cred {
            Some(c) => Some(
                self.slots
                    .acquire(&self.lane_of(c.fingerprint()), priority)
                    .await?,
            ),
            None => None,
        };
        let pq = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        // Scheme and authority are the configured origin's, already parsed: copied, not
        // parsed again from text on every request.
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(
            self.cfg
                .upstream
                .origin
                .scheme()
                .cloned()
                .unwrap_or(http::uri::Scheme::HTTPS),
        );
        uri.authority = self.cfg.upstream.origin.authority().cloned();
        uri.path_and_query = Some(pq);
        parts.uri = http::Uri::from_parts(uri)
            .map_err(|e| ProxyError::BadRequest(format!("cannot build upstream URI: {e}")))?;
        parts.version = Version::HTTP_11;
        let forwarded = conn
            .filter(|_| self.cfg.upstream.forwarded_headers)
            .map(|c| (&c.peer, if c.tls { "https" } else { "http" }));
        headers::request_headers(&mut parts.headers, &self.authority, forwarded);
        let upstream_req = Request::from_parts(parts, body);

        let sent = Instant::now();
        let request = tokio::time::timeout(
            self.cfg.upstream.response_timeout,
            self.client.request(upstream_req),
        );
        // A fleet permit whose lease lapsed may have been given to another pod: the request is
        // abandoned rather than overlap (its write, if any, is then looked for, not re-sent).
        let lost = async {
            match &slot {
                Some(s) => s.lost().await,
                None => std::future::pending().await,
            }
        };
        let result = tokio::select! {
            r = request => r,
            () = lost => {
                let err = ProxyError::UpstreamBroken(
                    "abandoned: the fleet permit for this request lapsed (PostgreSQL unreachable)".into(),
                );
                return Err(err);
            }
        };
        self.metrics
            .upstream_latency
            .observe(sent.elapsed().as_secs_f64());
        let upstream_ms = sent.elapsed().as_secs_f64() * 1000.0;
        let err = match result {
            Err(_) => ProxyError::UpstreamTimeout(self.cfg.upstream.response_timeout),
            Ok(Err(e)) if e.is_connect() => {
                let err = ProxyError::UpstreamUnreachable(error_chain(&e));
                self.health.unreachable(&err.to_string());
                return Err(err);
            }
            Ok(Err(e)) => ProxyError::UpstreamBroken(error_chain(&e)),
            Ok(Ok(resp)) => {
                self.health.ok();
                let response = resp.map(|b| {
                    b.map_err(crate::server::box_hyper)
                        .map_frame(move |f| {
                            let _held = &slot;
                            f
                        })
                        .boxed_unsync()
                });
                return Ok(Sent {
                    response,
                    upstream_ms,
                });
            }
        };
        self.health.failed(&err.to_string());
        Err(err)
    }

    /// [`Rally::send`] with a body already in memory (framed with `Content-Length`).
    pub async fn send_buffered(
        &self,
        mut parts: http::request::Parts,
        body: Bytes,
        conn: Option<&ConnInfo>,
        priority: Priority,
    ) -> Result<Sent, ProxyError> {
        parts.headers.remove(header::TRANSFER_ENCODING);
        parts
            .headers
            .insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        self.send(parts, crate::error::full(body), conn, priority)
            .await
    }

    /// GET `<service root>/<path_and_query>` with the caller's credential, within its slots;
    /// the status and the JSON (`Null` when the body is not JSON).
    pub async fn get_json(
        &self,
        cred: &Credential,
        path_and_query: &str,
        priority: Priority,
    ) -> Result<(StatusCode, Value), ProxyError> {
        self.call_json(cred, http::Method::GET, path_and_query, None, priority)
            .await
    }

    /// A request of the sidecar's own to `<service root>/<path_and_query>` with the caller's
    /// credential, within its slots: a JSON body out (if any), the status and JSON back.
    pub async fn call_json(
        &self,
        cred: &Credential,
        method: http::Method,
        path_and_query: &str,
        body: Option<&Value>,
        priority: Priority,
    ) -> Result<(StatusCode, Value), ProxyError> {
        let uri: http::Uri = format!("{}{SERVICE_ROOT}/{path_and_query}", self.origin)
            .parse()
            .map_err(|e| ProxyError::BadRequest(format!("cannot build a request URI: {e}")))?;
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .body(())
            .map_err(|e| ProxyError::BadRequest(e.to_string()))?;
        let h = req.headers_mut();
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        h.insert("x-rally-sidecar-lookup", HeaderValue::from_static("1"));
        cred.apply(h);
        let (parts, ()) = req.into_parts();
        let sent = match body {
            Some(b) => {
                let mut parts = parts;
                parts.headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                self.send_buffered(parts, crate::wsapi::to_bytes(b), None, priority)
                    .await?
            }
            None => {
                self.send(parts, crate::error::empty(), None, priority)
                    .await?
            }
        };
        let status = sent.response.status();
        let body = crate::server::collect_limited(sent.response.into_body(), MAX_READ)
            .await
            .map_err(|e| ProxyError::UpstreamBroken(format!("reading the answer: {e}")))?;
        Ok((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
    }

    /// One unauthenticated request while Rally is unreachable: any answer (Rally says 401)
    /// marks it reachable again; another connect failure keeps it down.
    pub async fn probe(&self) {
        let uri = format!("{}{SERVICE_ROOT}/security/authorize", self.origin);
        let Ok(req) = Request::get(uri)
            .header(header::HOST, self.authority.clone())
            .body(crate::error::empty())
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
}

/// What a command needs to act in Rally as the operator (`check`, `sweep`, `journal replay`):
/// the client, its lookups, and the operator's credential.
pub(crate) struct Session {
    pub rally: Arc<Rally>,
    pub lookups: Arc<lookups::Lookups>,
    pub cred: Credential,
    pub route: Route,
}

impl Session {
    pub(crate) fn new(cfg: &Config, operator: &credential::Operator) -> Result<Session, String> {
        let (rally, route) = Rally::standalone(cfg).map_err(|e| e.to_string())?;
        Session::assemble(cfg, operator, rally, route)
    }

    /// [`Session::new`] naming the operator's credential with the journal's writer key, so
    /// that its digest can be compared with the journal's rows.
    pub(crate) fn with_writer_key(
        cfg: &Config,
        operator: &credential::Operator,
        key: [u8; 32],
    ) -> Result<Session, String> {
        let (rally, route) = Rally::new(
            Arc::new(cfg.clone()),
            Arc::new(Metrics::new()),
            Arc::new(UpstreamHealth::default()),
        )
        .map_err(|e| e.to_string())?;
        Session::assemble(cfg, operator, Arc::new(rally.with_writer_key(key)), route)
    }

    /// [`Session::new`] in fleet mode: its requests take the fleet's permits and its
    /// credential is named by the fleet's writer key, as the ledger's rows are.
    pub(crate) fn with_fleet(
        cfg: &Config,
        operator: &credential::Operator,
        fleet: &crate::fleet::Fleet,
    ) -> Result<Session, String> {
        let (rally, route) = Rally::new(
            Arc::new(cfg.clone()),
            Arc::new(Metrics::new()),
            Arc::new(UpstreamHealth::default()),
        )
        .map_err(|e| e.to_string())?;
        Session::assemble(cfg, operator, Arc::new(rally.with_fleet(fleet)), route)
    }

    fn assemble(
        cfg: &Config,
        operator: &credential::Operator,
        rally: Arc<Rally>,
        route: Route,
    ) -> Result<Session, String> {
        let cred = rally
            .credential(&operator.headers())
            .ok_or("the credential is empty")?;
        let rule_fields: Vec<String> = cfg.guard.rules.iter().map(|r| r.field.clone()).collect();
        let lookups = Arc::new(lookups::Lookups::new(
            rally.clone(),
            &rule_fields,
            cfg.guard.cache_ttl,
        ));
        Ok(Session {
            rally,
            lookups,
            cred,
            route,
        })
    }

    /// A request of the operator's own (see [`Rally::call_json`]).
    pub(crate) async fn call(
        &self,
        method: http::Method,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), String> {
        self.rally
            .call_json(&self.cred, method, path_and_query, body, Priority::Normal)
            .await
            .map_err(|e| e.to_string())
    }
}

/// `Retry-After` in seconds or as an HTTP date.
pub(crate) fn retry_after(h: &http::HeaderMap) -> Option<Duration> {
    let v = h.get(header::RETRY_AFTER)?.to_str().ok()?;
    v.trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
        .or_else(|| {
            httpdate::parse_http_date(v)
                .ok()?
                .duration_since(std::time::SystemTime::now())
                .ok()
        })
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
