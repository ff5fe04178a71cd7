//! `GET /builds` (counts per build, newest build first) and `GET /builds/<B>` (one build's
//! report, the same as `rally-sidecar summary --build <B> --format json`, so a pipeline that
//! can reach the admin listener but not the journal file gets the same verdict). JSON only.

use http::{Response, StatusCode};
use serde::Serialize;

use super::{Admin, json_response};
use crate::commands::summary::{self, Verdict};
use crate::journal::BuildCounts;
use crate::server::Body;

/// How many builds `GET /builds` and the status page list by default, and at most.
pub(super) const DEFAULT_BUILDS: usize = 20;
const MAX_BUILDS: usize = 500;

/// One line of `GET /builds`: the counts and the verdict `summary` would give.
#[derive(Debug, Clone, Serialize)]
pub(super) struct BuildLine {
    #[serde(flatten)]
    pub counts: BuildCounts,
    pub verdict: Verdict,
    pub exit_code: u8,
}

impl From<BuildCounts> for BuildLine {
    fn from(counts: BuildCounts) -> Self {
        let verdict = Verdict::of(&counts);
        BuildLine {
            counts,
            verdict,
            exit_code: verdict.exit_code(),
        }
    }
}

/// The build named by the rest of the path (`/builds/<B>`), percent-decoded; builds may hold
/// slashes (`release/1.2`), sent raw or as `%2F`.
fn build_of(rest: &str) -> Option<String> {
    let b = percent_encoding::percent_decode_str(rest)
        .decode_utf8()
        .ok()?
        .into_owned();
    (!b.trim().is_empty()).then_some(b)
}

impl Admin {
    /// `GET /builds?limit=20` and `GET /builds/<B>`.
    pub(super) async fn builds(&self, path: &str, query: Option<&str>) -> Response<Body> {
        let Some(j) = &self.journal else {
            return json_response(
                StatusCode::NOT_FOUND,
                &serde_json::json!({"error": "no journal (confirm.enabled = false)"}),
            );
        };
        let rest = path
            .strip_prefix("/builds")
            .unwrap_or("")
            .trim_start_matches('/');
        if rest.is_empty() {
            let limit = query
                .unwrap_or("")
                .split('&')
                .find_map(|p| p.strip_prefix("limit="))
                .and_then(|l| l.parse().ok())
                .unwrap_or(DEFAULT_BUILDS)
                .min(MAX_BUILDS);
            return match j.builds(limit).await {
                Ok(b) => {
                    let lines: Vec<BuildLine> = b.into_iter().map(BuildLine::from).collect();
                    json_response(StatusCode::OK, &serde_json::json!({ "builds": lines }))
                }
                Err(e) => json_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &serde_json::json!({"error": e.to_string()}),
                ),
            };
        }
        let Some(build) = build_of(rest) else {
            return json_response(
                StatusCode::BAD_REQUEST,
                &serde_json::json!({"error": "the build in /builds/<build> is not valid UTF-8"}),
            );
        };
        match summary::summarize(j, &build).await {
            Ok(s) => {
                // An unknown build is a 404 with the same report, so a script can read either.
                let status = if s.verdict == Verdict::Empty {
                    StatusCode::NOT_FOUND
                } else {
                    StatusCode::OK
                };
                json_response(status, &serde_json::to_value(&s).unwrap_or_default())
            }
            Err(e) => json_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                &serde_json::json!({"error": e.to_string()}),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_names_are_decoded_and_may_hold_slashes() {
        assert_eq!(build_of("release%2F1.2").as_deref(), Some("release/1.2"));
        assert_eq!(build_of("release/1.2").as_deref(), Some("release/1.2"));
        assert_eq!(build_of("a%20b").as_deref(), Some("a b"));
        assert_eq!(build_of("%20"), None);
        assert_eq!(build_of("%FF"), None, "not UTF-8");
    }
}
