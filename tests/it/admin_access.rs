//! Who may use the admin API: the token on every guarded endpoint, a web page's tricks (a
//! foreign Origin, a form's content type, DNS rebinding) refused even on loopback without a
//! token, an off-loopback listener refused at start, the build context bounded, and the pod as
//! deploy/kubernetes and the Dockerfile configure it.

use bytes::Bytes;
use http::{Method, StatusCode};
use rally_sidecar::config::{Config, Overrides};
use rally_sidecar::sim::SimOptions;
use serde_json::json;

use crate::support::{JSON, Sidecar, get, send, simulator, temp_dir};

const TOKEN: &str = "test-admin-token-0123456789";
const BEARER: (&str, &str) = ("authorization", "Bearer test-admin-token-0123456789");

/// Every guarded endpoint with the answer it gives an operator who has the token (`None`:
/// whatever the endpoint says, as long as it is not a refusal).
fn guarded() -> Vec<(Method, &'static str, &'static str, Option<StatusCode>)> {
    vec![
        (Method::GET, "/", "", Some(StatusCode::OK)),
        (Method::GET, "/writes", "", Some(StatusCode::OK)),
        (Method::GET, "/context", "", Some(StatusCode::OK)),
        (
            Method::PUT,
            "/context",
            r#"{"build": "b-1"}"#,
            Some(StatusCode::OK),
        ),
        (Method::DELETE, "/context", "", Some(StatusCode::OK)),
        (Method::GET, "/builds/b-1", "", None),
        (Method::GET, "/added-later", "", None),
        (Method::POST, "/shutdown", "", Some(StatusCode::ACCEPTED)),
    ]
}

/// Checks that the admin listener of `sidecar` (configured with [`TOKEN`]) refuses every
/// guarded endpoint without it and serves the open ones to anyone.
async fn demands_the_token(sidecar: &Sidecar) {
    let admin = |p: &str| format!("http://{}{p}", sidecar.admin);
    for p in ["/healthz", "/readyz", "/metrics"] {
        let a = get(&admin(p), &[]).await;
        assert_eq!(a.status, StatusCode::OK, "{p} is open: {}", a.text());
    }
    let wrong = ("authorization", "Bearer test-admin-token-0123456780");
    for (method, path, body, _) in guarded() {
        for headers in [vec![JSON], vec![JSON, wrong]] {
            let a = send(method.clone(), &admin(path), &headers, Bytes::from(body)).await;
            assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{method} {path}");
            assert!(a.headers.contains_key("www-authenticate"));
            assert!(!a.text().contains(TOKEN));
        }
    }
    assert!(!sidecar.shutdown.is_cancelled(), "nothing was done");
    let view = get(&admin("/context"), &[BEARER]).await;
    assert_eq!(view.json()["build"], json!(null), "no build was set");
    // With the token, each answers (POST /shutdown last: it stops the sidecar).
    for (method, path, body, want) in guarded() {
        let a = send(
            method.clone(),
            &admin(path),
            &[JSON, BEARER],
            Bytes::from(body),
        )
        .await;
        match want {
            Some(want) => assert_eq!(a.status, want, "{method} {path}: {}", a.text()),
            None => assert!(
                ![401, 403, 415].contains(&a.status.as_u16()),
                "{method} {path}: {}",
                a.status
            ),
        }
    }
}

