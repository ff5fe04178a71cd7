//! `POST /batch`: `{"Batch": [{"Entry": {"Path", "Method", "Body"}}]}` runs each entry on its
//! own, in order, with the batch URL's parameters unless the entry's `Path` has its own, and
//! answers one `Results` element per entry in the shape of the BatchResult captured from real
//! Rally (see [`crate::wsapi::batch_envelope`]): per-entry failures stay in that element.

use std::collections::HashMap;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{Value, json};

use super::Simulator;
use super::pipeline::Scope;
use super::respond::Reply;
use super::route::{self, Route, parse_params};
use super::store::Principal;
use crate::wsapi::{self, batch_element, batch_envelope};

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|e| {
                    e.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| e.to_string())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// One entry's answer as a `BatchResult.Results` element.
fn element(reply: Reply) -> Value {
    let failed = || batch_element(&["entry failed".into()], &[], None);
    let Reply::Json(_, v) = reply else {
        return failed();
    };
    let Some((key, inner)) = v.as_object().and_then(|m| m.iter().next()) else {
        return failed();
    };
    let errors = strings(inner.get("Errors"));
    let warnings = strings(inner.get("Warnings"));
    let object = match key.as_str() {
        "CreateResult" | "OperationResult" => inner.get("Object").cloned(),
        "QueryResult" => Some(json!({
            "Results": inner.get("Results").cloned().unwrap_or(json!([])),
            "TotalResultCount": inner.get("TotalResultCount").cloned().unwrap_or(json!(0)),
        })),
        _ => {
            // A single-object read: the object, with `_type` as a query item carries it.
            let mut o = inner.clone();
            if let Some(m) = o.as_object_mut() {
                m.remove("Errors");
                m.remove("Warnings");
                m.insert("_type".into(), json!(key));
            }
            Some(o)
        }
    };
    batch_element(&errors, &warnings, object)
}

/// An entry's `Path` relative to the service root: full URLs and `/slm/webservice/<v>/...`
/// paths lose their prefix.
fn relative(path: &str) -> &str {
    let from_root = path.find("/slm/webservice/").map_or(path, |i| &path[i..]);
    wsapi::split_service_path(from_root).map_or(path, |(_, rest)| rest)
}

impl Simulator {
    pub(super) fn batch(
        &self,
        body: &Bytes,
        base: &str,
        principal: &Principal,
        params: &HashMap<String, String>,
    ) -> Reply {
        let refuse = |msg: String| Reply::Json(StatusCode::OK, batch_envelope(&[msg], &[], vec![]));
        let step = {
            let mut st = self.lock();
            (!st.faults.batch_script.is_empty()).then(|| st.faults.batch_script.remove(0))
        };
        if step.as_deref() == Some("error") {
            return Reply::Text(
                StatusCode::SERVICE_UNAVAILABLE,
                "Service Unavailable".into(),
            );
        }
        let parsed: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => {
                return refuse(format!(
                    "Cannot parse input stream due to I/O error as JSON document: {e}"
                ));
            }
        };
        let Some(entries) = parsed.get("Batch").and_then(Value::as_array) else {
            return refuse("Batch must be an array of entries".into());
        };
        let mut results = Vec::new();
        for entry in entries {
            let e = entry.get("Entry").unwrap_or(entry);
            let path = relative(e.get("Path").and_then(Value::as_str).unwrap_or(""));
            let method = e
                .get("Method")
                .and_then(Value::as_str)
                .unwrap_or("GET")
                .to_ascii_uppercase();
            let method = Method::from_bytes(method.as_bytes()).unwrap_or(Method::GET);
            let (p, q) = path.split_once('?').unwrap_or((path, ""));
            let mut entry_params = params.clone();
            entry_params.extend(parse_params(q));
            let segments: Vec<&str> = p.split('/').filter(|s| !s.is_empty()).collect();
            let r = route::route(
                &method,
                &segments,
                entry_params.contains_key("query"),
                false,
            );
            let entry_body = e.get("Body").cloned().unwrap_or(Value::Null);
            let reply = match r {
                Route::Batch | Route::Authorize => {
                    Reply::refuse(r.envelope(), "Not allowed in a batch")
                }
                other => self.operation(
                    other,
                    &entry_body,
                    base,
                    principal,
                    &entry_params,
                    Scope::BatchEntry,
                ),
            };
            results.push(element(reply));
        }
        if step.as_deref() == Some("gateway_timeout") {
            return Reply::Text(
                StatusCode::BAD_GATEWAY,
                "<html><body><h1>502 Bad Gateway</h1></body></html>".into(),
            );
        }
        Reply::Json(StatusCode::OK, batch_envelope(&[], &[], results))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_paths_lose_any_service_prefix() {
        assert_eq!(relative("/testcaseresult/create"), "/testcaseresult/create");
        assert_eq!(
            relative("https://rally1.rallydev.com/slm/webservice/v2.x/defect/1?fetch=Name"),
            "/defect/1?fetch=Name"
        );
        assert_eq!(relative("/slm/webservice/v2.0/defect/1"), "/defect/1");
    }
}
