//! Enrichment, decided purely: fill `Build`, `Date` and `Tester` where the client left them
//! missing (absent, null or empty); never overwrite what the client sent.
//!
//! Build, first source found wins: the request header `X-Rally-Build`; the build context set
//! through the admin API (project scope, then workspace scope, then global); `context.build` in
//! the config (or `RALLY_SIDECAR_BUILD`); the first CI variable of `context.build_env` set in
//! the sidecar's environment. Date: when the sidecar received the request. Tester:
//! `context.tester`, else the owner of the caller's credential.

use serde_json::{Map, Value};

use super::envelope::missing;

/// Where a filled value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    Header,
    ContextProject,
    ContextWorkspace,
    ContextGlobal,
    Config,
    CiEnv,
    ReceivedAt,
    ConfiguredTester,
    CredentialOwner,
}

impl Source {
    pub fn label(self) -> &'static str {
        match self {
            Source::Header => "header",
            Source::ContextProject => "context_project",
            Source::ContextWorkspace => "context_workspace",
            Source::ContextGlobal => "context_global",
            Source::Config => "config",
            Source::CiEnv => "ci_env",
            Source::ReceivedAt => "received_at",
            Source::ConfiguredTester => "configured_tester",
            Source::CredentialOwner => "credential_owner",
        }
    }
}

/// Candidate values, in precedence order, gathered before deciding.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub header_build: Option<String>,
    pub context_project: Option<String>,
    pub context_workspace: Option<String>,
    pub context_global: Option<String>,
    pub config_build: Option<String>,
    /// (variable, value)
    pub ci_build: Option<(String, String)>,
    /// `2026-01-01T10:00:00.123Z`
    pub received_at: String,
    pub configured_tester: Option<String>,
    /// The caller's own user ref, if it could be read.
    pub owner: Option<String>,
}

impl Sources {
    /// The build to use and where it came from.
    pub fn build(&self) -> Option<(String, Source)> {
        let nonempty = |v: &Option<String>| v.clone().filter(|b| !b.trim().is_empty());
        nonempty(&self.header_build)
            .map(|b| (b, Source::Header))
            .or_else(|| nonempty(&self.context_project).map(|b| (b, Source::ContextProject)))
            .or_else(|| nonempty(&self.context_workspace).map(|b| (b, Source::ContextWorkspace)))
            .or_else(|| nonempty(&self.context_global).map(|b| (b, Source::ContextGlobal)))
            .or_else(|| nonempty(&self.config_build).map(|b| (b, Source::Config)))
            .or_else(|| self.ci_build.clone().map(|(_, v)| (v, Source::CiEnv)))
    }

    fn tester(&self) -> Option<(String, Source)> {
        self.configured_tester
            .clone()
            .map(|t| (t, Source::ConfiguredTester))
            .or_else(|| self.owner.clone().map(|t| (t, Source::CredentialOwner)))
    }
}

/// A field that was filled, and from where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filled {
    pub field: &'static str,
    pub source: Source,
    pub value: String,
}

/// What enrichment decided for one result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enriched {
    /// The attributes to send, and what was filled.
    Ready(Map<String, Value>, Vec<Filled>),
    /// No Build was sent and none could be found.
    NoBuild,
}

/// Decides the enriched attributes. Pure: all inputs are in `fields` and `sources`.
pub fn enrich(fields: &Map<String, Value>, sources: &Sources) -> Enriched {
    let mut out = fields.clone();
    let mut filled = Vec::new();
    if missing(fields.get("Build")) {
        match sources.build() {
            Some((b, source)) => {
                out.insert("Build".into(), Value::String(b.clone()));
                filled.push(Filled {
                    field: "Build",
                    source,
                    value: b,
                });
            }
            None => return Enriched::NoBuild,
        }
    }
    if missing(fields.get("Date")) {
        out.insert("Date".into(), Value::String(sources.received_at.clone()));
        filled.push(Filled {
            field: "Date",
            source: Source::ReceivedAt,
            value: sources.received_at.clone(),
        });
    }
    if missing(fields.get("Tester"))
        && let Some((t, source)) = sources.tester()
    {
        out.insert("Tester".into(), Value::String(t.clone()));
        filled.push(Filled {
            field: "Tester",
            source,
            value: t,
        });
    }
    Enriched::Ready(out, filled)
}

