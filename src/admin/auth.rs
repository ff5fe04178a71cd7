//! Who may use which admin endpoint, decided once per request before routing. Every path is
//! *guarded* unless [`is_open`] names it (`/healthz`, `/readyz`, `/metrics`: what probes and
//! Prometheus read), so an endpoint added later is guarded by default. A guarded request must
//! name an acceptable `Host` (an IP address, `localhost` or one of `admin.allowed_hosts`: a
//! page that DNS-rebinds its own name to the sidecar is refused), must not come from a foreign
//! `Origin` (a web page the operator has open), must carry the token when one is configured
//! (`Authorization: Bearer <token>`, or Basic with the token as password so a browser can
//! open the status page), and, when it changes something, must say `Content-Type:
//! application/json` (which a cross-site form cannot send without a CORS preflight, and the
//! admin API answers none). The token is compared in constant time, through digests so that
//! not even its length leaks.

use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use sha2::{Digest, Sha256};

use super::json_response;
use crate::config::AdminConfig;
use crate::server::Body;

/// Paths anyone who reaches the listener may read: liveness, readiness and metrics.
pub(crate) fn is_open(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
}

/// The admission rules of the guarded endpoints.
pub(crate) struct Guard {
    token: Option<[u8; 32]>,
    allowed_hosts: Vec<String>,
}

impl Guard {
    pub(crate) fn new(cfg: &AdminConfig) -> Guard {
        Guard {
            token: cfg.token.as_ref().map(|t| digest(t.expose().as_bytes())),
            allowed_hosts: cfg.allowed_hosts.clone(),
        }
    }

    /// `None` when the request may be routed; otherwise the answer that refuses it.
    pub(crate) fn refusal<B>(&self, req: &Request<B>) -> Option<Response<Body>> {
        if is_open(req.uri().path()) {
            return None;
        }
        let host = request_host(req);
        match host.as_deref() {
            None => return Some(refuse(StatusCode::BAD_REQUEST, "a Host header is required")),
            Some(h) if !self.host_allowed(h) => {
                return Some(refuse(
                    StatusCode::FORBIDDEN,
                    &format!(
                        "Host {h:?} is not accepted here; use an IP address or localhost, or add the name to admin.allowed_hosts"
                    ),
                ));
            }
            Some(_) => {}
        }
        if let Some(origin) = req.headers().get(header::ORIGIN) {
            let same = origin
                .to_str()
                .ok()
                .and_then(|o| o.split_once("://"))
                .is_some_and(|(_, authority)| {
                    host.as_deref()
                        .is_some_and(|h| authority.eq_ignore_ascii_case(h))
                });
            if !same {
                return Some(refuse(
                    StatusCode::FORBIDDEN,
                    "requests from another web origin are refused",
                ));
            }
        }
        if let Some(want) = &self.token
            && !presented(req.headers()).is_some_and(|t| ct_eq(&digest(t.as_bytes()), want))
        {
            let mut r = refuse(
                StatusCode::UNAUTHORIZED,
                "this endpoint needs the admin token: Authorization: Bearer <token> (admin.token_file)",
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"rally-sidecar admin\", charset=\"UTF-8\""),
            );
            r.headers_mut().append(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"rally-sidecar admin\""),
            );
            return Some(r);
        }
        let reads = matches!(*req.method(), Method::GET | Method::HEAD);
        if !reads && !is_json(req.headers()) {
            return Some(refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "changes need Content-Type: application/json",
            ));
        }
        None
    }

    fn host_allowed(&self, authority: &str) -> bool {
        let host = host_part(authority).to_ascii_lowercase();
        // A rebinding page can only use its own name; an IP literal is never such a name.
        host.parse::<std::net::IpAddr>().is_ok()
            || host == "localhost"
            || self.allowed_hosts.contains(&host)
    }
}

/// `Host` (HTTP/1.1) or the URI's authority (HTTP/2's `:authority`).
fn request_host<B>(req: &Request<B>) -> Option<String> {
    req.headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.as_str().to_string()))
        .filter(|h| !h.is_empty())
}

