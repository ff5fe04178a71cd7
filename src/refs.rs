//! `_ref` rewriting: Rally's JSON carries absolute URLs of its own origin (`_ref`, collection
//! refs, `AllowedValues` refs); clients that follow them would bypass the sidecar. The upstream
//! origin is replaced by the origin the client used, in JSON bodies and in `Location`.
//!
//! The rewrite is a streaming byte substitution: [`Rewriter`] holds back at most one pattern's
//! length between chunks, so memory stays bounded whatever the body size. A match must be
//! followed by a URL boundary (`/`, `"`, `?`, `#`, `\`), so `https://rally1.rallydev.com.evil`
//! is left alone. Both the plain and the JSON-escaped (`https:\/\/host`) spellings are matched.
//! Replacements are origins checked by [`safe_origin`], so they can never break a JSON string.
//! gzip bodies are decoded, rewritten and re-encoded on the fly.

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt, TryStreamExt};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

use crate::server::{Body, BoxError};

/// Bytes that may follow an origin inside a URL or at the end of a JSON string.
fn is_boundary(b: u8) -> bool {
    matches!(b, b'/' | b'"' | b'?' | b'#' | b'\\')
}

/// True if `origin` is `scheme://host[:port]` made only of characters that need no escaping in
/// JSON or in a header, so substituting it cannot change a document's structure.
pub fn safe_origin(origin: &str) -> bool {
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    (scheme == "http" || scheme == "https")
        && !rest.is_empty()
        && rest.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']' | b'_')
        })
}

/// A streaming find-and-replace of origins.
#[derive(Debug, Clone)]
pub struct Rewriter {
    pairs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Longest pattern + 1 (the boundary byte).
    window: usize,
    carry: Vec<u8>,
    /// How many substitutions were made.
    pub replaced: usize,
}

impl Rewriter {
    /// Rewrites `from` to `to`. Returns `None` when either is not a [`safe_origin`] or they are
    /// equal (nothing to do).
    pub fn new(from: &str, to: &str) -> Option<Rewriter> {
        if from == to || !safe_origin(from) || !safe_origin(to) {
            return None;
        }
        let escaped = |s: &str| s.replace('/', "\\/").into_bytes();
        let pairs = vec![
            (from.as_bytes().to_vec(), to.as_bytes().to_vec()),
            (escaped(from), escaped(to)),
        ];
        let window = pairs.iter().map(|(f, _)| f.len()).max().unwrap_or(0) + 1;
        Some(Rewriter {
            pairs,
            window,
            carry: Vec::new(),
            replaced: 0,
        })
    }

    /// Feeds a chunk; returns the bytes that are final.
    pub fn push(&mut self, chunk: &[u8]) -> Bytes {
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(chunk);
        self.scan(&buf, false)
    }

    /// Ends the stream; returns what was held back.
    pub fn finish(&mut self) -> Bytes {
        let buf = std::mem::take(&mut self.carry);
        self.scan(&buf, true)
    }

    /// Rewrites a body that is whole in memory, as `push` then `finish` would, without first
    /// copying it (the sidecar's own answers to held writes, which can echo a 1 MiB result).
    pub fn whole(mut self, body: &[u8]) -> Bytes {
        if self.carry.is_empty() {
            return self.scan(body, true);
        }
        let mut out = self.push(body).to_vec();
        out.extend_from_slice(&self.finish());
        Bytes::from(out)
    }

    fn scan(&mut self, buf: &[u8], last: bool) -> Bytes {
        let mut out = BytesMut::with_capacity(buf.len() + 64);
        let mut i = 0;
        let mut emitted = 0;
        // Every pattern starts with "http"; jump between candidate positions with memchr.
        while let Some(off) = memchr::memchr(b'h', &buf[i..]) {
            i += off;
            let rest = &buf[i..];
            let mut advanced = false;
            for (from, to) in &self.pairs {
                if rest.len() > from.len() {
                    if rest.starts_with(from) && is_boundary(rest[from.len()]) {
                        out.extend_from_slice(&buf[emitted..i]);
                        out.extend_from_slice(to);
                        i += from.len();
                        emitted = i;
                        self.replaced += 1;
                        advanced = true;
                        break;
                    }
                } else if !last && from.starts_with(rest) {
                    // Could still become a match once more bytes arrive: hold back from here.
                    out.extend_from_slice(&buf[emitted..i]);
                    self.carry = buf[i..].to_vec();
                    return out.freeze();
                }
            }
            if !advanced {
                i += 1;
            }
        }
        out.extend_from_slice(&buf[emitted..]);
        debug_assert!(self.carry.len() < self.window);
        out.freeze()
    }
}

/// Rewrites an origin prefix in a `Location` value.
pub fn rewrite_location(value: &str, from: &str, to: &str) -> Option<String> {
    let rest = value.strip_prefix(from)?;
    if rest.is_empty() || rest.bytes().next().is_some_and(is_boundary) {
        Some(format!("{to}{rest}"))
    } else {
        None
    }
}

