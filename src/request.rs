//! One request's context, built once at the edge (the proxy's `handle`) and passed
//! by reference to every phase after it: its id, when it arrived, the connection it came on,
//! the origin the client used, and the credential it carries. Phases record what the access
//! log reports at the end (bytes read, time spent waiting on Rally) here rather than passing
//! it back up.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::rally::credential::Credential;
use crate::server::ConnInfo;

/// What the edge knows about one request.
pub struct RequestCtx {
    /// `X-Request-Id` as received, or a new UUID.
    pub id: String,
    /// Arrival, formatted as Rally formats dates (the Date filled into results); empty on the
    /// streaming path, which never reads it (formatting a date per request is not free).
    pub received_at: String,
    pub started: Instant,
    pub conn: ConnInfo,
    /// `scheme://host[:port]` the client used, when it is safe to echo in refs.
    pub client_origin: Option<String>,
    /// The caller's Rally credential, if the request carries one.
    pub credential: Option<Credential>,
    /// Request body bytes read (streamed or buffered).
    pub bytes_in: Arc<AtomicU64>,
    /// Milliseconds spent waiting for Rally's answers, as `f64` bits; `u64::MAX` when none.
    upstream_ms: AtomicU64,
}

impl RequestCtx {
    pub fn new(
        id: String,
        conn: ConnInfo,
        client_origin: Option<String>,
        credential: Option<Credential>,
        intercepted: bool,
    ) -> RequestCtx {
        RequestCtx {
            id,
            received_at: if intercepted {
                crate::wsapi::format_date(time::OffsetDateTime::now_utc())
            } else {
                String::new()
            },
            started: Instant::now(),
            conn,
            client_origin,
            credential,
            bytes_in: Arc::new(AtomicU64::new(0)),
            upstream_ms: AtomicU64::new(u64::MAX),
        }
    }

    /// Counts request body bytes read from a buffer.
    pub fn count_in(&self, n: usize) {
        self.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Adds time spent waiting for Rally (several upstream requests for one held write add up).
    pub fn record_upstream(&self, ms: f64) {
        let _ = self
            .upstream_ms
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                let before = if old == u64::MAX {
                    0.0
                } else {
                    f64::from_bits(old)
                };
                Some((before + ms).to_bits())
            });
    }

    /// Time spent waiting for Rally, if the request reached it.
    pub fn upstream_ms(&self) -> Option<f64> {
        let v = self.upstream_ms.load(Ordering::Relaxed);
        (v != u64::MAX).then(|| f64::from_bits(v))
    }
}
