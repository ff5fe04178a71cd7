//! Prometheus metrics, served as text by the admin listener at `GET /metrics`.
//!
//! One [`Metrics`] value is shared by every request; its fields are the whole metrics reference
//! (docs/operations.md lists them). Labels are small closed sets (method, status class,
//! direction) so cardinality stays bounded whatever clients send.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Method {
    Get,
    Post,
    Put,
    Delete,
    Head,
    Options,
    Patch,
    Other,
}

impl From<&http::Method> for Method {
    fn from(m: &http::Method) -> Self {
        match *m {
            http::Method::GET => Method::Get,
            http::Method::POST => Method::Post,
            http::Method::PUT => Method::Put,
            http::Method::DELETE => Method::Delete,
            http::Method::HEAD => Method::Head,
            http::Method::OPTIONS => Method::Options,
            http::Method::PATCH => Method::Patch,
            _ => Method::Other,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: Method,
    /// "2xx", "3xx", "4xx", "5xx" or "1xx".
    pub status_class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Direction {
    /// Client → sidecar → Rally.
    Request,
    /// Rally → sidecar → client.
    Response,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub direction: Direction,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// Stable code, the same as the `X-Rally-Sidecar-Error` header.
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    /// create, update, batch, results_add
    pub operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabels {
    /// The version segment after `/slm/webservice/` (at most 16 characters).
    pub version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FillLabels {
    /// Build, Date, Tester
    pub field: String,
    /// header, context_project, context_workspace, context_global, config, ci_env, received_at, configured_tester, credential_owner
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShadowLabels {
    pub decision: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// confirmed, confirmed_adopted, rejected, unconfirmed
    pub outcome: String,
}

/// Every metric the sidecar exports.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub upstream_latency: Histogram,
    pub open_connections: Gauge,
    pub bytes: Family<DirectionLabels, Counter>,
    pub proxy_errors: Family<ErrorLabels, Counter>,
    pub ref_rewrites: Counter,
    pub intercepted: Family<OpLabels, Counter>,
    pub other_versions: Family<VersionLabels, Counter>,
    pub filled: Family<FillLabels, Counter>,
    pub blocked: Family<ReasonLabels, Counter>,
    pub shadow: Family<ShadowLabels, Counter>,
    pub confirmations: Family<OutcomeLabels, Counter>,
    pub attempts: Histogram,
    pub confirm_latency: Histogram,
    pub duplicates_avoided: Counter,
    pub journal_backlog: Gauge,
    /// `requests` counters already looked up, by method and status class (1xx to 5xx): a
    /// labelled lookup per request costs a formatted string, a hash and a lock.
    request_counters: [std::sync::OnceLock<Counter>; METHODS * 5],
}

/// How many [`Method`] labels there are.
const METHODS: usize = Method::Other as usize + 1;

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("rally_sidecar");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by method and status class",
            requests.clone(),
        );
        let upstream_latency = Histogram::new(exponential_buckets(0.001, 2.0, 20));
        registry.register(
            "upstream_latency_seconds",
            "Time from sending a request upstream to receiving its response head",
            upstream_latency.clone(),
        );
        let open_connections = Gauge::default();
        registry.register(
            "open_connections",
            "Client connections currently open",
            open_connections.clone(),
        );
        let bytes = Family::<DirectionLabels, Counter>::default();
        registry.register(
            "body_bytes",
            "Body bytes relayed, by direction",
            bytes.clone(),
        );
        let proxy_errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "proxy_errors",
            "Responses the sidecar made itself because forwarding failed, by kind",
            proxy_errors.clone(),
        );
        let ref_rewrites = Counter::default();
        registry.register(
            "ref_rewrite_responses",
            "Responses whose upstream origin was rewritten to the client's",
            ref_rewrites.clone(),
        );
        let intercepted = Family::<OpLabels, Counter>::default();
        registry.register(
            "intercepted_writes",
            "TestCaseResult writes intercepted (batch entries and Results/add items each count)",
            intercepted.clone(),
        );
        let other_versions = Family::<VersionLabels, Counter>::default();
        registry.register(
            "other_version_requests",
            "WSAPI requests under a version other than v2.0/v2.x, passed through without interception",
            other_versions.clone(),
        );
        let filled = Family::<FillLabels, Counter>::default();
        registry.register(
            "fields_filled",
            "Fields the sidecar filled, by field and source",
            filled.clone(),
        );
        let blocked = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "writes_refused",
            "Writes the sidecar refused, by reason",
            blocked.clone(),
        );
        let shadow = Family::<ShadowLabels, Counter>::default();
        registry.register(
            "shadow_decisions",
            "In shadow mode: what the sidecar would have filled or refused",
            shadow.clone(),
        );
        let confirmations = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "confirmations",
            "Held writes settled, by outcome",
            confirmations.clone(),
        );
        let attempts = Histogram::new([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0]);
        registry.register(
            "confirm_attempts",
            "Attempts per held write",
            attempts.clone(),
        );
        let confirm_latency = Histogram::new(exponential_buckets(0.005, 2.0, 18));
        registry.register(
            "confirm_latency_seconds",
            "Time from receiving a write to answering it with its fate",
            confirm_latency.clone(),
        );
        let duplicates_avoided = Counter::default();
        registry.register(
            "duplicates_avoided",
            "Writes found by fingerprint after an ambiguous answer, adopted instead of written again",
            duplicates_avoided.clone(),
        );
        let journal_backlog = Gauge::default();
        registry.register(
            "journal_backlog",
            "Journal rows pending or unconfirmed (not known to be in Rally)",
            journal_backlog.clone(),
        );
        Metrics {
            registry,
            confirmations,
            attempts,
            confirm_latency,
            duplicates_avoided,
            journal_backlog,
            request_counters: [const { std::sync::OnceLock::new() }; METHODS * 5],
            intercepted,
            other_versions,
            filled,
            blocked,
            shadow,
            requests,
            upstream_latency,
            open_connections,
            bytes,
            proxy_errors,
            ref_rewrites,
        }
    }

    /// Counts one answered request.
    pub fn record_request(&self, method: &http::Method, status: http::StatusCode) {
        let method = Method::from(method);
        let class = usize::from(status.as_u16() / 100);
        let labels = || RequestLabels {
            method: method.clone(),
            status_class: format!("{class}xx"),
        };
        match self
            .request_counters
            .get((method.clone() as usize) * 5 + class.wrapping_sub(1))
            .filter(|_| (1..=5).contains(&class))
        {
            Some(cached) => cached
                .get_or_init(|| self.requests.get_or_create(&labels()).clone())
                .inc(),
            None => self.requests.get_or_create(&labels()).inc(),
        };
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_method_and_class_through_the_cached_counters() {
        let m = Metrics::new();
        for _ in 0..3 {
            m.record_request(&http::Method::GET, http::StatusCode::OK);
        }
        m.record_request(&http::Method::POST, http::StatusCode::SERVICE_UNAVAILABLE);
        let odd = http::StatusCode::from_u16(999).expect("a status hyper accepts");
        m.record_request(&http::Method::from_bytes(b"PROPFIND").expect("method"), odd);
        let text = m.encode();
        for line in [
            r#"rally_sidecar_requests_total{method="Get",status_class="2xx"} 3"#,
            r#"rally_sidecar_requests_total{method="Post",status_class="5xx"} 1"#,
            r#"rally_sidecar_requests_total{method="Other",status_class="9xx"} 1"#,
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
    }
}
