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
pub struct Admin {
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    pub enable_shutdown: bool,
    pub shutdown: CancellationToken,
    pub context: Arc<BuildContext>,
    pub journal: Option<crate::journal::Journal>,
    pub health: Arc<crate::rally::health::UpstreamHealth>,
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

    /// `GET /writes?state=unconfirmed&limit=50`: recent intercepted writes as JSON.
    async fn writes(&self, query: Option<&str>) -> Response<Body> {
        let Some(j) = &self.journal else {
            return json_response(
                StatusCode::NOT_FOUND,
                &serde_json::json!({"error": "no journal (confirm.enabled = false)"}),
            );
        };
        let param = |name: &str| {
            query.unwrap_or("").split('&').find_map(|p| {
                p.strip_prefix(name)
                    .and_then(|r| r.strip_prefix('='))
                    .map(str::to_string)
            })
        };
        let state = match param("state") {
            None => None,
            Some(s) => match crate::journal::State::parse(&s) {
                Some(st) => Some(st),
                None => {
                    return json_response(
                        StatusCode::BAD_REQUEST,
                        &serde_json::json!({"error": format!("state {s:?} is not one of pending, confirmed, rejected, unconfirmed")}),
                    );
                }
            },
        };
        let limit = param("limit")
            .and_then(|l| l.parse().ok())
            .unwrap_or(100usize)
            .min(10_000);
        let (rows, counts) = match (j.list(state, vec![], limit).await, j.counts().await) {
            (Ok(r), Ok(c)) => (r, c),
            (Err(e), _) | (_, Err(e)) => {
                return json_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &serde_json::json!({"error": e.to_string()}),
                );
            }
        };
        let writes: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                let mut v = serde_json::to_value(r).unwrap_or_default();
                if let Some(m) = v.as_object_mut() {
                    // The list is for people; the body and the fingerprint stay in the journal.
                    m.remove("body");
                    m.remove("credential");
                }
                v
            })
            .collect();
        let counts: serde_json::Map<String, serde_json::Value> = counts
            .iter()
            .map(|(s, n)| (s.as_str().to_string(), serde_json::json!(n)))
            .collect();
        json_response(
            StatusCode::OK,
            &serde_json::json!({"counts": counts, "writes": writes}),
        )
    }

    /// `GET /`: a small self-contained HTML status page.
    async fn status_page(&self) -> Response<Body> {
        let esc = |s: &str| {
            s.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
                .replace('"', "&quot;")
                .replace('\'', "&#39;")
        };
        let (rows, counts) = match &self.journal {
            Some(j) => (
                j.list(None, vec![], 50).await.unwrap_or_default(),
                j.counts().await.unwrap_or_default(),
            ),
            None => (vec![], vec![]),
        };
        let count = |s: crate::journal::State| {
            counts
                .iter()
                .find(|(x, _)| *x == s)
                .map(|(_, n)| *n)
                .unwrap_or(0)
        };
        let ctx = self.context.view();
        let mut scoped: Vec<String> = ctx
            .workspaces
            .iter()
            .map(|(k, v)| format!("workspace {k}: {v}"))
            .collect();
        scoped.extend(
            ctx.projects
                .iter()
                .map(|(k, v)| format!("project {k}: {v}")),
        );
        let (last_ok, last_err) = self.health.describe();
        let mut table = String::new();
        for r in &rows {
            let class = match r.state {
                crate::journal::State::Unconfirmed | crate::journal::State::Pending => {
                    " class=\"alert\""
                }
                crate::journal::State::Rejected | crate::journal::State::Refused => {
                    " class=\"rejected\""
                }
                crate::journal::State::Confirmed => "",
            };
            table.push_str(&format!(
                "<tr{class}><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                r.id,
                esc(&r.received_at),
                esc(r.test_case.as_deref().unwrap_or("")),
                esc(r.verdict.as_deref().unwrap_or("")),
                esc(r.build.as_deref().unwrap_or("")),
                esc(r.filled.as_deref().unwrap_or("")),
                esc(r.decision.as_deref().unwrap_or("")),
                r.state.as_str(),
                r.attempts,
                r.latency_ms.map(|l| format!("{l:.0} ms")).unwrap_or_default(),
                esc(r.last_error.as_deref().unwrap_or("")),
            ));
        }
        let html = format!(
            r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="10">
<title>rally-sidecar</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }}
h1 {{ font-size: 1.3em; }} table {{ border-collapse: collapse; width: 100%; }}
td, th {{ border-bottom: 1px solid #ddd; padding: 4px 6px; text-align: left; vertical-align: top; }}
tr.alert {{ background: #fde2e1; font-weight: 600; }} tr.rejected {{ background: #fff4d6; }}
.counts span {{ display: inline-block; margin-right: 1.5em; }} .k {{ color: #666; }}
</style></head><body>
<h1>rally-sidecar</h1>
<p class="counts"><span>confirmed <b>{confirmed}</b></span><span>unconfirmed <b>{unconfirmed}</b></span><span>rejected <b>{rejected}</b></span><span>pending <b>{pending}</b></span></p>
<p><span class="k">build context:</span> {build}{scoped}<br>
<span class="k">upstream:</span> last answer {last_ok}; last failure {last_err}<br>
<span class="k">readiness:</span> {ready}</p>
<table><thead><tr><th>#</th><th>received</th><th>TestCase</th><th>Verdict</th><th>Build</th><th>filled</th><th>decision</th><th>confirmation</th><th>attempts</th><th>latency</th><th>last error</th></tr></thead>
<tbody>
{table}</tbody></table>
<p class="k">JSON: <a href="/writes">/writes</a>, <a href="/writes?state=unconfirmed">/writes?state=unconfirmed</a> · <a href="/metrics">/metrics</a> · <a href="/context">/context</a></p>
</body></html>
"#,
            confirmed = count(crate::journal::State::Confirmed),
            unconfirmed = count(crate::journal::State::Unconfirmed),
            rejected = count(crate::journal::State::Rejected),
            pending = count(crate::journal::State::Pending),
            build = esc(ctx
                .build
                .as_deref()
                .unwrap_or("none (set one with PUT /context)")),
            scoped = if scoped.is_empty() {
                String::new()
            } else {
                format!("; {}", esc(&scoped.join("; ")))
            },
            last_ok = esc(&last_ok),
            last_err = esc(&last_err),
            ready = esc(&self.readiness.report().replace('\n', "; ")),
        );
        let mut r = Response::new(full(html));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        r
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
            match (req.method(), req.uri().path()) {
                (_, "/context") => return Ok(admin.context(req).await),
                (&Method::GET, "/") => return Ok(admin.status_page().await),
                (&Method::GET, "/writes") => return Ok(admin.writes(req.uri().query()).await),
                _ => {}
            }
            Ok(admin.respond(&req))
        })
    }
}
