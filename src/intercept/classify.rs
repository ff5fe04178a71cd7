//! Classification: method + path decide, once, whether a request is a TestCaseResult write.
//! The path is split once ([`crate::wsapi::service_path`]): the version segment (Rally serves
//! `v2.0` and `v2.x`), then every segment without its legacy `.js` (Rally accepts it at the end
//! of any segment) and compared case-insensitively. The query string never changes the class.
//! Everything else is [`Operation::Passthrough`] and streams untouched; a WSAPI path with a
//! version Rally does not serve as v2 passes too, but as [`Operation::OtherVersion`], so it is
//! counted. (A POST whose form body says `_method=GET` — the .NET toolkit's queries — is
//! recognised later, once the body is read.)

use crate::wsapi::{SERVICE_PREFIX, is_object_id, is_v2, service_path};

/// What a request is, for the interception layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// `POST|PUT /testcaseresult/create`
    CreateResult,
    /// `POST|PUT /testcaseresult/<ObjectID or UUID>`
    UpdateResult { id: String },
    /// `POST /batch` — entries are examined once the body is read.
    Batch,
    /// `POST /testcase/<id>/Results/add` — new-object maps become results of that test case.
    AddResults { test_case: String },
    /// A WSAPI path under a version other than v2.0/v2.x: passed through, counted.
    OtherVersion { version: String },
    /// Anything else.
    Passthrough,
}

impl Operation {
    /// Stable label for metrics, logs and the journal.
    pub fn label(&self) -> &'static str {
        match self {
            Operation::CreateResult => "create",
            Operation::UpdateResult { .. } => "update",
            Operation::Batch => "batch",
            Operation::AddResults { .. } => "results_add",
            Operation::OtherVersion { .. } => "other_version",
            Operation::Passthrough => "passthrough",
        }
    }

    /// Whether the request leaves the streaming path to be intercepted.
    pub fn is_intercepted(&self) -> bool {
        !matches!(
            self,
            Operation::Passthrough | Operation::OtherVersion { .. }
        )
    }
}

/// Classifies a request by method and path (the query string is ignored).
pub fn classify(method: &http::Method, path: &str) -> Operation {
    let Some(p) = service_path(path) else {
        return Operation::Passthrough;
    };
    if !is_v2(p.version) {
        return Operation::OtherVersion {
            version: p.version.chars().take(16).collect(),
        };
    }
    let write = *method == http::Method::POST || *method == http::Method::PUT;
    if !write {
        return Operation::Passthrough;
    }
    let eq = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    match p.segments.as_slice() {
        [t, c] if eq(t, "testcaseresult") && eq(c, "create") => Operation::CreateResult,
        [t, id] if eq(t, "testcaseresult") && is_object_id(id) => {
            Operation::UpdateResult { id: id.to_string() }
        }
        [b] if eq(b, "batch") && *method == http::Method::POST => Operation::Batch,
        [t, id, coll, add]
            if eq(t, "testcase")
                && is_object_id(id)
                && eq(coll, "results")
                && eq(add, "add")
                && *method == http::Method::POST =>
        {
            Operation::AddResults {
                test_case: id.to_string(),
            }
        }
        _ => Operation::Passthrough,
    }
}

/// For a batch entry's `Path` (relative, or a full URL under any origin and v2 version): the
/// operation it performs. A batch inside a batch is not one.
pub fn classify_entry(method: &str, path: &str) -> Operation {
    let path = path.split(['?', '#']).next().unwrap_or(path);
    let full = match path.find(SERVICE_PREFIX) {
        Some(i) => path[i..].to_string(),
        None => format!("{SERVICE_PREFIX}v2.0/{}", path.trim_start_matches('/')),
    };
    match http::Method::from_bytes(method.trim().to_ascii_uppercase().as_bytes()) {
        Ok(m) => match classify(&m, &full) {
            Operation::Batch | Operation::OtherVersion { .. } => Operation::Passthrough,
            other => other,
        },
        Err(_) => Operation::Passthrough,
    }
}

