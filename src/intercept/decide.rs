//! One result's fate before anything is sent: the guard (is the target TestCase archived,
//! closed, unreadable, retired by a rule?), then enrichment (Build, Date, Tester where missing).
//! Creates, updates, batch entries and `Results/add` items all come here, so they behave the
//! same. The decisions themselves are pure ([`super::guard::decide`], [`super::enrich::enrich`]);
//! this file gathers their inputs (the TestCase read with the caller's credential, the build
//! context, the caller's user) and counts the outcome.

use serde_json::{Map, Value};

use super::enrich::{self, Enriched, Filled, Sources};
use super::guard::{self, Verdict};
use super::{Interceptor, WriteCtx, envelope};
use crate::config::Mode;
use crate::telemetry::metrics::{FillLabels, OpLabels, ReasonLabels, ShadowLabels};

/// What happens to one result. Either way the result's attributes come back in it: deciding
/// takes them and hands them on rather than copying them.
#[derive(Debug, Clone)]
pub enum Decision {
    Forward {
        fields: Map<String, Value>,
        filled: Vec<Filled>,
        decision: &'static str,
    },
    Refuse {
        code: &'static str,
        message: String,
        /// The attributes as they came, for the refusal's journal row.
        fields: Map<String, Value>,
    },
}

/// A decision and what the lookup said about the target test case.
#[derive(Debug, Clone)]
pub struct Decided {
    pub decision: Decision,
    /// The test case's FormattedID (`TC4`), when the guard read it.
    pub formatted_id: Option<String>,
    /// The workspace the result goes to: the request's `workspace=`, else the test case's.
    pub workspace: Option<String>,
}

impl Decision {
    /// The `X-Rally-Sidecar-Decision` value in shadow mode: what would have happened.
    pub fn shadow_label(&self) -> String {
        match self {
            Decision::Refuse { code, .. } => format!("shadow-would-{code}"),
            Decision::Forward { filled, .. } if !filled.is_empty() => format!(
                "shadow-would-fill-{}",
                enrich::header_value(filled).replace(',', "-")
            ),
            Decision::Forward { .. } => "shadow-allowed".into(),
        }
    }
}

/// What the guard's lookup said about the target, for the journal and the read-backs.
#[derive(Default)]
struct Found {
    formatted_id: Option<String>,
    workspace: Option<String>,
}

fn ref_id(v: Option<&Value>) -> Option<String> {
    let r = v?;
    let text = r
        .get("_ref")
        .and_then(Value::as_str)
        .or_else(|| r.as_str())?;
    crate::wsapi::scope_id(text)
}

impl Interceptor {
    /// Where a write of this request gets its Build, Date and Tester from, for `scope` (the
    /// request's, narrowed by what the guard learned of the test case). The owner is left
    /// to the caller: it is needed only when a Tester is missing.
    pub(super) fn sources(&self, w: &WriteCtx<'_>, scope: &super::Scope) -> Sources {
        let (project, workspace, global) = self
            .context
            .lookup(scope.workspace.as_deref(), scope.project.as_deref());
        Sources {
            header_build: w.header_build.clone(),
            context_project: project,
            context_workspace: workspace,
            context_global: global,
            config_build: self.cfg.context.build.clone(),
            ci_build: self.cfg.context.build_from_env.clone(),
            received_at: w.req.received_at.clone(),
            configured_tester: self.cfg.context.tester.clone(),
            owner: None,
        }
    }

    /// The TestCase an update targets: named in its body, or read from the stored result.
    pub(super) async fn update_target(
        &self,
        w: &WriteCtx<'_>,
        result_id: &str,
        fields: &Map<String, Value>,
    ) -> Option<String> {
        match envelope::test_case_id(fields) {
            Some(tc) => Some(tc),
            // Boxed, as the guard's lookup: see `decide_uncounted`.
            None => Box::pin(self.lookups.result_test_case(w.cred, result_id)).await,
        }
    }

