//! Body wrappers on the forwarding path. They count bytes as frames stream by (nothing is
//! buffered). [`Observed`] also runs a completion once — at the end of the body, on a body
//! error, or when the body is dropped early because the client went away — which is where the
//! access-log line is written, so it carries the real byte count and total latency.
//! [`Counted`] only counts (a request body on its way upstream). Not `BodyExt::map_frame`:
//! that wrapper does not pass on the body's size hint, so a body of known length would be sent
//! chunked (and a GET's body not at all).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use crate::server::BoxError;

/// How a streamed body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    Complete,
    Error,
    /// Dropped before the end (the peer disconnected).
    Aborted,
}

/// What runs once when an [`Observed`] body ends: a plain value rather than a boxed closure,
/// so observing a body costs no allocation of its own.
pub(crate) trait Finish {
    fn finish(self, bytes: u64, ending: Ending);
}

pin_project_lite::pin_project! {
    /// Counts data bytes and calls `done` once when the body ends.
    pub struct Observed<B: HttpBody, F: Finish> {
        #[pin]
        inner: B,
        bytes: u64,
        done: Option<F>,
    }

    impl<B: HttpBody, F: Finish> PinnedDrop for Observed<B, F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(done) = this.done.take() {
                let ending = if this.inner.is_end_stream() { Ending::Complete } else { Ending::Aborted };
                done.finish(*this.bytes, ending);
            }
        }
    }
}

impl<B: HttpBody, F: Finish> Observed<B, F> {
    pub(crate) fn new(inner: B, done: F) -> Self {
        Observed {
            inner,
            bytes: 0,
            done: Some(done),
        }
    }
}

impl<B, F> HttpBody for Observed<B, F>
where
    B: HttpBody<Data = Bytes>,
    B::Error: Into<BoxError>,
    F: Finish,
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
                    *this.bytes += data.len() as u64;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                if let Some(done) = this.done.take() {
                    done.finish(*this.bytes, Ending::Error);
                }
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                if let Some(done) = this.done.take() {
                    done.finish(*this.bytes, Ending::Complete);
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

pin_project_lite::pin_project! {
    /// Counts data bytes into a counter shared with the request's context.
    pub struct Counted<B> {
        #[pin]
        inner: B,
        counter: Arc<AtomicU64>,
    }
}

impl<B> Counted<B> {
    pub(crate) fn new(inner: B, counter: Arc<AtomicU64>) -> Self {
        Counted { inner, counter }
    }
}

impl<B> HttpBody for Counted<B>
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
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use std::sync::Mutex;

    struct Record(Arc<Mutex<Vec<(u64, Ending)>>>);
    impl Finish for Record {
        fn finish(self, bytes: u64, ending: Ending) {
            if let Ok(mut v) = self.0.lock() {
                v.push((bytes, ending));
            }
        }
    }

    #[tokio::test]
    async fn finishes_once_with_the_bytes_at_the_end() {
        let seen = Arc::new(Mutex::new(vec![]));
        let body = Observed::new(
            Full::new(Bytes::from_static(b"hello")),
            Record(seen.clone()),
        );
        let collected = body.collect().await.expect("body").to_bytes();
        assert_eq!(&collected[..], b"hello");
        assert_eq!(*seen.lock().expect("lock"), vec![(5, Ending::Complete)]);
    }

    #[tokio::test]
    async fn an_unread_body_dropped_is_aborted() {
        let seen = Arc::new(Mutex::new(vec![]));
        drop(Observed::new(
            Full::new(Bytes::from_static(b"hello")),
            Record(seen.clone()),
        ));
        assert_eq!(*seen.lock().expect("lock"), vec![(0, Ending::Aborted)]);
    }
}
