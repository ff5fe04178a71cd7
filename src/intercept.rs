//! TestCaseResult interception: the only place the sidecar changes traffic. A request that
//! [`classify`] marks as a result write is buffered (up to `intercept.max_body`), its results
//! decided one by one ([`decide`]: the guard against archived test cases, then enrichment of
//! Build, Date and Tester), and then — by what it is — handled in its own file: a single create
//! or update ([`single`]), a `Results/add` ([`results_add`]) or a `/batch` ([`batch`]). Allowed
//! results are journaled and held until their fate is known ([`hold`]); answers are shaped in
//! [`answer`]. In shadow mode decisions are only logged and counted, and the original request
//! is forwarded unchanged.

pub mod answer;
pub mod batch;
pub mod budget;
pub mod classify;
pub mod context;
pub mod decide;
pub mod enrich;
pub mod envelope;
pub mod guard;
pub mod hold;
pub mod ledger;
pub mod results_add;
pub mod single;

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Mode};
use crate::error::ProxyError;
use crate::journal::Journal;
use crate::rally::credential::Credential;
use crate::rally::lookups::Lookups;
use crate::request::RequestCtx;
use crate::server::Body;
use crate::telemetry::metrics::Metrics;
use crate::wsapi::Envelope;
use classify::Operation;
use context::BuildContext;

use crate::wsapi::headers::BUILD as BUILD_HEADER;

/// State of the interception layer.
pub struct Interceptor {
    cfg: Arc<Config>,
    pub lookups: Arc<Lookups>,
    pub context: Arc<BuildContext>,
    metrics: Arc<Metrics>,
    /// Where writes are recorded (absent only when confirmation is off).
    pub journal: Option<Journal>,
    /// Cancelled shortly before the shutdown deadline: held writes answer at once.
    pub give_up: CancellationToken,
    /// Bytes of intercepted bodies in memory, across requests.
    pub budget: Arc<budget::Budget>,
    /// Read-backs that go on after their client was answered (`confirm.hold = "ambiguous"`);
    /// the drain waits for them.
    pub background: tokio_util::task::TaskTracker,
    /// Fleet mode: the shared ledger beside the journal ([`ledger`]); `None` alone.
    pub fleet: Option<ledger::FleetWrites>,
}

/// What interception makes of a request: the sidecar's own answer, or a request for the proxy
/// to forward as any other (the original in shadow mode, a rewritten one otherwise) with
/// headers to add to Rally's answer.
pub enum Outcome {
    Answer(Response<Body>),
    Forward {
        parts: http::request::Parts,
        body: Bytes,
        headers: Vec<(&'static str, String)>,
    },
}

impl Outcome {
    fn forward(parts: http::request::Parts, body: Bytes) -> Outcome {
        Outcome::Forward {
            parts,
            body,
            headers: Vec::new(),
        }
    }
}

/// What the request says about its scope (`workspace=`/`project=` query parameters).
#[derive(Debug, Default, Clone)]
pub struct Scope {
    pub workspace: Option<String>,
    pub project: Option<String>,
}

impl Scope {
    fn of_query(query: Option<&str>) -> Scope {
        let mut s = Scope::default();
        for pair in query.unwrap_or("").split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_encoding::percent_decode_str(v).decode_utf8_lossy();
            match k.to_ascii_lowercase().as_str() {
                "workspace" => s.workspace = crate::wsapi::scope_id(&v),
                "project" if v != "null" => s.project = crate::wsapi::scope_id(&v),
                _ => {}
            }
        }
        s
    }
}

/// Who wrote a result, as the journal records it: never the credential itself.
#[derive(Debug, Clone)]
pub struct Writer {
    /// The credential's digest, keyed by the journal's secret.
    pub digest: String,
    /// The Rally user, when Rally told who the credential belongs to.
    pub user: Option<crate::rally::lookups::User>,
}

/// What one intercepted request brings to every result it carries: the request's context,
/// the caller's credential, its scope and the build it named in a header.
pub struct WriteCtx<'a> {
    pub req: &'a RequestCtx,
    pub cred: &'a Credential,
    /// Who writes: the credential's digest and its Rally user, resolved once per request.
    pub writer: Writer,
    pub scope: Scope,
    pub header_build: Option<String>,
    /// The envelope kind of the answer the client expects.
    pub kind: Envelope,
    /// The body as the client sent it, in fleet mode only: with the writer and the path, a
    /// write's identity in the fleet's ledger (enrichment fills `Date` from the time of
    /// receipt, so a retry's enriched body differs). Alone it is not kept: a held write's body
    /// is held once (issue 16).
    pub raw: Option<Bytes>,
}

impl WriteCtx<'_> {
    /// Refs in the body that carry the sidecar's own origin (copied from its rewritten
    /// answers) are sent to Rally with Rally's origin: whether Rally accepts a foreign host in
    /// a ref is not documented, so the sidecar does not find out.
    /// The body as a JSON object, with refs carrying the sidecar's origin rebased on Rally's.
    fn parse(
        &self,
        icpt: &Interceptor,
        body: &[u8],
    ) -> Result<serde_json::Map<String, serde_json::Value>, ProxyError> {
        let map = envelope::parse(body).map_err(|e| self.bad(e))?;
        let mut v = serde_json::Value::Object(map);
        self.rebase(icpt, &mut v);
        match v {
            serde_json::Value::Object(m) => Ok(m),
            _ => Err(self.bad(envelope::BodyError::NotObject)),
        }
    }

    fn rebase(&self, icpt: &Interceptor, v: &mut serde_json::Value) {
        let upstream = icpt.lookups.rally().origin();
        if let Some(from) = self.req.client_origin.as_deref().filter(|o| *o != upstream) {
            let n = envelope::rebase_refs(v, from, upstream);
            if n > 0 {
                tracing::debug!(refs = n, "refs with the sidecar's origin sent with Rally's");
            }
        }
    }

    /// A body the sidecar cannot handle: refused, nothing forwarded.
    fn bad(&self, e: envelope::BodyError) -> ProxyError {
        ProxyError::Refused {
            status: StatusCode::BAD_REQUEST,
            kind: self.kind,
            code: "bad-body",
            message: format!("rally-sidecar: {e}; nothing was forwarded"),
        }
    }
}

