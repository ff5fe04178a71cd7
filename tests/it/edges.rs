//! The sidecar's edges: TLS on both sides, not an open proxy, timeouts, upstream failures,
//! redaction, admin endpoints, graceful shutdown and the example configuration.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::process::SidecarProcess;
use crate::support::{self, Sidecar, get, logs, origin, send, send_tls, temp_dir};

async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn https_listener_with_a_cert_from_the_cert_command() {
    let dir = temp_dir("cert-cmd");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rally-sidecar"))
        .args(["cert", "--out"])
        .arg(&dir)
        .args(["--san", "sidecar.test"])
        .output()
        .expect("run cert");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in ["ca.pem", "cert.pem", "key.pem"] {
        assert!(dir.join(f).is_file(), "{f} written");
    }
    let origin = origin(None).await;
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let sidecar = Sidecar::start(&origin.url, |_, ov| {
        ov.tls_cert = Some(cert);
        ov.tls_key = Some(key);
    })
    .await;
    let url = format!("https://localhost:{}/refs", sidecar.addr.port());
    let a = send_tls(&dir.join("ca.pem"), Method::GET, &url, &[], Bytes::new())
        .await
        .expect("TLS with only ca.pem trusted");
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.json()["QueryResult"]["Results"][0]["_ref"],
        format!(
            "https://localhost:{}/slm/webservice/v2.0/testcase/1001",
            sidecar.addr.port()
        ),
        "refs carry the client's https origin"
    );
    // A client that does not trust the CA is refused.
    let other = temp_dir("other-ca");
    rally_sidecar::commands::cert::generate(&other, &[]).expect("other ca");
    assert!(
        send_tls(&other.join("ca.pem"), Method::GET, &url, &[], Bytes::new())
            .await
            .is_err()
    );
    sidecar.stop().await;
}

#[tokio::test]
async fn upstream_over_tls_with_a_custom_ca() {
    let dir = temp_dir("upstream-ca");
    let paths = rally_sidecar::commands::cert::generate(&dir, &[]).expect("certs");
    let tls =
        rally_sidecar::tls::server_config(&paths.cert, &paths.key, false).expect("server tls");
    let origin = origin(Some(tls)).await;
    let ca = paths.ca_cert.clone();
    let trusting = Sidecar::start(&origin.url, |raw, _| raw.upstream.ca_file = Some(ca)).await;
    let a = get(&trusting.url("/binary"), &[]).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body.len(), 4096);
    trusting.stop().await;

    let untrusting = Sidecar::start(&origin.url, |_, _| {}).await;
    let a = get(&untrusting.url("/binary"), &[]).await;
    assert_eq!(
        a.status,
        StatusCode::BAD_GATEWAY,
        "an unknown CA is a failed upstream"
    );
    assert!(a.text().contains("rally-sidecar: upstream"), "{}", a.text());
    untrusting.stop().await;

    let skipping = Sidecar::start(&origin.url, |raw, _| {
        raw.upstream.insecure_skip_verify = Some(true)
    })
    .await;
    assert_eq!(
        get(&skipping.url("/binary"), &[]).await.status,
        StatusCode::OK
    );
    skipping.stop().await;
}

#[tokio::test]
async fn not_an_open_proxy() {
    let origin = origin(None).await;
    let sidecar = Sidecar::start(&origin.url, |_, _| {}).await;
    let absolute = raw_exchange(sidecar.addr, b"GET http://evil.example/steal HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n").await;
    assert!(absolute.starts_with("HTTP/1.1 403"), "{absolute}");
    assert!(absolute.contains("not an open proxy"), "{absolute}");
    assert!(
        absolute
            .to_ascii_lowercase()
            .contains("x-rally-sidecar-error: foreign-target")
    );
    let connect = raw_exchange(
        sidecar.addr,
        b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n",
    )
    .await;
    assert!(connect.starts_with("HTTP/1.1 405"), "{connect}");
    assert!(connect.contains("CONNECT is not supported"), "{connect}");
    // Absolute-form naming the sidecar itself is an ordinary request.
    let own = format!(
        "GET http://{0}/echo HTTP/1.1\r\nHost: {0}\r\nConnection: close\r\n\r\n",
        sidecar.addr
    );
    let own = raw_exchange(sidecar.addr, own.as_bytes()).await;
    assert!(own.starts_with("HTTP/1.1 200"), "{own}");
    sidecar.stop().await;
}