/// `Build,Date,Tester` for the response header.
pub fn header_value(filled: &[Filled]) -> String {
    filled.iter().map(|f| f.field).collect::<Vec<_>>().join(",")
}

/// The refusal text for a result without any build.
pub fn no_build_message(build_env: &[String]) -> String {
    format!(
        "rally-sidecar: TestCaseResult.Build is missing and no build is known; result not written. \
         Send Build in the result, or an X-Rally-Build header, or set one for all writes with \
         `curl -X PUT http://<admin>/context -H 'Content-Type: application/json' -d '{{\"build\": \"...\"}}'`, or set context.build \
         (RALLY_SIDECAR_BUILD), or run the sidecar where one of these CI variables is set: {}",
        build_env.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: Value) -> Map<String, Value> {
        v.as_object().cloned().expect("object")
    }

    fn all_sources() -> Sources {
        Sources {
            header_build: Some("h".into()),
            context_project: Some("p".into()),
            context_workspace: Some("w".into()),
            context_global: Some("g".into()),
            config_build: Some("c".into()),
            ci_build: Some(("BUILD_TAG".into(), "e".into())),
            received_at: "2026-01-01T00:00:00.000Z".into(),
            configured_tester: None,
            owner: Some("/user/400".into()),
        }
    }

    #[test]
    fn build_precedence_is_a_chain() {
        let mut s = all_sources();
        let mut seen = Vec::new();
        while let Some((b, src)) = s.build() {
            seen.push((b, src));
            // Remove the winning source and try again.
            match seen.last().map(|x| x.1) {
                Some(Source::Header) => s.header_build = None,
                Some(Source::ContextProject) => s.context_project = None,
                Some(Source::ContextWorkspace) => s.context_workspace = None,
                Some(Source::ContextGlobal) => s.context_global = None,
                Some(Source::Config) => s.config_build = None,
                _ => s.ci_build = None,
            }
        }
        let order: Vec<&str> = seen.iter().map(|(b, _)| b.as_str()).collect();
        assert_eq!(order, vec!["h", "p", "w", "g", "c", "e"]);
    }

    #[test]
    fn fills_only_what_is_missing() {
        let s = all_sources();
        let Enriched::Ready(out, filled) = enrich(
            &fields(
                json!({"TestCase": "/testcase/1", "Verdict": "Pass", "Build": "", "Tester": null}),
            ),
            &s,
        ) else {
            panic!("ready")
        };
        assert_eq!(out["Build"], "h");
        assert_eq!(out["Date"], "2026-01-01T00:00:00.000Z");
        assert_eq!(out["Tester"], "/user/400");
        assert_eq!(header_value(&filled), "Build,Date,Tester");

        let sent =
            fields(json!({"Build": "mine", "Date": "2020-01-01T00:00:00Z", "Tester": "/user/9"}));
        let Enriched::Ready(out, filled) = enrich(&sent, &s) else {
            panic!("ready")
        };
        assert_eq!(out, sent, "never overwrite what the client sent");
        assert!(filled.is_empty());
    }

    #[test]
    fn configured_tester_wins_and_no_build_is_refused() {
        let mut s = all_sources();
        s.configured_tester = Some("/user/1".into());
        let Enriched::Ready(out, _) = enrich(&fields(json!({"Build": "b"})), &s) else {
            panic!("ready")
        };
        assert_eq!(out["Tester"], "/user/1");
        let none = Sources {
            received_at: "t".into(),
            ..Sources::default()
        };
        assert_eq!(enrich(&fields(json!({})), &none), Enriched::NoBuild);
        assert!(no_build_message(&["BUILD_TAG".into()]).contains("BUILD_TAG"));
    }
}
