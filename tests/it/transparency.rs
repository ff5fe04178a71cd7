//! The transparency suite: the same exchange made directly against a local origin and through
//! the sidecar must give the same status, end-to-end headers and bytes.

use bytes::Bytes;
use http::Method;

use crate::support::{self, Sidecar, get, origin, send};

/// Headers that legitimately differ between the two paths.
const VARYING: &[&str] = &["date", "x-request-id"];

fn end_to_end(h: &http::HeaderMap) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = h
        .iter()
        .filter(|(k, _)| !VARYING.contains(&k.as_str()))
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn same_answers_direct_and_through_the_sidecar() {
    let origin = origin(None).await;
    // Rewriting is tested on its own; here the comparison must be byte-exact.
    let sidecar = Sidecar::start(&origin.url, |raw, _| raw.top.rewrite_refs = Some(false)).await;
    type Case<'a> = (Method, &'a str, &'a [(&'a str, &'a str)], Bytes);
    let cases: Vec<Case> = vec![
        (Method::GET, "/binary", &[], Bytes::new()),
        (Method::GET, "/chunked", &[], Bytes::new()),
        (Method::HEAD, "/binary", &[], Bytes::new()),
        (Method::GET, "/no-content", &[], Bytes::new()),
        (
            Method::GET,
            "/not-modified",
            &[("if-none-match", "\"v1\"")],
            Bytes::new(),
        ),
        (Method::GET, "/redirect", &[], Bytes::new()),
        (Method::GET, "/cookies", &[], Bytes::new()),
        (Method::GET, "/missing", &[], Bytes::new()),
        (Method::DELETE, "/no-content", &[], Bytes::new()),
        (Method::OPTIONS, "/binary", &[], Bytes::new()),
    ];
    for (method, path, headers, body) in cases {
        let direct = send(
            method.clone(),
            &format!("{}{path}", origin.url),
            headers,
            body.clone(),
        )
        .await;
        let proxied = send(method.clone(), &sidecar.url(path), headers, body).await;
        assert_eq!(direct.status, proxied.status, "{method} {path}: status");
        assert_eq!(direct.body, proxied.body, "{method} {path}: body bytes");
        assert_eq!(
            end_to_end(&direct.headers),
            end_to_end(&proxied.headers),
            "{method} {path}: headers"
        );
        assert!(
            proxied.headers.contains_key("x-request-id"),
            "{method} {path}: request id echoed"
        );
    }
    assert_eq!(
        send(Method::GET, &sidecar.url("/redirect"), &[], Bytes::new())
            .await
            .status,
        http::StatusCode::FOUND,
        "redirects are passed, not followed"
    );
    sidecar.stop().await;
}

#[tokio::test]
async fn method_target_headers_and_body_arrive_byte_exact() {
    let origin = origin(None).await;
    let sidecar = Sidecar::start(&origin.url, |_, _| {}).await;
    let odd = "/echo?query=(Build%20%3D%20%22b%201%22)&fetch=%22ObjectID,Name%22&raw=(Name%20=%20%22x%22)&brace={a}&plus=a+b&euro=%E2%82%AC&empty=&&dup=1&dup=2&key=None";
    let body = Bytes::from_static(b"{\"TestCaseResult\": {\"Build\": \"\xc3\xa9\"}}");
    let headers: &[(&str, &str)] = &[
        ("cookie", "JSESSIONID=j1; ZSESSIONID=z1"),
        ("x-custom", "Value With  Spaces"),
        ("content-type", "text/javascript; charset=utf-8"),
        ("connection", "keep-alive, x-hop"),
        ("x-hop", "must not arrive"),
    ];
    for method in [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
    ] {
        let seen = send(method.clone(), &sidecar.url(odd), headers, body.clone())
            .await
            .json();
        assert_eq!(seen["method"], method.as_str());
        assert_eq!(seen["target"], odd, "{method}: path and query byte-exact");
        assert_eq!(
            seen["body"].as_str().map(str::as_bytes),
            Some(body.as_ref()).map(|b| std::str::from_utf8(b).expect("utf8").as_bytes())
        );
        let got: Vec<(String, String)> =
            serde_json::from_value(seen["headers"].clone()).expect("headers");
        let has = |k: &str| got.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(
            has("cookie").as_deref(),
            Some("JSESSIONID=j1; ZSESSIONID=z1")
        );
        assert_eq!(has("x-custom").as_deref(), Some("Value With  Spaces"));
        assert_eq!(
            has("content-type").as_deref(),
            Some("text/javascript; charset=utf-8")
        );
        assert_eq!(
            has("host").as_deref(),
            Some(origin.addr.to_string().as_str()),
            "Host is the upstream's"
        );
        assert_eq!(has("x-forwarded-for").as_deref(), Some("127.0.0.1"));
        assert_eq!(has("x-forwarded-proto").as_deref(), Some("http"));
        assert!(
            has("x-hop").is_none(),
            "headers named in Connection are hop-by-hop"
        );
        assert!(has("connection").is_none() || has("connection").as_deref() == Some("keep-alive"));
    }
    sidecar.stop().await;
}

#[tokio::test]
async fn forwarded_headers_can_be_switched_off() {
    let origin = origin(None).await;
    let sidecar = Sidecar::start(&origin.url, |raw, _| {
        raw.upstream.forwarded_headers = Some(false)
    })
    .await;
    let seen = get(&sidecar.url("/echo"), &[]).await.json();
    let got: Vec<(String, String)> =
        serde_json::from_value(seen["headers"].clone()).expect("headers");
    assert!(
        !got.iter().any(|(k, _)| k.starts_with("x-forwarded")),
        "{got:?}"
    );
    sidecar.stop().await;
}

