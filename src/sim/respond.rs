//! Responses: the simulator's answer before it becomes HTTP ([`Reply`]), and its conversion to
//! an HTTP response — JSON (gzip when the client accepts it and the body is worth it), Rally's
//! Jetty-style 401 page with the `WWW-Authenticate` challenge the Node toolkit waits for, the
//! schema service's redirect, the session cookies basic auth sets, and error pages.

use std::io::Write;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use serde_json::Value;

use crate::error::full;
use crate::server::Body;
use crate::wsapi::{self, Envelope, error_envelope};

/// An answer before it becomes an HTTP response.
pub(super) enum Reply {
    Json(StatusCode, Value),
    Unauthorized,
    Redirect(String),
    Text(StatusCode, String),
    /// Drop the connection without answering.
    Reset,
}

impl Reply {
    /// HTTP 200 with a WSAPI envelope carrying one error, Rally's way of refusing.
    pub(super) fn refuse(kind: Envelope, msg: impl Into<String>) -> Reply {
        Reply::Json(StatusCode::OK, error_envelope(kind, &[msg.into()], &[]))
    }
}

/// The 401 page of the captures (flowdock/rally-wsapi's `authorization_error.html`).
const UNAUTHORIZED_HTML: &str = "<html>\n<head>\n<meta http-equiv=\"Content-Type\" content=\"text/html; charset=ISO-8859-1\"/>\n<title>Error 401 Full authentication is required to access this resource</title>\n</head>\n<body><h2>HTTP ERROR 401</h2>\n<p>Problem accessing /slm/webservice/. Reason:\n<pre>    Full authentication is required to access this resource</pre></p><hr /><i><small>Powered by Jetty://</small></i>\n</body>\n</html>\n";

/// Small bodies are not worth compressing.
const GZIP_FROM: usize = 256;

/// Turns `reply` into an HTTP response; `cookies` are `Set-Cookie` values.
pub(super) fn respond(reply: Reply, cookies: &[String], gzip: bool) -> Response<Body> {
    let (status, content_type, bytes, location) = match reply {
        Reply::Json(s, v) => (
            s,
            "application/json; charset=utf-8",
            wsapi::to_bytes(&v),
            None,
        ),
        Reply::Unauthorized => (
            StatusCode::UNAUTHORIZED,
            "text/html; charset=ISO-8859-1",
            Bytes::from_static(UNAUTHORIZED_HTML.as_bytes()),
            None,
        ),
        Reply::Redirect(to) => (StatusCode::FOUND, "text/plain", Bytes::new(), Some(to)),
        Reply::Text(s, t) => (s, "text/html; charset=utf-8", Bytes::from(t), None),
        Reply::Reset => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            Bytes::new(),
            None,
        ),
    };
    let json = content_type.starts_with("application/json");
    let (bytes, encoded) = if gzip && json && bytes.len() > GZIP_FROM {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        match enc.write_all(&bytes).and_then(|_| enc.finish()) {
            Ok(z) => (Bytes::from(z), true),
            Err(_) => (bytes, false),
        }
    } else {
        (bytes, false)
    };
    let mut resp = Response::new(full(bytes));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if encoded {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        h.insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
    if status == StatusCode::UNAUTHORIZED {
        // The Node toolkit sends basic credentials only after this challenge.
        h.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"Rally ALM\""),
        );
    }
    if let Some(loc) = location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        h.insert(header::LOCATION, loc);
    }
    for c in cookies {
        if let Ok(v) = HeaderValue::from_str(c) {
            h.append(header::SET_COOKIE, v);
        }
    }
    resp
}
