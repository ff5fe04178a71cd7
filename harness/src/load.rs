//! The pass-through load generator: a fixed local origin and a keep-alive GET load against
//! it (directly, through a sidecar, or through nginx), with latencies in a histogram and the
//! CPU time of the processes serving it. `examples/passthrough.rs` drives it
//! (bench/compare-nginx.sh runs that).

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// The fixed origin: one tokio worker, a constant body.
pub fn start_origin(body: Bytes, json: bool, addr: Option<String>) -> std::net::SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind(addr.as_deref().unwrap_or("127.0.0.1:0"))
                .await
                .unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let _ = stream.set_nodelay(true);
                let body = body.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |_req| {
                        let body = body.clone();
                        async move {
                            let mut r = hyper::Response::new(Full::new(body));
                            let ct = if json {
                                "application/json"
                            } else {
                                "application/octet-stream"
                            };
                            r.headers_mut().insert("content-type", ct.parse().unwrap());
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
    });
    rx.recv().unwrap()
}

pub fn origin_body(n: usize, json: bool, origin: &str) -> Bytes {
    if !json {
        return Bytes::from(vec![b'x'; n]);
    }
    let item = format!(
        r#"{{"_rallyAPIMajor":"2","_rallyAPIMinor":"0","_ref":"{origin}/slm/webservice/v2.0/testcaseresult/10000000001","_refObjectName":"b1 Pass","_type":"TestCaseResult"}},"#
    );
    let mut s = String::from(r#"{"QueryResult":{"Errors":[],"Warnings":[],"Results":["#);
    while s.len() + item.len() < n {
        s.push_str(&item);
    }
    s.pop();
    s.push_str("]}}");
    Bytes::from(s)
}

/// What one load run measured.
pub struct Outcome {
    pub requests: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Latencies in µs.
    pub hist: hdrhistogram::Histogram<u64>,
}

/// When a load run stops: after a time, or after a number of requests shared by all connections.
#[derive(Clone, Copy)]
pub enum Until {
    Seconds(u64),
    Requests(u64),
}

pub async fn load(url: &str, connections: usize, until: Until) -> Outcome {
    let deadline = match until {
        Until::Seconds(s) => Instant::now() + Duration::from_secs(s),
        Until::Requests(_) => Instant::now() + Duration::from_secs(24 * 3600),
    };
    let left = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(match until {
        Until::Requests(n) => n as i64,
        Until::Seconds(_) => i64::MAX,
    }));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let url: hyper::Uri = url.parse().unwrap();
        let left = left.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist =
                hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let mut errors = 0u64;
            let host = url.authority().unwrap().to_string();
            let connect = async || {
                let stream = tokio::net::TcpStream::connect(&host).await.unwrap();
                stream.set_nodelay(true).unwrap();
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .unwrap();
                tokio::spawn(conn);
                sender
            };
            let mut sender = connect().await;
            while Instant::now() < deadline
                && left.fetch_sub(1, std::sync::atomic::Ordering::Relaxed) > 0
            {
                let req = hyper::Request::get(url.path_and_query().unwrap().as_str())
                    .header("host", &host)
                    .header("zsessionid", "_bench")
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                let t = Instant::now();
                match sender.send_request(req).await {
                    Ok(resp) => {
                        let ok = resp.status().is_success();
                        let _ = resp.into_body().collect().await;
                        if ok {
                            hist.record(t.elapsed().as_micros() as u64).unwrap();
                        } else {
                            errors += 1;
                        }
                    }
                    Err(_) => {
                        // The server closed the connection (e.g. nginx after
                        // keepalive_requests): count it and connect again.
                        errors += 1;
                        sender = connect().await;
                    }
                }
            }
            (hist, errors)
        }));
    }
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let mut errors = 0;
    for t in tasks {
        let (h, e) = t.await.unwrap();
        hist.add(h).unwrap();
        errors += e;
    }
    Outcome {
        requests: hist.len(),
        errors,
        elapsed: start.elapsed(),
        hist,
    }
}

/// CPU time (user, system) the processes have used so far, from `/proc/<pid>/stat`; 0 where
/// it cannot be read.
pub fn cpu_seconds(pids: &[u32]) -> (f64, f64) {
    let tick = 100.0; // USER_HZ on Linux
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .map(|stat| {
            // Fields after the command name (which may contain spaces) in parentheses:
            // utime and stime are the 12th and 13th.
            let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
            let f: Vec<u64> = rest
                .split_whitespace()
                .map(|x| x.parse().unwrap_or(0))
                .collect();
            let at = |i: usize| *f.get(i).unwrap_or(&0) as f64 / tick;
            (at(11), at(12))
        })
        .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1))
}
