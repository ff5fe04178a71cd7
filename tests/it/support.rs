//! The test harness: a local test origin, the sidecar and the simulator started in-process on
//! `127.0.0.1:0`, a small HTTP client, and a log capture shared by the whole test binary.

#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rally_sidecar::config::{Config, Overrides, RawConfig};
use rally_sidecar::sim::{self, SimHandle, SimOptions};
use rally_sidecar::{Listeners, Shared};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The header every change through the admin API must carry.
pub const JSON: (&str, &str) = ("content-type", "application/json");

// ---------------------------------------------------------------------------------------------
// Log capture: one global subscriber for the test binary, writing into a buffer tests search.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Default)]
pub struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut b) = self.0.lock() {
            b.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl LogBuffer {
    pub fn contents(&self) -> String {
        self.0
            .lock()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

/// The captured logs of every test in this binary (debug level, JSON lines).
pub fn logs() -> &'static LogBuffer {
    static LOGS: OnceLock<LogBuffer> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = LogBuffer::default();
        let _ = tracing_subscriber::fmt()
            .json()
            .with_current_span(true)
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "debug,hyper=info,h2=info,rustls=info,hyper_util=info",
            ))
            .with_writer(buf.clone())
            .try_init();
        buf
    })
}

// ---------------------------------------------------------------------------------------------
// A running sidecar.
// ---------------------------------------------------------------------------------------------

pub struct Sidecar {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub shutdown: CancellationToken,
    pub shared: Shared,
    pub task: tokio::task::JoinHandle<Result<(), rally_sidecar::RunError>>,
}

impl Sidecar {
    /// Starts the sidecar in front of `upstream`, after `tweak` edits the raw config.
    pub async fn start(
        upstream: &str,
        tweak: impl FnOnce(&mut RawConfig, &mut Overrides),
    ) -> Sidecar {
        logs();
        let mut raw = RawConfig::default();
        raw.journal.path = Some(temp_dir("journal").join("journal.sqlite"));
        let mut ov = Overrides {
            listen: Some("127.0.0.1:0".into()),
            upstream: Some(upstream.into()),
            admin_listen: Some("127.0.0.1:0".into()),
            ..Overrides::default()
        };
        tweak(&mut raw, &mut ov);
        let cfg = Config::validate(&raw, &ov).expect("test config is valid");
        Self::start_config(cfg).await
    }

    pub async fn start_config(cfg: Config) -> Sidecar {
        let listeners = Listeners::bind(&cfg).await.expect("bind");
        let addr = listeners.proxy.local_addr().expect("addr");
        let admin = listeners.admin.local_addr().expect("admin addr");
        let shutdown = CancellationToken::new();
        let shared = Shared::default();
        let task = tokio::spawn(rally_sidecar::run_with(
            cfg,
            listeners,
            shutdown.clone(),
            shared.clone(),
        ));
        // Wait until the listener is marked ready.
        for _ in 0..200 {
            if shared.readiness.is_ready() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Sidecar {
            addr,
            admin,
            shutdown,
            shared,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

/// Starts the simulator over plain HTTP with `opts`.
pub async fn simulator(opts: SimOptions) -> SimHandle {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind sim");
    sim::start(listener, None, opts).expect("start sim")
}

// ---------------------------------------------------------------------------------------------
// A small client.
// ---------------------------------------------------------------------------------------------

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

type Client = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

pub fn client() -> Client {
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

/// Sends one request (plain HTTP) and collects the answer.
pub async fn send(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Answer {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body.into())).expect("request");
    let resp = client().request(req).await.expect("request sent");
    collect(resp).await
}

pub async fn collect(resp: Response<Incoming>) -> Answer {
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub async fn get(url: &str, headers: &[(&str, &str)]) -> Answer {
    send(Method::GET, url, headers, Bytes::new()).await
}

/// A rustls client config trusting only `ca`.
pub fn tls_client_config(ca: &Path) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rally_sidecar::tls::load_certs(ca).expect("ca") {
        roots.add(cert).expect("add root");
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// Sends one request over HTTPS trusting only `ca`.
pub async fn send_tls(
    ca: &Path,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Result<Answer, BoxError> {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls_client_config(ca))
        .https_only()
        .enable_http1()
        .enable_http2()
        .build();
    let client: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(https);
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client.request(req.body(Full::new(body.into()))?).await?;
    Ok(collect(resp).await)
}

pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "rally-sidecar-test-{name}-{}",
        uuid::Uuid::new_v4()
    ));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

// ---------------------------------------------------------------------------------------------
// A local test origin for the transparency suite.
// ---------------------------------------------------------------------------------------------

pub struct Origin {
    pub addr: SocketAddr,
    pub url: String,
    pub shutdown: CancellationToken,
}

type OriginBody = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

fn full(b: impl Into<Bytes>) -> OriginBody {
    Full::new(b.into()).boxed_unsync()
}

/// Starts the test origin, over TLS when `tls` is given.
pub async fn origin(tls: Option<Arc<rustls::ServerConfig>>) -> Origin {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
    let addr = listener.local_addr().expect("addr");
    let scheme = if tls.is_some() { "https" } else { "http" };
    let host = if tls.is_some() {
        "localhost".to_string()
    } else {
        addr.ip().to_string()
    };
    let url = format!("{scheme}://{host}:{}", addr.port());
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let own_origin = url.clone();
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                _ = token.cancelled() => break,
                r = listener.accept() => match r { Ok(p) => p, Err(_) => continue },
            };
            let own = own_origin.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| origin_route(req, own.clone()));
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                match acceptor {
                    Some(a) => {
                        if let Ok(s) = a.accept(stream).await {
                            let _ = builder.serve_connection(TokioIo::new(s), svc).await;
                        }
                    }
                    None => {
                        let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                    }
                }
            });
        }
    });
    Origin {
        addr,
        url,
        shutdown,
    }
}

