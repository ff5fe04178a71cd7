//! A write held until its fate is known. Single writes, batch entries and `Results/add` items
//! all go through here: the result is recorded in the journal as `pending` before anything is
//! sent ([`Held::record`]), driven to its fate by the confirmation state machine
//! ([`crate::confirm`]) against Rally, then counted, logged, and its journal row settled exactly
//! once (the [`Pending`] guard marks it unconfirmed if the request is dropped first).

use std::sync::Mutex;
use std::time::Instant;

use bytes::Bytes;
use serde_json::{Map, Value};

use super::enrich::Filled;
use super::{Interceptor, WriteCtx, answer};
use crate::confirm::{self, Answer, Expected, Fate, Kind, RawAnswer, ReadBack, Upstream};
use crate::journal::{NewWrite, Pending, Settled, State};
use crate::telemetry::metrics::OutcomeLabels;

/// A result's attributes as they are held: serialized once into the body that is sent, and
/// beside it only what confirmation compares. The parsed map is dropped once this is built:
/// the journal row and every attempt share the one body (clones of `Bytes` count references).
#[derive(Debug, Clone)]
pub struct Payload {
    /// `{"<root>": {attributes}}`, UTF-8 JSON.
    pub body: Bytes,
    /// What Rally must have stored for the write to be confirmed.
    pub expected: Expected,
}

impl Payload {
    /// Serializes `{"<root>": fields}`; `size_hint` (the client's body length) sizes the
    /// buffer so that a large body is not copied as it grows (enrichment adds a few fields).
    pub fn new(root: &str, fields: &Map<String, Value>, size_hint: usize) -> Payload {
        let mut out = Vec::with_capacity(size_hint.saturating_add(1024));
        // Serialized as a one-entry map around the borrowed fields: no copy of them is made.
        let body = match serde_json::to_writer(&mut out, &Enveloped(root, fields)) {
            Ok(()) => {
                // Held for seconds, so no spare capacity is kept (shrinking is in place).
                out.shrink_to_fit();
                Bytes::from(out)
            }
            Err(_) => Bytes::from_static(b"{}"),
        };
        Payload {
            body,
            expected: Expected::from_fields(fields),
        }
    }
}

/// `{"<root>": fields}` without building it.
struct Enveloped<'a>(&'a str, &'a Map<String, Value>);

impl serde::Serialize for Enveloped<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(1))?;
        m.serialize_entry(self.0, self.1)?;
        m.end()
    }
}

/// A result the guard allowed and enrichment completed, ready to be sent.
pub struct Held {
    pub kind: Kind,
    /// `create`, `update` (the journal's `operation`).
    pub operation: &'static str,
    /// The result's ObjectID for an update.
    pub result_id: Option<String>,
    pub payload: Payload,
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
    /// The body sent to Rally: the held one, shared.
    pub fn body(&self) -> Bytes {
        self.payload.body.clone()
    }

    /// What Rally must have stored for the write to be confirmed.
    pub fn expected(&self) -> &Expected {
        &self.payload.expected
    }

    /// The journal row recorded before the write is sent.
    pub fn record(&self, w: &WriteCtx<'_>) -> NewWrite {
        record(
            w,
            Record {
                operation: self.operation,
                result_id: self.result_id.clone(),
                payload: &self.payload,
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
    pub payload: &'a Payload,
    pub filled: &'a [Filled],
    pub decision: &'a str,
    pub path: String,
    pub formatted_id: Option<String>,
}

/// The journal row of a result — held or refused — built in this one place. Its body is the
/// payload's, shared.
pub fn record(w: &WriteCtx<'_>, r: Record<'_>) -> NewWrite {
    let expected = r.payload.expected.clone();
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
        body: r.payload.body.clone(),
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
        self.sources(w, &w.scope).build().map(|(b, _)| b)
    }

    /// Drives a journaled write to its fate, counts it, settles its row and logs it. Answers
    /// at once (unconfirmed) when the shutdown deadline nears. Not an `async fn` of its own:
    /// a layer of state machine would be held with every write, its arguments stored twice.
    pub(super) fn confirm<'a, U: Upstream>(
        &'a self,
        up: &'a U,
        held: &'a Held,
        pending: Pending,
        started: Instant,
    ) -> impl std::future::Future<Output = Fate> + Send + 'a {
        self.confirm_telling(up, held, pending, started, None)
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
            None,
            held.expected(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intercept::{Scope, Writer, envelope};
    use crate::rally::credential::Fingerprinter;
    use crate::request::RequestCtx;
    use crate::server::ConnInfo;
    use crate::wsapi::Envelope;

    #[test]
    fn a_held_write_is_one_body_shared_by_its_row_and_every_attempt() {
        let notes = "n".repeat(64 * 1024);
        let client = format!(
            r#"{{"testcaseresult": {{"TestCase": "/testcase/1001", "Verdict": "Pass", "Build": "b1", "Notes": "{notes}"}}}}"#
        );
        let map = envelope::parse(client.as_bytes()).expect("json");
        let (root, fields) = envelope::result_fields(map).expect("a result");
        let held = Held {
            kind: Kind::Create,
            operation: "create",
            result_id: None,
            payload: Payload::new(&root, &fields, client.len()),
            filled: vec![],
            decision: "allowed",
            method: http::Method::POST,
            path: "/slm/webservice/v2.0/testcaseresult/create".into(),
            formatted_id: None,
            workspace: None,
        };
        drop(fields);
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "zsessionid",
            http::HeaderValue::from_static("_sim_alice_key"),
        );
        let cred = Fingerprinter::new().of(&headers).expect("a credential");
        let addr = "127.0.0.1:1".parse().expect("an address");
        let conn = ConnInfo {
            peer: addr,
            local: addr,
            tls: false,
        };
        let req = RequestCtx::new("r1".into(), conn, None, Some(cred.clone()), true);
        let w = WriteCtx {
            req: &req,
            cred: &cred,
            writer: Writer {
                digest: "d".into(),
                user: None,
            },
            scope: Scope::default(),
            header_build: None,
            kind: Envelope::Create,
            raw: None,
        };
        let row = held.record(&w);
        let attempts = [held.body(), held.body()];
        // One allocation: the journal row and every attempt point at the held bytes.
        let held_at = held.payload.body.as_ptr();
        assert_eq!(row.body.as_ptr(), held_at);
        assert!(attempts.iter().all(|a| a.as_ptr() == held_at));
        // What is sent (and journaled): the client's root key and its attributes.
        let sent: Value = serde_json::from_slice(&row.body).expect("json");
        assert_eq!(
            sent["testcaseresult"]["Notes"].as_str(),
            Some(notes.as_str())
        );
        assert_eq!(
            (row.test_case.as_deref(), row.build.as_deref()),
            (Some("1001"), Some("b1"))
        );
        assert_eq!(held.expected().verdict.as_deref(), Some("Pass"));
    }
}