#[tokio::test]
async fn control_endpoints_demand_the_token() {
    let sim = simulator(SimOptions::default()).await;
    let sidecar = Sidecar::start(&sim.base_url, |raw, _| {
        raw.admin.token = Some(TOKEN.into());
        raw.admin.enable_shutdown = Some(true);
    })
    .await;
    demands_the_token(&sidecar).await;
    assert!(
        sidecar.shutdown.is_cancelled(),
        "POST /shutdown with the token"
    );
    sidecar.stop().await;

    // A browser opening the status page sends the token as a Basic password.
    use base64::Engine;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("operator:{TOKEN}"))
    );
    let sidecar = Sidecar::start(&sim.base_url, |raw, _| {
        raw.admin.token = Some(TOKEN.into());
    })
    .await;
    let page = get(
        &format!("http://{}/", sidecar.admin),
        &[("authorization", basic.as_str())],
    )
    .await;
    assert_eq!(page.status, StatusCode::OK);
    sidecar.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn a_web_page_cannot_reach_the_admin_api_even_on_loopback() {
    let sim = simulator(SimOptions::default()).await;
    // The demo's case: loopback, no token.
    let sidecar = Sidecar::start(&sim.base_url, |_, _| {}).await;
    let url = format!("http://{}/context", sidecar.admin);
    let put = |headers: Vec<(&'static str, &'static str)>| {
        let url = url.clone();
        async move {
            send(
                Method::PUT,
                &url,
                &headers,
                Bytes::from(r#"{"build": "evil"}"#),
            )
            .await
        }
    };
    // A cross-site form can only send text/plain or a form encoding.
    assert_eq!(
        put(vec![("content-type", "text/plain")]).await.status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    assert_eq!(
        put(vec![JSON, ("origin", "https://evil.example")])
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    // DNS rebinding: the page's own name resolved to 127.0.0.1.
    let rebound = get(
        &format!("http://{}/writes", sidecar.admin),
        &[("host", "evil.example:9464")],
    )
    .await;
    assert_eq!(rebound.status, StatusCode::FORBIDDEN);
    assert!(rebound.text().contains("admin.allowed_hosts"));
    let view = get(&url, &[]).await.json();
    assert_eq!(view["build"], json!(null), "none of it changed the context");
    // Probes still get through whatever Host they use; an operator's curl works as before.
    let probe = get(
        &format!("http://{}/readyz", sidecar.admin),
        &[("host", "10.0.0.7:9464")],
    )
    .await;
    assert_eq!(probe.status, StatusCode::OK);
    let set = put(vec![JSON]).await;
    assert_eq!(set.status, StatusCode::OK);
    assert_eq!(
        set.json(),
        json!({"build": "evil"}),
        "the entry, not the map"
    );
    sidecar.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn the_build_context_is_bounded() {
    let sim = simulator(SimOptions::default()).await;
    let sidecar = Sidecar::start(&sim.base_url, |_, _| {}).await;
    let url = format!("http://{}/context", sidecar.admin);
    let put = |body: String| {
        let url = url.clone();
        async move { send(Method::PUT, &url, &[JSON], Bytes::from(body)).await }
    };
    let long = json!({"build": "b".repeat(257)}).to_string();
    assert_eq!(put(long).await.status, StatusCode::BAD_REQUEST);
    let newline = json!({"build": "b\n2026 INFO forged"}).to_string();
    assert_eq!(put(newline).await.status, StatusCode::BAD_REQUEST);
    for p in 0..1000 {
        let a = put(json!({"build": "b", "project": format!("/project/{p}")}).to_string()).await;
        assert_eq!(a.status, StatusCode::OK);
        if p == 0 {
            assert_eq!(a.json(), json!({"build": "b", "project": "0"}));
        }
    }
    let over = put(json!({"build": "b", "project": "/project/1000"}).to_string()).await;
    assert_eq!(over.status, StatusCode::BAD_REQUEST);
    assert!(over.text().contains("DELETE some first"), "{}", over.text());
    let again = put(json!({"build": "b2", "project": "/project/7"}).to_string()).await;
    assert_eq!(again.status, StatusCode::OK, "an existing entry may change");
    let cleared = send(
        Method::DELETE,
        &format!("{url}?project=7"),
        &[JSON],
        Bytes::new(),
    )
    .await;
    assert_eq!(cleared.json(), json!({"cleared": {"project": "7"}}));
    sidecar.stop().await;
    sim.stop().await;
}

#[tokio::test]
async fn an_admin_listener_off_loopback_without_a_token_does_not_start() {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_rally-sidecar"))
        .args([
            "serve",
            "--admin-listen",
            "0.0.0.0:0",
            "--listen",
            "127.0.0.1:0",
        ])
        .env_remove("RALLY_SIDECAR_ADMIN_TOKEN")
        .env(
            "RALLY_SIDECAR_JOURNAL_PATH",
            temp_dir("no-token").join("j.sqlite"),
        )
        .kill_on_drop(true)
        .output();
    // Were it to start, it would serve until killed: give it a bounded time.
    let out = tokio::time::timeout(std::time::Duration::from_secs(30), run)
        .await
        .expect("refused at once, not served")
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("admin.token_file") && err.contains("not on loopback"),
        "{err}"
    );
}

/// The ConfigMap's `config.toml` (a literal block under `config.toml: |`).
fn configmap_config(yaml: &str) -> String {
    let mut lines = yaml
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("config.toml: |"));
    lines.next();
    let mut out = String::new();
    for l in lines {
        if !l.is_empty() && !l.starts_with("    ") {
            break;
        }
        out.push_str(l.strip_prefix("    ").unwrap_or(""));
        out.push('\n');
    }
    out
}

/// The variables the image's `ENV` instructions set (`ENV A=1 \ B=2` and `ENV A 1`).
fn dockerfile_env(text: &str) -> Vec<(String, String)> {
    let joined = text.replace("\\\n", " ");
    let mut vars = Vec::new();
    for line in joined.lines() {
        let Some(rest) = line.trim().strip_prefix("ENV ") else {
            continue;
        };
        if !rest.contains('=') {
            if let Some((k, v)) = rest.trim().split_once(' ') {
                vars.push((k.to_string(), v.trim().to_string()));
            }
            continue;
        }
        for pair in rest.split_whitespace() {
            if let Some((k, v)) = pair.split_once('=') {
                vars.push((k.to_string(), v.trim_matches('"').to_string()));
            }
        }
    }
    vars
}

#[tokio::test]
async fn the_pod_as_deployed_keeps_rally_on_loopback_and_guards_the_admin_port() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |p: &str| std::fs::read_to_string(root.join(p)).expect(p);
    let env = dockerfile_env(&read("Dockerfile"));
    assert_eq!(
        dockerfile_env("ENV A=1 \\\n    B=\"2\"\nENV C 3\n"),
        vec![
            ("A".into(), "1".into()),
            ("B".into(), "2".into()),
            ("C".into(), "3".into())
        ],
        "the ENV reader reads both forms"
    );
    let toml = configmap_config(&read("deploy/kubernetes/configmap.yaml"));
    assert!(toml.contains("[admin]"), "{toml}");
    // The pod's files, made here: the Secret's token and the certificate tls-init makes.
    let dir = temp_dir("pod");
    let certs = rally_sidecar::commands::cert::generate(&dir, &[]).expect("certs");
    std::fs::write(dir.join("token"), format!("{TOKEN}\n")).expect("token");
    let toml = toml
        .replace(
            "/etc/rally-sidecar-admin/token",
            &dir.join("token").display().to_string(),
        )
        .replace("/tls/cert.pem", &certs.cert.display().to_string())
        .replace("/tls/key.pem", &certs.key.display().to_string())
        .replace(
            "/var/lib/rally-sidecar/journal.sqlite",
            &dir.join("j.sqlite").display().to_string(),
        );
    let file = dir.join("config.toml");
    std::fs::write(&file, toml).expect("config");
    let mut cfg = Config::load(Some(&file), env, &Overrides::default())
        .unwrap_or_else(|e| panic!("the pod's configuration loads: {e}"));
    assert_eq!(
        cfg.listen.addr.to_string(),
        "127.0.0.1:8443",
        "the Rally listener stays on loopback: nothing in the image overrides it"
    );
    assert_eq!(
        cfg.admin.listen.to_string(),
        "0.0.0.0:9464",
        "probes reach the admin port"
    );
    assert!(cfg.admin.token.is_some(), "the admin port needs a token");
    assert!(cfg.listen.tls.is_some());

    // The same configuration on loopback ports, in front of the simulator.
    let sim = simulator(SimOptions::default()).await;
    cfg.listen.addr = "127.0.0.1:0".parse().expect("addr");
    cfg.admin.listen = "127.0.0.1:0".parse().expect("addr");
    cfg.admin.enable_shutdown = true; // as the Job sets it
    cfg.upstream.origin = rally_sidecar::config::parse_origin(&sim.base_url).expect("origin");
    let sidecar = Sidecar::start_config(cfg).await;
    demands_the_token(&sidecar).await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(30), sidecar.task).await;
    sim.stop().await;
}
