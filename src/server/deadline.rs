//! Time limits on reading a request body, so a client that trickles one cannot hold a
//! connection (and, for an intercepted write, memory) for ever: [`Paced`] fails a streamed
//! body that pauses longer than a gap between two chunks — measured only while its reader
//! waits for it, so an upstream applying back-pressure never counts against the client — with
//! [`TimedOut`]. (A buffered read's whole-body deadline is the interception budget's
//! `ReadError::TimedOut`.)

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::Sleep;

use super::BoxError;

/// The body did not arrive in time.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0:?}")]
pub(crate) struct TimedOut(pub Duration);

pin_project_lite::pin_project! {
    /// A body that fails with [`TimedOut`] when its next chunk takes longer than `gap`.
    pub struct Paced<B> {
        #[pin]
        inner: B,
        gap: Duration,
        waiting: Option<Pin<Box<Sleep>>>,
    }
}

impl<B> Paced<B> {
    pub(crate) fn new(inner: B, gap: Duration) -> Self {
        Paced {
            inner,
            gap,
            waiting: None,
        }
    }
}

impl<B> HttpBody for Paced<B>
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
            Poll::Ready(r) => {
                *this.waiting = None;
                Poll::Ready(r.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let gap = *this.gap;
                let timer = this
                    .waiting
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(gap)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        *this.waiting = None;
                        Poll::Ready(Some(Err(Box::new(TimedOut(gap)))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
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
    use http_body_util::{BodyExt, StreamBody};

    #[tokio::test(start_paused = true)]
    async fn a_pause_longer_than_the_gap_fails_the_body() {
        let chunks = futures_util::stream::unfold(0u32, |n| async move {
            match n {
                0 => Some((
                    Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from("a"))),
                    1,
                )),
                1 => {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    Some((Ok(Frame::data(Bytes::from("b"))), 2))
                }
                2 => {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    Some((Ok(Frame::data(Bytes::from("c"))), 3))
                }
                _ => None,
            }
        });
        let mut body = Box::pin(Paced::new(StreamBody::new(chunks), Duration::from_secs(5)));
        let mut got = Vec::new();
        let err = loop {
            match body.frame().await {
                Some(Ok(f)) => got.extend_from_slice(f.data_ref().map(|d| &d[..]).unwrap_or(b"")),
                Some(Err(e)) => break e,
                None => panic!("the body should have timed out"),
            }
        };
        assert_eq!(got, b"ab", "a 2 s pause is within the 5 s gap");
        assert!(err.downcast_ref::<TimedOut>().is_some(), "{err}");
    }
}
