//! [`Upstream`] against the real Rally (or the simulator): the write sent, and re-sent as often
//! as the state machine decides, through [`crate::rally::Rally`]; read-backs and fingerprint
//! searches made with the caller's credential by its lookups. Whether a failed send may be
//! repeated without looking is the error's to say ([`crate::error::ProxyError::retryable`]).

use bytes::Bytes;
use http::{HeaderMap, Method, Uri, header};
use serde_json::Value;

use super::{Answer, RawAnswer, ReadBack, Upstream, classify_answer};
use crate::rally::credential::Credential;
use crate::rally::governor::Priority;
use crate::rally::lookups::Lookups;
use crate::request::RequestCtx;
use crate::server::ConnInfo;

/// Largest answer to a write the sidecar reads.
const MAX_ANSWER: usize = 8 * 1024 * 1024;

/// One write, ready to be sent again as often as needed.
pub struct RallyWrite<'a> {
    pub lookups: std::sync::Arc<Lookups>,
    pub cred: Credential,
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The workspace the result is in, when known: its read-backs are then coalesced with
    /// the user's others there.
    pub workspace: Option<String>,
    /// The client's connection, for `X-Forwarded-*`.
    pub conn: Option<ConnInfo>,
    /// The client's request while it waits: where the time spent on Rally is recorded.
    pub ctx: Option<&'a RequestCtx>,
}

#[async_trait::async_trait]
impl Upstream for RallyWrite<'_> {
    async fn submit(&self) -> (Answer, Option<RawAnswer>) {
        let mut req = http::Request::new(());
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        // The answer is parsed, so ask for it unencoded.
        req.headers_mut().remove(header::ACCEPT_ENCODING);
        let (parts, ()) = req.into_parts();
        let sent = self
            .lookups
            .rally()
            .send_buffered(
                parts,
                self.body.clone(),
                self.conn.as_ref(),
                Priority::Normal,
            )
            .await;
        match sent {
            Ok(sent) => {
                if let Some(ctx) = self.ctx {
                    ctx.record_upstream(sent.upstream_ms);
                }
                let resp = sent.response;
                let status = resp.status().as_u16();
                let after = crate::rally::retry_after(resp.headers());
                let headers = resp.headers().clone();
                match crate::server::collect_limited(resp.into_body(), MAX_ANSWER).await {
                    Ok(bytes) => {
                        let json: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                        (
                            classify_answer(status, &json, after),
                            Some(RawAnswer {
                                status,
                                headers,
                                body: bytes,
                            }),
                        )
                    }
                    Err(e) => (
                        Answer::Ambiguous {
                            cause: format!("the answer was cut off: {e}"),
                            retry_after: after,
                        },
                        None,
                    ),
                }
            }
            // Nothing reached Rally: safe to send again without looking.
            Err(e) if e.retryable() => (
                Answer::Retry {
                    cause: e.to_string(),
                    retry_after: None,
                },
                None,
            ),
            Err(e) => (
                Answer::Ambiguous {
                    cause: e.to_string(),
                    retry_after: None,
                },
                None,
            ),
        }
    }

    async fn read(&self, object_id: i64, last: bool) -> ReadBack {
        let coalesce = self.workspace.as_deref().filter(|_| !last);
        self.lookups
            .read_result(&self.cred, object_id, coalesce)
            .await
    }

    async fn find(&self, query: &str) -> Result<Vec<i64>, String> {
        self.lookups
            .find_results_in(&self.cred, query, self.workspace.as_deref())
            .await
    }
}
