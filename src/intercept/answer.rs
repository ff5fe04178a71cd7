//! The answers the client gets for intercepted writes, shaped the way its Rally client reads
//! them: Rally's own answer relayed when there was one, otherwise a WSAPI envelope the sidecar
//! composes (an adopted result, an unconfirmed write, a refusal), each with the sidecar's
//! headers (`X-Rally-Sidecar-Decision`, `-Filled`, `-Confirmed`, `-Attempts`, `-Journal-Id`)
//! and with refs pointing at the origin the client used.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use serde_json::{Value, json};

use super::Interceptor;
use super::enrich::{self, Filled};
use crate::confirm::{Expected, Fate, RawAnswer};
use crate::error::{full, wsapi_response};
use crate::server::Body;
use crate::wsapi::{Envelope, SERVICE_ROOT, batch_element, headers};

/// Sets a header if the value is a valid header value.
pub fn set(resp: &mut Response<Body>, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().insert(name, v);
    }
}

/// Serialises a JSON value.
pub fn to_bytes(v: &Value) -> Bytes {
    crate::wsapi::to_bytes(v)
}

/// The decision and filled-fields headers.
pub fn decoration(filled: &[Filled], decision: &str) -> Vec<(&'static str, String)> {
    let mut fields: Vec<&str> = filled.iter().map(|f| f.field).collect();
    fields.sort();
    fields.dedup();
    let mut out = Vec::new();
    if !fields.is_empty() {
        out.push((headers::FILLED, fields.join(",")));
    }
    out.push((headers::DECISION, decision.to_string()));
    out
}

/// Adds the decision and filled-fields headers to an answer.
pub fn decorate(resp: &mut Response<Body>, filled: &[Filled], decision: &str) {
    for (k, v) in decoration(filled, decision) {
        set(resp, k, &v);
    }
}

/// A JSON answer (Rally's body or ours) with refs rewritten to the client's origin.
pub fn json_answer(
    icpt: &Interceptor,
    status: StatusCode,
    bytes: Bytes,
    client_origin: Option<&str>,
) -> Response<Body> {
    let mut bytes = bytes;
    if let Some(to) = client_origin.filter(|_| icpt.cfg.rewrite_refs)
        && let Some(rw) = crate::refs::Rewriter::new(icpt.lookups.rally().origin(), to)
    {
        // One copy, and Rally's answer dropped as soon as it is made.
        bytes = rw.whole(&bytes);
    }
    let mut resp = Response::new(full(bytes));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    resp
}

/// Rally's answer relayed: its status and end-to-end headers, the body with refs rewritten.
pub fn relay(icpt: &Interceptor, a: RawAnswer, client_origin: Option<&str>) -> Response<Body> {
    let mut resp = json_answer(
        icpt,
        StatusCode::from_u16(a.status).unwrap_or(StatusCode::OK),
        a.body,
        client_origin,
    );
    let mut h = a.headers;
    crate::rally::headers::strip_hop_by_hop(&mut h);
    h.remove(header::CONTENT_LENGTH);
    h.remove(header::CONTENT_ENCODING);
    for (k, v) in h.iter() {
        if k != header::CONTENT_TYPE {
            resp.headers_mut().append(k.clone(), v.clone());
        }
    }
    if let Some(ct) = h.get(header::CONTENT_TYPE) {
        resp.headers_mut().insert(header::CONTENT_TYPE, ct.clone());
    }
    resp
}

/// Said when a result is adopted: stored by an attempt whose answer was lost, found again by
/// its fingerprint.
const ADOPTED: &str = "rally-sidecar: Rally's answer to this write was lost; the stored result was found by its fingerprint and read back";

