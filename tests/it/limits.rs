//! Resource limits over real sockets, tried as an adversary would: slow clients holding every
//! connection slot, an HTTP/2 client that sends only its preface, and more held result bodies
//! than memory allows. Each case ends with the sidecar still answering.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use rally_sidecar::config::Text;
use rally_sidecar::sim::SimOptions;
use rally_sidecar::sim::faults::FaultConfig;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{Sidecar, get, send, simulator};

const WS: &str = "/slm/webservice/v2.0";
const ALICE: (&str, &str) = ("zsessionid", "_sim_alice_key");

/// A connection from a chosen loopback address (Linux routes all of 127.0.0.0/8 to lo).
async fn connect_from(ip: &str, to: SocketAddr) -> TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind(format!("{ip}:0").parse().expect("addr"))
        .expect("bind");
    sock.connect(to).await.expect("connect")
}

/// Everything the server sends until it closes (or 30 s pass).
async fn read_all(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out)).await;
    out
}

async fn healthy(sidecar: &Sidecar) {
    let a = get(&sidecar.url(&format!("{WS}/testcase/1001")), &[ALICE]).await;
    assert_eq!(a.status, StatusCode::OK, "the sidecar still answers");
    let h = get(&format!("http://{}/healthz", sidecar.admin), &[]).await;
    assert_eq!(h.status, StatusCode::OK);
}

#[tokio::test]
async fn slow_clients_cannot_lock_everyone_out() {
    let sim = simulator(SimOptions::default()).await;
    let sidecar = Sidecar::start(&sim.base_url, |raw, _| {
        raw.listen.max_connections = Some(3);
        raw.listen.max_connections_per_peer = Some(2);
        raw.listen.body_read_timeout = Some("5s".into());
        raw.context.build = Some(Text::Str("b".into()));
    })
    .await;
    let addr = sidecar.addr;
    let head = format!(
        "POST {WS}/testcaseresult/create HTTP/1.1\r\nHost: x\r\nzsessionid: _sim_alice_key\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    );
    // Three connections from one host, each trickling a result body a byte at a time.
    let mut slow = Vec::new();
    for _ in 0..2 {
        let mut s = connect_from("127.0.0.1", addr).await;
        s.write_all(head.as_bytes()).await.expect("head");
        slow.push(tokio::spawn(async move {
            let (mut r, mut w) = s.into_split();
            let trickle = tokio::spawn(async move {
                while w.write_all(b" ").await.is_ok() {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(30), r.read_to_end(&mut out)).await;
            trickle.abort();
            String::from_utf8_lossy(&out).into_owned()
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut third = connect_from("127.0.0.1", addr).await;
    let _ = third.write_all(head.as_bytes()).await;
    assert!(
        read_all(&mut third).await.is_empty(),
        "the third connection from the same address is closed at once"
    );
    // Another client still gets in and is served while the slow ones hold their slots.
    let mut other = connect_from("127.0.0.2", addr).await;
    other
        .write_all(
            format!(
                "GET {WS}/testcase/1001 HTTP/1.1\r\nHost: x\r\nzsessionid: _sim_alice_key\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .expect("request");
    let answer = String::from_utf8_lossy(&read_all(&mut other).await).into_owned();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        slow.iter().all(|s| !s.is_finished()),
        "served while the slow connections were still open"
    );
    // The trickled bodies are cut at listen.body_read_timeout, never forwarded.
    for s in slow {
        let answer = s.await.expect("slow client");
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("listen.body_read_timeout"), "{answer}");
    }
    assert_eq!(sim.sim.stats().writes_received, 0);
    healthy(&sidecar).await;
    sidecar.stop().await;
    sim.stop().await;
}

/// Frame types of HTTP/2 frames read until the server closes (or 30 s pass).
async fn frame_types(s: &mut TcpStream) -> (Vec<u8>, bool) {
    let mut types = Vec::new();
    let read = async {
        loop {
            let mut header = [0u8; 9];
            if s.read_exact(&mut header).await.is_err() {
                return true;
            }
            let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
            let mut payload = vec![0u8; len];
            if s.read_exact(&mut payload).await.is_err() {
                return true;
            }
            types.push(header[3]);
        }
    };
    let closed = tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .unwrap_or(false);
    (types, closed)
}

#[tokio::test]
async fn an_http2_client_that_sends_only_its_preface_is_pinged_and_reaped() {
    const PING: u8 = 6;
    const GOAWAY: u8 = 7;
    let sim = simulator(SimOptions::default()).await;
    let sidecar = Sidecar::start(&sim.base_url, |raw, _| {
        raw.listen.idle_timeout = Some("1500ms".into());
        raw.listen.http2_keep_alive_interval = Some("300ms".into());
        raw.listen.http2_keep_alive_timeout = Some("10s".into());
    })
    .await;
    let mut s = TcpStream::connect(sidecar.addr).await.expect("connect");
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .expect("preface");
    let (types, closed) = frame_types(&mut s).await;
    assert!(closed, "the connection was closed: {types:?}");
    assert!(types.contains(&PING), "keep-alive PINGs: {types:?}");
    assert!(types.contains(&GOAWAY), "closed with GOAWAY: {types:?}");
    healthy(&sidecar).await;
    sidecar.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn held_bodies_stay_within_the_memory_budget() {
    // Rally is slow: each write is held for seconds (lookups, create, read-back).
    let sim = simulator(SimOptions {
        faults: FaultConfig {
            latency: Some("700ms".into()),
            ..FaultConfig::default()
        },
        ..SimOptions::default()
    })
    .await;
    let sidecar = Sidecar::start(&sim.base_url, |raw, _| {
        raw.intercept.max_body = Some(64 * 1024);
        raw.intercept.max_buffered = Some(200 * 1024);
        raw.context.build = Some(Text::Str("b".into()));
    })
    .await;
    let url = sidecar.url(&format!("{WS}/testcaseresult/create"));
    let body = |n: usize| {
        json!({"TestCaseResult": {"TestCase": "/testcase/1001", "Verdict": "Pass", "Notes": format!("{n}{}", "x".repeat(60_000))}})
            .to_string()
    };
    let answers = futures_util::future::join_all((0..6).map(|n| {
        let (url, body) = (url.clone(), body(n));
        async move { send(Method::POST, &url, &[ALICE], Bytes::from(body)).await }
    }))
    .await;
    let held: Vec<_> = answers
        .iter()
        .filter(|a| a.status == StatusCode::OK)
        .collect();
    let refused: Vec<_> = answers
        .iter()
        .filter(|a| a.status == StatusCode::SERVICE_UNAVAILABLE)
        .collect();
    assert_eq!(
        (held.len(), refused.len()),
        (3, 3),
        "three 60 KB bodies fit in 200 KiB"
    );
    for a in &refused {
        assert_eq!(a.headers["retry-after"], "5");
        let err = a.json()["CreateResult"]["Errors"][0]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(err.contains("intercept.max_buffered"), "{err}");
    }
    for a in &held {
        assert_eq!(a.headers["x-rally-sidecar-confirmed"], "true");
    }
    assert_eq!(
        sim.sim.stats().writes_received,
        3,
        "nothing of a refused write was forwarded"
    );
    // Answered writes gave their bytes back.
    let again = futures_util::future::join_all((0..3).map(|n| {
        let (url, body) = (url.clone(), body(10 + n));
        async move { send(Method::POST, &url, &[ALICE], Bytes::from(body)).await }
    }))
    .await;
    assert!(again.iter().all(|a| a.status == StatusCode::OK));
    healthy(&sidecar).await;
    sidecar.stop().await;
    sim.stop().await;
}