#[tokio::test]
async fn slowloris_is_cut_off() {
    let origin = origin(None).await;
    let sidecar = Sidecar::start(&origin.url, |raw, _| {
        raw.listen.header_read_timeout = Some("300ms".into())
    })
    .await;
    let mut s = tokio::net::TcpStream::connect(sidecar.addr)
        .await
        .expect("connect");
    s.write_all(b"GET /binary HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .expect("partial head");
    let mut buf = [0u8; 512];
    // The server must close the connection on its own; 20 s is only a safety bound.
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert_eq!(closed, Ok(true), "the half-sent request was cut off");
    // Other clients are unaffected.
    assert_eq!(
        get(&sidecar.url("/binary"), &[]).await.status,
        StatusCode::OK
    );
    sidecar.stop().await;
}

#[tokio::test]
async fn upstream_down_is_502_and_slow_upstream_is_504() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let dead = format!("http://{}", closed.local_addr().expect("addr"));
    drop(closed);
    let sidecar = Sidecar::start(&dead, |_, _| {}).await;
    let a = get(&sidecar.url("/slm/webservice/v2.0/testcase/1"), &[]).await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY);
    assert_eq!(a.headers["x-rally-sidecar-error"], "upstream-unreachable");
    let v = a.json();
    assert_eq!(v["OperationResult"]["_rallyAPIMajor"], "2");
    assert!(
        v["OperationResult"]["Errors"][0]
            .as_str()
            .expect("error")
            .starts_with("rally-sidecar: upstream unreachable")
    );
    sidecar.stop().await;

    let origin = origin(None).await;
    let sidecar = Sidecar::start(&origin.url, |raw, _| {
        raw.upstream.response_timeout = Some("200ms".into())
    })
    .await;
    let a = get(&sidecar.url("/slow?ms=3000"), &[]).await;
    assert_eq!(a.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(a.headers["x-rally-sidecar-error"], "upstream-timeout");
    assert!(
        a.json()["OperationResult"]["Errors"][0]
            .as_str()
            .expect("error")
            .contains("did not answer within")
    );
    sidecar.stop().await;
}

