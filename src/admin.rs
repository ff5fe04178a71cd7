//! The admin listener (its own address, loopback by default): `GET /healthz` (the process is
//! up), `GET /readyz` (every readiness condition holds), `GET /metrics` (Prometheus text) and,
//! only when `admin.enable_shutdown = true`, `POST /shutdown` for Kubernetes Jobs whose test
//! container tells the sidecar it is done.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use tokio_util::sync::CancellationToken;

use crate::error::full;
use crate::intercept::context::{BuildContext, SetContext};
use crate::metrics::Metrics;
use crate::server::{Body, BoxError, BoxFuture, ConnInfo, Handler};

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
pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    pub enable_shutdown: bool,
    pub shutdown: CancellationToken,
    pub context: Arc<BuildContext>,
}

fn json_response(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    let mut r = Response::new(full(serde_json::to_vec_pretty(v).unwrap_or_default()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

impl Admin {
    /// `GET|PUT|DELETE /context`: the build context (see docs/enrichment.md).
    async fn context(&self, req: Request<Incoming>) -> Response<Body> {
        use http_body_util::BodyExt;
        let view = |v: &crate::intercept::context::ContextView| {
            serde_json::to_value(v).unwrap_or_default()
        };
        match *req.method() {
            Method::GET => json_response(StatusCode::OK, &view(&self.context.view())),
            Method::PUT | Method::POST => {
                let body = match http_body_util::Limited::new(req.into_body(), 64 * 1024)
                    .collect()
                    .await
                {
                    Ok(b) => b.to_bytes(),
                    Err(e) => {
                        return json_response(
                            StatusCode::BAD_REQUEST,
                            &serde_json::json!({"error": e.to_string()}),
                        );
                    }
                };
                match serde_json::from_slice::<SetContext>(&body)
                    .map_err(|e| e.to_string())
                    .and_then(|c| self.context.set(c))
                {
                    Ok(v) => {
                        tracing::info!(context = ?v, "build context set");
                        json_response(StatusCode::OK, &view(&v))
                    }
                    Err(e) => json_response(
                        StatusCode::BAD_REQUEST,
                        &serde_json::json!({"error": e, "expected": {"build": "2026.11.24-7", "workspace": "(optional) /workspace/<oid>", "project": "(optional) /project/<oid>"}}),
                    ),
                }
            }
            Method::DELETE => {
                let q = req.uri().query().unwrap_or("");
                let param = |name: &str| {
                    q.split('&')
                        .find_map(|p| p.strip_prefix(name).and_then(|r| r.strip_prefix('=')))
                        .map(|v| {
                            percent_encoding::percent_decode_str(v)
                                .decode_utf8_lossy()
                                .into_owned()
                        })
                };
                let v = self
                    .context
                    .clear(param("workspace").as_deref(), param("project").as_deref());
                json_response(StatusCode::OK, &view(&v))
            }
            _ => json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &serde_json::json!({"error": "use GET, PUT or DELETE"}),
            ),
        }
    }

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
                "not found; try /healthz, /readyz, /metrics, /context\n".into(),
            ),
        }
    }
}

pub struct AdminHandler(pub Arc<Admin>);

impl Handler for AdminHandler {
    fn call(
        &self,
        req: Request<Incoming>,
        _conn: ConnInfo,
    ) -> BoxFuture<Result<Response<Body>, BoxError>> {
        let admin = self.0.clone();
        Box::pin(async move {
            if req.uri().path() == "/context" {
                return Ok(admin.context(req).await);
            }
            Ok(admin.respond(&req))
        })
    }
}