impl Interceptor {
    pub fn new(
        cfg: Arc<Config>,
        lookups: Arc<Lookups>,
        context: Arc<BuildContext>,
        metrics: Arc<Metrics>,
        journal: Option<Journal>,
    ) -> Interceptor {
        Interceptor {
            budget: budget::Budget::new(cfg.intercept.max_buffered),
            cfg,
            lookups,
            context,
            metrics,
            journal,
            give_up: CancellationToken::new(),
            background: tokio_util::task::TaskTracker::new(),
            fleet: None,
        }
    }

    fn shadow(&self) -> bool {
        self.cfg.intercept.mode == Mode::Shadow
    }

    /// The journal, when allowed writes are to be held until confirmed.
    fn holding(&self) -> Option<&Journal> {
        self.journal.as_ref().filter(|_| self.cfg.confirm.enabled)
    }
}

/// Handles an intercepted request end to end.
pub async fn handle(
    icpt: &Arc<Interceptor>,
    ctx: &RequestCtx,
    op: Operation,
    req: Request<Incoming>,
) -> Result<Outcome, ProxyError> {
    let kind = match op {
        Operation::CreateResult => Envelope::Create,
        Operation::Batch => Envelope::Batch,
        _ => Envelope::Operation,
    };
    let (mut parts, incoming) = req.into_parts();
    detach(&mut parts);
    // The charge lives until this function returns: a held write's bytes count until answered.
    let (body, _charge) = match read_body(icpt, incoming, kind).await? {
        Ok(read) => read,
        Err(answer) => return Ok(Outcome::Answer(answer)),
    };
    ctx.count_in(body.len());
    let Some(cred) = ctx
        .credential
        .as_ref()
        .filter(|_| !is_form_query(&parts.headers, &body))
    else {
        // Anonymous (the Node toolkit's first, challenge-seeking attempt) or a form query:
        // forward as it came.
        return Ok(Outcome::forward(parts, body));
    };
    let header_build = parts
        .headers
        .remove(BUILD_HEADER)
        .and_then(|v| v.to_str().ok().map(str::to_string));
    let writer = Writer {
        digest: cred.fingerprint().to_string(),
        // Boxed: the lookup's state is large and over once it answers; inline it would stay
        // allocated in this future for as long as the write is held.
        user: match Box::pin(icpt.lookups.owner(cred)).await {
            Ok(u) => Some(u),
            Err(e) => {
                tracing::debug!(error = %e, "Rally did not say whose credential this is");
                None
            }
        },
    };
    let w = WriteCtx {
        req: ctx,
        cred,
        writer,
        scope: Scope::of_query(parts.uri.query()),
        header_build,
        kind,
        raw: icpt.fleet.as_ref().map(|_| body.clone()),
    };
    match op {
        Operation::CreateResult | Operation::UpdateResult { .. } => {
            single::handle(icpt, &w, &op, parts, body).await
        }
        // Boxed: their state is larger than a single write's, and inline it would be held
        // with every single write too.
        Operation::AddResults { test_case } => {
            Box::pin(results_add::handle(icpt, &w, &test_case, parts, body)).await
        }
        Operation::Batch => Box::pin(batch::handle(icpt, &w, parts, body)).await,
        Operation::Passthrough | Operation::OtherVersion { .. } => {
            Ok(Outcome::forward(parts, body))
        }
    }
}

/// Reads the body up to `intercept.max_body`, within `listen.body_read_timeout`, charged to the
/// memory budget; the sidecar's own answer when it cannot.
async fn read_body(
    icpt: &Interceptor,
    incoming: Incoming,
    kind: Envelope,
) -> Result<Result<(Bytes, budget::Charge), Response<Body>>, ProxyError> {
    let cfg = &icpt.cfg;
    let read = budget::read(
        incoming,
        cfg.intercept.max_body,
        &icpt.budget,
        cfg.listen.body_read_timeout,
    )
    .await;
    match read {
        Ok(read) => Ok(Ok(read)),
        Err(budget::ReadError::TooLarge(n)) => Err(ProxyError::Refused {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            kind,
            code: "body-too-large",
            message: format!(
                "rally-sidecar: the request body is larger than intercept.max_body ({n} bytes); nothing was forwarded"
            ),
        }),
        Err(budget::ReadError::OverBudget { limit }) => {
            tracing::warn!(
                limit,
                "intercept.max_buffered reached: a write is answered 503"
            );
            Ok(Err(budget::over_budget(kind, limit)))
        }
        Err(budget::ReadError::TimedOut(d)) => Ok(Err(budget::timed_out(kind, d))),
        Err(budget::ReadError::Broken(e)) => Err(ProxyError::BadRequest(format!(
            "reading the request body: {e}"
        ))),
    }
}

/// Copies the request's target and header values out of hyper's read buffer, of which they
/// are slices: a held write keeps them for seconds, and with them the whole 8 KiB buffer, which
/// hyper, reading on, replaces with another (issue 16). A value that cannot be copied (it
/// never fails for what hyper parsed) stays as it is.
fn detach(parts: &mut http::request::Parts) {
    if let Ok(uri) = http::Uri::try_from(parts.uri.to_string()) {
        parts.uri = uri;
    }
    for v in parts.headers.values_mut() {
        *v = crate::rally::credential::detached(v);
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
