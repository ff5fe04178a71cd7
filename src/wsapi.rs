//! The WSAPI vocabulary shared by the proxy and the simulator: the service root, the envelope
//! shapes Rally answers with (`OperationResult`, `CreateResult`, `QueryResult`, `BatchResult`,
//! `<TypeName>`), and helpers to build them. See ../shared/rally-wsapi.md §4.

use serde_json::{Map, Value, json};

/// Path prefix of WSAPI v2.0.
pub const SERVICE_ROOT: &str = "/slm/webservice/v2.0";
/// Path prefix of the schema service pyral reads at start-up.
pub const SCHEMA_ROOT: &str = "/slm/schema/v2.0";
/// `_rallyAPIMajor` carried by every object.
pub const API_MAJOR: &str = "2";
/// `_rallyAPIMinor` carried by every object.
pub const API_MINOR: &str = "0";

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
pub fn error_envelope(kind: Envelope, errors: &[String], warnings: &[String]) -> Value {
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

/// Serialises an envelope; never fails for values built from `json!`.
pub fn to_bytes(value: &Value) -> bytes::Bytes {
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
pub fn strip_js(segment: &str) -> &str {
    segment
        .strip_suffix(".js")
        .or_else(|| segment.strip_suffix(".JS"))
        .unwrap_or(segment)
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
    fn js_suffix_is_optional() {
        assert_eq!(strip_js("create.js"), "create");
        assert_eq!(strip_js("create"), "create");
    }
}