    /// Decides one result's fate — guard, then enrichment — and counts it under `operation`.
    pub(super) async fn decide(
        &self,
        w: &WriteCtx<'_>,
        operation: &'static str,
        fields: Map<String, Value>,
        test_case: Option<String>,
        enrich_it: bool,
    ) -> Decided {
        let mut found = Found::default();
        let decision = self
            .decide_uncounted(w, fields, test_case, enrich_it, &mut found)
            .await;
        self.count(operation, &decision);
        Decided {
            decision,
            formatted_id: found.formatted_id,
            workspace: found.workspace.or_else(|| w.scope.workspace.clone()),
        }
    }

    async fn decide_uncounted(
        &self,
        w: &WriteCtx<'_>,
        fields: Map<String, Value>,
        test_case: Option<String>,
        enrich_it: bool,
        found: &mut Found,
    ) -> Decision {
        let mut scope = w.scope.clone();
        let mut decision = "allowed";
        if let (true, Some(id)) = (self.cfg.guard.enabled, test_case.as_deref()) {
            // Boxed: the cached lookup's state is several KiB and over once it answers;
            // inline it would stay allocated in every caller's future for as long as the
            // write it decided is held.
            let lookup = Box::pin(self.lookups.test_case(w.cred, id)).await;
            if let guard::Lookup::Found(tc) = &lookup {
                scope.project = ref_id(tc.get("Project")).or(scope.project);
                scope.workspace = scope.workspace.or_else(|| ref_id(tc.get("Workspace")));
                found.formatted_id = tc
                    .get("FormattedID")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                found.workspace = scope.workspace.clone();
            }
            match guard::decide(id, &lookup, &self.cfg.guard) {
                Verdict::Allow => {}
                Verdict::AllowUnchecked(why) => {
                    tracing::warn!(test_case = id, error = %why, "guard lookup failed; forwarding unchecked (guard.on_lookup_error = forward)");
                    decision = "allowed-unchecked";
                }
                Verdict::Block(b) => {
                    return Decision::Refuse {
                        code: b.code(),
                        message: b.message(),
                        fields,
                    };
                }
            }
        }
        if !enrich_it {
            return Decision::Forward {
                fields,
                filled: vec![],
                decision,
            };
        }
        let mut sources = self.sources(w, &scope);
        if sources.configured_tester.is_none() && envelope::missing(fields.get("Tester")) {
            sources.owner = w.writer.user.as_ref().map(|u| u.reference.clone());
        }
        match enrich::enrich(fields, &sources) {
            Enriched::Ready(fields, filled) => {
                for f in &filled {
                    tracing::debug!(field = f.field, source = f.source.label(), value = %f.value, "filled");
                }
                Decision::Forward {
                    fields,
                    filled,
                    decision,
                }
            }
            Enriched::NoBuild(fields) => Decision::Refuse {
                code: "refused-no-build",
                message: enrich::no_build_message(&self.cfg.context.build_env),
                fields,
            },
        }
    }

    fn count(&self, operation: &'static str, decision: &Decision) {
        let m = &self.metrics;
        m.intercepted
            .get_or_create(&OpLabels {
                operation: operation.into(),
            })
            .inc();
        let shadow = self.cfg.intercept.mode == Mode::Shadow;
        match decision {
            Decision::Forward { filled, .. } => {
                for f in filled {
                    if shadow {
                        m.shadow
                            .get_or_create(&ShadowLabels {
                                decision: format!("would-fill-{}", f.field),
                            })
                            .inc();
                    } else {
                        m.filled
                            .get_or_create(&FillLabels {
                                field: f.field.into(),
                                source: f.source.label().into(),
                            })
                            .inc();
                    }
                }
            }
            Decision::Refuse { code, message, .. } => {
                if shadow {
                    tracing::info!(decision = code, reason = %message, "shadow mode: would refuse this write");
                    m.shadow
                        .get_or_create(&ShadowLabels {
                            decision: format!("would-{code}"),
                        })
                        .inc();
                } else {
                    tracing::info!(decision = code, reason = %message, "write refused");
                    m.blocked
                        .get_or_create(&ReasonLabels {
                            reason: (*code).into(),
                        })
                        .inc();
                }
            }
        }
    }
}
