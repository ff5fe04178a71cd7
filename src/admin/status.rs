//! What an operator reads about writes: `GET /writes` (JSON, from the journal) and the status
//! page `GET /` (self-contained HTML).

use http::{HeaderValue, Response, StatusCode, header};

use super::{Admin, json_response};
use crate::error::full;
use crate::server::Body;

impl Admin {
    /// `GET /writes?state=unconfirmed&limit=50`: recent intercepted writes as JSON.
    pub(super) async fn writes(&self, query: Option<&str>) -> Response<Body> {
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
        let (rows, counts) = match (j.list_without_bodies(state, limit).await, j.counts().await) {
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
    pub(super) async fn status_page(&self) -> Response<Body> {
        let esc = |s: &str| {
            s.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
                .replace('"', "&quot;")
                .replace('\'', "&#39;")
        };
        let (rows, counts) = match &self.journal {
            Some(j) => (
                j.list_without_bodies(None, 50).await.unwrap_or_default(),
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
}
