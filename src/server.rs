//! The accept loop shared by the sidecar's listener, the admin listener and the simulator:
//! plain TCP or TLS (rustls, ALPN h2/http1.1), HTTP/1.1 keep-alive and HTTP/2 through hyper-util's
//! auto builder, a slowloris guard (`header_read_timeout`, which also ends idle keep-alive
//! connections: hyper starts that timer whenever it waits for a request head), HTTP/2 keep-alive
//! PINGs, an idle timeout for connections with no request in flight ([`conn`]: an HTTP/2 client
//! that sends only its preface is reaped), a connection cap and a per-client-address cap
//! ([`peers`]: one client cannot take every slot), and graceful shutdown: stop accepting, let
//! connections finish within the grace period, then cut what remains and say how much was cut.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

mod conn;
pub(crate) mod deadline;
mod peers;

use conn::{Activity, Drain};

/// Errors crossing body and service boundaries.
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The response body type every handler returns.
pub(crate) type Body = UnsyncBoxBody<Bytes, BoxError>;
/// A boxed, sendable future.
pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Boxes a hyper error. A named function, not a closure: closures returning `BoxError` inside
/// async code trip a known higher-ranked lifetime inference problem in rustc.
pub(crate) fn box_hyper(e: hyper::Error) -> BoxError {
    Box::new(e)
}

/// Collects a body up to `max` bytes. (Written out rather than with `Limited` because
/// `Limited` over a boxed body inside async code trips the same inference problem.)
pub(crate) async fn collect_limited(mut body: Body, max: usize) -> Result<Bytes, String> {
    use http_body_util::BodyExt;
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| e.to_string())?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > max {
                return Err(format!("longer than {max} bytes"));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// What a handler knows about the connection a request came in on.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    pub tls: bool,
}

/// A request handler. Returning `Err` makes hyper drop the connection without an answer (the
/// simulator uses it to inject resets); the sidecar always answers.
pub(crate) trait Handler: Send + Sync + 'static {
    fn call(
        &self,
        req: Request<Incoming>,
        conn: ConnInfo,
    ) -> BoxFuture<Result<Response<Body>, BoxError>>;
}

/// Called when connections open and close (the sidecar counts them in a gauge).
pub(crate) trait ConnObserver: Send + Sync + 'static {
    fn opened(&self) {}
    fn closed(&self) {}
}

/// No-op observer.
pub(crate) struct NoObserver;
impl ConnObserver for NoObserver {}

/// How a listener serves.
#[derive(Clone)]
pub(crate) struct ServeOptions {
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub header_read_timeout: Duration,
    pub http2: bool,
    pub max_connections: usize,
    /// Connections one client IP address may hold at once.
    pub max_connections_per_peer: usize,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    pub http2_keep_alive_interval: Duration,
    pub http2_keep_alive_timeout: Duration,
    /// How long in-flight connections get after shutdown starts.
    pub grace: Duration,
    /// Name used in log lines ("proxy", "admin", "simulator").
    pub name: &'static str,
}

impl ServeOptions {
    pub(crate) fn plain(name: &'static str) -> Self {
        ServeOptions {
            tls: None,
            header_read_timeout: Duration::from_secs(30),
            http2: true,
            max_connections: 20_000,
            max_connections_per_peer: 20_000,
            idle_timeout: Duration::from_secs(60),
            http2_keep_alive_interval: Duration::from_secs(20),
            http2_keep_alive_timeout: Duration::from_secs(20),
            grace: Duration::from_secs(30),
            name,
        }
    }
}

/// The most hyper buffers per HTTP/1 connection, each way (its default is 400 KiB).
const MAX_BUF: usize = 64 * 1024;