#[tokio::test]
async fn credentials_never_reach_the_logs() {
    let sim = support::simulator(Default::default()).await;
    let sidecar = Sidecar::start(&sim.base_url, |_, _| {}).await;
    let secret_key = format!("_secret_key_{}", uuid::Uuid::new_v4().simple());
    let secret_cookie = format!("cookie{}", uuid::Uuid::new_v4().simple());
    let secret_token = format!("token{}", uuid::Uuid::new_v4().simple());
    let secret_pass = format!("pass{}", uuid::Uuid::new_v4().simple());
    let basic = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(format!("carol@example.com:{secret_pass}"))
    };
    let id = format!("redaction-{}", uuid::Uuid::new_v4().simple());
    let cookie = format!("JSESSIONID={secret_cookie}; ZSESSIONID={secret_cookie}");
    let auth = format!("Basic {basic}");
    let path = format!(
        "/slm/webservice/v2.0/testcaseresult/create?key={secret_token}&workspace=/workspace/200"
    );
    send(
        Method::POST,
        &sidecar.url(&path),
        &[
            ("zsessionid", &secret_key),
            ("cookie", &cookie),
            ("x-request-id", &id),
        ],
        Bytes::from_static(b"{}"),
    )
    .await;
    send(
        Method::GET,
        &sidecar.url(&format!("/slm/webservice/v2.0/user?KEY={secret_token}")),
        &[("authorization", &auth), ("x-request-id", &id)],
        Bytes::new(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let text = logs().contents();
    let ours: Vec<&str> = text.lines().filter(|l| l.contains(&id)).collect();
    assert!(
        ours.len() >= 2,
        "the access lines of both requests are logged"
    );
    assert!(
        ours.iter().any(|l| l.contains("key=[redacted]")),
        "the key parameter is named, its value redacted"
    );
    for secret in [
        &secret_key,
        &secret_cookie,
        &secret_token,
        &secret_pass,
        &basic,
    ] {
        assert!(
            !text.contains(secret.as_str()),
            "a credential leaked into the logs"
        );
    }
    sidecar.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn admin_endpoints() {
    let origin = origin(None).await;
    let sidecar = Sidecar::start(&origin.url, |_, _| {}).await;
    let admin = |p: &str| format!("http://{}{p}", sidecar.admin);
    assert_eq!(get(&admin("/healthz"), &[]).await.status, StatusCode::OK);
    let ready = get(&admin("/readyz"), &[]).await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.text());
    get(&sidecar.url("/binary"), &[]).await;
    get(&sidecar.url("/missing"), &[]).await;
    let m = get(&admin("/metrics"), &[]).await.text();
    assert!(
        m.contains("rally_sidecar_requests_total{method=\"Get\",status_class=\"2xx\"}"),
        "{m}"
    );
    assert!(m.contains("status_class=\"4xx\""), "{m}");
    assert!(
        m.contains("rally_sidecar_upstream_latency_seconds_bucket"),
        "{m}"
    );
    assert!(m.contains("rally_sidecar_open_connections"), "{m}");
    assert!(
        m.contains("rally_sidecar_body_bytes_total{direction=\"Response\"}"),
        "{m}"
    );
    let refused = send(
        Method::POST,
        &admin("/shutdown"),
        &[support::JSON],
        Bytes::new(),
    )
    .await;
    assert_eq!(
        refused.status,
        StatusCode::FORBIDDEN,
        "shutdown is off by default"
    );
    assert!(!sidecar.shutdown.is_cancelled());
    sidecar.stop().await;

    let sidecar =
        Sidecar::start(&origin.url, |raw, _| raw.admin.enable_shutdown = Some(true)).await;
    let accepted = send(
        Method::POST,
        &format!("http://{}/shutdown", sidecar.admin),
        &[support::JSON],
        Bytes::new(),
    )
    .await;
    assert_eq!(accepted.status, StatusCode::ACCEPTED);
    let finished = tokio::time::timeout(Duration::from_secs(30), sidecar.task).await;
    assert!(
        matches!(finished, Ok(Ok(Ok(())))),
        "the sidecar stopped after POST /shutdown"
    );
}

#[tokio::test]
async fn sigterm_drains_an_in_flight_request_and_exits_zero() {
    let origin = origin(None).await;
    let mut proc = SidecarProcess::spawn(&origin.url, &[]).await;
    let url = format!("http://{}/slow?ms=1500", proc.addr);
    let slow = tokio::spawn(async move { get(&url, &[]).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    proc.sigterm();
    let answer = slow.await.expect("join");
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "the in-flight request finished"
    );
    assert_eq!(answer.text(), "slow done");
    let status = tokio::time::timeout(Duration::from_secs(30), proc.child.wait())
        .await
        .expect("exited")
        .expect("status");
    assert!(
        status.success(),
        "exit code 0, got {status:?}; logs:\n{}",
        proc.log_text()
    );
    assert!(proc.log_text().contains("SIGTERM received"));
    assert!(
        tokio::net::TcpStream::connect(proc.addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn bad_config_exits_64_naming_every_key() {
    let dir = temp_dir("badcfg");
    let file = dir.join("bad.toml");
    std::fs::write(
        &file,
        "shutdown_grace = \"soon\"\n[listen]\naddr = \"nowhere\"\n[log]\nformat = \"xml\"\n",
    )
    .expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rally-sidecar"))
        .args(["serve", "--config"])
        .arg(&file)
        .env("RALLY_SIDECAR_UPSTREAM_URL", "ftp://nope")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "shutdown_grace",
        "listen.addr",
        "log.format",
        "upstream.url",
    ] {
        assert!(err.contains(key), "{key} named in: {err}");
    }
}

#[test]
fn example_config_parses_and_its_defaults_are_the_codes() {
    use rally_sidecar::config::{Config, Overrides, RawConfig};
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml"))
        .expect("example");
    let raw = RawConfig::from_toml(&text).expect("example parses");
    let from_example = Config::validate(&raw, &Overrides::default()).expect("example validates");
    let defaults =
        Config::validate(&RawConfig::default(), &Overrides::default()).expect("defaults");
    assert_eq!(
        format!("{from_example:?}"),
        format!("{defaults:?}"),
        "config.example.toml states the code's defaults"
    );
    // Every key the code accepts is documented in the example.
    for (section, keys) in rally_sidecar::config::known_keys() {
        for key in keys {
            assert!(
                text.contains(&format!("{key} =")) || text.contains(&format!("# {key} =")),
                "[{section}] {key} documented"
            );
        }
    }
}

#[tokio::test]
async fn outbound_proxy_from_config_with_basic_auth() {
    use std::sync::atomic::Ordering;
    let origin = origin(None).await;
    let proxy = support::connect_proxy(Some("corp:s3cret")).await;
    let url = format!("http://corp:s3cret@{}", proxy.addr);
    let sidecar = Sidecar::start(&origin.url, |raw, _| raw.upstream.proxy = Some(url)).await;
    assert_eq!(
        get(&sidecar.url("/binary"), &[]).await.status,
        StatusCode::OK
    );
    assert_eq!(
        proxy.tunnels.load(Ordering::SeqCst),
        1,
        "reached the upstream through a CONNECT tunnel"
    );
    assert_eq!(
        proxy.refused.load(Ordering::SeqCst),
        0,
        "with the proxy credentials"
    );
    sidecar.stop().await;

    let wrong = format!("http://corp:wrong@{}", proxy.addr);
    let sidecar = Sidecar::start(&origin.url, |raw, _| raw.upstream.proxy = Some(wrong)).await;
    let a = get(&sidecar.url("/binary"), &[]).await;
    assert_eq!(
        a.status,
        StatusCode::BAD_GATEWAY,
        "a refused tunnel is a failed upstream"
    );
    // At least one: hyper's pool may open a second connection while the first is refused.
    assert!(
        proxy.refused.load(Ordering::SeqCst) >= 1,
        "the tunnel was refused for the wrong credentials"
    );
    sidecar.stop().await;
}

#[tokio::test]
async fn outbound_proxy_from_the_environment_and_no_proxy() {
    use std::sync::atomic::Ordering;
    let origin = origin(None).await;
    let proxy = support::connect_proxy(None).await;
    let via = format!("http://{}", proxy.addr);
    let env_of = |extra: &'static [(&'static str, &'static str)]| {
        let mut v: Vec<(&str, String)> =
            vec![("HTTP_PROXY", via.clone()), ("HTTPS_PROXY", via.clone())];
        v.extend(extra.iter().map(|(k, val)| (*k, val.to_string())));
        v
    };
    let cases: [(&[(&str, &str)], usize); 3] = [
        (&[], 1),                                         // the environment is honoured
        (&[("NO_PROXY", "127.0.0.1")], 0),                // NO_PROXY exempts the upstream
        (&[("RALLY_SIDECAR_UPSTREAM_PROXY", "none")], 0), // the config key wins over the environment
    ];
    for (extra, want) in cases {
        let before = proxy.tunnels.load(Ordering::SeqCst);
        let env = env_of(extra);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let proc = SidecarProcess::spawn(&origin.url, &env).await;
        let a = get(&format!("http://{}/binary", proc.addr), &[]).await;
        assert_eq!(a.status, StatusCode::OK, "{extra:?}");
        assert_eq!(
            proxy.tunnels.load(Ordering::SeqCst) - before,
            want,
            "{extra:?}"
        );
        proc.stop().await;
    }
}
