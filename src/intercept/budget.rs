//! The memory bound on intercepted writes: one byte budget (`intercept.max_buffered`) shared
//! by every body the sidecar buffers — single writes, `Results/add` and batches, held until
//! confirmed. A body is charged as it arrives (all at once when it announces its length), and
//! the charge is returned when the request's handling ends, i.e. when a held write has been
//! answered. A body that does not fit is refused before anything is forwarded: 503 with a
//! WSAPI-shaped error and `Retry-After`, so clients back off instead of the process growing
//! past its memory limit. The read also has a whole-body deadline (`listen.body_read_timeout`):
//! a client trickling a body gets 408 and its connection is closed.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};

use crate::error::wsapi_response;
use crate::server::Body;
use crate::wsapi::Envelope;

/// Seconds a client refused for memory is told to wait.
pub const RETRY_AFTER_S: u64 = 5;

/// Bytes of buffered bodies in memory, against a limit.
pub struct Budget {
    limit: usize,
    used: AtomicUsize,
}

/// Bytes charged to the budget; returned when dropped.
pub struct Charge {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

impl Charge {
    /// Adds `n` bytes if they fit; false (and nothing added) otherwise.
    fn grow(&mut self, n: usize) -> bool {
        let b = &self.budget;
        let fits = b
            .used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                used.checked_add(n).filter(|total| *total <= b.limit)
            })
            .is_ok();
        if fits {
            self.bytes += n;
        }
        fits
    }
}

impl Budget {
    pub fn new(limit: usize) -> Arc<Budget> {
        Arc::new(Budget {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    /// Bytes charged now.
    pub fn in_use(&self) -> usize {
        self.used.load(Ordering::SeqCst)
    }

    fn charge(self: &Arc<Self>) -> Charge {
        Charge {
            budget: self.clone(),
            bytes: 0,
        }
    }
}

/// Why a body could not be buffered.
#[derive(Debug)]
pub enum ReadError {
    /// Longer than `intercept.max_body`.
    TooLarge(usize),
    /// The budget has no room for it.
    OverBudget { limit: usize },
    /// Not received within `listen.body_read_timeout`.
    TimedOut(Duration),
    /// The client's body failed (a reset, a framing error).
    Broken(String),
}

/// Reads a body of at most `max` bytes within `deadline`, charged to `budget`.
pub async fn read(
    incoming: Incoming,
    max: usize,
    budget: &Arc<Budget>,
    deadline: Duration,
) -> Result<(Bytes, Charge), ReadError> {
    let mut charge = budget.charge();
    let announced = incoming.size_hint().exact().map(|n| n as usize);
    if announced.is_some_and(|n| n > max) {
        return Err(ReadError::TooLarge(max));
    }
    let over = ReadError::OverBudget {
        limit: budget.limit,
    };
    let collect = async {
        let mut body = incoming;
        if let Some(n) = announced
            && !charge.grow(n)
        {
            discard(&mut body, max).await;
            return Err(over);
        }
        let mut buf = BytesMut::with_capacity(announced.unwrap_or(0));
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ReadError::Broken(e.to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            let len = buf.len() + data.len();
            if len > max {
                return Err(ReadError::TooLarge(max));
            }
            if len > charge.bytes && !charge.grow(len - charge.bytes) {
                drop(buf);
                discard(&mut body, max).await;
                return Err(over);
            }
            buf.extend_from_slice(&data);
        }
        Ok(buf.freeze())
    };
    match tokio::time::timeout(deadline, collect).await {
        Ok(Ok(bytes)) => Ok((bytes, charge)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ReadError::TimedOut(deadline)),
    }
}

/// Reads the rest of a refused body (at most `max` bytes) without keeping it, so the client
/// reads the 503 instead of a connection reset: a server that closes with unread bytes
/// makes the kernel send RST, which can destroy the answer on its way.
async fn discard(body: &mut Incoming, max: usize) {
    let mut seen = 0;
    while let Some(Ok(frame)) = body.frame().await {
        seen += frame.data_ref().map_or(0, |d| d.len());
        if seen > max {
            return;
        }
    }
}

/// The 503 for a body the budget has no room for: nothing was forwarded, try again shortly.
pub fn over_budget(kind: Envelope, limit: usize) -> Response<Body> {
    let mut r = wsapi_response(
        StatusCode::SERVICE_UNAVAILABLE,
        kind,
        "memory-budget",
        &format!(
            "rally-sidecar: too many result bodies are held in memory right now (intercept.max_buffered = {limit} bytes); nothing was forwarded, retry in {RETRY_AFTER_S} s"
        ),
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_S));
    r
}

/// The 408 for a body that did not arrive in time; the connection is closed after it.
pub fn timed_out(kind: Envelope, deadline: Duration) -> Response<Body> {
    let mut r = wsapi_response(
        StatusCode::REQUEST_TIMEOUT,
        kind,
        "body-timeout",
        &format!(
            "rally-sidecar: the request body did not arrive within listen.body_read_timeout ({deadline:?}); nothing was forwarded"
        ),
    );
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_fit_the_limit_and_come_back_when_dropped() {
        let b = Budget::new(100);
        let mut first = b.charge();
        assert!(first.grow(60));
        let mut second = b.charge();
        assert!(!second.grow(41), "60 + 41 > 100");
        assert!(second.grow(40));
        assert_eq!(b.in_use(), 100);
        drop(first);
        assert_eq!(b.in_use(), 40);
        drop(second);
        assert_eq!(b.in_use(), 0);
    }
}
