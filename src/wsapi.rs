//! The WSAPI vocabulary shared by the proxy and the simulator: the service root, the envelope
//! shapes Rally answers with (`OperationResult`, `CreateResult`, `QueryResult`, `BatchResult`,
//! `<TypeName>`), and helpers to build them. See docs/simulator.md for the facts and their sources.

use serde_json::{Map, Value, json};

/// Path prefix of WSAPI v2.0: where the sidecar's own requests go.
pub(crate) const SERVICE_ROOT: &str = "/slm/webservice/v2.0";
/// Path prefix of every WSAPI version; the version segment follows it.
pub(crate) const SERVICE_PREFIX: &str = "/slm/webservice/";
/// The API version segments Rally serves under `/slm/webservice/` and `/slm/schema/`: `v2.0`,
/// and `v2.x`, which real clients use and whose answers carry `v2.x` in every `_ref`.
pub(crate) const API_VERSIONS: &[&str] = &["v2.0", "v2.x"];
/// `_rallyAPIMajor` carried by every object.
pub(crate) const API_MAJOR: &str = "2";
/// `_rallyAPIMinor` carried by every object.
pub(crate) const API_MINOR: &str = "0";

/// Headers the sidecar adds to its answers (and the one request header it reads).
pub(crate) mod headers {
    /// Names the sidecar as the source of an answer, with a stable code.
    pub(crate) const ERROR: &str = "x-rally-sidecar-error";
    /// The sidecar's decision on a result write (`allowed`, `refused-archived`, ...).
    pub(crate) const DECISION: &str = "x-rally-sidecar-decision";
    /// What the sidecar filled (`Build,Date,Tester`).
    pub(crate) const FILLED: &str = "x-rally-sidecar-filled";
    /// Whether the result was read back from Rally and found as sent.
    pub(crate) const CONFIRMED: &str = "x-rally-sidecar-confirmed";
    /// How many attempts the write took.
    pub(crate) const ATTEMPTS: &str = "x-rally-sidecar-attempts";
    /// The journal row of the write.
    pub(crate) const JOURNAL_ID: &str = "x-rally-sidecar-journal-id";
    /// Request header: a build for this write.
    pub(crate) const BUILD: &str = "x-rally-build";
    /// Request id, propagated or generated.
    pub(crate) const REQUEST_ID: &str = "x-request-id";
}

/// The envelope kinds a WSAPI JSON response can have (the single root key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Envelope {
    Operation,
    Create,
    Query,
    Batch,
}

impl Envelope {
    pub fn key(self) -> &'static str {
        match self {
            Envelope::Operation => "OperationResult",
            Envelope::Create => "CreateResult",
            Envelope::Query => "QueryResult",
            Envelope::Batch => "BatchResult",
        }
    }
}

/// `{"<Envelope>": {"_rallyAPIMajor": "2", "_rallyAPIMinor": "0", "Errors": [...], "Warnings": [...]}}`
pub(crate) fn error_envelope(kind: Envelope, errors: &[String], warnings: &[String]) -> Value {
    if kind == Envelope::Batch {
        return batch_envelope(errors, warnings, Vec::new());
    }
    let mut inner = Map::new();
    inner.insert("_rallyAPIMajor".into(), json!(API_MAJOR));
    inner.insert("_rallyAPIMinor".into(), json!(API_MINOR));
    inner.insert("Errors".into(), json!(errors));
    inner.insert("Warnings".into(), json!(warnings));
    if kind == Envelope::Query {
        inner.insert("TotalResultCount".into(), json!(0));
        inner.insert("StartIndex".into(), json!(0));
        inner.insert("PageSize".into(), json!(0));
        inner.insert("Results".into(), json!([]));
    }
    let mut outer = Map::new();
    outer.insert(kind.key().into(), Value::Object(inner));
    Value::Object(outer)
}

/// A `BatchResult` shaped like the one captured from real Rally: the `BatchResult` object holds
/// only `Errors`, `Warnings` and `Results` (no `_rallyAPIMajor`/`_rallyAPIMinor` at that level);
/// each element of `results` is built by [`batch_element`].
pub(crate) fn batch_envelope(errors: &[String], warnings: &[String], results: Vec<Value>) -> Value {
    json!({"BatchResult": {"Errors": errors, "Warnings": warnings, "Results": results}})
}

/// One element of `BatchResult.Results`: `_rallyAPIMajor`/`_rallyAPIMinor`, the entry's own
/// `Errors` and `Warnings`, and `Object` when the entry succeeded and produced one.
pub(crate) fn batch_element(
    errors: &[String],
    warnings: &[String],
    object: Option<Value>,
) -> Value {
    let mut m = Map::new();
    m.insert("_rallyAPIMajor".into(), json!(API_MAJOR));
    m.insert("_rallyAPIMinor".into(), json!(API_MINOR));
    m.insert("Errors".into(), json!(errors));
    m.insert("Warnings".into(), json!(warnings));
    if let Some(o) = object.filter(|_| errors.is_empty()) {
        m.insert("Object".into(), o);
    }
    Value::Object(m)
}

/// Splits a WSAPI path into its version and the rest: `/slm/webservice/v2.x/defect/1` →
/// `("v2.x", "/defect/1")`. `None` for other paths and versions Rally does not serve.
pub(crate) fn split_service_path(path: &str) -> Option<(&str, &str)> {
    split_versioned(path, "/slm/webservice/")
}

/// [`split_service_path`] for the schema service (`/slm/schema/<version>/...`).
pub(crate) fn split_schema_path(path: &str) -> Option<(&str, &str)> {
    split_versioned(path, "/slm/schema/")
}

