//! The pure pieces of confirmation: what an answer means ([`classify_answer`]), what was sent and
//! whether Rally stored it ([`Expected`]), how to find it again without an idempotency key
//! ([`fingerprint_query`], [`quote`]), and how long to wait before trying again ([`backoff`]).
//! No I/O here; the state machine in `confirm` puts them to work.

use std::time::Duration;

use serde_json::{Map, Value};

use super::Policy;
use crate::wsapi::parse_ref;

/// What one answer to a create or update means.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// Errors empty and an Object with an ObjectID.
    Accepted { object_id: i64 },
    /// Rally refused for a reason a retry can fix (concurrency conflict, unit of work) and
    /// nothing was written.
    Retry {
        cause: String,
        retry_after: Option<Duration>,
    },
    /// The write may or may not have happened (no answer, reset, 5xx, gateway timeout).
    Ambiguous {
        cause: String,
        retry_after: Option<Duration>,
    },
    /// Rally refused for good (validation, authorization): relay its answer, never retry.
    Final { cause: String },
}

/// Texts Rally uses for refusals a retry can fix (rally-wsapi.md §13).
const RETRYABLE: &[&str] = &[
    "Concurrency conflict",
    "Could not write changes in Unit Of Work",
];

/// Classifies an HTTP answer (status, parsed body) to a create or an update.
pub fn classify_answer(status: u16, body: &Value, retry_after: Option<Duration>) -> Answer {
    let root = body.as_object().and_then(|m| m.values().next());
    let errors: Vec<String> = root
        .and_then(|r| r.get("Errors"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|e| e.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    match status {
        200 => {
            if let Some(first) = errors.first() {
                if RETRYABLE.iter().any(|r| first.contains(r)) {
                    return Answer::Retry {
                        cause: first.clone(),
                        retry_after,
                    };
                }
                return Answer::Final {
                    cause: first.clone(),
                };
            }
            let oid = root
                .and_then(|r| r.get("Object"))
                .and_then(|o| o.get("ObjectID"));
            match oid.and_then(|v| {
                v.as_i64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            }) {
                Some(object_id) => Answer::Accepted { object_id },
                None => Answer::Ambiguous {
                    cause: "Rally answered 200 without an ObjectID".into(),
                    retry_after,
                },
            }
        }
        500 | 502 | 503 | 504 | 524 => Answer::Ambiguous {
            cause: format!("Rally answered HTTP {status}"),
            retry_after,
        },
        _ => Answer::Final {
            cause: errors
                .first()
                .cloned()
                .unwrap_or_else(|| format!("Rally answered HTTP {status}")),
        },
    }
}

/// What was sent, to be found again in what Rally stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub test_case: Option<String>,
    pub build: Option<String>,
    pub date: Option<String>,
    pub verdict: Option<String>,
    pub tester: Option<String>,
}

fn ref_id(v: Option<&Value>) -> Option<String> {
    parse_ref(v?).map(|(_, id)| id)
}

fn instant(s: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

impl Expected {
    /// From the attributes of the (enriched) write.
    pub fn from_fields(f: &Map<String, Value>) -> Expected {
        let s = |k: &str| f.get(k).and_then(Value::as_str).map(str::to_string);
        Expected {
            test_case: ref_id(f.get("TestCase")),
            build: s("Build"),
            date: s("Date"),
            verdict: s("Verdict"),
            tester: ref_id(f.get("Tester")),
        }
    }

    /// Whether the Date sent (if any) is one Rally could take: ISO 8601, a date or a date and
    /// time, with an offset, `Z`, or none (the user's time zone).
    pub fn date_is_wellformed(&self) -> bool {
        use time::macros::format_description;
        let Some(d) = self.date.as_deref() else {
            return true;
        };
        instant(d).is_some()
            || time::Date::parse(d, format_description!("[year]-[month]-[day]")).is_ok()
            || time::PrimitiveDateTime::parse(
                d,
                format_description!(
                    "[year]-[month]-[day]T[hour]:[minute]:[second][optional [.[subsecond]]]"
                ),
            )
            .is_ok()
    }

    /// `None` if `stored` (a read-back TestCaseResult) is the result sent; else what differs.
    pub fn compare(&self, stored: &Map<String, Value>) -> Option<String> {
        let mut diffs = Vec::new();
        if let Some(tc) = &self.test_case
            && ref_id(stored.get("TestCase")).as_ref() != Some(tc)
        {
            diffs.push(format!("TestCase is not {tc}"));
        }
        for (name, want) in [("Build", &self.build), ("Verdict", &self.verdict)] {
            if let Some(w) = want
                && stored.get(name).and_then(Value::as_str) != Some(w.as_str())
            {
                diffs.push(format!(
                    "{name} is {:?}, sent {w:?}",
                    stored.get(name).and_then(Value::as_str).unwrap_or("")
                ));
            }
        }
        if let Some(d) = &self.date {
            let got = stored.get("Date").and_then(Value::as_str).unwrap_or("");
            let same = match (instant(d), instant(got)) {
                (Some(a), Some(b)) => a == b,
                _ => got == d,
            };
            if !same {
                diffs.push(format!("Date is {got:?}, sent {d:?}"));
            }
        }
        if let Some(t) = &self.tester
            && ref_id(stored.get("Tester")).as_ref() != Some(t)
        {
            diffs.push(format!("Tester is not {t}"));
        }
        (!diffs.is_empty()).then(|| diffs.join("; "))
    }
}

/// Quotes a value for the query language so no input can change the query's meaning. WSAPI
/// has no escape for `"` inside a quoted value (rally-wsapi.md §17.9), so a value containing
/// one cannot be expressed safely: the caller gets `None` and must not query by it.
pub fn quote(value: &str) -> Option<String> {
    let ok = !value.is_empty() && !value.contains('"') && !value.chars().any(|c| c.is_control());
    ok.then(|| format!("\"{value}\""))
}

/// The fingerprint query: `TestCase + Build + Date + Verdict`, pairwise AND, every value
/// quoted. `None` when a value cannot be quoted safely (then no re-create is risked).
pub fn fingerprint_query(e: &Expected) -> Option<String> {
    let tc = e.test_case.as_deref()?;
    if !tc.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        return None;
    }
    let tc = quote(&format!("/testcase/{tc}"))?;
    let build = quote(e.build.as_deref()?)?;
    let date = quote(e.date.as_deref()?)?;
    let verdict = quote(e.verdict.as_deref()?)?;
    Some(format!(
        "((((TestCase = {tc}) AND (Build = {build})) AND (Date = {date})) AND (Verdict = {verdict}))"
    ))
}

/// Delay before retry `n` (1-based): exponential from `initial`, capped at `max`, full jitter
/// (`jitter` in [0, 1) picks a point in [0, cap]); a `Retry-After` from Rally wins if longer.
pub fn backoff(p: &Policy, n: u32, jitter: f64, retry_after: Option<Duration>) -> Duration {
    let exp = p.initial_backoff.saturating_mul(
        1u32.checked_shl(n.saturating_sub(1).min(20))
            .unwrap_or(u32::MAX),
    );
    let cap = exp.min(p.max_backoff);
    let jittered = cap.mul_f64(jitter.clamp(0.0, 1.0));
    match retry_after {
        Some(ra) if ra > jittered => ra.min(p.max_backoff.max(ra)),
        _ => jittered,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;

    fn policy() -> Policy {
        Policy {
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            max_attempts: 3,
            timeout: Duration::from_secs(60),
            readback_window: Duration::from_secs(10),
        }
    }

    fn stored(build: &str) -> Map<String, Value> {
        json!({"TestCase": {"_ref": "https://x/slm/webservice/v2.0/testcase/1001"}, "Build": build,
               "Date": "2026-01-01T10:00:00Z", "Verdict": "Pass", "Tester": {"_ref": "/user/400"}})
        .as_object()
        .cloned()
        .unwrap_or_default()
    }

    fn expected() -> Expected {
        Expected {
            test_case: Some("1001".into()),
            build: Some("b1".into()),
            date: Some("2026-01-01T10:00:00.000Z".into()),
            verdict: Some("Pass".into()),
            tester: Some("400".into()),
        }
    }

    #[test]
    fn classification() {
        let ok = json!({"CreateResult": {"Errors": [], "Object": {"ObjectID": 12}}});
        assert_eq!(
            classify_answer(200, &ok, None),
            Answer::Accepted { object_id: 12 }
        );
        let conflict = json!({"CreateResult": {"Errors": ["Concurrency conflict: [Object has been modified ...]"]}});
        assert!(matches!(
            classify_answer(200, &conflict, None),
            Answer::Retry { .. }
        ));
        let validation = json!({"CreateResult": {"Errors": ["Validation error: TestCaseResult.Build should not be null"]}});
        assert!(matches!(
            classify_answer(200, &validation, None),
            Answer::Final { .. }
        ));
        for status in [500, 502, 503, 504, 524] {
            assert!(
                matches!(
                    classify_answer(status, &Value::Null, None),
                    Answer::Ambiguous { .. }
                ),
                "{status}"
            );
        }
        for status in [401, 403, 404, 400] {
            assert!(
                matches!(
                    classify_answer(status, &Value::Null, None),
                    Answer::Final { .. }
                ),
                "{status}"
            );
        }
        let string_oid = json!({"OperationResult": {"Errors": [], "Object": {"ObjectID": "77"}}});
        assert_eq!(
            classify_answer(200, &string_oid, None),
            Answer::Accepted { object_id: 77 }
        );
    }

    #[test]
    fn no_input_can_change_the_query() {
        let mut e = expected();
        e.build = Some("b\") OR (Build != \"x".into());
        assert_eq!(
            fingerprint_query(&e),
            None,
            "a quote in a value refuses the query"
        );
        e.build = Some("b\n".into());
        assert_eq!(fingerprint_query(&e), None);
        let mut e = expected();
        e.test_case = Some("1001) OR (1".into());
        assert_eq!(fingerprint_query(&e), None);
        let mut e = expected();
        e.build = Some("nightly (AND) OR ) (".into());
        let q = fingerprint_query(&e).expect("parentheses and words inside quotes are harmless");
        assert!(q.contains("(Build = \"nightly (AND) OR ) (\")"));
    }

    #[test]
    fn backoff_is_exponential_capped_and_jittered() {
        let p = policy();
        assert_eq!(backoff(&p, 1, 1.0, None), Duration::from_millis(200));
        assert_eq!(backoff(&p, 3, 1.0, None), Duration::from_millis(800));
        assert_eq!(backoff(&p, 30, 1.0, None), Duration::from_secs(5), "capped");
        assert_eq!(
            backoff(&p, 3, 0.0, None),
            Duration::ZERO,
            "full jitter reaches zero"
        );
        assert_eq!(
            backoff(&p, 1, 0.5, Some(Duration::from_secs(2))),
            Duration::from_secs(2),
            "Retry-After wins"
        );
    }

    #[test]
    fn comparison_treats_dates_as_instants() {
        let e = expected();
        assert_eq!(e.compare(&stored("b1")), None);
        assert!(e.compare(&stored("b2")).is_some());
    }
}
