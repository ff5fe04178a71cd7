//! `GET|PUT|DELETE /context`: the build context operators set for writes that carry no Build
//! (docs/enrichment.md). A change is answered with the entry it changed, not the whole map,
//! and the map itself is bounded (`intercept::context::MAX_SCOPES`, `MAX_BUILD_LEN`). In fleet
//! mode a change goes to the fleet's shared context, which every pod copies into its own.

use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::{Admin, json_response};
use crate::intercept::context::{SetContext, scope_id};
use crate::server::Body;

/// Largest `PUT /context` body, and how long it may take to arrive.
const MAX_BODY: usize = 64 * 1024;
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

impl Admin {
    /// `GET|PUT|DELETE /context`: the build context (see docs/enrichment.md).
    pub(super) async fn context(&self, req: Request<Incoming>) -> Response<Body> {
        let bad = |e: String| {
            json_response(
                StatusCode::BAD_REQUEST,
                &json!({"error": e, "expected": {"build": "2026.11.24-7", "workspace": "(optional) /workspace/<oid>", "project": "(optional) /project/<oid>"}}),
            )
        };
        match *req.method() {
            Method::GET => json_response(
                StatusCode::OK,
                &serde_json::to_value(self.context.view()).unwrap_or_default(),
            ),
            Method::PUT | Method::POST => {
                let body = match read(req.into_body()).await {
                    Ok(b) => b,
                    Err(e) => return bad(e),
                };
                let set = match serde_json::from_slice::<SetContext>(&body) {
                    Ok(c) => c,
                    Err(e) => return bad(e.to_string()),
                };
                let entry = entry(&set);
                // Fleet mode: the change is the fleet's (see `fleet_answer`).
                if let Some(shared) = &self.fleet_context {
                    // The local rules (length, scopes held) checked on a copy first.
                    let probe = crate::intercept::context::BuildContext::default();
                    probe.replace(self.context.view());
                    if let Err(e) = probe.set(set.clone()) {
                        return bad(e);
                    }
                    let changed = shared.set(set).await;
                    return self.fleet_answer(shared, changed, entry);
                }
                match self.context.set(set) {
                    Ok(_) => {
                        tracing::info!(entry = %entry, "build context set");
                        json_response(StatusCode::OK, &entry)
                    }
                    Err(e) => bad(e),
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
                let (workspace, project) = (param("workspace"), param("project"));
                let cleared = match (
                    workspace.as_deref().and_then(scope_id),
                    project.as_deref().and_then(scope_id),
                ) {
                    (Some(w), _) => json!({"workspace": w}),
                    (_, Some(p)) => json!({"project": p}),
                    _ => json!("everything"),
                };
                if let Some(shared) = &self.fleet_context {
                    let changed = shared.clear(workspace.as_deref(), project.as_deref()).await;
                    return self.fleet_answer(shared, changed, json!({ "cleared": cleared }));
                }
                self.context.clear(workspace.as_deref(), project.as_deref());
                json_response(StatusCode::OK, &json!({ "cleared": cleared }))
            }
            _ => json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({"error": "use GET, PUT or DELETE"}),
            ),
        }
    }
}

impl Admin {
    /// The answer to a change of the fleet's context: applied here at once, the other pods
    /// following within `SharedContext::max_delay` (stated in the answer); a bad request is
    /// 400; PostgreSQL unreachable is 503, and nothing changed.
    fn fleet_answer(
        &self,
        shared: &crate::fleet::SharedContext,
        changed: Result<
            crate::intercept::context::ContextView,
            crate::fleet::context::ContextError,
        >,
        mut answer: Value,
    ) -> Response<Body> {
        use crate::fleet::context::ContextError;
        match changed {
            Ok(view) => {
                self.context.replace(view);
                tracing::info!(change = %answer, "fleet build context changed");
                answer["fleet"] = json!({
                    "every_pod_within_ms": shared.max_delay().as_millis() as u64
                });
                json_response(StatusCode::OK, &answer)
            }
            Err(ContextError::Invalid(e)) => {
                json_response(StatusCode::BAD_REQUEST, &json!({ "error": e }))
            }
            Err(ContextError::Fleet(e)) => json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({ "error": format!("the fleet's context was not changed: {e}") }),
            ),
        }
    }
}

/// The entry a `PUT` sets, as it is stored (scope refs reduced to their ObjectIDs).
fn entry(c: &SetContext) -> Value {
    let mut v = json!({ "build": c.build });
    if let Some(w) = c.workspace.as_deref().and_then(scope_id) {
        v["workspace"] = json!(w);
    }
    if let Some(p) = c.project.as_deref().and_then(scope_id) {
        v["project"] = json!(p);
    }
    v
}

async fn read(body: Incoming) -> Result<bytes::Bytes, String> {
    use http_body_util::BodyExt;
    let collect = http_body_util::Limited::new(body, MAX_BODY).collect();
    match tokio::time::timeout(BODY_TIMEOUT, collect).await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("the body did not arrive within {BODY_TIMEOUT:?}")),
    }
}
