//! TestCaseResult request bodies: `{"<TestCaseResult in any case>": {attributes}}`, and the
//! reference spellings clients use for `TestCase` (`/testcase/1`, `testcase/1`, a full URL,
//! `{"_ref": ...}`). Parsing errors name the problem, for a WSAPI-shaped answer.

use serde_json::{Map, Value};

/// Why a body cannot be handled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("the request body is not valid JSON: {0}")]
    Json(String),
    #[error("the request body must be a JSON object")]
    NotObject,
    #[error(
        "the request body must have one root key \"TestCaseResult\" holding an object, found {0}"
    )]
    RootKey(String),
    #[error(
        "the Batch must be an array of {{\"Entry\": {{\"Path\", \"Method\", \"Body\"}}}} objects"
    )]
    Batch,
    #[error("CollectionItems must be an array of objects")]
    Items,
}

/// Maximum nesting accepted in an intercepted body (serde_json's own limit is 128).
pub const MAX_DEPTH: usize = 64;

fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

/// Parses bytes as a JSON object.
pub fn parse(bytes: &[u8]) -> Result<Map<String, Value>, BodyError> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| BodyError::Json(e.to_string()))?;
    if depth(&v) > MAX_DEPTH {
        return Err(BodyError::Json(format!(
            "nested deeper than {MAX_DEPTH} levels"
        )));
    }
    match v {
        Value::Object(m) => Ok(m),
        _ => Err(BodyError::NotObject),
    }
}

/// The root key (as sent) and the attribute map of a TestCaseResult body, taken out of the
/// parsed body rather than copied: an intercepted body is held once (issue 16).
pub fn result_fields(body: Map<String, Value>) -> Result<(String, Map<String, Value>), BodyError> {
    let mut entries = body.into_iter();
    match (entries.next(), entries.next()) {
        (Some((k, Value::Object(m))), None) if k.eq_ignore_ascii_case("testcaseresult") => {
            Ok((k, m))
        }
        (first, second) => {
            let keys: Vec<String> = first
                .into_iter()
                .chain(second)
                .chain(entries)
                .map(|(k, _)| k)
                .collect();
            Err(BodyError::RootKey(format!("{keys:?}")))
        }
    }
}

/// Absent, null, or an empty string (after trimming) — "missing" for enrichment.
pub fn missing(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.trim().is_empty(),
        Some(Value::Object(m)) => m
            .get("_ref")
            .is_none_or(|r| r.as_str().is_none_or(|s| s.trim().is_empty())),
        _ => false,
    }
}

pub use crate::wsapi::parse_ref;

/// Rewrites every string in `v` that starts with the origin `from` (followed by `/`) to start
/// with `to` instead — refs a client copied from the sidecar's own answers, which carry the
/// sidecar's origin, sent back in a body. Returns how many were rewritten.
pub fn rebase_refs(v: &mut Value, from: &str, to: &str) -> usize {
    match v {
        Value::String(s) => match s.strip_prefix(from) {
            Some(rest) if rest.starts_with('/') => {
                *s = format!("{to}{rest}");
                1
            }
            _ => 0,
        },
        Value::Array(a) => a.iter_mut().map(|x| rebase_refs(x, from, to)).sum(),
        Value::Object(m) => m.values_mut().map(|x| rebase_refs(x, from, to)).sum(),
        _ => 0,
    }
}

/// The TestCase id a result names, if it names one the sidecar can look up.
pub fn test_case_id(fields: &Map<String, Value>) -> Option<String> {
    let (ty, id) = parse_ref(fields.get("TestCase")?)?;
    (ty == "testcase").then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn root_key_in_any_case() {
        let b = parse(br#"{"testcaseresult": {"Build": "b"}}"#).expect("json");
        assert_eq!(result_fields(b).expect("fields").0, "testcaseresult");
        assert_eq!(
            result_fields(parse(br#"{"Defect": {}}"#).expect("json")),
            Err(BodyError::RootKey(r#"["Defect"]"#.into()))
        );
        assert!(matches!(
            result_fields(parse(br#"{"TestCaseResult": 1}"#).expect("json")),
            Err(BodyError::RootKey(_))
        ));
        assert_eq!(
            result_fields(parse(br#"{"TestCaseResult": {}, "x": {}}"#).expect("json")),
            Err(BodyError::RootKey(r#"["TestCaseResult", "x"]"#.into()))
        );
        assert_eq!(parse(b"[1]"), Err(BodyError::NotObject));
        assert!(matches!(parse(b"{nope"), Err(BodyError::Json(_))));
        let deep = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(matches!(
            parse(format!("{{\"a\": {deep}}}").as_bytes()),
            Err(BodyError::Json(_))
        ));
    }

    #[test]
    fn four_ref_spellings() {
        for v in [
            json!("/testcase/1001"),
            json!("testcase/1001"),
            json!("https://rally1.rallydev.com/slm/webservice/v2.0/testcase/1001"),
            json!({"_ref": "/testcase/1001.js"}),
            json!("https://localhost:8443/slm/webservice/v2.0/TestCase/1001?fetch=Name"),
        ] {
            assert_eq!(
                parse_ref(&v),
                Some(("testcase".into(), "1001".into())),
                "{v}"
            );
        }
        assert_eq!(parse_ref(&json!("1001")), None);
        assert_eq!(parse_ref(&json!("/testcase/../../x y")), None);
    }

    #[test]
    fn refs_with_the_sidecars_origin_go_back_to_rallys() {
        let mut v = json!({"TestCaseResult": {
            "TestCase": "https://localhost:8443/slm/webservice/v2.0/testcase/1001",
            "Tester": {"_ref": "https://localhost:8443/slm/webservice/v2.x/user/400"},
            "Notes": "see https://localhost:8443x/ and https://localhost:8443",
            "TestSet": "/testset/7"}});
        let n = rebase_refs(
            &mut v,
            "https://localhost:8443",
            "https://rally1.rallydev.com",
        );
        assert_eq!(n, 2);
        let r = &v["TestCaseResult"];
        assert_eq!(
            r["TestCase"],
            "https://rally1.rallydev.com/slm/webservice/v2.0/testcase/1001"
        );
        assert_eq!(
            r["Tester"]["_ref"],
            "https://rally1.rallydev.com/slm/webservice/v2.x/user/400"
        );
        assert_eq!(
            r["Notes"],
            "see https://localhost:8443x/ and https://localhost:8443"
        );
        assert_eq!(r["TestSet"], "/testset/7");
    }

    #[test]
    fn what_counts_as_missing() {
        assert!(missing(None));
        assert!(missing(Some(&json!(null))));
        assert!(missing(Some(&json!("  "))));
        assert!(missing(Some(&json!({"_ref": ""}))));
        assert!(!missing(Some(&json!("b1"))));
        assert!(!missing(Some(&json!(0))));
        assert!(!missing(Some(&json!({"_ref": "/user/1"}))));
    }
}
