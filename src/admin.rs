//! The admin listener (its own address, loopback by default): `GET /healthz` (the process is
//! up), `GET /readyz` (every readiness condition holds), `GET /metrics` (Prometheus text) and,
//! only when `admin.enable_shutdown = true`, `POST /shutdown` for Kubernetes Jobs whose test
//! container tells the sidecar it is done. Every request passes [`auth::Guard::refusal`] before
//! it is routed: the three read-only endpoints above are open, everything else is guarded.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use tokio_util::sync::CancellationToken;

use crate::error::full;
use crate::intercept::context::BuildContext;
use crate::server::{Body, BoxError, BoxFuture, ConnInfo, Handler};
use crate::telemetry::metrics::Metrics;

/// Named readiness conditions; ready when every one holds. Later stages add their own
/// (e.g. the journal being open) without touching this module.
#[derive(Default)]
pub struct Readiness {
    checks: Mutex<BTreeMap<&'static str, (bool, String)>>,
}

impl Readiness {
    pub fn set(&self, name: &'static str, ok: bool, detail: impl Into<String>) {
        if let Ok(mut m) = self.checks.lock() {
            m.insert(name, (ok, detail.into()));
        }
    }

    pub fn is_ready(&self) -> bool {
        self.checks
            .lock()
            .map(|m| !m.is_empty() && m.values().all(|(ok, _)| *ok))
            .unwrap_or(false)
    }

    /// One line per condition: `ok name: detail` or `FAIL name: detail`.
    pub fn report(&self) -> String {
        let Ok(m) = self.checks.lock() else {
            return "readiness state unavailable\n".into();
        };
        m.iter()
            .map(|(name, (ok, detail))| {
                format!("{} {name}: {detail}\n", if *ok { "ok" } else { "FAIL" })
            })
            .collect()
    }
}

/// Everything the admin endpoints read.
pub(crate) struct Admin {
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    pub enable_shutdown: bool,
    pub shutdown: CancellationToken,
    pub context: Arc<BuildContext>,
    /// Fleet mode: `PUT/DELETE /context` change the fleet's shared context, which every pod
    /// (this one included) copies into its `context`.
    pub fleet_context: Option<crate::fleet::SharedContext>,
    pub journal: Option<crate::journal::Journal>,
    pub health: Arc<crate::rally::health::UpstreamHealth>,
    /// Who may use which endpoint.
    pub auth: auth::Guard,
    /// `context.build` and the CI variables: the status page says where a build comes from.
    pub build_config: crate::config::ContextConfig,
}

pub(crate) fn json_response(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(full(serde_json::to_vec_pretty(v).unwrap_or_default()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

pub(crate) mod auth;
mod builds;
mod context;
mod page;
mod status;

impl Admin {
    fn respond(&self, req: &Request<Incoming>) -> Response<Body> {
        let text = |status: StatusCode, body: String| {
            let mut r = Response::new(full(body));
            *r.status_mut() = status;
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            r
        };
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/healthz") | (&Method::HEAD, "/healthz") => {
                text(StatusCode::OK, "ok\n".into())
            }
            (&Method::GET, "/readyz") | (&Method::HEAD, "/readyz") => {
                let status = if self.readiness.is_ready() {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                text(status, self.readiness.report())
            }
            (&Method::GET, "/metrics") => {
                let mut r = text(StatusCode::OK, self.metrics.encode());
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                r
            }
            (&Method::POST, "/shutdown") if self.enable_shutdown => {
                tracing::info!("shutdown requested through the admin API");
                self.shutdown.cancel();
                text(StatusCode::ACCEPTED, "shutting down\n".into())
            }
            (_, "/shutdown") => text(
                StatusCode::FORBIDDEN,
                "POST /shutdown is disabled; set admin.enable_shutdown = true to allow it\n".into(),
            ),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; try /, /healthz, /readyz, /metrics, /context, /builds, /status.json\n"
                    .into(),
            ),
        }
    }
}

pub(crate) struct AdminHandler(pub Arc<Admin>);

impl Handler for AdminHandler {
    fn call(
        &self,
        req: Request<Incoming>,
        _conn: ConnInfo,
    ) -> BoxFuture<Result<Response<Body>, BoxError>> {
        let admin = self.0.clone();
        Box::pin(async move {
            if let Some(refused) = admin.auth.refusal(&req) {
                return Ok(refused);
            }
            match (req.method(), req.uri().path()) {
                (_, "/context") => return Ok(admin.context(req).await),
                (&Method::GET, "/") => return Ok(admin.status_page().await),
                (&Method::GET, "/writes") => return Ok(admin.writes(req.uri().query()).await),
                (&Method::GET, "/status.json") => return Ok(admin.status_json().await),
                (&Method::GET, p) if p == "/builds" || p.starts_with("/builds/") => {
                    return Ok(admin.builds(p, req.uri().query()).await);
                }
                _ => {}
            }
            Ok(admin.respond(&req))
        })
    }
}
