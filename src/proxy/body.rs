//! Body wrappers on the forwarding path: they count bytes as frames stream by (nothing is
//! buffered) and run a completion callback exactly once — at the end of the body, on a body
//! error, or when the body is dropped early because the client went away. The access-log line
//! is written from that callback, so it carries the real byte count and total latency.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use crate::server::BoxError;

/// How a streamed body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Complete,
    Error,
    /// Dropped before the end (the peer disconnected).
    Aborted,
}

type Done = Box<dyn FnOnce(u64, Ending) + Send>;

pin_project_lite::pin_project! {
    /// Counts data bytes into `counter` and calls `done` once when the body ends.
    pub struct Observed<B: HttpBody> {
        #[pin]
        inner: B,
        counter: Arc<AtomicU64>,
        done: Option<Done>,
    }

    impl<B: HttpBody> PinnedDrop for Observed<B> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(done) = this.done.take() {
                let ending = if this.inner.is_end_stream() { Ending::Complete } else { Ending::Aborted };
                done(this.counter.load(Ordering::Relaxed), ending);
            }
        }
    }
}

impl<B: HttpBody> Observed<B> {
    pub fn new(inner: B, counter: Arc<AtomicU64>, done: Option<Done>) -> Self {
        Observed {
            inner,
            counter,
            done,
        }
    }
}

impl<B> HttpBody for Observed<B>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.counter.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                if let Some(done) = this.done.take() {
                    done(this.counter.load(Ordering::Relaxed), Ending::Error);
                }
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                if let Some(done) = this.done.take() {
                    done(this.counter.load(Ordering::Relaxed), Ending::Complete);
                }
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