/// The object Rally would have answered with for a result the sidecar adopted.
fn adopted_object(icpt: &Interceptor, object_id: i64, expected: &Expected) -> Value {
    let r = format!(
        "{}{SERVICE_ROOT}/testcaseresult/{object_id}",
        icpt.lookups.rally().origin()
    );
    json!({"_rallyAPIMajor": "2", "_rallyAPIMinor": "0", "_ref": r, "_type": "TestCaseResult",
           "ObjectID": object_id,
           "_refObjectName": format!("{} {}", expected.build.as_deref().unwrap_or_default(),
                                     expected.verdict.as_deref().unwrap_or_default())})
}

fn unconfirmed_message(attempts: u32, cause: &str) -> String {
    format!("rally-sidecar: result not confirmed after {attempts} attempts: {cause}")
}

/// The client's answer to a single held write, from its fate.
pub fn single(
    icpt: &Interceptor,
    kind: Envelope,
    fate: Fate,
    expected: &Expected,
    client_origin: Option<&str>,
) -> Response<Body> {
    match fate {
        Fate::Confirmed {
            answer: Some(a), ..
        }
        | Fate::Rejected {
            answer: Some(a), ..
        } => relay(icpt, a, client_origin),
        Fate::Confirmed { object_id, .. } => {
            let root = if kind == Envelope::Create {
                "CreateResult"
            } else {
                "OperationResult"
            };
            let answer = json!({root: {"_rallyAPIMajor": "2", "_rallyAPIMinor": "0", "Errors": [],
                                       "Warnings": [ADOPTED], "Object": adopted_object(icpt, object_id, expected)}});
            json_answer(icpt, StatusCode::OK, to_bytes(&answer), client_origin)
        }
        Fate::Rejected { cause, .. } => wsapi_response(StatusCode::OK, kind, "rejected", &cause),
        Fate::Unconfirmed {
            attempts, cause, ..
        } => wsapi_response(
            icpt.cfg.confirm.unconfirmed_status,
            kind,
            "unconfirmed",
            &unconfirmed_message(attempts, &cause),
        ),
    }
}

/// A `BatchResult` element (or `Results/add` item answer) for a held write, from its fate.
pub fn element(icpt: &Interceptor, fate: Fate, expected: &Expected) -> Value {
    match fate {
        Fate::Confirmed {
            answer: Some(a), ..
        }
        | Fate::Rejected {
            answer: Some(a), ..
        } => element_of(&a.body),
        Fate::Confirmed { object_id, .. } => batch_element(
            &[],
            &[ADOPTED.to_string()],
            Some(adopted_object(icpt, object_id, expected)),
        ),
        Fate::Rejected { cause, .. } => batch_element(&[cause], &[], None),
        Fate::Unconfirmed {
            attempts, cause, ..
        } => batch_element(&[unconfirmed_message(attempts, &cause)], &[], None),
    }
}

/// A BatchResult element from any answer: an element as it is, or a single write's envelope
/// turned into one.
pub fn element_of(body: &Bytes) -> Value {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let strings = |x: Option<&Value>| -> Vec<String> {
        x.and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|e| e.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    match v.get("CreateResult").or_else(|| v.get("OperationResult")) {
        Some(root) => batch_element(
            &strings(root.get("Errors")),
            &strings(root.get("Warnings")),
            root.get("Object").cloned(),
        ),
        None => v,
    }
}

/// Adds a Warning to the first root object of a WSAPI answer.
pub fn with_warning(body: &Bytes, warning: &str) -> Bytes {
    let Ok(mut v) = serde_json::from_slice::<Value>(body) else {
        return body.clone();
    };
    if let Some(root) = v
        .as_object_mut()
        .and_then(|m| m.values_mut().next())
        .and_then(Value::as_object_mut)
    {
        let warnings = root.entry("Warnings").or_insert_with(|| json!([]));
        if let Some(a) = warnings.as_array_mut() {
            a.push(json!(warning));
        }
    }
    to_bytes(&v)
}

/// The filled-fields value for the journal (`None` when nothing was filled).
pub fn filled_value(filled: &[Filled]) -> Option<String> {
    Some(enrich::header_value(filled)).filter(|f| !f.is_empty())
}