fn query_param<'a>(uri: &'a http::Uri, name: &str) -> Option<&'a str> {
    uri.query()?
        .split('&')
        .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
}

/// The origin's routes: each exercises one forwarding rule.
async fn origin_route(
    req: Request<Incoming>,
    own: String,
) -> Result<Response<OriginBody>, Infallible> {
    let path = req.uri().path().to_string();
    let uri = req.uri().clone();
    let mut resp = Response::new(full(Bytes::new()));
    match path.as_str() {
        // Echo what arrived, byte for byte, as JSON.
        "/echo" | "/slm/webservice/v2.0/echo" => {
            let method = req.method().to_string();
            let target = uri
                .path_and_query()
                .map(|p| p.as_str().to_string())
                .unwrap_or_default();
            let headers: Vec<(String, String)> = req
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let body = req
                .into_body()
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let v = serde_json::json!({"method": method, "target": target, "headers": headers, "body_len": body.len(), "body": String::from_utf8_lossy(&body)});
            *resp.body_mut() = full(serde_json::to_vec(&v).unwrap_or_default());
            resp.headers_mut().insert(
                "content-type",
                "application/octet-stream".parse().expect("hv"),
            );
        }
        // Count an upload without keeping it.
        "/upload" => {
            let mut body = req.into_body();
            let mut n: u64 = 0;
            let mut sum: u64 = 0;
            while let Some(Ok(frame)) = body.frame().await {
                if let Some(d) = frame.data_ref() {
                    n += d.len() as u64;
                    sum = d
                        .iter()
                        .fold(sum, |a, b| a.wrapping_mul(31).wrapping_add(*b as u64));
                }
            }
            *resp.body_mut() = full(format!("{n} {sum}"));
        }
        // Stream N bytes of a known pattern.
        "/download" => {
            let n: usize = query_param(&uri, "bytes")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1024);
            let chunk = Bytes::from(pattern(64 * 1024));
            let chunks = n / chunk.len();
            let rest = n % chunk.len();
            let stream = futures_util::stream::iter(
                (0..chunks)
                    .map(move |_| chunk.clone())
                    .chain(std::iter::once(Bytes::from(pattern(rest)))),
            )
            .map(|b| Ok::<_, Infallible>(Frame::data(b)));
            *resp.body_mut() = StreamBody::new(stream).boxed_unsync();
            resp.headers_mut().insert(
                "content-type",
                "application/octet-stream".parse().expect("hv"),
            );
        }
        "/chunked" => {
            let stream = futures_util::stream::iter(
                ["alpha-", "beta-", "gamma"]
                    .map(|s| Ok::<_, Infallible>(Frame::data(Bytes::from(s)))),
            );
            *resp.body_mut() = StreamBody::new(stream).boxed_unsync();
        }
        "/no-content" => *resp.status_mut() = StatusCode::NO_CONTENT,
        "/not-modified" => {
            *resp.status_mut() = StatusCode::NOT_MODIFIED;
            resp.headers_mut()
                .insert("etag", "\"v1\"".parse().expect("hv"));
        }
        "/redirect" => {
            *resp.status_mut() = StatusCode::FOUND;
            resp.headers_mut().insert(
                "location",
                format!("{own}/echo?from=redirect").parse().expect("hv"),
            );
        }
        "/cookies" => {
            for c in [
                "JSESSIONID=abc; Path=/; HttpOnly",
                "ZSESSIONID=def; Path=/; Secure",
                "SUBBUCKETID=9; Path=/",
            ] {
                resp.headers_mut()
                    .append("set-cookie", c.parse().expect("hv"));
            }
            *resp.body_mut() = full("cookies");
        }
        "/binary" => {
            *resp.body_mut() = full((0..=255u8).cycle().take(4096).collect::<Vec<u8>>());
            resp.headers_mut().insert(
                "content-type",
                "application/octet-stream".parse().expect("hv"),
            );
        }
        "/slow" => {
            let ms: u64 = query_param(&uri, "ms")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            *resp.body_mut() = full("slow done");
        }
        // A Rally-like JSON body naming the origin, optionally gzip-encoded.
        "/refs" => {
            let body = serde_json::json!({"QueryResult": {"Results": [
                {"_ref": format!("{own}/slm/webservice/v2.0/testcase/1001"), "Name": format!("mentions {own}.evil but is not a ref")},
                {"_ref": format!("{own}/slm/webservice/v2.0/TestCase/1001/Results")}
            ]}});
            let bytes = serde_json::to_vec(&body).unwrap_or_default();
            resp.headers_mut().insert(
                "content-type",
                "application/json; charset=utf-8".parse().expect("hv"),
            );
            if query_param(&uri, "gzip").is_some() {
                use std::io::Write;
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                let _ = enc.write_all(&bytes);
                *resp.body_mut() = full(enc.finish().unwrap_or_default());
                resp.headers_mut()
                    .insert("content-encoding", "gzip".parse().expect("hv"));
            } else {
                *resp.body_mut() = full(bytes);
            }
        }
        _ => {
            *resp.status_mut() = StatusCode::NOT_FOUND;
            *resp.body_mut() = full("no such route");
        }
    }
    Ok(resp)
}

