//! Header rules for forwarding (RFC 9110 §7.6.1): hop-by-hop headers are removed in both
//! directions, including any named by `Connection`; `Host` becomes the upstream's authority;
//! `X-Forwarded-For`/`-Proto`/`-Host` are appended when configured. Everything else, cookies and
//! `Set-Cookie` included, passes untouched and in order.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Hop-by-hop headers that never cross the proxy. `Expect` is answered by our own server
/// (hyper sends `100 Continue` when the body is first read), so it is not forwarded either.
/// Named once: a name given as `&str` is parsed and validated on every use.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("proxy-connection"),
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Removes hop-by-hop headers and those listed in `Connection`.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one look at the few names present costs less than nine
    // removals, each a hash and a probe. (`Connection` is one of them, so a message without
    // any has no listed names either.)
    if !headers.keys().any(|k| HOP_BY_HOP.contains(k)) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(&name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Prepares request headers for the upstream.
pub(crate) fn request_headers(
    headers: &mut HeaderMap,
    upstream_authority: &HeaderValue,
    forwarded: Option<(&std::net::SocketAddr, &'static str)>,
) {
    strip_hop_by_hop(headers);
    headers.remove(header::EXPECT);
    // Message framing is never copied: hyper frames the forwarded body from what was actually
    // read (an exact length, or chunked). A client sending both Content-Length and
    // Transfer-Encoding (a smuggling attempt) cannot make the upstream read a different body.
    headers.remove(header::CONTENT_LENGTH);
    let original_host = headers.get(header::HOST).cloned();
    headers.insert(header::HOST, upstream_authority.clone());
    if let Some((peer, proto)) = forwarded {
        let ip = peer.ip().to_string();
        let xff = match headers.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(prev) if !prev.is_empty() => format!("{prev}, {ip}"),
            _ => ip,
        };
        if let Ok(v) = HeaderValue::from_str(&xff) {
            headers.insert(X_FORWARDED_FOR, v);
        }
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
        if let Some(host) = original_host {
            headers.insert(X_FORWARDED_HOST, host);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_listed_headers_go_too() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret-Hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.append(header::SET_COOKIE, HeaderValue::from_static("a=1"));
        h.append(header::SET_COOKIE, HeaderValue::from_static("b=2"));
        strip_hop_by_hop(&mut h);
        assert!(h.get("x-secret-hop").is_none());
        assert!(h.get("keep-alive").is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert_eq!(h.get_all(header::SET_COOKIE).iter().count(), 2);
    }

    #[test]
    fn forwarded_for_is_appended() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.insert(header::HOST, HeaderValue::from_static("localhost:8443"));
        let peer: std::net::SocketAddr = "127.0.0.1:5000".parse().expect("addr");
        request_headers(
            &mut h,
            &HeaderValue::from_static("rally1.rallydev.com"),
            Some((&peer, "https")),
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "localhost:8443");
        assert_eq!(h[header::HOST], "rally1.rallydev.com");
    }
}