#[tokio::test]
async fn request_id_is_propagated_or_generated() {
    let origin = origin(None).await;
    let sidecar = Sidecar::start(&origin.url, |_, _| {}).await;
    let a = get(&sidecar.url("/echo"), &[("x-request-id", "ci-run-42")]).await;
    assert_eq!(a.headers["x-request-id"], "ci-run-42");
    let got: Vec<(String, String)> =
        serde_json::from_value(a.json()["headers"].clone()).expect("headers");
    assert!(
        got.contains(&("x-request-id".into(), "ci-run-42".into())),
        "forwarded upstream too"
    );
    let b = get(&sidecar.url("/echo"), &[]).await;
    let id = b.headers["x-request-id"].to_str().expect("ascii");
    assert_eq!(id.len(), 36, "a UUID is generated: {id}");
    sidecar.stop().await;
}

#[tokio::test]
async fn refs_are_rewritten_to_the_clients_origin_with_and_without_gzip() {
    let origin = origin(None).await;
    let sidecar = Sidecar::start(&origin.url, |_, _| {}).await;
    let me = format!("http://{}", sidecar.addr);
    let plain = get(&sidecar.url("/refs"), &[]).await;
    let zipped = get(&sidecar.url("/refs?gzip=1"), &[("accept-encoding", "gzip")]).await;
    assert_eq!(
        zipped.headers["content-encoding"], "gzip",
        "the client still gets gzip"
    );
    assert!(zipped.headers.get("content-length").is_none());
    let unzipped = {
        use std::io::Read;
        let mut out = String::new();
        flate2::read::GzDecoder::new(zipped.body.as_ref())
            .read_to_string(&mut out)
            .expect("valid gzip");
        out
    };
    for text in [plain.text(), unzipped] {
        let v: serde_json::Value = serde_json::from_str(&text).expect("still JSON");
        let results = &v["QueryResult"]["Results"];
        assert_eq!(
            results[0]["_ref"],
            format!("{me}/slm/webservice/v2.0/testcase/1001")
        );
        assert_eq!(
            results[1]["_ref"],
            format!("{me}/slm/webservice/v2.0/TestCase/1001/Results")
        );
        assert_eq!(
            results[0]["Name"],
            format!("mentions {}.evil but is not a ref", origin.url),
            "a longer host is left alone"
        );
    }
    let loc = get(&sidecar.url("/redirect"), &[]).await;
    assert_eq!(loc.headers["location"], format!("{me}/echo?from=redirect"));
    sidecar.stop().await;

    let off = Sidecar::start(&origin.url, |raw, _| raw.top.rewrite_refs = Some(false)).await;
    let v = get(&off.url("/refs"), &[]).await.json();
    assert_eq!(
        v["QueryResult"]["Results"][0]["_ref"],
        format!("{}/slm/webservice/v2.0/testcase/1001", origin.url)
    );
    off.stop().await;
}

#[tokio::test]
async fn expect_100_continue_is_answered() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let origin = origin(None).await;
    let sidecar = Sidecar::start(&origin.url, |_, _| {}).await;
    let mut s = tokio::net::TcpStream::connect(sidecar.addr)
        .await
        .expect("connect");
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    )
    .await
    .expect("write");
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("100 in time")
        .expect("read");
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100 Continue"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    s.write_all(b"hello").await.expect("body");
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            let n = s.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            rest.extend_from_slice(&buf[..n]);
            if rest.ends_with(b"\r\n\r\n5 ")
                || String::from_utf8_lossy(&rest).contains("\r\n\r\n5 ")
            {
                break;
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&rest);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.contains("\r\n\r\n5 "),
        "the origin received the 5-byte body: {text}"
    );
    sidecar.stop().await;
}

/// 50 MB each way through a sidecar process: the bytes arrive intact and its peak memory stays
/// far below the body size (bodies are streamed, never buffered).
#[tokio::test]
async fn fifty_megabytes_stream_both_ways_in_bounded_memory() {
    const SIZE: usize = 50 * 1024 * 1024;
    let origin = origin(None).await;
    let proc = crate::process::SidecarProcess::spawn(&origin.url, &[]).await;

    // Download.
    let resp = support::client()
        .request(
            http::Request::get(format!("http://{}/download?bytes={SIZE}", proc.addr))
                .body(http_body_util::Full::new(Bytes::new()))
                .expect("req"),
        )
        .await
        .expect("download");
    let mut body = resp.into_body();
    let mut got = 0usize;
    let mut ok = true;
    use http_body_util::BodyExt;
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("frame");
        if let Some(d) = frame.data_ref() {
            for (i, b) in d.iter().enumerate() {
                ok &= *b == (((got + i) % (64 * 1024)) % 251) as u8;
            }
            got += d.len();
        }
    }
    assert_eq!(got, SIZE, "download length");
    assert!(ok, "download bytes match the pattern");

    // Upload, streamed from the client in 1 MB chunks.
    let chunk = Bytes::from(support::pattern(1024 * 1024));
    let stream =
        futures_util::stream::iter((0..50).map(move |_| {
            Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(chunk.clone()))
        }));
    let client: hyper_util::client::legacy::Client<_, http_body_util::StreamBody<_>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let resp = client
        .request(
            http::Request::post(format!("http://{}/upload", proc.addr))
                .body(http_body_util::StreamBody::new(stream))
                .expect("req"),
        )
        .await
        .expect("upload");
    let answer = support::collect(resp).await.text();
    assert!(
        answer.starts_with(&format!("{SIZE} ")),
        "origin counted {answer}"
    );

    let peak = proc.peak_rss_kib();
    eprintln!("sidecar peak RSS after 100 MB streamed: {peak} KiB");
    assert!(
        peak < 40 * 1024,
        "sidecar peak RSS {peak} KiB should stay far below the 50 MB body"
    );
    proc.stop().await;
}