type ByteStream = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, BoxError>> + Send>>;

/// Applies `rw` to a byte stream; the held-back tail is emitted when the input ends.
fn rewrite_stream(input: ByteStream, rw: Rewriter) -> ByteStream {
    enum State {
        Running(ByteStream, Rewriter),
        Done,
    }
    let stream = futures_util::stream::unfold(State::Running(input, rw), |state| async move {
        match state {
            State::Done => None,
            State::Running(mut input, mut rw) => match input.next().await {
                Some(Ok(chunk)) => {
                    let out = rw.push(&chunk);
                    Some((Ok(out), State::Running(input, rw)))
                }
                Some(Err(e)) => Some((Err(e), State::Done)),
                None => Some((Ok(rw.finish()), State::Done)),
            },
        }
    });
    Box::pin(stream.try_filter(|b| futures_util::future::ready(!b.is_empty())))
}

/// How the response body is encoded, as far as rewriting cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Identity,
    Gzip,
}

/// Wraps `body` so the upstream origin is replaced on the fly; gzip is decoded and re-encoded.
pub fn rewrite_body(body: Body, coding: Coding, rw: Rewriter) -> Body {
    let input: ByteStream = Box::pin(body.into_data_stream().map_err(|e| -> BoxError { e }));
    let output: ByteStream = match coding {
        Coding::Identity => rewrite_stream(input, rw),
        Coding::Gzip => {
            use async_compression::tokio::bufread::{GzipDecoder, GzipEncoder};
            use tokio_util::io::{ReaderStream, StreamReader};
            let reader = StreamReader::new(input.map_err(std::io::Error::other));
            let decoded: ByteStream = Box::pin(
                ReaderStream::new(GzipDecoder::new(reader))
                    .map_err(|e| -> BoxError { Box::new(e) }),
            );
            let rewritten = rewrite_stream(decoded, rw);
            let reader = StreamReader::new(rewritten.map_err(std::io::Error::other));
            Box::pin(
                ReaderStream::new(GzipEncoder::new(reader))
                    .map_err(|e| -> BoxError { Box::new(e) }),
            )
        }
    };
    StreamBody::new(output.map_ok(Frame::data)).boxed_unsync()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(rw: &mut Rewriter, chunks: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for c in chunks {
            out.extend_from_slice(&rw.push(c));
        }
        out.extend_from_slice(&rw.finish());
        out
    }

    #[test]
    fn rewrites_across_every_chunk_split() {
        let input = br#"{"_ref":"https://rally1.rallydev.com/slm/webservice/v2.0/testcase/1","x":"https://rally1.rallydev.com"}"#;
        let want = br#"{"_ref":"https://localhost:8443/slm/webservice/v2.0/testcase/1","x":"https://localhost:8443"}"#;
        for split in 0..input.len() {
            let mut rw =
                Rewriter::new("https://rally1.rallydev.com", "https://localhost:8443").expect("rw");
            let out = run(&mut rw, &[&input[..split], &input[split..]]);
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(want),
                "split at {split}"
            );
            assert_eq!(rw.replaced, 2);
        }
        let rw =
            Rewriter::new("https://rally1.rallydev.com", "https://localhost:8443").expect("rw");
        assert_eq!(&rw.whole(input)[..], &want[..], "a whole body, as a stream");
    }

    #[test]
    fn leaves_longer_hosts_and_other_text_alone() {
        let mut rw =
            Rewriter::new("https://rally1.rallydev.com", "http://127.0.0.1:1").expect("rw");
        let input = b"https://rally1.rallydev.com.evil.example/ and http://rally1.rallydev.com/ and https://rally1.rallydev.co";
        assert_eq!(run(&mut rw, &[input]), input.to_vec());
        assert_eq!(rw.replaced, 0);
        let rw = Rewriter::new("https://rally1.rallydev.com", "http://127.0.0.1:1").expect("rw");
        assert_eq!(&rw.whole(input)[..], &input[..]);
    }

    #[test]
    fn escaped_slashes_are_matched() {
        let mut rw = Rewriter::new("https://a.example", "http://b.example:9").expect("rw");
        let out = run(&mut rw, &[br#""https:\/\/a.example\/x""#]);
        assert_eq!(out, br#""http:\/\/b.example:9\/x""#.to_vec());
    }

    #[test]
    fn unsafe_origins_are_refused() {
        assert!(Rewriter::new("https://a.example", "https://a\"b").is_none());
        assert!(Rewriter::new("https://a.example", "https://a.example").is_none());
        assert!(Rewriter::new("https://a.example", "javascript://x").is_none());
    }

    #[test]
    fn location_prefix_only() {
        assert_eq!(
            rewrite_location("https://a.example/slm/x", "https://a.example", "http://b:1")
                .as_deref(),
            Some("http://b:1/slm/x")
        );
        assert_eq!(
            rewrite_location(
                "https://a.example.evil/x",
                "https://a.example",
                "http://b:1"
            ),
            None
        );
    }
}
