//! A write held until its fate is known. Single writes, batch entries and `Results/add` items
//! all go through here: the result is recorded in the journal as `pending` before anything is
//! sent ([`Held::record`]), driven to its fate by the confirmation state machine
//! ([`crate::confirm`]) against Rally, then counted, logged, and its journal row settled exactly
//! once (the [`Pending`] guard marks it unconfirmed if the request is dropped first).

use std::sync::Mutex;
use std::time::Instant;

use bytes::Bytes;
use serde_json::{Map, Value, json};

use super::enrich::Filled;
use super::{Interceptor, WriteCtx, answer};
use crate::confirm::{self, Answer, Expected, Fate, Kind, RawAnswer, ReadBack, Upstream};
use crate::journal::{NewWrite, Pending, Settled, State};
use crate::telemetry::metrics::OutcomeLabels;

/// A result the guard allowed and enrichment completed, ready to be sent.
pub struct Held {
    pub kind: Kind,
    /// `create`, `update` (the journal's `operation`).
    pub operation: &'static str,
    /// The result's ObjectID for an update.
    pub result_id: Option<String>,
    /// The body's root key as the client wrote it.
    pub root: String,
    pub fields: Map<String, Value>,
    pub filled: Vec<Filled>,
    pub decision: &'static str,
    /// The method and path (query redacted) the result is sent with.
    pub method: http::Method,
    pub path: String,
    /// The target test case's FormattedID, when the guard read it.
    pub formatted_id: Option<String>,
    /// The workspace the result goes to, when known (read-backs are coalesced there).
    pub workspace: Option<String>,
}

impl Held {
    /// `{"<root>": {fields}}`, as sent to Rally.
    pub fn body(&self) -> Bytes {
        answer::to_bytes(&json!({ self.root.clone(): Value::Object(self.fields.clone()) }))
    }

    /// What Rally must have stored for the write to be confirmed.
    pub fn expected(&self) -> Expected {
        Expected::from_fields(&self.fields)
    }

    /// The journal row recorded before the write is sent.
    pub fn record(&self, w: &WriteCtx<'_>) -> NewWrite {
        record(
            w,
            Record {
                operation: self.operation,
                result_id: self.result_id.clone(),
                fields: &self.fields,
                filled: &self.filled,
                decision: self.decision,
                path: self.path.clone(),
                formatted_id: self.formatted_id.clone(),
            },
        )
    }
}

/// What a journal row says about one result.
pub struct Record<'a> {
    pub operation: &'static str,
    pub result_id: Option<String>,
    pub fields: &'a Map<String, Value>,
    pub filled: &'a [Filled],
    pub decision: &'a str,
    pub path: String,
    pub formatted_id: Option<String>,
}

/// The journal row of a result — held or refused — built in this one place.
pub fn record(w: &WriteCtx<'_>, r: Record<'_>) -> NewWrite {
    let expected = Expected::from_fields(r.fields);
    let root = json!({ "TestCaseResult": Value::Object(r.fields.clone()) });
    NewWrite {
        request_id: w.req.id.clone(),
        received_at: w.req.received_at.clone(),
        credential: w.writer.digest.clone(),
        rally_user: w.writer.user.as_ref().map(|u| u.reference.clone()),
        rally_user_name: w.writer.user.as_ref().and_then(|u| u.name.clone()),
        formatted_id: r.formatted_id,
        operation: r.operation.to_string(),
        target: r.result_id.or_else(|| expected.test_case.clone()),
        path: r.path,
        body: String::from_utf8_lossy(&answer::to_bytes(&root)).into_owned(),
        test_case: expected.test_case,
        build: expected.build,
        verdict: expected.verdict,
        filled: answer::filled_value(r.filled),
        decision: Some(r.decision.to_string()),
    }
}

/// A write whose first attempt went out with others (a batch, a `Results/add`): the first
/// answer is the group's; any later attempt is the write on its own.
pub struct Grouped<U> {
    first: Mutex<Option<(Answer, Option<RawAnswer>)>>,
    alone: U,
}

impl<U> Grouped<U> {
    pub fn new(first: (Answer, Option<RawAnswer>), alone: U) -> Self {
        Grouped {
            first: Mutex::new(Some(first)),
            alone,
        }
    }
}

#[async_trait::async_trait]
impl<U: Upstream> Upstream for Grouped<U> {
    async fn submit(&self) -> (Answer, Option<RawAnswer>) {
        let first = self.first.lock().ok().and_then(|mut f| f.take());
        match first {
            Some(f) => f,
            None => self.alone.submit().await,
        }
    }
    async fn read(&self, object_id: i64, last: bool) -> ReadBack {
        self.alone.read(object_id, last).await
    }
    async fn find(&self, query: &str) -> Result<Vec<i64>, String> {
        self.alone.find(query).await
    }
}

