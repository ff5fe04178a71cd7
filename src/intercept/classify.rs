//! Classification: method + path decide, once, whether a request is a TestCaseResult write.
//! Everything else is [`Operation::Passthrough`] and streams untouched. Type segments are
//! case-insensitive and take an optional `.js`; the query string never changes the class.
//! (A POST whose form body says `_method=GET` — the .NET toolkit's queries — is recognised
//! later, once the body is read: see `intercept::read_body`.)

use crate::wsapi::{SERVICE_ROOT, strip_js};

/// What a request is, for the interception layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// `POST|PUT /testcaseresult/create`
    CreateResult,
    /// `POST|PUT /testcaseresult/<ObjectID or UUID>`
    UpdateResult { id: String },
    /// `POST /batch` — entries are examined once the body is read.
    Batch,
    /// `POST /testcase/<id>/results/add` — new-object maps become results of that test case.
    AddResults { test_case: String },
    /// Anything else.
    Passthrough,
}

impl Operation {
    /// Stable label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Operation::CreateResult => "create",
            Operation::UpdateResult { .. } => "update",
            Operation::Batch => "batch",
            Operation::AddResults { .. } => "results_add",
            Operation::Passthrough => "passthrough",
        }
    }
}

fn is_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Classifies a request by method and path (the query string is ignored).
pub fn classify(method: &http::Method, path: &str) -> Operation {
    let write = *method == http::Method::POST || *method == http::Method::PUT;
    if !write {
        return Operation::Passthrough;
    }
    let Some(rest) = path.strip_prefix(SERVICE_ROOT) else {
        return Operation::Passthrough;
    };
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let eq = |a: &str, b: &str| strip_js(a).eq_ignore_ascii_case(b);
    match segs.as_slice() {
        [t, c] if eq(t, "testcaseresult") && eq(c, "create") => Operation::CreateResult,
        [t, id] if eq(t, "testcaseresult") && is_id(strip_js(id)) => Operation::UpdateResult {
            id: strip_js(id).to_string(),
        },
        [b] if eq(b, "batch") && *method == http::Method::POST => Operation::Batch,
        [t, id, coll, add]
            if eq(t, "testcase")
                && is_id(id)
                && coll.eq_ignore_ascii_case("results")
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

/// For a batch entry's `Path` (relative, or a full URL): the operation it performs.
pub fn classify_entry(method: &str, path: &str) -> Operation {
    let path = path.split(['?', '#']).next().unwrap_or(path);
    let path = match path.find(SERVICE_ROOT) {
        Some(i) => &path[i..],
        None => path,
    };
    let full = if path.starts_with(SERVICE_ROOT) {
        path.to_string()
    } else {
        format!("{SERVICE_ROOT}/{}", path.trim_start_matches('/'))
    };
    match http::Method::from_bytes(method.trim().to_ascii_uppercase().as_bytes()) {
        Ok(m) => match classify(&m, &full) {
            Operation::Batch => Operation::Passthrough,
            other => other,
        },
        Err(_) => Operation::Passthrough,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    const R: &str = "/slm/webservice/v2.0";

    #[test]
    fn result_writes_in_every_spelling() {
        for (m, p) in [
            (Method::PUT, "/testcaseresult/create"),
            (Method::POST, "/TestCaseResult/create.js"),
            (Method::POST, "/TESTCASERESULT/CREATE"),
            (Method::PUT, "/testcaseresult.js/create"),
        ] {
            assert_eq!(
                classify(&m, &format!("{R}{p}")),
                Operation::CreateResult,
                "{m} {p}"
            );
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
                &format!("{R}/TestCaseResult/5a1e0000-0000-4000-8000-0002540be401")
            ),
            Operation::UpdateResult {
                id: "5a1e0000-0000-4000-8000-0002540be401".into()
            }
        );
        assert_eq!(
            classify(&Method::POST, &format!("{R}/batch")),
            Operation::Batch
        );
        assert_eq!(
            classify(&Method::POST, &format!("{R}/TestCase/1001/Results/add")),
            Operation::AddResults {
                test_case: "1001".into()
            }
        );
    }

    #[test]
    fn everything_else_passes_through() {
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
                "https://rally1.rallydev.com/slm/webservice/v2.0/testcaseresult/create"
            ),
            Operation::CreateResult
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
    }
}
