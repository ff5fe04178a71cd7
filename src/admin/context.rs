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
}
