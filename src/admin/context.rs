//! `GET|PUT|DELETE /context`: the build context operators set for writes that carry no Build
//! (docs/enrichment.md).

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::{Admin, json_response};
use crate::intercept::context::SetContext;
use crate::server::Body;

impl Admin {
    /// `GET|PUT|DELETE /context`: the build context (see docs/enrichment.md).
    pub(super) async fn context(&self, req: Request<Incoming>) -> Response<Body> {
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
                let set = match serde_json::from_slice::<SetContext>(&body) {
                    Err(e) => Err(e.to_string()),
                    // Fleet mode: the change is the fleet's (see `fleet_set`).
                    Ok(c) => match &self.fleet_context {
                        Some(shared) => return self.fleet_set(shared, shared.set(c).await),
                        None => self.context.set(c),
                    },
                };
                match set {
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
                let (w, p) = (param("workspace"), param("project"));
                if let Some(shared) = &self.fleet_context {
                    let cleared = shared.clear(w.as_deref(), p.as_deref()).await;
                    return self.fleet_set(shared, cleared);
                }
                let v = self.context.clear(w.as_deref(), p.as_deref());
                json_response(StatusCode::OK, &view(&v))
            }
            _ => json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &serde_json::json!({"error": "use GET, PUT or DELETE"}),
            ),
        }
    }
}

impl Admin {
    /// The answer to a change of the fleet's context: applied here at once (the other pods
    /// follow within `SharedContext::max_delay`); a bad request is 400; PostgreSQL unreachable
    /// is 503 and nothing changed.
    fn fleet_set(
        &self,
        shared: &crate::fleet::SharedContext,
        r: Result<crate::intercept::context::ContextView, crate::fleet::context::ContextError>,
    ) -> Response<Body> {
        use crate::fleet::context::ContextError;
        match r {
            Ok(v) => {
                self.context.replace(v.clone());
                tracing::info!(context = ?v, "fleet build context set");
                let mut body = serde_json::to_value(&v).unwrap_or_default();
                body["fleet"] = serde_json::json!({
                    "every_pod_within_ms": shared.max_delay().as_millis() as u64
                });
                json_response(StatusCode::OK, &body)
            }
            Err(ContextError::Invalid(e)) => {
                json_response(StatusCode::BAD_REQUEST, &serde_json::json!({"error": e}))
            }
            Err(ContextError::Fleet(e)) => json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({"error": format!("the fleet's context was not changed: {e}")}),
            ),
        }
    }
}