/// The host of `host[:port]` or `[v6][:port]`, brackets removed.
fn host_part(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    match authority.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    }
}

/// The token the request presents: a Bearer token, or a Basic password.
fn presented(headers: &HeaderMap) -> Option<String> {
    use base64::Engine;
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.to_string());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        return text
            .split_once(':')
            .map(|(_, password)| password.to_string());
    }
    None
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Equal in time independent of where the inputs differ.
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn refuse(status: StatusCode, why: &str) -> Response<Body> {
    json_response(status, &serde_json::json!({ "error": why }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(token: Option<&str>) -> Guard {
        Guard {
            token: token.map(|t| digest(t.as_bytes())),
            allowed_hosts: vec!["sidecar.ci.internal".into()],
        }
    }

    fn req(method: Method, path: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().method(method).uri(path);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).expect("request")
    }

    fn status(g: &Guard, r: &Request<()>) -> StatusCode {
        g.refusal(r).map_or(StatusCode::OK, |resp| resp.status())
    }

    #[test]
    fn open_paths_need_nothing_and_everything_else_is_guarded() {
        let g = guard(Some("t0ken-t0ken-t0ken"));
        for p in ["/healthz", "/readyz", "/metrics"] {
            assert_eq!(status(&g, &req(Method::GET, p, &[])), StatusCode::OK, "{p}");
        }
        for p in [
            "/",
            "/context",
            "/writes",
            "/builds/b1",
            "/shutdown",
            "/later",
        ] {
            let r = req(Method::GET, p, &[("host", "127.0.0.1:9464")]);
            assert_eq!(status(&g, &r), StatusCode::UNAUTHORIZED, "{p}");
        }
        let bearer = req(
            Method::GET,
            "/writes",
            &[
                ("host", "[::1]:9464"),
                ("authorization", "Bearer t0ken-t0ken-t0ken"),
            ],
        );
        assert_eq!(status(&g, &bearer), StatusCode::OK);
        let basic = req(
            Method::GET,
            "/",
            // "operator:t0ken-t0ken-t0ken"
            &[
                ("host", "localhost:9464"),
                (
                    "authorization",
                    "Basic b3BlcmF0b3I6dDBrZW4tdDBrZW4tdDBrZW4=",
                ),
            ],
        );
        assert_eq!(status(&g, &basic), StatusCode::OK);
        let wrong = req(
            Method::GET,
            "/",
            &[
                ("host", "localhost"),
                ("authorization", "Bearer t0ken-t0ken-t0keN"),
            ],
        );
        assert_eq!(status(&g, &wrong), StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn hosts_origins_and_content_types() {
        let g = guard(None);
        let h = |host: &str| status(&g, &req(Method::GET, "/writes", &[("host", host)]));
        assert_eq!(h("10.1.2.3:9464"), StatusCode::OK);
        assert_eq!(h("Sidecar.CI.internal:9464"), StatusCode::OK);
        assert_eq!(
            h("evil.example:9464"),
            StatusCode::FORBIDDEN,
            "DNS rebinding"
        );
        assert_eq!(h("localhost.evil.example"), StatusCode::FORBIDDEN);
        assert_eq!(
            status(&g, &req(Method::GET, "/writes", &[])),
            StatusCode::BAD_REQUEST
        );
        let put = |ct: &str, origin: Option<&str>| {
            let mut hs = vec![("host", "127.0.0.1:9464"), ("content-type", ct)];
            if let Some(o) = origin {
                hs.push(("origin", o));
            }
            status(&g, &req(Method::PUT, "/context", &hs))
        };
        assert_eq!(put("application/json", None), StatusCode::OK);
        assert_eq!(
            put(
                "application/json; charset=utf-8",
                Some("http://127.0.0.1:9464")
            ),
            StatusCode::OK
        );
        assert_eq!(put("text/plain", None), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(
            put("application/json", Some("https://evil.example")),
            StatusCode::FORBIDDEN
        );
        assert_eq!(put("application/json", Some("null")), StatusCode::FORBIDDEN);
        assert!(ct_eq(&digest(b"a"), &digest(b"a")) && !ct_eq(&digest(b"a"), &digest(b"b")));
    }
}
