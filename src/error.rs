//! The sidecar's own errors and the one place that turns them into responses.
//!
//! Every error knows which side failed (client, upstream, or the sidecar itself), which decides
//! the status code; the body is always WSAPI-shaped (`{"OperationResult": {"Errors": [...]}}`) so
//! pyral and the Node toolkit surface the message like any Rally error, and the
//! `X-Rally-Sidecar-Error` header tells an operator the sidecar, not Rally, answered.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};

use crate::server::Body;
use crate::wsapi::{self, Envelope};

/// Header naming the sidecar as the source of an answer, with a stable code.
pub(crate) const ERROR_HEADER: &str = wsapi::headers::ERROR;

/// Which side of the proxy a failure belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Upstream,
    Proxy,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("upstream unreachable: {0}")]
    UpstreamUnreachable(String),
    #[error("upstream did not answer within {0:?}")]
    UpstreamTimeout(Duration),
    #[error("upstream connection failed: {0}")]
    UpstreamBroken(String),
    #[error("not an open proxy: only {upstream} is reachable through rally-sidecar, not {target}")]
    ForeignTarget { target: String, upstream: String },
    #[error(
        "CONNECT is not supported: rally-sidecar forwards WSAPI requests to {0}, it is not a tunnel"
    )]
    Connect(String),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("the request body is larger than {0} bytes")]
    BodyTooLarge(usize),
    #[error("too busy: {0}")]
    Overloaded(String),
    /// The sidecar refuses a TestCaseResult write (blocked, no build, malformed, too large).
    #[error("{message}")]
    Refused {
        status: StatusCode,
        kind: Envelope,
        code: &'static str,
        message: String,
    },
}

impl ProxyError {
    pub fn side(&self) -> Side {
        match self {
            ProxyError::UpstreamUnreachable(_)
            | ProxyError::UpstreamTimeout(_)
            | ProxyError::UpstreamBroken(_) => Side::Upstream,
            ProxyError::ForeignTarget { .. }
            | ProxyError::Connect(_)
            | ProxyError::BadRequest(_)
            | ProxyError::BodyTooLarge(_)
            | ProxyError::Refused { .. } => Side::Client,
            ProxyError::Overloaded(_) => Side::Proxy,
        }
    }

    /// Whether the same request may safely be sent again: nothing of it reached Rally (no
    /// connection, or the sidecar did not send it), so it cannot have taken effect.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            ProxyError::UpstreamUnreachable(_) | ProxyError::Overloaded(_)
        )
    }

    /// Stable machine-readable code (header value and metric label).
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::UpstreamUnreachable(_) => "upstream-unreachable",
            ProxyError::UpstreamTimeout(_) => "upstream-timeout",
            ProxyError::UpstreamBroken(_) => "upstream-broken",
            ProxyError::ForeignTarget { .. } => "foreign-target",
            ProxyError::Connect(_) => "connect-refused",
            ProxyError::BadRequest(_) => "bad-request",
            ProxyError::BodyTooLarge(_) => "body-too-large",
            ProxyError::Overloaded(_) => "overloaded",
            ProxyError::Refused { code, .. } => code,
        }
    }

    /// The status follows the side that failed: Rally → 502 (504 when it did not answer in
    /// time), the sidecar itself → 503, the client → the 4xx that names its mistake (or the
    /// status configured for a refusal).
    pub fn status(&self) -> StatusCode {
        match (self.side(), self) {
            (_, ProxyError::Refused { status, .. }) => *status,
            (Side::Upstream, ProxyError::UpstreamTimeout(_)) => StatusCode::GATEWAY_TIMEOUT,
            (Side::Upstream, _) => StatusCode::BAD_GATEWAY,
            (Side::Proxy, _) => StatusCode::SERVICE_UNAVAILABLE,
            (Side::Client, ProxyError::ForeignTarget { .. }) => StatusCode::FORBIDDEN,
            (Side::Client, ProxyError::Connect(_)) => StatusCode::METHOD_NOT_ALLOWED,
            (Side::Client, ProxyError::BodyTooLarge(_)) => StatusCode::PAYLOAD_TOO_LARGE,
            (Side::Client, _) => StatusCode::BAD_REQUEST,
        }
    }
}

/// Builds a WSAPI-shaped JSON response carrying `message` in `Errors`.
pub(crate) fn wsapi_response(
    status: StatusCode,
    kind: Envelope,
    code: &str,
    message: &str,
) -> Response<Body> {
    let body = wsapi::to_bytes(&wsapi::error_envelope(kind, &[message.to_string()], &[]));
    let mut resp = Response::new(
        Full::new(body)
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(code) {
        h.insert(ERROR_HEADER, v);
    }
    resp
}

/// The rescue: one function turning any `ProxyError` into the client's answer.
pub(crate) fn rescue(err: &ProxyError) -> Response<Body> {
    if let ProxyError::Refused {
        status,
        kind,
        code,
        message,
    } = err
    {
        // A refusal is an answer about the write, shaped like Rally's own application errors.
        let mut resp = wsapi_response(*status, *kind, code, message);
        if let Ok(v) = HeaderValue::from_str(code) {
            resp.headers_mut().insert(wsapi::headers::DECISION, v);
        }
        return resp;
    }
    let mut resp = wsapi_response(
        err.status(),
        Envelope::Operation,
        err.code(),
        &format!("rally-sidecar: {err}"),
    );
    if matches!(err, ProxyError::Connect(_)) {
        resp.headers_mut().insert(
            header::ALLOW,
            HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH"),
        );
    }
    if matches!(
        err,
        ProxyError::Connect(_) | ProxyError::ForeignTarget { .. }
    ) {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// A body from bytes, boxed to the common body type.
pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body.
pub(crate) fn empty() -> Body {
    http_body_util::Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_failing_side() {
        assert_eq!(
            ProxyError::UpstreamUnreachable("x".into()).status(),
            StatusCode::BAD_GATEWAY
        );
        assert_eq!(
            ProxyError::UpstreamTimeout(Duration::from_secs(1)).status(),
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(ProxyError::Connect("x".into()).side(), Side::Client);
        assert!(ProxyError::UpstreamUnreachable("x".into()).retryable());
        assert!(!ProxyError::UpstreamTimeout(Duration::from_secs(1)).retryable());
    }
}
