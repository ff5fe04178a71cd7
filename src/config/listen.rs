//! `[listen]` validated: the client listener's address (by default on loopback, 8443 with TLS
//! and 8080 without), its TLS files, and the limits that keep slow or greedy clients from
//! holding it: header and body read timeouts, the idle timeout, HTTP/2 keep-alive PINGs, the
//! connection cap and the per-client-address cap.

use super::validate::{duration, existing_file, socket_addr};
use super::*;

/// `[listen]` (and the listener flags): address, TLS files, timeouts and connection caps.
pub(super) fn validate(raw: &RawConfig, ov: &Overrides, e: &mut Vec<ConfigError>) -> ListenConfig {
    let tls_cert = ov.tls_cert.clone().or_else(|| raw.listen.tls_cert.clone());
    let tls_key = ov.tls_key.clone().or_else(|| raw.listen.tls_key.clone());
    existing_file("listen.tls_cert", &tls_cert, e);
    existing_file("listen.tls_key", &tls_key, e);
    let tls = match (tls_cert, tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
        (None, None) => None,
        (Some(_), None) => {
            e.push(ConfigError {
                key: "listen.tls_key".into(),
                message: "listen.tls_cert is set but listen.tls_key is not".into(),
            });
            None
        }
        (None, Some(_)) => {
            e.push(ConfigError {
                key: "listen.tls_cert".into(),
                message: "listen.tls_key is set but listen.tls_cert is not".into(),
            });
            None
        }
    };
    let default_listen = if tls.is_some() {
        DEFAULT_LISTEN_TLS
    } else {
        DEFAULT_LISTEN_PLAIN
    };
    let listen_text = ov
        .listen
        .clone()
        .or_else(|| raw.listen.addr.clone())
        .unwrap_or_else(|| default_listen.into());
    let listen = ListenConfig {
        addr: socket_addr("listen.addr", &listen_text, e),
        tls,
        header_read_timeout: duration(
            "listen.header_read_timeout",
            raw.listen.header_read_timeout.as_deref(),
            defaults::HEADER_READ_TIMEOUT,
            e,
        ),
        http2: raw.listen.http2.unwrap_or(defaults::HTTP2),
        max_connections: raw
            .listen
            .max_connections
            .unwrap_or(defaults::MAX_CONNECTIONS) as usize,
        max_connections_per_peer: raw
            .listen
            .max_connections_per_peer
            .unwrap_or(defaults::MAX_CONNECTIONS_PER_PEER)
            as usize,
        body_read_timeout: duration(
            "listen.body_read_timeout",
            raw.listen.body_read_timeout.as_deref(),
            defaults::BODY_READ_TIMEOUT,
            e,
        ),
        idle_timeout: duration(
            "listen.idle_timeout",
            raw.listen.idle_timeout.as_deref(),
            defaults::IDLE_TIMEOUT,
            e,
        ),
        http2_keep_alive_interval: duration(
            "listen.http2_keep_alive_interval",
            raw.listen.http2_keep_alive_interval.as_deref(),
            defaults::HTTP2_KEEP_ALIVE_INTERVAL,
            e,
        ),
        http2_keep_alive_timeout: duration(
            "listen.http2_keep_alive_timeout",
            raw.listen.http2_keep_alive_timeout.as_deref(),
            defaults::HTTP2_KEEP_ALIVE_TIMEOUT,
            e,
        ),
    };
    for (key, n) in [
        ("listen.max_connections", listen.max_connections),
        (
            "listen.max_connections_per_peer",
            listen.max_connections_per_peer,
        ),
    ] {
        if n == 0 {
            e.push(ConfigError {
                key: key.into(),
                message: "must be at least 1".into(),
            });
        }
    }
    listen
}
