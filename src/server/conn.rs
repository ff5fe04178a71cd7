//! One connection's life after it is accepted: its requests are counted in flight (from the
//! request head to the end of the response body), and a connection with none in flight for
//! `idle_timeout` is asked to close — GOAWAY for HTTP/2, a plain close for an idle HTTP/1.1 —
//! and dropped if the peer does not finish within [`LAST_WORD`]. hyper's HTTP/2 server has no
//! idle timer of its own: without this, a client that sends only the preface, and answers
//! PINGs, holds its slot for ever. The same loop starts the graceful close at shutdown, and
//! [`Drain`] lets the listener wait until every connection has ended.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::{Request, Response};
use hyper_util::server::graceful::GracefulConnection;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Body, BoxError, BoxFuture};

/// How long a connection asked to close while idle may take to do so before it is dropped.
pub(super) const LAST_WORD: Duration = Duration::from_secs(1);

/// Requests in flight on one connection, and when the last one ended.
pub(super) struct Activity {
    in_flight: AtomicUsize,
    last: Mutex<Instant>,
    changed: Notify,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            in_flight: AtomicUsize::new(0),
            last: Mutex::new(Instant::now()),
            changed: Notify::new(),
        }
    }
}

type Call = BoxFuture<Result<Response<Body>, BoxError>>;

impl Activity {
    /// A hyper service around `call` that counts each request in flight until its response
    /// body is done (or dropped).
    pub(super) fn wrap<F>(
        self: Arc<Self>,
        call: F,
    ) -> impl hyper::service::Service<
        Request<Incoming>,
        Response = Response<Body>,
        Error = BoxError,
        Future = Call,
    > + Send
    + 'static
    where
        F: Fn(Request<Incoming>) -> Call + Send + Sync + 'static,
    {
        hyper::service::service_fn(move |req| -> Call {
            let busy = Busy::new(self.clone());
            let fut = call(req);
            Box::pin(async move {
                let resp = fut.await?;
                Ok(resp.map(|inner| Tracked { inner, _busy: busy }.boxed_unsync()))
            })
        })
    }

    fn idle(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst) == 0
    }

    /// Returns once no request has been in flight for `d`.
    async fn idle_for(&self, d: Duration) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.idle() {
                let since = self.last.lock().map(|l| l.elapsed()).unwrap_or_default();
                if since >= d {
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep(d - since) => {}
                    _ = &mut changed => {}
                }
            } else {
                changed.await;
            }
        }
    }
}

/// One request in flight.
struct Busy(Arc<Activity>);

impl Busy {
    fn new(a: Arc<Activity>) -> Busy {
        a.in_flight.fetch_add(1, Ordering::SeqCst);
        a.changed.notify_waiters();
        Busy(a)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Ok(mut l) = self.0.last.lock() {
            *l = Instant::now();
        }
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }
}

/// A response body that keeps its request counted until it ends. (Not `BodyExt::map_frame`,
/// which drops the size hint: a response of known length would go out chunked.)
struct Tracked {
    inner: Body,
    _busy: Busy,
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Serves `conn` to its end: closes it gracefully when `stop` is cancelled or when it has been
/// idle for `idle`, and drops it if, asked to close while idle, it lingers.
pub(super) async fn drive<C>(
    conn: C,
    activity: Arc<Activity>,
    stop: CancellationToken,
    idle: Duration,
) where
    C: GracefulConnection,
{
    tokio::pin!(conn);
    let mut closing = false;
    let mut reaping = false;
    loop {
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = stop.cancelled(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = activity.idle_for(idle), if !closing => {
                tracing::debug!(idle = ?idle, "closing an idle connection");
                conn.as_mut().graceful_shutdown();
                closing = true;
                reaping = true;
            }
            _ = tokio::time::sleep(LAST_WORD), if reaping => {
                if activity.idle() {
                    return;
                }
            }
        }
    }
}

/// The connections a listener has open, so that shutdown can wait for the last one.
#[derive(Default)]
pub(super) struct Drain {
    open: AtomicUsize,
    changed: Notify,
}

/// One open connection; dropping it ends the connection's count.
pub(super) struct Open(Arc<Drain>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }
}

impl Drain {
    pub(super) fn enter(self: &Arc<Self>) -> Open {
        self.open.fetch_add(1, Ordering::SeqCst);
        Open(self.clone())
    }

    pub(super) fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// Returns once no connection is open.
    pub(super) async fn empty(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.open() == 0 {
                return;
            }
            changed.await;
        }
    }
}
