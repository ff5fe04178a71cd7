//! Pass-through load run: the same keep-alive load against a fixed local origin directly and
//! through a rally-sidecar process, in one run, so the two can be compared as ratios.
//!
//!     cargo build --release && cargo run --release --example passthrough -- \
//!         [--seconds 10] [--connections 32] [--body 100] [--sidecar target/release/rally-sidecar] \
//!         [--target URL ...]
//!
//! `--body N` sets the origin's response size in bytes (100 = a small GET, 102400 = 100 KB).
//! `--json` makes the origin answer Rally-like JSON whose refs the sidecar rewrites.
//! Extra `--target URL` or `--target name=URL` values (e.g. an nginx in front of the same
//! origin, see bench/compare-nginx.sh) are measured too;
//! `{origin}` in a target is replaced by the origin's address. Results print as a Markdown table.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::zombie_processes
)]

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

struct Args {
    seconds: u64,
    connections: usize,
    body: usize,
    json: bool,
    sidecar: String,
    sidecar_env: Vec<(String, String)>,
    targets: Vec<String>,
    origin_addr: Option<String>,
}

fn args() -> Args {
    let mut a = Args {
        seconds: 10,
        connections: 32,
        body: 100,
        json: false,
        sidecar: "target/release/rally-sidecar".into(),
        sidecar_env: vec![],
        targets: vec![],
        origin_addr: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--seconds" => a.seconds = it.next().unwrap().parse().unwrap(),
            "--connections" => a.connections = it.next().unwrap().parse().unwrap(),
            "--body" => a.body = it.next().unwrap().parse().unwrap(),
            "--json" => a.json = true,
            "--sidecar" => a.sidecar = it.next().unwrap(),
            "--sidecar-env" => {
                let kv = it.next().unwrap();
                let (k, v) = kv.split_once('=').unwrap();
                a.sidecar_env.push((k.into(), v.into()));
            }
            "--target" => a.targets.push(it.next().unwrap()),
            "--origin" => a.origin_addr = Some(it.next().unwrap()),
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

/// The fixed origin: one tokio worker, a constant body.
fn start_origin(body: Bytes, json: bool, addr: Option<String>) -> std::net::SocketAddr {
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

fn origin_body(n: usize, json: bool, origin: &str) -> Bytes {
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

struct Outcome {
    requests: u64,
    errors: u64,
    elapsed: Duration,
    hist: hdrhistogram::Histogram<u64>,
}

async fn load(url: &str, connections: usize, seconds: u64) -> Outcome {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let url: hyper::Uri = url.parse().unwrap();
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
            while Instant::now() < deadline {
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

fn spawn_sidecar(
    bin: &str,
    upstream: &str,
    env: &[(String, String)],
) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut cmd = std::process::Command::new(bin);
    cmd.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--upstream",
        upstream,
    ])
    .env("RALLY_SIDECAR_LOG_FORMAT", "json")
    .env(
        "RALLY_SIDECAR_JOURNAL_PATH",
        std::env::temp_dir().join("rally-sidecar-passthrough.sqlite"),
    )
    .env("RALLY_SIDECAR_LOG_LEVEL", "warn,rally_sidecar=info")
    .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {bin}: {e} (run cargo build --release first)"));
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufReader::new(stderr).lines();
    loop {
        let line = lines.next().expect("sidecar exited").unwrap();
        if let Some((proxy, _)) = rally_sidecar_harness::soak::ready_addrs(&line) {
            let addr = proxy.to_string();
            // Keep draining stderr so the sidecar never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines.by_ref() {});
            return (child, addr);
        }
    }
}

fn main() {
    let a = args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // The origin's address must be known to build a JSON body naming it; bind first.
    let probe =
        std::net::TcpListener::bind(a.origin_addr.as_deref().unwrap_or("127.0.0.1:0")).unwrap();
    let origin_addr = probe.local_addr().unwrap();
    drop(probe);
    let origin_url = format!("http://{origin_addr}");
    let body = origin_body(a.body, a.json, &origin_url);
    let origin = start_origin(body.clone(), a.json, Some(origin_addr.to_string()));
    let (mut child, sidecar_addr) = spawn_sidecar(&a.sidecar, &origin_url, &a.sidecar_env);

    let mut targets = vec![
        (
            "direct".to_string(),
            format!("http://{origin}/slm/webservice/v2.0/testcaseresult"),
        ),
        (
            "rally-sidecar".to_string(),
            format!("http://{sidecar_addr}/slm/webservice/v2.0/testcaseresult"),
        ),
    ];
    for t in &a.targets {
        // "name=http://..." names a target; a bare URL is its own name.
        let (name, url) = match t.split_once("=http") {
            Some((n, u)) => (n.to_string(), format!("http{u}")),
            None => (t.clone(), t.clone()),
        };
        targets.push((name, url.replace("{origin}", &origin.to_string())));
    }
    println!(
        "body {} bytes{}, {} connections, {} s per target, {} CPUs",
        body.len(),
        if a.json { " (JSON with refs)" } else { "" },
        a.connections,
        a.seconds,
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!(
        "\n| target | req/s | p50 ms | p99 ms | p99.9 ms | errors |\n|---|---:|---:|---:|---:|---:|"
    );
    let results: Vec<_> = targets
        .iter()
        .map(|(name, url)| {
            // A short warm-up fills pools and caches.
            rt.block_on(load(url, a.connections, 1));
            let o = rt.block_on(load(url, a.connections, a.seconds));
            let rps = o.requests as f64 / o.elapsed.as_secs_f64();
            let ms = |q: f64| o.hist.value_at_quantile(q) as f64 / 1000.0;
            println!(
                "| {name} | {rps:.0} | {:.2} | {:.2} | {:.2} | {} |",
                ms(0.5),
                ms(0.99),
                ms(0.999),
                o.errors
            );
            (name.clone(), rps, ms(0.5), ms(0.99))
        })
        .collect();
    let (_, d_rps, d_p50, d_p99) = results[0].clone();
    for (name, rps, p50, p99) in results.iter().skip(1) {
        println!(
            "\n{name} vs direct: throughput x{:.2}, p50 +{:.2} ms, p99 +{:.2} ms",
            rps / d_rps,
            p50 - d_p50,
            p99 - d_p99
        );
    }
    let _ = child.kill();
}