/// The path below the version segment of a batch entry's `Path`, e.g. `/testcaseresult/create`.
pub fn entry_relative(path: &str) -> String {
    let path = path.split(['?', '#']).next().unwrap_or(path);
    match path.find(SERVICE_PREFIX) {
        Some(i) => {
            let rest = &path[i + SERVICE_PREFIX.len()..];
            match rest.find('/') {
                Some(j) => rest[j..].to_string(),
                None => "/".into(),
            }
        }
        None => format!("/{}", path.trim_start_matches('/')),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    const R: &str = "/slm/webservice/v2.0";

    #[test]
    fn result_writes_in_every_spelling_and_version() {
        for (m, p) in [
            (Method::PUT, "/slm/webservice/v2.0/testcaseresult/create"),
            (
                Method::POST,
                "/slm/webservice/v2.0/TestCaseResult/create.js",
            ),
            (Method::POST, "/slm/webservice/v2.0/TESTCASERESULT/CREATE"),
            (Method::PUT, "/slm/webservice/v2.0/testcaseresult.js/create"),
            (Method::POST, "/slm/webservice/v2.x/testcaseresult/create"),
            (
                Method::POST,
                "/slm/webservice/V2.X/testcaseresult.js/create.js",
            ),
        ] {
            assert_eq!(classify(&m, p), Operation::CreateResult, "{m} {p}");
        }
        assert_eq!(
            classify(&Method::POST, &format!("{R}/testcaseresult/10000000001.js")),
            Operation::UpdateResult {
                id: "10000000001".into()
            }
        );
        assert_eq!(
            classify(
                &Method::PUT,
                "/slm/webservice/v2.x/TestCaseResult/5a1e0000-0000-4000-8000-0002540be401"
            ),
            Operation::UpdateResult {
                id: "5a1e0000-0000-4000-8000-0002540be401".into()
            }
        );
        assert_eq!(
            classify(&Method::POST, &format!("{R}/batch.js")),
            Operation::Batch
        );
        for p in [
            "/slm/webservice/v2.0/TestCase/1001/Results/add",
            "/slm/webservice/v2.0/testcase/1001.js/Results/add",
            "/slm/webservice/v2.0/testcase/1001/Results.js/add",
            "/slm/webservice/v2.x/testcase/1001/results/add.js",
        ] {
            assert_eq!(
                classify(&Method::POST, p),
                Operation::AddResults {
                    test_case: "1001".into()
                },
                "{p}"
            );
        }
    }

    #[test]
    fn other_versions_are_named_and_everything_else_passes_through() {
        assert_eq!(
            classify(&Method::POST, "/slm/webservice/v1.43/testcaseresult/create"),
            Operation::OtherVersion {
                version: "v1.43".into()
            }
        );
        assert!(
            !classify(&Method::GET, "/slm/webservice/v3.0/defect").is_intercepted(),
            "other versions pass through"
        );
        for (m, p) in [
            (Method::GET, format!("{R}/testcaseresult/create")),
            (Method::DELETE, format!("{R}/testcaseresult/123")),
            (Method::GET, format!("{R}/testcaseresult/123")),
            (Method::POST, format!("{R}/testcase/create")),
            (Method::POST, format!("{R}/testcaseresult.js")),
            (Method::POST, format!("{R}/testcaseresult/1/copy")),
            (Method::POST, "/testcaseresult/create".to_string()),
            (Method::POST, format!("{R}/TestCase/1001/Results/remove")),
            (Method::PUT, format!("{R}/batch")),
            (Method::POST, format!("{R}/testcaseresult/..%2F..")),
        ] {
            assert_eq!(classify(&m, &p), Operation::Passthrough, "{m} {p}");
        }
    }

    #[test]
    fn batch_entry_paths() {
        assert_eq!(
            classify_entry("PUT", "/testcaseresult/create"),
            Operation::CreateResult
        );
        assert_eq!(
            classify_entry("post", "testcaseresult/12?fetch=Build"),
            Operation::UpdateResult { id: "12".into() }
        );
        assert_eq!(
            classify_entry(
                "POST",
                "https://rally1.rallydev.com/slm/webservice/v2.x/testcaseresult/create.js"
            ),
            Operation::CreateResult
        );
        assert_eq!(
            classify_entry("POST", "/testcase/1090.js/Results/add"),
            Operation::AddResults {
                test_case: "1090".into()
            }
        );
        assert_eq!(
            classify_entry("GET", "/testcaseresult/12"),
            Operation::Passthrough
        );
        assert_eq!(
            classify_entry("POST", "/defect/create"),
            Operation::Passthrough
        );
        assert_eq!(classify_entry("POST", "/batch"), Operation::Passthrough);
        assert_eq!(
            entry_relative("https://localhost:8443/slm/webservice/v2.x/testcaseresult/create?x=1"),
            "/testcaseresult/create"
        );
        assert_eq!(
            entry_relative("testcaseresult/create"),
            "/testcaseresult/create"
        );
    }
}
