//! [`Upstream`] against the real Rally (or the simulator): the write re-sent through the
//! forwarding path, read-backs and fingerprint queries made with the caller's credential. All
//! of them go through the concurrency governor.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Uri, header};

use serde_json::Value;

use super::{Answer, RawAnswer, ReadBack, Upstream, classify_answer};
use crate::credential::Credential;
use crate::error::ProxyError;
use crate::intercept::lookup::Lookups;
use crate::proxy::Proxy;
use crate::server::ConnInfo;

/// Largest answer to a write the sidecar reads.
const MAX_ANSWER: usize = 8 * 1024 * 1024;

/// One intercepted write, ready to be sent again as often as needed.
pub struct RallyWrite<'a> {
    pub proxy: &'a Proxy,
    pub lookups: &'a Lookups,
    pub cred: &'a Credential,
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub conn: ConnInfo,
}

fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let v = h.get(header::RETRY_AFTER)?.to_str().ok()?;
    v.trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
        .or_else(|| {
            httpdate::parse_http_date(v)
                .ok()?
                .duration_since(std::time::SystemTime::now())
                .ok()
        })
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
        match self
            .proxy
            .send_buffered(parts, self.body.clone(), &self.conn)
            .await
        {
            Ok((resp, _)) => {
                let status = resp.status().as_u16();
                let after = retry_after(resp.headers());
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
            Err(e @ (ProxyError::UpstreamUnreachable(_) | ProxyError::Overloaded(_))) => (
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

    async fn read(&self, object_id: i64) -> ReadBack {
        match self
            .lookups
            .get_json_as(
                self.cred,
                &format!("testcaseresult/{object_id}?fetch=TestCase,Build,Date,Verdict,Tester"),
                crate::governor::Priority::FollowUp,
            )
            .await
        {
            Ok((_, json)) => match json.get("TestCaseResult").and_then(Value::as_object) {
                Some(r) => ReadBack::Found(r.clone()),
                None => match crate::intercept::lookup::first_error(&json) {
                    Some(e) if e.contains("Cannot find") || e.contains("not found") => {
                        ReadBack::NotFound
                    }
                    Some(e) => ReadBack::Failed(e),
                    None => ReadBack::Failed("an answer without the result".into()),
                },
            },
            Err(e) => ReadBack::Failed(e.to_string()),
        }
    }

    async fn find(&self, query: &str) -> Result<Vec<i64>, String> {
        let q = percent_encoding::utf8_percent_encode(query, percent_encoding::NON_ALPHANUMERIC);
        let (status, json) = self
            .lookups
            .get_json_as(
                self.cred,
                &format!("testcaseresult?query={q}&fetch=ObjectID&pagesize=200"),
                crate::governor::Priority::FollowUp,
            )
            .await
            .map_err(|e| e.to_string())?;
        let r = json
            .get("QueryResult")
            .ok_or_else(|| format!("Rally answered {status} without a QueryResult"))?;
        if let Some(e) = r
            .get("Errors")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
        {
            return Err(e.as_str().unwrap_or("query error").to_string());
        }
        Ok(r.get("Results")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|o| o.get("ObjectID").and_then(Value::as_i64))
                    .collect()
            })
            .unwrap_or_default())
    }
}
