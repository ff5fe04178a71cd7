//! What an operator reads about writes: `GET /writes` (JSON, from the journal), and the status
//! page `GET /` with its data as `GET /status.json`: per-build counts, the writes that need
//! attention, recent writes, confirmation latencies, and the build context with where it comes
//! from. The page itself (HTML, CSS, the refresh script) is drawn by [`super::page`] from the
//! [`StatusView`] gathered here; the script polls `/status.json` and redraws when its
//! `version` changes.

use std::collections::BTreeMap;

use http::{HeaderValue, Response, StatusCode, header};
use serde::Serialize;
use sha2::Digest;

use super::builds::{BuildLine, DEFAULT_BUILDS};
use super::{Admin, json_response};
use crate::config::ContextConfig;
use crate::error::full;
use crate::intercept::context::ContextView;
use crate::journal::WriteView;
use crate::server::Body;

/// Recent writes shown, writes needing attention shown, latencies drawn.
const RECENT: usize = 50;
const ATTENTION: usize = 20;
const LATENCIES: usize = 60;

/// The build a write without one gets, and every source that could give it, in precedence
/// order (the per-request `X-Rally-Build` header outranks them all).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub(super) struct ContextSources {
    /// What a write without a Build or a header gets (outside any scoped context).
    pub effective: Option<String>,
    /// Where `effective` comes from, in words: `PUT /context`, `config context.build`,
    /// `CI variable GITHUB_RUN_ID`.
    pub source: Option<String>,
    /// Set through `PUT /context`: globally, per workspace, per project (ObjectIDs).
    pub put_global: Option<String>,
    pub workspaces: BTreeMap<String, String>,
    pub projects: BTreeMap<String, String>,
    /// `context.build` (or `RALLY_SIDECAR_BUILD`).
    pub config: Option<String>,
    /// The first of `context.build_env` set when the sidecar started: (variable, value).
    pub ci_variable: Option<(String, String)>,
    /// The CI variables looked for.
    pub ci_variables: Vec<String>,
}

impl ContextSources {
    pub(super) fn of(put: &ContextView, cfg: &ContextConfig) -> ContextSources {
        let nonempty = |b: &Option<String>| b.clone().filter(|b| !b.trim().is_empty());
        let (effective, source) = match (nonempty(&put.build), nonempty(&cfg.build)) {
            (Some(b), _) => (Some(b), Some("PUT /context".to_string())),
            (None, Some(b)) => (Some(b), Some("config context.build".to_string())),
            (None, None) => match &cfg.build_from_env {
                Some((var, value)) => (Some(value.clone()), Some(format!("CI variable {var}"))),
                None => (None, None),
            },
        };
        ContextSources {
            effective,
            source,
            put_global: put.build.clone(),
            workspaces: put.workspaces.clone(),
            projects: put.projects.clone(),
            config: cfg.build.clone(),
            ci_variable: cfg.build_from_env.clone(),
            ci_variables: cfg.build_env.clone(),
        }
    }
}

/// One settled write's confirmation latency.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(super) struct Sample {
    pub id: i64,
    pub test_case: String,
    pub state: crate::journal::State,
    pub ms: f64,
}

/// Recent confirmation latencies and their quantiles (confirmed writes only).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub(super) struct Latencies {
    /// Oldest first.
    pub samples: Vec<Sample>,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

impl Latencies {
    pub(super) fn of(rows: &[WriteView]) -> Latencies {
        let samples: Vec<_> = rows
            .iter()
            .filter_map(|r| {
                r.latency_ms.map(|ms| Sample {
                    id: r.id,
                    test_case: r.test_case_label(),
                    state: r.state,
                    ms,
                })
            })
            .collect();
        let mut ok: Vec<f64> = samples
            .iter()
            .filter(|s| s.state == crate::journal::State::Confirmed)
            .map(|s| s.ms)
            .collect();
        ok.sort_by(f64::total_cmp);
        // Nearest rank: the smallest sample with at least q of them at or below it.
        let q = |q: f64| {
            let n = ok.len();
            (n > 0).then(|| ok[((q * n as f64).ceil() as usize).clamp(1, n) - 1])
        };
        Latencies {
            p50_ms: q(0.5),
            p95_ms: q(0.95),
            max_ms: ok.last().copied(),
            samples,
        }
    }
}

/// Everything the status page shows.
#[derive(Debug, Clone, Default, Serialize)]
pub(super) struct StatusView {
    /// Changes whenever anything shown changes (a digest of the rest).
    pub version: String,
    /// False when confirmation (and so the journal) is off.
    pub journal: bool,
    pub totals: BTreeMap<String, i64>,
    pub builds: Vec<BuildLine>,
    pub attention: Vec<WriteView>,
    pub recent: Vec<WriteView>,
    pub latencies: Latencies,
    pub context: ContextSources,
    pub upstream_last_answer: String,
    pub upstream_last_failure: String,
    pub readiness: String,
    /// A journal that could not be read, said on the page rather than hidden.
    pub error: Option<String>,
}

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

    /// Gathers what the status page shows.
    pub(super) async fn status_view(&self) -> StatusView {
        let (last_ok, last_err) = self.health.describe();
        let mut v = StatusView {
            journal: self.journal.is_some(),
            context: ContextSources::of(&self.context.view(), &self.build_config),
            upstream_last_answer: last_ok,
            upstream_last_failure: last_err,
            readiness: self.readiness.report(),
            ..StatusView::default()
        };
        if let Some(j) = &self.journal {
            let read = async {
                Ok::<_, crate::journal::JournalError>((
                    j.counts().await?,
                    j.builds(DEFAULT_BUILDS).await?,
                    j.attention(ATTENTION).await?,
                    j.recent(RECENT).await?,
                    j.latencies(LATENCIES).await?,
                ))
            };
            match read.await {
                Ok((counts, builds, attention, recent, latencies)) => {
                    v.totals = counts
                        .into_iter()
                        .map(|(s, n)| (s.as_str().to_string(), n))
                        .collect();
                    v.builds = builds.into_iter().map(BuildLine::from).collect();
                    v.attention = attention;
                    v.recent = recent;
                    v.latencies = Latencies::of(&latencies);
                }
                Err(e) => v.error = Some(e.to_string()),
            }
        }
        let digest = sha2::Sha256::digest(serde_json::to_vec(&v).unwrap_or_default());
        v.version = hex::encode(&digest[..8]);
        v
    }

    /// `GET /status.json`: what the page shows, for its refresh script and for scripts.
    pub(super) async fn status_json(&self) -> Response<Body> {
        let v = self.status_view().await;
        let mut r = json_response(
            StatusCode::OK,
            &serde_json::to_value(&v).unwrap_or_default(),
        );
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    }

    /// `GET /`: the status page, self-contained (no external assets: it works offline), with a
    /// content security policy that lets only its own inline script run.
    pub(super) async fn status_page(&self) -> Response<Body> {
        let v = self.status_view().await;
        let mut r = Response::new(full(super::page::render(&v)));
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        if let Ok(csp) = HeaderValue::from_str(&super::page::content_security_policy()) {
            h.insert(header::CONTENT_SECURITY_POLICY, csp);
        }
        r
    }
}
