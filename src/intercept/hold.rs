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
        let expected = self.expected();
        NewWrite {
            request_id: w.req.id.clone(),
            received_at: w.req.received_at.clone(),
            credential: w.cred.fingerprint().to_string(),
            rally_user: None,
            rally_user_name: None,
            formatted_id: None,
            operation: self.operation.to_string(),
            target: self
                .result_id
                .clone()
                .or_else(|| expected.test_case.clone()),
            path: self.path.clone(),
            body: String::from_utf8_lossy(&self.body()).into_owned(),
            test_case: expected.test_case,
            build: expected.build,
            verdict: expected.verdict,
            filled: answer::filled_value(&self.filled),
            decision: Some(self.decision.to_string()),
        }
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
    async fn read(&self, object_id: i64) -> ReadBack {
        self.alone.read(object_id).await
    }
    async fn find(&self, query: &str) -> Result<Vec<i64>, String> {
        self.alone.find(query).await
    }
}

impl Interceptor {
    /// Drives a journaled write to its fate, counts it, settles its row and logs it. Answers
    /// at once (unconfirmed) when the shutdown deadline nears.
    pub(super) async fn confirm<U: Upstream>(
        &self,
        up: &U,
        held: &Held,
        pending: Pending,
        started: Instant,
    ) -> Fate {
        let give_up = self.give_up.clone();
        let fate = confirm::confirm(
            up,
            held.kind,
            false,
            &held.expected(),
            &self.cfg.confirm.policy,
            rand::random::<f64>,
            async move { give_up.cancelled().await },
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