use futures_util::StreamExt;

/// A deterministic byte pattern.
pub fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// A minimal CONNECT proxy: counts tunnels, optionally demands `Proxy-Authorization`.
pub struct ConnectProxy {
    pub addr: SocketAddr,
    pub tunnels: Arc<std::sync::atomic::AtomicUsize>,
    pub refused: Arc<std::sync::atomic::AtomicUsize>,
}

pub async fn connect_proxy(basic_auth: Option<&str>) -> ConnectProxy {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let addr = listener.local_addr().expect("addr");
    let tunnels = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let want = basic_auth.map(|a| {
        use base64::Engine;
        format!(
            "basic {}",
            base64::engine::general_purpose::STANDARD.encode(a)
        )
        .to_ascii_lowercase()
    });
    let (t, r) = (tunnels.clone(), refused.clone());
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let (t, r, want) = (t.clone(), r.clone(), want.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                    if client.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let text = String::from_utf8_lossy(&head).to_string();
                let target = text.split_whitespace().nth(1).unwrap_or("").to_string();
                let auth_ok = match &want {
                    None => true,
                    Some(w) => text.lines().any(|l| {
                        l.to_ascii_lowercase().starts_with("proxy-authorization:")
                            && l.to_ascii_lowercase().ends_with(w.as_str())
                    }),
                };
                if !text.starts_with("CONNECT ") || !auth_ok {
                    r.fetch_add(1, Ordering::SeqCst);
                    let _ = client.write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n").await;
                    return;
                }
                let Ok(mut upstream) = tokio::net::TcpStream::connect(&target).await else {
                    let _ = client
                        .write_all(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                        .await;
                    return;
                };
                t.fetch_add(1, Ordering::SeqCst);
                let _ = client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await;
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    ConnectProxy {
        addr,
        tunnels,
        refused,
    }
}

/// A loopback address no one listens on right now (for a process that must be told its
/// address before it starts).
pub fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}