/// What an HTTP/2 client sends first; anything else is HTTP/1.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves `listener` until `shutdown` is cancelled, then drains. Returns the number of
/// connections that were still open at the grace deadline and were cut.
pub(crate) async fn serve(
    listener: TcpListener,
    opts: ServeOptions,
    handler: Arc<dyn Handler>,
    observer: Arc<dyn ConnObserver>,
    shutdown: CancellationToken,
) -> usize {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_read_timeout)
        .keep_alive(true)
        // hyper's read buffer grows to 400 KiB on a large body and is kept while the request
        // is answered: a held 1 MiB write kept that much for seconds (issue 16).
        .max_buf_size(MAX_BUF);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(opts.http2_keep_alive_interval)
        .keep_alive_timeout(opts.http2_keep_alive_timeout);
    // For connections known to be HTTP/1 from their first bytes: hyper-util's version
    // detection hands hyper the bytes it read (up to 24) as a first read of their own, which
    // grows every connection's read buffer to 16 KiB instead of 8 (issue 16: a held write
    // keeps its connection, and its buffers, for seconds).
    let h1 = Arc::new(builder.clone().http1_only());
    let builder = if opts.http2 {
        builder
    } else {
        builder.http1_only()
    };
    let builder = Arc::new(builder);
    let acceptor = opts.tls.clone().map(TlsAcceptor::from);
    let drain = Arc::new(Drain::default());
    let limit = Arc::new(tokio::sync::Semaphore::new(opts.max_connections));
    let peers = peers::Peers::new(opts.max_connections_per_peer);
    let local = listener.local_addr().ok();

    loop {
        let permit = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            p = limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(listener = opts.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(seat) = peers.enter(peer.ip()) else {
            tracing::debug!(listener = opts.name, peer = %peer, limit = opts.max_connections_per_peer, "closed: too many connections from this address");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let info = ConnInfo {
            peer,
            local: stream.local_addr().ok().or(local).unwrap_or(peer),
            tls: acceptor.is_some(),
        };
        let handler = handler.clone();
        let observer = observer.clone();
        let builder = builder.clone();
        let h1 = h1.clone();
        let acceptor = acceptor.clone();
        let name = opts.name;
        let handshake_timeout = opts.header_read_timeout;
        let stop = shutdown.clone();
        let idle = opts.idle_timeout;
        let open = drain.enter();
        tokio::spawn(async move {
            let _held = (permit, seat, open);
            observer.opened();
            let activity = Arc::new(Activity::default());
            let svc = activity.clone().wrap(move |req| handler.call(req, info));
            match acceptor {
                Some(acceptor) => {
                    // Boxed: inline, the handshake's state (a TLS session) would enlarge
                    // every connection's task, plain ones too, for as long as it lives.
                    let accept = Box::pin(acceptor.accept(stream));
                    match tokio::time::timeout(handshake_timeout, accept).await {
                        Ok(Ok(tls)) => {
                            let conn = builder
                                .serve_connection(TokioIo::new(tls), svc)
                                .into_owned();
                            // Boxed: inline, the connection's state would enlarge every task,
                            // even those still waiting for their first byte.
                            Box::pin(conn::drive(conn, activity, stop, idle)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(listener = name, peer = %peer, error = %e, "TLS handshake failed")
                        }
                        Err(_) => {
                            tracing::debug!(listener = name, peer = %peer, "TLS handshake timed out")
                        }
                    }
                }
                None => {
                    // A client that sends nothing at all would wait in hyper-util's
                    // HTTP/1-vs-2 detection, before any header timer runs: the header timeout
                    // applies to the first byte too.
                    let mut first = [0u8; H2_PREFACE.len()];
                    match tokio::time::timeout(handshake_timeout, stream.peek(&mut first)).await {
                        Ok(Ok(n)) if n > 0 => {
                            let builder = if H2_PREFACE.starts_with(&first[..n]) {
                                &builder
                            } else {
                                &h1
                            };
                            let conn = builder
                                .serve_connection(TokioIo::new(stream), svc)
                                .into_owned();
                            Box::pin(conn::drive(conn, activity, stop, idle)).await;
                        }
                        _ => {
                            tracing::debug!(listener = name, peer = %peer, "closed: nothing received in time")
                        }
                    }
                }
            }
            observer.closed();
        });
    }
    drop(listener);
    let open = drain.open();
    if open > 0 {
        tracing::info!(listener = opts.name, open, grace = ?opts.grace, "draining connections");
    }
    tokio::select! {
        _ = drain.empty() => 0,
        _ = tokio::time::sleep(opts.grace) => {
            let cut = drain.open();
            tracing::warn!(listener = opts.name, cut, "shutdown grace period over: cutting connections still open");
            cut
        }
    }
}