impl Interceptor {
    /// Records a result the sidecar refused (never forwarded), with the reason, so the journal
    /// and the status page account for it. A journal that cannot take the row does not stop
    /// the refusal.
    pub(super) async fn record_refusal(&self, w: &WriteCtx<'_>, r: Record<'_>, reason: &str) {
        let Some(journal) = self.holding().filter(|_| !self.shadow()) else {
            return;
        };
        let mut row = record(w, r);
        // A refused result counts against the build it would have been given, so a build's
        // summary (`summary --build`, `GET /builds/<B>`) sees it.
        if row.build.is_none() {
            row.build = self.build_for(w);
        }
        if let Err(e) = journal.record_refusal(row, reason.to_string()).await {
            tracing::warn!(error = %e, "cannot journal a refused write");
        }
    }

    /// The build enrichment would give a write of this request that carries none.
    fn build_for(&self, w: &WriteCtx<'_>) -> Option<String> {
        let (project, workspace, global) = self
            .context
            .lookup(w.scope.workspace.as_deref(), w.scope.project.as_deref());
        super::enrich::Sources {
            header_build: w.header_build.clone(),
            context_project: project,
            context_workspace: workspace,
            context_global: global,
            config_build: self.cfg.context.build.clone(),
            ci_build: self.cfg.context.build_from_env.clone(),
            ..Default::default()
        }
        .build()
        .map(|(b, _)| b)
    }

    /// Drives a journaled write to its fate, counts it, settles its row and logs it. Answers
    /// at once (unconfirmed) when the shutdown deadline nears.
    pub(super) async fn confirm<U: Upstream>(
        &self,
        up: &U,
        held: &Held,
        pending: Pending,
        started: Instant,
    ) -> Fate {
        self.confirm_telling(up, held, pending, started, None).await
    }

    /// [`Interceptor::confirm`], telling `acknowledged` of a clean acknowledgement as soon as
    /// Rally gives one (`confirm.hold = "ambiguous"`).
    pub(super) async fn confirm_telling<U: Upstream>(
        &self,
        up: &U,
        held: &Held,
        pending: Pending,
        started: Instant,
        acknowledged: Option<tokio::sync::oneshot::Sender<RawAnswer>>,
    ) -> Fate {
        let give_up = self.give_up.clone();
        let fate = confirm::confirm_with(
            up,
            held.kind,
            false,
            &held.expected(),
            &self.cfg.confirm.policy,
            rand::random::<f64>,
            async move { give_up.cancelled().await },
            acknowledged,
        )
        .await;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        self.settle(pending, &fate, ms).await;
        fate
    }

    async fn settle(&self, pending: Pending, fate: &Fate, ms: f64) {
        let (state, cause, object_id, outcome) = match fate {
            Fate::Confirmed {
                object_id, adopted, ..
            } => {
                if *adopted {
                    self.metrics.duplicates_avoided.inc();
                }
                let outcome = if *adopted {
                    "confirmed_adopted"
                } else {
                    "confirmed"
                };
                (State::Confirmed, None, Some(*object_id), outcome)
            }
            Fate::Rejected { cause, .. } => {
                (State::Rejected, Some(cause.clone()), None, "rejected")
            }
            Fate::Unconfirmed {
                cause, object_id, ..
            } => (
                State::Unconfirmed,
                Some(cause.clone()),
                *object_id,
                "unconfirmed",
            ),
        };
        let attempts = fate.attempts();
        self.metrics
            .confirmations
            .get_or_create(&OutcomeLabels {
                outcome: outcome.into(),
            })
            .inc();
        self.metrics.attempts.observe(attempts as f64);
        self.metrics.confirm_latency.observe(ms / 1000.0);
        let id = pending.id();
        let settled = Settled {
            state,
            attempts,
            cause: cause.clone(),
            object_id,
            latency_ms: Some(ms),
        };
        if state == State::Unconfirmed && self.give_up.is_cancelled() {
            pending.settle_behind(settled);
        } else if let Err(e) = pending.settle(settled).await {
            tracing::error!(journal_id = id, error = %e, "cannot record the write's fate; it stays unconfirmed in the journal");
        }
        // The summaries count duplicates avoided per build (issue 17).
        if let (Fate::Confirmed { adopted: true, .. }, Some(j)) = (fate, &self.journal)
            && let Err(e) = j.mark_adopted(id).await
        {
            tracing::warn!(journal_id = id, error = %e, "cannot mark the write adopted");
        }
        tracing::info!(
            journal_id = id,
            outcome,
            attempts,
            object_id,
            latency_ms = ms,
            cause = cause.as_deref().unwrap_or(""),
            "write settled"
        );
    }
}