fn split_versioned<'a>(path: &'a str, prefix: &str) -> Option<(&'a str, &'a str)> {
    let rest = path.strip_prefix(prefix)?;
    let (version, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    API_VERSIONS
        .iter()
        .any(|v| v.eq_ignore_ascii_case(version))
        .then_some((version, tail))
}

/// Serialises an envelope; never fails for values built from `json!`.
pub(crate) fn to_bytes(value: &Value) -> bytes::Bytes {
    bytes::Bytes::from(serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec()))
}

/// Formats an instant the way Rally returns dates: UTC, milliseconds, `Z`.
pub fn format_date(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// Strips a trailing `.js` (the legacy suffix every v2.0 path accepts).
pub(crate) fn strip_js(segment: &str) -> &str {
    segment
        .strip_suffix(".js")
        .or_else(|| segment.strip_suffix(".JS"))
        .unwrap_or(segment)
}

/// The version segments that name WSAPI v2 (Rally serves `v2.x` as well as `v2.0`, and its
/// refs echo the one the client used: docs/simulator.md).
pub(crate) fn is_v2(version: &str) -> bool {
    version == "v2.0" || version.eq_ignore_ascii_case("v2.x")
}

/// A WSAPI path split once: its version segment and the segments after it, each without the
/// legacy `.js` (which Rally accepts at the end of any segment). `None` for paths outside
/// `/slm/webservice/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServicePath<'a> {
    pub version: &'a str,
    pub segments: Vec<&'a str>,
}

/// Splits `path` (no query string) into a [`ServicePath`].
pub(crate) fn service_path(path: &str) -> Option<ServicePath<'_>> {
    let rest = path.strip_prefix(SERVICE_PREFIX)?;
    let mut parts = rest.split('/');
    let version = parts.next().filter(|v| !v.is_empty())?;
    let segments = parts.filter(|s| !s.is_empty()).map(strip_js).collect();
    Some(ServicePath { version, segments })
}

/// A reference's type segment and id, from any of the four spellings clients use
/// (`/testcase/1`, `testcase/1`, a full URL, `{"_ref": ...}`), with or without `.js`.
pub fn parse_ref(v: &Value) -> Option<(String, String)> {
    let text = match v {
        Value::String(s) => s.as_str(),
        Value::Object(m) => m.get("_ref")?.as_str()?,
        _ => return None,
    };
    let text = text.split(['?', '#']).next().unwrap_or(text);
    let segs: Vec<&str> = text.split('/').filter(|s| !s.is_empty()).collect();
    let id = strip_js(segs.last()?);
    let ty = strip_js(segs.get(segs.len().checked_sub(2)?)?);
    is_object_id(id).then(|| (ty.to_ascii_lowercase(), id.to_string()))
}

/// An ObjectID or ObjectUUID as it may appear in a path.
pub(crate) fn is_object_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// The id at the end of a workspace or project ref in any spelling (`/workspace/1`,
/// `workspace/1`, a full URL, `1`).
pub fn scope_id(s: &str) -> Option<String> {
    let s = s.split(['?', '#']).next().unwrap_or(s);
    let last = s.split('/').rfind(|x| !x.is_empty())?;
    let id = strip_js(last);
    is_object_id(id).then(|| id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_envelope_has_the_fields_clients_index() {
        let v = error_envelope(Envelope::Operation, &["boom".into()], &[]);
        let inner = &v["OperationResult"];
        assert_eq!(inner["_rallyAPIMajor"], "2");
        assert_eq!(inner["_rallyAPIMinor"], "0");
        assert_eq!(inner["Errors"][0], "boom");
        assert!(inner["Warnings"].as_array().is_some_and(|w| w.is_empty()));
        let q = error_envelope(Envelope::Query, &["x".into()], &[]);
        assert_eq!(q["QueryResult"]["TotalResultCount"], 0);
    }

    #[test]
    fn service_paths_in_every_version_and_spelling() {
        let p = service_path("/slm/webservice/v2.x/testcase/1090.js/Results.js/add").expect("p");
        assert_eq!(p.version, "v2.x");
        assert_eq!(p.segments, ["testcase", "1090", "Results", "add"]);
        assert!(is_v2(p.version) && is_v2("v2.0") && !is_v2("v1.43"));
        assert_eq!(service_path("/slm/schema/v2.0/x"), None);
        assert_eq!(service_path("/slm/webservice/"), None);
    }

    #[test]
    fn both_served_versions_split_and_others_do_not() {
        assert_eq!(
            split_service_path("/slm/webservice/v2.x/defect/1"),
            Some(("v2.x", "/defect/1"))
        );
        assert_eq!(
            split_service_path("/slm/webservice/v2.0"),
            Some(("v2.0", ""))
        );
        assert_eq!(split_service_path("/slm/webservice/v1.43/defect"), None);
        assert_eq!(
            split_schema_path("/slm/schema/v2.x/workspace/200"),
            Some(("v2.x", "/workspace/200"))
        );
    }

    #[test]
    fn batch_shapes_follow_the_capture() {
        let b = batch_envelope(
            &[],
            &[],
            vec![batch_element(&[], &[], Some(json!({"a": 1})))],
        );
        let inner = b["BatchResult"].as_object().expect("object");
        let mut keys: Vec<&str> = inner.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["Errors", "Results", "Warnings"]);
        assert_eq!(b["BatchResult"]["Results"][0]["_rallyAPIMajor"], "2");
        assert_eq!(b["BatchResult"]["Results"][0]["Object"]["a"], 1);
        let failed = batch_element(&["no".into()], &[], Some(json!({})));
        assert!(failed.get("Object").is_none(), "no Object beside Errors");
    }

    #[test]
    fn js_suffix_is_optional() {
        assert_eq!(strip_js("create.js"), "create");
        assert_eq!(strip_js("create"), "create");
    }
}
