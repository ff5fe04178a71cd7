//! The pooled connection to Rally: hyper-util's client over rustls (hyper-rustls), keep-alive
//! pooling, a connect timeout, and an outbound corporate proxy reached with a CONNECT tunnel.
//!
//! Only one upstream exists, so the proxy decision is made once at start-up: `upstream.proxy`
//! in the config wins; otherwise HTTPS_PROXY / HTTP_PROXY / ALL_PROXY / NO_PROXY are read the way
//! curl reads them (hyper-util's `Matcher`). Proxy credentials in the URL become
//! `Proxy-Authorization: Basic` on the CONNECT request only.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::config::{ProxySetting, UpstreamConfig};
use crate::server::{Body, BoxError};
use crate::tls;

/// The TCP layer below TLS: direct, or through a CONNECT tunnel.
#[derive(Clone)]
pub(crate) enum TcpConnector {
    Direct(HttpConnector),
    Tunnel(Tunnel<HttpConnector>),
}

impl tower::Service<http::Uri> for TcpConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            TcpConnector::Direct(c) => c.poll_ready(cx).map_err(Into::into),
            TcpConnector::Tunnel(t) => t.poll_ready(cx).map_err(Into::into),
        }
    }

    fn call(&mut self, dst: http::Uri) -> Self::Future {
        match self {
            TcpConnector::Direct(c) => {
                let fut = c.call(dst);
                Box::pin(async move { fut.await.map_err(Into::into) })
            }
            TcpConnector::Tunnel(t) => {
                let fut = t.call(dst);
                Box::pin(async move { fut.await.map_err(Into::into) })
            }
        }
    }
}

/// The upstream HTTP client type.
pub(crate) type UpstreamClient = Client<hyper_rustls::HttpsConnector<TcpConnector>, Body>;

/// Describes the route chosen at start-up, for the log and `check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Direct,
    /// Through this proxy (credentials, if any, are not shown).
    Proxy(String),
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Route::Direct => f.write_str("direct"),
            Route::Proxy(p) => write!(f, "through proxy {p}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("upstream.url has no host")]
    NoAuthority,
}

/// Decides whether the upstream is reached through a proxy.
pub(crate) fn proxy_for(
    cfg: &UpstreamConfig,
) -> Option<hyper_util::client::proxy::matcher::Intercept> {
    let matcher = match &cfg.proxy {
        ProxySetting::Disabled => return None,
        ProxySetting::FromEnv => Matcher::from_env(),
        ProxySetting::Explicit(uri) => Matcher::builder().all(uri.to_string()).build(),
    };
    matcher.intercept(&cfg.origin)
}

/// Builds the pooled client and reports the route it takes.
pub(crate) fn build(cfg: &UpstreamConfig) -> Result<(UpstreamClient, Route), UpstreamError> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(cfg.connect_timeout));
    http.set_nodelay(true);
    http.set_keepalive(Some(std::time::Duration::from_secs(60)));

    let (tcp, route) = match proxy_for(cfg) {
        None => (TcpConnector::Direct(http), Route::Direct),
        Some(intercept) => {
            let shown = format!(
                "{}://{}",
                intercept.uri().scheme_str().unwrap_or("http"),
                intercept
                    .uri()
                    .authority()
                    .map(|a| a.as_str().rsplit('@').next().unwrap_or("").to_string())
                    .unwrap_or_default()
            );
            let mut tunnel = Tunnel::new(intercept.uri().clone(), http);
            if let Some(auth) = intercept.basic_auth() {
                tunnel = tunnel.with_auth(auth.clone());
            }
            (TcpConnector::Tunnel(tunnel), Route::Proxy(shown))
        }
    };

    let tls = tls::client_config(cfg.ca_file.as_deref(), cfg.insecure_skip_verify)?;
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(tcp);
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(cfg.pool_idle_timeout)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_max_idle_per_host(256)
        .build(https);
    Ok((client, route))
}
